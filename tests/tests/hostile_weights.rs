//! Hostile weight files are refused before anything large is allocated.
//!
//! The readers' unit tests (crates/r38-model/src/weights/{mxnet,pytorch,safetensors}.rs) check
//! that each malformed header gives the right [`WeightError`]; this file checks the other half
//! of the contract: memory stays bounded by the file's size. A counting global allocator (global
//! only in this test binary) records, per thread, the peak growth of the live heap and the
//! largest single allocation while `weights::load` reads a file, and every hostile case must
//! stay under [`SLACK`] + the file's size. The committed fuzzing regressions under
//! `tests/fixtures/hostile/` are loaded the same way.

use std::path::{Path, PathBuf};

use r38_model::weights::{self, WeightError};
use r38_tests::counting_alloc::{measure, Counting, Usage};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allowed heap growth beyond the file's own size while refusing a hostile file.
const SLACK: usize = 64 << 10;

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-weights");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to a file, loads it with `weights::load` (which reads the whole file) and
/// checks the error and the allocation bound.
fn refused(name: &str, bytes: &[u8], expect: impl Fn(&WeightError) -> bool) -> Usage {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).unwrap();
    let (result, usage) = measure(|| weights::load(&path));
    let err = match result {
        Ok(_) => panic!("{name}: a hostile file loaded"),
        Err(e) => e,
    };
    assert!(expect(&err), "{name}: unexpected error {err}");
    assert!(
        err.to_string().contains(name),
        "{name}: the message does not name the file: {err}"
    );
    let bound = SLACK + bytes.len();
    assert!(
        usage.peak < bound,
        "{name}: heap grew by {} bytes loading a {}-byte file (bound {bound})",
        usage.peak,
        bytes.len()
    );
    eprintln!(
        "{name:40} {:>6} bytes: peak heap +{:>6}, largest allocation {:>6}: {err}",
        bytes.len(),
        usage.peak,
        usage.largest
    );
    usage
}

// ---- .params builders ----------------------------------------------------------------------

const LIST_MAGIC: u64 = 0x112;
const V1: u32 = 0xF993_FAC8;
const V2: u32 = 0xF993_FAC9;

#[derive(Default)]
struct Params(Vec<u8>);

