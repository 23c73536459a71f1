//! Reading numpy `.npy` arrays without trusting their headers.
//!
//! candle's `Tensor::read_npy` allocates whatever the header declares: a 192-byte file claiming
//! `(1, 3, 100000, 100000)` asks for 120 GB, a shape whose element count wraps to 0 passes, and
//! a version-2 header length of 4 GB is allocated before it is read. Here the header is parsed
//! with a bounded length, the shape's element count is overflow-checked, and the data must fill
//! the rest of the file exactly — all against the file's real length, before any buffer for
//! the values exists.
//!
//! Accepted: format versions 1.0, 2.0 and 3.0; C order (`fortran_order: False`); little-endian
//! `<f2`, `<f4`, `<f8`, `|u1`, `<u4`, `<i2`, `<i4`, `<i8` (`=` and `|` for native and
//! not-applicable byte order are taken too).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// numpy's own default `max_header_size` (numpy >= 1.24 refuses longer headers unless told).
pub const MAX_HEADER_LEN: usize = 10_000;

/// numpy's largest rank (`NPY_MAXDIMS` of numpy 2).
pub const MAX_RANK: usize = 64;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// What is wrong with a `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyProblem {
    /// The file could not be opened or read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The first bytes are not `\x93NUMPY`.
    #[error("not a .npy file (no \\x93NUMPY magic)")]
    Magic,
    /// A format version other than 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {0}.{1}")]
    Version(u8, u8),
    /// The header is longer than [`MAX_HEADER_LEN`] or than the file.
    #[error("header of {len} bytes (limit {MAX_HEADER_LEN}, file {file} bytes)")]
    HeaderLength {
        /// Declared header length.
        len: u64,
        /// File length.
        file: u64,
    },
    /// The header dictionary cannot be parsed.
    #[error("bad header: {0}")]
    Header(String),
    /// An element type this reader does not take.
    #[error("unsupported dtype {0:?} (expected one of <f2 <f4 <f8 |u1 |b1 <u4 <i2 <i4 <i8)")]
    Dtype(String),
    /// Fortran-ordered data.
    #[error("fortran_order arrays are not supported (save with C order)")]
    FortranOrder,
    /// The shape's byte count does not fit in 64 bits.
    #[error("shape {0:?} overflows")]
    Overflow(Vec<u64>),
    /// The data is not exactly what the shape declares.
    #[error("shape {shape:?} of {dtype} needs {needed} data bytes, the file holds {present}")]
    Length {
        /// Declared shape.
        shape: Vec<usize>,
        /// Declared dtype.
        dtype: String,
        /// Bytes the shape needs.
        needed: u64,
        /// Bytes after the header.
        present: u64,
    },
    /// The shape is outside what the caller accepts (see [`NchwLimits`]).
    #[error("{0}")]
    Limit(String),
    /// candle refused the buffer.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// A `.npy` file that could not be read, with its name.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct NpyError {
    /// The file (or the name given for in-memory bytes).
    pub path: PathBuf,
    /// What is wrong.
    pub problem: NpyProblem,
}

/// A parsed and checked `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type as candle names it.
    pub dtype: DType,
    /// The dtype string as written (`<f4`).
    pub descr: String,
    /// The shape, C order.
    pub shape: Vec<usize>,
    /// Offset of the first data byte.
    pub data_offset: usize,
    /// Number of data bytes (`product(shape) * itemsize`).
    pub data_len: usize,
}

fn dtype_of(descr: &str) -> Option<(DType, usize)> {
    // `=` is native order; this build only runs little-endian (see `from_raw_buffer` below).
    let d = descr
        .strip_prefix('<')
        .or_else(|| descr.strip_prefix('='))
        .or_else(|| descr.strip_prefix('|'))?;
    Some(match d {
        "f2" => (DType::F16, 2),
        "f4" => (DType::F32, 4),
        "f8" => (DType::F64, 8),
        "u1" => (DType::U8, 1),
        // numpy's bools are one byte, 0 or 1 (masks).
        "b1" => (DType::U8, 1),
        "u4" => (DType::U32, 4),
        "i2" => (DType::I16, 2),
        "i4" => (DType::I32, 4),
        "i8" => (DType::I64, 8),
        _ => return None,
    })
}

