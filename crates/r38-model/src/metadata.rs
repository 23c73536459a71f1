//! Metadata that a converted safetensors file carries, so that it needs no flags afterwards:
//! the architecture, the test-time preprocessing (as timm's pretrained configs do) and where the
//! weights came from.

use crate::checkpoint::HeadKind;
use crate::config::{Arch, BackboneConfig};
use crate::lineage::Lineage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Prefix of every key this project writes into `__metadata__`.
pub const PREFIX: &str = "r38.";

/// How inputs are prepared at test time for this file's task (reference §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// RGB mean and std on 0..1 pixel values.
    pub mean: [f64; 3],
    /// RGB standard deviation on 0..1 pixel values.
    pub std: [f64; 3],
    /// Test scale: the shorter side (classification) or the longer side (segmentation).
    pub test_scale: u32,
    /// Centre crop (classification) or `None` for whole-image segmentation.
    pub crop: Option<u32>,
    /// `bicubic` (the published ImageNet numbers) or `adaptive` (segmentation).
    pub interpolation: String,
}

impl Preprocess {
    /// The authors' protocol for the given head.
    pub fn for_head(head: &HeadKind) -> Self {
        let (test_scale, crop, interpolation) = match head {
            HeadKind::Segmentation { .. } => (500, None, "adaptive"),
            _ => (320, Some(320), "bicubic"),
        };
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            test_scale,
            crop,
            interpolation: interpolation.into(),
        }
    }
}

/// Everything a converted file knows about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Model A, A1 or A2.
    pub arch: Arch,
    /// The full backbone configuration.
    pub config: BackboneConfig,
    /// Output stride of the final features.
    pub output_stride: usize,
    /// The head on the backbone.
    pub head: HeadKind,
    /// Dilation of the segmentation head's convolutions, when not the released 12.
    pub head_dilation: Option<usize>,
    /// Test-time preprocessing.
    pub preprocess: Preprocess,
    /// File name the weights were converted from.
    pub source_file: Option<String>,
    /// MD5 of the source file.
    pub source_md5: Option<String>,
    /// Name of the authors' released file, when the checksum matched one.
    pub released: Option<String>,
    /// The code base the weights come from (psa, SEAM, ...), when known.
    pub lineage: Option<Lineage>,
}

impl ModelMetadata {
    /// String pairs for safetensors' `__metadata__`.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let json = |v: &dyn erased::Json| v.json();
        m.insert(format!("{PREFIX}arch"), self.arch.to_string());
        m.insert(format!("{PREFIX}config"), json(&self.config));
        m.insert(
            format!("{PREFIX}output_stride"),
            self.output_stride.to_string(),
        );
        m.insert(format!("{PREFIX}head"), json(&self.head));
        // Also inside `config`; on its own so that other tools can read it without our schema.
        m.insert(format!("{PREFIX}bn_eps"), self.config.bn_eps.to_string());
        if let Some(l) = self.lineage {
            m.insert(format!("{PREFIX}lineage"), l.key().into());
        }
        if let Some(d) = self.head_dilation {
            m.insert(format!("{PREFIX}head_dilation"), d.to_string());
        }
        if let Some(c) = self.head.classes() {
            m.insert(format!("{PREFIX}classes"), c.to_string());
        }
        m.insert(format!("{PREFIX}preprocess"), json(&self.preprocess));
        for (key, value) in [
            ("source_file", &self.source_file),
            ("source_md5", &self.source_md5),
            ("released", &self.released),
        ] {
            if let Some(v) = value {
                m.insert(format!("{PREFIX}{key}"), v.clone());
            }
        }
        m.insert("format".into(), "pt".into());
        m
    }

    /// Read back what [`to_map`](Self::to_map) wrote; `None` when the file has no r38 metadata.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Option<Self>, String> {
        let get = |k: &str| map.get(&format!("{PREFIX}{k}"));
        let Some(config) = get("config") else {
            return Ok(None);
        };
        let parse_err = |k: &str, e: &dyn std::fmt::Display| format!("metadata `{PREFIX}{k}`: {e}");
        let mut config: BackboneConfig =
            serde_json::from_str(config).map_err(|e| parse_err("config", &e))?;
        if let Some(eps) = get("bn_eps") {
            config.bn_eps = eps.parse().map_err(|e| parse_err("bn_eps", &e))?;
        }
        let lineage = match get("lineage") {
            Some(l) => Some(l.parse().map_err(|e: String| parse_err("lineage", &e))?),
            None => None,
        };
        let arch = match get("arch") {
            Some(a) => a.parse().map_err(|e: String| parse_err("arch", &e))?,
            None => Arch::A1,
        };
        let head: HeadKind = match get("head") {
            Some(h) => serde_json::from_str(h).map_err(|e| parse_err("head", &e))?,
            None => HeadKind::None,
        };
        let head_dilation = match get("head_dilation") {
            Some(d) => Some(d.parse().map_err(|e| parse_err("head_dilation", &e))?),
            None => None,
        };
        let preprocess = match get("preprocess") {
            Some(p) => serde_json::from_str(p).map_err(|e| parse_err("preprocess", &e))?,
            None => Preprocess::for_head(&head),
        };
        Ok(Some(Self {
            arch,
            output_stride: config.output_stride(),
            config,
            head,
            head_dilation,
            preprocess,
            source_file: get("source_file").cloned(),
            source_md5: get("source_md5").cloned(),
            released: get("released").cloned(),
            lineage,
        }))
    }
}

mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("plain data serialises")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let head = HeadKind::Segmentation {
            classes: 21,
            hidden: Some(512),
            kernel: 3,
        };
        let meta = ModelMetadata {
            arch: Arch::A1,
            config: BackboneConfig::model_a1(8).unwrap(),
            output_stride: 8,
            preprocess: Preprocess::for_head(&head),
            head,
            head_dilation: Some(2),
            source_file: Some("voc_rna-a1_cls21_s8_ep-0001.params".into()),
            source_md5: Some("a34628a63d5f62dcb98c29c4e281f332".into()),
            released: Some("voc_rna-a1_cls21_s8_ep-0001.params".into()),
            lineage: None,
        };
        assert_eq!(ModelMetadata::from_map(&meta.to_map()).unwrap(), Some(meta));
    }

    #[test]
    fn pytorch_eps_and_lineage_round_trip() {
        let head = HeadKind::Fc8 {
            classes: 21,
            background: true,
        };
        let mut config = BackboneConfig::model_a1(8).unwrap();
        config.bn_eps = crate::lineage::PYTORCH_BN_EPS;
        let meta = ModelMetadata {
            arch: Arch::A1,
            config,
            output_stride: 8,
            preprocess: Preprocess::for_head(&head),
            head,
            head_dilation: None,
            source_file: Some("seam.pth".into()),
            source_md5: None,
            released: None,
            lineage: Some(Lineage::Seam),
        };
        let map = meta.to_map();
        assert_eq!(map["r38.bn_eps"], "0.00001");
        assert_eq!(map["r38.lineage"], "seam");
        assert_eq!(ModelMetadata::from_map(&map).unwrap(), Some(meta));
        assert_eq!(ModelMetadata::from_map(&BTreeMap::new()).unwrap(), None);
    }
}
