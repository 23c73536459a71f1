//! A large random comparison against Pillow, run by hand:
//!
//! ```text
//! /work/venvs/mx/bin/python tools/pillow_fixtures.py --sweep /tmp/sweep --cases 400
//! R38_PILLOW_SWEEP=/tmp/sweep cargo test -p r38-data --test pillow_sweep -- --ignored --nocapture
//! ```

mod common;

use std::path::PathBuf;

use common::*;
use r38_data::{resize_f32, resize_u8, Filter};

#[test]
#[ignore = "needs R38_PILLOW_SWEEP=<dir written by tools/pillow_fixtures.py --sweep>"]
fn sweep_matches_pillow() {
    let dir = PathBuf::from(std::env::var("R38_PILLOW_SWEEP").expect("set R38_PILLOW_SWEEP"));
    let text = std::fs::read_to_string(dir.join("sweep.tsv")).unwrap();
    let (mut n, mut bad, mut max_f) = (0, Vec::new(), 0f32);
    for line in text.lines().filter(|l| !l.starts_with("meta")) {
        let r: Vec<&str> = line.split('\t').collect();
        let filter: Filter = r[2].parse().unwrap();
        let p = |i: usize| r[i].parse::<u32>().unwrap();
        let (w, h, ch, dw, dh) = (p(3), p(4), p(5) as usize, p(6), p(7));
        n += 1;
        if r[0] == "u8" {
            let (_, src) = read_npy_u8(&dir.join(format!("u8_{}_src.npy", r[1])));
            let (_, exp) = read_npy_u8(&dir.join(format!("u8_{}_dst.npy", r[1])));
            let got = resize_u8(&src, (w, h), ch, (dw, dh), filter).unwrap();
            let (m, c) = u8_diff(&got, &exp);
            if m != 0 {
                bad.push(format!(
                    "u8 #{} {w}x{h}x{ch} -> {dw}x{dh} {filter}: {c} differ, max {m}",
                    r[1]
                ));
            }
        } else {
            let (_, src) = read_npy_f32(&dir.join(format!("f32_{}_src.npy", r[1])));
            let (_, exp) = read_npy_f32(&dir.join(format!("f32_{}_dst.npy", r[1])));
            let got = resize_f32(&src, (w, h), (dw, dh), filter).unwrap();
            let m = f32_diff(&got, &exp);
            max_f = max_f.max(m);
            if m > 1e-5 {
                bad.push(format!(
                    "f32 #{} {w}x{h} -> {dw}x{dh} {filter}: max {m:e}",
                    r[1]
                ));
            }
        }
    }
    eprintln!(
        "{n} cases, {} mismatches, max f32 diff {max_f:e}",
        bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
