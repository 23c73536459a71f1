//! Metrics logs: `metrics.csv` and `metrics.jsonl`, one row per logged step.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};

/// One row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Optimizer updates done.
    pub step: usize,
    /// Fractional epoch.
    pub epoch: f64,
    /// Training loss of the update (mean over its micro-batches); NaN on validation rows
    /// (empty in the CSV, null in the JSON lines).
    pub loss: f64,
    /// Base learning rate of the update.
    pub lr: f64,
    /// Training samples per second.
    pub samples_per_s: f64,
    /// Validation metric (mIoU or top-1), on validation rows.
    pub metric: Option<f64>,
}

const HEADER: &str = "step,epoch,loss,lr,samples_per_s,metric";

/// Appends records to `<dir>/metrics.csv` and `<dir>/metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    csv: PathBuf,
    jsonl: PathBuf,
}

impl MetricsLog {
    /// Opens the logs in `dir`, dropping rows after `resume_step` (a resumed run rewrites
    /// them) or all rows when `resume_step` is `None`.
    ///
    /// Kept rows are copied verbatim (re-serialising them would not round-trip every float
    /// bit), a row cut short by a killed run is dropped, and each file is replaced through a
    /// temporary and a rename, so a kill here loses nothing.
    pub fn open(dir: &Path, resume_step: Option<usize>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = Self {
            csv: dir.join("metrics.csv"),
            jsonl: dir.join("metrics.jsonl"),
        };
        let kept = |path: &Path, header: bool, step_of: &dyn Fn(&str) -> Option<usize>| {
            let mut out = if header {
                format!("{HEADER}\n")
            } else {
                String::new()
            };
            if let Some(s) = resume_step {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for line in text.split_inclusive('\n').skip(usize::from(header)) {
                    if line.ends_with('\n') && step_of(line).is_some_and(|step| step <= s) {
                        out.push_str(line);
                    }
                }
            }
            out
        };
        let csv = kept(&log.csv, true, &|l| l.split(',').next()?.parse().ok());
        let jsonl = kept(&log.jsonl, false, &|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            usize::try_from(v.get("step")?.as_u64()?).ok()
        });
        crate::checkpoint::write_file_atomically(&log.csv, csv.as_bytes())?;
        crate::checkpoint::write_file_atomically(&log.jsonl, jsonl.as_bytes())?;
        Ok(log)
    }

    /// Appends one record.
    pub fn append(&self, r: &Record) -> Result<()> {
        let mut csv = std::fs::OpenOptions::new().append(true).open(&self.csv)?;
        let metric = r.metric.map(|m| m.to_string()).unwrap_or_default();
        let loss = if r.loss.is_finite() {
            r.loss.to_string()
        } else {
            String::new()
        };
        // One write per row: a kill between writes cannot cut a row in two.
        csv.write_all(
            format!(
                "{},{},{},{},{},{}\n",
                r.step, r.epoch, loss, r.lr, r.samples_per_s, metric
            )
            .as_bytes(),
        )?;
        let mut js = std::fs::OpenOptions::new().append(true).open(&self.jsonl)?;
        // JSON has no NaN: validation rows carry a null loss.
        let mut v = serde_json::to_value(r)?;
        if !r.loss.is_finite() {
            v["loss"] = serde_json::Value::Null;
        }
        js.write_all(format!("{v}\n").as_bytes())?;
        Ok(())
    }

    /// Every record in the JSON-lines log.
    pub fn records(&self) -> Result<Vec<Record>> {
        read_records(&self.jsonl)
    }

    /// The JSON-lines path.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl
    }
}

/// Reads a `metrics.jsonl` file.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l)?;
            if v["loss"].is_null() {
                v["loss"] = serde_json::Value::from(0.0);
                let mut r: Record = serde_json::from_value(v)?;
                r.loss = f64::NAN;
                return Ok(r);
            }
            Ok(serde_json::from_value(v)?)
        })
        .collect()
}