/// Parses the header at the start of `head` (at least the whole header, or the whole file if
/// shorter), given the file's total length.
pub fn parse_header(head: &[u8], file_len: u64) -> Result<NpyHeader, NpyProblem> {
    if head.len() < 10 || &head[..6] != MAGIC {
        return Err(NpyProblem::Magic);
    }
    let (major, minor) = (head[6], head[7]);
    let (len, start) = match (major, minor) {
        (1, 0) => (u64::from(u16::from_le_bytes([head[8], head[9]])), 10),
        (2 | 3, 0) => {
            if head.len() < 12 {
                return Err(NpyProblem::Magic);
            }
            let b = [head[8], head[9], head[10], head[11]];
            (u64::from(u32::from_le_bytes(b)), 12)
        }
        (a, b) => return Err(NpyProblem::Version(a, b)),
    };
    if len > MAX_HEADER_LEN as u64 || start as u64 + len > file_len {
        return Err(NpyProblem::HeaderLength {
            len,
            file: file_len,
        });
    }
    let end = start + len as usize;
    let text = head
        .get(start..end)
        .ok_or(NpyProblem::HeaderLength {
            len,
            file: file_len,
        })
        .and_then(|b| std::str::from_utf8(b).map_err(|_| NpyProblem::Header("not UTF-8".into())))?;
    let dict = parse_dict(text).map_err(NpyProblem::Header)?;
    let (descr, fortran, shape) = dict;
    if fortran {
        return Err(NpyProblem::FortranOrder);
    }
    let (dtype, item) = dtype_of(&descr).ok_or_else(|| NpyProblem::Dtype(descr.clone()))?;
    let needed = shape
        .iter()
        .try_fold(item as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyProblem::Overflow(shape.clone()))?;
    let present = file_len - end as u64;
    let shape_usize: Option<Vec<usize>> = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
    let (Some(shape), Ok(data_len)) = (shape_usize, usize::try_from(needed)) else {
        return Err(NpyProblem::Overflow(shape));
    };
    if needed != present {
        return Err(NpyProblem::Length {
            shape,
            dtype: descr,
            needed,
            present,
        });
    }
    Ok(NpyHeader {
        dtype,
        descr,
        shape,
        data_offset: end,
        data_len,
    })
}

/// The header dictionary: `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }`.
/// Only this literal subset of Python is accepted; every key must appear exactly once.
fn parse_dict(text: &str) -> Result<(String, bool, Vec<u64>), String> {
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let dup = || format!("key {key:?} given twice");
        match key.as_str() {
            "descr" => {
                if descr.replace(p.string()?).is_some() {
                    return Err(dup());
                }
            }
            "fortran_order" => {
                if fortran.replace(p.boolean()?).is_some() {
                    return Err(dup());
                }
            }
            "shape" => {
                if shape.replace(p.tuple()?).is_some() {
                    return Err(dup());
                }
            }
            other => return Err(format!("unexpected key {other:?}")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    // numpy pads the header with spaces and ends it with a newline.
    if !p.s[p.i..].iter().all(|b| b.is_ascii_whitespace()) {
        return Err("trailing bytes after the dictionary".into());
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("`descr`, `fortran_order` and `shape` are all required".into()),
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&b);
        if hit {
            self.i += 1;
        }
        hit
    }
    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", b as char, self.i))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            if b == quote {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(v);
            }
            if b == b'\\' {
                return Err("escapes in header strings are not supported".into());
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }
    fn boolean(&mut self) -> Result<bool, String> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }
    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            if dims.len() == MAX_RANK {
                return Err(format!("more than {MAX_RANK} dimensions"));
            }
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let d: u64 = digits
                .parse()
                .map_err(|_| format!("expected a dimension at byte {start}"))?;
            dims.push(d);
            // Python's `2L` (numpy < 1.x on Python 2).
            self.eat(b'L');
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// Reads only the header of `path` and checks it against the file's length.
pub fn read_npy_header(path: impl AsRef<Path>) -> Result<NpyHeader, NpyError> {
    let path = path.as_ref();
    open_checked(path).map(|(h, _)| h)
}

fn open_checked(path: &Path) -> Result<(NpyHeader, std::fs::File), NpyError> {
    let wrap = |problem| NpyError {
        path: path.into(),
        problem,
    };
    let mut file = std::fs::File::open(path).map_err(|e| wrap(e.into()))?;
    let file_len = file.metadata().map_err(|e| wrap(e.into()))?.len();
    // At most the largest header numpy writes plus the preamble: a bounded read.
    let mut head = Vec::new();
    (&mut file)
        .take(12 + MAX_HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| wrap(e.into()))?;
    let header = parse_header(&head, file_len).map_err(wrap)?;
    Ok((header, file))
}

/// Reads `path` into a CPU tensor, after the checks of the module docs.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    read_npy_checked(path.as_ref(), |_| Ok(()))
}

/// [`read_npy`] with a check of the header (shape, dtype) before the data is read.
pub fn read_npy_checked(
    path: &Path,
    check: impl FnOnce(&NpyHeader) -> Result<(), NpyProblem>,
) -> Result<Tensor, NpyError> {
    let wrap = |problem| NpyError {
        path: path.into(),
        problem,
    };
    let (header, mut file) = open_checked(path)?;
    check(&header).map_err(wrap)?;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(header.data_offset as u64))
        .map_err(|e| wrap(e.into()))?;
    // The length was checked against the file's size: this buffer is what the file holds.
    let mut data = vec![0u8; header.data_len];
    file.read_exact(&mut data).map_err(|e| wrap(e.into()))?;
    to_tensor(&header, &data).map_err(wrap)
}

/// Parses a whole `.npy` file held in memory; `name` is used in errors.
pub fn parse_npy(bytes: &[u8], name: impl AsRef<Path>) -> Result<Tensor, NpyError> {
    let wrap = |problem| NpyError {
        path: name.as_ref().into(),
        problem,
    };
    let header = parse_header(bytes, bytes.len() as u64).map_err(wrap)?;
    let data = &bytes[header.data_offset..header.data_offset + header.data_len];
    to_tensor(&header, data).map_err(wrap)
}

