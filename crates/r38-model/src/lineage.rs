//! Which code base a weight file comes from, and what follows from that: the BN epsilon of the
//! framework that trained it, the output stride its network runs at, and which of its layers r38
//! does not implement.
//!
//! The weakly-supervised world (psa/AffinityNet, SEAM, 1-stage-wseg) uses PyTorch ports of the
//! authors' network, all with psa's "resnet38d" state-dict keys (reference §6). resnet38d is always
//! the dilated output-stride-8 network (res5 at dilation 2, res6/res7 at dilation 4), and PyTorch's
//! `BatchNorm2d` uses eps 1e-5 where MXNet's used 1.001e-5.

use crate::checkpoint::HeadKind;
use crate::config::{ConfigError, BN_EPS};
use crate::weights::names::{self, top_module};
use crate::weights::{SkipReason, WeightFile, WeightFormat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// PyTorch's `BatchNorm2d` default epsilon, used by every resnet38d port.
pub const PYTORCH_BN_EPS: f64 = 1e-5;

/// Output stride of psa's "resnet38d" (and of every network derived from it).
pub const RESNET38D_OUTPUT_STRIDE: usize = 8;

/// The code base that wrote a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lineage {
    /// The authors' MXNet code (`ademxapp`): `.params` files, or r38's own files without a
    /// recorded lineage.
    Mxnet,
    /// psa's PyTorch "resnet38d" port (`jiwoon-ahn/psa`): the backbone (`.pth` conversions of the
    /// ImageNet file, shared by SEAM and 1-stage-wseg) or `resnet38_cls` with its 20-class `fc8`
    /// (1-stage-wseg's `BaselineCAM` has the same keys).
    Psa,
    /// SEAM (`YudeWang/SEAM`, `resnet38_SEAM`): a 21-class `fc8` whose channel 0 is the
    /// background, plus the PCM layers `f8_3`, `f8_4` and `f9`.
    Seam,
    /// 1-stage-wseg (`visinf/1-stage-wseg`, `SoftMaxAE`): the backbone plus an ASPP decoder
    /// (`aspp`, `fc8_skip`, `fc8_x`, `last_conv`, `shallow_mask`).
    OneStageWseg,
}

impl std::fmt::Display for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lineage::Mxnet => "authors' MXNet",
            Lineage::Psa => "psa (PyTorch resnet38d)",
            Lineage::Seam => "SEAM (PyTorch resnet38d + PCM)",
            Lineage::OneStageWseg => "1-stage-wseg (PyTorch resnet38d + decoder)",
        })
    }
}

impl std::str::FromStr for Lineage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("unknown lineage `{s}` (mxnet, psa, seam, one-stage-wseg)"))
    }
}

impl Lineage {
    /// The name written into converted files' metadata (`r38.lineage`).
    pub fn key(self) -> &'static str {
        match self {
            Lineage::Mxnet => "mxnet",
            Lineage::Psa => "psa",
            Lineage::Seam => "seam",
            Lineage::OneStageWseg => "one-stage-wseg",
        }
    }

    /// `true` for the PyTorch ports.
    pub fn is_pytorch(self) -> bool {
        self != Lineage::Mxnet
    }

    /// The BN epsilon of the framework that trained the file.
    pub fn bn_eps(self) -> f64 {
        if self.is_pytorch() {
            PYTORCH_BN_EPS
        } else {
            BN_EPS
        }
    }

    /// The output stride the file's own code runs at, when the file fixes it: 8 for every
    /// resnet38d port; `None` for MXNet files (the head decides, see [`Origin::default_output_stride`]).
    pub fn output_stride(self) -> Option<usize> {
        self.is_pytorch().then_some(RESNET38D_OUTPUT_STRIDE)
    }
}

const SEAM_PCM: [&str; 3] = names::SEAM_PCM_MODULES;
const WSEG_DECODER: [&str; 5] = names::WSEG_DECODER_MODULES;

