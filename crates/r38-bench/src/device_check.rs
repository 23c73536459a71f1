//! A device against the CPU, what `r38-device-check` (and `cargo xtask gpu-check`) runs on a
//! GPU: the MXNet parity fixtures in f32, f16 and bf16, and one training step's gradients.
//!
//! The forward reference is the CPU's fast engine in f32 (what a CPU user runs); the device
//! side runs under [`Engine::Exact`], the path every non-CPU device takes, so the check also
//! runs, and is tested, on the CPU itself. The gradients' CPU reference is the im2col path
//! ([`Engine::Gemm`]), which rounds as a direct convolution does: in a random network the fast
//! engine's F(4x4) Winograd rounding moves some gradients by up to 1e-2 of their largest value
//! (docs/performance.md), which would hide what this check looks for.

use candle_core::{DType, Device, Result, Tensor};
use r38_model::{BackboneConfig, HeadKind as FileHead};
use r38_ops::engine::{with_engine, Engine};
use r38_seg::HeadConfig;
use r38_tests::{relative_error, Case};
use serde::Serialize;

use crate::net::{HeadConfigDesc, HeadKind};
use crate::train_step::{random_labels, TrainStep};
use crate::weights::random_input;

/// The MXNet parity fixtures run on the device.
pub const PARITY_CASES: [&str; 4] = ["a1_cls", "a_s16", "a1_s8_seg", "a2_s8_seg"];

/// f32 on the device against the CPU: the largest difference relative to the output's largest
/// magnitude, and the share of segmentation pixels whose argmax agrees.
pub const F32_TOLERANCE: f32 = 1e-4;
/// See [`F32_TOLERANCE`].
pub const F32_ARGMAX_AGREEMENT: f64 = 0.999;
/// One training step's gradients, device against CPU (relative, per tensor).
pub const GRADIENT_TOLERANCE: f32 = 1e-4;

/// One fixture in one dtype.
#[derive(Debug, Clone, Serialize)]
pub struct ParityRow {
    pub case: String,
    pub dtype: String,
    /// Relative difference to the CPU's f32 output.
    pub vs_cpu: f32,
    /// Relative difference to MXNet's output.
    pub vs_mxnet: f32,
    /// Share of pixels with the CPU's argmax (segmentation fixtures).
    pub argmax_agreement: Option<f64>,
    /// Held to the f32 thresholds; half-precision rows are reported only.
    pub passed: Option<bool>,
}

/// The parity fixtures on `device` in `dtype`.
pub fn parity(device: &Device, dtype: DType) -> Result<Vec<ParityRow>> {
    PARITY_CASES
        .iter()
        .map(|name| {
            let case = Case::open(name);
            let file = case.weights("weights.params");
            let cpu = with_engine(Engine::Fast, || case.run(&file));
            let on_device = with_engine(Engine::Exact, || case.run_on(&file, device, dtype));
            let vs_cpu = relative_error(&on_device, &cpu);
            let vs_mxnet = relative_error(&on_device, &case.npy("output.npy"));
            let argmax_agreement = match case.head() {
                FileHead::Segmentation { .. } => Some(argmax_agreement(&on_device, &cpu)?),
                _ => None,
            };
            let passed = (dtype == DType::F32).then(|| {
                vs_cpu <= F32_TOLERANCE
                    && argmax_agreement.is_none_or(|a| a >= F32_ARGMAX_AGREEMENT)
            });
            Ok(ParityRow {
                case: name.to_string(),
                dtype: format!("{dtype:?}").to_lowercase(),
                vs_cpu,
                vs_mxnet,
                argmax_agreement,
                passed,
            })
        })
        .collect()
}

fn argmax_agreement(a: &Tensor, b: &Tensor) -> Result<f64> {
    let labels = |t: &Tensor| t.argmax(1)?.flatten_all()?.to_vec1::<u32>();
    let (a, b) = (labels(a)?, labels(b)?);
    Ok(a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64)
}

/// The training step's input scale (see [`gradients`]).
pub const INPUT_SCALE: f64 = 0.02;

/// One training step on the device against the CPU.
#[derive(Debug, Clone, Serialize)]
pub struct GradientCheck {
    pub network: String,
    pub loss_cpu: f32,
    pub loss_device: f32,
    /// Gradients compared (every parameter with one).
    pub compared: usize,
    /// The worst relative difference and its parameter.
    pub worst: f32,
    pub worst_parameter: String,
    pub passed: bool,
}

/// One step of the A1 s8 segmentation net (widths divided by `narrow`, 2-conv head, frozen BN,
/// random weights) on a `(1, 3, size, size)` crop, on the CPU and on `device`.
pub fn gradients(device: &Device, narrow: usize, size: usize) -> Result<GradientCheck> {
    let config = BackboneConfig::model_a1(8)
        .map_err(candle_core::Error::wrap)?
        .narrowed(narrow);
    let mut head = HeadConfig::two_conv(21);
    head.hidden = head.hidden.map(|h| (h / narrow).max(1));
    let head = HeadKind::Segmentation(HeadConfigDesc::from(head));
    let run = |dev: &Device, engine: Engine| {
        let step = TrainStep::new(&config, head, 7, dev)?;
        // Scaled so that the random network's scores stay in single digits: a saturated
        // softmax turns rounding into gradient jumps where two classes tie.
        let x = random_input((1, 3, size, size), 7, dev)?.affine(INPUT_SCALE, 0.0)?;
        let scores = step.net().forward_t(&x, false)?;
        let (_, _, h, w) = scores.dims4()?;
        let labels = random_labels((1, h, w), 7, 21)?.to_device(dev)?;
        let (loss, grads, _) = with_engine(engine, || step.run(&x, &labels))?;
        let mut named = Vec::new();
        for name in step.parameter_names() {
            if let Ok(g) = step.gradient(&grads, &name) {
                named.push((name, g.to_device(&Device::Cpu)?.to_dtype(DType::F32)?));
            }
        }
        Ok::<_, candle_core::Error>((loss, named))
    };
    let (loss_cpu, cpu) = run(&Device::Cpu, Engine::Gemm)?;
    let (loss_device, on_device) = run(device, Engine::Exact)?;
    let mut worst = (0f32, String::new());
    for ((name, c), (_, d)) in cpu.iter().zip(&on_device) {
        let r = relative_error(d, c);
        if r >= worst.0 {
            worst = (r, name.clone());
        }
    }
    let loss_close = (loss_cpu - loss_device).abs() <= GRADIENT_TOLERANCE * loss_cpu.abs();
    Ok(GradientCheck {
        network: format!("A1 s8 + 2-conv head, widths / {narrow}, 1x3x{size}x{size}"),
        loss_cpu,
        loss_device,
        compared: cpu.len(),
        worst: worst.0,
        worst_parameter: worst.1,
        passed: loss_close && worst.0 <= GRADIENT_TOLERANCE && !cpu.is_empty(),
    })
}
