//! Data pipeline of ResNet-38 ("Wider or Deeper", Wu, Shen and van den Hengel): image
//! decoding, Pillow-exact resampling and the authors' test-time transforms.
//!
//! The authors did every resize with Pillow, so the numbers their models were evaluated on
//! depend on Pillow's exact arithmetic. This crate reproduces it:
//!
//! * [`image_io`]: decode files into 8-bit RGB as `Image.open(p).convert('RGB')` does, with
//!   size checks and errors that name the file;
//! * [`resample`]: `Image.resize` for 8-bit images (byte-identical) and `f32` planes (mode `F`,
//!   for probability maps), with nearest, bilinear, bicubic and Lanczos filters;
//! * [`interpolation`]: the authors' adaptive choice of filter;
//! * [`transforms`]: scale one side, centre-crop, normalise; [`ClassifyTransform`] is the
//!   ImageNet test protocol;
//! * [`imagenet`]: the 1000 ImageNet-1k class names in index order;
//! * [`datasets`]: PASCAL VOC (and its SBD-augmented labels), Cityscapes, ADE20K and
//!   PASCAL-Context on their on-disk layouts, with labels as train ids, and the ImageNet
//!   validation set.
//!
//! Sizes are `(width, height)` throughout, as in Pillow and the `image` crate; tensors are
//! `(N, C, H, W)`.

//!
//! ```
//! use r38_data::image::RgbImage;
//! use r38_data::ClassifyTransform;
//!
//! // The authors' ImageNet test protocol: shorter side to 320 (Pillow bicubic), centre crop
//! // 320, ImageNet mean/std; an NCHW batch of one.
//! let photo = RgbImage::from_fn(500, 375, |x, y| r38_data::image::Rgb([x as u8, y as u8, 0]));
//! let batch = ClassifyTransform::default().apply(&photo, &candle_core::Device::Cpu)?;
//! assert_eq!(batch.dims(), &[1, 3, 320, 320]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod datasets;
pub mod error;
pub mod image_io;
pub mod imagenet;
pub mod interpolation;
pub mod npy;
pub mod output;
pub mod resample;
pub mod transforms;

pub use datasets::{
    DatasetError, DatasetKind, ImageNetVal, LabelMap, SegDataset, SegSample, SegmentationDataset,
    IGNORE_LABEL,
};
pub use error::{DataError, Result};
pub use image_io::{load_rgb8, Gray16, ImageLoader, DEFAULT_PIXEL_LIMIT};
pub use imagenet::{imagenet_class, imagenet_classes, imagenet_index_of, ImageNetClass};
pub use interpolation::{adaptive_filter, Interpolation};
pub use resample::{
    resize_f32, resize_luma8, resize_planes_f32, resize_rgb8, resize_u8, Filter, Resizer,
};
pub use transforms::{
    center_crop, normalize, scale_side, ClassifyTransform, Normalization, Side, IMAGENET_MEAN,
    IMAGENET_STD,
};

/// Re-export of the `image` crate, whose `RgbImage` and `GrayImage` appear in this API.
pub use image;
