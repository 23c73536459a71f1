//! Training pieces for ResNet-38 ("Wider or Deeper") on candle, following the authors' MXNet
//! recipes: SGD with momentum and per-parameter multipliers ([`optimizer`]), learning-rate
//! schedules ([`schedule`]) and the ignore-label and bootstrapped spatial losses ([`loss`]).
//! The convolution whose backward pass is exact for any input size, which works around
//! candle 0.11.1's strided-conv backward, lives with the layers: [`r38_ops::conv_grad`].
//!
//! `tests/` checks the loss, the gradients through `r38_seg::SegmentationNet` and three SGD
//! updates against MXNet 1.9.1 (`tools/mxnet_training_reference.py`).

#![warn(missing_docs)]

pub mod loss;
pub mod optimizer;
pub mod schedule;

pub use loss::{
    ohem_select, ohem_softmax_cross_entropy, softmax_cross_entropy, subsample_labels, OhemConfig,
    OhemStats, IGNORE_LABEL,
};
pub use optimizer::{LrRule, MomentumKind, MultiplierPolicy, Multipliers, Param, Sgd, SgdConfig};
pub use r38_ops::conv_grad::{self, candle_backward_mismatch, conv2d_exact};
pub use schedule::LrSchedule;
