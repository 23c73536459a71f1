//! PyTorch `.pth` state dicts (the zip format of torch >= 1.6), e.g. the PSA "resnet38d" port's
//! converted ImageNet A1 weights; keys are translated to canonical names by
//! [`super::names::to_canonical`].
//!
//! # Loading never executes code
//!
//! A pickle is a program for Python's unpickler, and `torch.load` without `weights_only=True`
//! runs whatever callables it names (`os.system`, ...). This reader does not use Python. The
//! opcodes are interpreted by candle's pickle module (`candle_core::pickle::Stack`, checked in
//! candle-core 0.11.1's `pickle.rs`), which only builds a tree of plain values:
//! - `GLOBAL` pushes an `Object::Class` holding the module and class *names* as strings;
//!   nothing is imported or looked up;
//! - `REDUCE`, `NEWOBJ` and `BUILD` push `Object::Reduce` / `Object::Build` nodes recording the
//!   callable and its arguments; nothing is called. The one special case,
//!   `collections.OrderedDict()` / `defaultdict()`, is replaced by an empty dict value;
//! - `BINPERSID` pushes an `Object::PersistentLoad` node (no callback);
//! - any opcode outside a fixed list of protocol-2 opcodes (`INST`, `OBJ`, `STACK_GLOBAL`,
//!   `EXT*`, `FRAME`, ...) is an error.
//!
//! The tree is then read here by pattern matching: only `torch._utils._rebuild_tensor_v2`
//! (also wrapped in `_rebuild_parameter` or `torch._tensor._rebuild_from_type_v2`) records are
//! taken as tensors, their storages are read as raw bytes from the zip entries, and anything
//! else (e.g. a `posix.system` "call") is just a value that is not a tensor. See the test
//! `malicious_pickle_does_not_run` for a classic `os.system` payload.
//!
//! # Hostile input
//!
//! candle's interpreter trusts sizes in the pickle (a `BINUNICODE` length allocates up to
//! 4 GiB up front, `LONG1` can overflow a shift, memo gets clone whole sub-trees so a short
//! pickle can describe an exponentially large tree). Before handing `data.pkl` to it, this
//! module scans the opcode stream once and simulates the stack with an estimate of the memory
//! each value takes: lengths must fit in the pickle, integers must be at most 8 bytes, and the
//! estimated memory must stay under [`MAX_PICKLE_MEMORY`]. Tensor records are then checked
//! against their storage (element counts with checked arithmetic, views inside the storage,
//! no more elements than the storage holds) before any tensor memory is allocated. As a last
//! line of defence the whole reader runs under `catch_unwind`, so a panic in a dependency
//! becomes an error.
//!
//! Legacy (pre-1.6, non-zip) files are detected by [`load`](super::load) and refused with a
//! message saying how to re-save them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use candle_core::pickle::{Object, Stack};

use super::{
    f32_tensor, insert_unique, names, without_backtrace, FloatKind, Loaded, SkipReason, WeightError,
};

/// Largest `data.pkl` accepted (a ResNet-38 state dict's pickle is about 30 KB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest estimated memory the unpickled value tree may take.
pub const MAX_PICKLE_MEMORY: u64 = 512 << 20;
/// Estimated memory of one value node of candle's `Object` tree.
const NODE_BYTES: u64 = 64;
/// Top-level keys under which training scripts commonly nest the state dict.
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// Parses a PyTorch zip archive held in memory.
pub(crate) fn read_pth_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| read_pth_inner(path, bytes))) {
        Ok(result) => result,
        Err(_) => Err(WeightError::Pickle {
            path: path.to_path_buf(),
            reason: "the reader panicked on this input (a bug; the file is malformed)".into(),
        }),
    }
}

type Archive<'a> = zip::ZipArchive<std::io::Cursor<&'a [u8]>>;

