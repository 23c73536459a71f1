//! ResNet-38, the wide pre-activation ResNet of Wu, Shen and van den Hengel, "Wider or Deeper:
//! Revisiting the ResNet Model for Visual Recognition" (Pattern Recognition 2019), in one
//! dependency.
//!
//! [`Pretrained::load`] turns any weight file (the authors' MXNet `.params`, a PyTorch
//! "resnet38d" `.pth`, safetensors written by `r38 convert`, or an `hf://` name) into a ready
//! network that knows its preprocessing, class names, palette and test protocol:
//!
//! ```no_run
//! use r38::{load_image, Device, Pretrained};
//!
//! let classifier = Pretrained::load("weights/fashion-mnist-classifier.safetensors", &Device::Cpu)?;
//! for class in classifier.classify(&load_image("samples/fashion-items/00000-ankle-boot.png")?)?.iter().take(3) {
//!     println!("{:>6.2}%  {}", 100.0 * class.probability, class.name);
//! }
//! let segmenter = Pretrained::load("weights/fashion-scenes-segmenter.safetensors", &Device::Cpu)?;
//! let scene = segmenter.segment(&load_image("samples/fashion-scenes/JPEGImages/scene-00000.png")?)?;
//! println!("{}x{} labels, {} classes", scene.width, scene.height, scene.classes());
//! # Ok::<(), r38::Error>(())
//! ```
//!
//! The layers below are re-exported: [`model`] (the backbone family and weight I/O), [`seg`]
//! (heads, the test protocol, metrics, CRF), [`data`] (images, Pillow-exact transforms,
//! datasets), [`ops`] (layers and the convolution engine), and [`candle_core`].

#![warn(missing_docs)]

pub mod error;
pub mod evaluation;
pub mod output;
pub mod pretrained;

pub use candle_core::{self, DType, Device, Tensor};
pub use error::{Error, Result};
pub use evaluation::{
    evaluate_imagenet, evaluate_segmentation, ClsEvaluation, EvalEvent, EvalOptions, SegEvaluation,
    Shard,
};
pub use pretrained::{ClassScore, HeadChoice, LoadOptions, Network, Pretrained};
pub use r38_data as data;
pub use r38_data::image::RgbImage;
pub use r38_model as model;
pub use r38_model::{ModelMetadata, Overrides};
pub use r38_ops as ops;
pub use r38_ops::engine::Engine;
pub use r38_seg as seg;
pub use r38_seg::{Prediction, TestProtocol};

/// Read an image file as 8-bit RGB (JPEG or PNG), refusing images over
/// [`data::DEFAULT_PIXEL_LIMIT`] pixels from their header, before decoding.
pub fn load_image(path: impl AsRef<std::path::Path>) -> Result<RgbImage> {
    Ok(r38_data::ImageLoader::new().load_rgb8(path.as_ref())?)
}
