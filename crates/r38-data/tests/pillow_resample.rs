//! `r38_data::resample` against Pillow on the committed fixtures (tests/fixtures/pillow,
//! written by tools/pillow_fixtures.py): 8-bit results must be byte-identical, float results
//! within 1e-5.

mod common;

use std::collections::BTreeMap;

use common::*;
use r38_data::{resize_f32, resize_u8, Filter};

#[test]
fn resize_matches_pillow() {
    let dir = fixtures();
    // filter -> (cases, max u8 diff, max f32 diff)
    let mut stats: BTreeMap<String, (usize, u8, f32)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut n = 0;
    for row in manifest().iter().filter(|r| r[0] == "resize") {
        let (src, filter, dw, dh, expected) = (&row[1], &row[2], &row[3], &row[4], &row[5]);
        let filter: Filter = filter.parse().unwrap();
        let dst: (u32, u32) = (dw.parse().unwrap(), dh.parse().unwrap());
        let entry = stats.entry(filter.to_string()).or_default();
        entry.0 += 1;
        n += 1;
        if src.ends_with(".png") {
            let (size, ch, data) = read_png(&dir.join(src));
            let got = resize_u8(&data, size, ch, dst, filter).unwrap();
            let (esize, ech, exp) = read_png(&dir.join(expected));
            assert_eq!((esize, ech), (dst, ch), "{expected}");
            let (max, count) = u8_diff(&got, &exp);
            entry.1 = entry.1.max(max);
            if max != 0 {
                failures.push(format!("{expected}: {count} bytes differ, max {max}"));
            }
        } else {
            let (shape, data) = read_npy_f32(&dir.join(src));
            let size = (shape[1] as u32, shape[0] as u32);
            let got = resize_f32(&data, size, dst, filter).unwrap();
            let (eshape, exp) = read_npy_f32(&dir.join(expected));
            assert_eq!(eshape, vec![dst.1 as usize, dst.0 as usize], "{expected}");
            let max = f32_diff(&got, &exp);
            entry.2 = entry.2.max(max);
            if max > 1e-5 {
                failures.push(format!("{expected}: max abs diff {max:e}"));
            }
        }
    }
    eprintln!("Pillow {}: {n} fixture resizes", pillow_version());
    for (f, (cases, du8, df32)) in &stats {
        eprintln!("  {f:9} {cases:3} cases  max |diff| u8 {du8}  f32 {df32:e}");
    }
    assert!(n >= 57, "only {n} resize fixtures found");
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn full_size_resizes_match_pillow_hashes() {
    let mut checked = 0;
    for row in manifest().iter().filter(|r| r[0] == "proc_resize") {
        let p = |i: usize| row[i].parse::<u32>().unwrap();
        let (sw, sh, dw, dh) = (p(1), p(2), p(4), p(5));
        let filter: Filter = row[3].parse().unwrap();
        let src = procedural_rgb(sw, sh);
        let got = resize_u8(src.as_raw(), (sw, sh), 3, (dw, dh), filter).unwrap();
        assert_eq!(
            fnv1a64(&got),
            row[6],
            "{sw}x{sh} -> {dw}x{dh} {filter}: bytes differ from Pillow"
        );
        checked += 1;
    }
    assert!(checked >= 6);
}

#[test]
fn probability_map_upsampling_matches_pillow() {
    let dir = fixtures();
    let row = manifest()
        .into_iter()
        .find(|r| r[0] == "proc_resize_f32")
        .expect("proc_resize_f32 row");
    let p = |i: usize| row[i].parse::<u32>().unwrap();
    let (sw, sh, dw, dh, stride) = (p(1), p(2), p(4), p(5), p(6) as usize);
    let filter: Filter = row[3].parse().unwrap();
    let got = resize_f32(&procedural_f32(sw, sh), (sw, sh), (dw, dh), filter).unwrap();
    let (shape, exp) = read_npy_f32(&dir.join(&row[7]));
    let mut sub = Vec::new();
    for y in (0..dh as usize).step_by(stride) {
        for x in (0..dw as usize).step_by(stride) {
            sub.push(got[y * dw as usize + x]);
        }
    }
    assert_eq!(sub.len(), shape.iter().product::<usize>());
    let max = f32_diff(&sub, &exp);
    eprintln!("{sw}x{sh} -> {dw}x{dh} {filter} (f32): max |diff| {max:e}");
    assert!(max <= 1e-5);
}
