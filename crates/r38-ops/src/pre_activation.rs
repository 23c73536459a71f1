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
    pub fn new(channels: usize, eps: f64, vb: &VarBuilder, bn_name: &str) -> Result<Self> {
        Ok(Self {
            bn: BatchNorm::new(channels, eps, vb, bn_name)?,
        })
    }

    pub fn batch_norm(&self) -> &BatchNorm {
        &self.bn
    }

    pub fn set_mode(&mut self, mode: BatchNormMode) {
        self.bn.set_mode(mode);
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(x, train)?.relu()
    }
}
