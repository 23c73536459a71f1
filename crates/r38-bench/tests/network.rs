//! Whole-network checks: the bench's level-by-level forward pass equals the real model's, and the
//! fast engine stays within 1e-4 (relative to the output's largest magnitude) of candle's path.

mod common;

use candle_core::Device;
use common::rel_diff;
use r38_bench::net::{BenchNet, HeadConfigDesc, HeadKind};
use r38_bench::weights::{random_input, RandomWeights};
use r38_model::{BackboneConfig, Classifier};
use r38_ops::engine::{with_kept_kernels, Engine};
use r38_seg::{HeadConfig, SegmentationNet};

#[test]
fn a1_s32_narrowed_classifier_fast_matches_exact() {
    let dev = Device::Cpu;
    let cfg = BackboneConfig::model_a1(32).unwrap().narrowed(16);
    let weights = RandomWeights::new(7);
    let vb = weights.var_builder(&dev);
    let model = Classifier::new(&cfg, 10, &vb).unwrap();
    let net = BenchNet::new(&cfg, HeadKind::Classifier { classes: 10 }, &vb).unwrap();
    // Batch 2, non-square, odd: every strided level sees odd and even sizes.
    let x = random_input((2, 3, 61, 45), 7, &dev).unwrap();
    let reference = model.forward_t(&x, false).unwrap();
    let (exact, parts) = net.forward(&x, Engine::Exact).unwrap();
    let (fast, _) = net.forward(&x, Engine::Fast).unwrap();
    assert_eq!(parts.len(), 8, "conv1a, level2..7, head");
    // The model runs on the default engine, the fast one.
    assert!(
        rel_diff(&fast, &reference) < 1e-6,
        "walker differs from the model"
    );
    let r = rel_diff(&fast, &exact);
    assert!(r < 1e-4, "fast vs exact: {r}");
}

#[test]
fn a1_s8_narrowed_segmentation_fast_matches_exact() {
    let dev = Device::Cpu;
    let cfg = BackboneConfig::model_a1(8).unwrap().narrowed(16);
    let mut head = HeadConfig::two_conv(21);
    head.hidden = Some(32);
    let weights = RandomWeights::new(8);
    let vb = weights.var_builder(&dev);
    let model = SegmentationNet::new(&cfg, head, &vb).unwrap();
    let net = BenchNet::new(
        &cfg,
        HeadKind::Segmentation(HeadConfigDesc::from(head)),
        &vb,
    )
    .unwrap();
    // Output 17x13 at stride 8, batch 2: enough tiles that the dilated (d2, d4, d12) 3x3 convs
    // take the Winograd path, on maps smaller than the d12 reach.
    let x = random_input((2, 3, 131, 97), 8, &dev).unwrap();
    let reference = model.forward_t(&x, false).unwrap();
    let (exact, _) = net.forward(&x, Engine::Exact).unwrap();
    let (fast, _) = net.forward(&x, Engine::Fast).unwrap();
    // The model runs on the default engine, the fast one.
    assert!(
        rel_diff(&fast, &reference) < 1e-6,
        "walker differs from the model"
    );
    let r = rel_diff(&fast, &exact);
    assert!(r < 1e-4, "fast vs exact: {r}");
    // The default engine, as Conv2d::forward uses it.
    let y = model.forward_t(&x, false).unwrap();
    assert!(rel_diff(&y, &reference) < 1e-4);
    // Kernels kept across passes (the model's Conv2d layers and the walker's alike): the
    // second pass reuses the first's and gives the same bits.
    let kept = |n: &BenchNet| with_kept_kernels(|| n.forward(&x, Engine::Fast)).unwrap().0;
    let (first, second) = (kept(&net), kept(&net));
    assert_eq!(rel_diff(&first, &second), 0.0);
    let r = rel_diff(&first, &exact);
    assert!(r < 1e-4, "fast with kept kernels vs exact: {r}");
    let model_kept = with_kept_kernels(|| model.forward_t(&x, false)).unwrap();
    assert!(rel_diff(&model_kept, &first) < 1e-6);
}

#[test]
fn weights_are_deterministic_and_plain() {
    let dev = Device::Cpu;
    let a = RandomWeights::new(1);
    let b = RandomWeights::new(1);
    let cfg = BackboneConfig::model_a1(32).unwrap().narrowed(32);
    Classifier::new(&cfg, 5, &a.var_builder(&dev)).unwrap();
    Classifier::new(&cfg, 5, &b.var_builder(&dev)).unwrap();
    let (ta, tb) = (a.tensors(), b.tensors());
    assert_eq!(ta.len(), tb.len());
    for (k, v) in &ta {
        assert!(!v.track_op(), "{k} would be tracked by autograd");
        assert_eq!(rel_diff(v, &tb[k]), 0.0, "{k}");
    }
}
