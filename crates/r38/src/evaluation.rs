//! Evaluation over a dataset split with a test protocol: the loop behind `r38 eval` and
//! `cargo xtask reproduce`.
//!
//! Segmentation predictions are cached as label PNGs, one per sample, in a folder keyed by the
//! weights (their MD5), the protocol, the CRF settings, the dataset and the split, so that an
//! interrupted run resumes where it stopped. The key is also written into the folder and
//! checked, so a cache made for anything else is never read. A run may be one shard of many
//! ([`Shard`]); the shards' confusion matrices add up to the whole split's.

use crate::error::{Error, Result};
use crate::output::{write_atomically, write_bytes_atomically};
use crate::pretrained::Pretrained;
use r38_data::datasets::{
    read_label_png, write_label_png, DatasetKind, ImageNetVal, LabelMap, SegDataset,
    SegmentationDataset,
};
use r38_data::{ClassifyTransform, ImageLoader};
use r38_model::metadata::source_name;
use r38_seg::test_time::label_band_rows;
use r38_seg::{CanvasLimit, ConfusionMatrix, CrfConfig, MetricsReport, ScoreNet, TestProtocol};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One of `count` disjoint parts of a split: samples `index`, `index + count`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This part, `0..count`.
    pub index: usize,
    /// The number of parts.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `I/N`, e.g. `0/4`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or(format!("`{s}`: expected I/N"))?;
        let (index, count): (usize, usize) = (
            i.trim()
                .parse()
                .map_err(|_| format!("`{s}`: I is not a number"))?,
            n.trim()
                .parse()
                .map_err(|_| format!("`{s}`: N is not a number"))?,
        );
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// The published protocol of `dataset` (VOC and PASCAL-Context: scale 500 and flipping;
/// ADE20K: also 2x2 shift-and-stitch; Cityscapes: the full 1024x2048 image and flipping), with
/// what the file of `net` records laid over it, tiled only where one pass would not fit in the
/// memory available now.
pub fn dataset_protocol(dataset: DatasetKind, net: &Pretrained) -> TestProtocol {
    let preset = match dataset {
        DatasetKind::Ade20k => TestProtocol::ade20k(),
        DatasetKind::Cityscapes | DatasetKind::CityscapesTrainIds => TestProtocol::cityscapes(),
        DatasetKind::FashionScenes => scenes_protocol(96),
        _ => TestProtocol::voc(),
    };
    let mut protocol = net.test_protocol_over(preset);
    protocol.max_canvas = memory_canvas_limit();
    protocol
}

/// The fashion scenes' protocol: the canvas side as the single test scale (what the shipped
/// segmenter was trained and validated at), flipping.
pub fn scenes_protocol(canvas: u32) -> TestProtocol {
    TestProtocol::single_scale(canvas).with_flip(true)
}

/// Peak memory per canvas pixel of the full-size A1 s8 + "2 conv" forward pass on the CPU,
/// measured with `cargo xtask bench-memory` (about 1.2 KiB: 2.96 GB for a 2048x1024 canvas,
/// weights included), with a margin of three.
const BYTES_PER_CANVAS_PIXEL: u64 = 4 * 1024;

/// The largest canvas one pass may take in the memory available now (never below 64x64), if
/// the system says how much that is.
pub fn memory_canvas_limit() -> Option<CanvasLimit> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(CanvasLimit::Pixels(
        (kib * 1024 / BYTES_PER_CANVAS_PIXEL).max(64 * 64),
    ))
}

/// How to run an evaluation.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Only the first `limit` samples of the split.
    pub limit: Option<usize>,
    /// Where predictions are cached; `None`: a folder under `$XDG_CACHE_HOME/r38/eval` (or
    /// `~/.cache`) named after the cache key.
    pub cache_dir: Option<PathBuf>,
    /// Record a failing sample and go on instead of stopping.
    pub keep_going: bool,
    /// Evaluate only this part of the split.
    pub shard: Option<Shard>,
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// The number of samples this run will visit.
    Start {
        /// Samples in this run (after `limit` and `shard`).
        total: usize,
    },
    /// One sample is done.
    Sample {
        /// Its id or path.
        id: String,
        /// Read from the cache instead of computed.
        from_cache: bool,
    },
    /// One sample failed and was skipped (`keep_going`).
    Failed {
        /// What went wrong, naming the file.
        message: String,
    },
}