fn read_pth_inner(path: &Path, bytes: &[u8]) -> Result<Loaded, WeightError> {
    let zip_err = |reason: String| WeightError::Zip {
        path: path.to_path_buf(),
        reason,
    };
    let pickle_err = |reason: String| WeightError::Pickle {
        path: path.to_path_buf(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| zip_err(format!("cannot open: {e}")))?;
    let mut entries = Vec::with_capacity(zip.len());
    for name in zip.file_names() {
        entries.push(
            name.map_err(|e| zip_err(format!("bad entry name: {e}")))?
                .into_owned(),
        );
    }
    let pickles: Vec<&String> = entries
        .iter()
        .filter(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|d| !d.is_empty() && !d.contains('/'))
        })
        .collect();
    let pkl_name =
        match pickles.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(zip_err(
                "no `<archive>/data.pkl` entry: not a PyTorch checkpoint (another kind of zip, \
                 e.g. a NumPy .npz?)"
                    .into(),
            )),
            _ => return Err(zip_err(format!("several data.pkl entries: {pickles:?}"))),
        };
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if entries.contains(&byteorder) {
        let order = read_entry(&mut zip, &byteorder, 16, bytes.len()).map_err(zip_err)?;
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(zip_err(format!(
                "byte order {:?} is not supported (only little-endian)",
                order.trim()
            )));
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES, bytes.len()).map_err(zip_err)?;
    prescan(&pkl).map_err(pickle_err)?;
    let mut stack = Stack::empty();
    let mut reader: &[u8] = &pkl;
    stack
        .read_loop(&mut reader)
        .map_err(|e| pickle_err(format!("cannot unpickle: {}", without_backtrace(e))))?;
    let top = stack
        .finalize()
        .map_err(|e| pickle_err(format!("cannot unpickle: {}", without_backtrace(e))))?;
    let items = state_dict_items(top).map_err(pickle_err)?;

    let mut tensors = BTreeMap::new();
    let mut sources = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut storages: HashMap<String, (FloatKind, Cow<'_, [u8]>)> = HashMap::new();
    for (key, value) in items {
        let Object::Unicode(name) = key else {
            skipped.push((format!("{key:?}"), SkipReason::NotATensor));
            continue;
        };
        if name == names::BATCH_COUNTER || name.ends_with(".num_batches_tracked") {
            skipped.push((name, SkipReason::BatchCounter));
            continue;
        }
        let record = match tensor_record(value) {
            Ok(Some(r)) => r,
            Ok(None) => {
                skipped.push((name, SkipReason::NotATensor));
                continue;
            }
            Err(reason) => {
                return Err(WeightError::InvalidTensor {
                    path: path.to_path_buf(),
                    tensor: name,
                    reason,
                })
            }
        };
        let Some(canonical) = names::to_canonical(&name) else {
            skipped.push((name, SkipReason::NoCanonicalName));
            continue;
        };
        let tensor = load_tensor(
            path,
            bytes,
            &mut zip,
            &prefix,
            &name,
            &record,
            &mut storages,
        )?;
        insert_unique(path, &mut tensors, &mut sources, canonical, &name, tensor)?;
    }
    Ok(Loaded {
        tensors,
        metadata: BTreeMap::new(),
        skipped,
    })
}

/// Reads a whole zip entry of at most `limit` bytes from an archive of `file_len` bytes.
fn read_entry(
    zip: &mut Archive<'_>,
    name: &str,
    limit: u64,
    file_len: usize,
) -> Result<Vec<u8>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("cannot open entry {name:?}: {e}"))?;
    let declared = f.size();
    if declared > limit {
        return Err(format!(
            "entry {name:?} declares {declared} bytes, more than the limit of {limit}"
        ));
    }
    // The declared sizes are the file's word: reserve no more than the file could hold (a
    // 300-byte file declaring a 200 MiB entry must not allocate 200 MiB); the buffer grows only
    // as data actually arrives.
    let hint = declared.min(f.compressed_size()).min(file_len as u64);
    let mut out = Vec::with_capacity(hint as usize);
    (&mut f)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read entry {name:?}: {e}"))?;
    Ok(out)
}

// ---- pickle pre-scan ------------------------------------------------------------------------

