//! psa's fine-tuning step (`train_cls.py`, `resnet38_cls`) against `tools/psa_reference.py`
//! (PyTorch; fixtures in `tests/fixtures/psa/train`): scores, multilabel soft-margin loss,
//! gradients and two updates of psa's `PolyOptimizer` on a reduced-width classifier, BN frozen,
//! `conv1a` and level 2 frozen, `fc8` at 10x, dropout off.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use r38_model::{Arch, BackboneConfig, BatchNormMode, CamClassifier, Origin};
use r38_train::multilabel::{multilabel_soft_margin_loss, psa_policy, psa_poly_lr, psa_sgd};
use r38_train::Sgd;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/psa")
}

fn npy(name: &str) -> Tensor {
    Tensor::read_npy(dir().join("train").join(name)).unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale.max(1e-30)
}

#[test]
fn gradients_and_updates_match_psa() {
    check_against_psa();
}

/// The GPU's path (candle's convolutions and BN) on the CPU.
#[test]
fn on_the_exact_path_gradients_and_updates_match_psa() {
    r38_ops::engine::with_engine(r38_ops::engine::Engine::Exact, check_against_psa);
}

fn check_against_psa() {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("meta.json")).unwrap()).unwrap();
    let train = &meta["train"];
    let file = r38_model::weights::load(&dir().join("train/cls.pth")).unwrap();
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
    assert!(built.new_vars.is_empty());
    built.net.set_bn_mode(BatchNormMode::Frozen);
    let mut sgd = Sgd::new(&built.varmap, psa_sgd(5e-4), &psa_policy());
    let x = npy("input.npy");
    let y = npy("labels.npy");
    let lr = train["lr"].as_f64().unwrap();
    let max_step = train["max_step"].as_u64().unwrap() as usize;
    let checked = [
        ("fc8.weight", "fc8_weight"),
        ("b7.conv_branch2b2.weight", "res7a_branch2b2_weight"),
        ("b5_1.conv_branch2a.weight", "res5b1_branch2a_weight"),
        ("b3.conv_branch1.weight", "res3a_branch1_weight"),
    ];
    for step in 0..2 {
        let scores = built.net.forward_t(&x, true).unwrap();
        let err = rel_err(&scores, &npy(&format!("scores{step}.npy")));
        assert!(err < 1e-4, "step {step}: scores {err:e}");
        let loss = multilabel_soft_margin_loss(&scores, &y).unwrap();
        let expected_loss = train["losses"][step].as_f64().unwrap();
        let got_loss = f64::from(loss.to_scalar::<f32>().unwrap());
        let loss_err = (got_loss - expected_loss).abs() / expected_loss.abs();
        assert!(
            loss_err < 1e-5,
            "step {step}: loss {got_loss} vs {expected_loss}"
        );
        let grads = loss.backward().unwrap();
        let mut report = format!("step {step}: scores {err:.1e}, loss {loss_err:.1e}");
        for (psa, ours) in checked {
            let var = sgd
                .param(ours)
                .unwrap_or_else(|| panic!("{ours} not trainable"));
            let g = grads.get(var.var.as_tensor()).unwrap();
            let file = psa.replace('.', "_");
            let gerr = rel_err(g, &npy(&format!("grad{step}_{file}.npy")));
            assert!(gerr < 1e-4, "step {step}: gradient of {ours}: {gerr:e}");
            report += &format!(", grad {ours} {gerr:.1e}");
        }
        sgd.step_lr(&grads, psa_poly_lr(lr, step, max_step))
            .unwrap();
        for (psa, ours) in checked {
            let w = sgd.param(ours).unwrap().var.as_tensor().clone();
            let file = psa.replace('.', "_");
            let werr = rel_err(&w, &npy(&format!("after{step}_{file}.npy")));
            assert!(
                werr < 1e-5,
                "step {step}: {ours} after the update: {werr:e}"
            );
        }
        eprintln!("{report}");
    }
    // Frozen layers did not move.
    for name in ["conv1a_weight", "res2a_branch2a_weight", "bn7_gamma"] {
        let p = sgd.param(name).unwrap();
        assert_eq!(p.mults.lr, 0.0, "{name}");
        assert_eq!(
            rel_err(p.var.as_tensor(), file.get(name).unwrap()),
            0.0,
            "{name} moved"
        );
    }
}

#[test]
fn psa_cls_labels_file() {
    let labels = r38_train::cls_labels::read_cls_labels(&dir().join("cls_labels.npy")).unwrap();
    assert_eq!(labels.len(), 3);
    let on = |name: &str| -> Vec<usize> {
        labels[name]
            .iter()
            .enumerate()
            .filter(|(_, v)| **v == 1.0)
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(on("2007_000032"), vec![0, 14]);
    assert_eq!(on("2008_000002"), vec![19]);
    assert!(on("2011_003276").is_empty());
    assert!(labels.values().all(|v| v.len() == 20));
    // What np.save writes today (protocol 3 bytes) is refused with a way out, naming the file.
    let path = dir().join("cls_labels_protocol3.npy");
    let err = format!(
        "{:#}",
        r38_train::cls_labels::read_cls_labels(&path).unwrap_err()
    );
    assert!(
        err.contains("protocol 2") && err.contains("cls_labels_protocol3.npy"),
        "{err}"
    );
}
