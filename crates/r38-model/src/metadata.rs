//! Metadata that a converted safetensors file carries, so that it needs no flags afterwards:
//! the architecture, the test-time preprocessing (as timm's pretrained configs do) and where the
//! weights came from.

use crate::checkpoint::HeadKind;
use crate::config::{Arch, BackboneConfig, ConfigError, PoolPadding};
use crate::lineage::{Lineage, Origin};
use crate::weights::released::{ReleasedFile, ReleasedHead};
use crate::weights::WeightFile;
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
    /// Segmentation: average with the flipped input (the released protocols do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<bool>,
    /// Segmentation: shift-and-stitch steps per axis (ADE20K: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_steps: Option<u32>,
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
            flip: matches!(head, HeadKind::Segmentation { .. }).then_some(true),
            test_steps: None,
        }
    }

    /// The protocol of an authors' released file: its benchmark's published settings
    /// (Cityscapes at its native 2048 width, ADE20K with 2x2 shift-and-stitch).
    pub fn for_released(file: &ReleasedFile) -> Self {
        let head = match file.head {
            ReleasedHead::Cls => HeadKind::Classifier {
                classes: file.classes,
            },
            ReleasedHead::Seg => HeadKind::Segmentation {
                classes: file.classes,
                hidden: Some(512),
                kernel: 3,
            },
        };
        let mut p = Self::for_head(&head);
        if file.file_name.starts_with("cityscapes") {
            p.test_scale = 2048;
        } else if file.file_name.starts_with("ade") {
            p.test_steps = Some(2);
        }
        p
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
    /// Class names, when the file records them.
    pub class_names: Option<Vec<String>>,
    /// File name (never a path: a file says nothing about the machine that wrote it) the
    /// weights were converted from.
    pub source_file: Option<String>,
    /// MD5 of the source file.
    pub source_md5: Option<String>,
    /// Name of the authors' released file, when the checksum matched one.
    pub released: Option<String>,
    /// The code base the weights come from (psa, SEAM, ...), when known.
    pub lineage: Option<Lineage>,
    /// Every other `r38.*` entry (training records such as `r38.held_out_miou`), kept as it is
    /// so that a conversion loses nothing.
    pub extra: BTreeMap<String, String>,
}

/// What a caller may decide instead of the file (`--arch`, `--output-stride`, `--pool-style`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Model A, A1 or A2 instead of the file's.
    pub arch: Option<Arch>,
    /// Output stride 8, 16 or 32 instead of the file's.
    pub output_stride: Option<usize>,
    /// Model A's pooling instead of the file's.
    pub pool_padding: Option<PoolPadding>,
}

