//! `r38 demo`, the README's first command, on the committed models and samples.

use std::path::PathBuf;
use std::process::Command;

fn demo(out: &PathBuf, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_r38"))
        .arg("demo")
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .output()
        .expect("the r38 binary runs")
}

#[test]
fn demo_classifies_and_segments_the_shipped_samples() {
    let out = std::env::temp_dir().join(format!("r38-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = demo(&out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "r38 demo failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // The shipped classifier has 92.5%+ test accuracy: of the ten sample items, at most two
    // may be wrong for this test to pass.
    let items = report["classification"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    assert!(report["classification"]["correct"].as_u64().unwrap() >= 8);
    let scenes = report["segmentation"]["scenes"].as_array().unwrap();
    assert_eq!(scenes.len(), 8);
    for s in scenes {
        for key in ["labels", "overlay"] {
            let path = PathBuf::from(s[key].as_str().unwrap());
            assert!(path.is_file(), "{} missing", path.display());
        }
    }
    let accuracy = report["segmentation"]["metrics"]["pixel_accuracy"]
        .as_f64()
        .unwrap();
    assert!(accuracy > 0.8, "pixel accuracy {accuracy}");
    // The library's two calls (README, examples/quickstart.rs) give the demo's outputs.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let classifier = r38::Pretrained::load(
        repo.join("weights/fashion-mnist-classifier.safetensors"),
        &r38::Device::Cpu,
    )
    .unwrap();
    for item in items {
        let image = r38::load_image(
            repo.join("samples/fashion-items").join(
                PathBuf::from(item["image"].as_str().unwrap())
                    .file_name()
                    .unwrap(),
            ),
        )
        .unwrap();
        let top = &classifier.classify(&image).unwrap()[0];
        assert_eq!(top.name, item["top"][0]["name"].as_str().unwrap());
        let written = item["top"][0]["probability"].as_f64().unwrap() as f32;
        assert_eq!(top.probability, written);
    }
    let segmenter = r38::Pretrained::load(
        repo.join("weights/fashion-scenes-segmenter.safetensors"),
        &r38::Device::Cpu,
    )
    .unwrap();
    let scene = segmenter
        .segment(
            &r38::load_image(repo.join("samples/fashion-scenes/JPEGImages/scene-00000.png"))
                .unwrap(),
        )
        .unwrap();
    let library_png = out.join("library-scene-00000.png");
    r38::data::datasets::write_label_png(
        &library_png,
        &scene.label_map().unwrap(),
        Some(&segmenter.palette()),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&library_png).unwrap(),
        std::fs::read(out.join("scene-00000.png")).unwrap(),
        "the library's label map differs from the demo's"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("authors' full-size weights"));
    // Nothing is replaced without --overwrite.
    let again = demo(&out, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("report.md"));
    assert!(demo(&out, &["--overwrite"]).status.success());
    std::fs::remove_dir_all(&out).unwrap();
}
