//! Semantic segmentation with ResNet-38: the "1 conv" and "2 conv" heads on the dilated
//! (output stride 8) backbone.

pub mod head;
pub mod network;

pub use head::{HeadConfig, SegmentationHead};
pub use network::SegmentationNet;
