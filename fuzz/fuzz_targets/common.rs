//! Shared by the targets: a global allocator that turns an allocation out of proportion to the
//! input into a crash, and what a successful load must satisfy.
//!
//! libFuzzer's own `-malloc_limit_mb` / `-rss_limit_mb` (passed by `cargo xtask fuzz`) catch
//! absolute sizes; this allocator is stricter: while one input is processed, the live heap may
//! not grow by more than [`FIXED_ALLOWANCE`] + [`PER_INPUT_BYTE`] × input length. It works
//! without a sanitizer (`-s none`) too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::DType;
use r38_model::weights::WeightFile;

/// Heap growth allowed whatever the input (candle and zip bookkeeping, error messages).
pub const FIXED_ALLOWANCE: usize = 16 << 20;
/// Heap growth allowed per input byte (an f16 value becomes 4 bytes of f32, names are kept
/// twice, and each tensor carries a few hundred bytes of bookkeeping for a ~20-byte record).
pub const PER_INPUT_BYTE: usize = 64;

struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static ARMED: AtomicBool = AtomicBool::new(false);

fn over_limit(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        let live = LIVE.load(Ordering::Relaxed);
        if live > LIMIT.load(Ordering::Relaxed) {
            ARMED.store(false, Ordering::Relaxed);
            // Not `panic!`: formatting allocates. Write a fixed message and abort, which
            // libFuzzer reports as a crash and saves the input.
            let msg = b"==r38-fuzz== heap grew beyond the bound for this input size\n";
            // SAFETY: writing a static buffer to stderr.
            unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
            let _ = size;
            std::process::abort();
        }
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        over_limit(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        over_limit(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            over_limit(new_size);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Bounded = Bounded;

/// Runs `f` with the heap bound for an input of `len` bytes armed.
pub fn bounded(len: usize, f: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    let allowance = FIXED_ALLOWANCE.saturating_add(PER_INPUT_BYTE.saturating_mul(len));
    LIMIT.store(base.saturating_add(allowance), Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    f();
    ARMED.store(false, Ordering::Relaxed);
}

/// Every loaded tensor is an `f32` CPU tensor whose element count matches its shape, and the
/// loader kept no more values than the input could hold (no value is made up).
#[allow(dead_code)]
pub fn check_loaded(file: &WeightFile, input_len: usize) {
    let mut values = 0usize;
    for (name, t) in &file.tensors {
        assert_eq!(t.dtype(), DType::F32, "{name}");
        assert!(t.device().is_cpu(), "{name}");
        assert_eq!(t.elem_count(), t.dims().iter().product::<usize>(), "{name}");
        values += t.elem_count();
    }
    // Each stored value takes at least 2 bytes (f16/bf16) in the file; a `.pth` may view one
    // storage from several tensors, each view bounded by the storage, so allow one storage's
    // worth per tensor.
    assert!(
        values <= input_len.saturating_mul(file.tensors.len().max(1)),
        "{values} values from {input_len} bytes"
    );
}