/// Why a file's architecture could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// An `r38.*` entry does not parse or is out of range.
    #[error("{file}: metadata `{PREFIX}{key}`: {message}")]
    Field {
        /// The weight file.
        file: String,
        /// The key, without the prefix.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The tensors do not describe a network of the family.
    #[error("{file}: {source}")]
    Config {
        /// The weight file.
        file: String,
        /// What is wrong.
        source: ConfigError,
    },
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
        if let Some(names) = &self.class_names {
            m.insert(format!("{PREFIX}class_names"), json(names));
        }
        for (key, value) in &self.extra {
            m.insert(format!("{PREFIX}{key}"), value.clone());
        }
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
    /// The error is `(key, message)`.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Option<Self>, (String, String)> {
        let get = |k: &str| map.get(&format!("{PREFIX}{k}"));
        let Some(config) = get("config") else {
            return Ok(None);
        };
        let parse_err = |k: &str, e: &dyn std::fmt::Display| (k.to_string(), e.to_string());
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
        let class_names = match get("class_names") {
            Some(n) => Some(serde_json::from_str(n).map_err(|e| parse_err("class_names", &e))?),
            None => None,
        };
        let extra = map
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_string(), v.clone())))
            .filter(|(k, _)| !MODELLED_KEYS.contains(&k.as_str()))
            .collect();
        Ok(Some(Self {
            arch,
            output_stride: config.output_stride(),
            config,
            head,
            head_dilation,
            preprocess,
            class_names,
            // Older files recorded the converting machine's path; keep only the name.
            source_file: get("source_file").map(|f| file_name_of(f)),
            source_md5: get("source_md5").cloned(),
            released: get("released").cloned(),
            lineage,
            extra,
        }))
    }

    /// Decide the network a weight file holds: `overrides` first, then the file's own metadata,
    /// then the defaults of its lineage ([`Origin`]: the released-file table; A1; stride 8 for
    /// PyTorch resnet38d files and segmentation or fc8 heads, 32 otherwise; the BN epsilon of
    /// the framework that trained it).
    pub fn describe(file: &WeightFile, overrides: &Overrides) -> Result<Self, MetadataError> {
        let name = file.path.display().to_string();
        let stored =
            Self::from_map(&file.metadata).map_err(|(key, message)| MetadataError::Field {
                file: name.clone(),
                key,
                message,
            })?;
        let config_err = |source| MetadataError::Config {
            file: name.clone(),
            source,
        };
        let shapes = file.shapes();
        // Lineage (psa, SEAM, ...), head, default stride and BN epsilon.
        let origin = Origin::detect(file).map_err(config_err)?;
        let head = origin.head;
        let arch = overrides
            .arch
            .or(stored.as_ref().map(|m| m.arch))
            .or(file.released.map(|r| r.arch))
            .unwrap_or(Arch::A1);
        let default_stride = match file.released {
            Some(r) => r.output_stride,
            None => origin.default_output_stride(),
        };
        let mut config = match (&stored, overrides.arch) {
            (Some(m), None) => m.config.clone(),
            _ => {
                let stride = overrides
                    .output_stride
                    .or(stored.as_ref().map(|m| m.output_stride))
                    .unwrap_or(default_stride);
                let mut config =
                    BackboneConfig::infer(&shapes, arch, stride).map_err(config_err)?;
                config.bn_eps = origin.bn_eps();
                config
            }
        };
        if let Some(stride) = overrides.output_stride {
            config.set_output_stride(stride).map_err(config_err)?;
        }
        match (overrides.pool_padding, file.released) {
            (Some(style), _) => config.pool_padding = style,
            // The authors' published Model A numbers were measured with pad-0 test-time pooling.
            (None, Some(r)) if r.arch == Arch::A && stored.is_none() => {
                config.pool_padding = PoolPadding::Caffe
            }
            _ => {}
        }
        if matches!(head, HeadKind::Segmentation { .. }) {
            // The released segmentation nets drop out before the last conv of levels 6 and 7.
            config = config.with_dropout(&[(6, 0.3), (7, 0.5)]);
        }
        let preprocess = match (&stored, file.released) {
            (Some(m), _) => m.preprocess.clone(),
            (None, Some(r)) => Preprocess::for_released(r),
            (None, None) => Preprocess::for_head(&head),
        };
        let class_names = stored
            .as_ref()
            .and_then(|m| m.class_names.clone())
            .filter(|n| Some(n.len()) == head.classes());
        let stored = stored.as_ref();
        Ok(Self {
            arch,
            output_stride: config.output_stride(),
            preprocess,
            config,
            head,
            head_dilation: stored.and_then(|m| m.head_dilation),
            class_names,
            source_file: stored.and_then(|m| m.source_file.clone()).or_else(|| {
                file.path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            }),
            source_md5: stored
                .and_then(|m| m.source_md5.clone())
                .or(Some(file.md5.clone())),
            released: stored
                .and_then(|m| m.released.clone())
                .or(file.released.map(|r| r.file_name.clone())),
            lineage: stored
                .and_then(|m| m.lineage)
                .or(origin.lineage.is_pytorch().then_some(origin.lineage)),
            extra: stored.map(|m| m.extra.clone()).unwrap_or_default(),
        })
    }
}

/// The keys [`ModelMetadata`] models; every other `r38.*` key goes to [`ModelMetadata::extra`].
const MODELLED_KEYS: [&str; 13] = [
    "arch",
    "config",
    "output_stride",
    "head",
    "head_dilation",
    "classes",
    "preprocess",
    "class_names",
    "source_file",
    "source_md5",
    "released",
    "bn_eps",
    "lineage",
];

fn file_name_of(recorded: &str) -> String {
    recorded
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(recorded)
        .to_string()
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
            class_names: Some((0..21).map(|i| format!("class {i}")).collect()),
            source_file: Some("voc_rna-a1_cls21_s8_ep-0001.params".into()),
            source_md5: Some("a34628a63d5f62dcb98c29c4e281f332".into()),
            released: Some("voc_rna-a1_cls21_s8_ep-0001.params".into()),
            lineage: None,
            extra: [("held_out_miou".to_string(), "0.665".to_string())].into(),
        };
        let map = meta.to_map();
        assert_eq!(map["r38.held_out_miou"], "0.665");
        assert_eq!(ModelMetadata::from_map(&map).unwrap(), Some(meta));
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
            class_names: None,
            source_file: Some("seam.pth".into()),
            source_md5: None,
            released: None,
            lineage: Some(Lineage::Seam),
            extra: BTreeMap::new(),
        };
        let map = meta.to_map();
        assert_eq!(map["r38.bn_eps"], "0.00001");
        assert_eq!(map["r38.lineage"], "seam");
        assert_eq!(ModelMetadata::from_map(&map).unwrap(), Some(meta));
        assert_eq!(ModelMetadata::from_map(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn recorded_paths_keep_only_the_file_name() {
        let mut map = BTreeMap::new();
        map.insert(
            "r38.config".to_string(),
            serde_json::to_string(&BackboneConfig::model_a1(32).unwrap()).unwrap(),
        );
        map.insert(
            "r38.source_file".to_string(),
            "/home/someone/runs/scenes/model.safetensors".to_string(),
        );
        let meta = ModelMetadata::from_map(&map).unwrap().unwrap();
        assert_eq!(meta.source_file.as_deref(), Some("model.safetensors"));
    }
}
