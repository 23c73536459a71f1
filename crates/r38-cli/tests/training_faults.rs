//! Training under faults, with the real `r38` binary on a toy Fashion-MNIST:
//!
//! * a `train-cls` process SIGKILLed again and again, mostly while it writes a checkpoint,
//!   and resumed each time from `latest`, ends with the same weights, optimizer state and
//!   losses as an uninterrupted run of the same seed, and `latest` always names a complete,
//!   loadable checkpoint;
//! * a file-size limit (`RLIMIT_FSIZE`, the way a full disk fails a write with an error rather
//!   than killing the process) hit while a checkpoint is written gives an error naming the
//!   file, leaves the previous checkpoint and `latest` intact, and nothing under a final name.
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use r38_train::checkpoint::Checkpoints;
use r38_train::log::read_records;

const STEPS: usize = 24;

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("r38-training-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Toy Fashion-MNIST files (`write_toy_dataset`).
fn toy_root(dir: &Path) -> PathBuf {
    let root = dir.join("fashion");
    r38_train::fashion_mnist::write_toy_dataset(&root, 40, 10).unwrap();
    root
}

/// `train-cls` arguments: a narrow net (no dropout), a checkpoint at every step, a
/// validation (and so possibly a new `best`) every 6 steps.
fn train_args(root: &Path, out: &Path, steps: usize, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "train-cls",
        "--dataset",
        "fashion-mnist",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
        "--accumulate",
        "2",
        "--width-divisor",
        "16",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--validate-every",
        "6",
        "--val-limit",
        "4",
        "--workers",
        "1",
        "--seed",
        "7",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--steps".into());
    a.push(steps.to_string());
    if resume {
        a.push("--resume".into());
    }
    a
}

fn r38() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_r38"));
    // One thread: cheaper on shared cores, and the same arithmetic in every run.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names in a directory (hidden ones included).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Leftovers of an interrupted save: `.step-N.partial` folders and `.latest.*.tmp`-style
/// pointer temporaries, each with its inode and change time (a new save makes a new entry).
fn leftovers(ckpt: &Path) -> BTreeSet<(String, u64, i64, i64)> {
    names(ckpt)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .filter_map(|n| {
            let m = std::fs::symlink_metadata(ckpt.join(&n)).ok()?;
            Some((n, m.ino(), m.ctime(), m.ctime_nsec()))
        })
        .collect()
}

fn step_of(dir_name: &str) -> usize {
    dir_name
        .strip_prefix("step-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("`{dir_name}` is not a step folder name"))
}

/// The step `latest` names, after checking that it names a complete, loadable checkpoint.
fn check_latest(ckpt: &Path, tensors: usize) -> Option<usize> {
    let pointer = ckpt.join("latest");
    if !pointer.exists() {
        // Before the first save, or killed between the first folder's rename and `latest`.
        return None;
    }
    let text = std::fs::read_to_string(&pointer).unwrap();
    let name = text.trim();
    assert!(
        !name.contains("partial") && !name.starts_with('.') && !name.contains('/'),
        "`latest` names `{name}`"
    );
    let step = step_of(name);
    let dir = ckpt.join(name);
    let found = Checkpoints::new(ckpt, 1).latest();
    assert_eq!(found.as_deref(), Some(dir.as_path()), "`latest` -> {name}");
    assert_eq!(
        names(&dir),
        ["model.safetensors", "optimizer.safetensors", "state.json"]
            .map(String::from)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        "{name} is not a complete checkpoint"
    );
    assert_eq!(Checkpoints::read_state(&dir).unwrap().step, step);
    let model = r38_model::weights::load(&dir.join("model.safetensors"))
        .unwrap_or_else(|e| panic!("{name}/model.safetensors: {e}"));
    assert_eq!(model.tensors.len(), tensors, "{name}/model.safetensors");
    let opt = candle_core::safetensors::load(
        dir.join("optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{name}/optimizer.safetensors: {e}"));
    assert!(!opt.is_empty());
    Some(step)
}

/// Every tensor's dtype, shape and value bits, of a safetensors file.
type Bits = BTreeMap<String, (candle_core::DType, Vec<usize>, Vec<u64>)>;

fn safetensors_bits(path: &Path) -> Bits {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            // f32 and u32 values are exact in f64.
            let v = t
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
                .unwrap();
            (
                n,
                (
                    t.dtype(),
                    t.dims().to_vec(),
                    v.iter().map(|x| x.to_bits()).collect(),
                ),
            )
        })
        .collect()
}

