//! The error type of training: every lower crate's error, with what the training code adds
//! (which file, which step, which setting).

use crate::recipe::RecipeError;

/// Everything training can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation or a network pass failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written (wrapped in [`TrainError::Context`] with its path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON record (checkpoint state, metrics) is malformed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An image could not be read, written or resampled.
    #[error(transparent)]
    Data(#[from] r38_data::DataError),
    /// A dataset layout, list or label problem.
    #[error(transparent)]
    Dataset(#[from] r38_data::datasets::DatasetError),
    /// An output could not be written into place.
    #[error(transparent)]
    Output(#[from] r38_data::output::OutputError),
    /// An image file could not be encoded.
    #[error(transparent)]
    Image(#[from] r38_data::image::ImageError),
    /// Initial weights could not be read.
    #[error(transparent)]
    Weights(#[from] r38_model::weights::WeightError),
    /// An `hf://` name could not be resolved.
    #[error(transparent)]
    Hub(#[from] r38_model::hub::HubError),
    /// Initial weights do not fit the network.
    #[error(transparent)]
    Load(#[from] r38_model::LoadError),
    /// The backbone configuration is invalid.
    #[error(transparent)]
    Config(#[from] r38_model::ConfigError),
    /// Validation (the test protocol or the metrics) failed.
    #[error(transparent)]
    Seg(#[from] r38_seg::SegError),
    /// A run's settings cannot work.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// What the training code itself refuses.
    #[error("{0}")]
    Message(String),
    /// An error with what was being done when it happened (shown together: `context: error`).
    #[error("{context}: {error}")]
    Context {
        /// What was being done (which file, which step).
        context: String,
        /// The error.
        error: Box<TrainError>,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Adds what was being done to an error, as `anyhow::Context` does.
pub trait Context<T> {
    /// Wrap the error with `context`.
    fn context(self, context: impl std::fmt::Display) -> Result<T>;
    /// Wrap the error with the context `f` makes (only on failure).
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<TrainError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| TrainError::Context {
            context: context.to_string(),
            error: Box::new(e.into()),
        })
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| TrainError::Context {
            context: f().to_string(),
            error: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| TrainError::Message(context.to_string()))
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| TrainError::Message(f().to_string()))
    }
}

/// A [`TrainError::Message`] from a format string.
macro_rules! train_error {
    ($($arg:tt)*) => {
        $crate::error::TrainError::Message(format!($($arg)*))
    };
}

/// Return a [`TrainError::Message`] from a format string.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::train_error!($($arg)*))
    };
}

/// [`bail!`] unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::error::bail!($($arg)*);
        }
    };
}

pub(crate) use {bail, ensure, train_error};