fn to_tensor(header: &NpyHeader, data: &[u8]) -> Result<Tensor, NpyProblem> {
    if cfg!(target_endian = "big") && !matches!(header.dtype, DType::U8) {
        return Err(NpyProblem::Dtype(format!(
            "{} on a big-endian machine",
            header.descr
        )));
    }
    Ok(Tensor::from_raw_buffer(
        data,
        header.dtype,
        &header.shape,
        &Device::Cpu,
    )?)
}

/// Bounds on a network input `(N, 3, H, W)`, checked on the header before the data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NchwLimits {
    /// Largest `H` and `W`.
    pub max_side: usize,
    /// Largest `N * H * W`.
    pub max_pixels: usize,
}

impl NchwLimits {
    /// Sides up to 8192 and 16,777,216 pixels in the batch (one 4096x4096 image; the input
    /// alone is then 192 MiB of f32 and the network's activations tens of GB).
    pub const DEFAULT: Self = Self {
        max_side: 8192,
        max_pixels: 4096 * 4096,
    };

    /// Checks `header` for a non-empty floating `(N, 3, H, W)` within these limits.
    pub fn check(&self, header: &NpyHeader) -> Result<(), NpyProblem> {
        let s = &header.shape;
        if s.len() != 4 || s[1] != 3 || s.contains(&0) {
            return Err(NpyProblem::Limit(format!(
                "expected a non-empty (N, 3, H, W) array, found shape {s:?}"
            )));
        }
        if !matches!(header.dtype, DType::F16 | DType::F32 | DType::F64) {
            return Err(NpyProblem::Limit(format!(
                "expected floating values (<f4), found {}",
                header.descr
            )));
        }
        if s[2] > self.max_side || s[3] > self.max_side {
            return Err(NpyProblem::Limit(format!(
                "{}x{} input exceeds the side limit of {}",
                s[3], s[2], self.max_side
            )));
        }
        let pixels = s[0].saturating_mul(s[2]).saturating_mul(s[3]);
        if pixels > self.max_pixels {
            return Err(NpyProblem::Limit(format!(
                "N*H*W = {pixels} exceeds the limit of {} pixels",
                self.max_pixels
            )));
        }
        Ok(())
    }
}

impl Default for NchwLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Reads a network input `(N, 3, H, W)` after checking its header against `limits`.
pub fn read_nchw_input(path: impl AsRef<Path>, limits: &NchwLimits) -> Result<Tensor, NpyError> {
    read_npy_checked(path.as_ref(), |h| limits.check(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((dict.len() as u16).to_le_bytes());
        } else {
            out.extend((dict.len() as u32).to_le_bytes());
        }
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_all_versions() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for v in [1, 2, 3] {
            let bytes = npy(
                v,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n",
                &data,
            );
            let t = parse_npy(&bytes, "x.npy").unwrap();
            assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        }
        let scalar = npy(1, "{'descr':'|u1','fortran_order':False,'shape':()}", &[7]);
        let t = parse_npy(&scalar, "s.npy").unwrap();
        assert_eq!(t.dims(), &[] as &[usize]);
    }

    #[test]
    fn refuses_what_the_file_cannot_hold() {
        let bad = |dict: &str, data: &[u8]| {
            parse_npy(&npy(1, dict, data), "h.npy")
                .unwrap_err()
                .to_string()
        };
        let huge = bad(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 100000, 100000), }",
            &[0; 16],
        );
        assert!(huge.contains("h.npy") && huge.contains("needs"), "{huge}");
        // 2^62 * 4 wraps to 0 in 64 bits.
        let wrap = bad(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
            &[],
        );
        assert!(wrap.contains("overflows"), "{wrap}");
        assert!(bad(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4]
        )
        .contains("dtype"));
        assert!(bad(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0; 4]
        )
        .contains("fortran"));
        assert!(bad(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[0; 12]
        )
        .contains("needs 8"));
        let mut v2 = MAGIC.to_vec();
        v2.extend([2, 0]);
        v2.extend(u32::MAX.to_le_bytes());
        let e = parse_npy(&v2, "v2.npy").unwrap_err().to_string();
        assert!(e.contains("header of 4294967295 bytes"), "{e}");
    }

    #[test]
    fn nchw_limits() {
        let header = |shape: Vec<usize>| NpyHeader {
            dtype: DType::F32,
            descr: "<f4".into(),
            data_len: 0,
            data_offset: 0,
            shape,
        };
        let l = NchwLimits::DEFAULT;
        assert!(l.check(&header(vec![1, 3, 64, 64])).is_ok());
        assert!(l.check(&header(vec![1, 3, 9000, 8])).is_err());
        assert!(l.check(&header(vec![2, 3, 4096, 4096])).is_err());
        assert!(l.check(&header(vec![1, 3, 0, 4])).is_err());
    }
}