/// Loss, learning rate and metric of each row, bit for bit (throughput differs by run).
fn log_rows(out: &Path) -> Vec<(usize, u64, u64, u64, Option<u64>)> {
    read_records(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.step,
                r.epoch.to_bits(),
                r.loss.to_bits(),
                r.lr.to_bits(),
                r.metric.map(f64::to_bits),
            )
        })
        .collect()
}

/// A tiny xorshift for the kill delays; seeded from the clock, printed for reruns.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkilled_training_resumes_to_the_uninterrupted_weights_and_losses() {
    let dir = scratch("kill");
    let root = toy_root(&dir);

    // Reference: one uninterrupted run.
    let reference = dir.join("reference");
    check(
        r38()
            .args(train_args(&root, &reference, STEPS, false))
            .output()
            .unwrap(),
        "the uninterrupted run",
    );
    let ref_final = reference
        .join("checkpoints")
        .join(format!("step-{STEPS:08}"));
    let tensors = r38_model::weights::load(&ref_final.join("model.safetensors"))
        .unwrap()
        .tensors
        .len();

    // The same run, SIGKILLed over and over and resumed each time.
    let out = dir.join("killed");
    let ckpt = out.join("checkpoints");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut rng = Xorshift(seed);
    let mut kills = Vec::new();
    let mut finished = false;
    for attempt in 0..12 {
        let before = leftovers(&ckpt);
        let latest_before = check_latest(&ckpt, tensors);
        let mut child = r38()
            .args(train_args(&root, &out, STEPS, true))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Even attempts: kill the moment a new `.step-N.partial` folder shows (inside a
        // save). Odd ones: once a new step folder shows, wait 0-40 ms and kill.
        let in_save_mode = attempt % 2 == 0;
        let delay = Duration::from_millis(rng.next(40));
        let t0 = Instant::now();
        let mut exited = None;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            let now = leftovers(&ckpt);
            let trigger = if in_save_mode {
                now.iter()
                    .any(|l| l.0.ends_with(".partial") && !before.contains(l))
            } else {
                names(&ckpt).iter().any(|n| {
                    n.starts_with("step-") && latest_before.is_none_or(|s| step_of(n) > s + 1)
                })
            };
            if trigger {
                if !in_save_mode {
                    std::thread::sleep(delay);
                }
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no progress to kill in"
            );
        }
        if let Some(status) = exited {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "the resumed run failed: {err}");
            finished = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(libc::SIGKILL) {
            // It finished just before the signal.
            assert!(status.success(), "attempt {attempt}: {status:?}");
            finished = true;
            break;
        }
        // What the kill interrupted: a save's partial folder or pointer temporary that
        // was not there before, or a step folder renamed into place but not yet `latest`.
        let after = leftovers(&ckpt);
        let new: Vec<String> = after
            .iter()
            .filter(|l| !before.contains(l))
            .map(|l| l.0.clone())
            .collect();
        let latest = check_latest(&ckpt, tensors);
        let unpointed = names(&ckpt)
            .iter()
            .filter(|n| n.starts_with("step-") && latest.is_none_or(|s| step_of(n) > s))
            .cloned()
            .collect::<Vec<_>>();
        let inside_save = !new.is_empty() || !unpointed.is_empty();
        kills.push((attempt, latest, inside_save, new, unpointed));
        if kills.len() >= 6 && latest.is_some_and(|s| s + 4 >= STEPS) {
            break;
        }
    }
    if !finished {
        check(
            r38()
                .args(train_args(&root, &out, STEPS, true))
                .output()
                .unwrap(),
            "the last resume",
        );
    }
    eprintln!("seed {seed}: kills (attempt, latest after, inside a save, leftovers, unpointed step folders):");
    for k in &kills {
        eprintln!("  {k:?}");
    }
    let landed = kills.iter().filter(|k| k.2).count();
    eprintln!("{} kills, {landed} inside a save", kills.len());
    assert!(kills.len() >= 4, "only {} kills landed", kills.len());
    assert!(landed >= 2, "only {landed} kills landed inside a save");

    // The same final checkpoint, bit for bit, and the same log rows. (The files are not
    // compared as bytes: safetensors' header lists the metadata in hash-map order.)
    assert_eq!(check_latest(&ckpt, tensors), Some(STEPS));
    let final_dir = ckpt.join(format!("step-{STEPS:08}"));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (
            safetensors_bits(&final_dir.join(f)),
            safetensors_bits(&ref_final.join(f)),
        );
        assert!(a == b, "{f} differs from the uninterrupted run's");
    }
    let meta = |d: &Path| {
        r38_model::weights::load(&d.join("model.safetensors"))
            .unwrap()
            .metadata
    };
    assert_eq!(meta(&final_dir), meta(&ref_final));
    assert_eq!(
        std::fs::read_to_string(final_dir.join("state.json")).unwrap(),
        std::fs::read_to_string(ref_final.join("state.json")).unwrap()
    );
    let csv_rows = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(',').collect();
                f.remove(4); // samples/s
                f.join(",")
            })
            .collect()
    };
    assert_eq!(csv_rows(&out), csv_rows(&reference));
    assert_eq!(log_rows(&out), log_rows(&reference));
    assert_eq!(
        std::fs::read(ckpt.join("best")).unwrap(),
        std::fs::read(reference.join("checkpoints/best")).unwrap()
    );
    // The finished run leaves no partial folder or temporary behind.
    let left: Vec<_> = leftovers(&ckpt).into_iter().map(|l| l.0).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_during_a_checkpoint_is_an_error_naming_the_file() {
    let dir = scratch("full");
    let root = toy_root(&dir);
    let out = dir.join("run");
    let ckpt = out.join("checkpoints");
    check(
        r38()
            .args(train_args(&root, &out, 2, false))
            .output()
            .unwrap(),
        "the first two steps",
    );
    let latest = std::fs::read(ckpt.join("latest")).unwrap();
    assert_eq!(latest, b"step-00000002\n");
    let model_size = std::fs::metadata(ckpt.join("step-00000002/model.safetensors"))
        .unwrap()
        .len();
    let before: BTreeSet<String> = names(&ckpt);

    // 16 KiB per file (32 blocks of 512 bytes; 32 KiB where a shell counts in KiB): room for
    // the metrics logs and `state.json`, not for the model's 40 KiB.
    assert!(
        model_size > 33 * 1024,
        "the model is only {model_size} bytes"
    );
    let mut cmd = Command::new("sh");
    cmd.env("RAYON_NUM_THREADS", "1")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 32 || exit 99; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_r38"))
        .args(train_args(&root, &out, 4, true));
    let res = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_ne!(res.status.code(), Some(99), "ulimit -f failed: {stderr}");
    assert!(
        !res.status.success(),
        "the run succeeded under the limit:\n{stderr}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(res.status.signal(), None, "killed by a signal: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("step-00000003"),
        "the error does not name the file: {stderr}"
    );
    assert!(
        stderr.contains("File too large") || stderr.contains("os error 27"),
        "not EFBIG: {stderr}"
    );

    // The previous checkpoint is intact and still `latest`; nothing under a final name.
    assert_eq!(std::fs::read(ckpt.join("latest")).unwrap(), latest);
    let tensors = r38_model::weights::load(&ckpt.join("step-00000002/model.safetensors"))
        .unwrap()
        .tensors
        .len();
    assert_eq!(check_latest(&ckpt, tensors), Some(2));
    let after = names(&ckpt);
    assert!(
        !after.contains("step-00000003"),
        "a step-3 folder exists: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|n| before.contains(n) || n.starts_with('.')),
        "new entries under final names: {after:?} (before {before:?})"
    );
    let left: Vec<_> = leftovers(&ckpt).into_iter().map(|l| l.0).collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // With room again, the run resumes from step 2 and finishes.
    let stdout = check(
        r38()
            .args(train_args(&root, &out, 4, true))
            .output()
            .unwrap(),
        "the resume after the full disk",
    );
    assert!(stdout.contains("steps 3..4"), "{stdout}");
    assert_eq!(check_latest(&ckpt, tensors), Some(4));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_parallel_environments_are_checked_before_anything_is_built() {
    let dir = scratch("ranks");
    let root = toy_root(&dir);
    let out = dir.join("run");
    for (vars, expected) in [
        (vec![("RANK", "0"), ("WORLD_SIZE", "2")], "--features nccl"),
        (
            vec![("RANK", "3"), ("WORLD_SIZE", "2")],
            "RANK=3 is not below WORLD_SIZE=2",
        ),
        (
            vec![("RANK", "1")],
            "RANK and WORLD_SIZE must be set together",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_r38"))
            .args(train_args(&root, &out, 1, false))
            .envs(vars)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!out.exists(), "nothing is written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
