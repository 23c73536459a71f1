//! Batch normalisation with the authors' conventions: epsilon 1.001e-5, learned gamma, and
//! running statistics updated with MXNet's momentum 0.9 (PyTorch's 0.1).

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

/// Which statistics normalise the input when training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNormMode {
    /// Stored ImageNet statistics, never updated; gamma and beta stay trainable.
    /// The authors fine-tune every segmentation model this way (`bn_use_global_stats`).
    #[default]
    Frozen,
    /// Mini-batch statistics in training, with running-statistic updates (ImageNet training).
    BatchStatistics,
}

/// MXNet's default: `moving = 0.9 * moving + 0.1 * batch`.
pub const MXNET_MOMENTUM: f64 = 0.9;

/// `bn<name>`: `<name>_gamma`, `<name>_beta`, `<name>_moving_mean`, `<name>_moving_var`.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Var,
    moving_var: Var,
    eps: f64,
    mode: BatchNormMode,
}

impl BatchNorm {
    /// Read `<name>_gamma`, `_beta`, `_moving_mean` and `_moving_var` (`channels` each) through `vb`.
    pub fn new(channels: usize, eps: f64, vb: &VarBuilder, name: &str) -> Result<Self> {
        let gamma = vb.get_with_hints(channels, &format!("{name}_gamma"), Init::Const(1.0))?;
        let beta = vb.get_with_hints(channels, &format!("{name}_beta"), Init::Const(0.0))?;
        let moving_mean =
            vb.get_with_hints(channels, &format!("{name}_moving_mean"), Init::Const(0.0))?;
        let moving_var =
            vb.get_with_hints(channels, &format!("{name}_moving_var"), Init::Const(1.0))?;
        Ok(Self {
            gamma,
            beta,
            moving_mean: Var::from_tensor(&moving_mean)?,
            moving_var: Var::from_tensor(&moving_var)?,
            eps,
            mode: BatchNormMode::default(),
        })
    }

    /// Frozen (global statistics) or batch statistics in training.
    pub fn set_mode(&mut self, mode: BatchNormMode) {
        self.mode = mode;
    }

    /// The current mode.
    pub fn mode(&self) -> BatchNormMode {
        self.mode
    }

    /// The running mean (`aux:` tensor in MXNet files).
    pub fn moving_mean(&self) -> &Tensor {
        self.moving_mean.as_tensor()
    }

    /// The running variance (`aux:` tensor in MXNet files).
    pub fn moving_var(&self) -> &Tensor {
        self.moving_var.as_tensor()
    }

    /// Normalise `x` (N, C, H, W); batch statistics only when `train` and in that mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train && self.mode == BatchNormMode::BatchStatistics {
            self.batch_statistics(x)?
        } else {
            // The stored statistics are `Var`s only so that training can update them; read
            // as constants, they keep inference out of autograd (and off its memory).
            (
                self.moving_mean.as_tensor().detach(),
                self.moving_var.as_tensor().detach(),
            )
        };
        // Fold the four vectors into one per-channel scale and shift: two passes over x, not four.
        let scale = self.gamma.mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        let shift = self.beta.sub(&mean.mul(&scale)?)?;
        let c = scale.dim(0)?;
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }

    /// `ReLU(BN(x))` through the fused CPU kernel ([`crate::engine::pre_activation`]), when
    /// it applies (f32 on the CPU, engine not `Exact`); `None` otherwise.
    pub(crate) fn fused_relu(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        use crate::engine::pre_activation;
        if !self.fused_kernel_applies(x) {
            return Ok(None);
        }
        let batch = train && self.mode == BatchNormMode::BatchStatistics;
        let (mean, var) = if batch {
            let (mean, var) = pre_activation::channel_moments(x)?;
            let c = mean.len();
            self.update_running(
                &Tensor::from_slice(&mean, c, x.device())?,
                &Tensor::from_slice(&var, c, x.device())?,
            )?;
            (mean, var)
        } else {
            (
                f32_values(self.moving_mean.as_tensor())?,
                f32_values(self.moving_var.as_tensor())?,
            )
        };
        pre_activation::bn_relu(x, &self.gamma, &self.beta, mean, var, self.eps, batch).map(Some)
    }

    /// This BN in inference folded into one scale and shift per channel, as the fused CPU
    /// kernel folds it ([`crate::engine::pre_activation::ScaleShift`]), where that kernel
    /// applies to `x` (f32 on the CPU, engine not `Exact`); `None` otherwise.
    pub(crate) fn inference_scale_shift(
        &self,
        x: &Tensor,
    ) -> Result<Option<crate::engine::pre_activation::ScaleShift>> {
        if !self.fused_kernel_applies(x) {
            return Ok(None);
        }
        Ok(Some(crate::engine::pre_activation::ScaleShift::new(
            &f32_values(&self.gamma)?,
            &f32_values(&self.beta)?,
            &f32_values(self.moving_mean.as_tensor())?,
            &f32_values(self.moving_var.as_tensor())?,
            self.eps,
        )))
    }

    /// Whether the fused CPU kernel serves `x`: an f32 NCHW map on the CPU, f32 parameters,
    /// an engine other than `Exact`.
    fn fused_kernel_applies(&self, x: &Tensor) -> bool {
        use crate::engine::{engine, Engine};
        let cpu_f32 =
            |t: &Tensor| matches!(t.device(), candle_core::Device::Cpu) && t.dtype() == DType::F32;
        engine() != Engine::Exact && cpu_f32(x) && cpu_f32(&self.gamma) && x.rank() == 4
    }

    /// Batch mean and biased variance per channel. MXNet updates its running variance with the
    /// biased estimate too (checked against mxnet 1.9.1), unlike PyTorch.
    fn batch_statistics(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let flat = x.transpose(0, 1)?.flatten_from(1)?.to_dtype(DType::F32)?;
        let mean = flat.mean(D::Minus1)?;
        let centered = flat.broadcast_sub(&mean.unsqueeze(1)?)?;
        let var = centered.sqr()?.mean(D::Minus1)?;
        self.update_running(&mean.detach(), &var.detach())?;
        Ok((mean.to_dtype(x.dtype())?, var.to_dtype(x.dtype())?))
    }

    /// MXNet's running update: `moving = 0.9 * moving + 0.1 * batch`.
    fn update_running(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        let m = MXNET_MOMENTUM;
        self.moving_mean
            .set(&((self.moving_mean.as_tensor() * m)? + (mean * (1.0 - m))?)?)?;
        self.moving_var
            .set(&((self.moving_var.as_tensor() * m)? + (var * (1.0 - m))?)?)
    }
}

