//! The ResNet-38 forward pass written out level by level, every convolution through the engine.
//!
//! [`BenchNet`] holds the very modules `r38_model` builds (the [`Backbone`] with its units,
//! branches and BN layers) plus the few parts the backbone keeps private (projection shortcuts,
//! `bn7`, the heads), fetched by their checkpoint names from the same [`VarBuilder`]. Its forward
//! pass is `Classifier::forward_t` / `SegmentationNet::forward_t` in eval mode, with each
//! convolution sent to [`r38_ops::engine::conv2d_with`] and the time of each level recorded.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use r38_model::{Backbone, BackboneConfig};
use r38_ops::engine::{
    conv2d_add_with, conv2d_kept, conv2d_with, keeps_kernels, with_engine, Engine,
};
use r38_ops::{Conv2d, ConvSpec, PreActivation};
use r38_seg::HeadConfig;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The head on top of `bn7` + ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HeadKind {
    /// Global average pool + `linear<classes>`.
    Classifier { classes: usize },
    /// `r38_seg::SegmentationHead` with this configuration.
    Segmentation(HeadConfigDesc),
}

/// The serialisable part of [`HeadConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeadConfigDesc {
    pub classes: usize,
    pub hidden: Option<usize>,
    pub kernel: usize,
    pub dilation: usize,
}

impl From<HeadConfig> for HeadConfigDesc {
    fn from(h: HeadConfig) -> Self {
        Self {
            classes: h.classes,
            hidden: h.hidden,
            kernel: h.kernel,
            dilation: h.dilation,
        }
    }
}

enum Head {
    Classifier(Linear),
    Segmentation {
        conv6a: Option<Conv2d>,
        classifier: Conv2d,
    },
}

/// Time and work of one part of the network in one forward pass.
#[derive(Debug, Clone, Serialize)]
pub struct PartStat {
    pub name: String,
    pub seconds: f64,
    pub macs: u64,
}

/// The network, ready to run through either engine.
pub struct BenchNet {
    backbone: Backbone,
    /// Projection shortcut of every unit, by level then unit (None: identity).
    shortcuts: Vec<Vec<Option<Conv2d>>>,
    bn7: PreActivation,
    head: Head,
}

