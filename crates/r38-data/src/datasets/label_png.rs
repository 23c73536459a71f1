//! Label maps: reading label PNGs as raw values and writing index PNGs.
//!
//! The `image` crate expands palette PNGs to RGB, which loses the label values. Label PNGs
//! are therefore read with the `png` crate and no transformation, as `np.array(Image.open(p))`
//! reads them with Pillow:
//!
//! | PNG colour type | raw value of a pixel |
//! |---|---|
//! | palette (indexed), 1/2/4/8-bit | the palette index (the colour is not looked at) |
//! | grey, 8-bit | the grey value |
//! | RGB / RGBA, 8-bit | only with an [`RgbLookup`]: the value whose colour matches exactly (alpha ignored); an unknown colour is an error naming the file, the colour and its position |
//!
//! Everything else is refused with [`DatasetError::LabelFormat`]: RGB/RGBA without a lookup,
//! grey + alpha, 16-bit samples, and grey below 8 bits (Pillow rescales 2- and 4-bit grey to
//! `0..=255`, so the stored value and what the authors' code would have seen differ).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::path::Path;

use image::GrayImage;
use png::{BitDepth, ColorType, Transformations};

use super::classes::Palette;
use super::error::{io_error, DatasetError, Result};
use crate::error::DataError;
use crate::image_io::DEFAULT_PIXEL_LIMIT;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// A single-channel 8-bit map, row-major: raw label values as stored in a file, train ids
/// (`0..C`, or the ignore label 255) after decoding, or predictions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` values, row by row.
    pub data: Vec<u8>,
}

impl LabelMap {
    /// A map from its values; fails unless `data.len() == width * height`.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let expected = width as usize * height as usize;
        if data.len() != expected {
            return Err(DatasetError::InvalidArgument(format!(
                "label map of {width}x{height} needs {expected} values, got {}",
                data.len()
            )));
        }
        Ok(LabelMap {
            width,
            height,
            data,
        })
    }

    /// A map with every pixel set to `value`.
    pub fn filled(width: u32, height: u32, value: u8) -> Self {
        LabelMap {
            width,
            height,
            data: vec![value; width as usize * height as usize],
        }
    }

    /// `(width, height)`.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The value at column `x`, row `y`. Panics when out of bounds.
    pub fn get(&self, x: u32, y: u32) -> u8 {
        assert!(
            x < self.width && y < self.height,
            "({x}, {y}) out of bounds"
        );
        self.data[y as usize * self.width as usize + x as usize]
    }

    /// The map as a grey image (a copy).
    pub fn to_gray_image(&self) -> GrayImage {
        GrayImage::from_raw(self.width, self.height, self.data.clone())
            .expect("LabelMap invariant: data.len() == width * height")
    }

    /// A map from a grey image, whose values are taken as they are.
    pub fn from_gray_image(image: GrayImage) -> Self {
        let (width, height) = image.dimensions();
        LabelMap {
            width,
            height,
            data: image.into_raw(),
        }
    }
}

/// Exact colour-to-value lookup for RGB label PNGs (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbLookup {
    name: String,
    map: HashMap<[u8; 3], u8>,
}

impl RgbLookup {
    /// A lookup from `(colour, value)` pairs; `name` names the palette in error messages.
    /// Fails if a colour is listed twice with different values.
    pub fn new(name: impl Into<String>, colors: &[([u8; 3], u8)]) -> Result<Self> {
        let name = name.into();
        let mut map = HashMap::with_capacity(colors.len());
        for &(color, value) in colors {
            if let Some(old) = map.insert(color, value) {
                if old != value {
                    return Err(DatasetError::InvalidArgument(format!(
                        "{name} palette: colour {color:?} stands for both {old} and {value}"
                    )));
                }
            }
        }
        Ok(RgbLookup { name, map })
    }

    /// The palette's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `color`, if it is in the palette.
    pub fn get(&self, color: [u8; 3]) -> Option<u8> {
        self.map.get(&color).copied()
    }
}

/// Reads a palette or 8-bit grey label PNG into its raw values; RGB PNGs are refused.
pub fn read_label_png(path: impl AsRef<Path>) -> Result<LabelMap> {
    read_label_png_with(path, None)
}

/// Reads a label PNG into its raw values; RGB/RGBA PNGs are converted with `rgb` when given,
/// and refused otherwise (see the module docs).
pub fn read_label_png_with(path: impl AsRef<Path>, rgb: Option<&RgbLookup>) -> Result<LabelMap> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    decode_label_png(&bytes, path, rgb)
}

