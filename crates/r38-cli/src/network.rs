//! From the user's flags to library calls: every flag maps onto an [`r38::LoadOptions`] field.

use anyhow::Result;
use r38::model::{Arch, PoolPadding};
use r38::{Engine, HeadChoice, LoadOptions, Overrides, Pretrained};
use std::path::Path;

pub use r38::output::check_overwrite;
pub use r38::pretrained::{device, parse_dtype, parse_pool_style};

/// Which head to run, as `--head` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadArg {
    /// Class logits (N, C).
    Cls,
    /// Score maps (N, C, h, w).
    Seg,
    /// Backbone features (relu7).
    None,
}

impl From<HeadArg> for HeadChoice {
    fn from(h: HeadArg) -> Self {
        match h {
            HeadArg::Cls => HeadChoice::Classifier,
            HeadArg::Seg => HeadChoice::Segmentation,
            HeadArg::None => HeadChoice::Features,
        }
    }
}

/// How the network is chosen; every field may be left to the file.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Weight file: MXNet .params, PyTorch .pth (zip) or safetensors; or
    /// hf://OWNER/REPO/FILE[@REVISION] from the Hugging Face Hub (see docs/hub.md).
    #[arg(long)]
    pub weights: std::path::PathBuf,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}

/// Architecture, output stride, pooling, device and engine instead of the file's or the
/// defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct OverrideArgs {
    /// Architecture: a (max-pool), a1 (strided units), a2 (hybrid). Default: the file's
    /// metadata, else the released-file table, else a1.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Output stride 8, 16 or 32. Default: the file's metadata, else 8 with a segmentation
    /// head and 32 otherwise.
    #[arg(long)]
    pub output_stride: Option<usize>,
    /// Model A's pooling: `same` (pad 1) or `caffe` (pad 0, the published Model A numbers).
    #[arg(long, value_parser = parse_pool_style)]
    pub pool_style: Option<PoolPadding>,
    /// Compute device: cpu, cuda[:N] (feature `cuda`) or metal (feature `metal`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Convolution path on the CPU: fast (r38's kernels), gemm or exact (candle's own).
    /// Default: `R38_ENGINE`, else fast.
    #[arg(long, env = "R38_ENGINE", default_value = "fast")]
    pub engine: Engine,
    /// Float type of the weights and activations: f32, or f16 / bf16 on a GPU (half the
    /// memory; on the CPU they run candle's slow generic kernels).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
    /// Keep the 3x3 convolutions' Winograd kernel transforms across passes (fast engine):
    /// faster scales, flips and images, for 1.8x-4x the 3x3 weights' memory.
    #[arg(long)]
    pub keep_kernels: bool,
}

impl OverrideArgs {
    /// The library's load options for `head`.
    pub fn options(&self, head: HeadChoice) -> Result<LoadOptions> {
        Ok(LoadOptions {
            device: device(&self.device)?,
            engine: self.engine,
            head,
            overrides: Overrides {
                arch: self.arch,
                output_stride: self.output_stride,
                pool_padding: self.pool_style,
            },
            dtype: self.dtype,
            keep_kernels: self.keep_kernels,
        })
    }
}

/// Load `weights` with the user's overrides.
pub fn load_with(weights: &Path, overrides: &OverrideArgs, head: HeadChoice) -> Result<Pretrained> {
    Ok(Pretrained::load_with(weights, &overrides.options(head)?)?)
}

/// Load `args.weights` with the head `head` asks for (default: the file's own).
pub fn load(args: &ModelArgs, head: HeadChoice) -> Result<Pretrained> {
    load_with(&args.weights, &args.overrides, head)
}

/// Write `path` through an exclusive temporary file renamed into place
/// ([`r38::output::write_atomically`]).
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    r38::output::write_atomically(path, |tmp| {
        // A writer's own error may name only the temporary (candle's `write_npy`): name the
        // output, unless the message already does.
        let name = path.display().to_string();
        write(tmp).map_err(|e| {
            if format!("{e:#}").contains(&name) {
                e
            } else {
                e.context(format!("{name}: cannot write"))
            }
        })
    })
}
