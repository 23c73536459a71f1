//! Decoding against Pillow's `Image.open(p).convert('RGB')`, and the loader's errors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use r38_data::{DataError, Gray16, ImageLoader};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("r38-data-image-io");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn decoding_matches_pil_convert_rgb() {
    let dir = fixtures();
    let mut exact_failures = Vec::new();
    let mut checked = 0;
    for row in manifest().iter().filter(|r| r[0] == "decode") {
        let (src, mode, expected, tol) =
            (&row[1], &row[2], &row[3], row[4].parse::<i32>().unwrap());
        let got = r38_data::load_rgb8(dir.join(src)).unwrap();
        let (size, ch, exp) = read_png(&dir.join(expected));
        assert_eq!((got.dimensions(), ch), (size, 3), "{src}");
        let (max, count) = u8_diff(got.as_raw(), &exp);
        let mean: f64 = got
            .as_raw()
            .iter()
            .zip(&exp)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / exp.len() as f64;
        eprintln!(
            "{src:18} (PIL mode {mode:5}): max |diff| {max:3}, {count:5}/{} values differ, mean {mean:.3}",
            exp.len()
        );
        if tol >= 0 && i32::from(max) > tol {
            exact_failures.push(format!("{src}: max diff {max} > {tol}"));
        }
        if tol < 0 && src.ends_with(".jpg") {
            // zune-jpeg vs libjpeg-turbo: allow small decoder differences, but catch colour
            // conversion or layout mistakes.
            assert!(max <= 4 && mean < 0.5, "{src}: max {max}, mean {mean}");
        }
        checked += 1;
    }
    assert!(checked >= 14);
    assert!(exact_failures.is_empty(), "{}", exact_failures.join("\n"));
}

#[test]
fn gray16_high_byte_option() {
    let img = ImageLoader::new()
        .with_gray16(Gray16::HighByte)
        .load_rgb8(fixtures().join("dec_grey16.png"))
        .unwrap();
    let raw = image::open(fixtures().join("dec_grey16.png"))
        .unwrap()
        .into_luma16();
    for (p, q) in img.pixels().zip(raw.pixels()) {
        assert_eq!(p.0, [(q.0[0] >> 8) as u8; 3]);
    }
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let missing = tmp("does-not-exist.png");
    let _ = std::fs::remove_file(&missing);
    let e = r38_data::load_rgb8(&missing).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("does-not-exist.png"), "{e}");

    let empty = tmp("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let e = r38_data::load_rgb8(&empty).unwrap_err();
    assert!(matches!(e, DataError::EmptyFile { .. }), "{e:?}");
    assert!(e.to_string().contains("empty.jpg"), "{e}");

    let text = tmp("notes.jpg");
    std::fs::write(&text, b"this is not an image at all").unwrap();
    let e = r38_data::load_rgb8(&text).unwrap_err();
    assert!(matches!(e, DataError::UnsupportedFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("notes.jpg"), "{e}");

    let gif = tmp("anim.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let e = r38_data::load_rgb8(&gif).unwrap_err();
    assert!(matches!(e, DataError::UnsupportedFormat { .. }), "{e:?}");
    eprintln!("{e}");

    let truncated = tmp("truncated.png");
    let full = std::fs::read(fixtures().join("src_rgb.png")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let e = r38_data::load_rgb8(&truncated).unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated.png"), "{e}");
    eprintln!("{e}");

    let e = r38_data::load_rgb8(tmp("")).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
}

#[test]
fn zero_sized_header_is_refused() {
    // A PNG whose IHDR declares width 0.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr: Vec<u8> = [0u32.to_be_bytes(), 5u32.to_be_bytes()]
        .concat()
        .into_iter()
        .chain([8u8, 2, 0, 0, 0])
        .collect();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(&ihdr);
    png.extend(13u32.to_be_bytes());
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    let e = ImageLoader::new()
        .decode_rgb8(&png, "zero-width.png")
        .unwrap_err();
    assert!(
        matches!(e, DataError::ZeroSized { .. } | DataError::Decode { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("zero-width.png"), "{e}");
    eprintln!("{e}");
}

#[test]
fn pixel_limit_is_checked_from_the_header() {
    let path = fixtures().join("src_rgb.png"); // 23x17 = 391 pixels
    let small = ImageLoader::new().with_pixel_limit(Some(390));
    let e = small.load_rgb8(&path).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TooManyPixels {
                width: 23,
                height: 17,
                pixels: 391,
                limit: 390,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(small.dimensions(&path).is_err());
    let ok = ImageLoader::new().with_pixel_limit(Some(391));
    assert_eq!(ok.dimensions(&path).unwrap(), (23, 17));
    assert_eq!(ok.load_rgb8(&path).unwrap().dimensions(), (23, 17));
    assert!(ImageLoader::new()
        .with_pixel_limit(None)
        .load_rgb8(&path)
        .is_ok());
    assert_eq!(
        ImageLoader::new().pixel_limit(),
        Some(r38_data::DEFAULT_PIXEL_LIMIT)
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
