//! Peak memory of `r38 segment` with a full-size A1 s8 + "2 conv" network (random weights):
//! a VOC-size image (canvas 504x504) and a Cityscapes frame (2048x1024) in one pass and with
//! `--max-canvas` tiling.

use crate::{option, root, run_command, target_dir};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use r38_model::BackboneConfig;
use r38_seg::{HeadConfig, SegmentationNet};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub fn run(args: &[String]) -> Result<()> {
    let dir = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join("bench-memory"));
    let only = option(args, "--only");
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
    let voc = dir.join("voc_500x375.png");
    let city = dir.join("cityscapes_2048x1024.png");
    write_image(&voc, 500, 375)?;
    write_image(&city, 2048, 1024)?;

    let cases: [(&str, &Path, &[&str]); 3] = [
        (
            "voc 500x375 (canvas 504x504)",
            &voc,
            &["--dataset", "voc", "--no-flip"],
        ),
        (
            "cityscapes 2048x1024, one pass",
            &city,
            &[
                "--dataset",
                "cityscapes",
                "--no-flip",
                "--max-canvas",
                "none",
            ],
        ),
        (
            "cityscapes 2048x1024, --max-canvas 262144 (512x512 tiles)",
            &city,
            &[
                "--dataset",
                "cityscapes",
                "--no-flip",
                "--max-canvas",
                "262144",
            ],
        ),
    ];
    println!("| case | wall time | peak RSS |\n|---|---|---|");
    for (name, image, extra) in cases {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let mut cmd = Command::new(target_dir().join("release/r38"));
        cmd.arg("segment")
            .arg("--weights")
            .arg(&weights)
            .arg(image)
            .arg("--out-dir")
            .arg(dir.join("out"))
            .arg("--overwrite")
            .args(extra);
        measured_row(name, &mut cmd)?;
    }
    Ok(())
}

/// Runs `cmd` (an `r38` command) and prints a table row `| name | wall time | peak RSS |`; a
/// failed run (e.g. killed for memory) is a row with the reason, not an error.
pub(crate) fn measured_row(name: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    let out = cmd.env("R38_REPORT_PEAK_RSS", "1").output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // A single pass over a whole Cityscapes frame can exceed the machine's memory.
        use std::os::unix::process::ExitStatusExt;
        let why = match out.status.signal() {
            Some(9) => "killed (SIGKILL: out of memory)".to_string(),
            _ => format!("failed: {}", stderr.lines().last().unwrap_or("")),
        };
        println!("| {name} | {seconds:.1} s | {why} |");
        return Ok(());
    }
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("r38: peak RSS "))
        .context("r38 did not report its peak RSS")?;
    println!("| {name} | {seconds:.1} s | {rss} |");
    Ok(())
}

pub(crate) fn write_random_network(path: &Path) -> Result<()> {
    let config = BackboneConfig::model_a1(8)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    SegmentationNet::new(&config, HeadConfig::two_conv(21), &vb)?;
    let tensors: BTreeMap<_, _> = varmap
        .data()
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    r38_model::weights::save_safetensors(path, &tensors, &BTreeMap::new())?;
    Ok(())
}

pub(crate) fn write_image(path: &Path, width: u32, height: u32) -> Result<()> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    img.save(path)?;
    Ok(())
}
