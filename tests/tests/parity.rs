//! Parity with the authors' framework: every case was computed by MXNet 1.9.1 from the same
//! weights (see tests/fixtures/README.md); the Rust network must agree to 1e-5 of the output's
//! largest magnitude.

use r38_model::Backbone;
use r38_tests::{relative_error, Case, PARITY_TOLERANCE};

fn check_output(name: &str, weights: &str) {
    let case = Case::open(name);
    let file = case.weights(weights);
    let err = relative_error(&case.run(&file), &case.npy("output.npy"));
    eprintln!("{name}/{weights}: relative error {err:e}");
    assert!(err <= PARITY_TOLERANCE, "{weights}: relative error {err:e}");
}

fn check_levels(name: &str) {
    let case = Case::open(name);
    let file = case.weights("weights.params");
    let x = case.input();
    let features = r38_model::build_strict(
        "weights.params",
        &file
            .tensors
            .iter()
            .filter(|(n, _)| !n.starts_with("linear") && !n.starts_with("conv6"))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        |vb| Backbone::new(&case.meta.config, vb)?.forward_levels(&x, false),
    )
    .unwrap();
    for (level, actual) in &features.levels {
        let expected = case.npy(&format!("features_level{level}.npy"));
        let err = relative_error(actual, &expected);
        eprintln!("{name} level {level}: relative error {err:e}");
        assert!(
            err <= PARITY_TOLERANCE,
            "level {level}: relative error {err:e}"
        );
    }
}

#[test]
fn a1_classifier_batch_of_two_non_square() {
    check_output("a1_cls", "weights.params");
}

#[test]
fn a1_classifier_from_legacy_header() {
    check_output("a1_cls", "weights_legacy.params");
}

#[test]
fn a1_classifier_from_v1_header() {
    check_output("a1_cls", "weights_v1.params");
}

#[test]
fn a1_classifier_from_f16_storage() {
    check_output("a1_cls", "weights_f16.params");
}

#[test]
fn a1_level_features() {
    check_levels("a1_cls");
}

#[test]
fn a1_backbone_from_pytorch_port() {
    // The PyTorch port keeps the backbone only: compare relu7.
    let case = Case::open("a1_cls");
    let file = case.weights("weights.pth");
    let x = case.input();
    let relu7 = r38_model::build_strict(
        "weights.pth",
        &file.tensors,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        |vb| Backbone::new(&case.meta.config, vb)?.forward_t(&x, false),
    )
    .unwrap();
    let err = relative_error(&relu7, &case.npy("features_level7.npy"));
    assert!(err <= PARITY_TOLERANCE, "relative error {err:e}");
}

#[test]
fn a1_s8_segmentation_scores() {
    check_output("a1_s8_seg", "weights.params");
}

#[test]
fn a1_s8_level_features() {
    check_levels("a1_s8_seg");
}

#[test]
fn a2_s8_segmentation_scores() {
    check_output("a2_s8_seg", "weights.params");
}

#[test]
fn a2_s8_level_features() {
    check_levels("a2_s8_seg");
}

#[test]
fn model_a_max_pool_same_padding() {
    check_output("a_pool_same", "weights.params");
    check_levels("a_pool_same");
}

#[test]
fn model_a_max_pool_caffe_style() {
    check_output("a_pool_caffe", "weights.params");
    check_levels("a_pool_caffe");
}

#[test]
fn model_a_s16_dilated_pool() {
    check_output("a_s16", "weights.params");
    check_levels("a_s16");
}
