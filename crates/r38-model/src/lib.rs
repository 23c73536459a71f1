//! The ResNet-38 family of "Wider or Deeper" (Wu, Shen and van den Hengel, 2019):
//! Models A, A1 and A2 at output stride 8, 16 or 32, custom depth/width configurations,
//! the classifier head, and import/export of the authors' weights.
//!
//! ```no_run
//! use r38_model::{BackboneConfig, Classifier, weights};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = weights::load("ilsvrc-cls_rna-a1_cls1000_ep-0001.params".as_ref())?;
//! let config = BackboneConfig::model_a1(32)?;
//! let device = candle_core::Device::Cpu;
//! let model = r38_model::build_strict(&file.path.display().to_string(), &file.tensors,
//!     candle_core::DType::F32, &device, |vb| Classifier::new(&config, 1000, vb))?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backbone;
pub mod cam_classifier;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod hub;
pub mod lineage;
pub mod loading;
pub mod metadata;
pub mod stages;
pub mod weights;

pub use backbone::{Backbone, Level, LevelFeatures};
pub use cam_classifier::CamClassifier;
pub use checkpoint::HeadKind;
pub use classifier::Classifier;
pub use config::{
    Arch, BackboneConfig, ConfigError, Downsample, LevelConfig, PoolPadding, StemConfig, UnitKind,
};
pub use lineage::{Lineage, Origin};
pub use loading::{build_strict, LoadError, TensorProblem};
pub use metadata::{
    escape_for_terminal, escape_markdown, markdown_code_span, InvalidMetadata, MetadataError,
    ModelMetadata, Overrides, Preprocess,
};
pub use r38_ops::BatchNormMode;
pub use stages::Stages;
