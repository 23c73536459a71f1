//! `r38 classify`: the file's test transform on image files ([`r38::Pretrained::classify`]).

use crate::network::{load, ModelArgs};
use anyhow::{Context, Result};
use r38::data::{ImageLoader, Interpolation};
use r38::HeadChoice;
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
    #[arg(long, default_value_t = r38::data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    let model = load(&args.model, HeadChoice::Classifier)?;
    let mut transform = model.classify_transform();
    if let Some(scale) = args.scale {
        (transform.scale, transform.crop) = (scale, scale);
    }
    if args.adaptive_interpolation {
        transform.interpolation = Interpolation::from_choose_interp(true);
    }
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    for path in &args.images {
        let image = loader.load_rgb8(path)?;
        let top = model
            .classify_with(&image, &transform)
            .with_context(|| format!("{}", path.display()))?;
        let top = &top[..args.top_k.min(top.len())];
        if args.json {
            println!("{}", serde_json::json!({"image": path, "top": top}));
        } else {
            println!("{}", path.display());
            for (rank, c) in top.iter().enumerate() {
                println!(
                    "  {}. {:>7.3}%  {:>4}  {}",
                    rank + 1,
                    c.probability * 100.0,
                    c.index,
                    r38::model::escape_for_terminal(&c.name)
                );
            }
        }
    }
    Ok(())
}