/// The result of a segmentation evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegEvaluation {
    /// The dataset's name.
    pub dataset: String,
    /// The split.
    pub split: String,
    /// The weight files' names, in order.
    pub weights: Vec<String>,
    /// The protocol, as written in the cache key.
    pub protocol: String,
    /// The CRF settings, if any.
    pub crf: Option<CrfConfig>,
    /// The shard, if this run was one.
    pub shard: Option<Shard>,
    /// Samples visited (evaluated or failed).
    pub samples: usize,
    /// Samples in the whole split.
    pub split_size: usize,
    /// Samples whose prediction came from the cache.
    pub resumed: usize,
    /// The failures, each naming its file.
    pub failed: Vec<String>,
    /// The cache folder.
    pub cache: PathBuf,
    /// Pixel counts; add the shards' with [`ConfusionMatrix::merge`].
    pub confusion: ConfusionMatrix,
    /// Metrics of `confusion`, with per-class figures.
    pub metrics: MetricsReport,
}

impl SegEvaluation {
    /// The evaluation of the whole split from its shards' results (any order). Refuses parts
    /// of different evaluations.
    pub fn merge(parts: &[SegEvaluation], class_names: Option<&[&str]>) -> Result<SegEvaluation> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Invalid("no shard results to merge".into()))?;
        let mut merged = first.clone();
        let mut seen = vec![first.shard];
        for p in &parts[1..] {
            if (&p.dataset, &p.split, &p.weights, &p.protocol, &p.crf)
                != (
                    &first.dataset,
                    &first.split,
                    &first.weights,
                    &first.protocol,
                    &first.crf,
                )
            {
                return Err(Error::Invalid(
                    "the shard results are of different evaluations (dataset, split, weights, \
                     protocol or CRF differ)"
                        .into(),
                ));
            }
            if seen.contains(&p.shard) {
                return Err(Error::Invalid(format!("shard {:?} given twice", p.shard)));
            }
            seen.push(p.shard);
            merged.confusion.merge(&p.confusion)?;
            merged.samples += p.samples;
            merged.resumed += p.resumed;
            merged.failed.extend(p.failed.iter().cloned());
        }
        let count = first.shard.map_or(1, |s| s.count);
        if seen.len() != count || seen.iter().any(|s| s.map_or(1, |s| s.count) != count) {
            return Err(Error::Invalid(format!(
                "{} of {count} shards given",
                seen.len()
            )));
        }
        merged.shard = None;
        merged.metrics = merged.confusion.report(class_names);
        Ok(merged)
    }
}

/// The samples of a split of `len` that a run with `options` visits.
fn selected(len: usize, options: &EvalOptions) -> Vec<usize> {
    let total = options.limit.unwrap_or(usize::MAX).min(len);
    match options.shard {
        Some(s) => (s.index..total).step_by(s.count).collect(),
        None => (0..total).collect(),
    }
}

