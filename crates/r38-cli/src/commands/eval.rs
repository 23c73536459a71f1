//! `r38 eval`: a whole split with the published protocol; segmentation metrics from the
//! confusion matrix, or ImageNet top-1/top-5 error.

use super::seg_common::{apply_crf, as_score_nets, CrfArgs, EnsembleArgs, ProtocolArgs};
use crate::network::{load, write_atomically, HeadChoice, ModelArgs};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use r38_data::datasets::{
    read_label_png, write_label_png, DatasetKind, ImageNetVal, LabelMap, SegDataset,
    SegmentationDataset,
};
use r38_data::{ClassifyTransform, ImageLoader};
use r38_seg::ConfusionMatrix;
use std::path::{Path, PathBuf};

/// Evaluate on a dataset split in its real on-disk layout.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub models: EnsembleArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub crf: CrfArgs,
    /// voc, voc-aug, cityscapes, cityscapes-trainids, ade20k, context59, context60 or imagenet.
    #[arg(long)]
    pub dataset: String,
    /// Dataset root (e.g. VOCdevkit/VOC2012, the Cityscapes root, the folder holding
    /// ADEChallengeData2016, the ImageNet folder holding val/).
    #[arg(long)]
    pub root: PathBuf,
    /// Split name (a list file under the dataset's ImageSets, or a folder for Cityscapes/ADE20K).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Evaluate only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where per-image predictions are kept so an interrupted run resumes (default: a folder
    /// under ~/.cache/r38/eval named after the weights, protocol and split).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Report a bad sample and go on (counted in the report; the exit code is non-zero).
    #[arg(long)]
    pub keep_going: bool,
    /// Replace an existing --json report.
    #[arg(long)]
    pub overwrite: bool,
    /// Refuse images with more pixels than this, from their header, before decoding.
    #[arg(long, default_value_t = r38_data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(json) = &args.json {
        crate::network::check_overwrite(json, args.overwrite)?;
    }
    if args.dataset == "imagenet" {
        if args.crf.crf {
            bail!("--crf refines segmentations; it does not apply to --dataset imagenet");
        }
        return imagenet(&args);
    }
    let kind: DatasetKind = args
        .dataset
        .parse()
        .map_err(|e| anyhow::anyhow!("--dataset: {e}"))?;
    let crf = args.crf.config()?;
    let dataset = SegDataset::open(kind, &args.root, &args.split)?
        .with_loader(ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels)));
    let nets = args.models.load()?;
    let classes = dataset.num_classes();
    if let Some(net) = nets.first() {
        use r38_seg::ScoreNet;
        if net.classes() != classes {
            bail!(
                "{}: {} classes, but {} has {classes}",
                args.models.weights[0].display(),
                net.classes(),
                dataset.name()
            );
        }
    }
    let protocol = args.protocol.protocol(Some(kind));
    let cache = match &args.cache_dir {
        Some(dir) => dir.clone(),
        // Without --crf the key is what it was before the CRF existed, so old caches still hit.
        None => match &crf {
            Some(c) => default_cache(&args, &format!("{protocol:?} crf {c:?}"))?,
            None => default_cache(&args, &format!("{protocol:?}"))?,
        },
    };
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("{}: cannot create", cache.display()))?;
    remove_partial_files(&cache);
    let total = args.limit.unwrap_or(usize::MAX).min(dataset.len());
    let progress = progress_bar(total as u64);
    let mut confusion = ConfusionMatrix::new(classes, Some(u32::from(dataset.ignore_label())));
    let (mut failures, mut resumed) = (Vec::new(), 0usize);
    let nets = as_score_nets(&nets);
    for index in 0..total {
        let mut step = || -> Result<bool> {
            let sample = dataset.sample(index)?;
            let label = dataset.load_label(&sample)?;
            let image_size = dataset.image_dimensions(&sample)?;
            if image_size != label.dimensions() {
                bail!(
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
                );
            }
            let cached = cache.join(format!("{}.png", sample.id));
            let (prediction, from_cache) = match read_cached(&cached, &label) {
                Some(p) => (p, true),
                None => {
                    let image = dataset.load_image(&sample)?;
                    let mut p = protocol.predict(&nets, &image).with_context(|| {
                        format!("{}: segmentation", sample.image_path.display())
                    })?;
                    apply_crf(crf.as_ref(), &image, &mut p)
                        .with_context(|| format!("{}: CRF", sample.image_path.display()))?;
                    let labels: Vec<u8> = p.labels.iter().map(|&l| l as u8).collect();
                    let map = LabelMap::new(p.width, p.height, labels)?;
                    write_atomically(&cached, |tmp| Ok(write_label_png(tmp, &map, None)?))?;
                    (map, false)
                }
            };
            confusion
                .accumulate(&label.data, &prediction.data)
                .with_context(|| sample.id.clone())?;
            Ok(from_cache)
        };
        match step() {
            Ok(from_cache) => resumed += usize::from(from_cache),
            Err(e) if args.keep_going => {
                progress.suspend(|| eprintln!("error: {e:#}"));
                failures.push(format!("{e:#}"));
            }
            Err(e) => return Err(e),
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let names: Vec<&str> = dataset.classes().iter().map(|c| c.name).collect();
    let report = confusion.report(Some(&names));
    println!("{}", report.to_table());
    println!(
        "{}: {} of {} samples evaluated ({} from the cache {}), {} failed",
        dataset.name(),
        total - failures.len(),
        dataset.len(),
        resumed,
        cache.display(),
        failures.len()
    );
    if let Some(json) = &args.json {
        let value = serde_json::json!({
            "dataset": dataset.name(),
            "split": args.split,
            "weights": args.models.weights,
            "protocol": format!("{protocol:?}"),
            "crf": crf,
            "samples": total,
            "failed": failures,
            "metrics": report,
        });
        write_atomically(json, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(&value)?)?)
        })?;
    }
    if !failures.is_empty() {
        bail!("{} of {total} samples failed", failures.len());
    }
    Ok(())
}

