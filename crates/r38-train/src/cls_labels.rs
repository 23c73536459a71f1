//! psa's image-level labels file `voc12/cls_labels.npy` (also shipped by SEAM): `np.save` of a dict
//! image name -> 20 float32 (1 for every VOC foreground class in the image), read by psa with
//! `np.load(path).item()`.
//!
//! The file is a pickle. It is read without running any of it: the opcodes are checked first
//! (`r38_model::weights::pytorch::prescan`, the `.pth` reader's guard), candle's unpickler only
//! builds a tree of names and values, and this module accepts exactly numpy's reconstruction of
//! an object scalar holding a dict of `float32`/`float64` vectors. Protocol-2 pickles (numpy under
//! Python 2 and psa's file: array bytes as `_codecs.encode(text, 'latin1')`) are supported;
//! protocol 3+ byte strings (what `np.save` writes today) are refused with a message, as candle's
//! unpickler has no bytes type.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};

/// Largest accepted file (psa's has 12,031 entries in 2.1 MB).
pub const MAX_BYTES: u64 = 256 << 20;

/// Read psa's `cls_labels.npy`: image name -> label vector.
pub fn read_cls_labels(path: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    ensure!(
        len <= MAX_BYTES,
        "{}: {len} bytes, more than the {MAX_BYTES} accepted for a labels file",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_cls_labels(&bytes)
        .with_context(|| format!("{}: not psa's cls_labels.npy", path.display()))
}

/// [`read_cls_labels`] on the file's bytes.
pub fn parse_cls_labels(bytes: &[u8]) -> Result<BTreeMap<String, Vec<f32>>> {
    ensure!(bytes.starts_with(b"\x93NUMPY"), "no .npy magic");
    ensure!(bytes.len() >= 10, "truncated .npy header");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated .npy header");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!(".npy format version {v} is not supported"),
    };
    let header = bytes
        .get(start..start + header_len)
        .context("truncated .npy header")?;
    let header = String::from_utf8_lossy(header);
    ensure!(
        header.contains("'descr': '|O'") && header.contains("'shape': ()"),
        "the .npy holds {header:?}, not a pickled object (a dict saved with np.save)"
    );
    let pickle = &bytes[start + header_len..];
    if let [0x80, proto, ..] = pickle {
        ensure!(
            *proto <= 2,
            "pickle protocol {proto} (np.save's default today) is not supported: re-save it with \
             protocol 2, e.g. `d = np.load(f, allow_pickle=True).item(); a = np.empty((), object); \
             a[()] = d; h = open(f, 'wb'); np.lib.format.write_array_header_1_0(h, {{'descr': \
             '|O', 'fortran_order': False, 'shape': ()}}); pickle.dump(a, h, protocol=2)`"
        );
    }
    r38_model::weights::pytorch::prescan(pickle)
        .map_err(|e| crate::error::train_error!("pickle: {e}"))?;
    let mut stack = Stack::empty();
    let mut reader: &[u8] = pickle;
    stack
        .read_loop(&mut reader)
        .map_err(|e| crate::error::train_error!("pickle: {e}"))?;
    let top = stack
        .finalize()
        .map_err(|e| crate::error::train_error!("pickle: {e}"))?;
    let items = match array_state(top)? {
        (_, _, ArrayData::Items(mut items)) if items.len() == 1 => match items.remove(0) {
            Object::Dict(d) => d,
            other => bail!("the object is {}, not a dict", kind(&other)),
        },
        _ => bail!("not an object scalar holding one dict"),
    };
    let mut out = BTreeMap::new();
    for (k, v) in items {
        let Object::Unicode(name) = k else {
            bail!("a key is {}, not an image name", kind(&k));
        };
        let values = match array_state(v).with_context(|| format!("labels of {name}"))? {
            (shape, dtype, ArrayData::Raw(raw)) => {
                ensure!(
                    shape.len() == 1,
                    "labels of {name}: shape {shape:?}, expected (C,)"
                );
                let width = match dtype.as_str() {
                    "f4" => 4,
                    "f8" => 8,
                    d => bail!("labels of {name}: dtype {d}, expected float32 or float64"),
                };
                ensure!(
                    raw.len() == shape[0] * width,
                    "labels of {name}: {} bytes for {} values",
                    raw.len(),
                    shape[0]
                );
                raw.chunks_exact(width)
                    .map(|c| match width {
                        4 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        _ => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
                    })
                    .collect()
            }
            _ => bail!("labels of {name}: not a numeric array"),
        };
        out.insert(name, values);
    }
    Ok(out)
}

