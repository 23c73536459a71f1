//! `cargo xtask reproduce`: the authors' published table (reference §8.1), measured here.
//!
//! Every row is one of the authors' released files (`weights/released.json`) evaluated on its
//! benchmark with the published protocol, by the library's evaluation loop
//! ([`r38::evaluate_segmentation`], the one `r38 eval` runs). The table prints the published
//! figure, the measured one and the difference, and is written as `report.md` and
//! `report.json`. A row whose dataset or weight file is missing is skipped with the reason.
//! Rows resume: each prediction is cached, and a finished row's JSON is reused.
//! `--demo` runs the same machinery on the shipped fashion-scenes segmenter and samples.

use crate::{option, root, target_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One published configuration.
struct Row {
    id: String,
    /// A weight file name (looked up in `--weights-dir`), a path, or an hf:// name.
    weights: String,
    dataset: &'static str,
    /// The command-line option that names the dataset root.
    root_option: &'static str,
    /// (metric, published value, how to read it from `r38 eval --json`).
    metrics: Vec<(String, f64, Measure)>,
    protocol: String,
}

#[derive(Clone, Copy)]
enum Measure {
    Top1Error,
    Top5Error,
    MeanIou,
    PixelAccuracy,
}

impl Measure {
    fn read(self, report: &serde_json::Value) -> Option<f64> {
        let pct = |v: &serde_json::Value| v.as_f64().map(|x| 100.0 * x);
        match self {
            Measure::Top1Error => report["top1_error"].as_f64(),
            Measure::Top5Error => report["top5_error"].as_f64(),
            Measure::MeanIou => pct(&report["metrics"]["mean_iou"]),
            Measure::PixelAccuracy => pct(&report["metrics"]["pixel_accuracy"]),
        }
    }

    fn of(metric: &str) -> Option<Measure> {
        Some(match metric {
            "top-1 error %" => Measure::Top1Error,
            "top-5 error %" => Measure::Top5Error,
            "mIoU %" => Measure::MeanIou,
            "pixel accuracy %" => Measure::PixelAccuracy,
            _ => return None,
        })
    }
}

/// The rows of the authors' released files.
fn published_rows() -> Vec<Row> {
    r38_model::weights::released::released_files()
        .iter()
        .map(|f| {
            let name = &f.file_name;
            let (id, dataset, root_option) = if name.starts_with("ilsvrc") {
                let arch = format!("{:?}", f.arch).to_lowercase();
                (format!("imagenet-{arch}"), "imagenet", "--imagenet")
            } else if name.starts_with("voc") {
                let id = if name.contains("coco") {
                    "voc-coco"
                } else {
                    "voc"
                };
                (id.to_string(), "voc", "--voc")
            } else if name.starts_with("cityscapes") {
                ("cityscapes".into(), "cityscapes", "--cityscapes")
            } else {
                ("ade20k".into(), "ade20k", "--ade20k")
            };
            Row {
                id,
                weights: name.clone(),
                dataset,
                root_option,
                metrics: f
                    .results
                    .iter()
                    .filter_map(|r| Some((r.metric.clone(), r.value, Measure::of(&r.metric)?)))
                    .collect(),
                protocol: f
                    .results
                    .first()
                    .map(|r| r.protocol.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The shipped segmenter on the shipped scenes; its reference is its own held-out figure.
fn demo_rows() -> Result<Vec<Row>> {
    let weights = root().join(crate::demo_models::SEGMENTER);
    let file = r38_model::weights::load(&weights)
        .with_context(|| format!("{}: the shipped segmenter", weights.display()))?;
    let recorded: f64 = file
        .metadata
        .get("r38.held_out_miou")
        .and_then(|v| v.parse().ok())
        .context("the shipped segmenter records no r38.held_out_miou")?;
    Ok(vec![Row {
        id: "demo-scenes".into(),
        weights: weights.display().to_string(),
        dataset: "fashion-scenes",
        root_option: "--scenes",
        metrics: vec![("mIoU %".into(), 100.0 * recorded, Measure::MeanIou)],
        protocol: "8 shipped held-out scenes (samples/fashion-scenes); reference: the file's own \
                   mIoU on 500 held-out scenes (r38.held_out_miou)"
            .into(),
    }])
}

struct Outcome {
    row: Row,
    /// Measured values, in the order of `row.metrics`, or why the row was skipped.
    measured: std::result::Result<Vec<Option<f64>>, String>,
}

pub fn run(args: &[String]) -> Result<()> {
    if cfg!(debug_assertions) && !args.iter().any(|a| a == "--debug") {
        // Full-size networks over whole splits want the optimised build of the same loop.
        let mut release = std::process::Command::new(env!("CARGO"));
        release
            .args([
                "run",
                "--quiet",
                "--release",
                "--package",
                "xtask",
                "--",
                "reproduce",
            ])
            .args(args)
            .arg("--debug")
            .current_dir(root());
        return crate::run_command(&mut release);
    }
    let demo = args.iter().any(|a| a == "--demo");
    let out: PathBuf = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join(if demo { "reproduce-demo" } else { "reproduce" }));
    let limit_arg = option(args, "--limit");
    let limit: Option<usize> = limit_arg
        .as_deref()
        .map(|n| n.parse().with_context(|| format!("--limit {n}")))
        .transpose()?;
    let only: Option<Vec<String>> =
        option(args, "--only").map(|o| o.split(',').map(str::to_string).collect());
    let weights_dir = option(args, "--weights-dir").map(PathBuf::from);
    let mut rows = if demo { demo_rows()? } else { published_rows() };
    if let Some(only) = &only {
        let known: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        if let Some(bad) = only.iter().find(|o| !known.contains(o)) {
            bail!("--only {bad}: not a row (rows: {})", known.join(", "));
        }
        rows.retain(|r| only.contains(&r.id));
    }
    std::fs::create_dir_all(out.join("rows"))?;

    let total = rows.len();
    let mut outcomes = Vec::new();
    for (n, row) in rows.into_iter().enumerate() {
        eprintln!("[{}/{total}] {} ({})", n + 1, row.id, row.weights);
        let measured = run_row(&row, args, demo, &weights_dir, &out, limit);
        if let Err(why) = &measured {
            eprintln!("  skipped: {why}");
        }
        outcomes.push(Outcome { row, measured });
    }
    let (md, json) = report(&outcomes, limit_arg.as_deref());
    println!("{md}");
    use r38_data::output::write_bytes_atomically;
    write_bytes_atomically(&out.join("report.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(&json)?;
    write_bytes_atomically(&out.join("report.json"), json.as_bytes())?;
    println!("wrote {} and report.json", out.join("report.md").display());
    Ok(())
}

/// Runs (or reuses) one row's evaluation through the library's evaluation loop (the one
/// `r38 eval` runs); `Err` is the reason it was skipped.
fn run_row(
    row: &Row,
    args: &[String],
    demo: bool,
    weights_dir: &Option<PathBuf>,
    out: &Path,
    limit: Option<usize>,
) -> std::result::Result<Vec<Option<f64>>, String> {
    let dataset_root: PathBuf = if demo {
        root().join("samples/fashion-scenes")
    } else {
        option(args, row.root_option)
            .map(PathBuf::from)
            .ok_or_else(|| format!("no dataset: pass {} DIR", row.root_option))?
    };
    if !dataset_root.exists() {
        return Err(format!("{}: does not exist", dataset_root.display()));
    }
    let weights = resolve_weights(row, args, weights_dir)?;
    let json = out.join("rows").join(format!("{}.json", row.id));
    let stamp = out.join("rows").join(format!("{}.args", row.id));
    // Cached predictions and finished rows belong to one weight file: a re-exported or
    // replaced file under the same name must not reuse them.
    let weights_key = match option(args, "--dtype").filter(|d| d != "f32") {
        // Half precision predicts differently: its own cache and row.
        Some(dtype) => format!("{}-{dtype}", weights_fingerprint(&weights)),
        None => weights_fingerprint(&weights),
    };
    let cache_dir = out.join("cache").join(format!("{}-{weights_key}", row.id));
    // A finished row is reused when it ran with the same inputs (weights included).
    let signature = format!(
        "{weights} {weights_key} {} {} {limit:?}",
        row.dataset,
        dataset_root.display()
    );
    let finished = json.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == signature);
    let report = if finished {
        eprintln!("  reusing {}", json.display());
        std::fs::read_to_string(&json)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))?
    } else {
        let report = evaluate(args, row, &weights, &dataset_root, &cache_dir, limit)
            .map_err(|e| format!("{e:#}"))?;
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        r38::output::write_bytes_atomically(&json, text.as_bytes()).map_err(|e| e.to_string())?;
        r38::output::write_bytes_atomically(&stamp, signature.as_bytes())
            .map_err(|e| e.to_string())?;
        report
    };
    Ok(row
        .metrics
        .iter()
        .map(|(_, _, m)| m.read(&report))
        .collect())
}

/// One row's evaluation with its benchmark's published protocol, as `r38 eval` runs it.
fn evaluate(
    args: &[String],
    row: &Row,
    weights: &str,
    dataset_root: &Path,
    cache_dir: &Path,
    limit: Option<usize>,
) -> Result<serde_json::Value> {
    let options = r38::EvalOptions {
        limit,
        cache_dir: Some(cache_dir.to_path_buf()),
        ..Default::default()
    };
    let mut progress = |event: r38::EvalEvent| match event {
        r38::EvalEvent::Start { total } => eprintln!("  {total} samples"),
        r38::EvalEvent::Failed { message } => eprintln!("  error: {message}"),
        r38::EvalEvent::Sample { .. } => {}
    };
    let load_options = r38::LoadOptions {
        dtype: match option(args, "--dtype") {
            Some(d) => r38::pretrained::parse_dtype(&d).map_err(anyhow::Error::msg)?,
            None => r38::DType::F32,
        },
        ..r38::LoadOptions::on(&r38::pretrained::device(
            &option(args, "--device").unwrap_or_else(|| "cpu".into()),
        )?)
    };
    if row.dataset == "imagenet" {
        let model = r38::Pretrained::load_with(weights, &load_options)?;
        let val = r38::data::datasets::ImageNetVal::open(dataset_root)?;
        let result = r38::evaluate_imagenet(
            &model,
            &val,
            &Default::default(),
            &r38::data::ImageLoader::new(),
            &options,
            &mut progress,
        )?;
        return Ok(serde_json::to_value(result)?);
    }
    let kind: r38::data::DatasetKind = row
        .dataset
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", row.dataset))?;
    let model = r38::Pretrained::load_with(weights, &load_options)?;
    let dataset = r38::data::SegDataset::open(kind, dataset_root, "val")?;
    let protocol = r38::evaluation::dataset_protocol(kind, &model);
    let result =
        r38::evaluate_segmentation(&[model], &dataset, &protocol, None, &options, &mut progress)?;
    Ok(serde_json::to_value(result)?)
}

/// A short key for the weights: a local file's size and modification time, else the spec
/// itself (an `hf://` name; r38 resolves and verifies it).
fn weights_fingerprint(spec: &str) -> String {
    let identity = match std::fs::metadata(spec) {
        Ok(m) => {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{spec} {} {modified}", m.len())
        }
        Err(_) => spec.to_string(),
    };
    // FNV-1a, 64 bits: a directory name, not a security boundary.
    let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// `--weights ROW=SPEC` (a path or hf:// name), else `--weights-dir/<file name>`.
fn resolve_weights(
    row: &Row,
    args: &[String],
    weights_dir: &Option<PathBuf>,
) -> std::result::Result<String, String> {
    let prefix = format!("{}=", row.id);
    let explicit = args
        .windows(2)
        .filter(|w| w[0] == "--weights")
        .find_map(|w| w[1].strip_prefix(&prefix).map(str::to_string));
    if let Some(spec) = explicit {
        if spec.starts_with("hf://") || Path::new(&spec).exists() {
            return Ok(spec);
        }
        return Err(format!("{spec}: no such weight file"));
    }
    let path = Path::new(&row.weights);
    if path.is_absolute() {
        return if path.exists() {
            Ok(row.weights.clone())
        } else {
            Err(format!("{}: no such weight file", path.display()))
        };
    }
    let dir = weights_dir.as_ref().ok_or_else(|| {
        format!(
            "no weights: pass --weights-dir DIR (holding {}) or --weights {}=FILE",
            row.weights, row.id
        )
    })?;
    let file = dir.join(&row.weights);
    if file.exists() {
        Ok(file.display().to_string())
    } else {
        Err(format!("{}: no such weight file", file.display()))
    }
}

fn report(outcomes: &[Outcome], limit: Option<&str>) -> (String, serde_json::Value) {
    let mut md = String::from("# Reproduction of the published results\n\n");
    if let Some(n) = limit {
        md.push_str(&format!(
            "A sample: the first {n} images of each split (`--limit {n}`).\n\n"
        ));
    }
    md.push_str("| row | metric | published | measured | difference | protocol |\n|---|---|---:|---:|---:|---|\n");
    let mut rows = Vec::new();
    for o in outcomes {
        match &o.measured {
            Ok(values) => {
                for ((metric, published, _), value) in o.row.metrics.iter().zip(values) {
                    let (m, d) = match value {
                        Some(v) => (format!("{v:.2}"), format!("{:+.2}", v - published)),
                        None => ("?".into(), "?".into()),
                    };
                    md.push_str(&format!(
                        "| {} | {metric} | {published:.2} | {m} | {d} | {} |\n",
                        o.row.id, o.row.protocol
                    ));
                    rows.push(serde_json::json!({
                        "row": o.row.id, "weights": o.row.weights, "metric": metric,
                        "published": published, "measured": value,
                        "difference": value.map(|v| v - published), "protocol": o.row.protocol,
                    }));
                }
            }
            Err(why) => {
                md.push_str(&format!(
                    "| {} | – | {} | skipped | – | {why} |\n",
                    o.row.id,
                    o.row
                        .metrics
                        .iter()
                        .map(|(m, v, _)| format!("{m} {v:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                rows.push(
                    serde_json::json!({"row": o.row.id, "weights": o.row.weights, "skipped": why}),
                );
            }
        }
    }
    (md, serde_json::json!({ "limit": limit, "rows": rows }))
}

#[cfg(test)]
mod tests {
    use super::weights_fingerprint;

    #[test]
    fn a_replaced_weight_file_gets_a_new_fingerprint() {
        let path = std::env::temp_dir().join(format!(
            "r38-fingerprint-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, b"first").unwrap();
        let spec = path.to_str().unwrap();
        let first = weights_fingerprint(spec);
        assert_eq!(first, weights_fingerprint(spec));
        std::fs::write(&path, b"second, longer").unwrap();
        assert_ne!(first, weights_fingerprint(spec));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(weights_fingerprint("hf://org/repo/f.safetensors").len(), 16);
    }
}
