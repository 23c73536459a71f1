//! Backbone and segmentation head together.

use crate::head::{HeadConfig, SegmentationHead};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use r38_model::{Backbone, BackboneConfig, BatchNormMode};

/// A fully convolutional ResNet-38: `(N, 3, H, W)` -> `(N, C, H / s, W / s)` scores.
#[derive(Debug, Clone)]
pub struct SegmentationNet {
    backbone: Backbone,
    head: SegmentationHead,
}

impl SegmentationNet {
    /// Build the backbone and the head, reading the tensors through `vb`.
    pub fn new(backbone: &BackboneConfig, head: HeadConfig, vb: &VarBuilder) -> Result<Self> {
        let net = Backbone::new(backbone, vb)?;
        let head = SegmentationHead::new(head, backbone.feature_channels(), vb)?;
        Ok(Self {
            backbone: net,
            head,
        })
    }

    /// The feature extractor.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The segmentation head.
    pub fn head(&self) -> &SegmentationHead {
        &self.head
    }

    /// Frozen BN is how the authors fine-tune; batch statistics are available for completeness.
    pub fn set_bn_mode(&mut self, mode: BatchNormMode) {
        self.backbone.set_bn_mode(mode);
    }

    /// Scores before the softmax. Dropout (levels 6 and 7) is active only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward(&self.backbone.forward_t(x, train)?)
    }
}

impl candle_nn::ModuleT for SegmentationNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        SegmentationNet::forward_t(self, x, train)
    }
}

impl r38_model::Stages for SegmentationNet {
    /// The backbone's stages, then the head.
    fn stage_count(&self) -> usize {
        self.backbone.stage_count() + 1
    }

    fn forward_stage(&self, stage: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if stage < self.backbone.stage_count() {
            self.backbone.forward_stage(stage, x, train)
        } else {
            self.head.forward(x)
        }
    }
}
