//! Single-convolution timings at ResNet-38's full-size shapes, exact vs fast vs fast with kept
//! Winograd kernels, interleaved.

use crate::stats::median;
use candle_core::{Device, Result, Tensor};
use r38_ops::engine::{conv2d_kept, conv2d_with, Engine, KeptKernels};
use r38_ops::ConvSpec;
use std::time::Instant;

/// (label, N, Cin, Cout, H, W, k, stride, dilation)
pub type Layer = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

pub const LAYERS: &[Layer] = &[
    ("1a 3x3 3->64 224", 1, 3, 64, 224, 224, 3, 1, 1),
    ("2a 3x3/2 64->128 224", 1, 64, 128, 224, 224, 3, 2, 1),
    ("2b 3x3 128->128 112", 1, 128, 128, 112, 112, 3, 1, 1),
    ("3b 3x3 256->256 56", 1, 256, 256, 56, 56, 3, 1, 1),
    ("4b 3x3 512->512 28", 1, 512, 512, 28, 28, 3, 1, 1),
    ("5b 3x3 1024->512 14", 1, 1024, 512, 14, 14, 3, 1, 1),
    ("6a 3x3 512->1024 7", 1, 512, 1024, 7, 7, 3, 1, 1),
    ("7a 3x3 1024->2048 7", 1, 1024, 2048, 7, 7, 3, 1, 1),
    ("6a 1x1/2 1024->2048 14", 1, 1024, 2048, 14, 14, 1, 2, 1),
    ("7a 1x1 2048->4096 7", 1, 2048, 4096, 7, 7, 1, 1, 1),
    ("s8 5b 3x3 d2 1024->512 63", 1, 1024, 512, 63, 63, 3, 1, 2),
    ("s8 7a 3x3 d4 1024->2048 63", 1, 1024, 2048, 63, 63, 3, 1, 4),
    ("s8 7a 1x1 2048->4096 63", 1, 2048, 4096, 63, 63, 1, 1, 1),
    (
        "s8 head 3x3 d12 4096->512 63",
        1,
        4096,
        512,
        63,
        63,
        3,
        1,
        12,
    ),
    (
        "frame head 3x3 d12 4096->512",
        1,
        4096,
        512,
        128,
        256,
        3,
        1,
        12,
    ),
    ("4b b8 3x3 512->512 28", 8, 512, 512, 28, 28, 3, 1, 1),
    ("5b b8 3x3 1024->512 14", 8, 1024, 512, 14, 14, 3, 1, 1),
    ("7a b8 3x3 1024->2048 7", 8, 1024, 2048, 7, 7, 3, 1, 1),
];

/// One layer's figures: label, GMACs, and median ms of exact, fast and fast with kept kernels.
pub type LayerTimes = (String, f64, f64, f64, f64);

/// Per layer: label, GMACs, median ms of exact, fast and fast with kept kernels (made in an
/// untimed first call).
pub fn run(reps: usize, filter: Option<&str>) -> Result<Vec<LayerTimes>> {
    let dev = Device::Cpu;
    let mut out = Vec::new();
    for &(label, n, cin, cout, h, w, k, s, d) in LAYERS {
        if filter.is_some_and(|f| !label.contains(f)) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev)?;
        let wt = Tensor::randn(0f32, 0.05, (cout, cin, k, k), &dev)?;
        let spec = ConvSpec::new(cin, cout, k).stride(s).dilation(d);
        let y = conv2d_with(Engine::Fast, &x, &wt, None, &spec)?;
        let macs = (n * cin * cout * k * k * y.dim(2)? * y.dim(3)?) as f64;
        let kept = KeptKernels::default();
        conv2d_kept(&x, &wt, None, &spec, &kept)?;
        let (mut te, mut tf, mut tk) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            conv2d_with(Engine::Exact, &x, &wt, None, &spec)?;
            te.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            conv2d_with(Engine::Fast, &x, &wt, None, &spec)?;
            tf.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            conv2d_kept(&x, &wt, None, &spec, &kept)?;
            tk.push(t.elapsed().as_secs_f64() * 1e3);
        }
        out.push((
            label.to_string(),
            macs / 1e9,
            median(&mut te),
            median(&mut tf),
            median(&mut tk),
        ));
    }
    Ok(out)
}

/// Median ms of the pre-activation as the model computes it (BN folded to scale/shift by
/// candle broadcast ops, then ReLU) and of a residual add, on an `(n, c, h, w)` map.
pub fn preactivation_ms(reps: usize, shape: (usize, usize, usize, usize)) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let (_, c, _, _) = shape;
    let x = Tensor::randn(0f32, 1.0, shape, &dev)?;
    let scale = Tensor::randn(0f32, 1.0, (1, c, 1, 1), &dev)?;
    let shift = Tensor::randn(0f32, 1.0, (1, c, 1, 1), &dev)?;
    let (mut tb, mut ta) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let y = x.broadcast_mul(&scale)?.broadcast_add(&shift)?.relu()?;
        tb.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _z = (&x + &y)?;
        ta.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&mut tb), median(&mut ta)))
}