/// [`read_label_png_with`] on a file held in memory; `path` names it in errors.
pub fn decode_label_png(bytes: &[u8], path: &Path, rgb: Option<&RgbLookup>) -> Result<LabelMap> {
    let (width, height) = header_dimensions(bytes, path)?;
    crate::image_io::check_png_data_bound(bytes).map_err(|detail| {
        DatasetError::Data(DataError::Truncated {
            path: path.into(),
            detail,
        })
    })?;
    check_kind(path, bytes[25], bytes[24], rgb.is_some())?;
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: usize::MAX });
    decoder.set_transformations(Transformations::IDENTITY);
    let png_error = |source| DatasetError::Png {
        path: path.into(),
        source,
    };
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (color, depth) = (reader.info().color_type, reader.info().bit_depth);
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DatasetError::LabelFormat {
            path: path.into(),
            detail: "image too large for this machine".into(),
        })?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_error)?;
    let stride = frame.line_size;
    let (w, h) = (width as usize, height as usize);
    let mut data = Vec::with_capacity(w * h);
    match (color, depth) {
        (ColorType::Rgb | ColorType::Rgba, _) => {
            let lookup = rgb.expect("checked above");
            let channels = if color == ColorType::Rgb { 3 } else { 4 };
            for y in 0..h {
                let row = &buf[y * stride..y * stride + w * channels];
                for (x, px) in row.chunks_exact(channels).enumerate() {
                    let c = [px[0], px[1], px[2]];
                    let v = lookup.get(c).ok_or_else(|| DatasetError::UnknownColor {
                        path: path.into(),
                        color: c,
                        x: x as u32,
                        y: y as u32,
                        palette: lookup.name.clone(),
                    })?;
                    data.push(v);
                }
            }
        }
        (_, BitDepth::Eight) => {
            for y in 0..h {
                data.extend_from_slice(&buf[y * stride..y * stride + w]);
            }
        }
        (_, d) => {
            // Indexed with 1, 2 or 4 bits: unpack, most significant bits first.
            let bits = d as usize;
            let mask = (1u8 << bits) - 1;
            let per_byte = 8 / bits;
            for y in 0..h {
                let row = &buf[y * stride..(y + 1) * stride];
                for x in 0..w {
                    let byte = row[x / per_byte];
                    let shift = 8 - bits * (x % per_byte + 1);
                    data.push((byte >> shift) & mask);
                }
            }
        }
    }
    Ok(LabelMap {
        width,
        height,
        data,
    })
}

/// `(width, height)` of a PNG label file from its header only, after the same signature,
/// zero-size, pixel-limit and colour-type checks as [`read_label_png`] (so RGB PNGs fail).
pub fn label_png_dimensions(path: impl AsRef<Path>) -> Result<(u32, u32)> {
    label_png_dimensions_with(path, false)
}

/// As [`label_png_dimensions`]; `rgb_allowed` accepts 8-bit RGB/RGBA PNGs (for use with an
/// [`RgbLookup`]).
pub fn label_png_dimensions_with(path: impl AsRef<Path>, rgb_allowed: bool) -> Result<(u32, u32)> {
    let path = path.as_ref();
    // The header (IHDR) sits in the first 33 bytes; read a little more and stop.
    use std::io::Read;
    let file = File::open(path).map_err(|e| not_found_or_io(path, e))?;
    let mut head = Vec::with_capacity(64);
    file.take(64)
        .read_to_end(&mut head)
        .map_err(|e| io_error(path, e))?;
    let dims = header_dimensions(&head, path)?;
    check_kind(path, head[25], head[24], rgb_allowed)?;
    Ok(dims)
}

/// Writes `map` as an 8-bit PNG: palette-indexed with `palette` (all 256 entries), or grey
/// when `palette` is `None`.
pub fn write_label_png(
    path: impl AsRef<Path>,
    map: &LabelMap,
    palette: Option<&Palette>,
) -> Result<()> {
    let path = path.as_ref();
    if map.data.len() != map.width as usize * map.height as usize {
        return Err(DatasetError::InvalidArgument(format!(
            "{}: label map of {}x{} holds {} values",
            path.display(),
            map.width,
            map.height,
            map.data.len()
        )));
    }
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), map.width, map.height);
    encoder.set_depth(BitDepth::Eight);
    match palette {
        Some(p) => {
            encoder.set_color(ColorType::Indexed);
            encoder.set_palette(p.iter().flatten().copied().collect::<Vec<u8>>());
        }
        None => encoder.set_color(ColorType::Grayscale),
    }
    let write_error = |source| DatasetError::PngWrite {
        path: path.into(),
        source,
    };
    let mut writer = encoder.write_header().map_err(write_error)?;
    writer.write_image_data(&map.data).map_err(write_error)?;
    writer.finish().map_err(write_error)
}

