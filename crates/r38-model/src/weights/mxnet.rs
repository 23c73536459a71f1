//! Reader and writer for MXNet NDArray-list files (`mx.nd.save`), the format of the authors'
//! released `.params` files (reference §4.2).
//!
//! Layout, little-endian: `u64 0x112`, `u64 reserved`, `u64 count` + that many arrays,
//! `u64 count` + that many names (`u64 len` + bytes). Each array is one of:
//!
//! | form | header | shape |
//! |---|---|---|
//! | legacy | (none) | `u32 ndim` + ndim × `u32` |
//! | V1 | `u32 0xF993FAC8` | `i32 ndim` + ndim × `i64` |
//! | V2 | `u32 0xF993FAC9`, `i32 storage type` (0 = dense) | `i32 ndim` + ndim × `i64` |
//! | V3 | `u32 0xF993FACA`, `i32 storage type` (0 = dense) | `i32 ndim` + ndim × `i64` |
//!
//! followed by `i32 dev_type`, `i32 dev_id`, `i32 dtype` and the raw little-endian data.
//! V3 is what MXNet writes with NumPy shape semantics (`npx.set_np()`); the bytes are laid out
//! as in V2, only the meaning of a shape differs.
//!
//! "None" arrays (an `NDArray` without storage) are written as a shape only, with nothing after
//! it. Shape semantics, following the MXNet versions that write each form:
//! - legacy, V1, V2: `ndim == 0` is a none array. (MXNet 1.9 reads a legacy/V1 `ndim == 0` as a
//!   scalar followed by data instead, but no MXNet version writes a non-none 0-dim array in
//!   these forms and have it read back; the authors' 2016 files predate that change.)
//! - V3: `ndim == -1` or any dimension `== -1` is a none array; `ndim == 0` is a scalar with one
//!   element of data.
//! - all forms: a dimension of 0 gives a zero-element array, followed by its context and dtype
//!   (MXNet 1.9 reads these in every form).
//!
//! None arrays are not loaded; they are listed in [`WeightFile::skipped`](super::WeightFile).
//!
//! Element types: codes 0 (f32), 1 (f64), 2 (f16) and 12 (bf16) are converted to `f32`. The
//! integer and boolean codes 3..=11 are known but rejected with
//! [`WeightError::UnsupportedDtype`]: a network parameter is never an integer, and a silent
//! conversion would hide a wrong file. Other codes give [`WeightError::UnknownDtype`].
//!
//! The reader is hostile-input safe: it works on the file's bytes through a bounds-checked
//! cursor, checks every declared count and size (with overflow-checked arithmetic) against the
//! bytes that remain before allocating anything, and never panics.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::{
    atomic_write, f32_tensor, insert_unique, names, FloatKind, Loaded, SkipReason, WeightError,
};

/// Magic number of an NDArray-list file (`kMXAPINDArrayListMagic`).
pub const LIST_MAGIC: u64 = 0x112;
/// Magic number of a V1 NDArray record (64-bit dimensions).
pub const V1_MAGIC: u32 = 0xF993_FAC8;
/// Magic number of a V2 NDArray record (adds the storage type).
pub const V2_MAGIC: u32 = 0xF993_FAC9;
/// Magic number of a V3 NDArray record (V2 layout, NumPy shape semantics).
pub const V3_MAGIC: u32 = 0xF993_FACA;

/// Smallest possible array record: a legacy none array is just `u32 ndim = 0`.
const MIN_ARRAY_BYTES: u64 = 4;
/// Smallest possible name record: `u64 len = 0`.
const MIN_NAME_BYTES: u64 = 8;

/// The NDArray record form [`write_params`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// No magic, `u32` dimensions: what MXNet wrote until 2016/17, readable by every version.
    Legacy,
    /// `0xF993FAC8`, `i64` dimensions.
    V1,
    /// `0xF993FAC9`, dense storage type, `i64` dimensions: what MXNet 1.x writes by default.
    #[default]
    V2,
    /// `0xF993FACA`: V2 with NumPy shape semantics (MXNet >= 1.6 under `npx.set_np()`); the only
    /// form that can hold 0-dimensional tensors.
    V3,
}

