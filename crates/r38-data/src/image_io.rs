//! Reading image files into 8-bit RGB, the way the authors' `Image.open(path).convert('RGB')`
//! does.
//!
//! Decoding uses the `image` crate (this workspace builds it with JPEG and PNG, the formats of
//! ImageNet, PASCAL VOC, Cityscapes and ADE20K). Pixel layouts are turned into RGB as Pillow's
//! `convert('RGB')` turns them, checked against Pillow on committed fixtures:
//!
//! | source | result (as Pillow) |
//! |---|---|
//! | grey 8-bit, and 1/2/4-bit grey expanded to 8 bits | the grey value in R, G and B |
//! | grey + alpha | alpha dropped, grey replicated |
//! | RGBA | alpha dropped; **no** compositing on a background |
//! | palette (with or without transparency) | the palette colour; transparency ignored |
//! | 16-bit RGB / RGBA / grey + alpha | the high byte of each sample (`v >> 8`), alpha dropped |
//! | 16-bit grey (Pillow mode `I;16`) | by default Pillow's saturation `min(v, 255)`; see [`Gray16`] |
//!
//! JPEG: the `image` crate's decoder (zune-jpeg) is not libjpeg-turbo; decoded values may differ
//! from Pillow's by a few levels, most at chroma edges (the tests report the differences on
//! committed JPEGs). CMYK JPEGs are converted to RGB by the decoder. EXIF orientation is
//! ignored, as `Image.open` ignores it.
//!
//! Before decoding, the header's size is checked: zero-sized images are refused, and so are
//! images with more pixels than a limit (default [`DEFAULT_PIXEL_LIMIT`]).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits, RgbImage};

use crate::error::{DataError, Result};

/// Default pixel limit of [`ImageLoader`]: 178,956,970 pixels, the size at which Pillow raises
/// `DecompressionBombError` (twice `Image.MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3`).
/// Pillow only warns between `MAX_IMAGE_PIXELS` and this limit; images with more pixels than
/// the limit are refused here before any pixel is decoded.
pub const DEFAULT_PIXEL_LIMIT: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// What to do with 16-bit single-channel (grey) images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Gray16 {
    /// Pillow's behaviour: such a PNG opens as mode `I;16` and `convert('RGB')` clamps each
    /// value to `0..=255` (`min(v, 255)`), so most of a real 16-bit photo turns white. This is
    /// what the authors' pipeline would have produced.
    #[default]
    Saturate,
    /// The high byte (`v >> 8`), the natural 16-to-8-bit reduction, as Pillow does for 16-bit
    /// RGB, RGBA and grey + alpha images.
    HighByte,
}

/// Reads image files into [`RgbImage`] with size checks; see the module docs for the
/// conversions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLoader {
    pixel_limit: Option<u64>,
    gray16: Gray16,
}

impl Default for ImageLoader {
    fn default() -> Self {
        ImageLoader {
            pixel_limit: Some(DEFAULT_PIXEL_LIMIT),
            gray16: Gray16::default(),
        }
    }
}

impl ImageLoader {
    /// A loader with the default pixel limit and [`Gray16::Saturate`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest accepted `width * height`; `None` accepts any size.
    pub fn with_pixel_limit(mut self, limit: Option<u64>) -> Self {
        self.pixel_limit = limit;
        self
    }

    /// Sets how 16-bit grey images are reduced to 8 bits.
    pub fn with_gray16(mut self, mode: Gray16) -> Self {
        self.gray16 = mode;
        self
    }

    /// The pixel limit in force.
    pub fn pixel_limit(&self) -> Option<u64> {
        self.pixel_limit
    }

    /// The 16-bit grey policy in force.
    pub fn gray16(&self) -> Gray16 {
        self.gray16
    }

    /// Reads and decodes `path` into RGB.
    pub fn load_rgb8(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        self.decode_rgb8(&bytes, path)
    }

    /// Decodes an image held in memory into RGB; `name` is used in error messages (for
    /// example the member name inside an archive).
    pub fn decode_rgb8(&self, bytes: &[u8], name: impl AsRef<Path>) -> Result<RgbImage> {
        let img = self.decode(bytes, name)?;
        Ok(to_rgb8_like_pil(&img, self.gray16))
    }

