//! `r38 card FILE.safetensors`: a Hugging Face model card (README.md) for a converted file.

use anyhow::{bail, Context, Result};
use r38_model::weights::released::{self, ReleasedFile, ReleasedHead};
use r38_model::weights::{self, WeightFile};
use r38_model::{HeadKind, ModelMetadata};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Print a model card (README.md with YAML metadata) for publishing a file written by
/// `r38 convert` on the Hugging Face Hub.
#[derive(clap::Args)]
pub struct Args {
    /// A safetensors file written by `r38 convert` (or hf://OWNER/REPO/FILE[@REVISION]).
    pub file: PathBuf,
    /// The Hub repository it will be published as, for the usage examples.
    #[arg(long, default_value = "OWNER/REPO")]
    pub repo: String,
    /// The `license` of the card's metadata (a Hub license identifier). The authors' weights
    /// carry no stated licence; check before publishing.
    #[arg(long, default_value = "unknown")]
    pub license: String,
}

const BIBTEX: &str = "@article{wu2019wider,
  title   = {Wider or Deeper: Revisiting the {ResNet} Model for Visual Recognition},
  author  = {Wu, Zifeng and Shen, Chunhua and van den Hengel, Anton},
  journal = {Pattern Recognition},
  volume  = {90},
  pages   = {119--133},
  year    = {2019}
}";

pub fn run(args: Args) -> Result<()> {
    let file = weights::load(&r38_model::hub::resolve(&args.file)?)?;
    let meta = ModelMetadata::from_map(&file.metadata).map_err(|(key, e)| {
        anyhow::anyhow!("{}: metadata `r38.{key}`: {e}", args.file.display())
    })?;
    if let Some(m) = &meta {
        m.validate(&file.shapes())
            .with_context(|| format!("{}", args.file.display()))?;
    }
    let Some(meta) = meta else {
        bail!(
            "{}: no r38 metadata (r38.* keys); a card is written for a safetensors file made by \
             `r38 convert`, e.g. `r38 convert {} model.safetensors`, then `r38 card model.safetensors`",
            args.file.display(),
            args.file.display()
        );
    };
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.safetensors".into());
    // The name inside the repository when the file was given as hf://.
    let name = match r38_model::hub::HubFile::parse(&args.file.to_string_lossy()) {
        Ok(h) => h.path,
        Err(_) => name,
    };
    print!("{}", card(&args, &name, &file, &meta));
    Ok(())
}

/// YAML double-quoted scalar: JSON's string syntax is valid YAML.
fn q(s: &str) -> String {
    serde_json::Value::String(s.into()).to_string()
}

fn task(head: &HeadKind) -> &'static str {
    match head {
        HeadKind::Segmentation { .. } => "image-segmentation",
        _ => "image-classification",
    }
}

/// Hub dataset ids for the benchmarks of the released files, where one is well known.
fn dataset_id(dataset: &str) -> String {
    if dataset.contains("ImageNet") {
        "imagenet-1k".into()
    } else if dataset.contains("ADE20K") {
        "scene_parse_150".into()
    } else {
        dataset.into()
    }
}

