//! Parity with MXNet 1.9.1 (fixtures written by `tools/mxnet_training_reference.py`):
//! loss and parameter gradients of the narrow A1 s8 segmentation net through candle autograd,
//! and three SGD updates with the "alex" multipliers.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use r38_model::BackboneConfig;
use r38_seg::{HeadConfig, SegmentationNet};
use r38_train::{softmax_cross_entropy, LrSchedule, MultiplierPolicy, Sgd, SgdConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn npy(path: &Path) -> Tensor {
    r38_data::npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// max |(a - w0) - (b - w0)| / max |b - w0|: the error relative to the update itself.
fn delta_err(a: &Tensor, b: &Tensor, w0: &Tensor) -> f64 {
    rel_err(&(a - w0).unwrap(), &(b - w0).unwrap())
}

struct Case {
    dir: PathBuf,
    meta: serde_json::Value,
    varmap: VarMap,
    net: SegmentationNet,
}

fn load_case(name: &str) -> Case {
    let dir = fixtures().join("training").join(name);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    let src = fixtures().join("a1_s8_seg");
    let src_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("meta.json")).unwrap()).unwrap();
    let mut config: BackboneConfig = serde_json::from_value(src_meta["config"].clone()).unwrap();
    // Dropout off, as in the MXNet reference.
    for level in &mut config.levels {
        level.dropout = 0.0;
    }
    let weights = r38_model::weights::load(&src.join("weights.params")).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &weights.tensors {
            data.insert(name.clone(), Var::from_tensor(t).unwrap());
        }
    }
    let head = HeadConfig {
        classes: src_meta["classes"].as_u64().unwrap() as usize,
        hidden: Some(src_meta["seg_hidden"].as_u64().unwrap() as usize),
        kernel: 3,
        dilation: src_meta["seg_dilation"].as_u64().unwrap() as usize,
    };
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = SegmentationNet::new(&config, head, &vb).unwrap();
    Case {
        dir,
        meta,
        varmap,
        net,
    }
}

