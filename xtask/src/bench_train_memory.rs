//! Peak memory and time of one training step of the full-size A1 s8 + "2 conv" network on a
//! 504x504 crop (batch 1), through `r38 train-seg`, with and without `--recompute`.

use crate::bench_memory::{measured_row, write_image, write_random_network};
use crate::{option, root, run_command, target_dir};
use anyhow::Result;
use r38_data::datasets::{voc_colormap, write_label_png};
use r38_data::LabelMap;
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    let dir = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join("bench-memory"));
    let steps = option(args, "--steps").unwrap_or_else(|| "1".into());
    std::fs::create_dir_all(&dir)?;
    run_command(
        Command::new("cargo")
            .args(["build", "--release", "-p", "r38-cli"])
            .current_dir(root()),
    )?;
    let weights = dir.join("a1_s8_voc21_random.safetensors");
    if !weights.exists() {
        write_random_network(&weights)?;
    }
    // A two-image VOC tree: 500x375 photos-to-be, each half background, half "person".
    let voc = dir.join("voc-tree");
    for id in ["2007_000001", "2007_000002"] {
        std::fs::create_dir_all(voc.join("JPEGImages"))?;
        std::fs::create_dir_all(voc.join("SegmentationClass"))?;
        write_image(&voc.join(format!("JPEGImages/{id}.jpg")), 500, 375)?;
        let labels = (0..375u32 * 500)
            .map(|i| if i % 500 < 250 { 0 } else { 15 })
            .collect();
        write_label_png(
            voc.join(format!("SegmentationClass/{id}.png")),
            &LabelMap::new(500, 375, labels)?,
            Some(&voc_colormap()),
        )?;
    }
    std::fs::create_dir_all(voc.join("ImageSets/Segmentation"))?;
    for split in ["train", "val"] {
        std::fs::write(
            voc.join(format!("ImageSets/Segmentation/{split}.txt")),
            "2007_000001\n2007_000002\n",
        )?;
    }
    println!("| training step, A1 s8 + 2 conv, crop 504x504, batch 1 | wall time | peak RSS |");
    println!("|---|---|---|");
    for recompute in [false, true] {
        let mut cmd = Command::new(target_dir().join("release/r38"));
        cmd.arg("train-seg")
            .args(["--dataset", "voc", "--root"])
            .arg(&voc)
            .arg("--init")
            .arg(&weights)
            .arg("--out")
            .arg(dir.join("train-step"))
            .args(["--overwrite", "--no-val", "--workers", "1"])
            .args(["--batch-size", "1", "--accumulate", "1", "--steps", &steps]);
        if recompute {
            cmd.arg("--recompute");
        }
        let name = if recompute {
            "with --recompute"
        } else {
            "activations kept"
        };
        measured_row(name, &mut cmd)?;
    }
    Ok(())
}
