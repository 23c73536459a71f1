//! Reading and writing ResNet-38 weight files: the authors' MXNet `.params`, PyTorch `.pth`
//! state dicts of the PSA "resnet38d" port, and safetensors.
//!
//! Whatever the source, [`load`] returns tensors under the project's canonical names (the
//! authors' MXNet parameter names without `arg:`/`aux:`, see [`names`]), as `f32` on the CPU, so
//! that model code needs to know about only one naming scheme. The format is detected from the
//! file's first bytes, not from its extension. Every reader treats the file as untrusted: sizes
//! are checked against the file length before anything is allocated, malformed input gives a
//! [`WeightError`] naming the file and the problem, and no input makes the reader panic or run
//! code (see [`pytorch`] for the pickle side).

pub mod mxnet;
pub mod names;
pub mod pytorch;
pub mod released;
pub mod safetensors;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use mxnet::{write_params, HeaderStyle};
pub use names::{canonical_to_psa, mxnet_key, psa_to_canonical};
pub use released::{find_by_md5, find_by_name, released_files, ReleasedFile};
pub use safetensors::save_safetensors;

/// Everything that can go wrong reading or writing a weight file. Every variant names the file,
/// and where it helps, the byte offset and the tensor concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightError {
    /// The operating system refused an operation on the file.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`read`, `create a temporary file`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The first bytes match none of the supported formats.
    #[error(
        "{}: not a supported weight file (first bytes: {head}); expected an MXNet .params, \
         a PyTorch zip .pth or a .safetensors file",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Hex dump of up to 16 leading bytes.
        head: String,
    },
    /// A pre-1.6 PyTorch file (a bare pickle stream rather than a zip archive).
    #[error(
        "{}: legacy (non-zip) PyTorch file; re-save it with torch>=1.6 in the default zip format, \
         e.g. `torch.save(torch.load(old, map_location='cpu'), new)`",
        path.display()
    )]
    LegacyPytorch {
        /// The file.
        path: PathBuf,
    },
    /// The file ends before a field it declares.
    #[error(
        "{}: truncated at byte offset {offset}: {what} needs {needed} bytes but only {available} remain",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the field starts.
        offset: u64,
        /// The field.
        what: String,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The MXNet NDArray-list header magic is not 0x112.
    #[error("{}: bad MXNet NDArray-list magic 0x{found:x} (expected 0x112)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes as a little-endian integer.
        found: u64,
    },
    /// A declared item count cannot fit in the rest of the file.
    #[error(
        "{}: byte offset {offset} declares {count} {what}, but the {available} remaining bytes hold at most {max}",
        path.display()
    )]
    CountTooLarge {
        /// The file.
        path: PathBuf,
        /// Where the count is.
        offset: u64,
        /// What is counted.
        what: &'static str,
        /// The declared count.
        count: u64,
        /// Bytes left after the count.
        available: u64,
        /// The most items of minimal size that fit there.
        max: u64,
    },
    /// The MXNet file has a different number of names than arrays.
    #[error("{}: {arrays} arrays but {names} names", path.display())]
    CountMismatch {
        /// The file.
        path: PathBuf,
        /// Declared arrays.
        arrays: u64,
        /// Declared names.
        names: u64,
    },
    /// The MXNet file is a list of arrays without names (saved from a Python list).
    #[error(
        "{}: {arrays} arrays without names (an NDArray list saved from a Python list, not a dict); \
         weight files need names",
        path.display()
    )]
    UnnamedArrays {
        /// The file.
        path: PathBuf,
        /// Declared arrays.
        arrays: u64,
    },
    /// A sparse (or undefined) MXNet storage type.
    #[error(
        "{}: {tensor} at byte offset {offset}: unsupported NDArray storage type {stype} (only 0 = dense)",
        path.display()
    )]
    UnsupportedStorage {
        /// The file.
        path: PathBuf,
        /// The tensor (`array #i` when names are not known yet).
        tensor: String,
        /// Where the storage type is.
        offset: u64,
        /// The storage type code.
        stype: i32,
    },
    /// A shape that is not valid (negative sizes, strides out of range, ...).
    #[error("{}: {tensor} at byte offset {offset}: invalid shape: {reason}", path.display())]
    InvalidShape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Where the shape is (0 when not meaningful).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The element count (or byte size) of a shape does not fit in 64 bits.
    #[error("{}: {tensor}: element count of shape {shape} overflows", path.display())]
    ShapeOverflow {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The declared shape.
        shape: String,
    },
    /// A tensor declares more data than the file (or zip entry) holds.
    #[error(
        "{}: {tensor} at byte offset {offset}: declared data size {needed} bytes is larger than \
         the {available} bytes left",
        path.display()
    )]
    DataExceedsFile {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Where the data starts.
        offset: u64,
        /// Declared bytes.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A dtype code that no known format version defines.
    #[error("{}: unknown dtype code {code} for tensor {tensor:?}", path.display())]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The code.
        code: i64,
    },
    /// A known dtype that is not a floating-point parameter type.
    #[error(
        "{}: tensor {tensor:?} has dtype {dtype}; only floating-point tensors (f32, f64, f16, bf16) \
         are accepted as parameters",
        path.display()
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype's name.
        dtype: String,
    },
    /// A tensor name is not UTF-8.
    #[error("{}: tensor name at byte offset {offset} is not valid UTF-8", path.display())]
    NameNotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where the name's bytes start.
        offset: u64,
    },
    /// A tensor name that cannot be used (empty after removing its prefix, ...).
    #[error("{}: invalid tensor name {name:?}: {reason}", path.display())]
    InvalidName {
        /// The file.
        path: PathBuf,
        /// The name as found.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two tensors have the same canonical name.
    #[error(
        "{}: duplicate tensor name {name:?} (from {first:?} and {second:?})",
        path.display()
    )]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The canonical name.
        name: String,
        /// The first source name.
        first: String,
        /// The second source name.
        second: String,
    },
    /// Bytes after the last field of an MXNet file.
    #[error("{}: {count} trailing bytes after the last name, at byte offset {offset}", path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Where they start.
        offset: u64,
        /// How many.
        count: u64,
    },
    /// The zip container of a `.pth` file is malformed or is not a PyTorch archive.
    #[error("{}: PyTorch zip archive: {reason}", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pickle (`data.pkl`) of a `.pth` file is malformed, unsupported or not a state dict.
    #[error("{}: data.pkl: {reason}", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor record of a `.pth` file is malformed.
    #[error("{}: tensor {tensor:?}: {reason}", path.display())]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The safetensors header or layout is invalid.
    #[error("{}: safetensors: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// candle refused a tensor operation.
    #[error("{}: tensor {tensor:?}: {source}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The underlying error.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// A tensor that the requested output format cannot represent.
    #[error("{}: cannot write tensor {tensor:?}: {reason}", path.display())]
    Unrepresentable {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
}

