//! Layers of ResNet-38 ("Wider or Deeper", Wu, Shen and van den Hengel) on candle.
//!
//! Every layer is built from a [`candle_nn::VarBuilder`] whose tensor names mirror the authors'
//! MXNet checkpoint (`res4b3_branch2a_weight`, `bn4b3_branch2a_gamma`, ...), so a layer's name
//! in the code is its name in the weight file.

#![warn(missing_docs)]

pub mod batch_norm;
pub mod conv;
pub mod conv_grad;
pub mod dropout;
pub mod engine;
pub mod pool;
pub mod pre_activation;
pub mod unit;

pub use batch_norm::{BatchNorm, BatchNormMode};
pub use conv::{same_padding, Conv2d, ConvSpec};
pub use pool::MaxPool;
pub use pre_activation::PreActivation;
pub use unit::{Branch, ResidualUnit, UnitSpec};
