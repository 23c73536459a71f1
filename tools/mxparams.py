"""Reader and writers for MXNet's NDArray-list file format (``.params``).

Pure numpy: no MXNet needed, so the torch venv can read weights too.

File layout (all little-endian):

    u64 0x112            list magic
    u64 0                reserved
    u64 n                number of arrays
    n x <array>
    u64 m                number of names (0 or n)
    m x (u64 len, len bytes of UTF-8)

Per-array forms (see tools/README.md for the byte dumps this was checked
against; mx.nd.save in MXNet 1.9.1 writes V2):

    legacy : u32 ndim, ndim x u32 dim, i32 dev_type, i32 dev_id, i32 dtype, data
    V1     : u32 0xF993FAC8, u32 ndim, ndim x i64 dim, i32 dev_type, i32 dev_id,
             i32 dtype, data
    V2     : u32 0xF993FAC9, i32 storage_type (0 = dense), u32 ndim,
             ndim x i64 dim, i32 dev_type, i32 dev_id, i32 dtype, data

(``ndim == 0`` means an empty array: nothing else follows it.)
dev_type 1 = CPU.  dtype codes: 0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64.
"""
import struct

import numpy as np

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA  # numpy-shape semantics (not written by plain mx.nd.save)

DTYPES = {
    0: np.float32,
    1: np.float64,
    2: np.float16,
    3: np.uint8,
    4: np.int32,
    5: np.int8,
    6: np.int64,
}
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}

FORMATS = ("legacy", "v1", "v2")


def _array_bytes(arr, form):
    arr = np.ascontiguousarray(arr)
    code = DTYPE_CODES[arr.dtype]
    shape = arr.shape
    if len(shape) == 0:
        raise ValueError("0-d arrays are not representable (MXNet treats ndim 0 as empty)")
    out = []
    if form == "legacy":
        out.append(struct.pack("<I", len(shape)))
        out.append(struct.pack("<%dI" % len(shape), *shape))
    elif form == "v1":
        out.append(struct.pack("<II", V1_MAGIC, len(shape)))
        out.append(struct.pack("<%dq" % len(shape), *shape))
    elif form == "v2":
        out.append(struct.pack("<IiI", V2_MAGIC, 0, len(shape)))
        out.append(struct.pack("<%dq" % len(shape), *shape))
    else:
        raise ValueError("unknown form %r" % form)
    out.append(struct.pack("<iii", 1, 0, code))  # cpu(0), dtype
    out.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return b"".join(out)


def dumps(named_arrays, form="v2"):
    """Serialise an ordered list of (name, ndarray) (or a dict) to bytes."""
    items = list(named_arrays.items()) if isinstance(named_arrays, dict) else list(named_arrays)
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(items))]
    for _, arr in items:
        parts.append(_array_bytes(arr, form))
    parts.append(struct.pack("<Q", len(items)))
    for name, _ in items:
        b = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(b)))
        parts.append(b)
    return b"".join(parts)


def save(path, named_arrays, form="v2"):
    with open(path, "wb") as f:
        f.write(dumps(named_arrays, form))


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return vals

    def raw(self, n):
        b = self.buf[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated file")
        self.pos += n
        return b


def _read_array(r):
    (first,) = r.take("<I")
    if first == V2_MAGIC or first == V3_MAGIC:
        form = "v2" if first == V2_MAGIC else "v3"
        (stype,) = r.take("<i")
        if stype != 0:
            raise ValueError("sparse storage type %d not supported" % stype)
        (ndim,) = r.take("<I")
        shape = r.take("<%dq" % ndim) if ndim else ()
    elif first == V1_MAGIC:
        form = "v1"
        (ndim,) = r.take("<I")
        shape = r.take("<%dq" % ndim) if ndim else ()
    else:
        form = "legacy"
        ndim = first
        shape = r.take("<%dI" % ndim) if ndim else ()
    if ndim == 0:
        return form, None
    dev_type, dev_id, code = r.take("<iii")
    dt = np.dtype(DTYPES[code]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    data = np.frombuffer(r.raw(count * dt.itemsize), dtype=dt).reshape(shape)
    return form, data.astype(dt.newbyteorder("="))


def loads(buf):
    """Parse bytes; returns (list of (name, array), set of per-array forms seen)."""
    r = _Reader(buf)
    magic, _reserved = r.take("<QQ")
    if magic != LIST_MAGIC:
        raise ValueError("bad list magic 0x%x" % magic)
    (n,) = r.take("<Q")
    arrays, forms = [], set()
    for _ in range(n):
        form, arr = _read_array(r)
        forms.add(form)
        arrays.append(arr)
    (m,) = r.take("<Q")
    names = []
    for _ in range(m):
        (ln,) = r.take("<Q")
        names.append(r.raw(ln).decode("utf-8"))
    if r.pos != len(buf):
        raise ValueError("%d trailing bytes" % (len(buf) - r.pos))
    if m == 0:
        names = [str(i) for i in range(n)]
    return list(zip(names, arrays)), forms


def load(path):
    with open(path, "rb") as f:
        return loads(f.read())