fn param_names(meta: &serde_json::Value) -> Vec<String> {
    meta["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn var(case: &Case, name: &str) -> Var {
    case.varmap
        .data()
        .lock()
        .unwrap()
        .get(name)
        .unwrap_or_else(|| panic!("no var {name}"))
        .clone()
}

/// Forward, loss and backward through candle; checks scores, loss and gradients.
/// Returns `Err(message)` when candle's backward fails.
fn check_gradients(case: &Case) -> Result<(), String> {
    let x = npy(&case.dir.join("input.npy"));
    let labels = npy(&case.dir.join("labels.npy"));
    let scores = case.net.forward_t(&x, true).unwrap();
    let expected_scores = npy(&case.dir.join("scores.npy"));
    let e = rel_err(&scores, &expected_scores);
    println!("scores rel err {e:.3e}");
    assert!(e < 1e-5, "scores differ: {e}");

    let loss = softmax_cross_entropy(&scores, &labels, 255).unwrap();
    let loss_v = loss.to_scalar::<f32>().unwrap() as f64;
    let expected = case.meta["loss"].as_f64().unwrap();
    println!(
        "loss {loss_v:.9} mxnet {expected:.9} diff {:.3e}",
        loss_v - expected
    );
    assert!((loss_v - expected).abs() < 1e-5 * expected.abs().max(1.0));

    let grads = loss.backward().map_err(|e| e.to_string())?;
    for name in param_names(&case.meta) {
        let v = var(case, &name);
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let expected = npy(&case.dir.join(format!("grad_{name}.npy")));
        let e = rel_err(g, &expected);
        println!("grad {name:<26} rel err {e:.3e}");
        assert!(e < 1e-4, "gradient of {name} differs: {e}");
    }
    Ok(())
}

#[test]
fn even_remainders_loss_and_gradients_match_mxnet() {
    let case = load_case("even_rem");
    check_gradients(&case).expect("backward");
}

#[test]
fn diag_exact() {
    let case = load_case("even_rem");
    r38_ops::engine::with_engine(r38_ops::engine::Engine::Exact, || check_gradients(&case))
        .expect("backward");
}

/// 56x44 input: the level-4 strided convs see 14x11, where candle's own conv2d backward fails
/// (see `r38_ops::conv_grad`); `r38_ops::Conv2d` routes around it.
#[test]
fn mixed_remainders_loss_and_gradients_match_mxnet() {
    let case = load_case("mixed_rem");
    check_gradients(&case).expect("backward through odd-by-even strided convs");
}

#[test]
fn three_sgd_updates_match_mxnet() {
    for case_name in ["even_rem", "mixed_rem"] {
        let case = load_case(case_name);
        let names = param_names(&case.meta);
        let opt_meta = &case.meta["optimizer"];
        let config = SgdConfig {
            momentum: opt_meta["momentum"].as_f64().unwrap(),
            weight_decay: opt_meta["wd"].as_f64().unwrap(),
            rescale_grad: opt_meta["rescale_grad"].as_f64().unwrap(),
            clip_gradient: None,
            kind: r38_train::MomentumKind::Standard,
        };
        let schedule = LrSchedule::Fixed {
            base: opt_meta["lr"].as_f64().unwrap(),
        };
        let vars: Vec<(String, Var)> = names.iter().map(|n| (n.clone(), var(&case, n))).collect();
        let mut sgd = Sgd::from_vars(vars, config, &MultiplierPolicy::alex());
        // Multipliers agree with the ones MXNet was given.
        for name in &names {
            let m = &opt_meta["multipliers"][name];
            let p = sgd.param(name).unwrap();
            assert_eq!(p.mults.lr, m[0].as_f64().unwrap(), "{name}");
            assert_eq!(p.mults.wd, m[1].as_f64().unwrap(), "{name}");
        }
        // The MXNet gradients, fed at every step.
        let mut grads = GradStore::default();
        for name in &names {
            let g = npy(&case.dir.join(format!("grad_{name}.npy")));
            grads.insert(var(&case, name).as_tensor(), g);
        }
        let steps = opt_meta["steps"].as_u64().unwrap();
        let initial: Vec<Tensor> = names
            .iter()
            .map(|n| var(&case, n).as_tensor().copy().unwrap())
            .collect();
        let (mut worst, mut worst_delta) = (0f64, 0f64);
        for step in 1..=steps {
            sgd.step(&grads, &schedule).unwrap();
            for (name, w0) in names.iter().zip(&initial) {
                let w = var(&case, name);
                let expected = npy(&case.dir.join(format!("step{step}_{name}.npy")));
                let e = rel_err(w.as_tensor(), &expected);
                let ed = delta_err(w.as_tensor(), &expected, w0);
                worst = worst.max(e);
                worst_delta = worst_delta.max(ed);
                assert!(e < 1e-5, "{case_name} step {step} {name}: {e}");
                assert!(ed < 1e-2, "{case_name} step {step} {name}: update {ed}");
            }
        }
        println!(
            "{case_name}: worst optimizer rel err over {steps} steps {worst:.3e} \
             (of the weights), {worst_delta:.3e} (of the total update w_k - w_0)"
        );
        assert_eq!(sgd.num_update(), steps as usize);
    }
}

#[test]
fn optimizer_state_round_trips() {
    let case = load_case("even_rem");
    let names = param_names(&case.meta);
    let vars: Vec<(String, Var)> = names.iter().map(|n| (n.clone(), var(&case, n))).collect();
    let config = SgdConfig::segmentation(1);
    let schedule = LrSchedule::Fixed { base: 0.01 };
    let mut grads = GradStore::default();
    for name in &names {
        let g = npy(&case.dir.join(format!("grad_{name}.npy")));
        grads.insert(var(&case, name).as_tensor(), g);
    }
    let mut a = Sgd::from_vars(vars.clone(), config, &MultiplierPolicy::alex());
    a.step(&grads, &schedule).unwrap();
    let path = std::env::temp_dir().join(format!(
        "r38_train_state_{}.safetensors",
        std::process::id()
    ));
    a.save_state(&path).unwrap();
    let mut b = Sgd::from_vars(vars, config, &MultiplierPolicy::alex());
    b.load_state(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(b.num_update(), 1);
    for p in a.params() {
        let q = b.param(&p.name).unwrap();
        let (ma, mb) = (p.momentum_buffer().unwrap(), q.momentum_buffer().unwrap());
        assert_eq!(rel_err(ma, mb), 0.0, "{}", p.name);
    }
}

/// Rescaled and clipped gradients with a poly schedule, for MXNet's `sgd` and its `nag`
/// (which computes the authors' Torch-style Nesterov update).
#[test]
fn optimizer_variants_match_mxnet() {
    let case = load_case("even_rem");
    let variants = case.meta["variants"].as_object().unwrap().clone();
    assert_eq!(variants.len(), 2);
    for (vname, v) in &variants {
        let case = load_case("even_rem");
        let names: Vec<String> = v["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let kind = match v["optimizer"].as_str().unwrap() {
            "sgd" => r38_train::MomentumKind::Standard,
            "nag" => r38_train::MomentumKind::TorchNesterov,
            other => panic!("{other}"),
        };
        let config = SgdConfig {
            momentum: v["momentum"].as_f64().unwrap(),
            weight_decay: v["wd"].as_f64().unwrap(),
            rescale_grad: v["rescale_grad"].as_f64().unwrap(),
            clip_gradient: v["clip_gradient"].as_f64(),
            kind,
        };
        let s = &v["schedule"];
        let schedule = LrSchedule::Poly {
            base: s["base"].as_f64().unwrap(),
            power: s["power"].as_f64().unwrap(),
            total: s["max_update"].as_u64().unwrap() as usize,
            floor: s["final_lr"].as_f64().unwrap(),
        };
        let vars: Vec<(String, Var)> = names.iter().map(|n| (n.clone(), var(&case, n))).collect();
        let mut sgd = Sgd::from_vars(vars, config, &MultiplierPolicy::alex());
        let mut grads = GradStore::default();
        for name in &names {
            let g = npy(&case.dir.join(format!("grad_{name}.npy")));
            grads.insert(var(&case, name).as_tensor(), g);
        }
        let initial: Vec<Tensor> = names
            .iter()
            .map(|n| var(&case, n).as_tensor().copy().unwrap())
            .collect();
        let (mut worst, mut worst_delta) = (0f64, 0f64);
        for step in 1..=v["steps"].as_u64().unwrap() {
            sgd.step(&grads, &schedule).unwrap();
            for (name, w0) in names.iter().zip(&initial) {
                let w = var(&case, name);
                let expected = npy(&case.dir.join(vname).join(format!("step{step}_{name}.npy")));
                let e = rel_err(w.as_tensor(), &expected);
                let ed = delta_err(w.as_tensor(), &expected, w0);
                worst = worst.max(e);
                worst_delta = worst_delta.max(ed);
                assert!(e < 1e-5, "{vname} step {step} {name}: {e}");
                assert!(ed < 1e-3, "{vname} step {step} {name}: update {ed}");
            }
        }
        println!(
            "{vname}: worst rel err {worst:.3e} (of the weights), {worst_delta:.3e} (of the update)"
        );
    }
}
