//! `r38-device-check`: a GPU against the CPU ([`r38_bench::device_check`]); prints Markdown
//! tables, writes them as JSON with `--json`, and exits with 1 when an f32 check fails.

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;
use r38::pretrained::{device, parse_dtype};
use r38_bench::device_check::{gradients, parity};

#[derive(Debug, Parser)]
#[command(about = "The MXNet parity fixtures and a training step on a device, against the CPU")]
struct Args {
    /// `cpu`, `cuda[:N]` or `metal`.
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// Dtypes of the parity runs, comma-separated (bf16 needs a GPU).
    #[arg(long, default_value = "f32,f16,bf16")]
    dtypes: String,
    /// Width divisor of the training-step network (at 4 and below the random network's
    /// softmax saturates and rounding alone moves gradients by 1e-3).
    #[arg(long, default_value_t = 8)]
    narrow: usize,
    /// Crop size of the training step.
    #[arg(long, default_value_t = 224)]
    crop: usize,
    /// Write the results here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = device(&args.device)?;
    let mut rows = Vec::new();
    for name in args.dtypes.split(',') {
        let dtype = parse_dtype(name).map_err(|e| anyhow::anyhow!("--dtypes: {e}"))?;
        if dtype == DType::BF16 && dev.is_cpu() {
            eprintln!("bf16 skipped: candle's CPU matrix products have no bf16");
            continue;
        }
        rows.extend(parity(&dev, dtype)?);
    }
    println!(
        "## Parity fixtures on {} against the CPU (fast engine, f32) and MXNet\n",
        args.device
    );
    println!("| case | dtype | vs CPU | vs MXNet | argmax agreement | f32 check |");
    println!("|---|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2e} | {:.2e} | {} | {} |",
            r.case,
            r.dtype,
            r.vs_cpu,
            r.vs_mxnet,
            r.argmax_agreement
                .map_or("-".into(), |a| format!("{:.3}%", 100.0 * a)),
            match r.passed {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "reported",
            }
        );
    }
    let step = gradients(&dev, args.narrow, args.crop)?;
    println!("\n## One training step: {}\n", step.network);
    println!(
        "loss CPU {:.6}, device {:.6}; {} gradients, worst relative difference {:.2e} ({}): {}",
        step.loss_cpu,
        step.loss_device,
        step.compared,
        step.worst,
        step.worst_parameter,
        if step.passed { "ok" } else { "FAILED" }
    );
    if let Some(path) = &args.json {
        let report =
            serde_json::json!({ "device": args.device, "parity": rows, "training_step": step });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if !step.passed || rows.iter().any(|r| r.passed == Some(false)) {
        std::process::exit(1);
    }
    Ok(())
}
