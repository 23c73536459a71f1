//! `r38-bench`: median forward times of ResNet-38 through candle's convolution (exact), the r38
//! engine (fast) and, with `--vs-torch` / `--vs-ort`, the same network in PyTorch and in
//! onnxruntime, each case and engine in a process of its own so that peak RSS figures are
//! separate, their repetitions interleaved ([`r38_bench::worker`]); every figure also as a
//! fraction of the machine's measured FMA peak ([`r38_bench::peak`]).

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Parser;
use r38_bench::cases::{self, Case, Job};
use r38_bench::net::BenchNet;
use r38_bench::peak::{self, Isa};
use r38_bench::stats::{median, peak_rss_mib};
use r38_bench::train_step::{self, TrainStep};
use r38_bench::weights::{random_input, RandomWeights};
use r38_bench::worker::{self, Worker};
use r38_ops::engine::{self, Engine};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const RESULT_TAG: &str = "R38BENCH-RESULT ";
const TORCH_TAG: &str = "TORCH-RESULT ";
const ORT_TAG: &str = "ORT-RESULT ";

#[derive(Parser, Debug)]
#[command(
    about = "ResNet-38 forward and training-step benchmarks: candle (exact) vs r38 engine (fast) vs PyTorch vs onnxruntime"
)]
struct Args {
    /// Cases, comma-separated (default: a1-224,a1-224-b8,a1s8-504,a1s8-train); `--list` shows
    /// them all.
    #[arg(long, value_delimiter = ',')]
    case: Vec<String>,
    /// exact (candle conv2d), fast (r38 engine), fast-kept (r38 engine, Winograd kernels kept
    /// across passes: constant-weight inference), gemm, or both (= exact,fast); comma-separated.
    #[arg(long, default_value = "both")]
    engine: String,
    /// Timed repetitions per case and engine, interleaved across engines (median and spread
    /// reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed warm-up runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Threads for candle/rayon and PyTorch (default: all available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Python interpreter with torch + numpy: also run tools/torch_reference.py.
    #[arg(long, value_name = "PYTHON")]
    vs_torch: Option<PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "tools/torch_reference.py")]
    torch_script: PathBuf,
    /// Python interpreter with torch, onnx and onnxruntime: also run the network exported to
    /// ONNX (by the PyTorch script) in onnxruntime (tools/ort_reference.py), inference cases.
    #[arg(long, value_name = "PYTHON")]
    vs_ort: Option<PathBuf>,
    /// The onnxruntime reference script.
    #[arg(long, default_value = "tools/ort_reference.py")]
    ort_script: PathBuf,
    /// Only measure the machine's FMA peak (it is measured before every run anyway).
    #[arg(long)]
    peak: bool,
    /// Where weights, inputs and outputs are written (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Divide every width by this (1 = the real network; larger for quick checks).
    #[arg(long, default_value_t = 1)]
    narrow: usize,
    /// Seed of the random weights and input.
    #[arg(long, default_value_t = 38)]
    seed: u64,
    /// Also write every result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the work directory (weights, outputs) afterwards.
    #[arg(long)]
    keep: bool,
    /// Where the r38 engines run: `cpu`, `cuda[:N]` (feature `cuda`) or metal (feature `metal`).
    /// Off the CPU every engine is candle's exact path; PyTorch and onnxruntime stay on the CPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Time single full-size convolutions (exact vs fast, interleaved) instead of whole networks;
    /// an optional substring selects layers.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    layers: Option<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Internal: run one case with one engine in this process and print its result.
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: write the weights, input and network description for PyTorch.
    #[arg(long, hide = true)]
    dump: bool,
}

