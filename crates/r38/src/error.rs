//! The one error type of the facade: every lower crate's error, with the file it concerns.

use std::path::PathBuf;

/// Everything loading, inference and evaluation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight file could not be read.
    #[error(transparent)]
    Weights(#[from] r38_model::weights::WeightError),
    /// An `hf://` name could not be resolved.
    #[error(transparent)]
    Hub(#[from] r38_model::hub::HubError),
    /// The file's metadata or tensors do not describe a network of the family.
    #[error(transparent)]
    Metadata(#[from] r38_model::MetadataError),
    /// The tensors do not fit the network.
    #[error(transparent)]
    Load(#[from] r38_model::LoadError),
    /// The file holds another head than the one asked for, or the task does not fit it.
    #[error("{file}: {message}")]
    Head {
        /// The weight file.
        file: String,
        /// What was asked and what the file holds.
        message: String,
    },
    /// An image or resampling problem.
    #[error(transparent)]
    Data(#[from] r38_data::DataError),
    /// A dataset layout, list or label problem.
    #[error(transparent)]
    Dataset(#[from] r38_data::datasets::DatasetError),
    /// The test protocol or the metrics refused their inputs.
    #[error(transparent)]
    Seg(#[from] r38_seg::SegError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// An output could not be written into place.
    #[error(transparent)]
    Output(#[from] r38_data::output::OutputError),
    /// Settings that cannot work together (a dataset with another class count, an evaluation
    /// cache made for other weights).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
