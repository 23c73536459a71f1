//! `r38 train-seg`: segmentation fine-tuning with the authors' recipe (reference §7.2-7.3),
//! and the options both training commands share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use r38_data::{DatasetKind, Normalization, SegDataset, SegmentationDataset};
use r38_model::{Arch, BackboneConfig, BatchNormMode, HeadKind, ModelMetadata, Preprocess};
use r38_seg::HeadConfig;
use r38_train::augment::{SegAugment, MEAN_RGB};
use r38_train::distributed::{Collective, Ranks, SingleProcess};
use r38_train::fashion_mnist::{FashionMnist, Split, DEBIAN_ROOT};
use r38_train::loader::Source;
use r38_train::recipe::{initial_weights, Recipe, RunSettings, ScheduleKind};
use r38_train::scenes::{SceneConfig, Scenes};
use r38_train::sources::{seg_confusion, DatasetSeg, SceneSeg};
use r38_train::trainer::{train_data_parallel, Event, Summary, Task, TrainConfig, Validator};
use r38_train::{LrRule, OhemConfig};

use crate::network::device;

/// `lo,hi`.
pub fn parse_range(s: &str) -> std::result::Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI, got `{s}`"))?;
    let a: f64 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: f64 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if !(a.is_finite() && b.is_finite() && a <= b) {
        return Err(format!("`{s}`: need finite LO <= HI"));
    }
    Ok((a, b))
}

/// The multiplier rule, as `--lr-mult` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleArg {
    /// Weights and gamma x1; biases and beta lr x2, wd x0.
    Alex,
    /// lr x10 weights, x20 biases (wd x0).
    Alex10,
    /// Everything x1.
    Uniform,
}

impl From<RuleArg> for LrRule {
    fn from(r: RuleArg) -> Self {
        match r {
            RuleArg::Alex => LrRule::Alex,
            RuleArg::Alex10 => LrRule::Alex10,
            RuleArg::Uniform => LrRule::Uniform,
        }
    }
}

/// Options shared by `train-seg` and `train-cls`. Recipe values default per command.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Output folder: checkpoints/, metrics.csv, metrics.jsonl, curve.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the latest checkpoint in --out (same seed and batch settings).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh even though --out holds checkpoints (they are replaced as the run goes).
    #[arg(long)]
    pub overwrite: bool,
    /// Only redraw curve.png from --out's metrics.jsonl and exit.
    #[arg(long)]
    pub plot_only: bool,
    /// Optimizer updates in all; default: --epochs epochs of len // batch-size updates.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Epochs, when --steps is not given.
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Images per optimizer update.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per update (the authors' GPU count: losses, OHEM and BN batch statistics
    /// are per micro-batch, gradients averaged); must divide --batch-size.
    #[arg(long, default_value_t = 4)]
    pub accumulate: usize,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule: fixed, linear (the authors' `lr * (1 - step / (steps + 1))`),
    /// poly, or fixed-then-linear (--lr for --fixed-steps, then linear from --lr2).
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Exponent of --schedule poly.
    #[arg(long, default_value_t = 1.0)]
    pub power: f64,
    /// Lowest rate of --schedule poly.
    #[arg(long, default_value_t = 1e-6)]
    pub lr_floor: f64,
    /// Steps of the fixed stage of --schedule fixed-then-linear (default: half the steps).
    #[arg(long)]
    pub fixed_steps: Option<usize>,
    /// Starting rate of the linear stage of --schedule fixed-then-linear (default: --lr / 2,
    /// the Cityscapes 0.0016 -> 0.0008).
    #[arg(long)]
    pub lr2: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long)]
    pub wd: Option<f64>,
    /// Clip every gradient value to [-C, C].
    #[arg(long)]
    pub clip_gradient: Option<f64>,
    /// Learning-rate/weight-decay multiplier rule of the pre-trained layers.
    #[arg(long, value_enum, default_value = "alex")]
    pub lr_mult: RuleArg,
    /// Multiplier rule of the new layers (conv6a, linear<C>).
    #[arg(long, value_enum, default_value = "alex")]
    pub new_lr_mult: RuleArg,
    /// Seed of the data order, augmentation and new-layer initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-loading threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Micro-batches loaded ahead.
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// Step checkpoints kept besides the best.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Validate every N steps (and at the end); 0: only at the end.
    #[arg(long, default_value_t = 1000)]
    pub validate_every: usize,
    /// Validate on the first N samples only.
    #[arg(long)]
    pub val_limit: Option<usize>,
    /// Skip validation.
    #[arg(long)]
    pub no_val: bool,
    /// Compute device: cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep only each level's input and recompute its activations during backward (the
    /// authors' MXNet "mirror" option): less memory for one more forward pass. Frozen BN only.
    #[arg(long)]
    pub recompute: bool,
}