impl candle_nn::ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm::forward_t(self, x, train)
    }
}

/// A per-channel vector's values as f32.
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn bn(mode: BatchNormMode) -> BatchNorm {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("bn_gamma".into(), Tensor::new(&[2f32, 1.0], &dev).unwrap());
        t.insert("bn_beta".into(), Tensor::new(&[0.5f32, 0.0], &dev).unwrap());
        t.insert(
            "bn_moving_mean".into(),
            Tensor::new(&[1f32, 0.0], &dev).unwrap(),
        );
        t.insert(
            "bn_moving_var".into(),
            Tensor::new(&[4f32, 1.0], &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        let mut bn = BatchNorm::new(2, 0.0, &vb, "bn").unwrap();
        bn.set_mode(mode);
        bn
    }

    #[test]
    fn frozen_uses_global_statistics_even_in_training() {
        let bn = bn(BatchNormMode::Frozen);
        let x = Tensor::new(&[3f32, 5.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let y: Vec<f32> = bn
            .forward_t(&x, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // (3 - 1) / 2 * 2 + 0.5 = 2.5; (5 - 0) / 1 * 1 + 0 = 5
        assert_eq!(y, vec![2.5, 5.0]);
        let mean: Vec<f32> = bn.moving_mean().to_vec1().unwrap();
        assert_eq!(mean, vec![1.0, 0.0]);
    }

    #[test]
    fn batch_statistics_update_running_values_with_mxnet_momentum() {
        let bn = bn(BatchNormMode::BatchStatistics);
        let x = Tensor::new(&[1f32, 3.0, 0.0, 2.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 1))
            .unwrap();
        let y: Vec<f32> = bn
            .forward_t(&x, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // channel 0: mean 2, var 1 -> (-1, 1) * 2 + 0.5
        assert_eq!(y, vec![-1.5, 2.5, -1.0, 1.0]);
        let mean: Vec<f32> = bn.moving_mean().to_vec1().unwrap();
        assert!((mean[0] - (0.9 + 0.2)).abs() < 1e-6);
        let var: Vec<f32> = bn.moving_var().to_vec1().unwrap();
        // batch variance 1.0, biased as in MXNet
        assert!((var[0] - (3.6 + 0.1)).abs() < 1e-6);
    }

    #[test]
    fn inference_on_plain_weights_builds_no_autograd_graph() {
        let bn = bn(BatchNormMode::Frozen);
        let x = Tensor::new(&[3f32, 5.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        // Otherwise every later op records its inputs and the fast conv engine is bypassed.
        assert!(!bn.forward_t(&x, false).unwrap().track_op());
    }
}