/// Checks the opcode stream of `data.pkl` before candle interprets it: every opcode must be one
/// candle knows, every argument must fit in the pickle, and the simulated value tree (candle
/// clones a value on every memo put and get) must stay under [`MAX_PICKLE_MEMORY`].
pub fn prescan(pkl: &[u8]) -> Result<(), String> {
    struct Sim<'a> {
        pkl: &'a [u8],
        pos: usize,
        // (is_mark, estimated bytes)
        stack: Vec<(bool, u64)>,
        memo: HashMap<u32, u64>,
        total: u64,
    }
    impl Sim<'_> {
        fn bytes(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|e| *e <= self.pkl.len())
                .ok_or_else(|| {
                    format!(
                        "{what} at offset {} needs {n} bytes, the pickle ends at {}",
                        self.pos,
                        self.pkl.len()
                    )
                })?;
            let out = &self.pkl[self.pos..end];
            self.pos = end;
            Ok(out)
        }
        fn uint(&mut self, n: usize, what: &str) -> Result<u64, String> {
            let b = self.bytes(n, what)?;
            Ok(b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        }
        fn line(&mut self) -> Result<u64, String> {
            let rest = &self.pkl[self.pos..];
            let n = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| format!("GLOBAL at offset {} has no newline", self.pos))?;
            self.pos += n + 1;
            Ok(n as u64)
        }
        fn alloc(&mut self, bytes: u64) -> Result<(), String> {
            self.total = self.total.saturating_add(bytes);
            if self.total > MAX_PICKLE_MEMORY {
                return Err(format!(
                    "the pickle describes more than {MAX_PICKLE_MEMORY} bytes of values \
                     (memo references expanding into a huge tree?)"
                ));
            }
            Ok(())
        }
        fn push(&mut self, cost: u64, new: u64) -> Result<(), String> {
            self.alloc(new)?;
            self.stack.push((false, cost));
            Ok(())
        }
        fn pop(&mut self) -> Result<u64, String> {
            self.stack
                .pop()
                .map(|(_, c)| c)
                .ok_or_else(|| format!("stack underflow at offset {}", self.pos))
        }
        fn pop_to_mark(&mut self) -> Result<u64, String> {
            let mark = self
                .stack
                .iter()
                .rposition(|(m, _)| *m)
                .ok_or_else(|| format!("no MARK before offset {}", self.pos))?;
            let sum = self.stack[mark + 1..]
                .iter()
                .fold(0u64, |a, (_, c)| a.saturating_add(*c));
            self.stack.truncate(mark);
            Ok(sum)
        }
        fn add_to_last(&mut self, cost: u64) -> Result<(), String> {
            let pos = self.pos;
            let last = self
                .stack
                .last_mut()
                .ok_or_else(|| format!("empty stack at offset {pos}"))?;
            last.1 = last.1.saturating_add(cost);
            Ok(())
        }
        fn memo_get(&mut self, id: u32) -> Result<(), String> {
            let cost = *self
                .memo
                .get(&id)
                .ok_or_else(|| format!("memo entry {id} read before it is written"))?;
            self.push(cost, cost)
        }
        fn memo_put(&mut self, id: u32) -> Result<(), String> {
            let cost = self
                .stack
                .last()
                .map(|(_, c)| *c)
                .ok_or_else(|| format!("memo put on an empty stack at offset {}", self.pos))?;
            self.alloc(cost)?;
            self.memo.insert(id, cost);
            Ok(())
        }
    }

    let mut s = Sim {
        pkl,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        total: 0,
    };
    loop {
        let at = s.pos;
        let op = *pkl
            .get(at)
            .ok_or_else(|| "the pickle ends without a STOP opcode".to_string())?;
        s.pos += 1;
        match op {
            0x80 => {
                s.bytes(1, "PROTO")?;
            }
            b'c' => {
                let a = s.line()?;
                let b = s.line()?;
                s.push(NODE_BYTES + a + b, NODE_BYTES + a + b)?;
            }
            b'K' => {
                s.bytes(1, "BININT1")?;
                s.push(NODE_BYTES, NODE_BYTES)?;
            }
            b'M' => {
                s.bytes(2, "BININT2")?;
                s.push(NODE_BYTES, NODE_BYTES)?;
            }
            b'J' => {
                s.bytes(4, "BININT")?;
                s.push(NODE_BYTES, NODE_BYTES)?;
            }
            b'G' => {
                s.bytes(8, "BINFLOAT")?;
                s.push(NODE_BYTES, NODE_BYTES)?;
            }
            b'X' => {
                let len = s.uint(4, "BINUNICODE length")?;
                s.bytes(len as usize, "BINUNICODE string")?;
                s.push(NODE_BYTES + len, NODE_BYTES + len)?;
            }
            0x8a => {
                let n = s.uint(1, "LONG1 length")?;
                if n > 8 {
                    return Err(format!(
                        "LONG1 at offset {at} has {n} bytes; integers wider than 64 bits are not supported"
                    ));
                }
                s.bytes(n as usize, "LONG1 value")?;
                s.push(NODE_BYTES, NODE_BYTES)?;
            }
            // Pushes without operands (DICT `d` is handled by candle like EMPTY_DICT).
            0x88 | 0x89 | b'N' | b'}' | b'd' | b')' | b']' => s.push(NODE_BYTES, NODE_BYTES)?,
            b'(' => {
                s.alloc(NODE_BYTES)?;
                s.stack.push((true, NODE_BYTES));
            }
            b'Q' => {
                let c = s.pop()?;
                s.push(c + NODE_BYTES, NODE_BYTES)?;
            }
            b't' => {
                let c = s.pop_to_mark()?;
                s.push(c.saturating_add(NODE_BYTES), NODE_BYTES)?;
            }
            0x85..=0x87 => {
                let mut c = NODE_BYTES;
                for _ in 0..(op - 0x84) {
                    c = c.saturating_add(s.pop()?);
                }
                s.push(c, NODE_BYTES)?;
            }
            b'a' => {
                let c = s.pop()?;
                s.add_to_last(c)?;
            }
            b's' => {
                let c = s.pop()?.saturating_add(s.pop()?);
                s.add_to_last(c)?;
            }
            b'e' | b'u' => {
                let c = s.pop_to_mark()?;
                s.add_to_last(c)?;
            }
            b'b' | b'R' | 0x81 => {
                let c = s.pop()?.saturating_add(s.pop()?);
                s.push(c.saturating_add(NODE_BYTES), NODE_BYTES)?;
            }
            b'h' => {
                let id = s.uint(1, "BINGET")? as u32;
                s.memo_get(id)?;
            }
            b'j' => {
                let id = s.uint(4, "LONG_BINGET")? as u32;
                s.memo_get(id)?;
            }
            b'q' => {
                let id = s.uint(1, "BINPUT")? as u32;
                s.memo_put(id)?;
            }
            b'r' => {
                let id = s.uint(4, "LONG_BINPUT")? as u32;
                s.memo_put(id)?;
            }
            b'.' => return Ok(()),
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at offset {at} (only the protocol-2 \
                     opcodes that torch.save emits by default are read)"
                ))
            }
        }
    }
}

// ---- object tree → tensors ------------------------------------------------------------------

/// A short description of a pickle value for messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("{module_name}.{class_name}"),
        Object::Reduce { callable, .. } => format!("a call of {}", describe(callable)),
        Object::Build { callable, .. } => format!("a built {}", describe(callable)),
        Object::Dict(_) => "a dict".into(),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Int(_) | Object::Long(_) => "an integer".into(),
        Object::Float(_) => "a float".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Mark => "a MARK".into(),
        Object::PersistentLoad(_) => "a persistent id".into(),
    }
}

/// `true` for a value that is a tensor record of some kind.
fn is_tensor_like(obj: &Object) -> bool {
    match obj {
        Object::Reduce { callable, .. } => matches!(
            callable.as_ref(),
            Object::Class { module_name, class_name }
                if (module_name == "torch._utils" || module_name == "torch._tensor")
                    && class_name.starts_with("_rebuild")
        ),
        _ => false,
    }
}