/// What a weight file is, beyond its tensors: where it comes from, its head, and what of it r38
/// leaves unused.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The code base that wrote it.
    pub lineage: Lineage,
    /// The head r38 runs.
    pub head: HeadKind,
    /// Parts of the file r38 does not implement, in words (empty when everything is used).
    pub unsupported: Vec<String>,
}

impl Origin {
    /// Read the lineage off the file: recorded metadata (`r38.lineage`) first, then the format and
    /// the names of the modules r38 skipped while reading a `.pth`.
    pub fn detect(file: &WeightFile) -> Result<Self, ConfigError> {
        let shapes = file.shapes();
        let skipped: Vec<&str> = file
            .skipped
            .iter()
            .filter(|(_, r)| *r == SkipReason::NoCanonicalName)
            .map(|(n, _)| n.as_str())
            .collect();
        let recorded = match file
            .metadata
            .get(&format!("{}lineage", crate::metadata::PREFIX))
        {
            Some(l) => Some(l.parse::<Lineage>().map_err(ConfigError)?),
            None => None,
        };
        Self::from_parts(file.format, recorded, &shapes, &skipped)
    }

    /// [`detect`](Self::detect) from the pieces: format, recorded lineage, canonical shapes and the
    /// source names of skipped (unmapped) `.pth` entries.
    pub fn from_parts(
        format: WeightFormat,
        recorded: Option<Lineage>,
        shapes: &BTreeMap<String, Vec<usize>>,
        skipped: &[&str],
    ) -> Result<Self, ConfigError> {
        let modules: Vec<&str> = skipped.iter().map(|k| top_module(k)).collect();
        let has = |set: &[&str]| modules.iter().any(|m| set.contains(m));
        let lineage = match recorded {
            Some(l) => l,
            None if has(&SEAM_PCM) => Lineage::Seam,
            None if has(&WSEG_DECODER) => Lineage::OneStageWseg,
            None if format == WeightFormat::PyTorch => Lineage::Psa,
            None => Lineage::Mxnet,
        };
        let mut head = HeadKind::detect(shapes)?;
        if let HeadKind::Fc8 { classes, .. } = head {
            // SEAM trains fc8 with the background as class 0; psa's fc8 has foreground only.
            head = HeadKind::Fc8 {
                classes,
                background: lineage == Lineage::Seam,
            };
        }
        let mut unsupported = Vec::new();
        let mut listed = |what: &str, set: &[&str]| {
            let found: Vec<&str> = set
                .iter()
                .copied()
                .filter(|m| modules.contains(m))
                .collect();
            if !found.is_empty() {
                unsupported.push(format!("{what} ({}): not loaded", found.join(", ")));
            }
        };
        listed(
            "SEAM's pixel correlation module (PCM), which SEAM's CAMs need: fc8 scores and \
             the backbone run, `r38 cam` does not",
            &SEAM_PCM,
        );
        listed(
            "1-stage-wseg's segmentation decoder: the backbone (and fc8, if present) runs",
            &WSEG_DECODER,
        );
        let known: Vec<&str> = SEAM_PCM.iter().chain(&WSEG_DECODER).copied().collect();
        let mut others: Vec<&str> = modules
            .iter()
            .copied()
            .filter(|m| !known.contains(m))
            .collect();
        others.sort_unstable();
        others.dedup();
        if !others.is_empty() {
            unsupported.push(format!(
                "modules with no ResNet-38 name ({}): not loaded",
                others.join(", ")
            ));
        }
        Ok(Self {
            lineage,
            head,
            unsupported,
        })
    }

    /// The output stride to build when the user gives none: the lineage's (8 for resnet38d), else
    /// 8 for a segmentation or CAM head and 32 for a classifier or a bare backbone.
    pub fn default_output_stride(&self) -> usize {
        match (self.lineage.output_stride(), self.head) {
            (Some(s), _) => s,
            (None, HeadKind::Segmentation { .. } | HeadKind::Fc8 { .. }) => 8,
            (None, _) => 32,
        }
    }

