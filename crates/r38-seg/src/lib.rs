//! Semantic segmentation with ResNet-38: the "1 conv" and "2 conv" heads on the dilated
//! (output stride 8) backbone, the authors' test protocol ([`test_time`]) and evaluation
//! metrics ([`metrics`]), and dense CRF post-processing ([`crf`]).

#![warn(missing_docs)]

pub mod crf;
pub mod error;
pub mod head;
pub mod metrics;
pub mod network;
pub mod score_net;
pub mod sliding_window;
pub mod test_time;

pub use crf::{CrfConfig, DenseCrf};
pub use error::{SegError, SegResult};
pub use head::{HeadConfig, SegmentationHead};
pub use metrics::{ClassMetrics, ConfusionMatrix, MetricsReport};
pub use network::SegmentationNet;
pub use score_net::{mean_probabilities, ScoreNet};
pub use sliding_window::{CanvasLimit, WindowPlan};
pub use test_time::{
    argmax_labels, fuse_probabilities, CanvasSize, Fuse, Prediction, ScaledImage,
    StridedProbabilities, TestProtocol,
};
