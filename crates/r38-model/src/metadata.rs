//! Metadata that a converted safetensors file carries, so that it needs no flags afterwards:
//! the architecture, the test-time preprocessing (as timm's pretrained configs do) and where the
//! weights came from.

use crate::checkpoint::HeadKind;
use crate::config::limits::{MAX_CHANNELS, MAX_KERNEL};
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
    /// The file's `r38.*` metadata is out of range or does not describe its tensors.
    #[error("{file}: {source}")]
    Invalid {
        /// The weight file.
        file: String,
        /// What is wrong.
        source: InvalidMetadata,
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
        let output_stride = match get("output_stride") {
            Some(s) => s.parse().map_err(|e| parse_err("output_stride", &e))?,
            None => config.output_stride(),
        };
        if let Some(c) = get("classes") {
            let c: usize = c.parse().map_err(|e| parse_err("classes", &e))?;
            if head.classes() != Some(c) {
                return Err(parse_err(
                    "classes",
                    &format!("{c} disagrees with the head's {:?}", head.classes()),
                ));
            }
        }
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
            output_stride,
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
        // Every recorded value is checked against the tensors before anything is built from it.
        if let Some(m) = &stored {
            m.validate(&shapes)
                .map_err(|source| MetadataError::Invalid {
                    file: name.clone(),
                    source,
                })?;
        }
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
            source_file: stored
                .and_then(|m| m.source_file.clone())
                .or_else(|| source_name(&file.path)),
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

/// What a file records of the file it was made from: its name, never its path.
pub fn source_name(path: &std::path::Path) -> Option<String> {
    path.file_name().map(|f| f.to_string_lossy().into_owned())
}

fn file_name_of(recorded: &str) -> String {
    recorded
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(recorded)
        .to_string()
}

/// Bounds on the `r38.*` metadata beyond the backbone's (see [`crate::config::limits`]),
/// checked by [`ModelMetadata::validate`].
pub mod limits {
    /// Classes of a head (1000 for ImageNet-1k); label maps are written as 16-bit PNGs above
    /// 255 classes, so the largest class id must fit 16 bits.
    pub const MAX_CLASSES: usize = 65_535;
    /// Dilation of the segmentation head (12 released, 2 for small scenes).
    pub const MAX_HEAD_DILATION: usize = 64;
    /// Test scale and crop in pixels (320 for ImageNet, 500 for VOC, 2048 for Cityscapes).
    pub const MAX_TEST_SCALE: u32 = 4096;
    /// Smallest and largest per-channel std on 0..1 pixel values (ImageNet: 0.22..0.23).
    pub const STD_RANGE: (f64, f64) = (1e-3, 10.0);
    /// Bytes of a free-text field (`source_file`, `source_md5`, `released`).
    pub const MAX_TEXT_BYTES: usize = 4096;
    /// Tensor problems listed in an error; the rest are counted.
    pub const MAX_LISTED_PROBLEMS: usize = 8;
}

/// Why a file's `r38.*` metadata cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidMetadata {
    /// A field is out of range or inconsistent.
    #[error("metadata `{PREFIX}{field}`: {detail}")]
    Field {
        /// The key without the prefix (`config`, `head`, `preprocess`, ...).
        field: &'static str,
        /// What is wrong, with the limit.
        detail: String,
    },
    /// The configuration does not describe the tensors in the file.
    #[error(
        "metadata `{PREFIX}config`/`{PREFIX}head` does not describe the file's tensors \
         ({} problem(s)): {}{}",
        .total, .listed.join("; "),
        if *.total > .listed.len() { format!("; and {} more", .total - .listed.len()) } else { String::new() }
    )]
    Tensors {
        /// Number of problems.
        total: usize,
        /// The first [`limits::MAX_LISTED_PROBLEMS`] of them.
        listed: Vec<String>,
    },
}

fn field(field: &'static str, detail: String) -> InvalidMetadata {
    InvalidMetadata::Field { field, detail }
}

