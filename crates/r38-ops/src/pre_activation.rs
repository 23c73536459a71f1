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

    /// `ReLU(BN(x))`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let Some(y) = self.bn.fused_relu(x, train)? {
            return Ok(y);
        }
        self.bn.forward_t(x, train)?.relu()
    }
}