fn main() -> Result<()> {
    // As the r38 CLI does (not PyTorch, which runs on its own settings).
    r38_ops::engine::allocator::keep_freed_memory();
    let args = Args::parse();
    let all = cases::all(args.narrow)?;
    if args.list {
        for c in &all {
            let d = if c.default { " (default)" } else { "" };
            println!("{:<12} {}{d}", c.name, c.about);
        }
        return Ok(());
    }
    if args.peak {
        let peak = measure_peak(threads_of(&args));
        println!("{}", serde_json::to_string_pretty(&peak)?);
        return Ok(());
    }
    if let Some(filter) = &args.layers {
        let filter = (!filter.is_empty()).then_some(filter.as_str());
        println!("| layer | GMACs | exact ms | fast ms | fast-kept ms | fast/exact | kept/fast | exact GFLOP/s | fast GFLOP/s | fast-kept GFLOP/s |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, gm, e, f, k) in r38_bench::layers::run(args.reps, filter)? {
            let rate = |ms: f64| 2.0 * gm / (ms * 1e-3);
            println!(
                "| {label} | {gm:.3} | {e:.1} | {f:.1} | {k:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
                f / e,
                k / f,
                rate(e),
                rate(f),
                rate(k)
            );
        }
        println!();
        println!("| candle elementwise (not convolution) | BN+ReLU ms | residual add ms |");
        println!("|---|---:|---:|");
        for shape in [(1, 128, 112, 112), (1, 256, 56, 56), (1, 1024, 63, 63)] {
            let (b, a) = r38_bench::layers::preactivation_ms(args.reps, shape)?;
            println!("| {shape:?} | {b:.1} | {a:.1} |");
        }
        return Ok(());
    }
    let selected: Vec<Case> = if args.case.is_empty() {
        all.iter().filter(|c| c.default).cloned().collect()
    } else {
        args.case
            .iter()
            .map(|n| {
                all.iter()
                    .find(|c| c.name == n)
                    .cloned()
                    .with_context(|| format!("unknown case {n:?} (see --list)"))
            })
            .collect::<Result<_>>()?
    };
    if args.child {
        let [case] = selected.as_slice() else {
            bail!("--child runs exactly one case");
        };
        let engine: BenchEngine = args.engine.parse().map_err(anyhow::Error::msg)?;
        let dir = args
            .work_dir
            .as_deref()
            .context("--child needs --work-dir")?;
        return child(&args, case, engine, dir);
    }
    parent(&args, &selected)
}

/// An engine as the benchmark runs it: with or without its Winograd kernels kept across passes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BenchEngine {
    engine: Engine,
    keep_kernels: bool,
}

impl std::str::FromStr for BenchEngine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.strip_suffix("-kept") {
            Some(e) => BenchEngine {
                engine: e.parse()?,
                keep_kernels: true,
            },
            None => BenchEngine {
                engine: s.parse()?,
                keep_kernels: false,
            },
        })
    }
}

impl std::fmt::Display for BenchEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = if self.keep_kernels { "-kept" } else { "" };
        write!(f, "{}{kept}", self.engine)
    }
}

impl BenchEngine {
    /// `f` with the engine's kernels kept across passes, if it keeps them.
    fn scope<T>(self, f: impl FnOnce() -> T) -> T {
        if self.keep_kernels {
            engine::with_kept_kernels(f)
        } else {
            f()
        }
    }
}

/// One case, one engine, this process: build, warm up, time, report.
fn child(args: &Args, case: &Case, engine: BenchEngine, dir: &Path) -> Result<()> {
    if case.job == Job::TrainingStep {
        return child_training_step(args, case, engine, dir);
    }
    let dev = r38::pretrained::device(&args.device)?;
    let t0 = Instant::now();
    let weights = RandomWeights::new(args.seed);
    let net = BenchNet::new(&case.config, case.head, &weights.var_builder(&dev))?;
    let input = random_input(case.input, args.seed, &dev)?;
    let build_s = t0.elapsed().as_secs_f64();
    let rss_weights = peak_rss_mib();
    if args.dump {
        dump_for_torch(dir, net.backbone(), case, &input, &weights.tensors())?;
    }
    for _ in 0..args.warmup {
        engine.scope(|| net.forward(&input, engine.engine))?;
    }
    let mut totals = Vec::new();
    let mut parts: Vec<Vec<f64>> = Vec::new();
    let mut names = Vec::new();
    let mut macs = Vec::new();
    let mut output = None;
    worker::serve(|| {
        let t = Instant::now();
        let (y, stats) = engine.scope(|| net.forward(&input, engine.engine))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        totals.push(ms);
        if parts.is_empty() {
            parts = vec![Vec::new(); stats.len()];
            names = stats.iter().map(|s| s.name.clone()).collect();
            macs = stats.iter().map(|s| s.macs).collect();
        }
        for (p, s) in parts.iter_mut().zip(&stats) {
            p.push(s.seconds * 1e3);
        }
        output = Some(y);
        Ok(json!({ "total_ms": ms }))
    })?;
    let rss = peak_rss_mib();
    let output = output.context("no repetition was run")?;
    output.write_npy(dir.join(format!("out_{engine}.npy")))?;
    let total_macs: u64 = macs.iter().sum();
    let levels: Vec<Value> = names
        .iter()
        .zip(parts.iter_mut())
        .zip(&macs)
        .map(|((n, p), m)| json!({"name": n, "median_ms": median(p), "gmacs": *m as f64 / 1e9}))
        .collect();
    let measured = Measured {
        times_ms: totals,
        macs: total_macs,
        peak_rss_mib: rss,
        rss_after_build_mib: rss_weights,
        build_s,
    };
    let result = measured.json(case, engine, levels, output.dims());
    println!("{RESULT_TAG}{result}");
    Ok(())
}

