//! `r38 eval`: a whole split with the published protocol, through
//! [`r38::evaluate_segmentation`] / [`r38::evaluate_imagenet`]; this file only maps flags and
//! prints.

use super::seg_common::{CrfArgs, EnsembleArgs, ProtocolArgs};
use crate::network::{check_overwrite, load_with, write_atomically};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use r38::data::datasets::{DatasetKind, ImageNetVal, SegDataset};
use r38::data::ImageLoader;
use r38::{EvalEvent, EvalOptions, HeadChoice, SegEvaluation, Shard};
use std::path::PathBuf;

/// Evaluate on a dataset split in its real on-disk layout.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub models: EnsembleArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub crf: CrfArgs,
    /// voc, voc-aug, cityscapes, cityscapes-trainids, ade20k, context59, context60,
    /// fashion-scenes or imagenet.
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
    /// Evaluate only part I of N (samples I, I+N, ...); merge the parts' --json reports with
    /// `r38 eval-merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
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
    #[arg(long, default_value_t = r38::data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(json) = &args.json {
        check_overwrite(json, args.overwrite)?;
    }
    let options = EvalOptions {
        limit: args.limit,
        cache_dir: args.cache_dir.clone(),
        keep_going: args.keep_going,
        shard: args.shard,
    };
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    if args.dataset == "imagenet" {
        if args.crf.crf {
            bail!("--crf refines segmentations; it does not apply to --dataset imagenet");
        }
        let model = load_with(
            &args.models.weights[0],
            &args.models.overrides,
            HeadChoice::Classifier,
        )?;
        let val = ImageNetVal::open(&args.root)?;
        let result = with_progress(|on_event| {
            r38::evaluate_imagenet(
                &model,
                &val,
                &Default::default(),
                &loader,
                &options,
                on_event,
            )
        })?;
        println!(
            "imagenet val: {} images, top-1 error {:.2}%, top-5 error {:.2}%",
            result.samples - result.failed.len(),
            result.top1_error,
            result.top5_error
        );
        let mut value = serde_json::to_value(&result)?;
        value["dataset"] = "imagenet".into();
        return finish(&args, &value, result.failed.len(), result.samples);
    }
    let kind: DatasetKind = args
        .dataset
        .parse()
        .map_err(|e| anyhow::anyhow!("--dataset: {e}"))?;
    let crf = args.crf.config()?;
    let dataset = SegDataset::open(kind, &args.root, &args.split)?.with_loader(loader);
    let nets = args.models.load()?;
    let protocol = args.protocol.protocol(Some(kind), &nets[0]);
    let result = with_progress(|on_event| {
        r38::evaluate_segmentation(&nets, &dataset, &protocol, crf.as_ref(), &options, on_event)
    })?;
    print_segmentation(&result);
    let value = serde_json::to_value(&result)?;
    finish(&args, &value, result.failed.len(), result.samples)
}

/// The table and the summary line of a segmentation evaluation.
pub fn print_segmentation(result: &SegEvaluation) {
    println!("{}", result.metrics.to_table());
    println!(
        "{}: {} of {} samples evaluated{} ({} from the cache {}), {} failed",
        result.dataset,
        result.samples - result.failed.len(),
        result.split_size,
        result
            .shard
            .map(|s| format!(" in shard {}/{}", s.index, s.count))
            .unwrap_or_default(),
        result.resumed,
        result.cache.display(),
        result.failed.len()
    );
}

/// Writes --json and turns failures into the exit code.
fn finish(args: &Args, value: &serde_json::Value, failed: usize, total: usize) -> Result<()> {
    if let Some(json) = &args.json {
        write_atomically(json, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(value)?)?)
        })?;
    }
    if failed > 0 {
        bail!("{failed} of {total} samples failed");
    }
    Ok(())
}

/// Runs `evaluate` with a progress bar on the terminal.
fn with_progress<T>(
    evaluate: impl FnOnce(&mut dyn FnMut(EvalEvent)) -> r38::Result<T>,
) -> Result<T> {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]")
    {
        bar.set_style(style);
    }
    let result = evaluate(&mut |event| match event {
        EvalEvent::Start { total } => bar.set_length(total as u64),
        EvalEvent::Sample { .. } => bar.inc(1),
        EvalEvent::Failed { message } => {
            bar.suspend(|| eprintln!("error: {message}"));
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    Ok(result?)
}
