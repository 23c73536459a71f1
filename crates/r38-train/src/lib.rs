//! Training pieces for ResNet-38 ("Wider or Deeper") on candle, following the authors' MXNet
//! recipes: SGD with momentum and per-parameter multipliers ([`optimizer`]), learning-rate
//! schedules ([`schedule`]) and the ignore-label and bootstrapped spatial losses ([`loss`]);
//! the training loop ([`trainer`]) with augmentation ([`augment`]), background data loading
//! ([`loader`]), atomic checkpoints ([`checkpoint`]), metrics logs ([`log`]) and curve plots
//! ([`plot`]); Fashion-MNIST ([`fashion_mnist`]) and the synthetic "fashion scenes"
//! segmentation set ([`scenes`]); model construction for fine-tuning ([`model`]).
//! The convolution whose backward pass is exact for any input size, which works around
//! candle 0.11.1's strided-conv backward, lives with the layers: [`r38_ops::conv_grad`].
//!
//! `tests/` checks the loss, the gradients through `r38_seg::SegmentationNet` and three SGD
//! updates against MXNet 1.9.1 (`tools/mxnet_training_reference.py`), and short training runs
//! with resume.

#![warn(missing_docs)]

pub mod augment;
pub mod checkpoint;
pub mod fashion_mnist;
pub mod loader;
pub mod log;
pub mod loss;
pub mod model;
pub mod optimizer;
pub mod plot;
pub mod recompute;
pub mod rng;
pub mod scenes;
pub mod schedule;
pub mod sources;
pub mod trainer;

pub use loss::{
    ohem_select, ohem_softmax_cross_entropy, softmax_cross_entropy, subsample_labels, OhemConfig,
    OhemStats, IGNORE_LABEL,
};
pub use optimizer::{LrRule, MomentumKind, MultiplierPolicy, Multipliers, Param, Sgd, SgdConfig};
pub use r38_ops::conv_grad::{self, candle_backward_mismatch, conv2d_exact};
pub use recompute::{micro_batch_gradients, TrainNet};
pub use rng::Rng;
pub use schedule::LrSchedule;
pub use trainer::{train, Event, Summary, Task, TrainConfig};
