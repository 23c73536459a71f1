//! The error type of the dataset readers.

use std::fmt;
use std::path::PathBuf;

use crate::error::DataError;

/// Which file of a sample an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileRole {
    /// The input image.
    Image,
    /// The label (ground-truth) map.
    Label,
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::Image => "image",
            FileRole::Label => "label",
        })
    }
}

/// Everything that can go wrong while opening a dataset or reading its samples.
///
/// Every variant about a file or directory carries its path, so that the message names the
/// file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// An error while reading or decoding an image (it names the file).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The dataset root does not exist or does not hold the expected layout.
    #[error("{path}: not a {dataset} root: {detail}")]
    RootNotFound {
        /// The root that was given.
        path: PathBuf,
        /// The dataset that was asked for.
        dataset: String,
        /// What was looked for.
        detail: String,
    },
    /// The split list (or the split's image directory) does not exist.
    #[error("{path}: split {split:?} not found{}", available_note(.available))]
    SplitNotFound {
        /// The list file or directory that was looked for.
        path: PathBuf,
        /// The split that was asked for.
        split: String,
        /// The splits that exist next to it, if any were found.
        available: Vec<String>,
    },
    /// The files are not laid out as the dataset expects (e.g. a class folder that is not an
    /// ImageNet synset, an image without an entry in the label file).
    #[error("{path}: {detail}")]
    Layout {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file of a listed sample does not exist.
    #[error("{path}: {role} file of sample {id:?} not found")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Image or label.
        role: FileRole,
        /// The sample id.
        id: String,
    },
    /// A line of a list file cannot be parsed.
    #[error("{path}:{line}: {detail}")]
    ListFormat {
        /// The list file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// The split holds no samples.
    #[error("{path}: no samples: {detail}")]
    Empty {
        /// The list file or directory that was read.
        path: PathBuf,
        /// What was looked for.
        detail: String,
    },
    /// A label map and its image differ in size.
    #[error(
        "{label}: label map is {label_width}x{label_height} but its image {image} is \
         {image_width}x{image_height}"
    )]
    SizeMismatch {
        /// The label file.
        label: PathBuf,
        /// The image file.
        image: PathBuf,
        /// Label width.
        label_width: u32,
        /// Label height.
        label_height: u32,
        /// Image width.
        image_width: u32,
        /// Image height.
        image_height: u32,
    },
    /// A label map holds a value that is neither a class of the dataset nor the ignore label.
    #[error(
        "{path}: label value {value} at (x={x}, y={y}) ({count} pixels) is neither a class \
         nor the ignore label (valid values: {valid})"
    )]
    LabelValue {
        /// The label file.
        path: PathBuf,
        /// The offending raw value.
        value: u8,
        /// Column of its first occurrence.
        x: u32,
        /// Row of its first occurrence.
        y: u32,
        /// How many pixels hold it.
        count: usize,
        /// The valid raw values, in words.
        valid: String,
    },
    /// A label PNG is of a kind that cannot hold raw label values (RGB without colour lookup,
    /// 16-bit, grey + alpha, grey below 8 bits) or is not a PNG at all.
    #[error("{path}: unsupported label file: {detail}")]
    LabelFormat {
        /// The label file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// An RGB label PNG holds a colour that is not in the dataset's palette.
    #[error(
        "{path}: colour ({}, {}, {}) at (x={x}, y={y}) is not a colour of the {palette} palette",
        .color[0], .color[1], .color[2]
    )]
    UnknownColor {
        /// The label file.
        path: PathBuf,
        /// The colour `[r, g, b]`.
        color: [u8; 3],
        /// Column of its first occurrence.
        x: u32,
        /// Row of its first occurrence.
        y: u32,
        /// The palette that was searched.
        palette: String,
    },
    /// A PNG label file is corrupt or truncated.
    #[error("{path}: cannot decode label PNG: {source}")]
    Png {
        /// The label file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: png::DecodingError,
    },
    /// A PNG file could not be written.
    #[error("{path}: cannot write PNG: {source}")]
    PngWrite {
        /// The file being written.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
    /// A file or directory exists but could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sample index past the end of the dataset.
    #[error("sample index {index} out of range: the dataset has {len} samples")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of samples.
        len: usize,
    },
    /// A dataset name that [`crate::datasets::DatasetKind`] does not know.
    #[error("unknown dataset {0:?}; known: {known}", known = crate::datasets::DatasetKind::known_names())]
    UnknownDataset(String),
    /// A function was called with arguments that do not fit together.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DatasetError {
    /// Whether this error is about a file or directory that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DatasetError::RootNotFound { .. }
                | DatasetError::SplitNotFound { .. }
                | DatasetError::MissingFile { .. }
                | DatasetError::Data(DataError::NotFound { .. })
        )
    }
}

fn available_note(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        format!(" (available: {})", available.join(", "))
    }
}

/// `Result` with [`DatasetError`].
pub type Result<T> = std::result::Result<T, DatasetError>;

/// Wraps an I/O error on `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>, source: std::io::Error) -> DatasetError {
    DatasetError::Io {
        path: path.into(),
        source,
    }
}
