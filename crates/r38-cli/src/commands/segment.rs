//! `r38 segment`: label maps, colour overlays and probabilities for image files.

use super::seg_common::{
    apply_crf, as_score_nets, check_classes, check_overwrite, overlay_in_place, save_png, CrfArgs,
    EnsembleArgs, ProtocolArgs,
};
use crate::network::write_atomically;
use anyhow::{bail, Context, Result};
use r38::data::datasets::{write_label_png, DatasetKind, LabelMap};
use r38::data::ImageLoader;
use r38::seg::test_time::label_band_rows;
use r38::Pretrained;
use std::collections::BTreeMap;
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
    #[arg(long, default_value_t = r38::data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    let crf = args.crf.config()?;
    // Two inputs with one stem would write the same outputs.
    let mut stems = BTreeMap::new();
    for path in &args.images {
        let stem = path.file_stem().map(|s| s.to_os_string());
        if let Some(other) = stems.insert(stem, path) {
            bail!(
                "{} and {} would write the same outputs; segment them in separate calls or \
                 rename one",
                other.display(),
                path.display()
            );
        }
    }
    let nets = args.models.load()?;
    if let Some(kind) = args.dataset {
        check_classes(&nets[0], kind)?;
    }
    let protocol = args.protocol.protocol(args.dataset, &nets[0]);
    let palette = match args.dataset {
        Some(kind) => kind.palette(),
        None => nets[0].palette(),
    };
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
    nets: &[Pretrained],
    protocol: &r38::TestProtocol,
    crf: Option<&r38::seg::CrfConfig>,
    palette: &r38::data::datasets::Palette,
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
    let mut image = loader.load_rgb8(path)?;
    let nets = as_score_nets(nets);
    let classes = nets[0].classes();
    let segmentation = || format!("{}: segmentation", path.display());
    // Full-resolution probabilities (classes x 4 bytes a pixel) only where they are asked for
    // or the CRF needs them; otherwise labels in bands of rows (2 bytes a pixel).
    let (labels, w, h): (Vec<u16>, u32, u32) = if args.save_probs || crf.is_some() {
        let mut prediction = protocol.predict(&nets, &image).with_context(segmentation)?;
        apply_crf(crf, &image, &mut prediction)
            .with_context(|| format!("{}: CRF", path.display()))?;
        if args.save_probs {
            let probs = out("_probs.npy");
            write_atomically(&probs, |tmp| {
                prediction
                    .probabilities
                    .write_npy(tmp)
                    .with_context(|| format!("{}: cannot write the probabilities", probs.display()))
            })?;
        }
        let labels = prediction.labels.iter().map(|&l| l as u16).collect();
        (labels, prediction.width, prediction.height)
    } else {
        let p = protocol
            .predict_labels(&nets, &image, label_band_rows(classes, image.width()))
            .with_context(segmentation)?;
        (p.labels, p.width, p.height)
    };
    // Above 256 classes a 16-bit PNG: labels are never truncated.
    write_atomically(&out(".png"), |tmp| {
        Ok(r38::data::datasets::write_class_png(
            tmp,
            w,
            h,
            &labels,
            classes,
            Some(palette),
        )?)
    })?;
    // The overlay and the dataset ids have 8-bit palettes (at most 256 classes there).
    let wide = labels;
    let labels: Vec<u8> = wide.iter().map(|&l| l as u8).collect();
    drop(wide);
    if let (true, Some(kind)) = (with_ids, args.dataset) {
        let ids = kind.codec().encode_slice(&labels);
        let ids = LabelMap::new(w, h, ids)?;
        write_atomically(&out("_ids.png"), |tmp| {
            Ok(write_label_png(tmp, &ids, None)?)
        })?;
    }
    overlay_in_place(&mut image, &labels, palette);
    save_png(&out("_overlay.png"), &image)?;
    Ok(targets.iter().map(|t| t.display().to_string()).collect())
}
