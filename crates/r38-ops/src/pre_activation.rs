//! The pre-activation of identity-mapping ResNets: BN then ReLU, in front of every conv.

use crate::batch_norm::{BatchNorm, BatchNormMode};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `bn<name>` followed by ReLU.
#[derive(Debug, Clone)]
pub struct PreActivation {
    bn: BatchNorm,
}

impl PreActivation {
    /// Read the BN `bn_name` for `channels` channels through `vb`.
    pub fn new(channels: usize, eps: f64, vb: &VarBuilder, bn_name: &str) -> Result<Self> {
        Ok(Self {
            bn: BatchNorm::new(channels, eps, vb, bn_name)?,
        })
    }

    /// The BN in front of the ReLU.
    pub fn batch_norm(&self) -> &BatchNorm {
        &self.bn
    }

    /// Set the BN mode.
    pub fn set_mode(&mut self, mode: BatchNormMode) {
        self.bn.set_mode(mode);
    }

    /// This pre-activation in inference as one scale and shift per channel, for a
    /// convolution to apply as it reads `x` ([`crate::Conv2d::forward_after`]); `None` where
    /// the fused CPU kernel does not apply.
    pub fn inference_scale_shift(
        &self,
        x: &Tensor,
    ) -> Result<Option<crate::engine::pre_activation::ScaleShift>> {
        self.bn.inference_scale_shift(x)
    }

    /// `ReLU(BN(x))`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let Some(y) = self.bn.fused_relu(x, train)? {
            return Ok(y);
        }
        relu(&self.bn.forward_t(x, train)?)
    }
}

/// ReLU with MXNet's and PyTorch's gradient, zero where the input is 0. Candle's `relu` passes
/// the gradient there (`x >= 0`), which changes every BN shift's gradient wherever a
/// pre-activation is exactly 0 (a zero region through a bias-free conv, a zero shift): the
/// GPU path would train differently from the authors'. Without a graph it is candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.relu();
    }
    let open = x.gt(0f64)?.to_dtype(x.dtype())?.detach();
    x.mul(&open)
}

#[cfg(test)]
mod tests {
    use super::relu;
    use candle_core::{Device, Var};

    #[test]
    fn relu_gradient_is_zero_at_zero() {
        let x = Var::new(&[-1f32, 0.0, 2.0], &Device::Cpu).unwrap();
        let y = relu(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 2.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let dx = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [0.0, 0.0, 1.0]);
        // Candle's own passes it at 0.
        let g = x
            .as_tensor()
            .relu()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 1.0, 1.0]
        );
    }
}