/// Finds the state dict: the top-level dict, or one nested under a [`WRAPPER_KEYS`] key.
fn state_dict_items(top: Object) -> Result<Vec<(Object, Object)>, String> {
    let mut obj = top;
    for _ in 0..=WRAPPER_KEYS.len() {
        // An OrderedDict with instance state (`_metadata`) that candle did not merge.
        if let Object::Build { callable, .. } = obj {
            obj = *callable;
        }
        let Object::Dict(items) = obj else {
            return Err(format!(
                "the top-level object is {}, not a state dict",
                describe(&obj)
            ));
        };
        if items.iter().any(|(_, v)| is_tensor_like(v)) {
            return Ok(items);
        }
        let nested = WRAPPER_KEYS.iter().find_map(|w| {
            items.iter().position(|(k, v)| {
                matches!(k, Object::Unicode(s) if s == w)
                    && matches!(v, Object::Dict(_) | Object::Build { .. })
            })
        });
        match nested {
            Some(i) => {
                obj = items
                    .into_iter()
                    .nth(i)
                    .map(|(_, v)| v)
                    .unwrap_or(Object::None)
            }
            None => {
                return Err(format!(
                    "a dict with no tensors and no {} entry holding one",
                    WRAPPER_KEYS.join("/")
                ))
            }
        }
    }
    Err("state dict nested too deeply".into())
}

