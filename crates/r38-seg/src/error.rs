//! The error type of test-time inference ([`crate::test_time`], [`crate::sliding_window`]) and
//! evaluation ([`crate::metrics`]).

#![warn(missing_docs)]

/// Everything that can go wrong while running the test protocol or scoring predictions.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// The [`crate::TestProtocol`] cannot be run as configured, or not with these networks
    /// (for example test steps that do not divide the output stride, or networks that disagree
    /// on their classes).
    #[error("invalid test protocol: {0}")]
    Protocol(String),
    /// Inputs that do not fit together: label maps of different sizes, labels out of range,
    /// confusion matrices of different classes, tensors of the wrong shape.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Resampling or image handling failed.
    #[error(transparent)]
    Data(#[from] r38_data::DataError),
    /// A tensor operation or a network forward pass failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`SegError`].
pub type SegResult<T> = std::result::Result<T, SegError>;
