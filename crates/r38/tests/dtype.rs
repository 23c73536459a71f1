//! Half-precision inference (`LoadOptions::dtype`, what `--dtype f16|bf16` picks for a GPU)
//! against f32 on the shipped models: the same classes and nearly the same label maps. f16 runs
//! on the CPU through candle's generic kernels, the code a GPU runs; bf16, which candle's CPU
//! matrix products lack, is refused there with a message (`cargo xtask gpu-check` runs it).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use r38::{LoadOptions, Pretrained};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(file: &str, dtype: DType) -> Option<Pretrained> {
    let path = repo().join("weights").join(file);
    if !path.exists() {
        // Packaged on its own (cargo package), the crate has no shipped weights.
        return None;
    }
    let options = LoadOptions {
        dtype,
        ..LoadOptions::on(&Device::Cpu)
    };
    Some(Pretrained::load_with(&path, &options).unwrap())
}

fn first_png(dir: &str) -> r38::RgbImage {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("samples").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    r38::data::image_io::load_rgb8(&files[0]).unwrap()
}

#[test]
fn half_precision_segmentation_agrees_with_f32() {
    let Some(full) = load("fashion-scenes-segmenter.safetensors", DType::F32) else {
        return;
    };
    let image = first_png("fashion-scenes/JPEGImages");
    let reference = full.segment(&image).unwrap();
    let half = load("fashion-scenes-segmenter.safetensors", DType::F16).unwrap();
    assert_eq!(half.dtype(), DType::F16);
    let pred = half.segment(&image).unwrap();
    let same = pred
        .labels
        .iter()
        .zip(&reference.labels)
        .filter(|(a, b)| a == b)
        .count();
    let agreement = same as f64 / reference.labels.len() as f64;
    println!("f16: labels agree with f32 on {:.3}%", 100.0 * agreement);
    assert!(agreement >= 0.99, "{agreement}");
}

#[test]
fn half_precision_classification_agrees_with_f32() {
    let Some(full) = load("fashion-mnist-classifier.safetensors", DType::F32) else {
        return;
    };
    let image = first_png("fashion-items");
    let reference = full.classify(&image).unwrap();
    let half = load("fashion-mnist-classifier.safetensors", DType::F16).unwrap();
    let scores = half.classify(&image).unwrap();
    let diff = (scores[0].probability - reference[0].probability).abs();
    println!(
        "f16: top-1 p {} (f32 {})",
        scores[0].probability, reference[0].probability
    );
    assert_eq!(scores[0].index, reference[0].index);
    assert!(diff < 0.02, "{diff}");
}

/// bf16 on the CPU, and types the network does not run in, are refused with the reason.
#[test]
fn unusable_dtypes_are_refused_with_the_reason() {
    let path = repo().join("weights/fashion-mnist-classifier.safetensors");
    if !path.exists() {
        return;
    }
    for (dtype, reason) in [
        (DType::BF16, "bf16 runs on a GPU only"),
        (DType::U8, "f32, f16 or bf16"),
    ] {
        let options = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let err = Pretrained::load_with(&path, &options)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(reason), "{dtype:?}: {err}");
    }
}
