//! `r38 classify`: the authors' ImageNet test protocol on image files.

use crate::network::{load, HeadChoice, LoadedModel, ModelArgs};
use anyhow::{Context, Result};
use candle_core::D;
use r38_data::{imagenet_class, ClassifyTransform, ImageLoader, Interpolation};
use std::path::PathBuf;

/// Classify images with the file's recorded test transform (the authors' ImageNet protocol:
/// RGB, shorter side 320 (bicubic), centre crop 320, ImageNet mean/std).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Test scale (shorter side) and crop; default: the file's recorded preprocessing, else 320.
    #[arg(long)]
    pub scale: Option<u32>,
    /// Antialias when shrinking, bicubic when enlarging (the authors' adaptive choice) instead
    /// of plain bicubic.
    #[arg(long)]
    pub adaptive_interpolation: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Refuse images with more pixels than this, from their header, before decoding.
    #[arg(long, default_value_t = r38_data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    let model = load(&args.model, Some(HeadChoice::Cls))?;
    let device = crate::network::device(&args.model.device)?;
    let mut transform = transform_for(&model);
    if let Some(scale) = args.scale {
        (transform.scale, transform.crop) = (scale, scale);
    }
    if args.adaptive_interpolation {
        transform.interpolation = Interpolation::from_choose_interp(true);
    }
    let names = class_names(&model);
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    for path in &args.images {
        let image = loader.load_rgb8(path)?;
        let top = classify(&model, &names, &transform, &image, &device, args.top_k)
            .with_context(|| format!("{}", path.display()))?;
        if args.json {
            let entries: Vec<_> = top
                .iter()
                .map(|(i, p, n)| serde_json::json!({"index": i, "probability": p, "name": n}))
                .collect();
            println!("{}", serde_json::json!({"image": path, "top": entries}));
        } else {
            println!("{}", path.display());
            for (rank, (i, p, n)) in top.iter().enumerate() {
                let n = r38_model::escape_for_terminal(n);
                println!("  {}. {:>7.3}%  {:>4}  {}", rank + 1, p * 100.0, i, n);
            }
        }
    }
    Ok(())
}

/// The test transform the file's metadata records (its input size and normalisation), else
/// the authors' ImageNet protocol (shorter side 320, centre crop 320, bicubic).
pub fn transform_for(model: &LoadedModel) -> ClassifyTransform {
    let has_metadata = model.file.metadata.contains_key("r38.preprocess");
    let p = &model.metadata.preprocess;
    if !has_metadata {
        return ClassifyTransform::default();
    }
    ClassifyTransform {
        scale: p.test_scale,
        crop: p.crop.unwrap_or(p.test_scale),
        mean: p.mean,
        std: p.std,
        ..ClassifyTransform::default()
    }
}

/// Class names: the file's `r38.class_names`, else ImageNet's for 1000 classes, else
/// `class <i>`.
pub fn class_names(model: &LoadedModel) -> Vec<String> {
    let classes = model.metadata.head.classes().unwrap_or(0);
    if let Some(names) = model
        .file
        .metadata
        .get("r38.class_names")
        .and_then(|j| serde_json::from_str::<Vec<String>>(j).ok())
        .filter(|n| n.len() == classes)
    {
        return names;
    }
    (0..classes)
        .map(|i| match (classes, imagenet_class(i)) {
            (1000, Some(c)) => c.name().to_string(),
            _ => format!("class {i}"),
        })
        .collect()
}

/// The `top_k` classes of one image: (index, probability, name), most probable first.
pub fn classify(
    model: &LoadedModel,
    names: &[String],
    transform: &ClassifyTransform,
    image: &r38_data::image::RgbImage,
    device: &candle_core::Device,
    top_k: usize,
) -> Result<Vec<(usize, f32, String)>> {
    let x = transform.apply(image, device).context("preprocessing")?;
    let logits = model.network.forward(&x)?;
    let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
        .squeeze(0)?
        .to_vec1()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(order
        .into_iter()
        .take(top_k)
        .map(|i| {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}"));
            (i, probs[i], name)
        })
        .collect())
}
