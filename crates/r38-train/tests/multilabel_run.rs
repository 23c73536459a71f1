//! A short psa-style multi-label fine-tuning run through the training loop: psa's data source
//! (resize-long + crop), loss, multipliers and SGD on the reduced-width psa classifier of
//! `tests/fixtures/psa/train`. The loss falls and the frozen layers stay as loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use r38_data::Normalization;
use r38_model::{Arch, BackboneConfig, BatchNormMode, CamClassifier, Origin};
use r38_train::multilabel::{psa_policy, psa_sgd, MultiLabelImages, PsaAugment};
use r38_train::trainer::{train, Task, TrainConfig};
use r38_train::LrSchedule;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/psa")
        .join(name)
}

#[test]
fn psa_recipe_trains_through_the_loop() {
    let file = r38_model::weights::load(&fixture("train/cls.pth")).unwrap();
    let origin = Origin::detect(&file).unwrap();
    let shapes = file.shapes();
    let mut config =
        BackboneConfig::infer(&shapes, Arch::A1, origin.default_output_stride()).unwrap();
    config.bn_eps = origin.bn_eps();
    let mut built = r38_train::model::build(
        &file.tensors,
        &Device::Cpu,
        0,
        |_| false,
        |vb| CamClassifier::new(&config, 20, false, vb),
    )
    .unwrap();
    built.net.set_bn_mode(BatchNormMode::Frozen);

    // The fixture image four times, labelled bird and dog (psa's classes 2 and 11).
    let mut labels = vec![0f32; 20];
    labels[2] = 1.0;
    labels[11] = 1.0;
    let source = MultiLabelImages {
        items: vec![(fixture("image.png"), labels); 4],
        augment: PsaAugment {
            long_side: (40, 56),
            crop: 32,
            flip: true,
            norm: Normalization::default(),
        },
        loader: r38_data::ImageLoader::new(),
    };
    let out = std::env::temp_dir().join(format!("r38-multilabel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let steps = 6;
    let run = TrainConfig {
        task: Task::MultiLabel,
        steps,
        batch_size: 2,
        accumulate: 1,
        seed: 5,
        workers: 1,
        prefetch: 1,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        validate_every: 0,
        out_dir: out.clone(),
        schedule: LrSchedule::Poly {
            base: 0.01,
            power: 0.9,
            total: steps,
            floor: 0.0,
        },
        sgd: psa_sgd(5e-4),
        policy: psa_policy(),
        resume: false,
        recompute: false,
        run: serde_json::json!({"test": "psa multi-label"}),
        model_metadata: BTreeMap::new(),
    };
    let summary = train(
        &built.net,
        &built.varmap,
        Arc::new(source),
        &Device::Cpu,
        &run,
        None,
        &mut |_| {},
    )
    .unwrap();
    let losses = &summary.losses;
    eprintln!("losses {losses:?}");
    assert_eq!(losses.len(), steps);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        losses[steps - 1] < losses[0],
        "the loss did not fall: {losses:?}"
    );
    let vars = built.varmap.data().lock().unwrap();
    for name in [
        "conv1a_weight",
        "res2b1_branch2a_weight",
        "bn5a_branch2a_gamma",
    ] {
        let now = vars[name].as_tensor();
        let diff = (now - file.get(name).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} moved");
    }
    let moved = (vars["fc8_weight"].as_tensor() - file.get("fc8_weight").unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(moved > 0.0, "fc8 did not train");
    drop(vars);
    std::fs::remove_dir_all(&out).unwrap();
}