/// Evaluate segmentation networks (several are averaged) on a split with `protocol`, and an
/// optional dense CRF.
pub fn evaluate_segmentation(
    models: &[Pretrained],
    dataset: &SegDataset,
    protocol: &TestProtocol,
    crf: Option<&CrfConfig>,
    options: &EvalOptions,
    on_event: &mut dyn FnMut(EvalEvent),
) -> Result<SegEvaluation> {
    let classes = dataset.num_classes();
    if models.is_empty() {
        return Err(Error::Invalid("no network to evaluate".into()));
    }
    for m in models {
        if ScoreNet::classes(m) != classes || m.segmentation_net().is_none() {
            return Err(Error::Invalid(format!(
                "{}: {}, but {} has {classes} classes",
                m.file().path.display(),
                match m.metadata().head.classes() {
                    Some(c) if m.segmentation_net().is_some() => format!("{c} classes"),
                    _ => "not a segmentation network".into(),
                },
                dataset.name()
            )));
        }
    }
    // The memory budget is left out: it follows the memory free at the time, and a tiled pass
    // predicts what one pass would, up to the tiles' seams.
    let keyed = TestProtocol {
        max_canvas: None,
        ..protocol.clone()
    };
    let protocol_key = match crf {
        Some(c) => format!("{keyed:?} crf {c:?}"),
        None => format!("{keyed:?}"),
    };
    let key = CacheKey {
        // f16/bf16 predict differently from f32 (engines and devices agree within 1e-4).
        weights_md5: models
            .iter()
            .map(|m| match m.dtype() {
                candle_core::DType::F32 => m.file().md5.clone(),
                d => format!("{} {d:?}", m.file().md5),
            })
            .collect(),
        protocol: protocol_key.clone(),
        dataset: dataset.name().to_string(),
        split: dataset.split().to_string(),
    };
    let cache = match &options.cache_dir {
        Some(dir) => dir.clone(),
        None => default_cache_dir(&key),
    };
    key.claim(&cache)?;
    let _span = tracing::info_span!(
        "evaluate",
        dataset = dataset.name(),
        split = dataset.split()
    )
    .entered();
    let indices = selected(dataset.len(), options);
    on_event(EvalEvent::Start {
        total: indices.len(),
    });
    let nets: Vec<&dyn ScoreNet> = models.iter().map(|m| m as &dyn ScoreNet).collect();
    let mut confusion = ConfusionMatrix::new(classes, Some(u32::from(dataset.ignore_label())));
    let (mut failed, mut resumed) = (Vec::new(), 0usize);
    for &index in &indices {
        let mut step = || -> Result<(String, bool)> {
            let sample = dataset.sample(index)?;
            let label = dataset.load_label(&sample)?;
            let image_size = dataset.image_dimensions(&sample)?;
            if image_size != label.dimensions() {
                return Err(Error::Invalid(format!(
                    "{}: the label map is {}x{}, but its image {} is {}x{}",
                    sample
                        .label_path
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display(),
                    label.width,
                    label.height,
                    sample.image_path.display(),
                    image_size.0,
                    image_size.1
                )));
            }
            let cached = cache.join(format!("{}.png", sample.id));
            let (prediction, from_cache) = match read_cached(&cached, &label) {
                Some(p) => (p, true),
                None => {
                    let _span = tracing::debug_span!("sample", id = %sample.id).entered();
                    let image = dataset.load_image(&sample)?;
                    let with_file =
                        |e: Error| Error::Invalid(format!("{}: {e}", sample.image_path.display()));
                    let map = match crf {
                        // The CRF refines the full-resolution probabilities.
                        Some(c) => protocol.predict(&nets, &image).and_then(|mut p| {
                            r38_seg::crf::refine_prediction(c, &image, &mut p)?;
                            p.label_map()
                        }),
                        None => protocol
                            .predict_labels(&nets, &image, label_band_rows(classes, image.width()))
                            .and_then(|p| p.label_map()),
                    }
                    .map_err(|e| with_file(e.into()))?;
                    write_atomically(&cached, |tmp| -> Result<()> {
                        Ok(write_label_png(tmp, &map, None)?)
                    })?;
                    (map, false)
                }
            };
            confusion
                .accumulate(&label.data, &prediction.data)
                .map_err(|e| Error::Invalid(format!("{}: {e}", sample.id)))?;
            Ok((sample.id, from_cache))
        };
        match step() {
            Ok((id, from_cache)) => {
                resumed += usize::from(from_cache);
                on_event(EvalEvent::Sample { id, from_cache });
            }
            Err(e) if options.keep_going => {
                let message = e.to_string();
                on_event(EvalEvent::Failed {
                    message: message.clone(),
                });
                failed.push(message);
            }
            Err(e) => return Err(e),
        }
    }
    let names: Vec<&str> = dataset.classes().iter().map(|c| c.name).collect();
    tracing::info!(
        samples = indices.len(),
        resumed,
        failed = failed.len(),
        "evaluated"
    );
    Ok(SegEvaluation {
        dataset: dataset.name().to_string(),
        split: dataset.split().to_string(),
        weights: models
            .iter()
            .map(|m| {
                let path = &m.file().path;
                source_name(path).unwrap_or_else(|| path.display().to_string())
            })
            .collect(),
        protocol: protocol_key,
        crf: crf.copied(),
        shard: options.shard,
        samples: indices.len(),
        split_size: dataset.len(),
        resumed,
        failed,
        cache,
        metrics: confusion.report(Some(&names)),
        confusion,
    })
}

/// What a cache folder's predictions were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    weights_md5: Vec<String>,
    protocol: String,
    dataset: String,
    split: String,
}

const KEY_FILE: &str = "r38-eval-key.json";

