//! A counting global allocator for tests that bound the memory a call may use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and counts, per thread, the live heap, its peak and the
/// largest single allocation. A test binary installs it with
/// `#[global_allocator] static GLOBAL: Counting = Counting;`; elsewhere [`measure`] sees nothing.
pub struct Counting;

thread_local! {
    // `const` initialisers: no lazy allocation inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(size: usize) {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + size as isize;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

fn shrank(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a new block next to the old one: the peak a copying realloc can reach.
        grew(new_size);
        let out = System.realloc(ptr, layout, new_size);
        shrank(layout.size());
        out
    }
}

/// Heap use of one call on this thread.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Peak growth of the live heap over its size at the start, in bytes.
    pub peak: usize,
    /// The largest single allocation, in bytes.
    pub largest: usize,
}

/// Runs `f` on this thread and reports its heap use.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    LARGEST.with(|l| l.set(0));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (
        out,
        Usage {
            peak: peak.max(0) as usize,
            largest: LARGEST.with(Cell::get),
        },
    )
}
