//! `r38 inspect FILE`: what a weight file holds.

use anyhow::Result;
use r38_model::weights;
use r38_model::HeadKind;
use std::path::PathBuf;

/// Show format, tensor and parameter counts, head, backbone shape and released-file match.
#[derive(clap::Args)]
pub struct Args {
    /// Weight file (.params, .pth or .safetensors), or hf://OWNER/REPO/FILE[@REVISION].
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let file = weights::load(&r38_model::hub::resolve(&args.file)?)?;
    let meta = r38_model::ModelMetadata::describe(&file, &Default::default())?;
    let shapes = file.shapes();
    let running = file.value_count() - file.trainable_count();
    if args.json {
        let report = serde_json::json!({
            "file": file.path,
            "format": format!("{:?}", file.format),
            "md5": file.md5,
            "tensors": file.tensors.len(),
            "values": file.value_count(),
            "trainable_parameters": file.trainable_count(),
            "running_statistics": running,
            "head": meta.head,
            "lineage": r38_model::Origin::detect(&file)?.lineage,
            "unsupported": r38_model::Origin::detect(&file)?.unsupported,
            "bn_eps": meta.config.bn_eps,
            "arch": meta.arch,
            "output_stride": meta.output_stride,
            "config": meta.config,
            "released": file.released,
            "metadata": file.metadata,
            "skipped": file.skipped.iter().map(|(n, r)| format!("{n}: {r:?}")).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("file:        {}", file.path.display());
    println!("format:      {:?}", file.format);
    println!("md5:         {}", file.md5);
    println!(
        "tensors:     {} ({} learned, {} BN running statistics)",
        file.tensors.len(),
        shapes
            .keys()
            .filter(|n| !weights::names::is_running_stat(n))
            .count(),
        shapes
            .keys()
            .filter(|n| weights::names::is_running_stat(n))
            .count()
    );
    println!(
        "values:      {} ({} trainable parameters + {} running statistics)",
        group(file.value_count()),
        group(file.trainable_count()),
        group(running)
    );
    let head = match meta.head {
        HeadKind::Classifier { classes } => {
            format!("classifier, {classes} classes (linear{classes})")
        }
        HeadKind::Segmentation {
            classes,
            hidden: Some(h),
            ..
        } => format!(
            "segmentation \"2 conv\", {classes} classes (conv6a {h} channels, linear{classes})"
        ),
        HeadKind::Segmentation { classes, .. } => {
            format!("segmentation \"1 conv\", {classes} classes (linear{classes})")
        }
        HeadKind::Fc8 {
            classes,
            background: false,
        } => format!("psa multi-label classifier, {classes} classes (fc8, CAMs)"),
        HeadKind::Fc8 { classes, .. } => format!(
            "SEAM multi-label classifier, {classes} channels, channel 0 background (fc8, CAMs)"
        ),
        HeadKind::None => "none (backbone only)".into(),
    };
    let origin = r38_model::Origin::detect(&file)?;
    println!("lineage:     {}", origin.lineage);
    println!("head:        {head}");
    for what in &origin.unsupported {
        println!("unsupported: {what}");
    }
    println!("bn eps:      {}", meta.config.bn_eps);
    let c = &meta.config;
    println!(
        "backbone:    stem {} ch; {}",
        c.stem.channels,
        c.levels
            .iter()
            .map(|l| format!("B{} {}x{:?}", l.level, l.units, l.widths))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let arch_source = if file.metadata.contains_key("r38.arch") {
        "from the file's metadata"
    } else if file.released.is_some() {
        "from the released-file table"
    } else if origin.lineage.is_pytorch() {
        "resnet38d, the PyTorch port: Model A1 dilated to stride 8"
    } else {
        "assumed; the shapes of A, A1 and A2 are identical, pass --arch to choose"
    };
    println!(
        "arch:        Model {} at output stride {} ({arch_source})",
        meta.arch.to_string().to_uppercase(),
        meta.output_stride
    );
    match file.released {
        Some(r) => {
            println!("released:    yes: {} ({})", r.file_name, r.dataset);
            for res in &r.results {
                println!(
                    "             published {} = {} ({})",
                    res.metric, res.value, res.protocol
                );
            }
        }
        None => println!("released:    no match among the authors' released files (by MD5)"),
    }
    if !file.skipped.is_empty() {
        println!(
            "skipped:     {} entries ({:?}, ...)",
            file.skipped.len(),
            file.skipped[0]
        );
    }
    for (k, v) in &file.metadata {
        if !k.starts_with("r38.config") {
            let esc = r38_model::escape_for_terminal;
            println!("metadata:    {} = {}", esc(k), esc(v));
        }
    }
    Ok(())
}

/// 109215656 -> "109,215,656".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
