//! What a weight file holds, read off its tensor names and shapes: the backbone's widths and
//! depths, and which head (classifier, segmentation, none) sits on top.

use crate::config::{Arch, BackboneConfig, ConfigError, LevelConfig, StemConfig, UnitKind};
use std::collections::BTreeMap;

/// The head found in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadKind {
    /// Global pooling + `linear<C>` (ImageNet files).
    Classifier {
        /// Number of classes of `linear<C>`.
        classes: usize,
    },
    /// Convolutional `linear<C>`, after `conv6a` (the "2 conv" head) or directly ("1 conv").
    Segmentation {
        /// Number of classes of `linear<C>`.
        classes: usize,
        /// Width of `conv6a`; `None` for the "1 conv" head.
        hidden: Option<usize>,
        /// Kernel size of the head convolutions.
        kernel: usize,
    },
    /// psa's multi-label classifier `fc8`: a bias-free 1×1 convolution on `relu7`, applied after
    /// global average pooling for image-level scores and before it for class activation maps.
    Fc8 {
        /// Output channels of `fc8`.
        classes: usize,
        /// Channel 0 is the background (SEAM), not a foreground class (psa).
        #[serde(default)]
        background: bool,
    },
    /// Backbone only (e.g. the PyTorch port's files).
    None,
}

impl HeadKind {
    /// The number of classes, if there is a head.
    pub fn classes(&self) -> Option<usize> {
        match self {
            HeadKind::Classifier { classes }
            | HeadKind::Segmentation { classes, .. }
            | HeadKind::Fc8 { classes, .. } => Some(*classes),
            HeadKind::None => None,
        }
    }

