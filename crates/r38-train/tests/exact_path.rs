//! The path a GPU takes, run on the CPU: under `Engine::Exact` every convolution and
//! pre-activation is candle's own (what CUDA and Metal run), so a short training run with
//! frozen BN, dropout and OHEM must give the fast engine's losses and weights. (It found
//! candle's ReLU gradient at 0, see `r38_ops::relu`: from-scratch layers have exact zeros.)

use candle_core::Device;
use r38_ops::engine::{with_engine, Engine};
use r38_train::trainer::train;

mod common;
use common::*;

fn run(engine: Engine, name: &str) -> (Vec<f64>, Weights) {
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
    (summary.losses, weights(&built.varmap))
}

#[test]
fn training_on_the_exact_path_matches_the_fast_engine() {
    let (fast_losses, fast) = run(Engine::Fast, "exact-path-fast");
    let (exact_losses, exact) = run(Engine::Exact, "exact-path-exact");
    println!("losses fast {fast_losses:?}, exact {exact_losses:?}");
    for (a, b) in fast_losses.iter().zip(&exact_losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    let worst = max_relative_difference(&fast, &exact);
    assert!(worst <= 1e-4, "{worst}");
    println!("weights after 3 updates, fast vs exact: max relative difference {worst:e}");
}
