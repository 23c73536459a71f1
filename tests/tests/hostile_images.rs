//! Hostile and unusual image files: each gives a defined result or an error naming the file,
//! and decompression bombs are refused from the header, before any pixel buffer exists.
//!
//! Cases already held elsewhere are not repeated here (see docs/reliability.md): 16-bit, grey,
//! grey + alpha, RGBA, palette and CMYK inputs against Pillow
//! (crates/r38-data/tests/image_io.rs `decoding_matches_pil_convert_rgb`), empty / non-image /
//! GIF / truncated PNG files and zero width (`errors_name_the_file_and_the_problem`,
//! `zero_sized_header_is_refused`), the pixel limit on a small file
//! (`pixel_limit_is_checked_from_the_header`), and RGB label PNGs
//! (crates/r38-data/tests/datasets.rs `voc_rgb_labels`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use r38_data::image::{codecs::jpeg::JpegEncoder, ImageEncoder, RgbImage};
use r38_data::{DataError, ImageLoader};
use r38_tests::counting_alloc::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its result, the peak heap growth on this thread and the time taken.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    let t0 = Instant::now();
    let (out, usage) = counting_alloc::measure(f);
    (out, usage.peak, t0.elapsed())
}

// ---- helpers -------------------------------------------------------------------------------

fn pillow(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pillow")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-images");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
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

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A PNG whose IHDR announces `width` x `height` 8-bit RGB, with one tiny IDAT (a valid zlib
/// stream of a few bytes) and IEND: what a decompression bomb's header looks like.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    png_header_only_typed(width, height, 2)
}

/// As [`png_header_only`] with the given colour type (0 grey, 2 RGB).
fn png_header_only_typed(width: u32, height: u32, colour_type: u8) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, colour_type, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    // zlib: stored block of 4 zero bytes.
    let idat = [
        0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0, 0x01,
    ];
    png_chunk(&mut png, b"IDAT", &idat);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        r38_data::image::Rgb([(x * 40) as u8, (y * 60) as u8, ((x + y) * 20) as u8])
    })
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            r38_data::image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// Rewrites the frame size of a baseline JPEG's SOF0 segment.
fn set_jpeg_size(jpeg: &mut [u8], width: u16, height: u16) {
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("baseline SOF0");
    // FF C0, length (2), precision (1), height (2), width (2)
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
}

