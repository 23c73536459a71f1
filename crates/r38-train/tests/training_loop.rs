//! A few real training iterations of the narrow A1 s8 segmentation net: frozen BN, dropout
//! on, OHEM loss on stride-8 labels, SGD with the "alex" multipliers. The loss on a fixed batch
//! must go down and BN running statistics must not move.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use r38_model::BackboneConfig;
use r38_seg::{HeadConfig, SegmentationNet};
use r38_train::{
    ohem_softmax_cross_entropy, subsample_labels, LrSchedule, MultiplierPolicy, OhemConfig, Sgd,
    SgdConfig,
};

#[test]
fn ohem_sgd_iterations_reduce_the_loss() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/a1_s8_seg");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("meta.json")).unwrap()).unwrap();
    let config: BackboneConfig = serde_json::from_value(meta["config"].clone()).unwrap();
    let weights = r38_model::weights::load(&src.join("weights.params")).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &weights.tensors {
            data.insert(name.clone(), Var::from_tensor(t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = HeadConfig {
        classes: 5,
        hidden: Some(16),
        kernel: 3,
        dilation: 12,
    };
    let net = SegmentationNet::new(&config, head, &vb).unwrap();

    // A 64x48 crop with a full-resolution label map: left half class 1, right half class 3,
    // a 255 border; the loss sees labels[4::8, 4::8] (8x6), the score map's size.
    let dev = Device::Cpu;
    let x: Vec<f32> = (0..3 * 64 * 48)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(x, (1, 3, 64, 48), &dev).unwrap();
    let mut full = vec![255u32; 64 * 48];
    for y in 2..62 {
        for xx in 2..46 {
            full[y * 48 + xx] = if xx < 24 { 1 } else { 3 };
        }
    }
    let full = Tensor::from_vec(full, (1, 64, 48), &dev).unwrap();
    let labels = subsample_labels(&full, 8).unwrap();
    assert_eq!(labels.dims(), &[1, 8, 6]);

    let moving = varmap
        .data()
        .lock()
        .unwrap()
        .get("bn4b2_branch2a_moving_mean")
        .unwrap()
        .as_tensor()
        .copy()
        .unwrap();
    let mut sgd = Sgd::new(
        &varmap,
        SgdConfig::segmentation(1),
        &MultiplierPolicy::alex(),
    );
    assert!(sgd.param("bn4b2_branch2a_moving_mean").is_none());
    let schedule = LrSchedule::authors_linear(0.01, 0, 20);
    let ohem = OhemConfig {
        min_kept: 16,
        ..OhemConfig::default()
    };
    let eval_loss = || {
        let scores = net.forward_t(&x, false).unwrap();
        let (loss, _) = ohem_softmax_cross_entropy(&scores, &labels, &ohem).unwrap();
        loss.to_scalar::<f32>().unwrap()
    };
    let before = eval_loss();
    let mut losses = Vec::new();
    for _ in 0..6 {
        // Dropout (levels 6 and 7) active while training.
        let scores = net.forward_t(&x, true).unwrap();
        let (loss, stats) = ohem_softmax_cross_entropy(&scores, &labels, &ohem).unwrap();
        assert_eq!(stats.valid, 48);
        assert!(stats.kept >= 16);
        losses.push(loss.to_scalar::<f32>().unwrap());
        sgd.backward_step(&loss, &schedule).unwrap();
    }
    let after = eval_loss();
    println!("OHEM training losses {losses:?}; eval loss {before} -> {after}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(after < before, "{before} -> {after}");
    assert_eq!(sgd.num_update(), 6);
    let moving_after = varmap
        .data()
        .lock()
        .unwrap()
        .get("bn4b2_branch2a_moving_mean")
        .unwrap()
        .as_tensor()
        .copy()
        .unwrap();
    let moved = (moving_after - moving)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(moved, 0.0, "frozen BN statistics moved");
}
