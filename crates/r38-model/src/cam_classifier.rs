//! psa's multi-label classifier (`resnet38_cls`): the output-stride-8 backbone and `fc8`, a
//! bias-free 1×1 convolution. Image-level scores pool first and then apply `fc8`; class activation
//! maps apply `fc8` at every position of the stride-8 features (psa's `forward_cam`).

use crate::backbone::Backbone;
use crate::config::BackboneConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use r38_ops::BatchNormMode;

/// Backbone + `fc8` (`[classes, features, 1, 1]`, no bias).
#[derive(Debug, Clone)]
pub struct CamClassifier {
    backbone: Backbone,
    fc8: Tensor,
    classes: usize,
    background: bool,
}

impl CamClassifier {
    /// Build backbone and `fc8` from `config`. `background`: channel 0 of `fc8` is SEAM's
    /// background class rather than a foreground class. A new `fc8` is Xavier-uniform, as psa's.
    pub fn new(
        config: &BackboneConfig,
        classes: usize,
        background: bool,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let backbone = Backbone::new(config, vb)?;
        let features = config.feature_channels();
        let bound = (6.0 / (features + classes) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let fc8 = vb.get_with_hints((classes, features, 1, 1), "fc8_weight", init)?;
        Ok(Self {
            backbone,
            fc8,
            classes,
            background,
        })
    }

    /// The feature extractor under `fc8`.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Number of output channels of `fc8` (background included, for SEAM).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Whether channel 0 is the background (SEAM).
    pub fn has_background(&self) -> bool {
        self.background
    }

    /// The `fc8` weight, `[classes, features, 1, 1]`.
    pub fn fc8(&self) -> &Tensor {
        &self.fc8
    }

    /// Set the BN mode of every layer (psa fine-tunes with frozen statistics).
    pub fn set_bn_mode(&mut self, mode: BatchNormMode) {
        self.backbone.set_bn_mode(mode);
    }

    /// Image-level class scores `(N, classes)` before the sigmoid: global average pooling, then
    /// `fc8`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.scores(&self.backbone.forward_t(x, train)?)
    }

    /// Scores from `relu7` features.
    pub fn scores(&self, features: &Tensor) -> Result<Tensor> {
        let w = self.fc8.flatten_from(1)?; // (C, F)
        features.mean((2, 3))?.matmul(&w.t()?)
    }

    /// Class activation maps `(N, classes, h, w)` at the features' resolution: ReLU of `fc8` at
    /// every position.
    pub fn cams(&self, features: &Tensor) -> Result<Tensor> {
        let (n, f, h, w) = features.dims4()?;
        let weight = self.fc8.flatten_from(1)?; // (C, F)
        let flat = features.reshape((n, f, h * w))?;
        let maps = weight
            .unsqueeze(0)?
            .broadcast_as((n, self.classes, f))?
            .contiguous()?
            .matmul(&flat.contiguous()?)?;
        maps.relu()?.reshape((n, self.classes, h, w))
    }

    /// psa's `forward_cam`: CAMs of an input batch.
    pub fn forward_cam(&self, x: &Tensor) -> Result<Tensor> {
        self.cams(&self.backbone.forward_t(x, false)?)
    }

    /// Scores and CAMs from one backbone pass.
    pub fn scores_and_cams(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let features = self.backbone.forward_t(x, false)?;
        Ok((self.scores(&features)?, self.cams(&features)?))
    }
}

impl candle_nn::ModuleT for CamClassifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        CamClassifier::forward_t(self, x, train)
    }
}
