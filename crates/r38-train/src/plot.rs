//! The loss/metric curve as a PNG, drawn directly with the `image` crate (no fonts).
//!
//! White background, grey frame and quarter grid lines; the training loss in blue (left
//! scale, from 0 to the largest loss), the validation metric in orange (scale 0..1) as a
//! polyline with square markers. The numbers themselves are in `metrics.csv`.

use std::path::Path;

use crate::error::Result;
use r38_data::image::{Rgb, RgbImage};

use crate::log::Record;

const W: u32 = 800;
const H: u32 = 480;
const M: i64 = 40;

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < W as i64 && y < H as i64 {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for i in 0..=n {
        let x = x0 + (x1 - x0) * i / n;
        let y = y0 + (y1 - y0) * i / n;
        put(img, x, y, c);
        put(img, x, y + 1, c);
    }
}

/// The curve image of `records`.
pub fn render(records: &[Record]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = (W as i64 - 2 * M, H as i64 - 2 * M);
    let grey = Rgb([200, 200, 200]);
    for k in 0..=4 {
        let y = M + ph * k / 4;
        line(&mut img, (M, y), (M + pw, y), grey);
        let x = M + pw * k / 4;
        line(&mut img, (x, M), (x, M + ph), grey);
    }
    let max_step = records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let max_loss = records
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| r.loss)
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let to_px = |step: usize, v: f64, top: f64| {
        (
            M + (step as f64 / max_step * pw as f64).round() as i64,
            M + ph - (v.clamp(0.0, top) / top * ph as f64).round() as i64,
        )
    };
    let mut prev = None;
    for r in records.iter().filter(|r| r.loss.is_finite()) {
        let p = to_px(r.step, r.loss, max_loss);
        if let Some(q) = prev {
            line(&mut img, q, p, Rgb([31, 119, 180]));
        } else {
            put(&mut img, p.0, p.1, Rgb([31, 119, 180]));
        }
        prev = Some(p);
    }
    let orange = Rgb([255, 127, 14]);
    let mut prev = None;
    for r in records {
        if let Some(m) = r.metric {
            let p = to_px(r.step, m, 1.0);
            for dy in -3..=3 {
                for dx in -3..=3 {
                    put(&mut img, p.0 + dx, p.1 + dy, orange);
                }
            }
            if let Some(q) = prev {
                line(&mut img, q, p, orange);
            }
            prev = Some(p);
        }
    }
    img
}

/// Writes the curve of `records` to `path` (PNG).
pub fn write_png(records: &[Record], path: &Path) -> Result<()> {
    let image = render(records);
    r38_data::output::write_atomically_path(path, |tmp| {
        Ok(image.save_with_format(tmp, r38_data::image::ImageFormat::Png)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_curves() {
        let recs: Vec<Record> = (0..10)
            .map(|s| Record {
                step: s,
                epoch: 0.0,
                loss: 2.0 / (1.0 + s as f64),
                lr: 0.1,
                samples_per_s: 1.0,
                metric: (s % 5 == 4).then_some(0.5),
            })
            .collect();
        let img = render(&recs);
        assert!(img.pixels().any(|p| *p == Rgb([31, 119, 180])));
        assert!(img.pixels().any(|p| *p == Rgb([255, 127, 14])));
        let empty = render(&[]);
        assert_eq!(empty.dimensions(), (W, H));
    }
}
