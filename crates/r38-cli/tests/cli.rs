//! The command-line contract, run against the committed MXNet fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(case: &str, file: &str) -> PathBuf {
    r38_tests::fixtures_dir().join(case).join(file)
}

fn r38(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r38"))
        .args(args)
        .output()
        .expect("the r38 binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = r38(args);
    assert!(
        out.status.success(),
        "r38 {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The command fails, without a panic, with a message containing every `needles`.
fn fails(args: &[&str], needles: &[&str]) {
    let out = r38(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "r38 {args:?} should fail");
    assert!(
        !stderr.contains("panicked"),
        "r38 {args:?} panicked:\n{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "r38 {args:?}: `{n}` not in:\n{stderr}");
    }
}

/// Parity of an output file with a reference file, as in the parity tests.
fn relative_error(actual: &Path, expected: &Path) -> f32 {
    r38_tests::relative_error(
        &r38_data::npy::read_npy(actual).unwrap(),
        &r38_data::npy::read_npy(expected).unwrap(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn forward_matches(case: &str, weights: &Path, extra: &[&str], expected: &str) {
    let out = tmp(&format!(
        "{case}-{}.npy",
        weights.file_name().unwrap().to_string_lossy()
    ));
    let input = fixture(case, "input.npy");
    let mut args = vec![
        "forward",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--overwrite",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let err = relative_error(&out, &fixture(case, expected));
    assert!(
        err <= r38_tests::PARITY_TOLERANCE,
        "{case}: relative error {err:e}"
    );
}

#[test]
fn inspect_reports_format_counts_and_head() {
    let text = ok(&[
        "inspect",
        fixture("a1_cls", "weights_legacy.params").to_str().unwrap(),
    ]);
    assert!(text.contains("MxnetParams"), "{text}");
    assert!(
        text.contains("193 (119 learned, 74 BN running statistics)"),
        "{text}"
    );
    assert!(text.contains("classifier, 10 classes"), "{text}");
    assert!(
        text.contains("no match among the authors' released files"),
        "{text}"
    );
    let json = ok(&[
        "inspect",
        "--json",
        fixture("a1_s8_seg", "weights.params").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["head"]["kind"], "segmentation");
    assert_eq!(v["head"]["classes"], 5);
    assert_eq!(v["output_stride"], 8);
}

#[test]
fn forward_matches_mxnet_for_every_header_and_head() {
    for w in [
        "weights.params",
        "weights_legacy.params",
        "weights_v1.params",
        "weights_f16.params",
    ] {
        forward_matches("a1_cls", &fixture("a1_cls", w), &[], "output.npy");
    }
    forward_matches(
        "a1_cls",
        &fixture("a1_cls", "weights.params"),
        &["--head", "none"],
        "features_level7.npy",
    );
    // A resnet38d .pth runs at output stride 8 by default (psa's network); this fixture holds
    // the stride-32 MXNet case's weights, so ask for 32.
    forward_matches(
        "a1_cls",
        &fixture("a1_cls", "weights.pth"),
        &["--output-stride", "32"],
        "features_level7.npy",
    );
    forward_matches(
        "a1_s8_seg",
        &fixture("a1_s8_seg", "weights.params"),
        &[],
        "output.npy",
    );
    forward_matches(
        "a2_s8_seg",
        &fixture("a2_s8_seg", "weights.params"),
        &["--arch", "a2"],
        "output.npy",
    );
    forward_matches(
        "a_pool_caffe",
        &fixture("a_pool_caffe", "weights.params"),
        &["--arch", "a", "--pool-style", "caffe"],
        "output.npy",
    );
    forward_matches(
        "a_s16",
        &fixture("a_s16", "weights.params"),
        &["--arch", "a", "--output-stride", "16"],
        "output.npy",
    );
}

#[test]
fn converted_safetensors_needs_no_flags() {
    let out = tmp("a_pool_caffe.safetensors");
    let _ = std::fs::remove_file(&out);
    let src = fixture("a_pool_caffe", "weights.params");
    ok(&[
        "convert",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--arch",
        "a",
        "--pool-style",
        "caffe",
    ]);
    forward_matches("a_pool_caffe", &out, &[], "output.npy");
    let text = ok(&["inspect", out.to_str().unwrap()]);
    assert!(text.contains("Safetensors"), "{text}");
    assert!(text.contains("r38.source_md5"), "{text}");
    assert!(text.contains("from the file's metadata"), "{text}");
    // An existing output is never replaced silently.
    fails(
        &["convert", src.to_str().unwrap(), out.to_str().unwrap()],
        &["exists", "--overwrite"],
    );
}

#[test]
fn classify_prints_top_k() {
    let image = r38_tests::fixtures_dir().join("pillow/classify_src.png");
    let weights = fixture("a1_cls", "weights.params");
    let json = ok(&[
        "classify",
        "--weights",
        weights.to_str().unwrap(),
        "--scale",
        "64",
        "--top-k",
        "3",
        "--json",
        image.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let p: Vec<f64> = top
        .iter()
        .map(|e| e["probability"].as_f64().unwrap())
        .collect();
    assert!(p[0] >= p[1] && p[1] >= p[2] && p.iter().sum::<f64>() <= 1.0 + 1e-6);
    fails(
        &[
            "classify",
            "--weights",
            weights.to_str().unwrap(),
            "/no/such/image.jpg",
        ],
        &["/no/such/image.jpg"],
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let input = fixture("a1_cls", "input.npy");
    let out = tmp("never.npy");
    let args = |w: &str| {
        vec![
            "forward".to_string(),
            "--weights".into(),
            w.into(),
            "--input".into(),
            input.to_str().unwrap().into(),
            "--output".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>, needles: &[&str]| {
        fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    run(args("/no/such/file.params"), &["/no/such/file.params"]);
    let garbage = tmp("garbage.params");
    std::fs::write(&garbage, b"this is not a weight file at all").unwrap();
    run(args(garbage.to_str().unwrap()), &["garbage.params"]);
    let mut head = args(fixture("a1_s8_seg", "weights.params").to_str().unwrap());
    head.extend(["--head".into(), "cls".into()]);
    run(head, &["classifier asked for", "segmentation head"]);
    // A1's weights cannot be read as a network of another width.
    let seg_input = fixture("a1_s8_seg", "input.npy");
    let mut wrong_input = args(fixture("a1_cls", "weights.params").to_str().unwrap());
    wrong_input[4] = fixture("a1_cls", "meta.json").to_str().unwrap().into();
    run(wrong_input, &["meta.json"]);
    let _ = seg_input;
    assert!(!out.exists(), "no output may be written by a failed run");
}

#[test]
fn conversion_keeps_every_metadata_field() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for model in [
        "fashion-mnist-classifier.safetensors",
        "fashion-scenes-segmenter.safetensors",
    ] {
        let source = repo.join("weights").join(model);
        let out = tmp(&format!("roundtrip-{model}"));
        let _ = std::fs::remove_file(&out);
        ok(&["convert", source.to_str().unwrap(), out.to_str().unwrap()]);
        let before = r38_model::weights::load(&source).unwrap().metadata;
        let after = r38_model::weights::load(&out).unwrap().metadata;
        // Conversion may add what the file did not record; it loses and changes nothing.
        for (key, value) in &before {
            let as_json = |v: &str| serde_json::from_str::<serde_json::Value>(v).ok();
            let kept = after.get(key).is_some_and(|a| {
                a == value || (as_json(a).is_some() && as_json(a) == as_json(value))
            });
            assert!(
                kept,
                "{model}: `{key}` changed: {value} -> {:?}",
                after.get(key)
            );
        }
        // No path of the converting machine is recorded.
        let source_file = &after["r38.source_file"];
        assert!(!source_file.contains('/'), "{model}: {source_file}");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn segment_uses_the_protocol_the_file_records_and_refuses_other_class_counts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weights = repo.join("weights/fashion-scenes-segmenter.safetensors");
    let scene = repo.join("samples/fashion-scenes/JPEGImages/scene-00001.png");
    let (a, b) = (tmp("recorded-protocol"), tmp("explicit-protocol"));
    for (dir, extra) in [(&a, &[][..]), (&b, &["--scale", "96", "--flip"][..])] {
        let _ = std::fs::remove_dir_all(dir);
        let mut args = vec![
            "segment",
            "--weights",
            weights.to_str().unwrap(),
            "--out-dir",
            dir.to_str().unwrap(),
            scene.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&args);
    }
    let png = "scene-00001.png";
    assert_eq!(
        std::fs::read(a.join(png)).unwrap(),
        std::fs::read(b.join(png)).unwrap(),
        "without flags, segment must run the recorded scale 96 with flipping"
    );
    fails(
        &[
            "segment",
            "--weights",
            weights.to_str().unwrap(),
            "--dataset",
            "voc",
            "--out-dir",
            a.to_str().unwrap(),
            scene.to_str().unwrap(),
        ],
        &["11 classes", "21"],
    );
    for dir in [a, b] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