fn metric_type(metric: &str) -> String {
    if metric.contains("mIoU") {
        return "mean_iou".into();
    }
    let slug: String = metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    slug.split('_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

fn head_text(head: &HeadKind) -> String {
    match head {
        HeadKind::Classifier { classes } => {
            format!("classifier: global average pooling + `linear{classes}` ({classes} classes)")
        }
        HeadKind::Segmentation {
            classes,
            hidden: Some(h),
            kernel,
        } => format!(
            "segmentation, \"2 conv\": `conv6a` ({h} channels, {kernel}x{kernel}) + \
             `linear{classes}` ({classes} classes)"
        ),
        HeadKind::Segmentation {
            classes, kernel, ..
        } => format!(
            "segmentation, \"1 conv\": `linear{classes}` ({kernel}x{kernel}, {classes} classes)"
        ),
        HeadKind::Fc8 { classes, .. } => {
            format!("psa's multi-label classifier `fc8` ({classes} classes; class activation maps)")
        }
        HeadKind::None => "none (backbone features only)".into(),
    }
}

fn card(args: &Args, name: &str, file: &WeightFile, meta: &ModelMetadata) -> String {
    let released: Option<&ReleasedFile> = meta.released.as_deref().and_then(released::find_by_name);
    let arch = meta.arch.to_string().to_uppercase();
    let task = task(&meta.head);
    let mut s = String::new();
    // YAML front matter.
    let _ = writeln!(s, "---");
    let _ = writeln!(s, "license: {}", q(&args.license));
    let _ = writeln!(s, "library_name: r38");
    let _ = writeln!(s, "pipeline_tag: {task}");
    let _ = writeln!(s, "tags:");
    for tag in [
        task,
        "resnet38",
        "wider-or-deeper",
        &format!("model-{}", meta.arch),
        "safetensors",
    ] {
        let _ = writeln!(s, "- {}", q(tag));
    }
    if let Some(r) = released {
        let _ = writeln!(s, "datasets:\n- {}", q(&dataset_id(&r.dataset)));
        let _ = writeln!(s, "metrics:");
        let mut seen = Vec::new();
        for res in &r.results {
            let t = metric_type(&res.metric);
            if !seen.contains(&t) {
                let _ = writeln!(s, "- {}", q(&t));
                seen.push(t);
            }
        }
        let _ = writeln!(s, "model-index:\n- name: {}\n  results:", q(name));
        let _ = writeln!(s, "  - task:\n      type: {task}");
        let _ = writeln!(
            s,
            "    dataset:\n      name: {}\n      type: {}",
            q(&r.dataset),
            q(&dataset_id(&r.dataset))
        );
        let _ = writeln!(s, "    metrics:");
        for res in &r.results {
            let _ = writeln!(
                s,
                "    - type: {}\n      value: {}\n      name: {}",
                q(&metric_type(&res.metric)),
                res.value,
                q(&format!("{} (published; {})", res.metric, res.protocol))
            );
        }
        let _ = writeln!(s, "    source:\n      name: \"ademxapp README (the authors' results)\"\n      url: \"https://github.com/itijyou/ademxapp\"");
    }
    let _ = writeln!(s, "---\n");

    // Body.
    let _ = writeln!(s, "# ResNet-38 Model {arch}: {name}\n");
    let _ = writeln!(
        s,
        "ResNet-38 (Model {arch}) from \"Wider or Deeper: Revisiting the ResNet Model for Visual \
         Recognition\" (Zifeng Wu, Chunhua Shen and Anton van den Hengel, Pattern Recognition \
         90 (2019) 119-133), as a safetensors file for the Rust tool \
         [`r38`](https://github.com/r38-rs/r38) (candle). The file carries its architecture, \
         head and preprocessing in its `r38.*` metadata, so it runs without flags.\n"
    );
    let _ = writeln!(s, "## Model\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| architecture | Model {arch} ({} levels, stem {} channels) |",
        meta.config.levels.len(),
        meta.config.stem.channels
    );
    let _ = writeln!(s, "| output stride | {} |", meta.output_stride);
    let _ = writeln!(s, "| head | {} |", head_text(&meta.head));
    if let Some(c) = meta.head.classes() {
        let _ = writeln!(s, "| classes | {c} |");
    }
    if let Some(d) = meta.head_dilation {
        let _ = writeln!(s, "| head dilation | {d} |");
    }
    let _ = writeln!(
        s,
        "| values | {} ({} trainable parameters) |",
        file.value_count(),
        file.trainable_count()
    );
    let _ = writeln!(s, "| tensors | {} |\n", file.tensors.len());

    let p = &meta.preprocess;
    let _ = writeln!(s, "## Preprocessing\n");
    let _ = writeln!(s, "- RGB, pixel values scaled to 0..1");
    let _ = writeln!(s, "- normalised with mean {:?} and std {:?}", p.mean, p.std);
    match (&meta.head, p.crop) {
        (HeadKind::Segmentation { .. }, _) | (_, None) => {
            let _ = writeln!(
                s,
                "- longer side resized to {} ({} interpolation), whole image",
                p.test_scale,
                r38_model::escape_markdown(&p.interpolation)
            );
        }
        (_, Some(crop)) => {
            let _ = writeln!(
                s,
                "- shorter side resized to {} ({} interpolation), centre crop {crop}x{crop}",
                p.test_scale,
                r38_model::escape_markdown(&p.interpolation)
            );
        }
    }
    let _ = writeln!(s);

    if let Some(r) = released {
        let _ = writeln!(s, "## Published results\n");
        let _ = writeln!(
            s,
            "The authors' results for `{}` ({}), trained on {}:\n",
            r.file_name, r.dataset, r.training_data
        );
        let _ = writeln!(s, "| metric | value | protocol |\n|---|---|---|");
        for res in &r.results {
            let _ = writeln!(s, "| {} | {} | {} |", res.metric, res.value, res.protocol);
        }
        let _ = writeln!(s);
        for note in &r.notes {
            let _ = writeln!(s, "- {note}");
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "## Provenance\n");
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let code = |v: &Option<String>| r38_model::markdown_code_span(&or_unknown(v));
    let _ = writeln!(s, "- source file: {}", code(&meta.source_file));
    let _ = writeln!(s, "- source MD5: {}", code(&meta.source_md5));
    match (&meta.released, released) {
        (Some(n), Some(r)) => {
            let head = match r.head {
                ReleasedHead::Cls => "classification",
                ReleasedHead::Seg => "segmentation",
            };
            let _ = writeln!(
                s,
                "- the authors' released {head} file `{n}` (MD5 `{}`), from \
                 github.com/itijyou/ademxapp",
                r.md5
            );
        }
        (Some(n), None) => {
            let _ = writeln!(
                s,
                "- recorded as the released file {}",
                code(&Some(n.clone()))
            );
        }
        (None, _) => {
            let _ = writeln!(
                s,
                "- not one of the authors' released files (no MD5 match); no published results apply"
            );
        }
    }
    let _ = writeln!(s, "- this file's MD5: `{}`", file.md5);
    let _ = writeln!(
        s,
        "- converted with `r38 convert` (r38 {})\n",
        env!("CARGO_PKG_VERSION")
    );

    let uri = format!("hf://{}/{name}", args.repo);
    let _ = writeln!(s, "## How to use\n");
    let _ = writeln!(s, "With the `r38` command-line tool:\n\n```sh");
    let _ = writeln!(s, "r38 inspect {uri}");
    match meta.head {
        HeadKind::Segmentation { .. } => {
            let _ = writeln!(s, "r38 segment --weights {uri} --out-dir out/ image.jpg");
        }
        HeadKind::Classifier { .. } => {
            let _ = writeln!(s, "r38 classify --weights {uri} image.jpg");
        }
        HeadKind::Fc8 { .. } => {
            let _ = writeln!(s, "r38 cam --weights {uri} --out-dir out/ image.jpg");
        }
        HeadKind::None => {
            let _ = writeln!(
                s,
                "r38 forward --weights {uri} --head none --input x.npy --output features.npy"
            );
        }
    }
    let _ = writeln!(
        s,
        "```\n\nThe file is downloaded into the standard Hugging Face cache on first use \
         (`HF_HUB_OFFLINE=1` uses the cache only). Append `@REVISION` to pin a branch, tag or \
         commit.\n"
    );
    let _ = writeln!(s, "## Citation\n\n```bibtex\n{BIBTEX}\n```");
    s
}
