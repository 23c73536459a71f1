//! Strict construction from a set of named tensors: every tensor the network asks for must be
//! present with the right shape, and every tensor in the file must be used.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// One way a weight file disagrees with the network built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The network needs a tensor the file lacks.
    Missing {
        /// Canonical tensor name.
        name: String,
        /// Shape the network expects.
        expected: Vec<usize>,
    },
    /// The file's tensor has another shape.
    WrongShape {
        /// Canonical tensor name.
        name: String,
        /// Shape the network expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor the network does not use.
    Unexpected {
        /// Canonical tensor name.
        name: String,
        /// Shape in the file.
        shape: Vec<usize>,
    },
}

impl std::fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorProblem::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
            TensorProblem::WrongShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            TensorProblem::Unexpected { name, shape } => {
                write!(f, "unexpected tensor `{name}` with shape {shape:?}")
            }
        }
    }
}

/// Why a network could not be built from a weight file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{source_name}: the weights do not fit the network ({} problem(s)):\n  {}",
        .problems.len(),
        .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    /// Tensors are missing, unused or of the wrong shape.
    Mismatch {
        /// The weight file (or other source) being loaded.
        source_name: String,
        /// Every problem found.
        problems: Vec<TensorProblem>,
    },
    /// The network could not be built for another reason.
    #[error("{source_name}: {error}")]
    Build {
        /// The weight file (or other source) being loaded.
        source_name: String,
        /// The underlying error.
        error: candle_core::Error,
    },
}

struct Inner {
    tensors: BTreeMap<String, Tensor>,
    used: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<TensorProblem>>,
}

struct StrictBackend(Arc<Inner>);

impl SimpleBackend for StrictBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let inner = &self.0;
        inner
            .used
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
        let problem = match inner.tensors.get(name) {
            Some(t) if t.dims() == s.dims() => return t.to_dtype(dtype)?.to_device(dev),
            Some(t) => TensorProblem::WrongShape {
                name: name.to_string(),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            },
            None => TensorProblem::Missing {
                name: name.to_string(),
                expected: s.dims().to_vec(),
            },
        };
        inner.problems.lock().expect("poisoned").push(problem);
        // Keep building so that every problem is reported at once; a broadcast zero costs nothing.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0
            .used
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
        match self.0.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("missing tensor `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Build a module with `build`, checking the tensors it asks for against `tensors`.
///
/// `source_name` (usually the file path) prefixes every error.
pub fn build_strict<T>(
    source_name: &str,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(&VarBuilder) -> candle_core::Result<T>,
) -> Result<T, LoadError> {
    let inner = Arc::new(Inner {
        tensors: tensors.clone(),
        used: Mutex::default(),
        problems: Mutex::default(),
    });
    let vb = VarBuilder::from_backend(
        Box::new(StrictBackend(inner.clone())),
        dtype,
        device.clone(),
    );
    let built = build(&vb);
    let mut problems = std::mem::take(&mut *inner.problems.lock().expect("poisoned"));
    let used = inner.used.lock().expect("poisoned");
    for (name, t) in tensors {
        if !used.contains(name) {
            problems.push(TensorProblem::Unexpected {
                name: name.clone(),
                shape: t.dims().to_vec(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Mismatch {
            source_name: source_name.to_string(),
            problems,
        });
    }
    built.map_err(|error| LoadError::Build {
        source_name: source_name.to_string(),
        error,
    })
}
