//! Segmentation heads on the 4096-channel `relu7` features.
//!
//! "2 conv" (the authors' released models): `conv6a` 3x3 dilation 12, 512 channels, bias, ReLU
//! (no BN), then `linear<C>` 3x3 dilation 12 with bias. "1 conv" (the paper's comparison, not in
//! the released code): `linear<C>` directly on the features; we use the same 3x3 dilation-12
//! kernel so its field of view matches the classifier of the "2 conv" head. Both are configurable.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use r38_ops::{Conv2d, ConvSpec};

/// The shape of a segmentation head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadConfig {
    /// Number of classes of `linear<C>`.
    pub classes: usize,
    /// Width of `conv6a`; `None` makes the "1 conv" head.
    pub hidden: Option<usize>,
    /// Kernel size of the head convolutions.
    pub kernel: usize,
    /// Dilation of the head convolutions.
    pub dilation: usize,
}

impl HeadConfig {
    /// The released "2 conv" head: 512 hidden channels, 3x3, dilation 12.
    pub fn two_conv(classes: usize) -> Self {
        Self {
            classes,
            hidden: Some(512),
            kernel: 3,
            dilation: 12,
        }
    }

    /// One classifier conv on the backbone features (3x3, dilation 12 by default).
    pub fn one_conv(classes: usize) -> Self {
        Self {
            classes,
            hidden: None,
            kernel: 3,
            dilation: 12,
        }
    }
}

/// `conv6a` (+ReLU) and `linear<C>`, or `linear<C>` alone.
#[derive(Debug, Clone)]
pub struct SegmentationHead {
    conv6a: Option<Conv2d>,
    classifier: Conv2d,
    config: HeadConfig,
}

impl SegmentationHead {
    /// Read `conv6a_*` (if any) and `linear<C>_*` through `vb`, on `in_channels` features.
    pub fn new(config: HeadConfig, in_channels: usize, vb: &VarBuilder) -> Result<Self> {
        let conv = |i, o| {
            ConvSpec::new(i, o, config.kernel)
                .dilation(config.dilation)
                .with_bias()
        };
        let (conv6a, classifier_in) = match config.hidden {
            Some(hidden) => (
                Some(Conv2d::new(conv(in_channels, hidden), vb, "conv6a")?),
                hidden,
            ),
            None => (None, in_channels),
        };
        let classifier = Conv2d::new(
            conv(classifier_in, config.classes),
            vb,
            &format!("linear{}", config.classes),
        )?;
        Ok(Self {
            conv6a,
            classifier,
            config,
        })
    }

    /// The head's shape.
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }
}

impl Module for SegmentationHead {
    /// Class scores at the backbone's resolution, before the softmax.
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        match &self.conv6a {
            Some(conv6a) => self
                .classifier
                .forward(&r38_ops::relu(&conv6a.forward(features)?)?),
            None => self.classifier.forward(features),
        }
    }
}
