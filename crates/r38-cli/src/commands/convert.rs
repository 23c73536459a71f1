//! `r38 convert IN OUT.safetensors`: any supported format in, safetensors with metadata out.

use crate::network::{check_overwrite, load_with, write_atomically, OverrideArgs};
use anyhow::Result;
use r38::model::weights;
use r38::HeadChoice;
use std::path::PathBuf;

/// Convert a weight file to safetensors that carries its architecture, head, preprocessing and
/// provenance, so it needs no flags afterwards.
#[derive(clap::Args)]
pub struct Args {
    /// Input weight file (.params, .pth or .safetensors), or hf://OWNER/REPO/FILE[@REVISION].
    pub input: PathBuf,
    /// Output .safetensors file.
    pub output: PathBuf,
    /// Architecture, output stride and pooling to record instead of the file's.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    check_overwrite(&args.output, args.overwrite)?;
    // Building the network checks every tensor name and shape before anything is written.
    let model = load_with(&args.input, &args.overrides, HeadChoice::File)?;
    let metadata = model.metadata().to_map();
    write_atomically(&args.output, |tmp| {
        Ok(weights::save_safetensors(
            tmp,
            &model.file().tensors,
            &metadata,
        )?)
    })?;
    let (model, file) = (model.metadata(), model.file());
    println!(
        "wrote {} ({} tensors, Model {} at output stride {}, head {:?}{})",
        args.output.display(),
        file.tensors.len(),
        model.arch.to_string().to_uppercase(),
        model.output_stride,
        model.head,
        match &model.released {
            Some(r) => format!(", released file {r}"),
            None => String::new(),
        }
    );
    Ok(())
}