    /// Read the head off `linear<C>_weight` (rank 2: classifier, rank 4: segmentation) or psa's
    /// `fc8_weight` (`[C, features, 1, 1]`). SEAM's background channel is not visible in the
    /// shapes; [`crate::lineage::Origin`] sets it.
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self, ConfigError> {
        if let Some(fc8) = shapes.get("fc8_weight") {
            return match fc8.as_slice() {
                _ if shapes
                    .keys()
                    .any(|n| n.starts_with("linear") || n.starts_with("conv6a_")) =>
                {
                    Err(ConfigError(
                        "both psa's `fc8_weight` and an authors' head (`linear<C>`/`conv6a`)"
                            .into(),
                    ))
                }
                [classes, _, 1, 1] => Ok(HeadKind::Fc8 {
                    classes: *classes,
                    background: false,
                }),
                other => Err(ConfigError(format!(
                    "`fc8_weight` has shape {other:?}, expected [C, features, 1, 1] (psa's fc8)"
                ))),
            };
        }
        let linears: Vec<(&String, &Vec<usize>)> = shapes
            .iter()
            .filter(|(n, _)| {
                n.strip_prefix("linear")
                    .and_then(|r| r.strip_suffix("_weight"))
                    .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        let hidden = shapes.get("conv6a_weight").map(|s| s[0]);
        match linears.as_slice() {
            [] if hidden.is_some() => Err(ConfigError(
                "`conv6a_weight` is present but no `linear<C>_weight` classifier".into(),
            )),
            [] => Ok(HeadKind::None),
            [(_, shape)] if shape.len() == 2 => Ok(HeadKind::Classifier { classes: shape[0] }),
            [(_, shape)] if shape.len() == 4 => Ok(HeadKind::Segmentation {
                classes: shape[0],
                hidden,
                kernel: shape[2],
            }),
            [(name, shape)] => Err(ConfigError(format!(
                "`{name}` has rank {} (expected 2 for a classifier or 4 for segmentation)",
                shape.len()
            ))),
            many => Err(ConfigError(format!(
                "several classifiers in one file: {}",
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// Parse a unit id such as `4a` or `4b3` into (level, index within the level).
fn parse_unit(id: &str) -> Option<(usize, usize)> {
    let digits = id.bytes().take_while(u8::is_ascii_digit).count();
    let level: usize = id[..digits].parse().ok()?;
    match &id[digits..] {
        "a" => Some((level, 0)),
        rest => rest
            .strip_prefix('b')?
            .parse()
            .ok()
            .map(|i: usize| (level, i)),
    }
}

impl BackboneConfig {
    /// Recover widths, depths and unit kinds from checkpoint shapes; the down-sampling pattern
    /// (which the shapes cannot tell) comes from `arch` at `output_stride`.
    pub fn infer(
        shapes: &BTreeMap<String, Vec<usize>>,
        arch: Arch,
        output_stride: usize,
    ) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError(m);
        let stem = shapes
            .get("conv1a_weight")
            .ok_or_else(|| err("no `conv1a_weight`: not a ResNet-38 checkpoint".into()))?;
        if stem.len() != 4 || stem[1] != 3 || stem[2] != stem[3] {
            return Err(err(format!(
                "`conv1a_weight` has shape {stem:?}, expected [C, 3, k, k]"
            )));
        }
        // level -> unit index -> branch convs (kernel, out channels)
        let mut units: BTreeMap<usize, BTreeMap<usize, Vec<(usize, usize)>>> = BTreeMap::new();
        for (name, shape) in shapes {
            let Some(rest) = name
                .strip_prefix("res")
                .and_then(|r| r.strip_suffix("_weight"))
            else {
                continue;
            };
            let Some((unit, branch)) = rest.split_once('_') else {
                continue;
            };
            let Some((level, index)) = parse_unit(unit) else {
                continue;
            };
            let slot = match branch {
                "branch2a" => 0,
                b => match b
                    .strip_prefix("branch2b")
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    Some(i) => i,
                    None => continue,
                },
            };
            if shape.len() != 4 {
                return Err(err(format!(
                    "`{name}` has rank {}, expected 4",
                    shape.len()
                )));
            }
            let branches = units.entry(level).or_default().entry(index).or_default();
            if branches.len() <= slot {
                branches.resize(slot + 1, (0, 0));
            }
            branches[slot] = (shape[2], shape[0]);
        }
        let preset = BackboneConfig::preset(arch, 32)?;
        let mut levels = Vec::new();
        for (level, unit_map) in &units {
            let count = unit_map.len();
            if unit_map.keys().copied().ne(0..count) {
                return Err(err(format!("level {level}: unit names are not contiguous")));
            }
            let first = &unit_map[&0];
            let kernels: Vec<usize> = first.iter().map(|b| b.0).collect();
            let unit = match kernels.as_slice() {
                [3, 3] => UnitKind::Basic,
                [1, 3, 1] => UnitKind::Bottleneck,
                k => {
                    return Err(err(format!(
                        "level {level}: unsupported unit kernels {k:?}"
                    )))
                }
            };
            let downsample = preset
                .levels
                .iter()
                .find(|l| l.level == *level)
                .map(|l| l.downsample)
                .ok_or_else(|| {
                    err(format!(
                        "level {level} is not part of Model {arch}; give a configuration instead"
                    ))
                })?;
            levels.push(LevelConfig {
                level: *level,
                unit,
                units: count,
                widths: first.iter().map(|b| b.1).collect(),
                downsample,
                dilate: false,
                dropout: 0.0,
            });
        }
        let mut config = BackboneConfig {
            stem: StemConfig {
                channels: stem[0],
                kernel: stem[2],
            },
            levels,
            pool_padding: Default::default(),
            bn_eps: crate::config::BN_EPS,
        };
        config.set_output_stride(output_stride)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ids() {
        assert_eq!(parse_unit("4a"), Some((4, 0)));
        assert_eq!(parse_unit("4b5"), Some((4, 5)));
        assert_eq!(parse_unit("12b10"), Some((12, 10)));
        assert_eq!(parse_unit("b1"), None);
        assert_eq!(parse_unit("4c"), None);
    }

    #[test]
    fn head_detection() {
        let mut s = BTreeMap::new();
        assert_eq!(HeadKind::detect(&s).unwrap(), HeadKind::None);
        s.insert("linear1000_weight".to_string(), vec![1000, 4096]);
        assert_eq!(
            HeadKind::detect(&s).unwrap(),
            HeadKind::Classifier { classes: 1000 }
        );
        s.clear();
        s.insert("conv6a_weight".to_string(), vec![512, 4096, 3, 3]);
        s.insert("linear21_weight".to_string(), vec![21, 512, 3, 3]);
        assert_eq!(
            HeadKind::detect(&s).unwrap(),
            HeadKind::Segmentation {
                classes: 21,
                hidden: Some(512),
                kernel: 3
            }
        );
    }
}