impl Params {
    fn header(arrays: u64) -> Self {
        let mut p = Params::default();
        p.u64(LIST_MAGIC).u64(0).u64(arrays);
        p
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
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A legacy-form f32 vector of `n` zeros.
    fn legacy_f32(&mut self, n: u32) -> &mut Self {
        self.u32(1).u32(n).i32(1).i32(0).i32(0);
        self.raw(&vec![0; n as usize * 4])
    }
    fn names(&mut self, names: &[&[u8]]) -> &mut Self {
        self.u64(names.len() as u64);
        for n in names {
            self.u64(n.len() as u64).raw(n);
        }
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

#[test]
fn hostile_params_headers_stay_within_the_file_size() {
    // Tensor count: 2^64 - 1 arrays in a 64-byte file.
    let mut p = Params::header(u64::MAX);
    p.raw(&[0; 40]);
    refused("count_overflow.params", &p.bytes(), |e| {
        matches!(e, WeightError::CountTooLarge { .. })
    });

    // Dimension product overflows 64 bits: 2^40 x 2^40 x 2^40.
    let mut p = Params::header(1);
    p.u32(V2).i32(0).i32(3);
    p.i64(1 << 40).i64(1 << 40).i64(1 << 40);
    p.i32(1).i32(0).i32(0).names(&[b"arg:x"]);
    refused("dim_product_overflow.params", &p.bytes(), |e| {
        matches!(e, WeightError::ShapeOverflow { .. })
    });

    // Byte size overflows although the element count fits: i64::MAX f64 values.
    let mut p = Params::header(1);
    p.u32(V1).i32(1).i64(i64::MAX).i32(1).i32(0).i32(1);
    p.names(&[b"arg:x"]);
    refused("byte_size_overflow.params", &p.bytes(), |e| {
        matches!(e, WeightError::ShapeOverflow { .. })
    });

    // Declared data larger than the file: 1000 f32 values, 8 bytes present.
    let mut p = Params::header(1);
    p.u32(1).u32(1000).i32(1).i32(0).i32(0).raw(&[0; 8]);
    p.names(&[b"arg:x"]);
    refused("size_beyond_file.params", &p.bytes(), |e| {
        matches!(e, WeightError::DataExceedsFile { needed: 4000, .. })
    });

    // Billions of elements: 2^20 x 2^20 f32 (4 TiB) in a ~100-byte file.
    let mut p = Params::header(1);
    p.u32(V1)
        .i32(2)
        .i64(1 << 20)
        .i64(1 << 20)
        .i32(1)
        .i32(0)
        .i32(0);
    p.raw(&[0; 40]).names(&[b"arg:x"]);
    let usage = refused("billions_of_elements.params", &p.bytes(), |e| {
        matches!(e, WeightError::DataExceedsFile { .. })
    });
    assert!(usage.largest < SLACK, "{usage:?}");

    // ndim of 2^31 - 1 (legacy form: the first u32 is ndim).
    let mut p = Params::header(1);
    p.u32(0x7fff_ffff).raw(&[0; 64]);
    refused("huge_ndim.params", &p.bytes(), |e| {
        matches!(e, WeightError::Truncated { .. })
    });

    // Name length beyond the file.
    let mut p = Params::header(1);
    p.legacy_f32(2).u64(1).u64(1 << 40).raw(b"arg:x");
    refused("name_beyond_file.params", &p.bytes(), |e| {
        matches!(e, WeightError::Truncated { .. })
    });

    // Name count far beyond what the rest of the file can hold.
    let mut p = Params::header(3);
    p.u32(0).u32(0).u32(0).u64(3).raw(&[0; 8]);
    refused("name_count_beyond_file.params", &p.bytes(), |e| {
        matches!(e, WeightError::CountTooLarge { .. })
    });

    // A dtype code that does not exist.
    let mut p = Params::header(1);
    p.u32(1).u32(1).i32(1).i32(0).i32(99).raw(&[0; 4]);
    p.names(&[b"arg:x"]);
    refused("unknown_dtype.params", &p.bytes(), |e| {
        matches!(e, WeightError::UnknownDtype { code: 99, .. })
    });

    // Duplicate names (the same canonical name from arg: and aux:).
    let mut p = Params::header(2);
    p.legacy_f32(4).legacy_f32(4).names(&[b"arg:w", b"aux:w"]);
    refused("duplicate_names.params", &p.bytes(), |e| {
        matches!(e, WeightError::DuplicateName { .. })
    });

    // Trailing garbage after the last name.
    let mut p = Params::header(1);
    p.legacy_f32(4).names(&[b"arg:w"]).raw(&[0xAB; 1000]);
    refused("trailing_garbage.params", &p.bytes(), |e| {
        matches!(e, WeightError::TrailingBytes { count: 1000, .. })
    });
}

#[test]
fn hostile_safetensors_headers_stay_within_the_file_size() {
    // A header length of 2^40 bytes in front of a 2-byte JSON: not even taken for safetensors.
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend(b"{}");
    refused("huge_json_length.safetensors", &b, |e| {
        matches!(e, WeightError::UnknownFormat { .. })
    });
    // A header length of 2^64 - 1.
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend(b"{\"a\":1}");
    refused("max_json_length.safetensors", &b, |e| {
        matches!(e, WeightError::UnknownFormat { .. })
    });

    let file = |header: &str, data: &[u8]| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(data);
        b
    };
    // Billions of elements described by a consistent-looking header.
    let b = file(
        r#"{"w":{"dtype":"F32","shape":[65536,65536],"data_offsets":[0,17179869184]}}"#,
        &[0; 16],
    );
    refused("billions_of_elements.safetensors", &b, |e| {
        matches!(e, WeightError::Safetensors { .. })
    });
    // Shape product overflowing 64 bits.
    let b = file(
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    refused("dim_product_overflow.safetensors", &b, |e| {
        matches!(e, WeightError::Safetensors { .. })
    });
    // An unknown dtype name.
    let b = file(
        r#"{"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#,
        &[0; 16],
    );
    refused("unknown_dtype.safetensors", &b, |e| {
        matches!(e, WeightError::Safetensors { .. })
    });
    // Duplicate canonical names (a canonical and a PyTorch key for the same tensor).
    let b = file(
        r#"{"conv1a_weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"conv1a.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0; 8],
    );
    refused("duplicate_names.safetensors", &b, |e| {
        matches!(e, WeightError::DuplicateName { .. })
    });
    // Trailing bytes after the last tensor's data.
    let b = file(
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4000],
    );
    refused("trailing_garbage.safetensors", &b, |e| {
        matches!(e, WeightError::Safetensors { .. })
    });
}

// ---- .pth builders ---------------------------------------------------------------------------

/// A stored (uncompressed) zip archive, written by hand so that its fields can lie.
struct Zip {
    locals: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl Zip {
    fn new() -> Self {
        Zip {
            locals: Vec::new(),
            central: Vec::new(),
            entries: 0,
        }
    }

    /// Adds a stored entry; `declared` overrides the sizes written in both headers.
    fn entry(&mut self, name: &str, data: &[u8], declared: Option<u32>) -> &mut Self {
        let offset = self.locals.len() as u32;
        let size = declared.unwrap_or(data.len() as u32);
        let crc = crc32(data);
        let le16 = |v: u16| v.to_le_bytes();
        let le32 = |v: u32| v.to_le_bytes();
        let mut local = Vec::new();
        local.extend(le32(0x0403_4b50));
        local.extend(le16(20)); // version needed
        local.extend(le16(0)); // flags
        local.extend(le16(0)); // stored
        local.extend(le16(0)); // time
        local.extend(le16(0x21)); // date
        local.extend(le32(crc));
        local.extend(le32(size));
        local.extend(le32(size));
        local.extend(le16(name.len() as u16));
        local.extend(le16(0));
        local.extend(name.as_bytes());
        local.extend(data);
        self.locals.extend(local);
        let c = &mut self.central;
        c.extend(le32(0x0201_4b50));
        c.extend(le16(20));
        c.extend(le16(20));
        c.extend(le16(0));
        c.extend(le16(0));
        c.extend(le16(0));
        c.extend(le16(0x21));
        c.extend(le32(crc));
        c.extend(le32(size));
        c.extend(le32(size));
        c.extend(le16(name.len() as u16));
        c.extend(le16(0)); // extra
        c.extend(le16(0)); // comment
        c.extend(le16(0)); // disk
        c.extend(le16(0)); // internal attributes
        c.extend(le32(0)); // external attributes
        c.extend(le32(offset));
        c.extend(name.as_bytes());
        self.entries += 1;
        self
    }

    /// The archive; `claimed_entries` overrides the entry count of the end record.
    fn finish(&self, claimed_entries: Option<u16>) -> Vec<u8> {
        let n = claimed_entries.unwrap_or(self.entries);
        let mut out = self.locals.clone();
        let cd_offset = out.len() as u32;
        out.extend(&self.central);
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend((self.central.len() as u32).to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }
}

/// A protocol-2 pickle of `{"conv1a.weight": _rebuild_tensor_v2(storage "0", numel, ...)}`.
fn tensor_pickle(numel: u64, size: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    let unicode = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: u64| {
        p.extend([0x8a, 8]);
        p.extend(v.to_le_bytes());
    };
    unicode(&mut p, "conv1a.weight");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    int(&mut p, numel);
    p.extend([b't', b'Q']);
    int(&mut p, 0);
    p.push(b'(');
    for &s in size {
        int(&mut p, s);
    }
    p.extend([b't', b'(']);
    let mut stride = 1u64;
    let mut strides = Vec::new();
    for &s in size.iter().rev() {
        strides.push(stride);
        stride = stride.wrapping_mul(s);
    }
    for s in strides.iter().rev() {
        int(&mut p, *s);
    }
    p.extend([b't', 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend([b't', b'R', b's', b'.']);
    p
}

fn pth(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut z = Zip::new();
    z.entry("archive/data.pkl", pickle, None)
        .entry("archive/byteorder", b"little", None)
        .entry("archive/data/0", storage, None);
    z.finish(None)
}

#[test]
fn hostile_pth_files_stay_within_the_file_size() {
    // The well-formed base case loads.
    let ok = pth(&tensor_pickle(2, &[2]), &[0; 8]);
    let path = scratch().join("base.pth");
    std::fs::write(&path, &ok).unwrap();
    let f = weights::load(&path).unwrap();
    assert_eq!(f.get("conv1a_weight").unwrap().dims(), &[2]);

    // A pickle whose BINUNICODE claims a 4 GiB string.
    let mut pkl = vec![0x80, 2, b'X'];
    pkl.extend(u32::MAX.to_le_bytes());
    pkl.extend(b"short.");
    refused("huge_string.pth", &pth(&pkl, &[]), |e| {
        matches!(e, WeightError::Pickle { .. })
    });

    // A LONG4-style wide integer (LONG1 with 255 bytes).
    let mut pkl = vec![0x80, 2, 0x8a, 255];
    pkl.extend([0xff; 255]);
    pkl.push(b'.');
    refused("wide_integer.pth", &pth(&pkl, &[]), |e| {
        matches!(e, WeightError::Pickle { .. })
    });

    // Memo references doubling a list 40 times (2^40 nodes if expanded).
    let mut pkl = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..40 {
        pkl.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    pkl.push(b'.');
    refused("memo_bomb.pth", &pth(&pkl, &[]), |e| {
        matches!(e, WeightError::Pickle { .. })
    });

    // A storage of 2^40 elements backed by 8 bytes.
    refused(
        "storage_beyond_file.pth",
        &pth(&tensor_pickle(1 << 40, &[2]), &[0; 8]),
        |e| matches!(e, WeightError::DataExceedsFile { .. }),
    );

    // A shape of billions of elements over a storage that claims as many.
    refused(
        "billions_of_elements.pth",
        &pth(&tensor_pickle(1 << 32, &[1 << 16, 1 << 16]), &[0; 8]),
        |e| matches!(e, WeightError::DataExceedsFile { .. }),
    );

    // A dimension product that overflows 64 bits.
    refused(
        "dim_product_overflow.pth",
        &pth(&tensor_pickle(4, &[1 << 40, 1 << 40, 1 << 40]), &[0; 16]),
        |e| matches!(e, WeightError::ShapeOverflow { .. }),
    );

    // The zip entry for data.pkl declares 4 GiB (more than the file holds).
    let pkl = tensor_pickle(2, &[2]);
    let mut z = Zip::new();
    z.entry("archive/data.pkl", &pkl, Some(u32::MAX));
    refused("entry_size_beyond_file.pth", &z.finish(None), |e| {
        matches!(e, WeightError::Zip { .. })
    });

    // ... and 200 MiB, under the reader's 256 MiB pickle limit but far beyond the file.
    let mut z = Zip::new();
    z.entry("archive/data.pkl", &pkl, Some(200 << 20));
    refused("entry_size_200mib.pth", &z.finish(None), |e| {
        matches!(e, WeightError::Zip { .. })
    });

    // The end record claims 65535 entries; the central directory holds one.
    let mut z = Zip::new();
    z.entry("archive/data.pkl", &pkl, None);
    refused(
        "entry_count_beyond_file.pth",
        &z.finish(Some(u16::MAX)),
        |e| matches!(e, WeightError::Zip { .. }),
    );

    // Trailing garbage after the archive: the zip reader tolerates a suffix only as an
    // archive comment; anything else is refused or ignored, never read as data.
    let mut b = pth(&tensor_pickle(2, &[2]), &[0; 8]);
    b.extend([0x5a; 4096]);
    let path = scratch().join("trailing_garbage.pth");
    std::fs::write(&path, &b).unwrap();
    let (result, usage) = measure(|| weights::load(&path));
    assert!(usage.peak < SLACK + b.len(), "{usage:?}");
    if let Ok(f) = result {
        assert_eq!(f.tensors.len(), 1);
    }
}

/// Every input the fuzzers found that crashed a reader (committed under
/// `tests/fixtures/hostile/`) is now refused with an error, within the allocation bound.
#[test]
fn fuzzing_regressions_are_refused_within_the_bound() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let (result, usage) = measure(|| weights::load_bytes(&path, &bytes));
        if let Err(e) = &result {
            assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
        assert!(
            usage.peak < SLACK + 4 * bytes.len(),
            "{}: {usage:?}",
            path.display()
        );
        eprintln!("{}: {:?}", path.display(), result.map(|f| f.tensors.len()));
    }
}

/// The same regressions with `RUST_BACKTRACE=1`, in a child process (the setting is read once
/// per process): candle then attaches a backtrace to its errors, and formatting one into a
/// message resolved symbols from the debug info, tens of MiB for a 1 KB file (found by the
/// `pth` fuzz target, where cargo-fuzz sets `RUST_BACKTRACE`).
#[test]
fn fuzzing_regressions_with_backtraces_enabled() {
    if std::env::var_os("R38_HOSTILE_CHILD").is_some() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fuzzing_regressions_are_refused_within_the_bound",
            "--nocapture",
        ])
        .env("RUST_BACKTRACE", "1")
        .env("R38_HOSTILE_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        !stderr.contains("stack backtrace") && !stderr.contains("__rust_begin_short_backtrace"),
        "a backtrace leaked into a message:\n{stderr}"
    );
}

/// For scale: a real (parity fixture) file loads with the heap growing about twice its size
/// (its f32 tensors plus the file's bytes), not more.
#[test]
fn a_valid_file_costs_a_small_multiple_of_its_size() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/a1_cls/weights.params");
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let (file, usage) = measure(|| weights::load(&path).unwrap());
    assert!(!file.tensors.is_empty());
    assert!(usage.peak < SLACK + 3 * len, "{usage:?} for {len} bytes");
    eprintln!("{}: {len} bytes, {usage:?}", path.display());
}

/// The bounds above mean something only if the counting allocator is really installed.
#[test]
fn the_counting_allocator_sees_allocations() {
    let (buffer, usage) = measure(|| vec![1u8; 1 << 20]);
    assert_eq!(buffer.len(), 1 << 20);
    assert!(
        usage.peak >= 1 << 20 && usage.largest >= 1 << 20,
        "{usage:?}"
    );
}