/// Inserts an EXIF APP1 segment with the given orientation tag right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes()); // IFD0 offset
    tiff.extend(1u16.to_le_bytes()); // one entry
    tiff.extend(0x0112u16.to_le_bytes()); // Orientation
    tiff.extend(3u16.to_le_bytes()); // SHORT
    tiff.extend(1u32.to_le_bytes()); // count
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// The error (if any) names the file; returns it for further checks.
fn names_file(result: r38_data::Result<RgbImage>, name: &str) -> Option<DataError> {
    match result {
        Ok(_) => None,
        Err(e) => {
            assert!(e.to_string().contains(name), "{name}: {e}");
            Some(e)
        }
    }
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn decompression_bomb_headers_are_refused_before_decoding() {
    let loader = ImageLoader::new();
    // A PNG announcing 100000 x 100000 (10^10 pixels, 30 GB of RGB).
    let png = png_header_only(100_000, 100_000);
    let path = scratch("bomb_100000x100000.png");
    std::fs::write(&path, &png).unwrap();
    let (result, peak, elapsed) = measure(|| loader.load_rgb8(&path));
    let e = names_file(result, "bomb_100000x100000.png").expect("the bomb must be refused");
    assert!(
        matches!(
            e,
            DataError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                pixels: 10_000_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(peak < 1 << 20, "refusing the bomb allocated {peak} bytes");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    // The header-only path (dataset validation) refuses it the same way.
    assert!(matches!(
        loader.dimensions(&path),
        Err(DataError::TooManyPixels { .. })
    ));

    // A JPEG announcing 65535 x 65535 (the format's largest frame).
    let mut bomb = jpeg(&photo(8, 8));
    set_jpeg_size(&mut bomb, 65_535, 65_535);
    let path = scratch("bomb_65535x65535.jpg");
    std::fs::write(&path, &bomb).unwrap();
    let (result, peak, elapsed) = measure(|| loader.load_rgb8(&path));
    let e = names_file(result, "bomb_65535x65535.jpg").expect("the bomb must be refused");
    assert!(matches!(e, DataError::TooManyPixels { .. }), "{e:?}");
    assert!(peak < 1 << 20, "refusing the bomb allocated {peak} bytes");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // A label PNG (8-bit grey, read raw) announcing 100000 x 100000.
    let path = scratch("label_bomb_100000x100000.png");
    std::fs::write(&path, png_header_only_typed(100_000, 100_000, 0)).unwrap();
    let (result, peak, elapsed) = measure(|| r38_data::datasets::read_label_png(&path));
    let e = result.expect_err("the label bomb must be refused");
    assert!(
        e.to_string().contains("label_bomb_100000x100000.png"),
        "{e}"
    );
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    assert!(
        peak < 1 << 20,
        "refusing the label bomb allocated {peak} bytes"
    );
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // The limit is configurable: a 4000 x 3000 header passes the default limit (and is then
    // refused for lacking the image data) but is refused from the header under a 10-Mpixel
    // limit.
    let png = png_header_only(4000, 3000);
    let strict = ImageLoader::new().with_pixel_limit(Some(10_000_000));
    let e = strict.decode_rgb8(&png, "12mp.png").unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TooManyPixels {
                pixels: 12_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    let e = ImageLoader::new()
        .decode_rgb8(&png, "12mp.png")
        .unwrap_err();
    // Refused before the decoder allocates 36 MB: no image data could hold 12 Mpx.
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("12mp.png"), "{e}");
}

#[test]
fn truncated_and_corrupt_jpegs_give_a_defined_result() {
    let full = std::fs::read(pillow("dec_rgb.jpg")).unwrap();
    let loader = ImageLoader::new();
    // Cut inside the headers: always an error naming the file.
    for cut in [2usize, 20, 100] {
        let name = format!("jpeg_cut_{cut}.jpg");
        let e = names_file(loader.decode_rgb8(&full[..cut], &name), &name)
            .unwrap_or_else(|| panic!("{name} decoded"));
        assert!(
            matches!(
                e,
                DataError::Decode { .. }
                    | DataError::UnsupportedFormat { .. }
                    | DataError::Truncated { .. }
            ),
            "{e:?}"
        );
    }
    // Cut inside the entropy-coded data, or just before the end-of-image marker: refused as
    // Pillow refuses it ("image file is truncated"), not filled in with grey.
    for cut in [full.len() / 2, full.len() - 2] {
        let name = format!("jpeg_cut_{cut}.jpg");
        let e = names_file(loader.decode_rgb8(&full[..cut], &name), &name)
            .unwrap_or_else(|| panic!("{name} decoded"));
        assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    }
    // Flipped bytes in the scan and in the Huffman tables: same contract.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..200 {
        let mut b = full.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = 2 + (state as usize) % (b.len() - 2);
            b[at] ^= (state >> 32) as u8 | 1;
        }
        let name = format!("jpeg_corrupt_{i}.jpg");
        if let Ok(img) = loader.decode_rgb8(&b, &name) {
            assert!(img.width() > 0 && img.height() > 0);
        } else {
            let e = loader.decode_rgb8(&b, &name).unwrap_err();
            assert!(e.to_string().contains(&name), "{e}");
        }
    }
}

#[test]
fn truncated_and_corrupt_pngs_are_errors_naming_the_file() {
    let full = std::fs::read(pillow("src_rgb.png")).unwrap();
    let loader = ImageLoader::new();
    for cut in [8usize, 20, 33, full.len() - 12, full.len() - 1] {
        let name = format!("png_cut_{cut}.png");
        let e = names_file(loader.decode_rgb8(&full[..cut], &name), &name);
        // Without IEND the image data may still be complete; the png decoder then returns it.
        if cut < full.len() - 12 {
            assert!(e.is_some(), "{name} decoded");
        }
    }
    // A wrong CRC in IHDR and a corrupt zlib stream.
    let mut bad_crc = full.clone();
    bad_crc[29] ^= 0xff;
    let e = names_file(loader.decode_rgb8(&bad_crc, "bad_crc.png"), "bad_crc.png");
    assert!(e.is_some());
    let idat = full.windows(4).position(|w| w == b"IDAT").unwrap();
    let mut bad_zlib = full.clone();
    for b in &mut bad_zlib[idat + 4..idat + 12] {
        *b ^= 0x55;
    }
    // The IDAT CRC now fails too; either way it is an error naming the file.
    let e = names_file(
        loader.decode_rgb8(&bad_zlib, "bad_zlib.png"),
        "bad_zlib.png",
    );
    assert!(e.is_some());
}

#[test]
fn zero_sized_jpeg_is_refused() {
    let mut b = jpeg(&photo(8, 8));
    set_jpeg_size(&mut b, 8, 0);
    let e = ImageLoader::new()
        .decode_rgb8(&b, "zero_height.jpg")
        .unwrap_err();
    assert!(e.to_string().contains("zero_height.jpg"), "{e}");
    assert!(
        matches!(e, DataError::ZeroSized { .. } | DataError::Decode { .. }),
        "{e:?}"
    );
    let mut b = jpeg(&photo(8, 8));
    set_jpeg_size(&mut b, 0, 8);
    let e = ImageLoader::new()
        .decode_rgb8(&b, "zero_width.jpg")
        .unwrap_err();
    assert!(e.to_string().contains("zero_width.jpg"), "{e}");
}

/// Documented choice (crates/r38-data/src/image_io.rs, docs/reliability.md): EXIF orientation
/// is ignored, as the authors' `Image.open(p).convert('RGB')` ignores it. A JPEG tagged
/// "rotate 90" decodes to exactly the pixels of the same JPEG without the tag, unrotated.
#[test]
fn exif_orientation_is_ignored_like_pil() {
    let img = photo(12, 4);
    let plain = jpeg(&img);
    let loader = ImageLoader::new();
    let reference = loader.decode_rgb8(&plain, "plain.jpg").unwrap();
    assert_eq!(reference.dimensions(), (12, 4));
    for orientation in [3u16, 6, 8] {
        let tagged = with_exif_orientation(&plain, orientation);
        let path = scratch(&format!("exif_orientation_{orientation}.jpg"));
        std::fs::write(&path, &tagged).unwrap();
        let got = loader.load_rgb8(&path).unwrap();
        assert_eq!(got.dimensions(), (12, 4), "orientation {orientation}");
        assert_eq!(
            got.as_raw(),
            reference.as_raw(),
            "orientation {orientation}"
        );
        // The tag is really there for a reader that honours it.
        let mut decoder = r38_data::image::ImageReader::open(&path)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        use r38_data::image::ImageDecoder;
        let o = decoder.orientation().unwrap();
        assert_ne!(
            o,
            r38_data::image::metadata::Orientation::NoTransforms,
            "{orientation}"
        );
    }
}

/// The bounds above mean something only if the counting allocator is really installed.
#[test]
fn the_counting_allocator_sees_allocations() {
    let (buffer, peak, _) = measure(|| vec![1u8; 1 << 20]);
    assert_eq!(buffer.len(), 1 << 20);
    assert!(peak >= 1 << 20, "peak {peak}");
}

/// Inputs the `images` fuzz target found (`tests/fixtures/hostile/images/`), replayed through
/// the image loader and the label reader with their default limits: each is refused naming the
/// file, or read, with the heap growing by less than 1 MiB + 64 x the file's size.
#[test]
fn fuzzing_regressions_decode_within_the_bound() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let bound = (1 << 20) + 64 * bytes.len();
        let (result, peak, _) = measure(|| ImageLoader::new().decode_rgb8(&bytes, &path));
        if let Err(e) = &result {
            assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
        assert!(peak < bound, "{}: image loader peak {peak}", path.display());
        let (result, peak, _) =
            measure(|| r38_data::datasets::decode_label_png(&bytes, &path, None));
        if let Err(e) = &result {
            assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
        assert!(peak < bound, "{}: label reader peak {peak}", path.display());
    }
}

/// A real JPEG whose frame header is patched to 4000 x 3000 (12 Mpx, under the default limit):
/// its 2 KB cannot code that many pixels (at most 512 per byte), so it is refused before the
/// decoder allocates 36 MB.
#[test]
fn jpeg_declaring_more_pixels_than_its_bytes_can_code_is_refused() {
    let mut bytes = std::fs::read(pillow("dec_rgb.jpg")).unwrap();
    // The baseline or progressive frame header: FF C0/C2, length, precision, height, width.
    let sof = bytes
        .windows(2)
        .position(|w| w[0] == 0xff && (w[1] == 0xc0 || w[1] == 0xc2))
        .expect("a frame header");
    bytes[sof + 5..sof + 7].copy_from_slice(&3000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&4000u16.to_be_bytes());
    let (result, peak, _) = measure(|| ImageLoader::new().decode_rgb8(&bytes, "patched.jpg"));
    let e = match result {
        Ok(img) => panic!("decoded as {:?}", img.dimensions()),
        Err(e) => e,
    };
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("patched.jpg"), "{e}");
    assert!(peak < 1 << 20, "peak {peak}");
}
