//! `cargo xtask train-fashion` and `cargo xtask train-scenes`: the two small ResNet-38-family
//! models shipped under `weights/` for `r38 demo`, trained on this machine's CPU from the
//! real Fashion-MNIST (Debian `dataset-fashion-mnist`), and the sample inputs under `samples/`.
//! Each command runs the recorded `r38` training command, then exports the best checkpoint
//! with the metadata a user of the file needs (preprocessing, provenance, measured figure).

use crate::{option, root, run_command, target_dir};
use anyhow::{bail, Context, Result};
use r38_train::fashion_mnist::{FashionMnist, Split, CLASSES, DEBIAN_ROOT};
use r38_train::scenes::{SceneConfig, Scenes};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Shipped classifier and segmenter.
pub const CLASSIFIER: &str = "weights/fashion-mnist-classifier.safetensors";
pub const SEGMENTER: &str = "weights/fashion-scenes-segmenter.safetensors";

/// The held-out scenes' seed (t10k items), as `r38 train-seg --dataset fashion-scenes` uses.
const HELD_OUT_SEED: u64 = 0x7e57;

fn dataset_root(args: &[String]) -> Result<PathBuf> {
    let root: PathBuf = option(args, "--root")
        .unwrap_or_else(|| DEBIAN_ROOT.into())
        .into();
    if !root.join("train-images-idx3-ubyte.gz").exists()
        && !root.join("train-images-idx3-ubyte").exists()
    {
        bail!(
            "{}: no Fashion-MNIST IDX files (install Debian's dataset-fashion-mnist or pass --root)",
            root.display()
        );
    }
    Ok(root)
}

/// `r38 <command> --device D`: the release binary, built with the backend `--device` needs.
fn r38(args: &[String], command: &str) -> Result<Command> {
    let device = option(args, "--device").unwrap_or_else(|| "cpu".into());
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release", "-p", "r38-cli"])
        .current_dir(root());
    if device.starts_with("cuda") {
        build.args(["--features", "cuda"]);
    } else if device == "metal" {
        build.args(["--features", "metal"]);
    }
    run_command(&mut build)?;
    let mut cmd = Command::new(target_dir().join("release/r38"));
    cmd.args([command, "--device", &device]);
    Ok(cmd)
}

/// The best checkpoint's model file of a run.
fn best_model(out: &Path) -> Result<PathBuf> {
    let dir = out.join("checkpoints");
    let name = std::fs::read_to_string(dir.join("best"))
        .or_else(|_| std::fs::read_to_string(dir.join("latest")))
        .with_context(|| format!("{}: no checkpoint", dir.display()))?;
    Ok(dir.join(name.trim()).join("model.safetensors"))
}

/// Copies `model` to `dest` with `extra` merged into its metadata.
fn export(model: &Path, dest: &Path, extra: BTreeMap<String, String>) -> Result<()> {
    let file = r38_model::weights::load(model)?;
    let mut metadata = file.metadata.clone();
    metadata.extend(extra);
    r38_model::weights::save_safetensors(&root().join(dest), &file.tensors, &metadata)?;
    println!("exported {} -> {}", model.display(), dest.display());
    Ok(())
}

fn last_metric(out: &Path) -> Result<f64> {
    let recs = r38_train::log::read_records(&out.join("metrics.jsonl"))?;
    recs.iter()
        .filter_map(|r| r.metric)
        .fold(None, |best: Option<f64>, m| {
            Some(best.map_or(m, |b| b.max(m)))
        })
        .context("the run logged no validation metric")
}