impl CommonArgs {
    /// Handles --plot-only; true when the command is done.
    pub fn plot_only_done(&self) -> Result<bool> {
        if !self.plot_only {
            return Ok(false);
        }
        let recs = r38_train::log::read_records(&self.out.join("metrics.jsonl"))?;
        let png = self.out.join("curve.png");
        r38_train::plot::write_png(&recs, &png)?;
        println!("wrote {}", png.display());
        Ok(true)
    }

    /// The run's settings for the library, checked against `recipe` and the output folder.
    pub fn settings(&self, recipe: &Recipe) -> Result<RunSettings> {
        let settings = RunSettings {
            out: self.out.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            steps: self.steps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            accumulate: self.accumulate,
            lr: self.lr,
            schedule: self.schedule,
            power: self.power,
            lr_floor: self.lr_floor,
            fixed_steps: self.fixed_steps,
            lr2: self.lr2,
            momentum: self.momentum,
            wd: self.wd,
            clip_gradient: self.clip_gradient,
            lr_mult: self.lr_mult.into(),
            new_lr_mult: self.new_lr_mult.into(),
            seed: self.seed,
            workers: self.workers,
            prefetch: self.prefetch,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            validate_every: self.validate_every,
            recompute: self.recompute,
        };
        settings.check(recipe)?;
        settings.check_out_dir()?;
        Ok(settings)
    }
}

/// A progress bar fed by the trainer's events.
pub fn progress_observer() -> (ProgressBar, impl FnMut(&Event)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let b = bar.clone();
    let observer = move |e: &Event| match e {
        Event::Start { step, total } => {
            b.set_length(*total as u64);
            b.set_position(*step as u64);
            if *step > 0 {
                b.println(format!("resumed at step {step}"));
            }
        }
        Event::Step(r) => {
            b.set_position(r.step as u64);
            b.set_message(format!(
                "loss {:.4} lr {:.3e} {:.1} img/s epoch {:.2}",
                r.loss, r.lr, r.samples_per_s, r.epoch
            ));
        }
        Event::Validation { step, metric, best } => b.println(format!(
            "step {step}: validation {metric:.4}{}",
            if *best { " (best)" } else { "" }
        )),
        Event::Checkpoint(p) => b.set_message(format!("saved {}", p.display())),
    };
    (bar, observer)
}