/// MXNet dtype codes (mshadow `TypeFlag`).
fn dtype_info(code: i32) -> Option<(&'static str, usize, Option<FloatKind>)> {
    Some(match code {
        0 => ("float32", 4, Some(FloatKind::F32)),
        1 => ("float64", 8, Some(FloatKind::F64)),
        2 => ("float16", 2, Some(FloatKind::F16)),
        3 => ("uint8", 1, None),
        4 => ("int32", 4, None),
        5 => ("int8", 1, None),
        6 => ("int64", 8, None),
        7 => ("bool", 1, None),
        8 => ("int16", 2, None),
        9 => ("uint16", 2, None),
        10 => ("uint32", 4, None),
        11 => ("uint64", 8, None),
        12 => ("bfloat16", 2, Some(FloatKind::BF16)),
        _ => return None,
    })
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], WeightError> {
        let available = self.remaining();
        if n > available {
            return Err(WeightError::Truncated {
                path: self.path.to_path_buf(),
                offset: self.offset(),
                what: what(),
                needed: n,
                available,
            });
        }
        // n <= available <= usize::MAX here.
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], WeightError> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, WeightError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32, WeightError> {
        self.array(what).map(i32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, WeightError> {
        self.array(what).map(u64::from_le_bytes)
    }
}

/// One parsed array record, data not yet converted.
enum Record<'a> {
    /// A none array.
    None,
    /// A dense array.
    Dense {
        dims: Vec<usize>,
        code: i32,
        data: &'a [u8],
    },
}

fn read_record<'a>(c: &mut Cursor<'a>, index: u64) -> Result<Record<'a>, WeightError> {
    let path = c.path;
    let label = || format!("array #{index}");
    let start = c.offset();
    let first = c.u32(&|| format!("{} header", label()))?;
    let (wide, v3) = match first {
        V1_MAGIC => (true, false),
        V2_MAGIC | V3_MAGIC => {
            let at = c.offset();
            let stype = c.i32(&|| format!("{} storage type", label()))?;
            if stype != 0 {
                return Err(WeightError::UnsupportedStorage {
                    path: c.path.to_path_buf(),
                    tensor: label(),
                    offset: at,
                    stype,
                });
            }
            (true, first == V3_MAGIC)
        }
        _ => (false, false),
    };
    let shape_at = c.offset();
    let invalid = |reason: String| WeightError::InvalidShape {
        path: path.to_path_buf(),
        tensor: label(),
        offset: shape_at,
        reason,
    };
    let mut none = false;
    let mut raw_dims: Vec<i64> = Vec::new();
    if wide {
        let ndim = c.i32(&|| format!("{} ndim", label()))?;
        if v3 && ndim == -1 {
            return Ok(Record::None);
        }
        if ndim < 0 {
            return Err(invalid(format!("negative ndim {ndim}")));
        }
        let bytes = c.take(ndim as u64 * 8, &|| format!("{} dimensions", label()))?;
        raw_dims.extend(
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        );
        if !v3 && ndim == 0 {
            none = true;
        }
    } else {
        // Legacy: the first u32 is ndim itself.
        let ndim = first;
        let bytes = c.take(ndim as u64 * 4, &|| format!("{} dimensions", label()))?;
        raw_dims.extend(
            bytes
                .chunks_exact(4)
                .map(|b| i64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))),
        );
        if ndim == 0 {
            none = true;
        }
    }
    if v3 && raw_dims.contains(&-1) {
        none = true;
    }
    if none {
        return Ok(Record::None);
    }
    if let Some(d) = raw_dims.iter().find(|d| **d < 0) {
        return Err(invalid(format!("negative dimension {d} in {raw_dims:?}")));
    }
    let overflow = || WeightError::ShapeOverflow {
        path: path.to_path_buf(),
        tensor: label(),
        shape: format!("{raw_dims:?}"),
    };
    let mut count: u64 = 1;
    let mut dims = Vec::with_capacity(raw_dims.len());
    for &d in &raw_dims {
        // d >= 0 was checked above.
        count = count.checked_mul(d as u64).ok_or_else(overflow)?;
        dims.push(usize::try_from(d).map_err(|_| overflow())?);
    }
    let _dev_type = c.i32(&|| format!("{} device type", label()))?;
    let _dev_id = c.i32(&|| format!("{} device id", label()))?;
    let code = c.i32(&|| format!("{} dtype", label()))?;
    let Some((_, size, _)) = dtype_info(code) else {
        return Err(WeightError::UnknownDtype {
            path: c.path.to_path_buf(),
            tensor: format!(
                "{} (names follow the arrays; record at byte offset {start})",
                label()
            ),
            code: i64::from(code),
        });
    };
    let needed = count.checked_mul(size as u64).ok_or_else(overflow)?;
    let data_at = c.offset();
    if needed > c.remaining() {
        return Err(WeightError::DataExceedsFile {
            path: c.path.to_path_buf(),
            tensor: label(),
            offset: data_at,
            needed,
            available: c.remaining(),
        });
    }
    let data = c.take(needed, &|| format!("{} data", label()))?;
    Ok(Record::Dense { dims, code, data })
}

