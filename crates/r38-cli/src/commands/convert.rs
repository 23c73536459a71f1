//! `r38 convert IN OUT.safetensors`: any supported format in, safetensors with metadata out.

use crate::network::{load, write_atomically, ModelArgs};
use anyhow::Result;
use r38_model::weights;
use std::path::PathBuf;

/// Convert a weight file to safetensors that carries its architecture, head, preprocessing and
/// provenance, so it needs no flags afterwards.
#[derive(clap::Args)]
pub struct Args {
    /// Input weight file (.params, .pth or .safetensors), or hf://OWNER/REPO/FILE[@REVISION].
    pub input: PathBuf,
    /// Output .safetensors file.
    pub output: PathBuf,
    /// Architecture (a, a1, a2); default: the file's metadata or the released-file table, else a1.
    #[arg(long)]
    pub arch: Option<r38_model::Arch>,
    /// Output stride (8, 16, 32) recorded in the file.
    #[arg(long)]
    pub output_stride: Option<usize>,
    /// Model A's pooling recorded in the file: same (pad 1) or caffe (pad 0).
    #[arg(long, value_parser = crate::network::parse_pool_style)]
    pub pool_style: Option<r38_model::PoolPadding>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    crate::network::check_overwrite(&args.output, args.overwrite)?;
    let model_args = ModelArgs {
        weights: args.input.clone(),
        arch: args.arch,
        output_stride: args.output_stride,
        pool_style: args.pool_style,
        device: "cpu".into(),
    };
    // Building the network checks every tensor name and shape before anything is written.
    let model = load(&model_args, None)?;
    let metadata = model.metadata.to_map();
    write_atomically(&args.output, |tmp| {
        Ok(weights::save_safetensors(
            tmp,
            &model.file.tensors,
            &metadata,
        )?)
    })?;
    println!(
        "wrote {} ({} tensors, Model {} at output stride {}, head {:?}{})",
        args.output.display(),
        model.file.tensors.len(),
        model.metadata.arch.to_string().to_uppercase(),
        model.metadata.output_stride,
        model.metadata.head,
        match &model.metadata.released {
            Some(r) => format!(", released file {r}"),
            None => String::new(),
        }
    );
    Ok(())
}