impl CacheKey {
    fn digest(&self) -> String {
        let mut s = self.weights_md5.concat();
        s.push_str(&self.protocol);
        s.push_str(&self.dataset);
        s.push_str(&self.split);
        r38_model::weights::md5_hex(s.as_bytes())
    }

    /// Make `dir` this key's cache: create it and its key file, or check the key it has.
    fn claim(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let key_file = dir.join(KEY_FILE);
        match std::fs::read_to_string(&key_file) {
            Ok(text) => match serde_json::from_str::<CacheKey>(&text) {
                Ok(k) if k == *self => Ok(()),
                _ => Err(Error::Invalid(format!(
                    "{}: this cache holds predictions of other weights, protocol or split \
                     ({}); pass another --cache-dir",
                    dir.display(),
                    key_file.display()
                ))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let is_empty = std::fs::read_dir(dir)
                    .map_err(|e| Error::io(dir, e))?
                    .flatten()
                    .all(|e| e.file_name().to_string_lossy().ends_with(".partial"));
                if !is_empty {
                    return Err(Error::Invalid(format!(
                        "{}: not empty and without {KEY_FILE}; its predictions cannot be \
                         trusted, pass another --cache-dir",
                        dir.display()
                    )));
                }
                let json = serde_json::to_string_pretty(self)
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                write_bytes_atomically(&key_file, json.as_bytes())
            }
            Err(e) => Err(Error::io(&key_file, e)),
        }
    }
}

fn default_cache_dir(key: &CacheKey) -> PathBuf {
    crate::output::cache_root().join("eval").join(format!(
        "{}-{}-{}",
        key.dataset,
        key.split.replace(['/', '\\'], "_"),
        &key.digest()[..12]
    ))
}

/// A cached prediction, if it exists and fits the label map.
fn read_cached(path: &Path, label: &LabelMap) -> Option<LabelMap> {
    let map = read_label_png(path).ok()?;
    (map.dimensions() == label.dimensions()).then_some(map)
}

/// The result of an ImageNet evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClsEvaluation {
    /// Images visited.
    pub samples: usize,
    /// Failures, each naming its file.
    pub failed: Vec<String>,
    /// Top-1 error in percent.
    pub top1_error: f64,
    /// Top-5 error in percent.
    pub top5_error: f64,
}

/// Top-1 and top-5 error of a classifier on ImageNet val with `transform`.
pub fn evaluate_imagenet(
    model: &Pretrained,
    val: &ImageNetVal,
    transform: &ClassifyTransform,
    loader: &ImageLoader,
    options: &EvalOptions,
    on_event: &mut dyn FnMut(EvalEvent),
) -> Result<ClsEvaluation> {
    let _span = tracing::info_span!("evaluate", dataset = "imagenet").entered();
    let indices = selected(val.len(), options);
    on_event(EvalEvent::Start {
        total: indices.len(),
    });
    let (mut top1, mut top5, mut failed) = (0usize, 0usize, Vec::new());
    for &i in &indices {
        let (path, class) = &val.samples()[i];
        let step = || -> Result<(bool, bool)> {
            let image = loader.load_rgb8(path)?;
            let x = transform.apply(&image, model.device())?;
            let logits: Vec<f32> = model
                .forward(&x)?
                .squeeze(0)?
                .to_device(&candle_core::Device::Cpu)?
                .to_vec1()?;
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            Ok((order[0] == *class, order.iter().take(5).any(|c| c == class)))
        };
        match step() {
            Ok((a, b)) => {
                top1 += usize::from(a);
                top5 += usize::from(b);
                on_event(EvalEvent::Sample {
                    id: path.display().to_string(),
                    from_cache: false,
                });
            }
            Err(e) if options.keep_going => {
                let message = format!("{}: {e}", path.display());
                on_event(EvalEvent::Failed {
                    message: message.clone(),
                });
                failed.push(message);
            }
            Err(e) => return Err(Error::Invalid(format!("{}: {e}", path.display()))),
        }
    }
    let n = (indices.len() - failed.len()).max(1) as f64;
    Ok(ClsEvaluation {
        samples: indices.len(),
        failed,
        top1_error: 100.0 * (1.0 - top1 as f64 / n),
        top5_error: 100.0 * (1.0 - top5 as f64 / n),
    })
}
