//! `r38 forward`: one forward pass on a normalised NCHW array.

use crate::network::{check_overwrite, load, write_atomically, HeadArg, ModelArgs};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::PathBuf;

/// Run the network on IN.npy (float32 NCHW, already normalised) and write OUT.npy: logits
/// (N, C), score maps (N, C, h, w) or relu7 features.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// cls, seg or none (backbone features). Default: the file's head.
    #[arg(long, value_enum)]
    pub head: Option<HeadArg>,
    /// Input array: float32 (N, 3, H, W), normalised with the ImageNet mean/std.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy file.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Refuse inputs taller or wider than this, from the .npy header, before reading them.
    #[arg(long, default_value_t = r38::data::npy::NchwLimits::DEFAULT.max_side)]
    pub max_input_side: usize,
    /// Refuse inputs of more pixels (N x H x W) than this, from the header.
    #[arg(long, default_value_t = r38::data::npy::NchwLimits::DEFAULT.max_pixels)]
    pub max_input_pixels: usize,
}

pub fn run(args: Args) -> Result<()> {
    check_overwrite(&args.output, args.overwrite)?;
    let limits = r38::data::npy::NchwLimits {
        max_side: args.max_input_side,
        max_pixels: args.max_input_pixels,
    };
    let x = r38::data::npy::read_nchw_input(&args.input, &limits)?;
    let dims = x.dims().to_vec();
    if dims.len() != 4 || dims[1] != 3 || dims.contains(&0) {
        bail!(
            "{}: expected a non-empty (N, 3, H, W) array, found shape {dims:?}",
            args.input.display()
        );
    }
    if !matches!(
        x.dtype(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16
    ) {
        bail!(
            "{}: expected float32, found {:?}",
            args.input.display(),
            x.dtype()
        );
    }
    let model = load(&args.model, args.head.map(Into::into).unwrap_or_default())?;
    let x = x.to_dtype(DType::F32)?;
    let y = model
        .forward(&x)
        .with_context(|| format!("forward pass on {} (shape {dims:?})", args.input.display()))?
        .to_device(&candle_core::Device::Cpu)?;
    write_atomically(&args.output, |tmp| {
        y.write_npy(tmp)
            .with_context(|| format!("{}: cannot write", args.output.display()))
    })?;
    eprintln!("wrote {} with shape {:?}", args.output.display(), y.dims());
    Ok(())
}
