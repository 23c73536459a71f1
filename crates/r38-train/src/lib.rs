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

//!
//! ```
//! use candle_core::{Device, Tensor};
//! use r38_train::{softmax_cross_entropy, LrSchedule, IGNORE_LABEL};
//!
//! // Scores (N, C, H, W) and labels (N, H, W): pixels labelled 255 do not count.
//! let scores = Tensor::new(&[[[[2f32, 0.0]], [[0.0, 5.0]]]], &Device::Cpu)?; // (1, 2, 1, 2)
//! let labels = Tensor::new(&[[[0u32, IGNORE_LABEL]]], &Device::Cpu)?;
//! let loss = softmax_cross_entropy(&scores, &labels, IGNORE_LABEL)?.to_scalar::<f32>()?;
//! assert!((loss - (1.0 + (-2f32).exp()).ln()).abs() < 1e-6);
//! // Poly with power 1 is a linear decay to `floor` at update `total`.
//! let poly = LrSchedule::Poly { base: 0.01, total: 100, power: 1.0, floor: 0.0 };
//! assert!((poly.lr(50) - 0.005).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod augment;
pub mod checkpoint;
pub mod cls_labels;
pub mod distributed;
pub mod error;
pub mod fashion_mnist;
pub mod loader;
pub mod log;
pub mod loss;
pub mod model;
pub mod multilabel;
pub mod optimizer;
pub mod plot;
pub mod recipe;
pub mod recompute;
pub mod rng;
pub mod scenes;
pub mod schedule;
pub mod sources;
pub mod trainer;

pub use error::{Context, TrainError};
pub use loss::{
    ohem_select, ohem_softmax_cross_entropy, softmax_cross_entropy, subsample_labels, OhemConfig,
    OhemStats, IGNORE_LABEL,
};
pub use optimizer::{LrRule, MomentumKind, MultiplierPolicy, Multipliers, Param, Sgd, SgdConfig};
pub use r38_ops::conv_grad::{self, candle_backward_mismatch, conv2d_exact};
pub use recipe::{Recipe, RecipeError, RunSettings, ScheduleKind};
pub use recompute::{micro_batch_gradients, TrainNet};
pub use rng::Rng;
pub use schedule::LrSchedule;
pub use trainer::{train, train_data_parallel, Event, Summary, Task, TrainConfig};