impl BenchNet {
    pub fn new(config: &BackboneConfig, head: HeadKind, vb: &VarBuilder) -> Result<Self> {
        let backbone = Backbone::new(config, vb)?;
        let mut shortcuts = Vec::new();
        for level in backbone.levels() {
            let mut per_unit = Vec::new();
            for unit in level.units() {
                let s = unit.spec();
                per_unit.push(if s.projection {
                    let out = *s.widths.last().expect("a unit has widths");
                    let spec = ConvSpec::new(s.in_channels, out, 1).stride(s.stride);
                    Some(Conv2d::new(spec, vb, &format!("res{}_branch1", s.name))?)
                } else {
                    None
                });
            }
            shortcuts.push(per_unit);
        }
        let features = config.feature_channels();
        let bn7 = PreActivation::new(features, config.bn_eps, vb, "bn7")?;
        let head = match head {
            HeadKind::Classifier { classes } => {
                let name = format!("linear{classes}");
                let w = vb.get((classes, features), &format!("{name}_weight"))?;
                let b = vb.get(classes, &format!("{name}_bias"))?;
                Head::Classifier(Linear::new(w, Some(b)))
            }
            HeadKind::Segmentation(h) => {
                let conv = |i, o| {
                    ConvSpec::new(i, o, h.kernel)
                        .dilation(h.dilation)
                        .with_bias()
                };
                let (conv6a, cin) = match h.hidden {
                    Some(hidden) => (
                        Some(Conv2d::new(conv(features, hidden), vb, "conv6a")?),
                        hidden,
                    ),
                    None => (None, features),
                };
                let classifier =
                    Conv2d::new(conv(cin, h.classes), vb, &format!("linear{}", h.classes))?;
                Head::Segmentation { conv6a, classifier }
            }
        };
        Ok(Self {
            backbone,
            shortcuts,
            bn7,
            head,
        })
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Eval-mode forward pass; returns the output and the time and MACs of each part
    /// (`conv1a`, `level2`..`level7`, `head` = bn7 + head). Inside
    /// [`r38_ops::engine::with_kept_kernels`] the convolutions keep their Winograd kernels, as
    /// `Conv2d::forward` does there.
    pub fn forward(&self, x: &Tensor, engine: Engine) -> Result<(Tensor, Vec<PartStat>)> {
        let mut parts = Vec::new();
        let mut macs = 0u64;
        let keep = keeps_kernels();
        let conv = |x: &Tensor, c: &Conv2d, macs: &mut u64| -> Result<Tensor> {
            let y = if keep {
                with_engine(engine, || {
                    conv2d_kept(x, c.weight(), c.bias(), c.spec(), c.kept_kernels())
                })?
            } else {
                conv2d_with(engine, x, c.weight(), c.bias(), c.spec())?
            };
            *macs += conv_macs(c.spec(), &y);
            Ok(y)
        };
        // A GPU runs asynchronously: each part's time ends when its work has.
        let sync = |t: &Tensor| t.device().synchronize();
        let t0 = Instant::now();
        let mut x = conv(x, self.backbone.stem(), &mut macs)?;
        sync(&x)?;
        parts.push(part("conv1a", t0.elapsed(), std::mem::take(&mut macs)));

        for (level, shortcuts) in self.backbone.levels().iter().zip(&self.shortcuts) {
            let t0 = Instant::now();
            if let Some(pool) = level.pool() {
                x = pool.forward(&x)?;
            }
            for (unit, shortcut) in level.units().iter().zip(shortcuts) {
                // As ResidualUnit::forward_output: inputs are released as soon as possible, and
                // only a projection's input is pre-activated on its own; every other
                // pre-activation is applied as its convolution reads, and the identity
                // shortcut added as the last convolution writes.
                let identity = shortcut.is_none().then(|| x.clone());
                let mut t = x;
                let mut pre_activated = None;
                let last = unit.branches().len() - 1;
                for (i, branch) in unit.branches().iter().enumerate() {
                    if i == 0 && shortcut.is_some() {
                        let a = branch.pre.forward_t(&t, false)?;
                        drop(t);
                        t = conv(&a, &branch.conv, &mut macs)?;
                        pre_activated = Some(a);
                        continue;
                    }
                    let (c, plus) = (&branch.conv, identity.as_ref().filter(|_| i == last));
                    t = with_engine(engine, || c.forward_after(&branch.pre, t, plus))?;
                    macs += conv_macs(c.spec(), &t);
                }
                x = match shortcut {
                    Some(p) => {
                        let a = pre_activated.expect("a unit has branches");
                        let y = conv2d_add_with(engine, &a, p.weight(), p.spec(), t)?;
                        macs += conv_macs(p.spec(), &y);
                        y
                    }
                    None => t,
                };
            }
            sync(&x)?;
            parts.push(part(
                &format!("level{}", level.level()),
                t0.elapsed(),
                std::mem::take(&mut macs),
            ));
        }

        let t0 = Instant::now();
        let features = self.bn7.forward_t(&x, false)?;
        // As Backbone::forward_t, which returns only the features.
        drop(x);
        let y = match &self.head {
            Head::Classifier(fc) => {
                let pooled = features.mean((2, 3))?;
                macs += (pooled.dim(0)? * fc.weight().elem_count()) as u64;
                fc.forward(&pooled)?
            }
            Head::Segmentation { conv6a, classifier } => {
                let h = match conv6a {
                    Some(c) => conv(&features, c, &mut macs)?.relu()?,
                    None => features,
                };
                conv(&h, classifier, &mut macs)?
            }
        };
        sync(&y)?;
        parts.push(part("head", t0.elapsed(), macs));
        Ok((y, parts))
    }
}

fn part(name: &str, d: Duration, macs: u64) -> PartStat {
    PartStat {
        name: name.to_string(),
        seconds: d.as_secs_f64(),
        macs,
    }
}

/// `Cin * Cout * k^2 * Hout * Wout * N` from the spec and the output's shape.
pub fn conv_macs(spec: &ConvSpec, y: &Tensor) -> u64 {
    let d = y.dims();
    let n_out: usize = d[0] * d[2] * d[3];
    (spec.in_channels * spec.out_channels * spec.kernel * spec.kernel * n_out) as u64
}

impl HeadKind {
    /// The `r38_seg` configuration of a segmentation head.
    pub fn seg_config(&self) -> Option<HeadConfig> {
        match self {
            HeadKind::Segmentation(h) => Some(crate::cases::head_config(*h)),
            HeadKind::Classifier { .. } => None,
        }
    }
}
