//! `r38 segment`: label maps, colour overlays and probabilities for image files.

use super::seg_common::{
    apply_crf, as_score_nets, check_overwrite, overlay, save_png, CrfArgs, EnsembleArgs,
    ProtocolArgs,
};
use crate::network::write_atomically;
use anyhow::{Context, Result};
use r38_data::datasets::{voc_colormap, write_label_png, DatasetKind, LabelMap};
use r38_data::ImageLoader;
use std::path::PathBuf;

/// Segment images with the authors' test protocol; writes `<name>.png` (palette label map),
/// `<name>_overlay.png` and, with --save-probs, `<name>_probs.npy` (C, H, W).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub models: EnsembleArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub crf: CrfArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Folder for the outputs (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Class names, palette and protocol of this dataset: voc, voc-aug, cityscapes, ade20k,
    /// context59, context60. Cityscapes and ADE20K also get `<name>_ids.png` in the dataset's
    /// own label ids.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Also write the class probabilities as `<name>_probs.npy`, (C, H, W) float32.
    #[arg(long)]
    pub save_probs: bool,
    /// Replace existing outputs.
    #[arg(long)]
    pub overwrite: bool,
    /// Report a bad image and go on with the others (the exit code is still non-zero).
    #[arg(long)]
    pub keep_going: bool,
    /// Refuse images with more pixels than this, from their header, before decoding.
    #[arg(long, default_value_t = r38_data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    let crf = args.crf.config()?;
    let nets = args.models.load()?;
    let protocol = args.protocol.protocol(args.dataset);
    let palette = args
        .dataset
        .map(DatasetKind::palette)
        .unwrap_or_else(voc_colormap);
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create", args.out_dir.display()))?;
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    let mut failures = Vec::new();
    for path in &args.images {
        let result = segment_one(
            &args,
            &nets,
            &protocol,
            crf.as_ref(),
            &palette,
            &loader,
            path,
        );
        match result {
            Ok(written) => eprintln!("{} -> {}", path.display(), written.join(", ")),
            Err(e) if args.keep_going => {
                eprintln!("error: {e:#}");
                failures.push(path.display().to_string());
            }
            Err(e) => return Err(e),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} of {} images failed: {}",
            failures.len(),
            args.images.len(),
            failures.join(", ")
        );
    }
    Ok(())
}

fn segment_one(
    args: &Args,
    nets: &[r38_seg::SegmentationNet],
    protocol: &r38_seg::TestProtocol,
    crf: Option<&r38_seg::CrfConfig>,
    palette: &r38_data::datasets::Palette,
    loader: &ImageLoader,
    path: &std::path::Path,
) -> Result<Vec<String>> {
    let stem = path
        .file_stem()
        .with_context(|| format!("{}: no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let out = |suffix: &str| args.out_dir.join(format!("{stem}{suffix}"));
    let mut targets = vec![out(".png"), out("_overlay.png")];
    if args.save_probs {
        targets.push(out("_probs.npy"));
    }
    let with_ids = matches!(
        args.dataset,
        Some(DatasetKind::Cityscapes | DatasetKind::Ade20k)
    );
    if with_ids {
        targets.push(out("_ids.png"));
    }
    for t in &targets {
        check_overwrite(t, args.overwrite)?;
    }
    let image = loader.load_rgb8(path)?;
    let mut prediction = protocol
        .predict(&as_score_nets(nets), &image)
        .with_context(|| format!("{}: segmentation", path.display()))?;
    apply_crf(crf, &image, &mut prediction).with_context(|| format!("{}: CRF", path.display()))?;
    let labels: Vec<u8> = prediction.labels.iter().map(|&l| l as u8).collect();
    let (w, h, classes) = (
        prediction.width,
        prediction.height,
        nets.first().map_or(0, |n| n.head().config().classes),
    );
    write_atomically(&out(".png"), |tmp| {
        Ok(r38_data::datasets::write_class_png(
            tmp,
            w,
            h,
            &prediction.labels,
            classes,
            Some(palette),
        )?)
    })?;
    save_png(&out("_overlay.png"), &overlay(&image, &labels, palette))?;
    if let (true, Some(kind)) = (with_ids, args.dataset) {
        let ids = kind.codec().encode_slice(&labels);
        let ids = LabelMap::new(prediction.width, prediction.height, ids)?;
        write_atomically(&out("_ids.png"), |tmp| {
            Ok(write_label_png(tmp, &ids, None)?)
        })?;
    }
    if args.save_probs {
        write_atomically(&out("_probs.npy"), |tmp| {
            Ok(prediction.probabilities.write_npy(tmp)?)
        })?;
    }
    Ok(targets.iter().map(|t| t.display().to_string()).collect())
}