pub fn train_fashion(args: &[String]) -> Result<()> {
    let data = dataset_root(args)?;
    let out: PathBuf = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join("runs/fashion"));
    let epochs = option(args, "--epochs").unwrap_or_else(|| "6".into());
    let mut cmd = r38(args, "train-cls")?;
    cmd.args(["--dataset", "fashion-mnist", "--root"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--width-divisor", "2", "--epochs", &epochs])
        .args([
            "--batch-size",
            "128",
            "--accumulate",
            "1",
            "--lr",
            "0.1",
            "--wd",
            "5e-4",
        ])
        .args([
            "--area",
            "0.8,1.0",
            "--aspect",
            "0.9,1.1111",
            "--jitter",
            "0",
            "--lighting",
            "0",
        ])
        .args([
            "--workers",
            "2",
            "--validate-every",
            "468",
            "--checkpoint-every",
            "468",
        ])
        .args(["--seed", "0"]);
    if args.iter().any(|a| a == "--resume") {
        cmd.arg("--resume");
    }
    if !args.iter().any(|a| a == "--export-only") {
        run_command(&mut cmd)?;
    }
    let top1 = last_metric(&out)?;
    println!(
        "Fashion-MNIST test top-1 (best checkpoint): {:.2}%",
        100.0 * top1
    );
    let preprocess = serde_json::json!({
        "mean": r38_data::IMAGENET_MEAN, "std": r38_data::IMAGENET_STD,
        "test_scale": 28, "crop": 28, "interpolation": "bicubic",
    });
    export(
        &best_model(&out)?,
        Path::new(CLASSIFIER),
        BTreeMap::from([
            ("r38.preprocess".into(), preprocess.to_string()),
            ("r38.class_names".into(), serde_json::to_string(&CLASSES)?),
            (
                "r38.trained_by".into(),
                "cargo xtask train-fashion (r38 train-cls, from scratch, CPU)".into(),
            ),
            (
                "r38.training_data".into(),
                "Fashion-MNIST train, 60,000 images (Debian dataset-fashion-mnist)".into(),
            ),
            ("r38.test_top1".into(), format!("{top1:.4}")),
        ]),
    )?;
    write_item_samples(&data)
}

/// One Fashion-MNIST test image per class, as 28x28 RGB PNGs named after their true class.
fn write_item_samples(data: &Path) -> Result<()> {
    let test = FashionMnist::load(data, Split::Test)?;
    let dir = root().join("samples/fashion-items");
    std::fs::create_dir_all(&dir)?;
    for (class, name) in CLASSES.iter().enumerate() {
        let i = (0..test.len)
            .find(|&i| test.labels[i] as usize == class)
            .context("every class is in the test set")?;
        let gray = test.image(i);
        let rgb = image::RgbImage::from_fn(28, 28, |x, y| {
            let v = gray[(y * 28 + x) as usize];
            image::Rgb([v, v, v])
        });
        let file = format!(
            "{:05}-{}.png",
            i,
            name.to_lowercase().replace(['/', ' '], "-")
        );
        rgb.save(dir.join(file))?;
    }
    println!("wrote {}", dir.display());
    Ok(())
}

pub fn train_scenes(args: &[String]) -> Result<()> {
    let data = dataset_root(args)?;
    let runs: PathBuf = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join("runs/scenes"));
    let init: PathBuf = option(args, "--init")
        .map(Into::into)
        .unwrap_or_else(|| root().join(CLASSIFIER));
    // Stages as the authors' Cityscapes recipe: each later one starts afresh (new optimizer
    // state and schedule) from the previous one's final weights, at half the first's rate.
    let stage1 = runs.join("stage1");
    let stage2 = runs.join("stage2");
    let stage3 = runs.join("stage3");
    let stages = [
        // Grey items on dark canvases, the classifier's own domain; its BN statistics are
        // re-estimated once on the scenes, then frozen as the recipe has them.
        (
            &stage1,
            init,
            "3000",
            "0.01",
            "0",
            &["--bn-recalibrate", "100"][..],
        ),
        (
            &stage2,
            stage1.join("checkpoints/step-00003000/model.safetensors"),
            "2000",
            "0.005",
            "1",
            &[][..],
        ),
        (
            &stage3,
            stage2.join("checkpoints/step-00002000/model.safetensors"),
            "4000",
            "0.005",
            "2",
            &[][..],
        ),
    ];
    for (out, init, steps, lr, seed, extra) in stages {
        let mut cmd = r38(args, "train-seg")?;
        cmd.args(["--dataset", "fashion-scenes", "--scene-grey", "--root"])
            .arg(&data)
            .arg("--init")
            .arg(&init)
            .arg("--out")
            .arg(out)
            .args([
                "--width-divisor",
                "2",
                "--head-hidden",
                "128",
                "--steps",
                steps,
            ])
            .args(["--batch-size", "16", "--accumulate", "1", "--lr", lr])
            .args(extra)
            .args(["--schedule", "poly", "--power", "1"])
            .args(["--lr-mult", "alex", "--new-lr-mult", "alex"])
            .args([
                "--workers",
                "2",
                "--validate-every",
                "500",
                "--checkpoint-every",
                "500",
            ])
            .args(["--val-scenes", "500", "--seed", seed]);
        if args.iter().any(|a| a == "--resume") {
            cmd.arg("--resume");
        }
        if !args.iter().any(|a| a == "--export-only") {
            run_command(&mut cmd)?;
        }
    }
    let out = &stage3;
    let held_out: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("held_out.json"))
            .with_context(|| format!("{}: the run wrote no held_out.json", out.display()))?,
    )?;
    let miou = held_out["mean_iou"]
        .as_f64()
        .context("held_out.json: mean_iou")?;
    println!("held-out scenes mIoU (full resolution, final weights): {miou:.4}");
    let model = out
        .join("checkpoints")
        .join(std::fs::read_to_string(out.join("checkpoints/latest"))?.trim());
    export(
        &model.join("model.safetensors"),
        Path::new(SEGMENTER),
        BTreeMap::from([
            ("r38.class_names".into(), serde_json::to_string(&r38_train::scenes::class_names())?),
            ("r38.trained_by".into(), "cargo xtask train-scenes (r38 train-seg --dataset fashion-scenes, three stages from the shipped classifier, CPU)".into()),
            ("r38.training_data".into(), "10,000 grey fashion scenes (96x96) from Fashion-MNIST train items".into()),
            ("r38.held_out_miou".into(), format!("{miou:.4}")),
        ]),
    )?;
    // Eight held-out scenes (t10k items) in the fashion-scenes dataset layout.
    let test = Arc::new(FashionMnist::load(&data, Split::Test)?);
    let config = SceneConfig {
        colour: false,
        ..SceneConfig::default()
    };
    let scenes = Scenes::new(test, config, HELD_OUT_SEED, 500);
    let dir = root().join("samples/fashion-scenes");
    scenes.write_dataset(&dir, "val", 0..8)?;
    println!("wrote {}", dir.display());
    Ok(())
}
