//! Semantic segmentation with ResNet-38: the "1 conv" and "2 conv" heads on the dilated
//! (output stride 8) backbone, the authors' test protocol ([`test_time`]) and evaluation
//! metrics ([`metrics`]), and dense CRF post-processing ([`crf`]).

//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_nn::{VarBuilder, VarMap};
//! use r38_model::{Arch, BackboneConfig};
//! use r38_seg::{HeadConfig, ScoreNet, SegmentationNet, TestProtocol};
//!
//! // A1 at output stride 8 with the "2 conv" head, every width divided by 32 (random weights;
//! // load real ones with `r38_model::weights::load` and `r38_model::build_strict`).
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let config = BackboneConfig::preset(Arch::A1, 8)?.narrowed(32);
//! let net = SegmentationNet::new(&config, HeadConfig::two_conv(21), &vb)?;
//! // The authors' VOC protocol at a small scale: longer side 48, canvas rounded up to a
//! // multiple of 8, flipping, probabilities upsampled back to the image.
//! let image = r38_data::image::RgbImage::new(48, 30);
//! let prediction = TestProtocol::single_scale(48)
//!     .with_flip(true)
//!     .predict(&[&net as &dyn ScoreNet], &image)?;
//! assert_eq!((prediction.width, prediction.height), (48, 30));
//! assert_eq!(prediction.classes(), 21);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod cam;
pub mod crf;
pub mod error;
pub mod head;
pub mod metrics;
pub mod network;
pub mod psa_npy;
pub mod score_net;
pub mod sliding_window;
pub mod test_time;

pub use cam::{infer_cams, CamProtocol, Cams};
pub use crf::{CrfConfig, DenseCrf};
pub use error::{SegError, SegResult};
pub use head::{HeadConfig, SegmentationHead};
pub use metrics::{ClassMetrics, ConfusionMatrix, MetricsReport};
pub use network::SegmentationNet;
pub use score_net::{mean_probabilities, ScoreNet};
pub use sliding_window::{CanvasLimit, WindowPlan};
pub use test_time::{
    argmax_labels, fuse_probabilities, CanvasSize, Fuse, LabelPrediction, Prediction, ScaledImage,
    StridedProbabilities, TestProtocol,
};
