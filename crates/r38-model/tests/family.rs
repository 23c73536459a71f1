//! The family beyond the released files: custom depth/width, train/eval behaviour, BN modes.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use r38_model::{
    Backbone, BackboneConfig, BatchNormMode, Classifier, Downsample, LevelConfig, StemConfig,
    UnitKind,
};

fn random_input(shape: (usize, usize, usize, usize)) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// A deeper-and-narrower sibling from the paper's study: four levels, more units, other widths.
fn custom() -> BackboneConfig {
    let level = |level, unit, units, widths: &[usize], downsample| LevelConfig {
        level,
        unit,
        units,
        widths: widths.to_vec(),
        downsample,
        dilate: false,
        dropout: 0.0,
    };
    BackboneConfig {
        stem: StemConfig {
            channels: 8,
            kernel: 5,
        },
        levels: vec![
            level(2, UnitKind::Basic, 4, &[8, 8], Downsample::MaxPool),
            level(3, UnitKind::Basic, 5, &[16, 12], Downsample::StridedUnit),
            level(
                4,
                UnitKind::Bottleneck,
                2,
                &[8, 16, 32],
                Downsample::StridedUnit,
            ),
            level(5, UnitKind::Bottleneck, 1, &[16, 32, 48], Downsample::None),
        ],
        pool_padding: Default::default(),
        bn_eps: 1e-5,
    }
}

#[test]
fn custom_depth_and_width_build_and_run() {
    let cfg = custom();
    cfg.validate().unwrap();
    assert_eq!(cfg.output_stride(), 8);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = Classifier::new(&cfg, 7, &vb).unwrap();
    let y = net.forward_t(&random_input((2, 3, 40, 24)), false).unwrap();
    assert_eq!(y.dims(), &[2, 7]);
    let features = net
        .backbone()
        .forward_levels(&random_input((1, 3, 40, 24)), false)
        .unwrap();
    let dims: Vec<_> = features
        .levels
        .iter()
        .map(|(l, t)| (*l, t.dims().to_vec()))
        .collect();
    assert_eq!(
        dims,
        vec![
            (2, vec![1, 8, 20, 12]),
            (3, vec![1, 12, 10, 6]),
            (4, vec![1, 32, 5, 3]),
            (5, vec![1, 48, 5, 3]),
        ]
    );
    // The shapes alone recover widths, depths and unit kinds.
    let shapes = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    let config_from_shapes = custom();
    let inferred = BackboneConfig::infer(&shapes, r38_model::Arch::A1, 16);
    assert!(inferred.is_ok(), "{inferred:?}");
    let inferred = inferred.unwrap();
    assert_eq!(inferred.stem, config_from_shapes.stem);
    for (a, b) in inferred.levels.iter().zip(&config_from_shapes.levels) {
        assert_eq!(
            (a.level, a.unit, a.units, &a.widths),
            (b.level, b.unit, b.units, &b.widths)
        );
    }
}

#[test]
fn dropout_acts_only_in_training() {
    let cfg = BackboneConfig::model_a1(8)
        .unwrap()
        .narrowed(32)
        .with_dropout(&[(6, 0.3), (7, 0.5)]);
    let varmap = VarMap::new();
    let net = Backbone::new(
        &cfg,
        &VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = random_input((1, 3, 32, 32));
    let eval1 = net.forward_t(&x, false).unwrap();
    let eval2 = net.forward_t(&x, false).unwrap();
    let train = net.forward_t(&x, true).unwrap();
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
    assert_eq!(diff(&eval1, &eval2), 0.0);
    assert!(diff(&eval1, &train) > 0.0);
}

#[test]
fn batch_statistics_mode_updates_running_statistics_frozen_does_not() {
    let cfg = BackboneConfig::model_a1(32).unwrap().narrowed(32);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let mut net = Backbone::new(&cfg, &vb).unwrap();
    let x = random_input((2, 3, 32, 32));
    let stats = |net: &Backbone| -> Vec<f32> {
        let bn = net.levels()[0].units()[0].branches()[0].pre.batch_norm();
        bn.moving_mean().to_vec1().unwrap()
    };
    let before = stats(&net);
    net.forward_t(&x, true).unwrap();
    assert_eq!(
        stats(&net),
        before,
        "frozen BN (the default) must not update its statistics"
    );
    net.set_bn_mode(BatchNormMode::BatchStatistics);
    net.forward_t(&x, false).unwrap();
    assert_eq!(stats(&net), before, "evaluation never updates statistics");
    net.forward_t(&x, true).unwrap();
    assert_ne!(stats(&net), before);
}
