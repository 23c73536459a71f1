//! The training-step case: its MAC count agrees with the level-by-level walker's, and the
//! fast engine's gradients agree with candle's.

mod common;

use candle_core::{Device, Tensor};
use common::rel_diff;
use r38_bench::net::{BenchNet, HeadConfigDesc, HeadKind};
use r38_bench::train_step::{forward_macs, random_labels, TrainStep, COMPARED_GRADIENT};
use r38_bench::weights::{random_input, RandomWeights};
use r38_model::BackboneConfig;
use r38_ops::engine::{with_engine, Engine};
use r38_seg::HeadConfig;

fn seg_head(hidden: usize) -> HeadKind {
    let mut h = HeadConfig::two_conv(5);
    h.hidden = Some(hidden);
    HeadKind::Segmentation(HeadConfigDesc::from(h))
}

#[test]
fn forward_macs_match_the_walkers_count() {
    let dev = Device::Cpu;
    let cfg = BackboneConfig::model_a1(8).unwrap().narrowed(16);
    let head = seg_head(32);
    let input = (2, 3, 45, 38);
    let weights = RandomWeights::new(3);
    let net = BenchNet::new(&cfg, head, &weights.var_builder(&dev)).unwrap();
    let (y, parts) = net
        .forward(&random_input(input, 3, &dev).unwrap(), Engine::Fast)
        .unwrap();
    let counted: u64 = parts.iter().map(|p| p.macs).sum();
    let (h, w, macs) = forward_macs(net.backbone(), &cfg, head, input);
    assert_eq!(macs, counted);
    assert_eq!((h, w), (y.dim(2).unwrap(), y.dim(3).unwrap()));
}

#[test]
fn training_step_gradients_fast_match_exact() {
    let dev = Device::Cpu;
    let cfg = BackboneConfig::model_a1(8).unwrap().narrowed(16);
    let head = seg_head(32);
    let input = (1, 3, 41, 56);
    let step = TrainStep::new(&cfg, head, 5, &dev).unwrap();
    let x = random_input(input, 5, &dev).unwrap();
    let (h, w, _) = forward_macs(step.backbone(), &cfg, head, input);
    let labels = random_labels((1, h, w), 5, 5).unwrap();
    let mut runs = Vec::new();
    for engine in [Engine::Exact, Engine::Fast] {
        let (loss, grads, _) = with_engine(engine, || step.run(&x, &labels)).unwrap();
        let names = [
            COMPARED_GRADIENT,
            "res4a_branch2a_weight",
            "bn5b1_branch2a_gamma",
            "linear5_bias",
        ];
        let g: Vec<Tensor> = names
            .iter()
            .map(|n| step.gradient(&grads, n).unwrap())
            .collect();
        runs.push((loss, g));
    }
    let ((le, ge), (lf, gf)) = (&runs[0], &runs[1]);
    assert!(le.is_finite() && (le - lf).abs() <= 1e-5 * le.abs());
    for (e, f) in ge.iter().zip(gf) {
        assert!(
            e.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        let r = rel_diff(f, e);
        assert!(r < 1e-4, "fast vs exact gradient: {r}");
    }
}