/// Parses an NDArray-list file held in memory. Names lose their `arg:`/`aux:` prefix (names
/// without one are kept as they are); nothing else is renamed.
pub(crate) fn read_params_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightError> {
    let mut c = Cursor {
        buf: bytes,
        pos: 0,
        path,
    };
    let magic = c.u64(&|| "file magic".into())?;
    if magic != LIST_MAGIC {
        return Err(WeightError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let _reserved = c.u64(&|| "reserved header field".into())?;
    let count_at = c.offset();
    let n_arrays = c.u64(&|| "array count".into())?;
    let max = c.remaining() / MIN_ARRAY_BYTES;
    if n_arrays > max {
        return Err(WeightError::CountTooLarge {
            path: path.to_path_buf(),
            offset: count_at,
            what: "arrays",
            count: n_arrays,
            available: c.remaining(),
            max,
        });
    }
    // n_arrays <= remaining / 4, so this allocation is bounded by the file size.
    let mut records = Vec::with_capacity(n_arrays as usize);
    for i in 0..n_arrays {
        records.push(read_record(&mut c, i)?);
    }
    let count_at = c.offset();
    let n_names = c.u64(&|| "name count".into())?;
    if n_names == 0 && n_arrays > 0 {
        return Err(WeightError::UnnamedArrays {
            path: path.to_path_buf(),
            arrays: n_arrays,
        });
    }
    if n_names != n_arrays {
        return Err(WeightError::CountMismatch {
            path: path.to_path_buf(),
            arrays: n_arrays,
            names: n_names,
        });
    }
    let max = c.remaining() / MIN_NAME_BYTES;
    if n_names > max {
        return Err(WeightError::CountTooLarge {
            path: path.to_path_buf(),
            offset: count_at,
            what: "names",
            count: n_names,
            available: c.remaining(),
            max,
        });
    }
    let mut keys = Vec::with_capacity(n_names as usize);
    for i in 0..n_names {
        let len = c.u64(&|| format!("length of name #{i}"))?;
        let at = c.offset();
        let raw = c.take(len, &|| format!("name #{i}"))?;
        let name = std::str::from_utf8(raw).map_err(|_| WeightError::NameNotUtf8 {
            path: path.to_path_buf(),
            offset: at,
        })?;
        keys.push(name.to_string());
    }
    if c.remaining() > 0 {
        return Err(WeightError::TrailingBytes {
            path: path.to_path_buf(),
            offset: c.offset(),
            count: c.remaining(),
        });
    }

    let mut tensors = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, record) in keys.into_iter().zip(records) {
        let canonical = names::strip_mxnet_prefix(&key);
        if canonical.is_empty() {
            return Err(WeightError::InvalidName {
                path: path.to_path_buf(),
                name: key,
                reason: "empty after removing the arg:/aux: prefix",
            });
        }
        if let Some(first) = sources.get(canonical) {
            return Err(WeightError::DuplicateName {
                path: path.to_path_buf(),
                name: canonical.to_string(),
                first: String::clone(first),
                second: key,
            });
        }
        let (dims, code, data) = match record {
            Record::None => {
                sources.insert(canonical.to_string(), key.clone());
                skipped.push((key, SkipReason::NoneArray));
                continue;
            }
            Record::Dense { dims, code, data } => (dims, code, data),
        };
        // dtype_info succeeded while parsing.
        let Some((dtype_name, _, kind)) = dtype_info(code) else {
            return Err(WeightError::UnknownDtype {
                path: path.to_path_buf(),
                tensor: key,
                code: i64::from(code),
            });
        };
        let Some(kind) = kind else {
            return Err(WeightError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: key,
                dtype: dtype_name.to_string(),
            });
        };
        let tensor = f32_tensor(path, &key, kind.decode(data), &dims)?;
        let canonical = canonical.to_string();
        insert_unique(path, &mut tensors, &mut sources, canonical, &key, tensor)?;
    }
    Ok(Loaded {
        tensors,
        metadata: BTreeMap::new(),
        skipped,
    })
}

/// The full MXNet key (`arg:`/`aux:` prefix) for a canonical name; see [`names::mxnet_key`].
pub fn mxnet_key(canonical: &str) -> String {
    names::mxnet_key(canonical)
}