impl ModelMetadata {
    /// Checks every field against [`limits`] and [`crate::config::limits`], and that the
    /// configuration and head describe exactly the tensors in `shapes` (canonical names), all
    /// without building anything: a file whose metadata passes builds with no surprises.
    pub fn validate(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(), InvalidMetadata> {
        use limits::*;
        self.config.validate().map_err(|e| field("config", e.0))?;
        if self.output_stride != self.config.output_stride() {
            return Err(field(
                "output_stride",
                format!(
                    "{} disagrees with the configuration's output stride {}",
                    self.output_stride,
                    self.config.output_stride()
                ),
            ));
        }
        match self.head {
            HeadKind::None => {}
            HeadKind::Classifier { classes }
            | HeadKind::Segmentation { classes, .. }
            | HeadKind::Fc8 { classes, .. }
                if classes == 0 || classes > MAX_CLASSES =>
            {
                return Err(field(
                    "head",
                    format!("{classes} classes, expected 1..={MAX_CLASSES}"),
                ));
            }
            HeadKind::Classifier { .. } | HeadKind::Fc8 { .. } => {}
            HeadKind::Segmentation { hidden, kernel, .. } => {
                if hidden.is_some_and(|h| h == 0 || h > MAX_CHANNELS) {
                    return Err(field(
                        "head",
                        format!("hidden width {hidden:?} not in 1..={MAX_CHANNELS}"),
                    ));
                }
                if kernel.is_multiple_of(2) || kernel > MAX_KERNEL {
                    return Err(field(
                        "head",
                        format!("kernel {kernel} is not odd and at most {MAX_KERNEL}"),
                    ));
                }
            }
        }
        if let Some(d) = self.head_dilation {
            if d == 0 || d > MAX_HEAD_DILATION {
                return Err(field(
                    "head_dilation",
                    format!("{d} not in 1..={MAX_HEAD_DILATION}"),
                ));
            }
        }
        let p = &self.preprocess;
        if let Some(m) = p.mean.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(field(
                "preprocess",
                format!("mean {m} is not in [0, 1] (0..1 pixel values)"),
            ));
        }
        if let Some(s) = p
            .std
            .iter()
            .find(|s| !(STD_RANGE.0..=STD_RANGE.1).contains(*s))
        {
            return Err(field(
                "preprocess",
                format!("std {s} is not in [{}, {}]", STD_RANGE.0, STD_RANGE.1),
            ));
        }
        for (what, v) in [("test_scale", Some(p.test_scale)), ("crop", p.crop)] {
            if let Some(v) = v.filter(|&v| v == 0 || v > MAX_TEST_SCALE) {
                return Err(field(
                    "preprocess",
                    format!("{what} {v} not in 1..={MAX_TEST_SCALE}"),
                ));
            }
        }
        if p.interpolation.is_empty()
            || p.interpolation.len() > 32
            || !p
                .interpolation
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(field(
                "preprocess",
                "interpolation is not a filter name (letters, digits, `_`, `-`; 32 bytes)".into(),
            ));
        }
        for (key, value) in [
            ("source_file", &self.source_file),
            ("source_md5", &self.source_md5),
            ("released", &self.released),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_TEXT_BYTES) {
                return Err(field(key, format!("longer than {MAX_TEXT_BYTES} bytes")));
            }
        }
        let expected = self.tensor_shapes();
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match shapes.get(name) {
                None => problems.push(format!("missing `{name}` {shape:?}")),
                Some(found) if found != shape => {
                    problems.push(format!("`{name}` is {found:?}, expected {shape:?}"))
                }
                Some(_) => {}
            }
        }
        for (name, shape) in shapes {
            if !expected.contains_key(name) {
                problems.push(format!("unexpected `{name}` {shape:?}"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let total = problems.len();
        problems.truncate(MAX_LISTED_PROBLEMS);
        Err(InvalidMetadata::Tensors {
            total,
            listed: problems,
        })
    }

    /// The name and shape of every tensor the backbone and head of this metadata read, as
    /// [`crate::Backbone::new`], [`crate::Classifier::new`] and the segmentation head ask for
    /// them. Call only on a configuration that passed [`BackboneConfig::validate`] (its
    /// bounds keep this list small).
    pub fn tensor_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut out = BTreeMap::new();
        let conv = |out: &mut BTreeMap<String, Vec<usize>>, name: &str, o, i, k| {
            out.insert(format!("{name}_weight"), vec![o, i, k, k]);
        };
        let bn = |out: &mut BTreeMap<String, Vec<usize>>, name: &str, c: usize| {
            for part in ["gamma", "beta", "moving_mean", "moving_var"] {
                out.insert(format!("{name}_{part}"), vec![c]);
            }
        };
        let c = &self.config;
        conv(&mut out, "conv1a", c.stem.channels, 3, c.stem.kernel);
        let mut in_c = c.stem.channels;
        for level in &c.levels {
            for (u, unit) in level.unit_names().iter().enumerate() {
                let unit_in = in_c;
                for (b, (&k, &w)) in level.unit.kernels().iter().zip(&level.widths).enumerate() {
                    let branch = match b {
                        0 => "branch2a".to_string(),
                        b => format!("branch2b{b}"),
                    };
                    bn(&mut out, &format!("bn{unit}_{branch}"), in_c);
                    conv(&mut out, &format!("res{unit}_{branch}"), w, in_c, k);
                    in_c = w;
                }
                if u == 0 {
                    conv(&mut out, &format!("res{unit}_branch1"), in_c, unit_in, 1);
                }
            }
        }
        bn(&mut out, "bn7", in_c);
        match self.head {
            HeadKind::None => {}
            HeadKind::Classifier { classes } => {
                out.insert(format!("linear{classes}_weight"), vec![classes, in_c]);
                out.insert(format!("linear{classes}_bias"), vec![classes]);
            }
            // psa's fc8: a 1x1 convolution without bias on the features.
            HeadKind::Fc8 { classes, .. } => {
                out.insert("fc8_weight".into(), vec![classes, in_c, 1, 1]);
            }
            HeadKind::Segmentation {
                classes,
                hidden,
                kernel,
            } => {
                let mut head_in = in_c;
                if let Some(h) = hidden {
                    conv(&mut out, "conv6a", h, in_c, kernel);
                    out.insert("conv6a_bias".into(), vec![h]);
                    head_in = h;
                }
                conv(
                    &mut out,
                    &format!("linear{classes}"),
                    classes,
                    head_in,
                    kernel,
                );
                out.insert(format!("linear{classes}_bias"), vec![classes]);
            }
        }
        out
    }
}

/// Whether `c` would act on a terminal or reorder text rather than show: C0 and C1 controls,
/// DEL, and the Unicode bidirectional overrides and isolates ("Trojan Source").
fn is_active_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character (newlines too) and bidirectional override shown as an
/// escape (`\n`, `\u{1b}`), so that text from a file cannot move the cursor, recolour the
/// terminal, fake extra lines or reorder what is printed after it.
pub fn escape_for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_active_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_active_char(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `s` as literal Markdown text: control characters escaped as for the terminal, then every
/// ASCII punctuation character that Markdown or HTML could read as syntax backslash-escaped
/// (CommonMark allows a backslash before any ASCII punctuation), so a string from a file can
/// neither add links, images, HTML or headings nor break the table or list it sits in.
pub fn escape_markdown(s: &str) -> String {
    let visible = escape_for_terminal(s);
    let mut out = String::with_capacity(visible.len() + 8);
    for c in visible.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as a Markdown code span, fences included: the fence is one backtick longer than the
/// longest run of backticks in `s` (so `s` cannot close it), control characters are escaped as
/// for the terminal (a newline would end the paragraph).
pub fn markdown_code_span(s: &str) -> String {
    let visible = escape_for_terminal(s);
    let (mut longest, mut run) = (0, 0);
    for c in visible.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // A space inside the fences keeps a leading or trailing backtick from joining them;
    // CommonMark strips one such space from each side.
    let pad = if visible.starts_with('`') || visible.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{visible}{pad}{fence}")
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

    fn small(head: HeadKind) -> ModelMetadata {
        let config = BackboneConfig::model_a1(8).unwrap().narrowed(32);
        ModelMetadata {
            arch: Arch::A1,
            output_stride: config.output_stride(),
            config,
            preprocess: Preprocess::for_head(&head),
            head,
            head_dilation: None,
            class_names: None,
            source_file: None,
            source_md5: None,
            released: None,
            lineage: None,
            extra: BTreeMap::new(),
        }
    }

    fn zeros(shapes: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, candle_core::Tensor> {
        shapes
            .iter()
            .map(|(n, s)| {
                let t = candle_core::Tensor::zeros(
                    s.as_slice(),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                );
                (n.clone(), t.unwrap())
            })
            .collect()
    }

    /// The shapes listed without building are those the network asks for when built.
    #[test]
    fn tensor_shapes_match_the_built_network() {
        let dev = candle_core::Device::Cpu;
        let f32 = candle_core::DType::F32;
        for arch in [Arch::A, Arch::A1, Arch::A2] {
            let mut meta = small(HeadKind::Classifier { classes: 7 });
            meta.config = BackboneConfig::preset(arch, 16).unwrap().narrowed(32);
            meta.output_stride = 16;
            let shapes = meta.tensor_shapes();
            meta.validate(&shapes).unwrap();
            crate::build_strict("c", &zeros(&shapes), f32, &dev, |vb| {
                crate::Classifier::new(&meta.config, 7, vb)
            })
            .unwrap();
            meta.head = HeadKind::None;
            let shapes = meta.tensor_shapes();
            crate::build_strict("b", &zeros(&shapes), f32, &dev, |vb| {
                crate::Backbone::new(&meta.config, vb)
            })
            .unwrap();
        }
    }

    #[test]
    fn hostile_fields_are_refused_before_building() {
        let meta = small(HeadKind::Segmentation {
            classes: 21,
            hidden: Some(16),
            kernel: 3,
        });
        let shapes = meta.tensor_shapes();
        meta.validate(&shapes).unwrap();
        type Mutation = fn(&mut ModelMetadata);
        let cases: [(&str, Mutation); 14] = [
            ("stem channels", |m| m.config.stem.channels = 1 << 62),
            ("units", |m| m.config.levels[2].units = 1_000_000),
            ("bn_eps", |m| m.config.bn_eps = 0.0),
            ("output_stride", |m| m.output_stride = 3),
            ("classes", |m| {
                m.head = HeadKind::Segmentation {
                    classes: 1_000_000_000,
                    hidden: Some(16),
                    kernel: 3,
                }
            }),
            ("head_dilation", |m| m.head_dilation = Some(0)),
            ("head_dilation", |m| m.head_dilation = Some(1 << 63)),
            ("head_dilation", |m| m.head_dilation = Some(1_000_000_000)),
            ("std", |m| m.preprocess.std = [0.0; 3]),
            ("std", |m| m.preprocess.std = [f64::NAN; 3]),
            ("mean", |m| m.preprocess.mean = [f64::INFINITY; 3]),
            ("test_scale", |m| m.preprocess.test_scale = 100_000),
            ("crop", |m| m.preprocess.crop = Some(0)),
            ("source_file", |m| m.source_file = Some("x".repeat(5000))),
        ];
        for (what, mutate) in cases {
            let mut m = meta.clone();
            mutate(&mut m);
            let e = m.validate(&shapes).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    /// A configuration that disagrees with the tensors is one short error, not a line per
    /// tensor.
    #[test]
    fn tensor_mismatches_are_capped() {
        let meta = small(HeadKind::Classifier { classes: 10 });
        let shapes = meta.tensor_shapes();
        let mut wider = meta.clone();
        wider.config.levels[0].units = 200;
        let e = wider.validate(&shapes).unwrap_err();
        let InvalidMetadata::Tensors { total, listed } = &e else {
            panic!("{e}");
        };
        assert!(
            *total > 1000 && listed.len() == limits::MAX_LISTED_PROBLEMS,
            "{e}"
        );
        assert!(e.to_string().len() < 2000, "{e}");
        assert!(e.to_string().contains("more"), "{e}");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_for_terminal("plain name.params"),
            "plain name.params"
        );
        assert_eq!(
            escape_for_terminal("a\x1b[2J\rb\nc\u{202e}d\u{9b}"),
            "a\\u{1b}[2J\\rb\\nc\\u{202e}d\\u{9b}"
        );
        assert_eq!(
            escape_markdown("<img src=x>[a](b) | # x\n"),
            "\\<img src\\=x\\>\\[a\\]\\(b\\) \\| \\# x\\\\n"
        );
        assert_eq!(markdown_code_span("a.params"), "`a.params`");
        assert_eq!(markdown_code_span("x`` y"), "```x`` y```");
        assert_eq!(markdown_code_span("`a"), "`` `a ``");
        assert_eq!(markdown_code_span("a\nb"), "`a\\nb`");
    }

    #[test]
    fn stored_stride_and_classes_must_agree() {
        let meta = small(HeadKind::Classifier { classes: 10 });
        let mut map = meta.to_map();
        map.insert(format!("{PREFIX}output_stride"), "3".into());
        let read = ModelMetadata::from_map(&map).unwrap().unwrap();
        assert!(read.validate(&meta.tensor_shapes()).is_err());
        let mut map = meta.to_map();
        map.insert(format!("{PREFIX}classes"), "1000000000".into());
        assert!(ModelMetadata::from_map(&map).is_err());
    }
}
