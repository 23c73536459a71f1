//! `r38 train-cls`: classification training with the authors' ImageNet recipe
//! (reference §7.1), on an ImageNet-style image folder or Fashion-MNIST.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use r38_data::{Normalization, IMAGENET_MEAN, IMAGENET_STD};
use r38_model::{Arch, BackboneConfig, BatchNormMode, HeadKind, ModelMetadata, Preprocess};
use r38_train::augment::{ClsAugment, ClsEval};
use r38_train::fashion_mnist::{FashionMnist, Split, DEBIAN_ROOT};
use r38_train::loader::Source;
use r38_train::sources::{top1, FashionCls, ImageFolder};
use r38_train::trainer::{Task, Validator};

use super::train_seg::{parse_range, train_with_progress, training_device, CommonArgs};
use r38_train::recipe::{initial_weights, Recipe};

/// Train a classifier with the authors' ImageNet recipe.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// imagenet (ROOT/train/<class>/*, ROOT/val/<class>/*) or fashion-mnist (IDX files).
    #[arg(long)]
    pub dataset: String,
    /// Dataset root (fashion-mnist default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Initial weights (e.g. Model A for the A1 recipe); default: MSRA from the seed.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Architecture for imagenet.
    #[arg(long, default_value = "a1")]
    pub arch: Arch,
    /// Divide every width by D.
    #[arg(long, default_value_t = 1)]
    pub width_divisor: usize,
    /// Crop side (imagenet 224, fashion-mnist 28).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Random-sized crop area range.
    #[arg(long, value_parser = parse_range, default_value = "0.08,1.0")]
    pub area: (f64, f64),
    /// Random-sized crop aspect-ratio range.
    #[arg(long, value_parser = parse_range, default_value = "0.75,1.3333333333333333")]
    pub aspect: (f64, f64),
    /// Brightness/contrast/saturation jitter.
    #[arg(long, default_value_t = 0.4)]
    pub jitter: f32,
    /// PCA lighting standard deviation.
    #[arg(long, default_value_t = 0.1)]
    pub lighting: f32,
    /// No random horizontal flip.
    #[arg(long)]
    pub no_flip: bool,
    /// Frozen BN statistics instead of batch statistics.
    #[arg(long)]
    pub bn_frozen: bool,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// psa's multi-label fine-tuning of an fc8 classifier on VOC image-level labels (--dataset
    /// voc --root VOC2012 --list LIST --cls-labels cls_labels.npy; docs/weakly-supervised.md).
    #[arg(long)]
    pub multi_label: bool,
    /// With --multi-label: psa's list of VOC ids (e.g. its voc12/train_aug.txt).
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// With --multi-label: psa's voc12/cls_labels.npy.
    #[arg(long)]
    pub cls_labels: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if args.multi_label {
        return super::train_multilabel::run(&args);
    }
    let c = &args.common;
    if c.plot_only_done()? {
        return Ok(());
    }
    let settings = c.settings(&Recipe::IMAGENET)?;
    let dev = training_device(&c.device)?;
    let fashion = match args.dataset.as_str() {
        "fashion-mnist" | "fashion_mnist" | "fmnist" => true,
        "imagenet" => false,
        other => bail!("--dataset {other}: imagenet or fashion-mnist"),
    };
    let crop = args.crop.unwrap_or(if fashion { 28 } else { 224 });
    let norm = Normalization {
        pixel_scale: (1.0f64 / 255.0) as f32,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let augment = ClsAugment {
        crop,
        area: args.area,
        aspect: args.aspect,
        jitter: args.jitter,
        lighting: args.lighting,
        flip: !args.no_flip,
        norm,
        ..ClsAugment::default()
    };
    let eval = ClsEval {
        resize: if fashion {
            crop
        } else {
            (f64::from(crop) / 0.875).round() as u32
        },
        crop,
        norm,
    };
    let (train_src, val_src, classes): (Arc<dyn Source>, Arc<dyn Source>, usize) = if fashion {
        let root = args.root.clone().unwrap_or_else(|| DEBIAN_ROOT.into());
        let mut tr = FashionMnist::load(&root, Split::Train)?;
        if let Some(n) = args.train_limit {
            tr = tr.truncated(n);
        }
        let te = Arc::new(FashionMnist::load(&root, Split::Test)?);
        (
            Arc::new(FashionCls {
                data: Arc::new(tr),
                augment: Some(augment),
                eval,
            }),
            Arc::new(FashionCls {
                data: te,
                augment: None,
                eval,
            }),
            10,
        )
    } else {
        let root = args
            .root
            .clone()
            .context("--root is required for imagenet")?;
        let mut tr = ImageFolder::open(&root.join("train"), Some(augment), eval)?;
        if let Some(n) = args.train_limit {
            tr.samples.truncate(n);
        }
        let va = ImageFolder::open(&root.join("val"), None, eval)?;
        if va.classes != tr.classes {
            bail!("train/ and val/ have different class folders");
        }
        let classes = tr.classes.len();
        (Arc::new(tr), Arc::new(va), classes)
    };
    let backbone = if fashion {
        r38_train::model::fashion_config(args.width_divisor)
    } else {
        BackboneConfig::preset(args.arch, 32)?.narrowed(args.width_divisor)
    };
    let init = initial_weights(args.init.as_deref())?;
    let mut built = r38_train::model::classifier_from(&init, &backbone, classes, &dev, c.seed)?;
    if !args.bn_frozen && c.recompute {
        bail!("--recompute needs --bn-frozen: batch statistics would be updated twice");
    }
    built.net.set_bn_mode(if args.bn_frozen {
        BatchNormMode::Frozen
    } else {
        BatchNormMode::BatchStatistics
    });
    let head_kind = HeadKind::Classifier { classes };
    let metadata = ModelMetadata {
        arch: args.arch,
        config: backbone.clone(),
        output_stride: backbone.output_stride(),
        head: head_kind,
        head_dilation: None,
        // What validation did: the protocol the weights are measured with.
        preprocess: Preprocess {
            test_scale: eval.resize,
            crop: Some(eval.crop),
            ..Preprocess::for_head(&head_kind)
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
        "command": "train-cls",
        "dataset": args.dataset,
        "backbone": backbone,
        "classes": classes,
        "crop": crop,
    });
    let config = settings.train_config(
        &Recipe::IMAGENET,
        Task::Classification,
        train_src.len(),
        &[],
        run,
        metadata.to_map(),
    )?;
    println!(
        "{}: {} training images, {} steps of {} x {}, schedule {:?}",
        args.dataset,
        train_src.len(),
        config.steps,
        config.accumulate,
        config.batch_size,
        config.schedule
    );
    let net = &built.net;
    let limit = c.val_limit;
    let val = val_src.clone();
    let dev2 = dev.clone();
    let micro = config.batch_size;
    let mut validate = move || top1(net, val.as_ref(), &dev2, micro.max(1), limit);
    let validator: Option<&mut Validator<'_>> = (!c.no_val).then_some(&mut validate);
    train_with_progress(
        net,
        &built.varmap,
        train_src,
        &dev,
        &config,
        validator,
        &c.out,
        "top-1",
    )?;
    Ok(())
}
