//! The path a GPU takes, run on the CPU: under `Engine::Exact` every convolution and
//! pre-activation is candle's own (what CUDA and Metal run), so a short training run with
//! frozen BN, dropout and OHEM must give the fast engine's losses and weights. (It found
//! candle's ReLU gradient at 0, see `r38_ops::relu`: from-scratch layers have exact zeros.)

use std::collections::BTreeMap;

use candle_core::Device;
use r38_ops::engine::{with_engine, Engine};
use r38_train::trainer::train;

mod common;
use common::*;

fn run(engine: Engine, name: &str) -> (Vec<f64>, BTreeMap<String, Vec<f32>>) {
    let out = tmp(name);
    let built = tiny_seg_net();
    let summary = with_engine(engine, || {
        train(
            &built.net,
            &built.varmap,
            seg_source(),
            &Device::Cpu,
            &seg_config(out.clone(), 3, false),
            None,
            &mut |_| {},
        )
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let weights = built
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (n.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect();
    (summary.losses, weights)
}

#[test]
fn training_on_the_exact_path_matches_the_fast_engine() {
    let (fast_losses, fast) = run(Engine::Fast, "exact-path-fast");
    let (exact_losses, exact) = run(Engine::Exact, "exact-path-exact");
    println!("losses fast {fast_losses:?}, exact {exact_losses:?}");
    for (a, b) in fast_losses.iter().zip(&exact_losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    let mut worst = 0f32;
    for (name, x) in &fast {
        let y = &exact[name];
        let scale = y.iter().fold(1f32, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        assert!(d <= 1e-4, "{name}: {d}");
        worst = worst.max(d);
    }
    println!("weights after 3 updates, fast vs exact: max relative difference {worst:e}");
}
