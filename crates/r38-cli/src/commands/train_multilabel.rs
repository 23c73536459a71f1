//! `r38 train-cls --multi-label`: psa's multi-label fine-tuning (`train_cls.py` with
//! `network.resnet38_cls`) on VOC image-level labels; the recipe lives in
//! `r38_train::multilabel`, this file only wires the command-line arguments to it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use r38_model::{Arch, BackboneConfig, BatchNormMode, CamClassifier, HeadKind, ModelMetadata};
use r38_train::multilabel::{psa_policy, psa_sgd, MultiLabelImages, PsaAugment, VOC_FOREGROUND};
use r38_train::trainer::Task;

use super::train_cls::Args;
use super::train_seg::{train_with_progress, training_device};
use r38_train::recipe::{Recipe, ScheduleKind};

/// psa's settings (its README): batch 16, lr 0.1, 15 epochs, crop 448, poly 0.9, wd 5e-4; the
/// momentum is psa's (`psa_sgd`), set below.
pub const PSA_RECIPE: Recipe = Recipe {
    epochs: 15.0,
    batch_size: 16,
    lr: 0.1,
    schedule: ScheduleKind::Poly,
    wd: 5e-4,
    momentum: r38_train::MomentumKind::Torch,
};

/// psa's list files: one `/JPEGImages/<name>.jpg[ <label>]` per line; the name is the VOC id.
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let first = l.split_whitespace().next().unwrap_or_default();
            Path::new(first)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .with_context(|| format!("{}: bad line `{l}`", path.display()))
        })
        .collect()
}

pub fn run(args: &Args) -> Result<()> {
    let c = &args.common;
    if c.plot_only_done()? {
        return Ok(());
    }
    let settings = c.settings(&PSA_RECIPE)?;
    let dev = training_device(&c.device)?;
    if args.dataset != "voc" {
        bail!("--multi-label trains on VOC image-level labels: --dataset voc");
    }
    let root = args.root.as_ref().context("--root VOC2012 is required")?;
    let list = args
        .list
        .as_ref()
        .context("--list (psa's voc12/train_aug.txt or any list of VOC ids) is required")?;
    let labels_path = args
        .cls_labels
        .as_ref()
        .context("--cls-labels (psa's voc12/cls_labels.npy) is required")?;
    let mut names = read_list(list)?;
    if let Some(n) = args.train_limit {
        names.truncate(n);
    }
    let table = r38_train::cls_labels::read_cls_labels(labels_path)?;
    let augment = PsaAugment {
        crop: args.crop.unwrap_or(448),
        flip: !args.no_flip,
        ..PsaAugment::default()
    };
    let source =
        MultiLabelImages::from_cls_labels(&root.join("JPEGImages"), &names, &table, augment)
            .with_context(|| format!("{}", labels_path.display()))?;

    // psa's network: resnet38d (A1 at output stride 8, PyTorch's BN epsilon) on the --init
    // file's shapes, whether that is psa's .pth or the authors' ImageNet .params (psa converts
    // it and runs it with PyTorch's epsilon too).
    let (init, mut config) = match &args.init {
        Some(p) => {
            let file = r38_model::weights::load(&r38_model::hub::resolve(p)?)
                .with_context(|| format!("--init {}", p.display()))?;
            let config = BackboneConfig::infer(&file.shapes(), Arch::A1, 8)
                .with_context(|| format!("--init {}", p.display()))?;
            (file.tensors, config)
        }
        None => (
            Default::default(),
            BackboneConfig::preset(Arch::A1, 8)?.narrowed(args.width_divisor),
        ),
    };
    config.bn_eps = r38_model::lineage::PYTORCH_BN_EPS;
    let lineage = Some(r38_model::Lineage::Psa);
    let mut built = r38_train::model::build(
        &init,
        &dev,
        c.seed,
        r38_train::model::is_classifier_tensor,
        |vb| CamClassifier::new(&config, VOC_FOREGROUND, false, vb),
    )?;
    built.net.set_bn_mode(BatchNormMode::Frozen);
    let head = HeadKind::Fc8 {
        classes: VOC_FOREGROUND,
        background: false,
    };
    let metadata = ModelMetadata {
        arch: Arch::A1,
        config: config.clone(),
        output_stride: config.output_stride(),
        head,
        head_dilation: None,
        preprocess: r38_model::Preprocess::for_head(&head),
        class_names: None,
        source_file: args
            .init
            .as_deref()
            .and_then(r38_model::metadata::source_name),
        source_md5: None,
        released: None,
        lineage,
        extra: Default::default(),
    };
    let run = serde_json::json!({
        "command": "train-cls --multi-label",
        "list": list,
        "cls_labels": labels_path,
        "backbone": config,
    });
    let mut train_config = settings.train_config(
        &PSA_RECIPE,
        Task::MultiLabel,
        source.items.len(),
        &[],
        run,
        metadata.to_map(),
    )?;
    // psa's optimizer, parameter groups and poly power (0.9, no floor), whatever the shared
    // flags say (--lr, --wd, --steps/--epochs and --batch-size apply).
    train_config.sgd = psa_sgd(train_config.sgd.weight_decay);
    train_config.policy = psa_policy();
    if let r38_train::LrSchedule::Poly { base, total, .. } = train_config.schedule {
        train_config.schedule = r38_train::LrSchedule::Poly {
            base,
            total,
            power: 0.9,
            floor: 0.0,
        };
    }
    println!(
        "voc multi-label: {} images, {} steps of {} x {}, schedule {:?}",
        source.items.len(),
        train_config.steps,
        train_config.accumulate,
        train_config.batch_size,
        train_config.schedule
    );
    train_with_progress(
        &built.net,
        &built.varmap,
        Arc::new(source),
        &dev,
        &train_config,
        None,
        &c.out,
        "loss",
    )
}