/// A weight-file container format, detected from magic bytes by [`WeightFormat::detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// MXNet NDArray list (`mx.nd.save`, the authors' released `.params` files).
    MxnetParams,
    /// PyTorch `torch.save` zip archive (torch >= 1.6) holding a state dict.
    PyTorch,
    /// Hugging Face safetensors.
    Safetensors,
}

/// What sniffing the first bytes of a file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Format(WeightFormat),
    LegacyPytorch,
    Unknown,
}

fn sniff(bytes: &[u8]) -> Sniffed {
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if u64_at(0) == Some(mxnet::LIST_MAGIC) {
        return Sniffed::Format(WeightFormat::MxnetParams);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Sniffed::Format(WeightFormat::PyTorch);
    }
    if let Some(n) = u64_at(0) {
        if bytes.get(8) == Some(&b'{') && n >= 2 && n.saturating_add(8) <= bytes.len() as u64 {
            return Sniffed::Format(WeightFormat::Safetensors);
        }
    }
    // A pickle stream (PROTO opcode, protocol 2..5): what torch.save wrote before 1.6.
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Sniffed::LegacyPytorch;
    }
    Sniffed::Unknown
}

impl WeightFormat {
    /// Detects the format from the leading bytes of a file (at least the first 9 bytes, or the
    /// whole file for safetensors, whose header length is checked against the file size).
    pub fn detect(bytes: &[u8]) -> Option<WeightFormat> {
        match sniff(bytes) {
            Sniffed::Format(f) => Some(f),
            _ => None,
        }
    }
}

