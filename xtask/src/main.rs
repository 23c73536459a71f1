//! `cargo xtask <task>`: the project's full-size and reference-framework jobs, kept out of
//! `cargo test` because they need minutes, gigabytes or Python.

mod bench;
mod bench_memory;
mod bench_train_memory;
mod cuda_check;
mod demo_models;
mod fuzz;
mod gpu_check;
mod parity;
mod reference;
mod reproduce;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  setup-reference [--venv DIR]    create a Python 3.11 venv with mxnet 1.9.1 + numpy 1.23.5
                                  (default DIR: .venv-ref)
  parity [--python PY] [--out DIR] [--only CASE,...]
                                  full-size parity against MXNet: the real-width A1 classifier
                                  (1x3x224x224) and A1 s8 + 2-conv head (1x3x120x96)
  bench [r38-bench options]       forward-pass speed and peak RSS per case and level, fast vs
                                  exact engine, optionally side by side with PyTorch
                                  (--vs-torch PYTHON); see docs/performance.md
  bench-memory [--out DIR] [--only CASE]
                                  peak RSS and time of `r38 segment` (full-size random A1 s8
                                  network): 500x375, and 2048x1024 with and without --max-canvas
  bench-train-memory [--out DIR] [--steps N]
                                  peak RSS and time of one `r38 train-seg` step of the
                                  full-size A1 s8 network on a 504x504 crop, with and without
                                  --recompute
  reproduce [--imagenet DIR] [--voc DIR] [--cityscapes DIR] [--ade20k DIR]
            [--weights-dir DIR] [--weights ROW=FILE|hf://...] [--only ROW,...] [--limit N]
            [--out DIR] [--demo] [--debug] [--device cpu|cuda[:N]|metal]
            [--dtype f32|f16|bf16]
                                  the authors' published table, measured by r38's evaluation
                                  loop (the one `r38 eval` runs), in a release build:
                                  rows imagenet-a, imagenet-a1, voc, voc-coco, cityscapes,
                                  ade20k; missing data or weights skip a row; resumable;
                                  --demo: the shipped segmenter on samples/ (runs in CI);
                                  --debug: run in this build, without a release build (CI)
  train-fashion [--root DIR] [--out DIR] [--epochs N] [--resume] [--export-only] [--device D]
                                  train the shipped Fashion-MNIST classifier from scratch (real
                                  data: Debian dataset-fashion-mnist), export it to weights/ and
                                  write samples/fashion-items
  train-scenes [--root DIR] [--init FILE] [--out DIR] [--steps N] [--resume] [--export-only]
               [--device D]
                                  fine-tune the shipped classifier into the fashion-scenes
                                  segmenter (full recipe: OHEM, frozen BN, dropout; three stages,
                                  DIR/stage1..3), export it and write
                                  samples/fashion-scenes
  fuzz [--runs N] [--target params,pth,safetensors] [--sanitizer address|none] [--max-len B]
                                  libFuzzer on the weight readers (needs cargo-fuzz), N inputs
                                  per target (default 1000000), inputs up to B bytes (4096);
                                  prints the figures
  cuda-check [--compute-cap 90] [--cache DIR]
                                  build every crate's library with --features cuda on a machine
                                  without a GPU: nvcc and the CUDA headers from the NVIDIA wheels
                                  on PyPI, installed under DIR (default ~/.cache/r38/cuda);
                                  also r38-train with --features nccl
  gpu-check [--device cuda:0] [--out DIR] [--reps N] [--cases a,b] [--skip-build]
            [--toolkit DIR] [--compute-cap 90]
                                  on a machine with an NVIDIA GPU: build with --features cuda,
                                  the parity fixtures on the GPU against the CPU (f32, f16,
                                  bf16), one training step's gradients against the CPU, and the
                                  benchmark cases' times and GPU memory; see docs/gpu.md
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match task.as_str() {
        "setup-reference" => reference::setup(rest),
        "parity" => parity::run(rest),
        "bench" => bench::run(rest),
        "bench-memory" => bench_memory::run(rest),
        "bench-train-memory" => bench_train_memory::run(rest),
        "reproduce" => reproduce::run(rest),
        "train-fashion" => demo_models::train_fashion(rest),
        "train-scenes" => demo_models::train_scenes(rest),
        "fuzz" => fuzz::run(rest),
        "cuda-check" => cuda_check::run(rest),
        "gpu-check" => gpu_check::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// `--name value` from an argument list.
/// Where cargo puts its builds (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Run a command, echoing it, failing on a non-zero exit.
pub fn run_command(cmd: &mut std::process::Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}