/// Runs the trainer with a progress bar and prints the outcome; `train-seg` and `train-cls`
/// differ only in what they build and how they validate.
#[allow(clippy::too_many_arguments)]
pub fn train_with_progress(
    net: &dyn r38_train::TrainNet,
    varmap: &candle_nn::VarMap,
    data: Arc<dyn Source>,
    device: &candle_core::Device,
    config: &TrainConfig,
    validate: Option<&mut Validator<'_>>,
    out: &Path,
    metric: &str,
) -> Result<()> {
    let ranks = Ranks::from_env()?;
    let collective: Box<dyn Collective> = if ranks.world_size == 1 {
        Box::new(SingleProcess)
    } else {
        join_data_parallel(ranks, device)?
    };
    let (bar, mut observer) = progress_observer();
    if !ranks.is_leader() {
        // Rank 0 speaks for the run.
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let summary = train_data_parallel(
        net,
        varmap,
        data,
        device,
        config,
        collective.as_ref(),
        validate,
        &mut observer,
    );
    bar.finish_and_clear();
    let summary = summary?;
    if ranks.is_leader() {
        report(&summary, out, metric);
    }
    Ok(())
}

/// The training device: with `RANK`/`WORLD_SIZE` set (torchrun), a bare `cuda` is this
/// process's GPU, `cuda:LOCAL_RANK`.
pub fn training_device(name: &str) -> Result<candle_core::Device> {
    let ranks = Ranks::from_env()?;
    if ranks.world_size > 1 && !cfg!(feature = "nccl") {
        bail!(
            "WORLD_SIZE={}: data-parallel training runs over NCCL; build r38 with --features nccl",
            ranks.world_size
        );
    }
    if ranks.world_size > 1 && name == "cuda" {
        return Ok(device(&format!("cuda:{}", ranks.local_rank))?);
    }
    Ok(device(name)?)
}

#[cfg(feature = "nccl")]
fn join_data_parallel(ranks: Ranks, device: &candle_core::Device) -> Result<Box<dyn Collective>> {
    let collective = r38_train::distributed::nccl::NcclCollective::join(ranks, device)?;
    Ok(Box::new(collective))
}

#[cfg(not(feature = "nccl"))]
fn join_data_parallel(ranks: Ranks, _: &candle_core::Device) -> Result<Box<dyn Collective>> {
    // `training_device` refuses such a run before anything is built.
    bail!("WORLD_SIZE={} without the nccl feature", ranks.world_size)
}

/// Prints the outcome.
pub fn report(summary: &Summary, out: &Path, metric: &str) {
    if let (Some(first), Some(last)) = (summary.losses.first(), summary.losses.last()) {
        println!(
            "steps {}..{}: loss {first:.4} -> {last:.4}",
            summary.start_step + 1,
            summary.start_step + summary.losses.len()
        );
    }
    if let Some((m, s)) = summary.best {
        println!("best {metric} {m:.4} at step {s}");
    }
    if let Some(p) = &summary.last_checkpoint {
        println!("last checkpoint {}", p.display());
    }
    println!(
        "metrics {}/metrics.csv, curve {}/curve.png",
        out.display(),
        out.display()
    );
}

/// Fine-tune a segmentation net with the authors' recipe.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// voc, voc-aug, cityscapes, cityscapes-trainids, ade20k, context59, context60, or
    /// fashion-scenes (synthetic, from Fashion-MNIST).
    #[arg(long)]
    pub dataset: String,
    /// Dataset root (for fashion-scenes: the Fashion-MNIST IDX folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Training split.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Validation split.
    #[arg(long, default_value = "val")]
    pub val_split: String,
    /// Initial weights, e.g. the authors' ilsvrc-cls_rna-a1_cls1000_ep-0001.params (its
    /// linear1000 is dropped; conv6a and linear<C> start from MSRA). Required except for
    /// fashion-scenes.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Backbone architecture for the real datasets.
    #[arg(long, default_value = "a1")]
    pub arch: Arch,
    /// Output stride.
    #[arg(long, default_value_t = 8)]
    pub output_stride: usize,
    /// Divide every width by D (fashion-scenes: of the small scene network).
    #[arg(long, default_value_t = 1)]
    pub width_divisor: usize,
    /// Dropout of level 6.
    #[arg(long, default_value_t = 0.3)]
    pub dropout6: f32,
    /// Dropout of level 7.
    #[arg(long, default_value_t = 0.5)]
    pub dropout7: f32,
    /// conv6a width; 0 for the "1 conv" head.
    #[arg(long, default_value_t = 512)]
    pub head_hidden: usize,
    /// Head dilation (fashion-scenes default 2).
    #[arg(long)]
    pub head_dilation: Option<usize>,
    /// Square crop side (fashion-scenes default 64).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Random scale of the longer side, relative to --origin-size.
    #[arg(long, value_parser = parse_range, default_value = "0.7,1.3")]
    pub scale_range: (f64, f64),
    /// Reference longer side (Cityscapes: 2048); default: each image's own.
    #[arg(long)]
    pub origin_size: Option<u32>,
    /// No random horizontal flip.
    #[arg(long)]
    pub no_flip: bool,
    /// Label sub-sampling stride (offset stride/2); default: the network's output stride
    /// (8 for the authors' nets, 4 for the fashion-scenes net).
    #[arg(long)]
    pub label_stride: Option<usize>,
    /// Plain cross-entropy instead of online bootstrapping.
    #[arg(long)]
    pub no_ohem: bool,
    /// OHEM probability threshold.
    #[arg(long, default_value_t = 0.6)]
    pub ohem_thresh: f32,
    /// OHEM minimum kept pixels per micro-batch.
    #[arg(long, default_value_t = 256)]
    pub ohem_min_kept: usize,
    /// BN batch statistics instead of the frozen ImageNet statistics.
    #[arg(long)]
    pub bn_batch_stats: bool,
    /// Before training, re-estimate the frozen BN statistics on this many training batches
    /// (no weight changes); for data far from the initial weights' (0: the authors' recipe).
    #[arg(long, default_value_t = 0)]
    pub bn_recalibrate: usize,
    /// fashion-scenes: training scenes.
    #[arg(long, default_value_t = 10000)]
    pub scenes: usize,
    /// fashion-scenes: validation scenes (from the t10k items).
    #[arg(long, default_value_t = 500)]
    pub val_scenes: usize,
    /// fashion-scenes: canvas side.
    #[arg(long, default_value_t = 96)]
    pub scene_size: u32,
    /// fashion-scenes: grey items on dark canvases instead of random colours.
    #[arg(long)]
    pub scene_grey: bool,
}