enum ArrayData {
    /// Raw little-endian element bytes.
    Raw(Vec<u8>),
    /// The items of an object array.
    Items(Vec<Object>),
}

fn kind(o: &Object) -> &'static str {
    match o {
        Object::Dict(_) => "a dict",
        Object::List(_) => "a list",
        Object::Tuple(_) => "a tuple",
        Object::Unicode(_) => "a string",
        Object::Int(_) | Object::Long(_) => "an integer",
        Object::Float(_) => "a float",
        Object::Bool(_) => "a bool",
        Object::None => "None",
        _ => "a call or class",
    }
}

fn is_class(o: &Object, module: &str, class: &str) -> bool {
    matches!(o, Object::Class { module_name, class_name }
        if (module_name == module || module_name.replace("._core", ".core") == module)
            && class_name == class)
}

/// numpy's `ndarray.__reduce__` result: `_reconstruct(ndarray, (0,), b'b')` built with the state
/// `(1, shape, dtype, fortran, data)`. Returns (shape, dtype code, data).
fn array_state(obj: Object) -> Result<(Vec<usize>, String, ArrayData)> {
    let Object::Build { callable, args } = obj else {
        bail!("expected a numpy array, found {}", kind(&obj));
    };
    let Object::Reduce { callable: ctor, .. } = *callable else {
        bail!("expected numpy's _reconstruct");
    };
    ensure!(
        is_class(&ctor, "numpy.core.multiarray", "_reconstruct"),
        "expected numpy's _reconstruct"
    );
    let Object::Tuple(state) = *args else {
        bail!("array state is not a tuple");
    };
    let [_version, shape, dtype, fortran, data]: [Object; 5] = state.try_into().map_err(|_| {
        crate::error::train_error!("array state is not (version, shape, dtype, fortran, data)")
    })?;
    let Object::Tuple(shape) = shape else {
        bail!("array shape is not a tuple");
    };
    let shape: Vec<usize> = shape
        .into_iter()
        .map(|d| match d {
            Object::Int(n) if n >= 0 => Ok(n as usize),
            _ => bail!("bad array dimension"),
        })
        .collect::<Result<_>>()?;
    ensure!(
        matches!(fortran, Object::Bool(false) | Object::Int(0)),
        "Fortran-ordered arrays are not supported"
    );
    let code = dtype_code(dtype)?;
    let data = match data {
        Object::List(items) => ArrayData::Items(items),
        Object::Reduce { callable, args } if is_class(&callable, "_codecs", "encode") => {
            let Object::Tuple(a) = *args else {
                bail!("bad _codecs.encode call");
            };
            match a.as_slice() {
                [Object::Unicode(text), Object::Unicode(enc)] if enc == "latin1" => {
                    let raw: Option<Vec<u8>> = text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect();
                    ArrayData::Raw(raw.context("latin-1 array data out of range")?)
                }
                _ => bail!("bad _codecs.encode call"),
            }
        }
        other => bail!(
            "array data is {} (protocol 3+ byte strings are not supported: re-save with \
             pickle protocol 2)",
            kind(&other)
        ),
    };
    Ok((shape, code, data))
}

/// `dtype('f4', False, True)` built with `(3, '<', ...)`: the code, little-endian checked.
fn dtype_code(obj: Object) -> Result<String> {
    // A dtype met again comes from the pickle memo, which candle keeps as it was stored: before
    // its BUILD (the byte-order state); Python would share the built one.
    let (reduce, state) = match obj {
        Object::Build { callable, args } => (*callable, Some(*args)),
        reduce @ Object::Reduce { .. } => (reduce, None),
        _ => bail!("bad array dtype"),
    };
    let Object::Reduce {
        callable: class,
        args: ctor,
    } = reduce
    else {
        bail!("bad array dtype");
    };
    ensure!(is_class(&class, "numpy", "dtype"), "bad array dtype");
    let Object::Tuple(ctor) = *ctor else {
        bail!("bad array dtype");
    };
    let Some(Object::Unicode(code)) = ctor.into_iter().next() else {
        bail!("bad array dtype");
    };
    if let Some(Object::Tuple(state)) = state {
        if let Some(Object::Unicode(order)) = state.get(1) {
            ensure!(order != ">", "big-endian arrays are not supported");
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_pickled_dict() {
        assert!(parse_cls_labels(b"not numpy").is_err());
        let mut plain = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        plain.extend_from_slice(&(header.len() as u16).to_le_bytes());
        plain.extend_from_slice(header.as_bytes());
        plain.extend_from_slice(&[0; 8]);
        let err = parse_cls_labels(&plain).unwrap_err().to_string();
        assert!(err.contains("not a pickled object"), "{err}");
    }
}
