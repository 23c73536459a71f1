//! The classification head: global average pooling and the `linear<C>` fully connected layer.

use crate::backbone::Backbone;
use crate::config::BackboneConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use r38_ops::BatchNormMode;

/// Backbone + `pool7` (global average) + `linear<C>`; outputs logits before the softmax.
#[derive(Debug, Clone)]
pub struct Classifier {
    backbone: Backbone,
    fc: Linear,
    classes: usize,
}

impl Classifier {
    /// Build backbone and `linear<classes>` from `config`, reading the tensors through `vb`.
    pub fn new(config: &BackboneConfig, classes: usize, vb: &VarBuilder) -> Result<Self> {
        let backbone = Backbone::new(config, vb)?;
        let features = config.feature_channels();
        // Torch-style uniform initialisation of the last layer, as in the authors' ImageNet recipe.
        let bound = 1.0 / (features as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let name = format!("linear{classes}");
        let weight = vb.get_with_hints((classes, features), &format!("{name}_weight"), init)?;
        let bias = vb.get_with_hints(classes, &format!("{name}_bias"), init)?;
        Ok(Self {
            backbone,
            fc: Linear::new(weight, Some(bias)),
            classes,
        })
    }

    /// The feature extractor under the head.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Mutable access, e.g. to change BN modes.
    pub fn backbone_mut(&mut self) -> &mut Backbone {
        &mut self.backbone
    }

    /// Number of classes of `linear<C>`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Set the BN mode of every layer (see [`BatchNormMode`]).
    pub fn set_bn_mode(&mut self, mode: BatchNormMode) {
        self.backbone.set_bn_mode(mode);
    }

    /// Class logits `(N, C)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.classify_features(&self.backbone.forward_t(x, train)?)
    }

    /// Global average pooling and `linear<C>` on the backbone's final features.
    pub fn classify_features(&self, features: &Tensor) -> Result<Tensor> {
        self.fc.forward(&features.mean((2, 3))?)
    }
}

impl candle_nn::ModuleT for Classifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Classifier::forward_t(self, x, train)
    }
}
