//! `r38 classify`: the authors' ImageNet test protocol on image files.

use crate::network::{load, HeadChoice, ModelArgs};
use anyhow::{Context, Result};
use candle_core::D;
use r38_data::{imagenet_class, ClassifyTransform, ImageLoader, Interpolation};
use std::path::PathBuf;

/// Classify images: RGB, shorter side 320 (bicubic), centre crop 320, ImageNet mean/std.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Test scale (shorter side) and crop.
    #[arg(long, default_value_t = 320)]
    pub scale: u32,
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
    let classes = model.metadata.head.classes().unwrap_or(0);
    let device = crate::network::device(&args.model.device)?;
    let transform = ClassifyTransform {
        scale: args.scale,
        crop: args.scale,
        interpolation: Interpolation::from_choose_interp(args.adaptive_interpolation),
        ..ClassifyTransform::default()
    };
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    for path in &args.images {
        let image = loader.load_rgb8(path)?;
        let x = transform
            .apply(&image, &device)
            .with_context(|| format!("{}: preprocessing", path.display()))?;
        let logits = model.network.forward(&x)?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top: Vec<(usize, f32, String)> = order
            .into_iter()
            .take(args.top_k)
            .map(|i| {
                let name = match (classes, imagenet_class(i)) {
                    (1000, Some(c)) => c.name().to_string(),
                    _ => format!("class {i}"),
                };
                (i, probs[i], name)
            })
            .collect();
        if args.json {
            let entries: Vec<_> = top
                .iter()
                .map(|(i, p, n)| serde_json::json!({"index": i, "probability": p, "name": n}))
                .collect();
            println!("{}", serde_json::json!({"image": path, "top": entries}));
        } else {
            println!("{}", path.display());
            for (rank, (i, p, n)) in top.iter().enumerate() {
                println!("  {}. {:>7.3}%  {:>4}  {}", rank + 1, p * 100.0, i, n);
            }
        }
    }
    Ok(())
}
