//! Layers of ResNet-38 ("Wider or Deeper", Wu, Shen and van den Hengel) on candle.
//!
//! Every layer is built from a [`candle_nn::VarBuilder`] whose tensor names mirror the authors'
//! MXNet checkpoint (`res4b3_branch2a_weight`, `bn4b3_branch2a_gamma`, ...), so a layer's name
//! in the code is its name in the weight file.

//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use r38_ops::{Conv2d, ConvSpec, PreActivation};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! // The pre-activation and dilated 3x3 convolution of a level-5 unit of the s8 networks:
//! // "same" padding keeps the map size whatever the dilation.
//! let pre = PreActivation::new(8, 1.001e-5, &vb, "bn5a_branch2a")?;
//! let conv = Conv2d::new(ConvSpec::new(8, 16, 3).dilation(2), &vb, "res5a_branch2a")?;
//! let x = Tensor::randn(0f32, 1.0, (1, 8, 10, 12), &Device::Cpu)?;
//! let y = conv.forward(&pre.forward_t(&x, false)?)?;
//! assert_eq!(y.dims(), &[1, 16, 10, 12]);
//! # Ok::<(), candle_core::Error>(())
//! ```
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
pub use pre_activation::{relu, PreActivation};
pub use unit::{Branch, ResidualUnit, UnitSpec};