    /// Decodes an image held in memory without colour conversion, after the same checks as
    /// [`ImageLoader::decode_rgb8`].
    pub fn decode(&self, bytes: &[u8], name: impl AsRef<Path>) -> Result<DynamicImage> {
        let path = name.as_ref();
        if bytes.is_empty() {
            return Err(DataError::EmptyFile { path: path.into() });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| DataError::Io {
                path: path.into(),
                source,
            })?;
        match reader.format() {
            None => return Err(unrecognised(path, bytes)),
            Some(image::ImageFormat::Jpeg) => {
                check_jpeg_complete(bytes).map_err(|detail| DataError::Truncated {
                    path: path.into(),
                    detail,
                })?
            }
            Some(_) => {}
        }
        let mut limits = Limits::no_limits();
        limits.max_alloc = self
            .pixel_limit
            .map(|l| l.saturating_mul(8).saturating_add(64 << 20));
        reader.limits(limits);
        let decoder = reader
            .into_decoder()
            .map_err(|e| map_image_error(path, e))?;
        let (width, height) = decoder.dimensions();
        self.check_dimensions(path, width, height)?;
        let bound = if bytes.starts_with(b"\x89PNG") {
            check_png_data_bound(bytes)
        } else {
            check_jpeg_data_bound(width, height, bytes.len())
        };
        bound.map_err(|detail| DataError::Truncated {
            path: path.into(),
            detail,
        })?;
        DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(path, e))
    }

    /// Reads only the header of `path` and returns `(width, height)`, after the zero-size and
    /// pixel-limit checks.
    pub fn dimensions(&self, path: impl AsRef<Path>) -> Result<(u32, u32)> {
        let path = path.as_ref();
        let reader = ImageReader::open(path)
            .map_err(|e| io_error(path, e))?
            .with_guessed_format()
            .map_err(|e| io_error(path, e))?;
        if reader.format().is_none() {
            let head = read_file(path)?;
            return Err(unrecognised(path, &head));
        }
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| map_image_error(path, e))?;
        self.check_dimensions(path, width, height)?;
        Ok((width, height))
    }

    fn check_dimensions(&self, path: &Path, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(DataError::ZeroSized {
                path: path.into(),
                width,
                height,
            });
        }
        let pixels = u64::from(width) * u64::from(height);
        if let Some(limit) = self.pixel_limit {
            if pixels > limit {
                return Err(DataError::TooManyPixels {
                    path: path.into(),
                    width,
                    height,
                    pixels,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Reads and decodes `path` into RGB with the default [`ImageLoader`].
pub fn load_rgb8(path: impl AsRef<Path>) -> Result<RgbImage> {
    ImageLoader::default().load_rgb8(path)
}

/// Converts a decoded image to 8-bit RGB the way Pillow's `convert('RGB')` treats the
/// corresponding Pillow mode (see the module docs); `gray16` selects the 16-bit grey policy.
pub fn to_rgb8_like_pil(img: &DynamicImage, gray16: Gray16) -> RgbImage {
    fn from_fn(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
    }
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(im) => im.clone(),
        DynamicImage::ImageLuma8(im) => from_fn(w, h, |x, y| [im.get_pixel(x, y)[0]; 3]),
        DynamicImage::ImageLumaA8(im) => from_fn(w, h, |x, y| [im.get_pixel(x, y)[0]; 3]),
        DynamicImage::ImageRgba8(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma16(im) => from_fn(w, h, |x, y| {
            let v = im.get_pixel(x, y)[0];
            let g = match gray16 {
                Gray16::Saturate => v.min(255) as u8,
                Gray16::HighByte => (v >> 8) as u8,
            };
            [g; 3]
        }),
        DynamicImage::ImageLumaA16(im) => {
            from_fn(w, h, |x, y| [(im.get_pixel(x, y)[0] >> 8) as u8; 3])
        }
        DynamicImage::ImageRgb16(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        // Float images (not produced by the JPEG/PNG decoders): the image crate's conversion.
        other => other.to_rgb8(),
    }
}

/// Most bytes deflate can expand one compressed byte into (its limit is 1032:1; a little over,
/// for the zlib header and block overheads of tiny streams).
const DEFLATE_MAX_RATIO: u64 = 1100;

/// Refuses a PNG whose header declares more pixel bytes than its compressed image data
/// (`IDAT`) could ever inflate to, before a decoder allocates the declared size: a 144-byte
/// file declaring 10,813,447 x 5 pixels made the label reader allocate 80 MB. Such a file is
/// truncated or corrupt whatever the decoder would say; a legitimate file always passes.
pub fn check_png_data_bound(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 29 || &bytes[12..16] != b"IHDR" {
        // Not ours to judge: the decoder reports a malformed header.
        return Ok(());
    }
    let be32 =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (width, height) = (u64::from(be32(16)), u64::from(be32(20)));
    let depth = u64::from(bytes[24]);
    let channels = match bytes[25] {
        0 | 3 => 1,
        4 => 2,
        2 => 3,
        6 => 4,
        _ => return Ok(()),
    };
    // The pixel bytes alone, without filter bytes: a lower bound for interlaced files too.
    let needed = height.saturating_mul((width.saturating_mul(channels * depth)).div_ceil(8));
    let mut idat = 0u64;
    let mut at = 8usize;
    while at + 8 <= bytes.len() {
        let len = be32(at) as usize;
        let kind = &bytes[at + 4..at + 8];
        if kind == b"IDAT" {
            idat += len.min(bytes.len() - (at + 8)) as u64;
        }
        if kind == b"IEND" {
            break;
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    let most = idat.saturating_mul(DEFLATE_MAX_RATIO).saturating_add(1024);
    if needed > most {
        return Err(format!(
            "the header declares {width}x{height} pixels ({needed} bytes), more than its {idat} \
             bytes of image data can hold (at most {most})"
        ));
    }
    Ok(())
}

/// Most pixels one byte of a (Huffman-coded) JPEG can stand for: every 8x8 block of the full-
/// resolution component codes its DC difference in its first scan with a Huffman code of at
/// least one bit, so one byte covers at most 8 blocks, 512 pixels. (Arithmetic-coded JPEGs,
/// which could do with less, are not decoded by this build.)
const JPEG_MAX_PIXELS_PER_BYTE: u64 = 512;

/// Refuses a JPEG whose header declares more pixels than its bytes can code, before the
/// decoder allocates the declared size (as [`check_png_data_bound`] for PNG).
pub fn check_jpeg_data_bound(
    width: u32,
    height: u32,
    file_len: usize,
) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    let most = (file_len as u64)
        .saturating_mul(JPEG_MAX_PIXELS_PER_BYTE)
        .saturating_add(64 * 64);
    if pixels > most {
        return Err(format!(
            "the header declares {width}x{height} pixels, more than its {file_len} bytes can \
             code (at most {most})"
        ));
    }
    Ok(())
}

/// Walks the JPEG's markers to its end-of-image marker (EOI, `FF D9`), so that a file cut short
/// is refused as Pillow refuses it (the decoder would quietly fill the missing rows with
/// grey). Segments are skipped by their declared lengths and entropy-coded data by its marker
/// rules (`FF 00` stuffing, `FF D0`-`FF D7` restarts), so an EOI inside an EXIF thumbnail does
/// not count. Bytes after the EOI are ignored, as libjpeg ignores them.
pub fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return Err("no JPEG start-of-image marker".into());
    }
    let n = bytes.len();
    let mut i = 2;
    loop {
        // Between segments: skip anything up to the next marker (libjpeg warns and skips).
        while i < n && bytes[i] != 0xff {
            i += 1;
        }
        // Fill bytes: any number of FF before the marker code.
        while i + 1 < n && bytes[i + 1] == 0xff {
            i += 1;
        }
        if i + 1 >= n {
            return Err(format!(
                "the data ends at byte {n} without an end-of-image marker"
            ));
        }
        let marker = bytes[i + 1];
        match marker {
            0xd9 => return Ok(()),
            // Markers without a length: restarts, TEM, and a stray FF 00.
            0xd0..=0xd7 | 0x01 | 0x00 => i += 2,
            _ => {
                if i + 4 > n {
                    return Err(format!("the data ends inside a segment header at byte {n}"));
                }
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                if len < 2 {
                    return Err(format!("segment length {len} at byte {i} is below 2"));
                }
                let end = i + 2 + len;
                if end > n {
                    return Err(format!(
                        "a segment of {len} bytes at byte {i} runs past the end ({n} bytes)"
                    ));
                }
                i = end;
                if marker == 0xda {
                    // Entropy-coded data runs up to the first marker that is not a stuffed
                    // zero, a restart or fill.
                    while i + 1 < n {
                        if bytes[i] == 0xff {
                            match bytes[i + 1] {
                                0x00 | 0xd0..=0xd7 => i += 2,
                                0xff => i += 1,
                                _ => break,
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound { path: path.into() }
    } else {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

fn unrecognised(path: &Path, bytes: &[u8]) -> DataError {
    if bytes.is_empty() {
        return DataError::EmptyFile { path: path.into() };
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    DataError::UnsupportedFormat {
        path: PathBuf::from(path),
        detail: format!(
            "content not recognised as JPEG or PNG (first bytes {})",
            head.join(" ")
        ),
    }
}

fn map_image_error(path: &Path, e: ImageError) -> DataError {
    match e {
        ImageError::Unsupported(u) => DataError::UnsupportedFormat {
            path: path.into(),
            detail: u.to_string(),
        },
        other => DataError::Decode {
            path: path.into(),
            source: other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_is_pillows_bomb_error_threshold() {
        assert_eq!(DEFAULT_PIXEL_LIMIT, 178_956_970);
    }

    #[test]
    fn jpeg_markers() {
        // SOI, a 4-byte APP0, SOS with 2 bytes of header, data with stuffing and a restart, EOI.
        let full = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0x00, 0x00, 0xff, 0xda, 0x00, 0x02, 0x12, 0xff,
            0x00, 0x34, 0xff, 0xd0, 0x56, 0xff, 0xd9, 0x00,
        ];
        assert_eq!(check_jpeg_complete(&full), Ok(()));
        for cut in 0..full.len() - 2 {
            assert!(check_jpeg_complete(&full[..cut]).is_err(), "cut at {cut}");
        }
        // An EOI inside a segment (an EXIF thumbnail) does not end the image.
        let thumb = [
            0xff, 0xd8, 0xff, 0xe1, 0x00, 0x04, 0xff, 0xd9, 0xff, 0xda, 0x00, 0x02, 1,
        ];
        assert!(check_jpeg_complete(&thumb).is_err());
    }

    #[test]
    fn png_data_bound() {
        // The fuzzer's find: a palette PNG declaring 10,813,447 x 5 pixels in 144 bytes.
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend([0, 0xa5, 0, 7, 0, 0, 0, 5, 4, 3, 0, 0, 0, 0, 0, 0, 0]);
        png.extend([0, 0, 0, 20]);
        png.extend(b"IDAT");
        png.extend([0; 24]);
        let e = check_png_data_bound(&png).unwrap_err();
        assert!(e.contains("10813447x5") && e.contains("20 bytes"), "{e}");
        // A 1x1 grey PNG of one IDAT byte is fine.
        png[16..24].copy_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(check_png_data_bound(&png), Ok(()));
    }

    #[test]
    fn gray16_policies() {
        let im = image::ImageBuffer::from_raw(3, 1, vec![100u16, 256, 40000]).unwrap();
        let d = DynamicImage::ImageLuma16(im);
        let sat = to_rgb8_like_pil(&d, Gray16::Saturate);
        assert_eq!(sat.as_raw(), &[100, 100, 100, 255, 255, 255, 255, 255, 255]);
        let hi = to_rgb8_like_pil(&d, Gray16::HighByte);
        assert_eq!(hi.as_raw(), &[0, 0, 0, 1, 1, 1, 156, 156, 156]);
    }
}