/// What every child reports, whatever it timed.
struct Measured {
    times_ms: Vec<f64>,
    macs: u64,
    peak_rss_mib: Option<f64>,
    rss_after_build_mib: Option<f64>,
    build_s: f64,
}

impl Measured {
    fn json(
        self,
        case: &Case,
        engine: BenchEngine,
        levels: Vec<Value>,
        output_shape: &[usize],
    ) -> Value {
        let med = median(&mut self.times_ms.clone());
        json!({
            "case": case.name,
            "engine": engine.to_string(),
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "reps": self.times_ms.len(),
            "times_ms": self.times_ms,
            "median_ms": med,
            "gmacs": self.macs as f64 / 1e9,
            "gflops": 2.0 * self.macs as f64 / (med * 1e6),
            "peak_rss_mib": self.peak_rss_mib,
            "rss_after_build_mib": self.rss_after_build_mib,
            "build_s": self.build_s,
            "levels": levels,
            "output_shape": output_shape,
        })
    }
}

/// The network description, input and weights `tools/torch_reference.py` reads.
fn dump_for_torch(
    dir: &Path,
    backbone: &r38_model::Backbone,
    case: &Case,
    input: &Tensor,
    tensors: &std::collections::HashMap<String, Tensor>,
) -> Result<()> {
    let net_desc = cases::describe(backbone, &case.config, case.head);
    std::fs::write(
        dir.join("net.json"),
        serde_json::to_string_pretty(&net_desc)?,
    )?;
    input.write_npy(dir.join("input.npy"))?;
    r38_bench::weights::write_raw(tensors, &dir.join("weights"))?;
    Ok(())
}

/// One training step per repetition (forward, loss, backward), this process.
fn child_training_step(args: &Args, case: &Case, engine: BenchEngine, dir: &Path) -> Result<()> {
    engine::with_engine(engine.engine, || {
        engine.scope(|| training_step_reps(args, case, engine, dir))
    })
}

fn training_step_reps(args: &Args, case: &Case, engine: BenchEngine, dir: &Path) -> Result<()> {
    let dev = r38::pretrained::device(&args.device)?;
    let t0 = Instant::now();
    let step = TrainStep::new(&case.config, case.head, args.seed, &dev)?;
    let input = random_input(case.input, args.seed, &dev)?;
    let (h, w, forward_macs) =
        train_step::forward_macs(step.backbone(), &case.config, case.head, case.input);
    let classes = case.head.seg_config().map_or(0, |h| h.classes) as u32;
    let labels =
        train_step::random_labels((case.input.0, h, w), args.seed, classes)?.to_device(&dev)?;
    let build_s = t0.elapsed().as_secs_f64();
    let rss_weights = peak_rss_mib();
    if args.dump {
        dump_for_torch(dir, step.backbone(), case, &input, step.tensors())?;
        labels.write_npy(dir.join("labels.npy"))?;
    }
    for _ in 0..args.warmup {
        step.run(&input, &labels)?;
    }
    let (mut totals, mut forward, mut backward) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    worker::serve(|| {
        let t = Instant::now();
        let (loss, grads, times) = step.run(&input, &labels)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        totals.push(ms);
        forward.push(times.forward * 1e3);
        backward.push(times.backward * 1e3);
        // Only the compared gradient outlives the step, as PyTorch's reference sets every
        // `.grad` to None before the next one: a whole `GradStore` held through the next
        // step would add its size to the peak RSS and its pages to the next step's faults.
        last = Some((loss, step.gradient(&grads, train_step::COMPARED_GRADIENT)?));
        Ok(json!({ "total_ms": ms }))
    })?;
    let rss = peak_rss_mib();
    let (loss, compared) = last.context("no repetition was run")?;
    compared.write_npy(dir.join(format!("out_{engine}.npy")))?;
    let levels = vec![
        json!({"name": "forward + loss", "median_ms": median(&mut forward), "gmacs": forward_macs as f64 / 1e9}),
        json!({"name": "backward", "median_ms": median(&mut backward), "gmacs": 2.0 * forward_macs as f64 / 1e9}),
    ];
    let measured = Measured {
        times_ms: totals,
        // Forward plus the two backward GEMMs (input and weight gradients) of every convolution.
        macs: 3 * forward_macs,
        peak_rss_mib: rss,
        rss_after_build_mib: rss_weights,
        build_s,
    };
    let mut result = measured.json(case, engine, levels, compared.dims());
    result["loss"] = json!(loss);
    result["compared"] = json!(train_step::COMPARED_GRADIENT);
    println!("{RESULT_TAG}{result}");
    Ok(())
}