/// Writes tensors as an MXNet NDArray-list file that `mx.nd.load` reads, e.g. to take weights
/// trained here back to MXNet. Keys are written as given (use [`mxnet_key`] to build them from
/// canonical names). Tensors keep their dtype (f32, f64, f16 or bf16; others are refused).
///
/// The file is written atomically: to a temporary file in the same directory, flushed, then
/// renamed. Legacy, V1 and V2 cannot represent 0-dimensional tensors (`ndim == 0` means a none
/// array there; use [`HeaderStyle::V3`]), and legacy needs every dimension to fit in 32 bits;
/// such tensors give [`WeightError::Unrepresentable`] before anything is written.
pub fn write_params(
    path: &Path,
    entries: &[(String, &Tensor)],
    style: HeaderStyle,
) -> Result<(), WeightError> {
    let unrepresentable = |name: &str, reason: String| WeightError::Unrepresentable {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let mut seen = BTreeMap::new();
    let mut prepared: Vec<(&str, Vec<usize>, i32, Vec<u8>)> = Vec::with_capacity(entries.len());
    for (key, tensor) in entries {
        if let Some(first) = seen.insert(key.as_str(), key.as_str()) {
            return Err(WeightError::DuplicateName {
                path: path.to_path_buf(),
                name: key.clone(),
                first: first.to_string(),
                second: key.clone(),
            });
        }
        let dims = tensor.dims().to_vec();
        if style != HeaderStyle::V3 && dims.is_empty() {
            return Err(unrepresentable(
                key,
                format!(
                    "0-dimensional tensors need HeaderStyle::V3 ({style:?} reads ndim 0 as a \
                     none array)"
                ),
            ));
        }
        if style == HeaderStyle::Legacy && dims.iter().any(|&d| u32::try_from(d).is_err()) {
            return Err(unrepresentable(
                key,
                format!("dimension of {dims:?} does not fit the 32 bits of the legacy form"),
            ));
        }
        let (code, data) = match tensor.dtype() {
            DType::F32 => (0, le_bytes::<f32>(path, key, tensor)?),
            DType::F64 => (1, le_bytes::<f64>(path, key, tensor)?),
            DType::F16 => (2, le_bytes::<half::f16>(path, key, tensor)?),
            DType::BF16 => (12, le_bytes::<half::bf16>(path, key, tensor)?),
            other => {
                return Err(unrepresentable(
                    key,
                    format!("dtype {other:?} is not written (only f32, f64, f16, bf16)"),
                ))
            }
        };
        prepared.push((key, dims, code, data));
    }
    atomic_write(path, |w| {
        w.write_all(&LIST_MAGIC.to_le_bytes())?;
        w.write_all(&0u64.to_le_bytes())?;
        w.write_all(&(prepared.len() as u64).to_le_bytes())?;
        for (_, dims, code, data) in &prepared {
            match style {
                HeaderStyle::Legacy => {
                    w.write_all(&(dims.len() as u32).to_le_bytes())?;
                    for &d in dims {
                        w.write_all(&(d as u32).to_le_bytes())?;
                    }
                }
                HeaderStyle::V1 | HeaderStyle::V2 | HeaderStyle::V3 => {
                    let magic = match style {
                        HeaderStyle::V1 => V1_MAGIC,
                        HeaderStyle::V2 => V2_MAGIC,
                        _ => V3_MAGIC,
                    };
                    w.write_all(&magic.to_le_bytes())?;
                    if style != HeaderStyle::V1 {
                        w.write_all(&0i32.to_le_bytes())?;
                    }
                    w.write_all(&(dims.len() as i32).to_le_bytes())?;
                    for &d in dims {
                        w.write_all(&(d as i64).to_le_bytes())?;
                    }
                }
            }
            w.write_all(&1i32.to_le_bytes())?; // dev_type: CPU
            w.write_all(&0i32.to_le_bytes())?; // dev_id
            w.write_all(&code.to_le_bytes())?;
            w.write_all(data)?;
        }
        w.write_all(&(prepared.len() as u64).to_le_bytes())?;
        for (key, ..) in &prepared {
            w.write_all(&(key.len() as u64).to_le_bytes())?;
            w.write_all(key.as_bytes())?;
        }
        Ok(())
    })
}

/// Element types [`write_params`] can serialise.
trait LeBytes: candle_core::WithDType {
    fn extend_le(v: &[Self], out: &mut Vec<u8>);
}

macro_rules! le_bytes_impl {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            fn extend_le(v: &[Self], out: &mut Vec<u8>) {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    )*};
}
le_bytes_impl!(f32, f64, half::f16, half::bf16);