    /// The BN epsilon to build with.
    pub fn bn_eps(&self) -> f64 {
        self.lineage.bn_eps()
    }
}

/// `true` for canonical tensor names that belong to a head rather than the backbone.
pub fn is_head_tensor(name: &str) -> bool {
    name.starts_with("linear") || name.starts_with("conv6a_") || name.starts_with("fc8_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backbone_shapes() -> BTreeMap<String, Vec<usize>> {
        let mut s = BTreeMap::new();
        s.insert("conv1a_weight".to_string(), vec![64, 3, 3, 3]);
        s
    }

    #[test]
    fn pytorch_files_are_psa_at_stride_8_with_torch_eps() {
        let o = Origin::from_parts(WeightFormat::PyTorch, None, &backbone_shapes(), &[]).unwrap();
        assert_eq!(o.lineage, Lineage::Psa);
        assert_eq!(o.head, HeadKind::None);
        assert_eq!(o.default_output_stride(), 8);
        assert_eq!(o.bn_eps(), 1e-5);
        assert!(o.unsupported.is_empty());
        let m =
            Origin::from_parts(WeightFormat::MxnetParams, None, &backbone_shapes(), &[]).unwrap();
        assert_eq!(m.lineage, Lineage::Mxnet);
        assert_eq!(m.default_output_stride(), 32);
        assert_eq!(m.bn_eps(), 1.001e-5);
    }

    #[test]
    fn psa_classifier_head() {
        let mut s = backbone_shapes();
        s.insert("fc8_weight".to_string(), vec![20, 4096, 1, 1]);
        let o = Origin::from_parts(WeightFormat::PyTorch, None, &s, &[]).unwrap();
        assert_eq!(
            o.head,
            HeadKind::Fc8 {
                classes: 20,
                background: false
            }
        );
    }

    #[test]
    fn seam_and_its_pcm() {
        let mut s = backbone_shapes();
        s.insert("fc8_weight".to_string(), vec![21, 4096, 1, 1]);
        let skipped = [
            "module.f8_3.weight",
            "module.f8_4.weight",
            "module.f9.weight",
        ];
        let o = Origin::from_parts(WeightFormat::PyTorch, None, &s, &skipped).unwrap();
        assert_eq!(o.lineage, Lineage::Seam);
        assert_eq!(
            o.head,
            HeadKind::Fc8 {
                classes: 21,
                background: true
            }
        );
        assert_eq!(o.unsupported.len(), 1);
        assert!(o.unsupported[0].contains("f8_3, f8_4, f9"), "{o:?}");
    }

    #[test]
    fn one_stage_wseg_decoder() {
        let skipped = [
            "aspp.aspp1.atrous_conv.weight",
            "fc8_skip.0.weight",
            "last_conv.0.weight",
            "whatever.weight",
            "other.weight",
            "whatever.bias",
        ];
        let o =
            Origin::from_parts(WeightFormat::PyTorch, None, &backbone_shapes(), &skipped).unwrap();
        assert_eq!(o.lineage, Lineage::OneStageWseg);
        assert_eq!(o.default_output_stride(), 8);
        assert_eq!(o.unsupported.len(), 2, "{o:?}");
        assert!(o.unsupported[1].contains("(other, whatever)"), "{o:?}");
    }

    #[test]
    fn recorded_lineage_wins() {
        let o = Origin::from_parts(
            WeightFormat::Safetensors,
            Some(Lineage::Psa),
            &backbone_shapes(),
            &[],
        )
        .unwrap();
        assert_eq!(o.lineage, Lineage::Psa);
        assert_eq!(
            "one-stage-wseg".parse::<Lineage>(),
            Ok(Lineage::OneStageWseg)
        );
        assert!("caffe".parse::<Lineage>().is_err());
    }
}
