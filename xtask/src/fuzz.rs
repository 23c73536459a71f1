//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz) on the weight-file
//! readers, the `.npy` reader, metadata validation and construction, image and label
//! decoding, IDX/gzip, dataset lists and training resume state, each until it has executed a given number of inputs, with memory limits that turn
//! an oversized allocation into a crash; prints executions, time and crashes per target.
//!
//! Needs `cargo install cargo-fuzz` and a C++ compiler (libFuzzer is built from source). On a
//! stable toolchain the nightly-only flags are enabled with `RUSTC_BOOTSTRAP=1`.

use crate::{option, root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const TARGETS: [&str; 9] = [
    "params",
    "pth",
    "safetensors",
    "npy",
    "metadata",
    "images",
    "idx",
    "lists",
    "resume",
];

/// Results of one target's run.
struct Figures {
    target: String,
    executions: u64,
    seconds: f64,
    corpus: usize,
    crashes: Vec<PathBuf>,
    ok: bool,
}

pub fn run(args: &[String]) -> Result<()> {
    let runs: u64 = option(args, "--runs")
        .map(|r| r.parse().context("--runs"))
        .transpose()?
        .unwrap_or(1_000_000);
    let sanitizer = option(args, "--sanitizer").unwrap_or_else(|| "address".into());
    let max_len = option(args, "--max-len").unwrap_or_else(|| "4096".into());
    let targets: Vec<String> = match option(args, "--target") {
        Some(t) => t.split(',').map(str::to_string).collect(),
        None => TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target `{t}` (one of {})", TARGETS.join(", "));
        }
    }
    let fuzz_dir = root().join("fuzz");
    let mut all = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        seed_corpus(target, &corpus)?;
        all.push(fuzz_one(target, &corpus, runs, &sanitizer, &max_len)?);
    }
    println!();
    println!("| target | executions | time (s) | exec/s | corpus | crashes |");
    println!("|---|---|---|---|---|---|");
    for f in &all {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {} |",
            f.target,
            f.executions,
            f.seconds,
            f.executions as f64 / f.seconds.max(1e-9),
            f.corpus,
            if f.crashes.is_empty() {
                "0".to_string()
            } else {
                f.crashes
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let failed: Vec<&str> = all
        .iter()
        .filter(|f| !f.ok || !f.crashes.is_empty())
        .map(|f| f.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found problems in: {} (minimise with `cargo fuzz tmin <target> <artifact>`, \
             commit the input under tests/fixtures/hostile/ and add a regression test)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Fills `corpus` with the committed seeds (`fuzz/seeds/<target>/`) and, for the readers that
/// have them, the parity fixtures' weight files.
fn seed_corpus(target: &str, corpus: &Path) -> Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("{}", corpus.display()))?;
    let mut sources: Vec<PathBuf> = Vec::new();
    let seeds = root().join("fuzz/seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(&seeds) {
        sources.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let fixtures = root().join("tests/fixtures");
    if let Ok(cases) = std::fs::read_dir(&fixtures) {
        for case in cases.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Ok(files) = std::fs::read_dir(&case) else {
                continue;
            };
            for f in files.filter_map(|e| e.ok()).map(|e| e.path()) {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                let wanted = match target {
                    "params" => name.starts_with("weights") && name.ends_with(".params"),
                    "pth" => name.ends_with(".pth"),
                    "safetensors" => name.ends_with(".safetensors"),
                    // The new readers start from their committed seeds only.
                    _ => false,
                };
                if wanted {
                    sources.push(f);
                }
            }
        }
    }
    // The committed regressions of this reader, so that a fixed crash stays fixed.
    let ext = match target {
        "params" => "params",
        "pth" => "pth",
        "safetensors" => "safetensors",
        "npy" => "npy",
        "metadata" => "json",
        // Every file of `hostile/images/`, whatever its format.
        "images" => "",
        "idx" => "gz",
        "lists" => "txt",
        _ => "state",
    };
    // The image decoders' regressions have a folder of their own (they are not weight files).
    let hostile = match target {
        "images" => fixtures.join("hostile/images"),
        _ => fixtures.join("hostile"),
    };
    if let Ok(entries) = std::fs::read_dir(hostile) {
        sources.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| ext.is_empty() || p.extension().is_some_and(|e| e == ext)),
        );
    }
    for src in sources.iter().filter(|p| p.is_file()) {
        let parent = src
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy();
        let name = format!(
            "seed-{parent}-{}",
            src.file_name().unwrap_or_default().to_string_lossy()
        );
        std::fs::copy(src, corpus.join(name)).with_context(|| format!("copy {}", src.display()))?;
    }
    Ok(())
}

fn artifacts(target: &str) -> Vec<PathBuf> {
    let dir = root().join("fuzz/artifacts").join(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn fuzz_one(
    target: &str,
    corpus: &Path,
    runs: u64,
    sanitizer: &str,
    max_len: &str,
) -> Result<Figures> {
    let before = artifacts(target);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("RUSTC_BOOTSTRAP", "1")
        // -O: optimised, without debug assertions (a second full build of candle with them
        // takes ~30 min on two cores); the readers use checked arithmetic explicitly.
        .args(["fuzz", "run", "-O", "-s", sanitizer, target])
        .arg(corpus)
        .args([
            "--",
            &format!("-runs={runs}"),
            // An allocation over 256 MiB, or a process over 512 MiB, is a crash.
            "-rss_limit_mb=512",
            "-malloc_limit_mb=256",
            // An input taking more than 10 s is a hang.
            "-timeout=10",
            &format!("-max_len={max_len}"),
            "-print_final_stats=1",
        ]);
    // libFuzzer reports on stderr; it goes to a log file that can be followed while it runs.
    let log_path = root().join(format!("fuzz/fuzz-{target}.log"));
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("{}: cannot create", log_path.display()))?;
    cmd.stdout(log_file.try_clone()?).stderr(log_file);
    eprintln!(
        "$ RUSTC_BOOTSTRAP=1 {cmd:?}\n  (progress: tail -f {})",
        log_path.display()
    );
    let start = Instant::now();
    let status = cmd
        .status()
        .context("cannot run `cargo fuzz` (cargo install cargo-fuzz)")?;
    let seconds = start.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |name: &str| -> Option<u64> {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
    };
    let executions = stat("number_of_executed_units").unwrap_or(0);
    // libFuzzer's own time for the runs, without the build.
    let fuzz_seconds = log
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("Done ")?;
            let (_, t) = rest.split_once(" runs in ")?;
            t.split_whitespace().next()?.parse::<f64>().ok()
        })
        .unwrap_or(seconds);
    let corpus_size = std::fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0);
    let crashes: Vec<PathBuf> = artifacts(target)
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    eprintln!(
        "{target}: {executions} executions in {fuzz_seconds:.0} s, corpus {corpus_size}, {} new \
         crash artifact(s); log {}",
        crashes.len(),
        log_path.display()
    );
    Ok(Figures {
        target: target.to_string(),
        executions,
        seconds: fuzz_seconds,
        corpus: corpus_size,
        crashes,
        ok: status.success(),
    })
}