/// Why an entry of a weight file was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// An MXNet "none" NDArray (no shape, no data).
    NoneArray,
    /// PyTorch's BatchNorm `num_batches_tracked` counter, which MXNet does not have.
    BatchCounter,
    /// A PyTorch key that follows none of the naming rules of [`names`].
    NoCanonicalName,
    /// A state-dict value that is not a tensor (e.g. `_metadata`).
    NotATensor,
}

/// A weight file loaded into memory under canonical names.
#[derive(Debug, Clone)]
pub struct WeightFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its detected format.
    pub format: WeightFormat,
    /// Tensors under canonical names, all `f32` and on the CPU.
    pub tensors: BTreeMap<String, Tensor>,
    /// The safetensors `__metadata__` map; empty for the other formats.
    pub metadata: BTreeMap<String, String>,
    /// Lower-case hex MD5 of the whole file, to identify the authors' released files.
    pub md5: String,
    /// The released file with this MD5, if it is one of the authors' files.
    pub released: Option<&'static ReleasedFile>,
    /// Source names present in the file that were deliberately not loaded, with the reason.
    pub skipped: Vec<(String, SkipReason)>,
}

impl WeightFile {
    /// The tensor with this canonical name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Tensor shapes by canonical name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect()
    }

    /// Number of stored values, BN running statistics included (109,215,656 for the released
    /// A1 classifier).
    pub fn value_count(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    /// Number of trainable values: all values except BN running statistics (109,167,912 for the
    /// released A1 classifier).
    pub fn trainable_count(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(n, _)| !names::is_running_stat(n))
            .map(|(_, t)| t.elem_count())
            .sum()
    }
}

/// Number of stored values of a loaded file; see [`WeightFile::value_count`].
pub fn parameter_count(file: &WeightFile) -> usize {
    file.value_count()
}

/// Tensors, metadata and skipped entries produced by one of the format readers.
pub(crate) struct Loaded {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
    pub skipped: Vec<(String, SkipReason)>,
}

/// Loads a weight file of any supported format, detected from its content.
///
/// Names are converted to canonical names (MXNet prefixes removed, PyTorch PSA keys translated
/// by [`names::to_canonical`]) and every tensor to `f32` on the CPU. The MD5 of the file is
/// computed and matched against the authors' released files.
///
/// The file is memory-mapped, not read: its bytes are decoded straight from the page cache,
/// so loading allocates one copy of the weights (the decoded tensors), not two; the mapped
/// pages are the kernel's to drop under memory pressure.
pub fn load(path: &Path) -> Result<WeightFile, WeightError> {
    let _span = tracing::debug_span!("read_weights", path = %path.display()).entered();
    let io = |op: &'static str| {
        move |source| WeightError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let file = std::fs::File::open(path).map_err(io("open"))?;
    let meta = file.metadata().map_err(io("read"))?;
    if !meta.is_file() || meta.len() == 0 {
        // A directory, a device, an empty file (which cannot be mapped): reading reports it.
        return load_bytes(path, &std::fs::read(path).map_err(io("read"))?);
    }
    // SAFETY: the map is read-only and dropped before returning; like every memory-mapped
    // loader (candle's, safetensors'), it assumes no other process truncates the file meanwhile.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("map"))?;
    load_bytes(path, &map)
}

/// Like [`load`], for a file already in memory; `path` is used for messages and recorded.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<WeightFile, WeightError> {
    let format = match sniff(bytes) {
        Sniffed::Format(f) => f,
        Sniffed::LegacyPytorch => {
            return Err(WeightError::LegacyPytorch {
                path: path.to_path_buf(),
            })
        }
        Sniffed::Unknown => {
            let head = bytes
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(WeightError::UnknownFormat {
                path: path.to_path_buf(),
                head: if head.is_empty() {
                    "none, the file is empty".into()
                } else {
                    head
                },
            });
        }
    };
    let loaded = match format {
        WeightFormat::MxnetParams => mxnet::read_params_bytes(path, bytes)?,
        WeightFormat::PyTorch => pytorch::read_pth_bytes(path, bytes)?,
        WeightFormat::Safetensors => safetensors::read_safetensors_bytes(path, bytes)?,
    };
    let md5 = md5_hex(bytes);
    let released = find_by_md5(&md5);
    tracing::debug!(
        path = %path.display(),
        ?format,
        tensors = loaded.tensors.len(),
        skipped = loaded.skipped.len(),
        %md5,
        "loaded weight file"
    );
    Ok(WeightFile {
        path: path.to_path_buf(),
        format,
        tensors: loaded.tensors,
        metadata: loaded.metadata,
        md5,
        released,
        skipped: loaded.skipped,
    })
}