/// Writes predicted class ids (row-major, `width * height`) of a network with `classes`
/// classes without ever truncating them: as [`write_label_png`] (8-bit, with `palette`) for
/// up to 256 classes, else as a 16-bit grey PNG (a PNG palette holds at most 256 colours;
/// `np.array(Image.open(p))` reads the ids back), so every file of one network has one
/// format. Ids that do not fit the chosen depth are refused, naming the file.
pub fn write_class_png<L: Copy + Into<u32>>(
    path: impl AsRef<Path>,
    width: u32,
    height: u32,
    labels: &[L],
    classes: usize,
    palette: Option<&Palette>,
) -> Result<()> {
    let path = path.as_ref();
    let invalid =
        |detail: String| DatasetError::InvalidArgument(format!("{}: {detail}", path.display()));
    if labels.len() != width as usize * height as usize {
        return Err(invalid(format!(
            "label map of {width}x{height} holds {} values",
            labels.len()
        )));
    }
    let max = labels.iter().map(|&l| l.into()).max().unwrap_or(0);
    if classes <= 256 && max <= u32::from(u8::MAX) {
        let map = LabelMap::new(
            width,
            height,
            labels.iter().map(|&l| l.into() as u8).collect(),
        )?;
        return write_label_png(path, &map, palette);
    }
    if max > u32::from(u16::MAX) {
        return Err(invalid(format!(
            "class id {max} does not fit a 16-bit label PNG (at most 65535)"
        )));
    }
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_depth(BitDepth::Sixteen);
    encoder.set_color(ColorType::Grayscale);
    let write_error = |source| DatasetError::PngWrite {
        path: path.into(),
        source,
    };
    let mut writer = encoder.write_header().map_err(write_error)?;
    // PNG samples are big-endian.
    let bytes: Vec<u8> = labels
        .iter()
        .flat_map(|&l| (l.into() as u16).to_be_bytes())
        .collect();
    writer.write_image_data(&bytes).map_err(write_error)?;
    writer.finish().map_err(write_error)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| not_found_or_io(path, e))
}

fn not_found_or_io(path: &Path, e: std::io::Error) -> DatasetError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DatasetError::Data(DataError::NotFound { path: path.into() })
    } else {
        io_error(path, e)
    }
}

/// Refuses PNG kinds that cannot hold raw label values; `color` and `depth` are the IHDR
/// colour-type and bit-depth bytes.
fn check_kind(path: &Path, color: u8, depth: u8, rgb_allowed: bool) -> Result<()> {
    let detail = match (color, depth) {
        (3, _) | (0, 8) => return Ok(()),
        (2 | 6, 8) if rgb_allowed => return Ok(()),
        (2 | 6, 8) => format!(
            "{} PNG is not palette-indexed: label values must be stored as palette indices or \
             8-bit grey values (colour lookup is available for PASCAL VOC)",
            if color == 2 { "RGB" } else { "RGBA" }
        ),
        (0, d) => format!("{d}-bit grey PNG: label PNGs must be 8-bit grey or palette-indexed"),
        (c, d) => {
            let kind = match c {
                2 => "RGB",
                4 => "grey + alpha",
                6 => "RGBA",
                _ => "unknown colour type",
            };
            format!(
                "{kind} PNG with {d}-bit samples: label PNGs must be 8-bit grey or \
                 palette-indexed"
            )
        }
    };
    Err(DatasetError::LabelFormat {
        path: path.into(),
        detail,
    })
}

/// Checks the signature and reads width and height from the IHDR chunk, which the PNG format
/// requires to come first.
fn header_dimensions(bytes: &[u8], path: &Path) -> Result<(u32, u32)> {
    let format_error = |detail: String| DatasetError::LabelFormat {
        path: path.into(),
        detail,
    };
    if bytes.is_empty() {
        return Err(DatasetError::Data(DataError::EmptyFile {
            path: path.into(),
        }));
    }
    if bytes.len() < 8 || bytes[..8] != PNG_SIGNATURE {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(format_error(format!(
            "not a PNG file (first bytes {}); label maps must be PNG",
            head.join(" ")
        )));
    }
    if bytes.len() < 26 || &bytes[12..16] != b"IHDR" {
        return Err(format_error("truncated PNG: no IHDR chunk".into()));
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if width == 0 || height == 0 {
        return Err(DatasetError::Data(DataError::ZeroSized {
            path: path.into(),
            width,
            height,
        }));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > DEFAULT_PIXEL_LIMIT {
        return Err(DatasetError::Data(DataError::TooManyPixels {
            path: path.into(),
            width,
            height,
            pixels,
            limit: DEFAULT_PIXEL_LIMIT,
        }));
    }
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_map_checks_length() {
        assert!(LabelMap::new(2, 2, vec![0; 3]).is_err());
        let m = LabelMap::new(3, 2, vec![0, 1, 2, 3, 4, 5]).unwrap();
        assert_eq!(m.get(2, 1), 5);
        assert_eq!(LabelMap::from_gray_image(m.to_gray_image()), m);
    }

    #[test]
    fn rgb_lookup_refuses_conflicts() {
        assert!(RgbLookup::new("x", &[([1, 2, 3], 0), ([1, 2, 3], 1)]).is_err());
        let l = RgbLookup::new("x", &[([1, 2, 3], 0), ([1, 2, 3], 0)]).unwrap();
        assert_eq!(l.get([1, 2, 3]), Some(0));
        assert_eq!(l.get([0, 0, 0]), None);
    }
}