/// A `_rebuild_tensor_v2` record.
#[derive(Debug)]
struct TensorRecord {
    storage_class: String,
    key: String,
    numel: u64,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

fn int(obj: Object, what: &str) -> Result<u64, String> {
    match obj {
        Object::Int(v) if v >= 0 => Ok(v as u64),
        Object::Long(v) if v >= 0 => Ok(v as u64),
        other => Err(format!(
            "{what} is {}, not a non-negative integer",
            describe(&other)
        )),
    }
}

fn int_tuple(obj: Object, what: &str) -> Result<Vec<u64>, String> {
    match obj {
        Object::Tuple(items) => items.into_iter().map(|v| int(v, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", describe(&other))),
    }
}

/// Parses a tensor value, `Ok(None)` when it is not a tensor at all.
fn tensor_record(obj: Object) -> Result<Option<TensorRecord>, String> {
    let Object::Reduce { callable, args } = obj else {
        return Ok(None);
    };
    let Object::Class {
        module_name,
        class_name,
    } = *callable
    else {
        return Ok(None);
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_args(*args).map(Some),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let Object::Tuple(items) = *args else {
                return Err("parameter arguments are not a tuple".into());
            };
            let inner = items
                .into_iter()
                .next()
                .ok_or("parameter without a tensor")?;
            tensor_record(inner)?
                .ok_or_else(|| "parameter without a tensor".into())
                .map(Some)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let Object::Tuple(items) = *args else {
                return Err("_rebuild_from_type_v2 arguments are not a tuple".into());
            };
            let mut items = items.into_iter();
            let func = items.next();
            let inner_args = items.nth(1);
            match (func, inner_args) {
                (
                    Some(Object::Class {
                        module_name,
                        class_name,
                    }),
                    Some(inner),
                ) if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {
                    rebuild_args(inner).map(Some)
                }
                _ => Err("unsupported _rebuild_from_type_v2 record".into()),
            }
        }
        (m @ ("torch._utils" | "torch._tensor"), c) if c.starts_with("_rebuild") => Err(format!(
            "unsupported tensor kind {m}.{c} (quantized, sparse or nested tensors are not read)"
        )),
        _ => Ok(None),
    }
}

/// Arguments of `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_args(args: Object) -> Result<TensorRecord, String> {
    let Object::Tuple(items) = args else {
        return Err("tensor arguments are not a tuple".into());
    };
    if items.len() < 4 {
        return Err(format!(
            "tensor record has {} arguments, expected at least 4",
            items.len()
        ));
    }
    let mut items = items.into_iter();
    let (Some(storage), Some(offset), Some(size), Some(stride)) =
        (items.next(), items.next(), items.next(), items.next())
    else {
        return Err("tensor record too short".into());
    };
    let Object::PersistentLoad(pid) = storage else {
        return Err(format!(
            "tensor storage is {}, not a persistent id",
            describe(&storage)
        ));
    };
    let Object::Tuple(pid) = *pid else {
        return Err("storage persistent id is not a tuple".into());
    };
    let [tag, class, key, _location, numel]: [Object; 5] = pid
        .try_into()
        .map_err(|v: Vec<Object>| format!("storage id has {} fields, expected 5", v.len()))?;
    if tag != Object::Unicode("storage".into()) {
        return Err(format!(
            "storage id tag is {}, not 'storage'",
            describe(&tag)
        ));
    }
    let Object::Class { class_name, .. } = class else {
        return Err(format!("storage type is {}", describe(&class)));
    };
    let key = match key {
        Object::Unicode(k) => k,
        Object::Int(i) => i.to_string(),
        Object::Long(i) => i.to_string(),
        other => return Err(format!("storage key is {}", describe(&other))),
    };
    let size = int_tuple(size, "size")?;
    let stride = int_tuple(stride, "stride")?;
    if size.len() != stride.len() {
        return Err(format!(
            "size {size:?} and stride {stride:?} have different lengths"
        ));
    }
    Ok(TensorRecord {
        storage_class: class_name,
        key,
        numel: int(numel, "storage size")?,
        offset: int(offset, "storage offset")?,
        size,
        stride,
    })
}

/// The element type of a storage class; `Err(dtype name)` for non-float storages.
fn storage_kind(class: &str) -> Result<FloatKind, String> {
    match class {
        "FloatStorage" => Ok(FloatKind::F32),
        "DoubleStorage" => Ok(FloatKind::F64),
        "HalfStorage" => Ok(FloatKind::F16),
        "BFloat16Storage" => Ok(FloatKind::BF16),
        "LongStorage" => Err("int64".into()),
        "IntStorage" => Err("int32".into()),
        "ShortStorage" => Err("int16".into()),
        "CharStorage" => Err("int8".into()),
        "ByteStorage" => Err("uint8".into()),
        "BoolStorage" => Err("bool".into()),
        other => Err(format!("{other} (unknown storage type)")),
    }
}

/// Reads one tensor, loading (and caching) its storage first.
fn load_tensor<'a>(
    path: &Path,
    file: &'a [u8],
    zip: &mut Archive<'a>,
    prefix: &str,
    name: &str,
    r: &TensorRecord,
    storages: &mut HashMap<String, (FloatKind, Cow<'a, [u8]>)>,
) -> Result<candle_core::Tensor, WeightError> {
    let invalid = |reason: String| WeightError::InvalidTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let kind = storage_kind(&r.storage_class).map_err(|dtype| WeightError::UnsupportedDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype,
    })?;
    let es = kind.size() as u64;
    let overflow = || WeightError::ShapeOverflow {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        shape: format!(
            "{:?} (stride {:?}, offset {}, storage {} elements)",
            r.size, r.stride, r.offset, r.numel
        ),
    };
    let count = r
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let storage_bytes = r.numel.checked_mul(es).ok_or_else(overflow)?;
    if count > r.numel {
        return Err(invalid(format!(
            "{count} elements viewed from a storage of {} (overlapping or broadcast views are not read)",
            r.numel
        )));
    }
    let dims: Vec<usize> = r.size.iter().map(|&d| d as usize).collect();
    if count == 0 {
        return f32_tensor(path, name, Vec::new(), &dims);
    }
    // Highest element index the view touches.
    let mut last = r.offset;
    for (&d, &s) in r.size.iter().zip(&r.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(overflow)?;
    }
    if last >= r.numel {
        return Err(invalid(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {}",
            r.offset, r.size, r.stride, r.numel
        )));
    }

    if !storages.contains_key(&r.key) {
        let entry = format!("{prefix}data/{}", r.key);
        let mut f = zip.by_name(&entry).map_err(|e| WeightError::Zip {
            path: path.to_path_buf(),
            reason: format!("storage {entry:?} of tensor {name:?}: {e}"),
        })?;
        let data_at = f.data_start().unwrap_or_else(|| f.header_start());
        let exceeds = |available: u64| WeightError::DataExceedsFile {
            path: path.to_path_buf(),
            tensor: format!("{name} (storage {entry:?})"),
            offset: data_at,
            needed: storage_bytes,
            available,
        };
        if f.size() < storage_bytes {
            return Err(exceeds(f.size()));
        }
        // torch.save stores entries uncompressed: borrow them from the file instead of copying.
        let stored = (f.compression() == zip::CompressionMethod::Stored)
            .then(|| f.data_start())
            .flatten()
            .and_then(|start| {
                let start = usize::try_from(start).ok()?;
                let end = start.checked_add(usize::try_from(storage_bytes).ok()?)?;
                file.get(start..end)
            });
        let data = match stored {
            Some(slice) => Cow::Borrowed(slice),
            None => {
                // Stored entries cannot hold more bytes than they occupy in the file; other
                // methods grow the buffer only as data actually arrives.
                let hint = f.compressed_size().min(file.len() as u64);
                let mut data = Vec::with_capacity(storage_bytes.min(hint) as usize);
                (&mut f)
                    .take(storage_bytes)
                    .read_to_end(&mut data)
                    .map_err(|e| WeightError::Zip {
                        path: path.to_path_buf(),
                        reason: format!("storage {entry:?} of tensor {name:?}: {e}"),
                    })?;
                if (data.len() as u64) < storage_bytes {
                    return Err(exceeds(data.len() as u64));
                }
                Cow::Owned(data)
            }
        };
        drop(f);
        storages.insert(r.key.clone(), (kind, data));
    }
    let Some((stored_kind, data)) = storages.get(&r.key) else {
        return Err(invalid("storage vanished".into()));
    };
    if *stored_kind != kind {
        return Err(invalid(format!(
            "storage {} is used with two element types",
            r.key
        )));
    }
    let es = es as usize;
    // All indices below are < numel, and numel * es <= data.len().
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in r.size.iter().zip(&r.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
                break;
            }
            expect *= d;
        }
        ok
    };
    let values = if contiguous {
        let start = r.offset as usize * es;
        let bytes = data
            .get(start..start + count as usize * es)
            .ok_or_else(|| invalid("view outside its storage".into()))?;
        kind.decode(bytes)
    } else {
        let rank = r.size.len();
        let mut index = vec![0u64; rank];
        let mut linear = r.offset;
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let at = linear as usize * es;
            let bytes = data
                .get(at..at + es)
                .ok_or_else(|| invalid("view outside its storage".into()))?;
            out.extend(kind.decode(bytes));
            for d in (0..rank).rev() {
                index[d] += 1;
                linear = linear.wrapping_add(r.stride[d]);
                if index[d] < r.size[d] {
                    break;
                }
                linear = linear.wrapping_sub(r.stride[d].wrapping_mul(r.size[d]));
                index[d] = 0;
            }
        }
        out
    };
    f32_tensor(path, name, values, &dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{load, load_bytes, WeightFormat};
    use std::io::Write;

    /// A hand-written protocol-2 pickle, opcode by opcode.
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn new() -> Self {
            Pickle(vec![0x80, 2])
        }
        fn op(&mut self, b: u8) -> &mut Self {
            self.0.push(b);
            self
        }
        fn global(&mut self, module: &str, class: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{class}\n").as_bytes());
            self
        }
        fn unicode(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn int(&mut self, v: u64) -> &mut Self {
            if v < 256 {
                self.0.extend([b'K', v as u8]);
            } else if v < (1 << 31) {
                self.0.push(b'J');
                self.0.extend((v as i32).to_le_bytes());
            } else {
                self.0.extend([0x8a, 8]);
                self.0.extend(v.to_le_bytes());
            }
            self
        }
        fn ordered_dict(&mut self) -> &mut Self {
            self.global("collections", "OrderedDict").op(b')').op(b'R')
        }
        /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            numel: u64,
            offset: u64,
            size: &[u64],
            stride: &[u64],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
            self.op(b'(')
                .unicode("storage")
                .global("torch", class)
                .unicode(key);
            self.unicode("cpu").int(numel).op(b't').op(b'Q');
            self.int(offset).op(b'(');
            for s in size {
                self.int(*s);
            }
            self.op(b't').op(b'(');
            for s in stride {
                self.int(*s);
            }
            self.op(b't').op(0x89).ordered_dict().op(b't').op(b'R')
        }
        fn stop(&mut self) -> Vec<u8> {
            self.0.push(b'.');
            std::mem::take(&mut self.0)
        }
    }

    fn pth_zip(prefix: &str, pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
        w.write_all(pickle).unwrap();
        w.start_file(format!("{prefix}/byteorder"), opts).unwrap();
        w.write_all(b"little").unwrap();
        for (k, data) in storages {
            w.start_file(format!("{prefix}/data/{k}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.start_file(format!("{prefix}/version"), opts).unwrap();
        w.write_all(b"3\n").unwrap();
        w.finish().unwrap().into_inner()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn values(t: &candle_core::Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn load_pth(bytes: &[u8]) -> Result<crate::weights::WeightFile, WeightError> {
        load_bytes(Path::new("test.pth"), bytes)
    }

    /// A PSA-style state dict exercising names, dtypes, views, shared storages and metadata.
    fn psa_file() -> Vec<u8> {
        pth_zip("archive", &psa_pickle(), &psa_storages())
    }

    fn psa_pickle() -> Vec<u8> {
        let mut p = Pickle::new();
        p.ordered_dict().op(b'q').op(0).op(b'(');
        // conv1a: [2,3,1,1] contiguous f32, storage 0
        p.unicode("module.conv1a.weight").tensor(
            "FloatStorage",
            "0",
            6,
            0,
            &[2, 3, 1, 1],
            &[3, 1, 1, 1],
        );
        // BN of b2 (unit 2a) in f16, storage 1
        p.unicode("module.b2.bn_branch2a.weight")
            .tensor("HalfStorage", "1", 2, 0, &[2], &[1]);
        p.unicode("module.b2.bn_branch2a.num_batches_tracked")
            .tensor("LongStorage", "2", 1, 0, &[], &[]);
        // bn7 running var in f64, storage 3
        p.unicode("module.bn7.running_var")
            .tensor("DoubleStorage", "3", 2, 0, &[2], &[1]);
        // A transposed view of storage 0: [3,2] with stride [1,3].
        p.unicode("module.linear3.weight")
            .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
        // A slice of storage 0 with an offset.
        p.unicode("module.linear3.bias")
            .tensor("FloatStorage", "0", 6, 3, &[3], &[1]);
        // PSA's classifier, which has a canonical name by the plain-module rule.
        p.unicode("module.fc8.weight").tensor(
            "FloatStorage",
            "0",
            6,
            0,
            &[1, 6, 1, 1],
            &[6, 1, 1, 1],
        );
        // A key with no canonical equivalent.
        p.unicode("module.b2.relu.weight")
            .tensor("FloatStorage", "0", 6, 0, &[6], &[1]);
        p.op(b'u');
        // OrderedDict state: {'_metadata': OrderedDict()}, merged into the dict by candle.
        p.op(b'}')
            .unicode("_metadata")
            .ordered_dict()
            .op(b's')
            .op(b'b');
        p.stop()
    }

    fn psa_storages() -> Vec<(&'static str, Vec<u8>)> {
        let h: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let d: Vec<u8> = [1.25f64, 3.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        vec![
            ("0", f32s(&[0., 1., 2., 3., 4., 5.])),
            ("1", h),
            ("2", 7i64.to_le_bytes().to_vec()),
            ("3", d),
        ]
    }

    #[test]
    fn psa_state_dict_loads_under_canonical_names() {
        let f = load_pth(&psa_file()).unwrap();
        assert_eq!(f.format, WeightFormat::PyTorch);
        let names: Vec<&str> = f.tensors.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "bn2a_branch2a_gamma",
                "bn7_moving_var",
                "conv1a_weight",
                "fc8_weight",
                "linear3_bias",
                "linear3_weight",
            ]
        );
        let conv = f.get("conv1a_weight").unwrap();
        assert_eq!(conv.dims(), &[2, 3, 1, 1]);
        assert_eq!(values(conv), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(
            values(f.get("bn2a_branch2a_gamma").unwrap()),
            vec![0.5, -2.0]
        );
        assert_eq!(values(f.get("bn7_moving_var").unwrap()), vec![1.25, 3.5]);
        let lw = f.get("linear3_weight").unwrap();
        assert_eq!(lw.dims(), &[3, 2]);
        assert_eq!(values(lw), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(values(f.get("linear3_bias").unwrap()), vec![3., 4., 5.]);
        let mut skipped = f.skipped.clone();
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            skipped,
            vec![
                ("_metadata".to_string(), SkipReason::NotATensor),
                (
                    "module.b2.bn_branch2a.num_batches_tracked".to_string(),
                    SkipReason::BatchCounter
                ),
                (
                    "module.b2.relu.weight".to_string(),
                    SkipReason::NoCanonicalName
                ),
            ]
        );
        // Through the file system too.
        let dir = std::env::temp_dir().join(format!("r38-pth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("weights.bin"); // the extension does not matter
        std::fs::write(&p, psa_file()).unwrap();
        assert_eq!(load(&p).unwrap().tensors.len(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stored_entries_are_borrowed_from_the_file() {
        let bytes = psa_file();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
        let f = zip.by_name("archive/data/0").unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        let start = f.data_start().unwrap() as usize;
        assert_eq!(
            &bytes[start..start + 24],
            &f32s(&[0., 1., 2., 3., 4., 5.])[..]
        );
    }

    #[test]
    fn wrapped_state_dict() {
        let mut p = Pickle::new();
        p.op(b'}')
            .op(b'(')
            .unicode("epoch")
            .int(3)
            .unicode("state_dict");
        p.ordered_dict().op(b'(').unicode("conv1a.weight");
        p.tensor("FloatStorage", "0", 2, 0, &[2], &[1]).op(b'u');
        p.op(b'u');
        let pkl = p.stop();
        let f = load_pth(&pth_zip("w", &pkl, &[("0", f32s(&[1., 2.]))])).unwrap();
        assert_eq!(values(f.get("conv1a_weight").unwrap()), vec![1., 2.]);
    }

    #[test]
    fn parameter_and_large_int_records() {
        // nn.Parameter wrapper, and a LONG1-encoded numel.
        let mut p = Pickle::new();
        p.op(b'}').op(b'(').unicode("bn7.weight");
        p.global("torch._utils", "_rebuild_parameter").op(b'(');
        p.tensor("FloatStorage", "k", 2, 0, &[2], &[1]);
        p.op(0x88).ordered_dict().op(b't').op(b'R').op(b'u');
        let pkl = p.stop();
        let f = load_pth(&pth_zip("a", &pkl, &[("k", f32s(&[4., 5.]))])).unwrap();
        assert_eq!(values(f.get("bn7_gamma").unwrap()), vec![4., 5.]);
    }

    #[test]
    fn malicious_pickle_does_not_run() {
        let marker = std::env::temp_dir().join(format!("r38-pwned-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let cmd = format!("touch {}", marker.display());
        // Top level: os.system("touch ...")
        let mut p = Pickle::new();
        p.global("os", "system").unicode(&cmd).op(0x85).op(b'R');
        let top = p.stop();
        // Inside a dict value, next to nothing else.
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.global("posix", "system")
            .unicode(&cmd)
            .op(0x85)
            .op(b'R')
            .op(b's');
        let nested = p.stop();
        // As the storage-class "constructor" of a tensor record.
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.global("subprocess", "check_call")
            .op(b'(')
            .unicode("touch")
            .unicode(&cmd);
        p.op(b'l').op(b'R').op(b's');
        let unsupported = p.stop();
        for pkl in [top, nested, unsupported] {
            let r = load_pth(&pth_zip("archive", &pkl, &[]));
            let e = r.expect_err("a malicious pickle must not load");
            assert!(matches!(e, WeightError::Pickle { .. }), "{e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!marker.exists(), "the payload ran");
    }

    #[test]
    fn hostile_pickles_are_rejected_before_unpickling() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("huge BINUNICODE", {
                let mut b = vec![0x80, 2, b'X'];
                b.extend(u32::MAX.to_le_bytes());
                b.extend(b"short.");
                b
            }),
            ("wide LONG1", {
                let mut b = vec![0x80, 2, 0x8a, 200];
                b.extend([1u8; 200]);
                b.push(b'.');
                b
            }),
            ("memo bomb", {
                let mut b = vec![0x80, 2, b']', b'q', 0];
                for _ in 0..64 {
                    b.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
                }
                b.push(b'.');
                b
            }),
            ("STACK_GLOBAL", vec![0x80, 4, 0x93, b'.']),
            ("no STOP", vec![0x80, 2, b'}']),
            ("underflow", vec![0x80, 2, b'R', b'.']),
            ("get before put", vec![0x80, 2, b'h', 7, b'.']),
            ("GLOBAL without newline", vec![0x80, 2, b'c', b'o', b's']),
        ];
        for (what, pkl) in cases {
            let e = load_pth(&pth_zip("archive", &pkl, &[])).expect_err(what);
            assert!(matches!(e, WeightError::Pickle { .. }), "{what}: {e}");
        }
    }

    fn one_tensor(numel: u64, offset: u64, size: &[u64], stride: &[u64], data: Vec<u8>) -> Vec<u8> {
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.tensor("FloatStorage", "0", numel, offset, size, stride)
            .op(b's');
        let pkl = p.stop();
        pth_zip("archive", &pkl, &[("0", data)])
    }

    #[test]
    fn hostile_tensor_records() {
        // Storage claims 2^40 elements, entry holds 8 bytes.
        let e = load_pth(&one_tensor(1 << 40, 0, &[2], &[1], f32s(&[1., 2.]))).unwrap_err();
        assert!(matches!(e, WeightError::DataExceedsFile { .. }), "{e}");
        // Element count overflow.
        let e = load_pth(&one_tensor(
            4,
            0,
            &[1 << 40, 1 << 40, 1 << 40],
            &[1, 1, 1],
            vec![],
        ))
        .unwrap_err();
        assert!(matches!(e, WeightError::ShapeOverflow { .. }), "{e}");
        // Broadcast view: 2^40 elements from one storage element.
        let e = load_pth(&one_tensor(1, 0, &[1 << 20, 1 << 20], &[0, 0], f32s(&[1.]))).unwrap_err();
        assert!(matches!(e, WeightError::InvalidTensor { .. }), "{e}");
        // View past the end of its storage.
        let e = load_pth(&one_tensor(2, 1, &[2], &[1], f32s(&[1., 2.]))).unwrap_err();
        assert!(matches!(e, WeightError::InvalidTensor { .. }), "{e}");
        // Huge stride on a size-1 dimension is harmless.
        let f = load_pth(&one_tensor(
            2,
            0,
            &[1, 2],
            &[u64::MAX / 2, 1],
            f32s(&[1., 2.]),
        ))
        .unwrap();
        assert_eq!(values(f.get("conv1a_weight").unwrap()), vec![1., 2.]);
        // Missing storage entry.
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.tensor("FloatStorage", "9", 1, 0, &[1], &[1]).op(b's');
        let e = load_pth(&pth_zip("archive", &p.stop(), &[])).unwrap_err();
        assert!(matches!(e, WeightError::Zip { .. }), "{e}");
        // Integer parameter.
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.tensor("LongStorage", "0", 1, 0, &[1], &[1]).op(b's');
        let e = load_pth(&pth_zip("archive", &p.stop(), &[("0", vec![0; 8])])).unwrap_err();
        assert!(matches!(e, WeightError::UnsupportedDtype { .. }), "{e}");
        // Malformed record.
        let mut p = Pickle::new();
        p.op(b'}').unicode("conv1a.weight");
        p.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .int(1)
            .op(b't')
            .op(b'R')
            .op(b's');
        let e = load_pth(&pth_zip("archive", &p.stop(), &[])).unwrap_err();
        assert!(matches!(e, WeightError::InvalidTensor { .. }), "{e}");
        // Duplicate canonical names.
        let mut p = Pickle::new();
        p.op(b'}').op(b'(').unicode("conv1a.weight");
        p.tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        p.unicode("module.conv1a.weight")
            .tensor("FloatStorage", "0", 1, 0, &[1], &[1]);
        p.op(b'u');
        let e = load_pth(&pth_zip("archive", &p.stop(), &[("0", f32s(&[1.]))])).unwrap_err();
        assert!(matches!(e, WeightError::DuplicateName { .. }), "{e}");
    }

    #[test]
    fn archive_problems() {
        let mut p = Pickle::new();
        p.op(b'}');
        let empty = p.stop();
        // A zip without data.pkl (an .npz, say).
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("x.npy", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"\x93NUMPY").unwrap();
        let npz = w.finish().unwrap().into_inner();
        assert!(matches!(load_pth(&npz), Err(WeightError::Zip { .. })));
        // Big-endian archive.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("a/data.pkl", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&empty).unwrap();
        w.start_file("a/byteorder", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"big").unwrap();
        let big = w.finish().unwrap().into_inner();
        assert!(matches!(load_pth(&big), Err(WeightError::Zip { .. })));
        // An empty state dict.
        let e = load_pth(&pth_zip("a", &empty, &[])).unwrap_err();
        assert!(matches!(e, WeightError::Pickle { .. }), "{e}");
        // Only the zip magic.
        assert!(matches!(
            load_pth(b"PK\x03\x04"),
            Err(WeightError::Zip { .. })
        ));
    }

    #[test]
    fn mutations_never_panic() {
        let base = psa_file();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..400 {
            let mut b = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            if next() % 4 == 0 {
                b.truncate((next() as usize) % b.len());
            }
            let _ = read_pth_bytes(Path::new("fuzz.pth"), &b);
        }
        // Mutations of the pickle inside a well-formed archive (the zip CRCs stay valid).
        let pkl = psa_pickle();
        let storages = psa_storages();
        for _ in 0..1500 {
            let mut b = pkl.clone();
            for _ in 0..(next() % 3 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            if next() % 5 == 0 {
                b.truncate((next() as usize) % b.len());
            }
            let _ = read_pth_bytes(Path::new("fuzz.pth"), &pth_zip("archive", &b, &storages));
        }
    }
}
