//! Helpers shared by the integration tests: fixture paths, the manifest, npy/PNG reading and
//! the procedural test patterns of `tools/pillow_fixtures.py`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::RgbImage;

/// `tests/fixtures/pillow` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pillow")
}

/// Non-comment rows of `manifest.tsv`, split at tabs.
pub fn manifest() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(fixtures().join("manifest.tsv"))
        .expect("tests/fixtures/pillow/manifest.tsv (run tools/pillow_fixtures.py)");
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The Pillow version recorded in the manifest.
pub fn pillow_version() -> String {
    manifest()
        .into_iter()
        .find(|r| r[0] == "meta" && r[1] == "pillow")
        .map(|r| r[2].clone())
        .unwrap_or_else(|| "?".into())
}

/// An `.npy` file as (shape, f32 values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = r38_data::npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = t.dims().to_vec();
    (shape, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

/// An `.npy` file of u8 as (shape, values).
pub fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let t = r38_data::npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = t.dims().to_vec();
    (shape, t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

/// An 8-bit PNG (grey or RGB) as ((width, height), channels, interleaved bytes).
pub fn read_png(path: &Path) -> ((u32, u32), usize, Vec<u8>) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dims = (img.width(), img.height());
    match img {
        image::DynamicImage::ImageLuma8(i) => (dims, 1, i.into_raw()),
        image::DynamicImage::ImageRgb8(i) => (dims, 3, i.into_raw()),
        other => panic!(
            "{}: unexpected colour type {:?}",
            path.display(),
            other.color()
        ),
    }
}

/// `procedural_rgb` of tools/pillow_fixtures.py.
pub fn procedural_rgb(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        image::Rgb(std::array::from_fn(|c| {
            ((x * x * 3 + y * 7 + c as u64 * 85 + (x * y) / 3 + ((x ^ y) & 15) * 4) % 256) as u8
        }))
    })
}

/// `procedural_f32` of tools/pillow_fixtures.py (row-major).
pub fn procedural_f32(w: u32, h: u32) -> Vec<f32> {
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..u64::from(h) {
        for x in 0..u64::from(w) {
            let v = (x * 37 + y * 91 + ((x * y) % 13) * 7) % 256;
            out.push(v as f32 / 255.0f32);
        }
    }
    out
}

/// FNV-1a 64-bit hash as 16 hex digits, as in tools/pillow_fixtures.py.
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Little-endian bytes of f32 values (numpy's `tobytes()` on x86).
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Largest absolute difference between two byte slices of equal length, and how many differ.
pub fn u8_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| {
        let d = x.abs_diff(y);
        (m.max(d), n + usize::from(d != 0))
    })
}

/// Largest absolute difference between two f32 slices of equal length.
pub fn f32_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
