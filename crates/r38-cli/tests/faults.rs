//! Faults around the CLI's outputs: an evaluation killed with SIGKILL resumes to the same
//! metrics as an uninterrupted run, existing outputs are never replaced without --overwrite,
//! and a run that fails leaves nothing under an output's final name.
//!
//! The dataset and network helpers follow crates/r38-cli/tests/eval.rs; here the network's
//! head keeps its random weights so that every image gets its own prediction (a constant
//! prediction would make a stale or swapped cache entry invisible in the metrics).

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use r38_data::datasets::{read_label_png, voc_colormap, write_label_png, LabelMap};
use r38_model::BackboneConfig;
use r38_seg::{HeadConfig, SegmentationNet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn r38(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r38"))
        .args(args)
        .output()
        .expect("the r38 binary runs")
}

fn run_ok(args: &[&str]) -> String {
    let out = r38(args);
    assert!(
        out.status.success(),
        "r38 {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command fails without a panic and its message contains every needle.
fn run_fails(args: &[&str], needles: &[&str]) {
    let out = r38(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "r38 {args:?} should fail");
    assert!(!stderr.contains("panicked"), "r38 {args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "r38 {args:?}: `{n}` not in:\n{stderr}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(case)
        .join(file)
}

/// A reduced-width A1 s8 network with a "1 conv" head, all weights as initialised (random).
fn random_network(dir: &Path, classes: usize) -> PathBuf {
    let cfg = BackboneConfig::model_a1(8).unwrap().narrowed(32);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    SegmentationNet::new(&cfg, HeadConfig::one_conv(classes), &vb).unwrap();
    let tensors: BTreeMap<String, candle_core::Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let path = dir.join("random.safetensors");
    r38_model::weights::save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    path
}

/// An image whose content depends on `seed`, so that predictions differ between images.
fn write_image(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = r38_data::image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) ^ (x * y + seed);
        r38_data::image::Rgb([
            (v * 11) as u8,
            (v * 5 + seed) as u8,
            (x * seed + y * 3) as u8,
        ])
    });
    img.save(path).unwrap();
}

fn write_label(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let data = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| match (x + seed) % 9 {
            0 => 255,
            _ => ((x / 8 + y / 6 + seed) % 21) as u8,
        })
        .collect();
    let map = LabelMap::new(w, h, data).unwrap();
    write_label_png(path, &map, Some(&voc_colormap())).unwrap();
}

/// A VOC-layout dataset of `n` 48x36 images with a `val` split.
fn voc_dataset(root: &Path, n: u32) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("2007_{i:06}")).collect();
    for (i, id) in ids.iter().enumerate() {
        write_image(&root.join(format!("JPEGImages/{id}.jpg")), 48, 36, i as u32);
        write_label(
            &root.join(format!("SegmentationClass/{id}.png")),
            48,
            36,
            i as u32,
        );
    }
    std::fs::create_dir_all(root.join("ImageSets/Segmentation")).unwrap();
    std::fs::write(
        root.join("ImageSets/Segmentation/val.txt"),
        ids.join("\n") + "\n",
    )
    .unwrap();
    ids
}

/// Two scales, flipped: four forward passes per image, so that 40 images take a few seconds
/// and the run can be killed in the middle.
const SLOW: [&str; 5] = ["--scales", "64,80", "--flip", "--test-steps", "1"];

fn eval_args<'a>(root: &'a str, weights: &'a str, cache: &'a str, json: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "eval",
        "--weights",
        weights,
        "--dataset",
        "voc",
        "--root",
        root,
        "--cache-dir",
        cache,
        "--json",
        json,
    ];
    a.extend_from_slice(&SLOW);
    a
}