/// Temporaries of writes that a killed run never finished; they are never read, only removed.
fn remove_partial_files(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A cached prediction, if it exists and fits the label map.
fn read_cached(path: &Path, label: &LabelMap) -> Option<LabelMap> {
    let map = read_label_png(path).ok()?;
    (map.dimensions() == label.dimensions()).then_some(map)
}

fn default_cache(args: &Args, protocol: &str) -> Result<PathBuf> {
    let mut key = String::new();
    for w in &args.models.weights {
        let local = crate::network::resolve_weights(w)?;
        let bytes =
            std::fs::read(&local).with_context(|| format!("{}: cannot read", w.display()))?;
        key.push_str(&r38_model::weights::md5_hex(&bytes));
    }
    key.push_str(protocol);
    key.push_str(&args.dataset);
    key.push_str(&args.split);
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let digest = r38_model::weights::md5_hex(key.as_bytes());
    Ok(base
        .join("r38/eval")
        .join(format!("{}-{}-{}", args.dataset, args.split, &digest[..12])))
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]")
    {
        bar.set_style(style);
    }
    bar
}

/// ImageNet val: top-1 and top-5 error with the classification protocol.
fn imagenet(args: &Args) -> Result<()> {
    let val = ImageNetVal::open(&args.root)?;
    let model_args = ModelArgs {
        weights: args.models.weights[0].clone(),
        arch: args.models.arch,
        output_stride: args.models.output_stride,
        pool_style: None,
        device: args.models.device.clone(),
    };
    let model = load(&model_args, Some(HeadChoice::Cls))?;
    let device = crate::network::device(&args.models.device)?;
    let transform = ClassifyTransform::default();
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    let total = args.limit.unwrap_or(usize::MAX).min(val.len());
    let progress = progress_bar(total as u64);
    let (mut top1, mut top5, mut failures) = (0usize, 0usize, Vec::new());
    for (path, class) in val.samples().iter().take(total) {
        let step = || -> Result<(bool, bool)> {
            let image = loader.load_rgb8(path)?;
            let x = transform.apply(&image, &device)?;
            let logits: Vec<f32> = model.network.forward(&x)?.squeeze(0)?.to_vec1()?;
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            Ok((order[0] == *class, order.iter().take(5).any(|c| c == class)))
        };
        match step() {
            Ok((a, b)) => {
                top1 += usize::from(a);
                top5 += usize::from(b);
            }
            Err(e) if args.keep_going => {
                progress.suspend(|| eprintln!("error: {}: {e:#}", path.display()));
                failures.push(path.display().to_string());
            }
            Err(e) => return Err(e.context(format!("{}", path.display()))),
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let n = (total - failures.len()).max(1) as f64;
    let (e1, e5) = (
        100.0 * (1.0 - top1 as f64 / n),
        100.0 * (1.0 - top5 as f64 / n),
    );
    println!(
        "imagenet val: {} images, top-1 error {e1:.2}%, top-5 error {e5:.2}%",
        total - failures.len()
    );
    if let Some(json) = &args.json {
        let value = serde_json::json!({
            "dataset": "imagenet", "samples": total, "failed": failures,
            "top1_error": e1, "top5_error": e5,
        });
        write_atomically(json, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(&value)?)?)
        })?;
    }
    if !failures.is_empty() {
        bail!("{} of {total} images failed", failures.len());
    }
    Ok(())
}
