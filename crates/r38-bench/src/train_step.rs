//! One training step of the segmentation net, as `r38 train-seg` takes it: the real
//! [`SegmentationNet`] with its parameters as candle `Var`s, frozen BN (global statistics,
//! gamma and beta trained), softmax cross-entropy with ignored pixels, and candle's backward
//! through the engine's convolution gradients.

use crate::net::HeadKind;
use crate::weights::{seed_of, RandomWeights, Rng};
use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor};
use r38_model::{Backbone, BackboneConfig};
use r38_ops::ConvSpec;
use r38_seg::SegmentationNet;
use r38_train::loss::{softmax_cross_entropy, IGNORE_LABEL};
use std::collections::HashMap;
use std::time::Instant;

/// The gradient written for comparison across engines and with PyTorch: the stem's, the end
/// of the longest backward path.
pub const COMPARED_GRADIENT: &str = "conv1a_weight";

/// The network and its parameters.
pub struct TrainStep {
    net: SegmentationNet,
    parameters: HashMap<String, Tensor>,
}

/// Times of one step, seconds.
#[derive(Debug, Clone, Copy)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
}

impl TrainStep {
    pub fn new(config: &BackboneConfig, head: HeadKind, seed: u64, dev: &Device) -> Result<Self> {
        let Some(head) = head.seg_config() else {
            candle_core::bail!("a training-step case needs a segmentation head");
        };
        let weights = RandomWeights::trainable(seed);
        let net = SegmentationNet::new(config, head, &weights.var_builder(dev))?;
        Ok(Self {
            net,
            parameters: weights.tensors(),
        })
    }

    pub fn backbone(&self) -> &Backbone {
        self.net.backbone()
    }

    pub fn net(&self) -> &SegmentationNet {
        &self.net
    }

    /// The parameters' names, sorted.
    pub fn parameter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.parameters.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every tensor of the network (parameters and BN statistics), by checkpoint name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.parameters
    }

    /// Forward (dropout off, so that PyTorch can take the very same step), loss, backward.
    pub fn run(&self, x: &Tensor, labels: &Tensor) -> Result<(f32, GradStore, StepTimes)> {
        let t0 = Instant::now();
        let scores = self.net.forward_t(x, false)?;
        let loss = softmax_cross_entropy(&scores, labels, IGNORE_LABEL)?;
        let value = loss.to_scalar::<f32>()?;
        let forward = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let grads = loss.backward()?;
        // A GPU runs asynchronously: the step ends when its work has.
        x.device().synchronize()?;
        let backward = t0.elapsed().as_secs_f64();
        Ok((value, grads, StepTimes { forward, backward }))
    }

    /// The gradient of a parameter, by name.
    pub fn gradient(&self, grads: &GradStore, name: &str) -> Result<Tensor> {
        let p = self
            .parameters
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))?;
        grads
            .get(p)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))
    }
}

/// Deterministic labels at the net's output size, one pixel in ten ignored.
pub fn random_labels(shape: (usize, usize, usize), seed: u64, classes: u32) -> Result<Tensor> {
    let mut rng = Rng::new(seed_of("labels", seed));
    let v: Vec<u32> = (0..shape.0 * shape.1 * shape.2)
        .map(|_| {
            if rng.uniform() < 0.1 {
                IGNORE_LABEL
            } else {
                (rng.next_u64() % u64::from(classes)) as u32
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Multiply-accumulates of one forward pass on `(N, 3, H, W)`, from the convolution specs:
/// `(score height, score width)` and the count.
pub fn forward_macs(
    backbone: &Backbone,
    config: &BackboneConfig,
    head: HeadKind,
    (n, _, h, w): (usize, usize, usize, usize),
) -> (usize, usize, u64) {
    let mut macs = 0u64;
    let mut conv = |spec: &ConvSpec, (h, w): (usize, usize)| {
        let out = |x: usize| {
            (x + 2 * spec.padding() - spec.effective_dilation() * (spec.kernel - 1) - 1)
                / spec.stride
                + 1
        };
        let (ho, wo) = (out(h), out(w));
        macs +=
            (n * spec.in_channels * spec.out_channels * spec.kernel * spec.kernel * ho * wo) as u64;
        (ho, wo)
    };
    let mut size = conv(backbone.stem().spec(), (h, w));
    for level in backbone.levels() {
        if let Some(pool) = level.pool() {
            size = (
                pool.output_size(size.0).unwrap_or(0),
                pool.output_size(size.1).unwrap_or(0),
            );
        }
        for unit in level.units() {
            let input = size;
            for branch in unit.branches() {
                size = conv(branch.conv.spec(), size);
            }
            let s = unit.spec();
            if s.projection {
                let out = *s.widths.last().expect("a unit has widths");
                conv(
                    &ConvSpec::new(s.in_channels, out, 1).stride(s.stride),
                    input,
                );
            }
        }
    }
    if let Some(h) = head.seg_config() {
        let mut cin = config.feature_channels();
        let spec = |i, o| {
            ConvSpec::new(i, o, h.kernel)
                .dilation(h.dilation)
                .with_bias()
        };
        if let Some(hidden) = h.hidden {
            size = conv(&spec(cin, hidden), size);
            cin = hidden;
        }
        size = conv(&spec(cin, h.classes), size);
    }
    (size.0, size.1, macs)
}