/// Lower-case hex MD5 of a byte string.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Floating-point element types that the readers accept and convert to `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F64,
    F16,
    BF16,
}

impl FloatKind {
    pub(crate) fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F64 => 8,
            FloatKind::F16 | FloatKind::BF16 => 2,
        }
    }

    /// Decodes one little-endian element; `b` has exactly [`FloatKind::size`] bytes.
    fn decode_one(self, b: &[u8]) -> f32 {
        match self {
            FloatKind::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            FloatKind::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            FloatKind::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            FloatKind::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        }
    }

    /// Decodes a packed little-endian buffer; a partial trailing element is ignored (callers
    /// pass exact lengths).
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(self.size())
            .map(|c| self.decode_one(c))
            .collect()
    }
}

/// `e` without the backtrace candle attaches when `RUST_BACKTRACE` is set: displaying one
/// resolves symbols from the binary's debug info (tens of MiB and seconds), and a message about
/// a malformed file gains nothing from it.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

/// Builds an `f32` CPU tensor from values whose count has been checked against `dims`.
pub(crate) fn f32_tensor(
    path: &Path,
    name: &str,
    values: Vec<f32>,
    dims: &[usize],
) -> Result<Tensor, WeightError> {
    Tensor::from_vec(values, dims, &Device::Cpu).map_err(|source| WeightError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        source: Box::new(without_backtrace(source)),
    })
}

/// Returns `tensor` as a contiguous CPU tensor of dtype `dtype`.
pub(crate) fn cpu_contiguous(
    path: &Path,
    name: &str,
    tensor: &Tensor,
    dtype: DType,
) -> Result<Tensor, WeightError> {
    let wrap = |source: candle_core::Error| WeightError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        source: Box::new(without_backtrace(source)),
    };
    tensor
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.contiguous())
        .map_err(wrap)
}

/// Inserts a converted tensor under its canonical name, rejecting duplicates.
pub(crate) fn insert_unique(
    path: &Path,
    tensors: &mut BTreeMap<String, Tensor>,
    sources: &mut BTreeMap<String, String>,
    canonical: String,
    source_name: &str,
    tensor: Tensor,
) -> Result<(), WeightError> {
    if let Some(first) = sources.get(&canonical) {
        return Err(WeightError::DuplicateName {
            path: path.to_path_buf(),
            name: canonical,
            first: first.clone(),
            second: source_name.to_string(),
        });
    }
    sources.insert(canonical.clone(), source_name.to_string());
    tensors.insert(canonical, tensor);
    Ok(())
}