fn le_bytes<T: LeBytes>(path: &Path, key: &str, tensor: &Tensor) -> Result<Vec<u8>, WeightError> {
    let values = super::cpu_contiguous(path, key, tensor, T::DTYPE).and_then(|t| {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<T>())
            .map_err(|source| WeightError::Tensor {
                path: path.to_path_buf(),
                tensor: key.to_string(),
                source: Box::new(source),
            })
    })?;
    let mut out = Vec::with_capacity(values.len() * std::mem::size_of::<T>());
    T::extend_le(&values, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{load, load_bytes, WeightFile, WeightFormat};
    use candle_core::Device;

    fn tmp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("r38-mx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        let g = Tensor::new(&[1.5f32, -0.25, 3.0], &dev).unwrap();
        let m = Tensor::new(&[0.125f32, 2.0, -7.5], &dev).unwrap();
        let fc = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        vec![
            ("arg:res2a_branch2a_weight".into(), w),
            ("arg:bn2a_branch2a_gamma".into(), g),
            ("aux:bn2a_branch2a_moving_mean".into(), m),
            ("arg:linear3_weight".into(), fc),
        ]
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_same(file: &WeightFile, expected: &[(String, Tensor)]) {
        assert_eq!(file.tensors.len(), expected.len());
        for (key, t) in expected {
            let name = names::strip_mxnet_prefix(key);
            let got = file.get(name).unwrap_or_else(|| panic!("missing {name}"));
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.dims(), t.dims(), "{name}");
            let want = values(&t.to_dtype(DType::F32).unwrap());
            assert_eq!(values(got), want, "{name}");
        }
    }

    #[test]
    fn round_trip_every_header_style() {
        let dir = tmp_dir("styles");
        let entries = sample();
        let refs: Vec<(String, &Tensor)> = entries.iter().map(|(k, t)| (k.clone(), t)).collect();
        for style in [
            HeaderStyle::Legacy,
            HeaderStyle::V1,
            HeaderStyle::V2,
            HeaderStyle::V3,
        ] {
            let p = dir.join(format!("{style:?}.params"));
            write_params(&p, &refs, style).unwrap();
            let f = load(&p).unwrap();
            assert_eq!(f.format, WeightFormat::MxnetParams);
            assert!(f.metadata.is_empty() && f.skipped.is_empty() && f.released.is_none());
            assert_eq!(f.md5, crate::weights::md5_hex(&std::fs::read(&p).unwrap()));
            assert_same(&f, &entries);
            assert_eq!(f.value_count(), 24 + 3 + 3 + 6);
            assert_eq!(f.trainable_count(), 24 + 3 + 6);
        }
        // Legacy: 4 bytes per dim; V1 8 per dim; V2/V3 add the storage type.
        let size = |s: &str| std::fs::metadata(dir.join(s)).unwrap().len();
        let dims = 4 + 1 + 1 + 2;
        assert_eq!(size("V1.params") - size("Legacy.params"), 4 * 4 + 4 * dims);
        assert_eq!(size("V2.params") - size("V1.params"), 4 * 4);
        assert_eq!(size("V3.params"), size("V2.params"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bytes MXNet 1.9.1 wrote for a small `mx.nd.save` call (V2 records), copied from a
    /// hex dump of its output.
    #[test]
    fn reads_mxnet_v2_bytes() {
        // mx.nd.save('a.params', {'arg:x': arange(6).reshape(2,3) f32, 'aux:y': [1.5] f16})
        let hex = "12010000 00000000 00000000 00000000 02000000 00000000 c9fa93f9 00000000 \
                   02000000 02000000 00000000 03000000 00000000 01000000 00000000 00000000 \
                   00000000 0000803f 00000040 00004040 00008040 0000a040 c9fa93f9 00000000 \
                   01000000 01000000 00000000 01000000 00000000 02000000 003e0200 00000000 \
                   00000500 00000000 00006172 673a7805 00000000 00000061 75783a79";
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .flat_map(|w| {
                (0..w.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&w[i..i + 2], 16).unwrap())
            })
            .collect();
        let f = load_bytes(Path::new("a.params"), &bytes).unwrap();
        assert_eq!(f.get("x").unwrap().dims(), &[2, 3]);
        assert_eq!(values(f.get("x").unwrap()), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(values(f.get("y").unwrap()), vec![1.5]);
    }

    #[test]
    fn f16_f64_bf16_are_converted() {
        let dir = tmp_dir("dtypes");
        let dev = Device::Cpu;
        let base = Tensor::new(&[0.5f32, -1.25, 1024.0, 3.0e-3], &dev).unwrap();
        let entries = vec![
            ("arg:a".to_string(), base.to_dtype(DType::F16).unwrap()),
            ("arg:b".to_string(), base.to_dtype(DType::F64).unwrap()),
            ("arg:c".to_string(), base.to_dtype(DType::BF16).unwrap()),
        ];
        let refs: Vec<(String, &Tensor)> = entries.iter().map(|(k, t)| (k.clone(), t)).collect();
        let p = dir.join("mixed.params");
        write_params(&p, &refs, HeaderStyle::V2).unwrap();
        let f = load(&p).unwrap();
        assert_same(&f, &entries);
        assert_eq!(values(f.get("b").unwrap()), values(&base));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_refuses_what_the_format_cannot_hold() {
        let dir = tmp_dir("refuse");
        let p = dir.join("x.params");
        let dev = Device::Cpu;
        let scalar = Tensor::new(2f32, &dev).unwrap();
        let e = write_params(&p, &[("arg:s".into(), &scalar)], HeaderStyle::V2).unwrap_err();
        assert!(matches!(e, WeightError::Unrepresentable { .. }), "{e}");
        assert!(!p.exists());
        // V3 holds scalars.
        write_params(&p, &[("arg:s".into(), &scalar)], HeaderStyle::V3).unwrap();
        let f = load(&p).unwrap();
        assert_eq!(f.get("s").unwrap().dims(), &[] as &[usize]);
        assert_eq!(f.get("s").unwrap().to_scalar::<f32>().unwrap(), 2.0);
        let ints = Tensor::new(&[1u32, 2], &dev).unwrap();
        let e = write_params(&p, &[("arg:i".into(), &ints)], HeaderStyle::V2).unwrap_err();
        assert!(matches!(e, WeightError::Unrepresentable { .. }), "{e}");
        let t = Tensor::new(&[1f32], &dev).unwrap();
        let e = write_params(
            &p,
            &[("arg:t".into(), &t), ("arg:t".into(), &t)],
            HeaderStyle::V2,
        )
        .unwrap_err();
        assert!(matches!(e, WeightError::DuplicateName { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_element_arrays_round_trip() {
        let dir = tmp_dir("zero");
        let p = dir.join("z.params");
        let z = Tensor::zeros((0, 3), DType::F32, &Device::Cpu).unwrap();
        for style in [
            HeaderStyle::Legacy,
            HeaderStyle::V1,
            HeaderStyle::V2,
            HeaderStyle::V3,
        ] {
            write_params(&p, &[("arg:z".into(), &z)], style).unwrap();
            let f = load(&p).unwrap();
            assert_eq!(f.get("z").unwrap().dims(), &[0, 3], "{style:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- hostile input -------------------------------------------------------------------

    /// A little builder for hand-made (often broken) files.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn header(n: u64) -> Self {
            let mut b = Bytes::default();
            b.u64(LIST_MAGIC).u64(0).u64(n);
            b
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn i32(&mut self, v: i32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn i64(&mut self, v: i64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn raw(&mut self, v: &[u8]) -> &mut Self {
            self.0.extend_from_slice(v);
            self
        }
        /// A legacy f32 array of shape [n] with values 0..n.
        fn legacy_f32(&mut self, n: u32) -> &mut Self {
            self.u32(1).u32(n).i32(1).i32(0).i32(0);
            for i in 0..n {
                self.raw(&(i as f32).to_le_bytes());
            }
            self
        }
        fn names(&mut self, names: &[&[u8]]) -> &mut Self {
            self.u64(names.len() as u64);
            for n in names {
                self.u64(n.len() as u64).raw(n);
            }
            self
        }
        fn load(&self) -> Result<WeightFile, WeightError> {
            load_bytes(Path::new("hostile.params"), &self.0)
        }
    }

    fn good() -> Bytes {
        let mut b = Bytes::header(2);
        b.legacy_f32(3).legacy_f32(2).names(&[b"arg:a", b"aux:b"]);
        b
    }

    #[test]
    fn well_formed_hand_made_file() {
        let f = good().load().unwrap();
        assert_eq!(values(f.get("a").unwrap()), vec![0., 1., 2.]);
        assert_eq!(values(f.get("b").unwrap()), vec![0., 1.]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = good().0;
        for len in 0..full.len() {
            let r = load_bytes(Path::new("t.params"), &full[..len]);
            let e = r.expect_err("a truncated file must not load");
            assert!(
                matches!(
                    e,
                    WeightError::Truncated { .. }
                        | WeightError::UnknownFormat { .. }
                        | WeightError::CountTooLarge { .. }
                        | WeightError::DataExceedsFile { .. }
                ),
                "len {len}: {e}"
            );
        }
        // Truncated inside the data of the second array.
        let e = load_bytes(Path::new("t.params"), &full[..24 + 32 + 20 + 4]).unwrap_err();
        assert!(matches!(e, WeightError::DataExceedsFile { .. }), "{e}");
        assert!(e.to_string().contains("t.params"), "{e}");
    }

    #[test]
    fn huge_element_count_in_small_file() {
        // 2^40 f32 elements declared in a ~100-byte file: must fail before allocating.
        let mut b = Bytes::header(1);
        b.u32(V1_MAGIC)
            .i32(2)
            .i64(1 << 20)
            .i64(1 << 20)
            .i32(1)
            .i32(0)
            .i32(0);
        b.raw(&[0; 40]).names(&[b"arg:x"]);
        let e = b.load().unwrap_err();
        match e {
            WeightError::DataExceedsFile {
                needed, available, ..
            } => {
                assert_eq!(needed, 4 << 40);
                assert!(available < 100);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn element_count_overflow() {
        let mut b = Bytes::header(1);
        b.u32(V2_MAGIC)
            .i32(0)
            .i32(3)
            .i64(1 << 40)
            .i64(1 << 40)
            .i64(1 << 40);
        b.i32(1).i32(0).i32(0).names(&[b"arg:x"]);
        assert!(matches!(b.load(), Err(WeightError::ShapeOverflow { .. })));
        // Byte size overflow: count fits, count * 8 does not.
        let mut b = Bytes::header(1);
        b.u32(V1_MAGIC)
            .i32(1)
            .i64(i64::MAX)
            .i32(1)
            .i32(0)
            .i32(1)
            .names(&[b"arg:x"]);
        assert!(matches!(b.load(), Err(WeightError::ShapeOverflow { .. })));
    }

    #[test]
    fn huge_ndim_and_counts() {
        let mut b = Bytes::header(1);
        b.u32(0x7fff_ffff).raw(&[0; 64]);
        assert!(matches!(b.load(), Err(WeightError::Truncated { .. })));
        let mut b = Bytes::header(1);
        b.u32(V1_MAGIC).i32(i32::MAX).raw(&[0; 64]);
        assert!(matches!(b.load(), Err(WeightError::Truncated { .. })));
        let mut b = Bytes::header(u64::MAX);
        b.raw(&[0; 64]);
        assert!(matches!(b.load(), Err(WeightError::CountTooLarge { .. })));
        // A name count that passes the array check but cannot fit.
        let mut b = Bytes::header(0);
        b.u64(1 << 60);
        assert!(matches!(b.load(), Err(WeightError::CountMismatch { .. })));
        // Name count equal to the array count but larger than the bytes left can hold.
        let mut b = Bytes::header(3);
        b.u32(0).u32(0).u32(0).u64(3).raw(&[0; 8]);
        assert!(matches!(
            b.load(),
            Err(WeightError::CountTooLarge {
                what: "names",
                count: 3,
                max: 1,
                ..
            })
        ));
        // Huge name length.
        let mut b = Bytes::header(1);
        b.legacy_f32(1).u64(1).u64(u64::MAX).raw(b"arg:x");
        assert!(matches!(b.load(), Err(WeightError::Truncated { .. })));
    }

    #[test]
    fn negative_dims_and_ndim() {
        let mut b = Bytes::header(1);
        b.u32(V1_MAGIC)
            .i32(1)
            .i64(-5)
            .i32(1)
            .i32(0)
            .i32(0)
            .names(&[b"arg:x"]);
        assert!(matches!(b.load(), Err(WeightError::InvalidShape { .. })));
        let mut b = Bytes::header(1);
        b.u32(V2_MAGIC).i32(0).i32(-1).names(&[b"arg:x"]);
        assert!(matches!(b.load(), Err(WeightError::InvalidShape { .. })));
    }

    #[test]
    fn unknown_and_integer_dtypes() {
        let mut b = Bytes::header(1);
        b.u32(1)
            .u32(1)
            .i32(1)
            .i32(0)
            .i32(99)
            .raw(&[0; 4])
            .names(&[b"arg:x"]);
        let e = b.load().unwrap_err();
        assert!(
            matches!(e, WeightError::UnknownDtype { code: 99, .. }),
            "{e}"
        );
        let mut b = Bytes::header(1);
        b.u32(1)
            .u32(2)
            .i32(1)
            .i32(0)
            .i32(6)
            .raw(&[0; 16])
            .names(&[b"arg:counter"]);
        let e = b.load().unwrap_err();
        match &e {
            WeightError::UnsupportedDtype { tensor, dtype, .. } => {
                assert_eq!(tensor, "arg:counter");
                assert_eq!(dtype, "int64");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sparse_storage_is_refused() {
        let mut b = Bytes::header(1);
        b.u32(V2_MAGIC).i32(1).raw(&[0; 32]).names(&[b"arg:x"]);
        assert!(matches!(
            b.load(),
            Err(WeightError::UnsupportedStorage { stype: 1, .. })
        ));
    }

    #[test]
    fn names_problems() {
        let mut b = Bytes::header(2);
        b.legacy_f32(1).legacy_f32(1).names(&[b"arg:a", b"aux:a"]);
        assert!(matches!(b.load(), Err(WeightError::DuplicateName { .. })));
        let mut b = Bytes::header(2);
        b.legacy_f32(1).legacy_f32(1).names(&[b"arg:a", b"arg:a"]);
        assert!(matches!(b.load(), Err(WeightError::DuplicateName { .. })));
        let mut b = Bytes::header(1);
        b.legacy_f32(1).names(&[b"arg:\xff\xfe"]);
        assert!(matches!(
            b.load(),
            Err(WeightError::NameNotUtf8 { offset, .. }) if offset > 24
        ));
        let mut b = Bytes::header(1);
        b.legacy_f32(1).names(&[b"aux:"]);
        assert!(matches!(b.load(), Err(WeightError::InvalidName { .. })));
        let mut b = Bytes::header(2);
        b.legacy_f32(1).legacy_f32(1).names(&[b"arg:a"]);
        assert!(matches!(
            b.load(),
            Err(WeightError::CountMismatch {
                arrays: 2,
                names: 1,
                ..
            })
        ));
        let mut b = Bytes::header(2);
        b.legacy_f32(1).legacy_f32(1).names(&[]);
        assert!(matches!(b.load(), Err(WeightError::UnnamedArrays { .. })));
        // A name without prefix is accepted as is.
        let mut b = Bytes::header(1);
        b.legacy_f32(1).names(&[b"plain_weight"]);
        assert!(b.load().unwrap().get("plain_weight").is_some());
    }

    #[test]
    fn trailing_bytes_and_bad_magic() {
        let mut b = good();
        b.raw(b"junk");
        assert!(matches!(
            b.load(),
            Err(WeightError::TrailingBytes { count: 4, .. })
        ));
        let mut bytes = good().0;
        bytes[0] = 0x13;
        // No longer detected as MXNet at all.
        assert!(load_bytes(Path::new("x"), &bytes).is_err());
        let e = read_params_bytes(Path::new("x"), &bytes).err().unwrap();
        assert!(matches!(e, WeightError::BadMagic { found: 0x113, .. }));
    }

    #[test]
    fn none_arrays() {
        // legacy ndim 0 and V1/V2 ndim 0: none, nothing follows.
        for none in [
            vec![0u8, 0, 0, 0],
            [V1_MAGIC.to_le_bytes(), 0u32.to_le_bytes()].concat(),
            [V2_MAGIC.to_le_bytes(), [0; 4], 0u32.to_le_bytes()].concat(),
            [V3_MAGIC.to_le_bytes(), [0; 4], (-1i32).to_le_bytes()].concat(),
            [
                V3_MAGIC.to_le_bytes().as_slice(),
                &[0; 4],
                &2i32.to_le_bytes(),
                &(-1i64).to_le_bytes(),
                &3i64.to_le_bytes(),
            ]
            .concat(),
        ] {
            let mut b = Bytes::header(2);
            b.raw(&none).legacy_f32(2).names(&[b"arg:n", b"arg:b"]);
            let f = b.load().unwrap();
            assert!(f.get("n").is_none());
            assert_eq!(
                f.skipped,
                vec![("arg:n".to_string(), SkipReason::NoneArray)]
            );
            assert_eq!(values(f.get("b").unwrap()), vec![0., 1.]);
        }
        // V3 ndim 0 is a scalar with data.
        let mut b = Bytes::header(1);
        b.u32(V3_MAGIC)
            .i32(0)
            .i32(0)
            .i32(1)
            .i32(0)
            .i32(0)
            .raw(&4.5f32.to_le_bytes());
        b.names(&[b"arg:s"]);
        let f = b.load().unwrap();
        assert_eq!(f.get("s").unwrap().to_scalar::<f32>().unwrap(), 4.5);
    }

    /// Deterministic fuzzing: random byte flips and truncations of a valid file must give an
    /// error or a result, never a panic.
    #[test]
    fn mutations_never_panic() {
        let base = good().0;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut b = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            if next() % 3 == 0 {
                b.truncate((next() as usize) % b.len());
            }
            let _ = read_params_bytes(Path::new("fuzz"), &b);
        }
    }
}
