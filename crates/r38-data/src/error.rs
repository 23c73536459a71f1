//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, resampling or transforming data.
///
/// Variants about files carry the path (or, for in-memory data, the name the caller gave) so
/// that a message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error("{path}: no such file")]
    NotFound {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, a directory, an I/O failure).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty (zero bytes).
    #[error("{path}: empty file (0 bytes)")]
    EmptyFile {
        /// The empty file.
        path: PathBuf,
    },
    /// The content is not in a format this build can decode (the `image` crate is built with
    /// JPEG and PNG only), or uses a feature of the format that is not supported.
    #[error("{path}: unsupported image format: {detail}")]
    UnsupportedFormat {
        /// The file being decoded.
        path: PathBuf,
        /// What was not supported.
        detail: String,
    },
    /// The header declares a width or a height of zero.
    #[error("{path}: zero-sized image ({width}x{height})")]
    ZeroSized {
        /// The file being decoded.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The header declares more pixels than the loader's limit (a guard against decompression
    /// bombs, see [`crate::image_io::DEFAULT_PIXEL_LIMIT`]).
    #[error("{path}: {width}x{height} = {pixels} pixels exceeds the limit of {limit} pixels")]
    TooManyPixels {
        /// The file being decoded.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The data is in a supported format but is corrupt or truncated.
    #[error("{path}: cannot decode: {source}")]
    Decode {
        /// The file being decoded.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The file ends before the image does (a JPEG without its end-of-image marker), which
    /// Pillow refuses with "image file is truncated"; decoders would fill the rest with grey.
    #[error("{path}: truncated image: {detail}")]
    Truncated {
        /// The file being decoded.
        path: PathBuf,
        /// Where the data ran out.
        detail: String,
    },
    /// A function was called with sizes or buffers that do not fit together.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle while building or reading a tensor.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
