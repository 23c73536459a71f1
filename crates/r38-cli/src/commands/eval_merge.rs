//! `r38 eval-merge`: the whole split's metrics from the `--json` reports of `r38 eval --shard`
//! runs ([`r38::SegEvaluation::merge`]); the confusion matrices add up, so the result is the
//! unsharded evaluation's, bit for bit.

use super::eval::print_segmentation;
use crate::network::{check_overwrite, write_atomically};
use anyhow::{Context, Result};
use r38::SegEvaluation;
use std::path::PathBuf;

/// Merge the JSON reports of every shard of one segmentation evaluation.
#[derive(clap::Args)]
pub struct Args {
    /// The shards' `r38 eval --shard I/N --json` reports, one per shard.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Also write the merged report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace an existing --json report.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(json) = &args.json {
        check_overwrite(json, args.overwrite)?;
    }
    let mut parts = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let part: SegEvaluation = serde_json::from_str(&text).with_context(|| {
            format!("{}: not an `r38 eval` segmentation report", path.display())
        })?;
        parts.push(part);
    }
    let names: Vec<String> = parts[0]
        .metrics
        .classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let merged = SegEvaluation::merge(&parts, Some(&names))?;
    print_segmentation(&merged);
    if let Some(json) = &args.json {
        write_atomically(json, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(&merged)?)?)
        })?;
    }
    Ok(())
}
