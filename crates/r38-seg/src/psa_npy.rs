//! psa's CAM files: `np.save(path, {class: H×W float32 map})`, a `.npy` holding a 0-d object
//! array whose item is the dict. psa (and AffinityNet, SEAM, IRN-style tools) read them with
//! `np.load(path, allow_pickle=True).item()`.
//!
//! The file is written as numpy would (format 1.0, `descr '|O'`, shape `()`), with a pickle
//! (protocol 3) that only builds what `np.load` expects: numpy's own `_reconstruct`, `ndarray`
//! and `dtype` globals (under `numpy.core.multiarray`, which numpy 1.x and 2.x both load), one
//! `int -> ndarray` dict, and raw little-endian `float32` data. Nothing else is referenced.

use std::io::Write;

/// One entry of the dict: a class key and its `height × width` map, row-major.
#[derive(Debug, Clone, Copy)]
pub struct PsaMap<'a> {
    /// The dict key (psa: the foreground class index 0..19, or 0 = background and `c + 1` in its
    /// CRF outputs).
    pub key: u32,
    /// Map height.
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// `height * width` values.
    pub values: &'a [f32],
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c")
            .op(module.as_bytes())
            .op(b"\n")
            .op(name.as_bytes())
            .op(b"\n")
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    /// `_reconstruct(ndarray, (0,), b'b')`, the empty array numpy's `__reduce__` starts from.
    fn empty_array(&mut self) -> &mut Self {
        self.global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray")
            .int(0)
            .op(b"\x85") // TUPLE1
            .op(b"C\x01b") // SHORT_BINBYTES b'b'
            .op(b"\x87") // TUPLE3
            .op(b"R") // REDUCE
    }
    /// `dtype(code, False, True)` with its state `(3, order, None, None, None, -1, -1, flags)`.
    fn dtype(&mut self, code: &str, order: &str, flags: i32) -> &mut Self {
        self.global("numpy", "dtype")
            .str(code)
            .op(b"\x89\x88\x87R(") // False, True, TUPLE3, REDUCE, MARK
            .int(3)
            .str(order)
            .op(b"NNN")
            .int(-1)
            .int(-1)
            .int(flags)
            .op(b"tb") // TUPLE, BUILD
    }
}

/// The `.npy` bytes of psa's dict for `maps`.
pub fn psa_cam_npy(maps: &[PsaMap<'_>]) -> Vec<u8> {
    let mut p = Pickle(b"\x80\x03".to_vec());
    p.empty_array()
        .op(b"(")
        .int(1)
        .op(b")") // shape ()
        .dtype("O8", "|", 63)
        // The object array's state ends with the list of its items: [dict].
        .op(b"\x89") // fortran order: False
        .op(b"]") // EMPTY_LIST
        .op(b"(") // MARK (list items)
        .op(b"}") // EMPTY_DICT
        .op(b"("); // MARK (dict items)
    for m in maps {
        p.int(m.key as i32);
        p.empty_array().op(b"(").int(1).op(b"(");
        p.int(m.height as i32).int(m.width as i32).op(b"t");
        p.dtype("f4", "<", 0).op(b"\x89");
        let raw: Vec<u8> = m.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        p.op(b"B").op(&(raw.len() as u32).to_le_bytes()).op(&raw);
        p.op(b"tb"); // state tuple, BUILD
    }
    p.op(b"u") // SETITEMS
        .op(b"e") // APPENDS
        .op(b"t") // the array state tuple
        .op(b"b") // BUILD
        .op(b".");

    let mut header = String::from("{'descr': '|O', 'fortran_order': False, 'shape': (), }");
    // magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64 and
    // ended by a newline, as numpy aligns it.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + p.0.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&p.0);
    out
}

/// Write [`psa_cam_npy`] to `w`.
pub fn write_psa_cam_npy(w: &mut impl Write, maps: &[PsaMap<'_>]) -> std::io::Result<()> {
    w.write_all(&psa_cam_npy(maps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_declares_an_object_scalar() {
        let bytes = psa_cam_npy(&[PsaMap {
            key: 14,
            height: 1,
            width: 2,
            values: &[0.5, 1.0],
        }]);
        assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.starts_with("{'descr': '|O', 'fortran_order': False, 'shape': (), }"));
        assert!(header.ends_with('\n'));
        let pickle = &bytes[10 + len..];
        assert!(pickle.starts_with(b"\x80\x03"));
        assert!(pickle.ends_with(b"uetb."));
        // The map's data is stored raw, little-endian.
        let raw: Vec<u8> = [0.5f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(pickle.windows(raw.len()).any(|w| w == &raw[..]));
    }
}