/// Predictions in the cache: files named `<id>.png` (what `eval` reads back).
fn cached_predictions(cache: &Path, ids: &[String]) -> Vec<PathBuf> {
    ids.iter()
        .map(|id| cache.join(format!("{id}.png")))
        .filter(|p| p.exists())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn sigkilled_eval_resumes_to_the_uninterrupted_metrics() {
    let dir = scratch("kill");
    let root = dir.join("VOC2012");
    let ids = voc_dataset(&root, 40);
    let weights = random_network(&dir, 21);
    let (r, w) = (root.to_str().unwrap(), weights.to_str().unwrap());

    // The reference: one uninterrupted run in its own cache.
    let cache_a = dir.join("cache-a");
    let json_a = dir.join("a.json");
    let t0 = Instant::now();
    run_ok(&eval_args(
        r,
        w,
        cache_a.to_str().unwrap(),
        json_a.to_str().unwrap(),
    ));
    let full_run = t0.elapsed();
    eprintln!("uninterrupted run: {full_run:?}");
    let reference = json(&json_a);
    assert_eq!(reference["samples"], 40);
    assert_eq!(reference["failed"].as_array().unwrap().len(), 0);
    // The network is not constant: several classes are predicted.
    let predicted = reference["metrics"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["predicted_pixels"].as_u64().unwrap() > 0)
        .count();
    assert!(predicted >= 2, "{}", reference["metrics"]);

    // Start again in a fresh cache and SIGKILL the process once a few predictions are cached.
    let cache_b = dir.join("cache-b");
    let json_b = dir.join("b.json");
    let args = eval_args(r, w, cache_b.to_str().unwrap(), json_b.to_str().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_r38"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + full_run * 4 + Duration::from_secs(60);
    loop {
        let n = cached_predictions(&cache_b, &ids).len();
        if n >= 4 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
    let _ = status;
    assert!(!json_b.exists(), "a killed run must not leave a report");
    let survived = cached_predictions(&cache_b, &ids);
    eprintln!(
        "killed with {} of {} predictions cached",
        survived.len(),
        ids.len()
    );
    assert!(
        survived.len() < ids.len(),
        "killed after all {} predictions; make the protocol slower",
        ids.len()
    );
    // Every file under a name eval reads is a complete prediction of the right size; anything
    // else left by the kill is a hidden temporary that eval never reads.
    for p in &survived {
        let map = read_label_png(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(map.dimensions(), (48, 36), "{}", p.display());
    }
    for entry in std::fs::read_dir(&cache_b).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let is_prediction = ids.iter().any(|id| name == format!("{id}.png"));
        assert!(
            is_prediction || name.starts_with('.') || name == "r38-eval-key.json",
            "{name}: a leftover that is neither a prediction nor a hidden temporary"
        );
    }

    // Restart to completion: the cached predictions are reused, the metrics are identical.
    let stdout = run_ok(&args);
    let resumed = json(&json_b);
    assert_eq!(resumed["metrics"], reference["metrics"]);
    assert_eq!(resumed["samples"], reference["samples"]);
    assert!(
        stdout.contains(&format!("({} from the cache", survived.len())),
        "expected {} predictions reused:\n{stdout}",
        survived.len()
    );
    // And the two caches hold the same predictions.
    for id in &ids {
        let a = read_label_png(cache_a.join(format!("{id}.png"))).unwrap();
        let b = read_label_png(cache_b.join(format!("{id}.png"))).unwrap();
        assert_eq!(a, b, "{id}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cache entry cut short (as a non-atomic writer would leave it) is not trusted: it is
/// recomputed, and the metrics stay those of a clean run.
#[test]
fn truncated_cache_entry_is_recomputed() {
    let dir = scratch("truncated-cache");
    let root = dir.join("VOC2012");
    let ids = voc_dataset(&root, 3);
    let weights = random_network(&dir, 21);
    let (r, w) = (root.to_str().unwrap(), weights.to_str().unwrap());
    let cache = dir.join("cache");
    let json_path = dir.join("r.json");
    let fast = |json: &Path| {
        vec![
            "eval".to_string(),
            "--weights".into(),
            w.into(),
            "--dataset".into(),
            "voc".into(),
            "--root".into(),
            r.into(),
            "--cache-dir".into(),
            cache.to_str().unwrap().into(),
            "--json".into(),
            json.to_str().unwrap().into(),
            "--scale".into(),
            "64".into(),
            "--no-flip".into(),
        ]
    };
    let a: Vec<String> = fast(&json_path);
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let clean = json(&json_path);
    let victim = cache.join(format!("{}.png", ids[1]));
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let json2 = dir.join("r2.json");
    let b: Vec<String> = fast(&json2);
    let stdout = run_ok(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("(2 from the cache"), "{stdout}");
    assert_eq!(json(&json2)["metrics"], clean["metrics"]);
    assert!(read_label_png(&victim).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two inputs with one stem would write the same outputs: refused before anything runs.
#[test]
fn inputs_sharing_a_stem_are_refused() {
    let dir = scratch("same-stem");
    let weights = random_network(&dir, 21);
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        write_image(&dir.join(sub).join("x.png"), 40, 30, 1);
    }
    let out = dir.join("out");
    run_fails(
        &[
            "segment",
            "--weights",
            weights.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--overwrite",
            dir.join("a/x.png").to_str().unwrap(),
            dir.join("b/x.png").to_str().unwrap(),
        ],
        &["a/x.png", "b/x.png", "same outputs"],
    );
    assert!(!out.exists(), "nothing is written");
    let _ = std::fs::remove_dir_all(&dir);
}

const PRECIOUS: &[u8] = b"precious user data, not to be replaced";

/// Every output of `convert`, `forward` and `segment` is refused when it exists, unless
/// --overwrite is given; the existing file is left byte for byte as it was.
#[test]
fn existing_outputs_are_not_overwritten_without_the_flag() {
    let dir = scratch("overwrite");
    let weights = fixture("a1_cls", "weights.params");
    let w = weights.to_str().unwrap();

    // convert
    let out = dir.join("converted.safetensors");
    std::fs::write(&out, PRECIOUS).unwrap();
    let o = out.to_str().unwrap();
    run_fails(
        &["convert", w, o],
        &["converted.safetensors", "--overwrite"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), PRECIOUS);
    run_ok(&["convert", w, o, "--overwrite"]);
    assert_ne!(std::fs::read(&out).unwrap(), PRECIOUS);

    // forward
    let input = fixture("a1_cls", "input.npy");
    let out = dir.join("logits.npy");
    std::fs::write(&out, PRECIOUS).unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let fwd = ["forward", "--weights", w, "--input", i, "--output", o];
    run_fails(&fwd, &["logits.npy", "--overwrite"]);
    assert_eq!(std::fs::read(&out).unwrap(), PRECIOUS);
    let mut with_flag = fwd.to_vec();
    with_flag.push("--overwrite");
    run_ok(&with_flag);
    assert_eq!(r38_data::npy::read_npy(&out).unwrap().dims(), &[2, 10]);

    // segment: any one of its outputs existing stops it before anything is written.
    let seg_weights = random_network(&dir, 21);
    let image = dir.join("photo.png");
    write_image(&image, 20, 14, 3);
    let out_dir = dir.join("seg");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("photo_overlay.png"), PRECIOUS).unwrap();
    let seg = [
        "segment",
        "--weights",
        seg_weights.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--scale",
        "64",
        "--no-flip",
    ];
    run_fails(&seg, &["photo_overlay.png", "--overwrite"]);
    assert_eq!(
        std::fs::read(out_dir.join("photo_overlay.png")).unwrap(),
        PRECIOUS
    );
    assert!(
        !out_dir.join("photo.png").exists(),
        "nothing is written when one output exists"
    );
    let mut with_flag = seg.to_vec();
    with_flag.push("--overwrite");
    run_ok(&with_flag);
    assert!(read_label_png(out_dir.join("photo.png")).is_ok());
    assert_ne!(
        std::fs::read(out_dir.join("photo_overlay.png")).unwrap(),
        PRECIOUS
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `r38 eval --json` never replaces an existing report without --overwrite.
#[test]
fn eval_json_is_not_overwritten_without_the_flag() {
    let dir = scratch("eval-json");
    let root = dir.join("VOC2012");
    voc_dataset(&root, 1);
    let weights = random_network(&dir, 21);
    let report = dir.join("report.json");
    std::fs::write(&report, PRECIOUS).unwrap();
    let out = r38(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--dataset",
        "voc",
        "--root",
        root.to_str().unwrap(),
        "--cache-dir",
        dir.join("cache").to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
        "--scale",
        "64",
        "--no-flip",
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&report).unwrap(), PRECIOUS);
}

/// Files in `dir` other than those listed: temporaries left behind by a failed write.
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

/// A run that fails, before or while writing, leaves no file under the output's final name
/// and no temporary next to it.
#[test]
fn failed_runs_leave_no_output() {
    let dir = scratch("failed");
    let weights = fixture("a1_cls", "weights.params");
    let w = weights.to_str().unwrap();
    let input = fixture("a1_cls", "input.npy");
    let i = input.to_str().unwrap();

    // Failing before writing: a hostile weight file.
    let hostile = dir.join("hostile.params");
    let mut bytes = 0x112u64.to_le_bytes().to_vec();
    bytes.extend([0; 8]);
    bytes.extend(u64::MAX.to_le_bytes());
    std::fs::write(&hostile, &bytes).unwrap();
    let h = hostile.to_str().unwrap();
    let out = dir.join("out.safetensors");
    run_fails(&["convert", h, out.to_str().unwrap()], &["hostile.params"]);
    let npy = dir.join("out.npy");
    run_fails(
        &[
            "forward",
            "--weights",
            h,
            "--input",
            i,
            "--output",
            npy.to_str().unwrap(),
        ],
        &["hostile.params"],
    );
    assert!(!out.exists() && !npy.exists());
    assert_eq!(leftovers(&dir, &["hostile.params"]), Vec::<String>::new());

    // Failing while writing: the final name is taken by a directory, so the rename of the
    // finished temporary fails. The temporary is removed and the directory is untouched.
    for (cmd, name) in [("convert", "taken.safetensors"), ("forward", "taken.npy")] {
        let target = dir.join(name);
        std::fs::create_dir_all(target.join("keep")).unwrap();
        let t = target.to_str().unwrap();
        let args: Vec<&str> = match cmd {
            "convert" => vec!["convert", w, t, "--overwrite"],
            _ => vec![
                "forward",
                "--weights",
                w,
                "--input",
                i,
                "--output",
                t,
                "--overwrite",
            ],
        };
        run_fails(&args, &[name]);
        assert!(target.join("keep").is_dir(), "{cmd}");
        let left = leftovers(&dir, &["hostile.params", "taken.safetensors", "taken.npy"]);
        assert!(left.is_empty(), "{cmd} left {left:?}");
    }

    // segment --keep-going: the bad image gets no output at all, the good one gets all of
    // them, the failure is counted and the exit code is non-zero.
    let seg_weights = random_network(&dir, 21);
    let good = dir.join("good.png");
    write_image(&good, 20, 14, 1);
    let bad = dir.join("bad.png");
    let full = std::fs::read(&good).unwrap();
    std::fs::write(&bad, &full[..full.len() / 2]).unwrap();
    let out_dir = dir.join("seg");
    let out = r38(&[
        "segment",
        "--weights",
        seg_weights.to_str().unwrap(),
        bad.to_str().unwrap(),
        good.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--scale",
        "64",
        "--no-flip",
        "--keep-going",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bad.png"), "{stderr}");
    assert!(stderr.contains("1 of 2 images failed"), "{stderr}");
    assert!(read_label_png(out_dir.join("good.png")).is_ok());
    assert!(out_dir.join("good_overlay.png").exists());
    assert_eq!(
        leftovers(&out_dir, &["good.png", "good_overlay.png"]),
        Vec::<String>::new()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
