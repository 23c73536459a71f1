//! `LoadOptions::keep_kernels`: every pass of a loaded model reuses its Winograd kernel
//! transforms, with the same predictions, bit for bit, as transforming them afresh.

use std::path::Path;

use r38::{LoadOptions, Pretrained};

#[test]
fn kept_kernels_predict_the_same_bits_and_are_kept() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weights = root.join("weights/fashion-scenes-segmenter.safetensors");
    if !weights.exists() {
        // Packaged on its own (cargo package), the crate has no shipped weights.
        return;
    }
    let image = r38::data::image_io::load_rgb8(
        root.join("samples/fashion-scenes/JPEGImages/scene-00000.png"),
    )
    .unwrap();
    let fresh = Pretrained::load(&weights, &r38::Device::Cpu).unwrap();
    let options = LoadOptions {
        keep_kernels: true,
        ..LoadOptions::default()
    };
    let kept = Pretrained::load_with(&weights, &options).unwrap();
    let kept_bytes = |model: &Pretrained| -> usize {
        let net = model.segmentation_net().unwrap();
        net.backbone()
            .levels()
            .iter()
            .flat_map(|l| l.units())
            .flat_map(|u| u.branches())
            .map(|b| b.conv.kept_kernels().bytes())
            .sum()
    };
    assert_eq!(kept_bytes(&kept), 0);
    let a = fresh.segment(&image).unwrap();
    let b = kept.segment(&image).unwrap();
    let held = kept_bytes(&kept);
    assert!(held > 0, "no kernels were kept");
    assert_eq!(kept_bytes(&fresh), 0, "kept without being asked");
    // A second image reuses them: nothing new is made.
    let c = kept.segment(&image).unwrap();
    assert_eq!(kept_bytes(&kept), held);
    let bits = |p: &r38::seg::Prediction| {
        p.probabilities
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(bits(&b), bits(&c));
    assert_eq!(a.labels, b.labels);
}