pub fn run(args: Args) -> Result<()> {
    let c = &args.common;
    if c.plot_only_done()? {
        return Ok(());
    }
    let settings = c.settings(&Recipe::SEGMENTATION)?;
    // Sizes the network and the scenes are built from, refused before anything is built.
    for (flag, value, max) in [
        ("--head-dilation", args.head_dilation.map(|d| d as u64), 256),
        ("--crop", args.crop.map(u64::from), 4096),
        ("--scene-size", Some(u64::from(args.scene_size)), 4096),
        ("--width-divisor", Some(args.width_divisor as u64), 64),
    ] {
        if let Some(v) = value.filter(|v| !(1..=max).contains(v)) {
            bail!("{flag} {v}: must be in 1..={max}");
        }
    }
    let dev = training_device(&c.device)?;
    let scenes = args.dataset == "fashion-scenes";
    let crop = args.crop.unwrap_or(if scenes { 64 } else { 504 });
    let mut backbone = if scenes {
        r38_train::model::fashion_config(args.width_divisor)
    } else {
        BackboneConfig::preset(args.arch, args.output_stride)?.narrowed(args.width_divisor)
    };
    backbone = backbone.with_dropout(&[(6, args.dropout6), (7, args.dropout7)]);
    let label_stride = args.label_stride.unwrap_or(backbone.output_stride());
    let augment = SegAugment {
        crop,
        scale_range: args.scale_range,
        origin_size: args.origin_size,
        mean_rgb: MEAN_RGB,
        flip: !args.no_flip,
        label_stride,
        norm: Normalization::default(),
    };
    let mut held_out_scenes = None;
    let (train_src, val_src, classes, names): (Arc<dyn Source>, Arc<dyn Source>, usize, String) =
        if scenes {
            let root = args.root.clone().unwrap_or_else(|| DEBIAN_ROOT.into());
            let scfg = SceneConfig {
                size: (args.scene_size, args.scene_size),
                colour: !args.scene_grey,
                ..SceneConfig::default()
            };
            let tr = Arc::new(FashionMnist::load(&root, Split::Train)?);
            let te = Arc::new(FashionMnist::load(&root, Split::Test)?);
            let train = Scenes::new(tr, scfg, c.seed ^ 0x5ce0e5, args.scenes);
            let val = Scenes::new(te, scfg, 0x7e57, args.val_scenes);
            held_out_scenes = Some(val.clone());
            (
                Arc::new(SceneSeg {
                    scenes: train,
                    augment: Some(augment),
                    norm: Normalization::default(),
                }),
                Arc::new(SceneSeg {
                    scenes: val,
                    augment: None,
                    norm: Normalization::default(),
                }),
                11,
                "fashion-scenes".to_string(),
            )
        } else {
            let kind: DatasetKind = args
                .dataset
                .parse()
                .map_err(|e| anyhow::anyhow!("--dataset: {e}"))?;
            let root = args.root.clone().context("--root is required")?;
            let train = Arc::new(SegDataset::open(kind, &root, &args.split)?);
            let val = Arc::new(SegDataset::open(kind, &root, &args.val_split)?);
            let classes = train.num_classes();
            (
                Arc::new(DatasetSeg {
                    dataset: train,
                    augment: Some(augment),
                    norm: Normalization::default(),
                }),
                Arc::new(DatasetSeg {
                    dataset: val,
                    augment: None,
                    norm: Normalization::default(),
                }),
                classes,
                kind.name().to_string(),
            )
        };
    if !scenes && args.init.is_none() {
        bail!("--init is required (the authors start from ImageNet A1 weights)");
    }
    let head = HeadConfig {
        classes,
        hidden: (args.head_hidden > 0).then_some(args.head_hidden),
        kernel: 3,
        dilation: args.head_dilation.unwrap_or(if scenes { 2 } else { 12 }),
    };
    let init = initial_weights(args.init.as_deref())?;
    let mut built = r38_train::model::segmentation_from(&init, &backbone, head, &dev, c.seed)?;
    if !built.dropped.is_empty() {
        println!("dropped from --init: {}", built.dropped.join(", "));
    }
    if !init.is_empty() {
        println!("new layers: {}", built.new_vars.join(", "));
    }
    if args.bn_batch_stats && c.recompute {
        bail!("--recompute needs frozen BN: batch statistics would be updated twice");
    }
    if args.bn_recalibrate > 0 && !args.bn_batch_stats {
        built.net.set_bn_mode(BatchNormMode::BatchStatistics);
        r38_train::trainer::recalibrate_batch_norm(
            &built.net,
            train_src.as_ref(),
            args.bn_recalibrate,
            settings.micro_batch(&Recipe::SEGMENTATION)?,
            c.seed,
            &dev,
        )?;
        println!(
            "re-estimated the BN statistics on {} training batches",
            args.bn_recalibrate
        );
    }
    built.net.set_bn_mode(if args.bn_batch_stats {
        BatchNormMode::BatchStatistics
    } else {
        BatchNormMode::Frozen
    });
    let task = Task::Segmentation {
        ohem: (!args.no_ohem).then_some(OhemConfig {
            ignore_label: 255,
            thresh: args.ohem_thresh,
            min_kept: args.ohem_min_kept,
        }),
    };
    let head_kind = HeadKind::Segmentation {
        classes,
        hidden: head.hidden,
        kernel: head.kernel,
    };
    let metadata = ModelMetadata {
        arch: args.arch,
        config: backbone.clone(),
        output_stride: backbone.output_stride(),
        head: head_kind,
        head_dilation: Some(head.dilation),
        preprocess: if scenes {
            Preprocess {
                test_scale: args.scene_size,
                ..Preprocess::for_head(&head_kind)
            }
        } else {
            Preprocess::for_head(&head_kind)
        },
        class_names: None,
        source_file: args
            .init
            .as_deref()
            .and_then(r38_model::metadata::source_name),
        source_md5: None,
        released: None,
        lineage: None,
        extra: Default::default(),
    };
    let run = serde_json::json!({
        "command": "train-seg",
        "dataset": names,
        "backbone": backbone,
        "head": head,
        "crop": crop,
        "scale_range": args.scale_range,
        "label_stride": label_stride,
    });
    let config = settings.train_config(
        &Recipe::SEGMENTATION,
        task,
        train_src.len(),
        &["conv6a", &format!("linear{classes}")],
        run,
        metadata.to_map(),
    )?;
    println!(
        "{names}: {} training samples, {} steps of {} x {}, schedule {:?}",
        train_src.len(),
        config.steps,
        config.accumulate,
        config.batch_size,
        config.schedule
    );
    let net = &built.net;
    let stride = label_stride;
    let limit = c.val_limit;
    let val = val_src.clone();
    let dev2 = dev.clone();
    let mut validate = move || -> r38_train::error::Result<f64> {
        Ok(seg_confusion(net, val.as_ref(), &dev2, classes, stride, limit)?.mean_iou())
    };
    let validator: Option<&mut Validator<'_>> = (!c.no_val).then_some(&mut validate);
    train_with_progress(
        net,
        &built.varmap,
        train_src,
        &dev,
        &config,
        validator,
        &c.out,
        &format!("mIoU (stride-{label_stride} labels)"),
    )?;
    if let Some(held_out) = &held_out_scenes {
        // The validation metric above reads stride-sub-sampled labels; this is the figure at
        // full resolution through the test protocol, on the final weights.
        let protocol = r38::evaluation::scenes_protocol(args.scene_size);
        let cm = r38_train::sources::scene_confusion_full_resolution(
            &built.net, held_out, &protocol, None,
        )?;
        let names = r38_train::scenes::class_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let report = cm.report(Some(&names));
        println!(
            "held-out scenes ({}), full resolution, flip: mIoU {:.4}, pixel accuracy {:.4}",
            held_out.len(),
            report.mean_iou,
            report.pixel_accuracy
        );
        crate::network::write_atomically(&c.out.join("held_out.json"), |tmp| {
            std::fs::write(tmp, serde_json::to_string_pretty(&report)?)?;
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use r38_train::{LrSchedule, MomentumKind};
    use std::collections::BTreeMap;

    #[derive(Parser)]
    struct Seg {
        #[command(flatten)]
        args: Args,
    }

    #[derive(Parser)]
    struct Cls {
        #[command(flatten)]
        args: super::super::train_cls::Args,
    }

    /// Toy IDX files: class `c` is a bright rectangle whose shape depends on `c`.
    fn toy_root(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("r38-cli-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        r38_train::fashion_mnist::write_toy_dataset(&root, 40, 10).unwrap();
        root
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0.7,1.3"), Ok((0.7, 1.3)));
        assert!(parse_range("1.3,0.7").is_err());
        assert!(parse_range("1").is_err());
    }

    #[test]
    fn sizes_and_rates_no_run_can_use_are_refused_before_anything_is_built() {
        let out = std::env::temp_dir().join(format!("r38-refused-{}", std::process::id()));
        for (flag, value) in [
            ("--head-dilation", "0"),
            ("--crop", "0"),
            ("--scene-size", "0"),
            ("--lr", "NaN"),
            ("--momentum", "NaN"),
            ("--wd", "inf"),
            ("--epochs", "-1"),
            ("--steps", "0"),
        ] {
            let argv = [
                "t",
                "--out",
                out.to_str().unwrap(),
                "--dataset",
                "fashion-scenes",
            ];
            let setting = format!("{flag}={value}");
            let args = Seg::parse_from(argv.into_iter().chain([setting.as_str()])).args;
            let e = run(args).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
        assert!(!out.exists(), "nothing is written");
    }

    #[test]
    fn defaults_are_the_authors_recipe() {
        let s = Seg::parse_from(["t", "--out", "o", "--dataset", "cityscapes"]).args;
        assert_eq!(s.scale_range, (0.7, 1.3));
        assert_eq!((s.dropout6, s.dropout7), (0.3, 0.5));
        assert_eq!((s.ohem_thresh, s.ohem_min_kept), (0.6, 256));
        assert_eq!(s.head_hidden, 512);
        let cfg = s
            .common
            .settings(&Recipe::SEGMENTATION)
            .unwrap()
            .train_config(
                &Recipe::SEGMENTATION,
                Task::Segmentation { ohem: None },
                2975,
                &["conv6a", "linear19"],
                serde_json::Value::Null,
                BTreeMap::new(),
            )
            .unwrap();
        // Cityscapes stage 1: 140 epochs of 2975 // 16 = 185 updates, batch 4 x 4.
        assert_eq!(cfg.steps, 140 * 185);
        assert_eq!((cfg.accumulate, cfg.batch_size), (4, 4));
        assert_eq!(cfg.schedule, LrSchedule::Fixed { base: 0.0016 });
        assert_eq!(cfg.sgd.weight_decay, 5e-4);
        assert_eq!(cfg.sgd.momentum, 0.9);
        assert_eq!(cfg.sgd.kind, MomentumKind::Standard);
        assert_eq!(cfg.policy.multipliers("conv6a_bias").unwrap().lr, 2.0);
        let c = Cls::parse_from(["t", "--out", "o", "--dataset", "imagenet"]).args;
        assert_eq!((c.area, c.jitter, c.lighting), ((0.08, 1.0), 0.4, 0.1));
        let cfg = c
            .common
            .settings(&Recipe::IMAGENET)
            .unwrap()
            .train_config(
                &Recipe::IMAGENET,
                Task::Classification,
                1_281_167,
                &[],
                serde_json::Value::Null,
                BTreeMap::new(),
            )
            .unwrap();
        assert_eq!(cfg.sgd.kind, MomentumKind::TorchNesterov);
        assert_eq!(cfg.sgd.weight_decay, 1e-4);
        assert_eq!(cfg.steps, 90 * (1_281_167 / 256));
        assert_eq!(cfg.schedule, LrSchedule::authors_linear(0.1, 0, cfg.steps));
    }

    #[test]
    fn fashion_runs_resume_and_plot() {
        let root = toy_root("run");
        let out = root.join("cls");
        let cls = |extra: &[&str]| {
            let mut argv = vec![
                "t",
                "--dataset",
                "fashion-mnist",
                "--root",
                root.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--batch-size",
                "4",
                "--accumulate",
                "2",
                "--width-divisor",
                "16",
                "--checkpoint-every",
                "1",
                "--validate-every",
                "2",
                "--workers",
                "1",
            ];
            argv.extend_from_slice(extra);
            super::super::train_cls::run(Cls::parse_from(argv).args)
        };
        cls(&["--steps", "2"]).unwrap();
        // A second fresh start over the run is refused; --resume continues it.
        assert!(cls(&["--steps", "3"]).is_err());
        cls(&["--steps", "3", "--resume"]).unwrap();
        let recs = r38_train::log::read_records(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(recs.iter().filter(|r| r.metric.is_none()).count(), 3);
        std::fs::remove_file(out.join("curve.png")).unwrap();
        cls(&["--plot-only"]).unwrap();
        assert!(out.join("curve.png").is_file());

        // Scenes, initialised from the classifier: linear10 dropped, head new.
        let init = out.join("checkpoints/step-00000003/model.safetensors");
        let seg_out = root.join("seg");
        let argv = vec![
            "t",
            "--dataset",
            "fashion-scenes",
            "--root",
            root.to_str().unwrap(),
            "--out",
            seg_out.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--width-divisor",
            "16",
            "--head-hidden",
            "4",
            "--crop",
            "32",
            "--scene-size",
            "40",
            "--scenes",
            "8",
            "--val-scenes",
            "2",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--accumulate",
            "1",
            "--ohem-min-kept",
            "8",
            "--workers",
            "1",
        ];
        run(Seg::parse_from(argv).args).unwrap();
        assert!(seg_out.join("checkpoints/best").is_file());
        // The saved model carries r38 metadata for `r38 eval`/`segment`.
        let file =
            r38_model::weights::load(&seg_out.join("checkpoints/step-00000002/model.safetensors"))
                .unwrap();
        assert!(file.metadata.contains_key("r38.config"));
        assert!(file.tensors.contains_key("linear11_weight"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