/// Writes a file atomically: the content goes to a new temporary file in the same directory,
/// which is flushed to disk and then renamed over `path`, so that no half-written file ever
/// appears under the final name. The temporary file is removed on failure.
pub(crate) fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), WeightError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WeightError::Io {
            path: p,
            op,
            source,
        }
    };
    let file_name = path.file_name().ok_or_else(|| WeightError::Io {
        path: path.to_path_buf(),
        op: "write (the path has no file name)",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err("create a temporary file", &tmp))?;
    let result = (|| {
        let mut writer = std::io::BufWriter::new(file);
        write(&mut writer).map_err(io_err("write", &tmp))?;
        let file = writer
            .into_inner()
            .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err("rename the temporary file onto", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable where the platform allows opening directories.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        let mut mx = mxnet::LIST_MAGIC.to_le_bytes().to_vec();
        mx.extend([0u8; 16]);
        assert_eq!(WeightFormat::detect(&mx), Some(WeightFormat::MxnetParams));
        assert_eq!(
            WeightFormat::detect(b"PK\x03\x04rest"),
            Some(WeightFormat::PyTorch)
        );
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend(b"{}");
        assert_eq!(WeightFormat::detect(&st), Some(WeightFormat::Safetensors));
        assert_eq!(sniff(b"\x80\x02\x8a\x0a"), Sniffed::LegacyPytorch);
        assert_eq!(WeightFormat::detect(b""), None);
        assert_eq!(WeightFormat::detect(b"hello world, not weights"), None);
    }

    #[test]
    fn unknown_and_legacy_errors() {
        let p = Path::new("x.bin");
        assert!(matches!(
            load_bytes(p, b"hello world, not weights"),
            Err(WeightError::UnknownFormat { .. })
        ));
        assert!(matches!(
            load_bytes(p, b""),
            Err(WeightError::UnknownFormat { .. })
        ));
        let e = load_bytes(p, b"\x80\x02\x8a\x0alegacy").unwrap_err();
        assert!(matches!(e, WeightError::LegacyPytorch { .. }));
        assert!(e.to_string().contains("torch>=1.6"), "{e}");
    }

    #[test]
    fn float_decoding() {
        let v = [1.5f64, -2.25];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(FloatKind::F64.decode(&bytes), vec![1.5, -2.25]);
        let h: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(FloatKind::F16.decode(&h), vec![0.5, -3.0]);
        let b: Vec<u8> = [half::bf16::from_f32(0.5), half::bf16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(FloatKind::BF16.decode(&b), vec![0.5, -3.0]);
    }

    #[test]
    fn md5_of_known_string() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The MXNet-generated parity fixtures (`tests/fixtures/*/`): every header variant and the
    /// PyTorch export of a case must load into identical tensors.
    #[test]
    fn fixture_variants_load_identically() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let a1 = root.join("a1_cls");
        assert!(
            a1.join("weights.params").exists(),
            "missing fixture {}",
            a1.display()
        );
        let mut cases = 0;
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            let reference = dir.join("weights.params");
            if !reference.exists() {
                continue;
            }
            cases += 1;
            let base = load(&reference).unwrap();
            assert_eq!(base.format, WeightFormat::MxnetParams);
            assert!(base.skipped.is_empty(), "{:?}", base.skipped);
            assert!(base.get("conv1a_weight").is_some(), "{}", dir.display());
            let mut variants = 0;
            for variant in [
                "weights_legacy.params",
                "weights_v1.params",
                "weights_f16.params",
            ] {
                let p = dir.join(variant);
                if !p.exists() {
                    continue;
                }
                variants += 1;
                let other = load(&p).unwrap();
                assert_eq!(other.format, WeightFormat::MxnetParams);
                assert_eq!(
                    other.tensors.keys().collect::<Vec<_>>(),
                    base.tensors.keys().collect::<Vec<_>>(),
                    "{}",
                    p.display()
                );
                for (name, t) in &base.tensors {
                    let o = &other.tensors[name];
                    assert_eq!(o.dims(), t.dims(), "{} {name}", p.display());
                    assert_eq!(flat(o), flat(t), "{} {name}", p.display());
                }
            }
            let pth = dir.join("weights.pth");
            if pth.exists() {
                variants += 1;
                let other = load(&pth).unwrap();
                assert_eq!(other.format, WeightFormat::PyTorch);
                for (name, reason) in &other.skipped {
                    assert!(
                        *reason == SkipReason::BatchCounter,
                        "{}: {name} skipped: {reason:?}",
                        pth.display()
                    );
                }
                // PSA state dicts carry the backbone only; the head stays in the .params.
                for (name, t) in &base.tensors {
                    match other.tensors.get(name) {
                        Some(o) => {
                            assert_eq!(o.dims(), t.dims(), "{} {name}", pth.display());
                            assert_eq!(flat(o), flat(t), "{} {name}", pth.display());
                        }
                        None => assert!(
                            name.starts_with("linear") || name.starts_with("conv6a"),
                            "{}: missing backbone tensor {name}",
                            pth.display()
                        ),
                    }
                }
                assert!(other.tensors.keys().all(|k| base.tensors.contains_key(k)));
            }
            if dir.ends_with("a1_cls") {
                assert_eq!(variants, 4, "a1_cls should have all four variants");
            }
        }
        assert!(cases >= 1);
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("r38-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        atomic_write(&target, |w| w.write_all(b"first")).unwrap();
        atomic_write(&target, |w| w.write_all(b"second")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let err = atomic_write(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(matches!(err, Err(WeightError::Io { .. })));
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("out.bin")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
