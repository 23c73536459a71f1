//! The pre-activation `ReLU(BN(x))` in one pass over the map, with its backward pass.
//!
//! As separate candle operations, BN and ReLU cost a transposed copy for the batch statistics,
//! then a multiply, an add and a ReLU, each a single-threaded pass that autograd keeps alive
//! until backward; in training on small maps they cost as much as the convolutions. Here the
//! forward pass is one parallel pass computing exactly what [`crate::BatchNorm`] computes
//! (`x * scale + shift`, `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`,
//! the same f32 roundings), and the backward pass one more:
//!
//! with `g = dy * [y > 0]` and `xhat = (x - mean) / sqrt(var + eps)`, per channel
//! `dbeta = sum(g)`, `dgamma = sum(g * xhat)`, and
//! - frozen statistics: `dx = g * scale`;
//! - batch statistics (the mean and variance depend on `x`):
//!   `dx = scale * (g - dbeta / M - xhat * dgamma / M)`, `M = N * H * W`.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `ReLU(BN(x))` of an NCHW f32 CPU tensor, normalised by `mean` and `var` (one per channel).
/// With `batch_statistics` the gradient also flows through the statistics, which must then be
/// those of `x` ([`channel_moments`]).
pub fn bn_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f64,
    batch_statistics: bool,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if mean.len() != c || var.len() != c || gamma.elem_count() != c || beta.elem_count() != c {
        candle_core::bail!("bn_relu: {c} channels but statistics or gamma/beta of other sizes");
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BnRelu {
            mean,
            var,
            eps,
            batch_statistics,
        },
    )
}

/// Per-channel mean and biased variance of an NCHW f32 CPU tensor (accumulated in f64).
pub fn channel_moments(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let m = x.contiguous()?.apply_op1_no_bwd(&ChannelMoments)?;
    let v = m.to_vec2::<f32>()?;
    Ok((v[0].clone(), v[1].clone()))
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("bn_relu: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("bn_relu: {what} must be contiguous"),
    }
}

fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((n, c, h * w))
}

/// `sum(f(v))` with f32 partial sums over runs of 256 values, added up in f64.
fn chunked_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    values
        .chunks(256)
        .map(|run| f64::from(run.iter().map(|&v| f(v)).sum::<f32>()))
        .sum()
}

struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "r38-channel-moments"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "input")?;
        let (n, c, hw) = nchw(l)?;
        let count = (n * hw).max(1) as f64;
        let moments: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let planes = || (0..n).map(|ni| &x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw]);
                let sum: f64 = planes().map(|p| chunked_sum(p, |v| v)).sum();
                // Two passes: the centred sum of squares keeps its precision for large means.
                let m = (sum / count) as f32;
                let sq: f64 = planes()
                    .map(|p| chunked_sum(p, |v| (v - m) * (v - m)))
                    .sum();
                (m, (sq / count) as f32)
            })
            .collect();
        let mut out: Vec<f32> = moments.iter().map(|m| m.0).collect();
        out.extend(moments.iter().map(|m| m.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

struct BnRelu {
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f64,
    batch_statistics: bool,
}

impl BnRelu {
    /// `1 / sqrt(var + eps)` as candle computes it in f32.
    fn inv_std(&self) -> Vec<f32> {
        inv_std(&self.var, self.eps)
    }

    fn scale_shift(&self, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let ScaleShift { scale, shift } =
            ScaleShift::new(gamma, beta, &self.mean, &self.var, self.eps);
        (scale, shift)
    }
}

/// `1 / sqrt(var + eps)` as candle computes it in f32.
fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    let eps = eps as f32;
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

/// A pre-activation in inference, its BN folded into one scale and shift per channel:
/// `ReLU(x * scale + shift)`, what [`bn_relu`] computes. Convolutions that read their input
/// through it ([`crate::engine::conv2d_after`]) never write the pre-activated map.
#[derive(Debug, Clone)]
pub struct ScaleShift {
    pub(crate) scale: Vec<f32>,
    pub(crate) shift: Vec<f32>,
}

impl ScaleShift {
    /// From BN's parameters and statistics (one per channel), rounded as [`bn_relu`] rounds.
    pub fn new(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Self {
        let scale: Vec<f32> = gamma
            .iter()
            .zip(inv_std(var, eps))
            .map(|(g, i)| g * i)
            .collect();
        let shift = beta
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        ScaleShift { scale, shift }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Channels `from..` (of a pass over some input channels).
    pub(crate) fn channels_from(&self, from: usize) -> (&[f32], &[f32]) {
        (&self.scale[from..], &self.shift[from..])
    }
}

/// `dst = ReLU(src * scale + shift)`: a product then a sum, each rounded (never fused), and 0
/// wherever that is not above 0 (NaN and -0 included), in AVX-512 where the CPU has it; the
/// same bits either way.
pub(crate) fn pre_activate(src: &[f32], (scale, shift): (f32, f32), dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if super::product::available() {
        // SAFETY: the CPU has AVX-512F; the lengths are equal.
        unsafe { pre_activate_avx512(src, (scale, shift), dst) };
        return;
    }
    for (o, &v) in dst.iter_mut().zip(src) {
        let y = v * scale + shift;
        o.write(if y > 0.0 { y } else { 0.0 });
    }
}

/// `dst = src`, pre-activated by `pre`'s `(scale, shift)` where there is one ([`pre_activate`]):
/// how Winograd's input transforms copy each input row into their padded rows.
pub(crate) fn copy_row(src: &[f32], pre: Option<(f32, f32)>, dst: &mut [f32]) {
    match pre {
        Some(pre) => pre_activate(src, pre, super::output::as_uninit(dst)),
        None => dst.copy_from_slice(src),
    }
}

/// [`pre_activate`] in AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `dst` must be of the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pre_activate_avx512(
    src: &[f32],
    (scale, shift): (f32, f32),
    dst: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (s, t, zero) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(shift),
        _mm512_setzero_ps(),
    );
    let (from, to) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
    for i in (0..src.len()).step_by(16) {
        let mask = super::product::lane_mask(src.len() - i);
        let v = _mm512_maskz_loadu_ps(mask, from.add(i));
        let y = _mm512_add_ps(_mm512_mul_ps(v, s), t);
        // `max` returns its second operand unless the first is above it: 0 for NaN and -0.
        _mm512_mask_storeu_ps(to.add(i), mask, _mm512_max_ps(y, zero));
    }
}

impl CustomOp3 for BnRelu {
    fn name(&self) -> &'static str {
        "r38-bn-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "input")?;
        let (gamma, beta) = (slice(s2, l2, "gamma")?, slice(s3, l3, "beta")?);
        let (_, c, hw) = nchw(l1)?;
        let (scale, shift) = self.scale_shift(gamma, beta);
        let write = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(hw.max(1))
                .zip(x.par_chunks(hw.max(1)))
                .enumerate()
                .for_each(|(plane, (yp, xp))| {
                    pre_activate(xp, (scale[plane % c], shift[plane % c]), yp)
                })
        };
        // SAFETY: the planes cover `y` (both `x.len()` floats in planes of `hw`).
        let y = unsafe { super::output::written_by(x.len(), write) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let n = x.elem_count();
        let grads = x.apply_op3_no_bwd(
            &y.contiguous()?,
            &dy.contiguous()?,
            &BnReluGradient {
                gamma: gamma.flatten_all()?.to_vec1()?,
                mean: self.mean.clone(),
                inv_std: self.inv_std(),
                batch_statistics: self.batch_statistics,
            },
        )?;
        let dx = grads.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = grads.narrow(0, n, c)?.reshape(gamma.shape())?;
        let dbeta = grads.narrow(0, n + c, c)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// On (x, y, dy): `dx`, `dgamma`, `dbeta` packed into one vector.
struct BnReluGradient {
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    batch_statistics: bool,
}

impl CustomOp3 for BnReluGradient {
    fn name(&self) -> &'static str {
        "r38-bn-relu-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "input")?;
        let y = slice(s2, l2, "output")?;
        let dy = slice(s3, l3, "output gradient")?;
        let (n, c, hw) = nchw(l1)?;
        let plane = |ni: usize, ci: usize| (ni * c + ci) * hw..(ni * c + ci + 1) * hw;
        // Per channel: sum(g) and sum(g * xhat), in f64.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (m, i) = (self.mean[ci], self.inv_std[ci]);
                let mut sg = 0f64;
                let mut sgx = 0f64;
                for ni in 0..n {
                    let r = plane(ni, ci);
                    let (x, y, dy) = (&x[r.clone()], &y[r.clone()], &dy[r]);
                    // f32 partial sums over short runs (vectorised), added up in f64.
                    for ((x, y), dy) in x.chunks(256).zip(y.chunks(256)).zip(dy.chunks(256)) {
                        let (mut a, mut b) = (0f32, 0f32);
                        for ((&xv, &yv), &d) in x.iter().zip(y).zip(dy) {
                            let g = if yv > 0.0 { d } else { 0.0 };
                            a += g;
                            b += g * ((xv - m) * i);
                        }
                        sg += f64::from(a);
                        sgx += f64::from(b);
                    }
                }
                (sg, sgx)
            })
            .collect();
        let count = (n * hw).max(1) as f64;
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, dparams) = out.split_at_mut(x.len());
        dx.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(p, dxp)| {
                let ci = p % c;
                let r = p * hw..(p + 1) * hw;
                let (m, i) = (self.mean[ci], self.inv_std[ci]);
                let scale = self.gamma[ci] * i;
                let rows = dxp
                    .iter_mut()
                    .zip(&x[r.clone()])
                    .zip(&y[r.clone()])
                    .zip(&dy[r]);
                if self.batch_statistics {
                    let mean_g = (sums[ci].0 / count) as f32;
                    let mean_gx = (sums[ci].1 / count) as f32;
                    for (((o, &xv), &yv), &d) in rows {
                        let g = if yv > 0.0 { d } else { 0.0 };
                        *o = scale * (g - mean_g - (xv - m) * i * mean_gx);
                    }
                } else {
                    for (((o, _), &yv), &d) in rows {
                        *o = if yv > 0.0 { d * scale } else { 0.0 };
                    }
                }
            });
        for (ci, (sg, sgx)) in sums.iter().enumerate() {
            dparams[ci] = *sgx as f32;
            dparams[c + ci] = *sg as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_norm::{BatchNorm, BatchNormMode};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / scale.max(1e-12)
    }

    /// The fused kernel against candle's BN followed by ReLU: output, the three gradients of
    /// a weighted sum, and (batch statistics) the running-statistic update.
    fn check(mode: BatchNormMode, shape: (usize, usize, usize, usize)) {
        let dev = Device::Cpu;
        let c = shape.1;
        let mut t = HashMap::new();
        t.insert(
            "bn_gamma".into(),
            Tensor::randn(1f32, 0.3, c, &dev).unwrap(),
        );
        t.insert("bn_beta".into(), Tensor::randn(0f32, 0.3, c, &dev).unwrap());
        t.insert(
            "bn_moving_mean".into(),
            Tensor::randn(0f32, 0.5, c, &dev).unwrap(),
        );
        t.insert(
            "bn_moving_var".into(),
            Tensor::rand(0.5f32, 2.0, c, &dev).unwrap(),
        );
        let x = Tensor::randn(0.3f32, 1.2, shape, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let run = |fused: bool| {
            let gamma = Var::from_tensor(&t["bn_gamma"]).unwrap();
            let beta = Var::from_tensor(&t["bn_beta"]).unwrap();
            let mut tensors = t.clone();
            tensors.insert("bn_gamma".into(), gamma.as_tensor().clone());
            tensors.insert("bn_beta".into(), beta.as_tensor().clone());
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let mut bn = BatchNorm::new(c, 1.001e-5, &vb, "bn").unwrap();
            bn.set_mode(mode);
            let xv = Var::from_tensor(&x).unwrap();
            let y = if fused {
                bn.fused_relu(xv.as_tensor(), true).unwrap().unwrap()
            } else {
                bn.forward_t(xv.as_tensor(), true).unwrap().relu().unwrap()
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            let stats = [bn.moving_mean().clone(), bn.moving_var().clone()];
            ([y, g(&xv), g(&gamma), g(&beta)], stats)
        };
        let (fused, fused_stats) = run(true);
        let (plain, plain_stats) = run(false);
        for (what, a, b) in ["y", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(&fused)
            .zip(&plain)
            .map(|((w, a), b)| (w, a, b))
        {
            let d = max_rel(a, b);
            assert!(d < 2e-5, "{mode:?} {shape:?} {what}: rel diff {d}");
        }
        for (a, b) in fused_stats.iter().zip(&plain_stats) {
            assert!(max_rel(a, b) < 1e-5, "{mode:?} running statistics");
        }
    }

    #[test]
    fn fused_pre_activation_equals_candles_bn_then_relu() {
        for mode in [BatchNormMode::Frozen, BatchNormMode::BatchStatistics] {
            check(mode, (3, 4, 5, 7));
            check(mode, (1, 2, 9, 1));
        }
    }

    #[test]
    fn channel_moments_are_per_channel() {
        let x = Tensor::new(&[1f32, 3.0, 0.0, 2.0, 5.0, 5.0, 4.0, 6.0], &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 2, 1))
            .unwrap();
        let (mean, var) = channel_moments(&x).unwrap();
        // Channel 0: 1, 3, 5, 5 -> mean 3.5, var 2.75; channel 1: 0, 2, 4, 6 -> 3, 5.
        assert_eq!(mean, vec![3.5, 3.0]);
        assert_eq!(var, vec![2.75, 5.0]);
    }
}
