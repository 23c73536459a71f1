//! Benchmark cases, and the network description handed to the PyTorch reference.

use crate::net::{HeadConfigDesc, HeadKind};
use r38_model::{Backbone, BackboneConfig};
use r38_seg::HeadConfig;
use serde_json::{json, Value};

/// What a case times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// An eval-mode forward pass.
    Forward,
    /// One training step of the segmentation recipe: forward with frozen BN, softmax
    /// cross-entropy with ignored pixels, backward to every trainable parameter.
    TrainingStep,
}

/// One benchmark case: a network, an input shape and what is timed.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub about: &'static str,
    pub config: BackboneConfig,
    pub head: HeadKind,
    pub input: (usize, usize, usize, usize),
    pub job: Job,
    /// Included when no `--case` is given.
    pub default: bool,
}

/// The known cases, `narrow` dividing every width (1 = full size).
pub fn all(narrow: usize) -> anyhow::Result<Vec<Case>> {
    let a1 = |os| -> anyhow::Result<BackboneConfig> {
        let c = BackboneConfig::model_a1(os).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(if narrow > 1 { c.narrowed(narrow) } else { c })
    };
    let seg = HeadKind::Segmentation(HeadConfigDesc::from(narrow_head(
        HeadConfig::two_conv(21),
        narrow,
    )));
    Ok(vec![
        Case {
            name: "a1-224",
            about: "A1 classifier (s32), 1x3x224x224",
            config: a1(32)?,
            head: HeadKind::Classifier { classes: 1000 },
            input: (1, 3, 224, 224),
            job: Job::Forward,
            default: true,
        },
        Case {
            name: "a1-224-b8",
            about: "A1 classifier (s32), 8x3x224x224",
            config: a1(32)?,
            head: HeadKind::Classifier { classes: 1000 },
            input: (8, 3, 224, 224),
            job: Job::Forward,
            default: true,
        },
        Case {
            name: "a1s8-504",
            about: "A1 s8 + 2-conv head (21), 1x3x504x504",
            config: a1(8)?,
            head: seg,
            input: (1, 3, 504, 504),
            job: Job::Forward,
            default: true,
        },
        Case {
            name: "a1s8-frame",
            about: "A1 s8 + 2-conv head (21), 1x3x1024x2048 (slow, large memory)",
            config: a1(8)?,
            head: seg,
            input: (1, 3, 1024, 2048),
            job: Job::Forward,
            default: false,
        },
        Case {
            name: "a1s8-train",
            about: "one training step of A1 s8 + 2-conv head (21), 1x3x224x224 crop",
            config: a1(8)?,
            head: seg,
            input: (1, 3, 224, 224),
            job: Job::TrainingStep,
            default: true,
        },
    ])
}

fn narrow_head(mut h: HeadConfig, narrow: usize) -> HeadConfig {
    if narrow > 1 {
        h.hidden = h.hidden.map(|c| (c / narrow).max(1));
    }
    h
}

pub fn head_config(h: HeadConfigDesc) -> HeadConfig {
    HeadConfig {
        classes: h.classes,
        hidden: h.hidden,
        kernel: h.kernel,
        dilation: h.dilation,
    }
}

/// The network as `tools/torch_reference.py` builds it: every unit's names, kernels, widths,
/// strides and dilations, read from the built modules (not re-derived).
pub fn describe(b: &Backbone, config: &BackboneConfig, head: HeadKind) -> Value {
    let stem = b.stem().spec();
    let levels: Vec<Value> = b
        .levels()
        .iter()
        .map(|level| {
            let units: Vec<Value> = level
                .units()
                .iter()
                .map(|u| {
                    let s = u.spec();
                    let convs: Vec<Value> = u
                        .branches()
                        .iter()
                        .zip(s.branch_names())
                        .map(|(br, name)| {
                            let c = br.conv.spec();
                            json!({
                                "branch": name,
                                "in": c.in_channels, "out": c.out_channels, "kernel": c.kernel,
                                "stride": c.stride, "dilation": c.effective_dilation(),
                                "padding": c.padding(),
                            })
                        })
                        .collect();
                    json!({
                        "name": s.name,
                        "in_channels": s.in_channels,
                        "stride": s.stride,
                        "projection": s.projection,
                        "convs": convs,
                    })
                })
                .collect();
            json!({
                "level": level.level(),
                "pool": level.pool().is_some(),
                "units": units,
            })
        })
        .collect();
    json!({
        "bn_eps": config.bn_eps,
        "stem": {"name": "conv1a", "in": stem.in_channels, "out": stem.out_channels,
                 "kernel": stem.kernel, "padding": stem.padding()},
        "levels": levels,
        "features": config.feature_channels(),
        "head": head,
    })
}