fn run_captured(mut cmd: Command) -> Result<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{stdout}", out.status);
    }
    Ok(stdout)
}

/// max |a - b| / max |b|.
fn rel_diff(a: &Path, b: &Path) -> Result<f64> {
    let a = r38_data::npy::read_npy(a)?;
    let b = r38_data::npy::read_npy(b)?;
    if a.dims() != b.dims() {
        bail!("shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(1e-30))
}

fn threads_of(args: &Args) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The FMA peak on `threads` threads, in the widest instruction set (and in AVX2 where that is
/// AVX-512): the best of 15 runs, or `threads` times the best on one thread if that is more (on
/// this shared host another process can take a core during every run of all threads at once;
/// the one-thread runs are disturbed less, and measured quiet the two agree).
fn measure_peak(threads: usize) -> Value {
    let isa = Isa::widest();
    let (best, median) = peak::fma_peak_gflops(isa, threads, 15);
    let one = peak::fma_peak_gflops(isa, 1, 15).0;
    let mut v = json!({
        "isa": isa.name(),
        "threads": threads,
        "gflops": best.max(threads as f64 * one),
        "gflops_all_threads": best,
        "gflops_median": median,
        "gflops_one_thread": one,
    });
    if isa == Isa::Avx512 {
        v["avx2_gflops"] = json!(peak::fma_peak_gflops(Isa::Avx2, threads, 15).0);
    }
    v
}

fn child_command(exe: &Path, args: &Args, case: &Case, engine: BenchEngine, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("RAYON_NUM_THREADS", threads_of(args).to_string())
        .args(["--child", "--case", case.name])
        .args(["--engine", &engine.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--narrow", &args.narrow.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--device", &args.device])
        .arg("--work-dir")
        .arg(dir);
    cmd
}

fn python_command(python: &Path, script: &Path, args: &Args, dir: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--dir")
        .arg(dir)
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--threads", &threads_of(args).to_string()]);
    cmd
}

fn parent(args: &Args, selected: &[Case]) -> Result<()> {
    let engines: Vec<BenchEngine> = match args.engine.as_str() {
        "both" => vec!["exact".parse(), "fast".parse()],
        list => list.split(',').map(str::parse).collect(),
    }
    .into_iter()
    .collect::<std::result::Result<_, _>>()
    .map_err(anyhow::Error::msg)?;
    let threads = threads_of(args);
    let root = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("r38-bench-{}", std::process::id())),
    };
    let exe = std::env::current_exe()?;
    let peak = measure_peak(threads);
    eprintln!(
        "== FMA peak ({}, {threads} threads): {:.1} GFLOP/s ({:.1} on one thread)",
        peak["isa"].as_str().unwrap_or("?"),
        f(&peak["gflops"]),
        f(&peak["gflops_one_thread"])
    );
    let mut report = Vec::new();
    for case in selected {
        let dir = root.join(case.name);
        std::fs::create_dir_all(&dir)?;
        eprintln!(
            "== {} ({}), {threads} threads, {} reps interleaved",
            case.name, case.about, args.reps
        );
        let with_ort = args.vs_ort.as_ref().filter(|_| case.job == Job::Forward);
        let mut workers = Vec::new();
        for (i, &engine) in engines.iter().enumerate() {
            let mut cmd = child_command(&exe, args, case, engine, &dir);
            let first = i == 0;
            if first && (args.vs_torch.is_some() || with_ort.is_some()) {
                cmd.arg("--dump");
            }
            workers.push(Worker::start(&engine.to_string(), cmd)?);
            if let Some(python) = with_ort.filter(|_| first) {
                // The ONNX file is made by the PyTorch script from the files just dumped.
                let mut cmd = python_command(python, &args.torch_script, args, &dir);
                cmd.arg("--export-onnx").arg(dir.join("model.onnx"));
                run_captured(cmd)?;
            }
        }
        if let Some(python) = &args.vs_torch {
            let mut cmd = python_command(python, &args.torch_script, args, &dir);
            if case.job == Job::TrainingStep {
                cmd.arg("--train");
            }
            workers.push(Worker::start("pytorch", cmd)?);
        }
        if let Some(python) = with_ort {
            let cmd = python_command(python, &args.ort_script, args, &dir);
            workers.push(Worker::start("onnxruntime", cmd)?);
        }
        worker::interleave(&mut workers, args.reps)?;
        let (mut results, mut torch, mut ort) = (Vec::new(), Value::Null, Value::Null);
        for w in workers {
            match w.label.as_str() {
                "pytorch" => torch = w.finish(TORCH_TAG)?,
                "onnxruntime" => ort = w.finish(ORT_TAG)?,
                _ => results.push(w.finish(RESULT_TAG)?),
            }
        }
        for r in results
            .iter()
            .chain([&torch, &ort])
            .filter(|r| !r.is_null())
        {
            eprintln!(
                "   {:<12} median {:>9.1} ms  [{}]  peak RSS {:>7.0} MiB",
                r["engine"].as_str().unwrap_or(if r["torch"].is_null() {
                    "onnxruntime"
                } else {
                    "pytorch"
                }),
                f(&r["median_ms"]),
                spread(r),
                f(&r["peak_rss_mib"])
            );
            if let Some(loss) = r["loss"].as_f64() {
                eprintln!("          loss {loss:.6}");
            }
        }
        let reference = dir.join(format!("out_{}.npy", engines[0]));
        for (other, file) in [(&mut torch, "out_torch.npy"), (&mut ort, "out_ort.npy")] {
            if !other.is_null() {
                other["rel_diff_vs_r38"] = json!(rel_diff(&dir.join(file), &reference)?);
            }
        }
        for r in results.iter_mut().skip(1) {
            let e = r["engine"].as_str().unwrap_or("?").to_string();
            let d = rel_diff(&dir.join(format!("out_{e}.npy")), &reference)?;
            r["rel_diff_vs_exact"] = json!(d);
        }
        report.push(
            json!({"case": case.name, "about": case.about, "threads": threads,
                           "r38": results, "torch": torch, "ort": ort}),
        );
        if !args.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    if !args.keep && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    print_tables(&report, &peak);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json!({"peak": peak, "cases": report}))?;
        r38_data::output::write_bytes_atomically(path, text.as_bytes())?;
    }
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// "min-max" of a result's repetitions, ms.
fn spread(r: &Value) -> String {
    let times: Vec<f64> = r["times_ms"]
        .as_array()
        .map(|t| t.iter().map(f).collect())
        .unwrap_or_default();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.0}-{max:.0}")
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn print_tables(report: &[Value], peak: &Value) {
    let peak_gflops = f(&peak["gflops"]);
    println!();
    println!(
        "Measured FMA peak: {:.1} GFLOP/s ({}, {} threads: best of 15 runs {:.1}, median {:.1}; {:.1} on one thread{}).",
        peak_gflops,
        peak["isa"].as_str().unwrap_or("?"),
        peak["threads"],
        f(&peak["gflops_all_threads"]),
        f(&peak["gflops_median"]),
        f(&peak["gflops_one_thread"]),
        peak.get("avx2_gflops")
            .map_or(String::new(), |v| format!("; AVX2: {:.1}", f(v)))
    );
    println!();
    println!("| case | engine | median ms | min-max ms | GFLOP/s | % of peak | peak RSS MiB | vs exact | time vs PyTorch | time vs onnxruntime | RSS vs PyTorch | RSS vs onnxruntime | max rel diff |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in report {
        let runs = c["r38"].as_array().cloned().unwrap_or_default();
        let name = c["case"].as_str().unwrap_or("?");
        let gmacs = runs.first().map_or(f64::NAN, |r| f(&r["gmacs"]));
        let exact = runs
            .iter()
            .find(|r| r["engine"] == "exact")
            .map(|r| f(&r["median_ms"]));
        let (torch, ort) = (&c["torch"], &c["ort"]);
        let row = |engine: &str, r: &Value, vs_exact: String, refs: bool, diff: String| {
            let m = f(&r["median_ms"]);
            let gflops = 2.0 * gmacs / (m * 1e-3);
            let rss = f(&r["peak_rss_mib"]);
            let vs = |other: &Value, key: &str, mine: f64| {
                if refs {
                    ratio(mine, f(&other[key]))
                } else {
                    "-".into()
                }
            };
            println!(
                "| {name} | {engine} | {m:.1} | {} | {gflops:.1} | {:.0}% | {rss:.0} | {vs_exact} | {} | {} | {} | {} | {diff} |",
                spread(r),
                100.0 * gflops / peak_gflops,
                vs(torch, "median_ms", m),
                vs(ort, "median_ms", m),
                vs(torch, "peak_rss_mib", rss),
                vs(ort, "peak_rss_mib", rss),
            );
        };
        for r in &runs {
            let m = f(&r["median_ms"]);
            let diff = r
                .get("rel_diff_vs_exact")
                .map_or("-".to_string(), |d| format!("{:.1e}", f(d)));
            let vs_exact = exact.map_or("-".into(), |e| ratio(m, e));
            row(r["engine"].as_str().unwrap_or("?"), r, vs_exact, true, diff);
        }
        for (label, other) in [("pytorch", torch), ("onnxruntime", ort)] {
            if !other.is_null() {
                let diff = format!("{:.1e}", f(&other["rel_diff_vs_r38"]));
                row(label, other, "-".into(), false, diff);
            }
        }
    }
    for c in report {
        let runs = c["r38"].as_array().cloned().unwrap_or_default();
        let Some(first) = runs.first() else { continue };
        println!();
        println!(
            "Per level, {} (median ms; GFLOP/s):",
            c["case"].as_str().unwrap_or("?")
        );
        let mut header = "| part | GMACs |".to_string();
        for r in &runs {
            header += &format!(
                " {} ms | {} GFLOP/s |",
                r["engine"].as_str().unwrap_or("?"),
                r["engine"].as_str().unwrap_or("?")
            );
        }
        let torch_levels = c["torch"]["levels"].as_array().cloned().unwrap_or_default();
        if !torch_levels.is_empty() {
            header += " pytorch ms | fastest r38 / pytorch |";
        }
        println!("{header}");
        println!(
            "|---|---:|{}{}",
            "---:|---:|".repeat(runs.len()),
            if torch_levels.is_empty() {
                ""
            } else {
                "---:|---:|"
            }
        );
        let levels = first["levels"].as_array().cloned().unwrap_or_default();
        for (i, l) in levels.iter().enumerate() {
            let gm = f(&l["gmacs"]);
            let mut line = format!("| {} | {:.3} |", l["name"].as_str().unwrap_or("?"), gm);
            for r in &runs {
                let ms = f(&r["levels"][i]["median_ms"]);
                line += &format!(" {:.1} | {:.1} |", ms, 2.0 * gm / (ms * 1e-3));
            }
            if let Some(t) = torch_levels.iter().find(|t| t["name"] == l["name"]) {
                let fastest = runs
                    .iter()
                    .map(|r| f(&r["levels"][i]["median_ms"]))
                    .fold(f64::INFINITY, f64::min);
                let tm = f(&t["median_ms"]);
                line += &format!(" {tm:.1} | {:.2}x |", fastest / tm);
            }
            println!("{line}");
        }
    }
}
