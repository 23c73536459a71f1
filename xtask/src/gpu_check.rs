//! `cargo xtask gpu-check`: the one-shot check for a machine with an NVIDIA GPU.
//!
//! 1. builds `r38-bench` (with `r38-device-check`) in release with `--features cuda`;
//! 2. `r38-device-check`: the MXNet parity fixtures on the GPU against the CPU in f32 (≤ 1e-4
//!    relative, argmax ≥ 99.9%), f16 and bf16 (reported), and one training step's gradients
//!    against the CPU (≤ 1e-4);
//! 3. the benchmark cases on the GPU, one `r38-bench` run per case, with its median time and
//!    the GPU's peak memory (`nvidia-smi`, sampled every 50 ms).
//!
//! Everything lands in `--out` (default `target/gpu-check`): `device-check.json`, `bench-*.json`,
//! `summary.md`. The CUDA toolkit is the machine's own (`nvcc` on `PATH` or `CUDA_ROOT`), or a
//! folder laid out as `cargo xtask cuda-check` makes one (`--toolkit DIR`).

use crate::cuda_check::{compute_capability, with_toolkit};
use crate::{option, root, run_command};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The benchmark cases, each run on its own.
const CASES: [&str; 5] = [
    "a1-224",
    "a1-224-b8",
    "a1s8-504",
    "a1s8-frame",
    "a1s8-train",
];

pub fn run(args: &[String]) -> Result<()> {
    let device = option(args, "--device").unwrap_or_else(|| "cuda:0".into());
    let out = option(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/gpu-check"));
    let reps = option(args, "--reps").unwrap_or_else(|| "5".into());
    let cases = option(args, "--cases").unwrap_or_else(|| CASES.join(","));
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let compute_cap = compute_capability(args);
    let toolkit = option(args, "--toolkit").map(PathBuf::from);
    let target = root().join("target");

    if !args.iter().any(|a| a == "--skip-build") {
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--release",
                "-p",
                "r38-bench",
                "--features",
                "cuda",
            ])
            .current_dir(root());
        match &toolkit {
            Some(dir) => with_toolkit(&mut build, dir, &compute_cap),
            None => {
                build.env("CUDA_COMPUTE_CAP", &compute_cap);
            }
        }
        run_command(&mut build).context(
            "the CUDA build failed: is nvcc on PATH (or CUDA_ROOT set, or --toolkit given)?",
        )?;
    }
    let bin = |name: &str| target.join("release").join(name);
    let mut summary = format!("# gpu-check on {device}\n\n");
    if let Ok(smi) = Command::new("nvidia-smi").output() {
        summary += &format!("```\n{}```\n\n", String::from_utf8_lossy(&smi.stdout));
    }

    let check = Command::new(bin("r38-device-check"))
        .args(["--device", &device, "--json"])
        .arg(out.join("device-check.json"))
        .output()
        .context("r38-device-check")?;
    let check_text = String::from_utf8_lossy(&check.stdout);
    print!("{check_text}");
    eprint!("{}", String::from_utf8_lossy(&check.stderr));
    summary += &check_text;

    summary += "\n## Benchmark cases (exact engine = candle's CUDA kernels)\n\n";
    summary +=
        "| case | median ms | GPU peak memory MiB | host peak RSS MiB |\n|---|---:|---:|---:|\n";
    for case in cases.split(',') {
        let json = out.join(format!("bench-{case}.json"));
        let poller = MemoryPoller::start()?;
        let mut bench = Command::new(bin("r38-bench"));
        bench
            .args(["--device", &device, "--engine", "exact", "--case", case])
            .args(["--reps", &reps, "--warmup", "1", "--json"])
            .arg(&json);
        let status = run_command(&mut bench);
        let peak_mib = poller.stop();
        if let Err(e) = status {
            summary += &format!("| {case} | failed: {e} | {peak_mib} | |\n");
            continue;
        }
        let (ms, rss) = bench_figures(&json)?;
        summary += &format!("| {case} | {ms:.1} | {peak_mib} | {rss:.0} |\n");
    }
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}\nwritten to {}", out.join("summary.md").display());
    if !check.status.success() {
        bail!("the device check failed (see above)");
    }
    Ok(())
}

/// Median time and peak RSS of the one case and engine in an `r38-bench --json` report
/// (`{"cases": [{"r38": [run]}]}`).
fn bench_figures(json: &Path) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(json).with_context(|| json.display().to_string())?;
    let report: serde_json::Value = serde_json::from_str(&text)?;
    let run = &report["cases"][0]["r38"][0];
    let field = |name: &str| run[name].as_f64();
    match (field("median_ms"), field("peak_rss_mib")) {
        (Some(ms), rss) => Ok((ms, rss.unwrap_or(f64::NAN))),
        _ => bail!("{}: no median time in the report", json.display()),
    }
}

/// The GPU's largest `memory.used` while it runs (MiB, all processes: the check owns the GPU).
struct MemoryPoller {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl MemoryPoller {
    fn start() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut child = match Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "50",
            ])
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => {
                return Ok(Self { stop, handle: None });
            }
        };
        let stdout = child.stdout.take().context("nvidia-smi output")?;
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = line.trim().parse::<u64>() {
                    peak = peak.max(v);
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            peak
        });
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    fn stop(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(peak)) => peak.to_string(),
            _ => "n/a".into(),
        }
    }
}
