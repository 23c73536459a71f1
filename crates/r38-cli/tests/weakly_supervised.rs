//! `r38 inspect`, `convert` and `cam` on psa's classifier checkpoint (`tests/fixtures/psa`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn psa(file: &str) -> PathBuf {
    r38_tests::fixtures_dir().join("psa").join(file)
}

fn r38(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r38"))
        .args(args)
        .output()
        .expect("the r38 binary runs")
}

fn ok(args: &[&str]) -> (String, String) {
    let out = r38(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "r38 {args:?} failed:\n{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-ws-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn inspect_names_psa_and_its_head() {
    let weights = psa("cls.pth");
    let (text, _) = ok(&["inspect", weights.to_str().unwrap()]);
    assert!(text.contains("lineage:     psa"), "{text}");
    assert!(text.contains("fc8"), "{text}");
    assert!(text.contains("output stride 8"), "{text}");
    assert!(text.contains("bn eps:      0.00001"), "{text}");
}

#[test]
fn converted_file_keeps_lineage_and_eps() {
    let dir = scratch("convert");
    let out = dir.join("psa.safetensors");
    let weights = psa("cls.pth");
    ok(&["convert", weights.to_str().unwrap(), out.to_str().unwrap()]);
    let (text, _) = ok(&["inspect", out.to_str().unwrap()]);
    assert!(text.contains("r38.lineage = psa"), "{text}");
    assert!(text.contains("r38.bn_eps = 0.00001"), "{text}");
    assert!(text.contains("output stride 8"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cam_writes_psa_outputs_and_refuses_to_overwrite() {
    let dir = scratch("cam");
    let weights = psa("cls.pth");
    let image = psa("image.png");
    let args = [
        "cam",
        "--weights",
        weights.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
        "--labels",
        "2,11,14",
    ];
    let (_, stderr) = ok(&args);
    assert!(stderr.contains("labelled classes [2, 11, 14]"), "{stderr}");
    for f in [
        "image.npy",
        "image_cam_pred.png",
        "image_2_overlay.png",
        "image_11_overlay.png",
        "image_14_overlay.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let npy = std::fs::read(dir.join("image.npy")).unwrap();
    assert!(npy.starts_with(b"\x93NUMPY\x01\x00"));
    // The three 34x45 float32 maps are in the file.
    assert!(npy.len() > 3 * 34 * 45 * 4);
    let pred = r38_data::image::open(dir.join("image_cam_pred.png")).unwrap();
    assert_eq!((pred.width(), pred.height()), (45, 34));

    let out = r38(&args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("image.npy exists"), "{stderr}");
    let mut again = args.to_vec();
    again.push("--overwrite");
    ok(&again);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn classify_points_psa_files_to_cam() {
    let weights = psa("cls.pth");
    let image = psa("image.png");
    let out = r38(&[
        "classify",
        "--weights",
        weights.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("r38 cam") && stderr.contains("cls.pth"),
        "{stderr}"
    );
}

#[test]
fn cam_needs_an_fc8_head() {
    let dir = scratch("cam-mxnet");
    let weights = r38_tests::fixtures_dir().join("a1_cls/weights.params");
    let image = psa("image.png");
    let out = r38(&[
        "cam",
        "--weights",
        weights.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fc8") && stderr.contains("weights.params"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seam_and_one_stage_wseg_files_say_what_is_not_loaded() {
    let seam = psa("seam.pth");
    let (text, _) = ok(&["inspect", seam.to_str().unwrap()]);
    assert!(text.contains("lineage:     SEAM"), "{text}");
    assert!(text.contains("channel 0 background"), "{text}");
    assert!(
        text.contains("unsupported: SEAM's pixel correlation module"),
        "{text}"
    );
    let wseg = psa("wseg.pth");
    let (text, _) = ok(&["inspect", wseg.to_str().unwrap()]);
    assert!(text.contains("lineage:     1-stage-wseg"), "{text}");
    assert!(
        text.contains("unsupported: 1-stage-wseg's segmentation decoder"),
        "{text}"
    );
    // Both run without flags: backbone features / fc8 scores at output stride 8.
    let dir = scratch("forward");
    let input = psa("input.npy");
    let out = dir.join("relu7.npy");
    ok(&[
        "forward",
        "--weights",
        wseg.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let got = candle_core::Tensor::read_npy(&out).unwrap();
    let want = candle_core::Tensor::read_npy(psa("wseg_relu7.npy")).unwrap();
    let err = r38_tests::relative_error(&got, &want);
    assert!(err <= 1e-4, "1-stage-wseg relu7: {err:e}");
    let out = dir.join("scores.npy");
    let image = psa("image.png");
    ok(&[
        "forward",
        "--weights",
        seam.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        candle_core::Tensor::read_npy(&out).unwrap().dims(),
        &[1, 21]
    );
    let refused = r38(&[
        "cam",
        "--weights",
        seam.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PCM"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cam_takes_labels_from_psa_cls_labels_by_image_name() {
    let dir = scratch("cls-labels");
    // psa looks labels up by the VOC image name: give the fixture image such a name.
    let image = dir.join("2007_000032.png");
    std::fs::copy(psa("image.png"), &image).unwrap();
    let weights = psa("cls.pth");
    let labels = psa("cls_labels.npy");
    let out = dir.join("out");
    let (_, stderr) = ok(&[
        "cam",
        "--weights",
        weights.to_str().unwrap(),
        "--cls-labels",
        labels.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(stderr.contains("labelled classes [0, 14]"), "{stderr}");
    // An image the file does not know is an error naming both.
    let unknown = dir.join("unknown.png");
    std::fs::copy(psa("image.png"), &unknown).unwrap();
    let res = r38(&[
        "cam",
        "--weights",
        weights.to_str().unwrap(),
        "--cls-labels",
        labels.to_str().unwrap(),
        unknown.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("no labels for `unknown`") && stderr.contains("cls_labels.npy"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn multi_label_training_then_cams() {
    let dir = scratch("train-multilabel");
    let voc = dir.join("VOC2012");
    std::fs::create_dir_all(voc.join("JPEGImages")).unwrap();
    let image = r38_data::image::open(psa("image.png")).unwrap().to_rgb8();
    for name in ["2007_000032", "2008_000002"] {
        image
            .save_with_format(
                voc.join("JPEGImages").join(format!("{name}.jpg")),
                r38_data::image::ImageFormat::Jpeg,
            )
            .unwrap();
    }
    let list = dir.join("train.txt");
    std::fs::write(
        &list,
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\
         /JPEGImages/2008_000002.jpg\n",
    )
    .unwrap();
    let labels = psa("cls_labels.npy");
    let init = psa("train/cls.pth");
    let out = dir.join("run");
    let (stdout, _) = ok(&[
        "train-cls",
        "--multi-label",
        "--dataset",
        "voc",
        "--root",
        voc.to_str().unwrap(),
        "--list",
        list.to_str().unwrap(),
        "--cls-labels",
        labels.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--accumulate",
        "1",
        "--crop",
        "32",
    ]);
    assert!(stdout.contains("voc multi-label: 2 images"), "{stdout}");
    assert!(stdout.contains("power: 0.9"), "psa's poly power: {stdout}");
    let model = out.join("checkpoints/step-00000002/model.safetensors");
    let (text, _) = ok(&["inspect", model.to_str().unwrap()]);
    assert!(text.contains("r38.lineage = psa"), "{text}");
    assert!(text.contains("fc8"), "{text}");
    let cams = dir.join("cams");
    let photo = voc.join("JPEGImages/2007_000032.jpg");
    let (_, stderr) = ok(&[
        "cam",
        "--weights",
        model.to_str().unwrap(),
        "--cls-labels",
        labels.to_str().unwrap(),
        photo.to_str().unwrap(),
        "--out-dir",
        cams.to_str().unwrap(),
    ]);
    assert!(stderr.contains("labelled classes [0, 14]"), "{stderr}");
    assert!(cams.join("2007_000032.npy").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
