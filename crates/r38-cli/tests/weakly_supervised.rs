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
