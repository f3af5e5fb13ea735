//! The counting global allocator of the zero-allocation tests:
//! `proto/tests/datapath_no_alloc.rs` (the datapath), `tests/tests/
//! worker_no_alloc.rs` (a relay worker) and `agent/tests/no_alloc.rs` (the
//! agents' packet path).
//!
//! [`CountingAlloc`] forwards every call to the system allocator and, before
//! each allocation, zeroed allocation and reallocation (frees are not
//! counted), calls the test's `note` function. `note` decides what counts
//! (which threads, whether the measured window is open) and counts it;
//! [`Window`] is the usual counter:
//!
//! ```
//! use alloc_counter::{CountingAlloc, Window};
//!
//! static WINDOW: Window = Window::new();
//!
//! #[global_allocator]
//! static GLOBAL: CountingAlloc = CountingAlloc::new(|_, _| WINDOW.note());
//!
//! WINDOW.open();
//! let v = std::hint::black_box(vec![1u8; 64]);
//! assert_eq!(WINDOW.close(), 1);
//! drop(v);
//! ```
//!
//! `note` runs inside the allocator: it must not allocate, or must guard
//! against re-entering itself when it does (as the agent's test does to
//! capture a backtrace).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the program asked the allocator for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `alloc`.
    Alloc,
    /// `alloc_zeroed`.
    AllocZeroed,
    /// `realloc` (the layout `note` gets is the old one).
    Realloc,
}

/// A global allocator that tells `note` of every allocation request before
/// forwarding it to [`System`].
#[derive(Debug)]
pub struct CountingAlloc {
    note: fn(Layout, Request),
}

impl CountingAlloc {
    /// An allocator that calls `note` before each allocation, zeroed
    /// allocation and reallocation.
    pub const fn new(note: fn(Layout, Request)) -> CountingAlloc {
        CountingAlloc { note }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; the only addition is the call to `note`,
// which does not touch the memory and, per the module documentation, does
// not allocate (or guards its own re-entry).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        (self.note)(layout, Request::Alloc);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        (self.note)(layout, Request::AllocZeroed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        (self.note)(layout, Request::Realloc);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A count of allocation requests made while it is open. Relaxed atomics
/// only, so [`Window::note`] never allocates.
#[derive(Debug)]
pub struct Window {
    open: AtomicBool,
    count: AtomicU64,
}

impl Window {
    /// A closed window with a count of zero.
    pub const fn new() -> Window {
        Window {
            open: AtomicBool::new(false),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one request if the window is open.
    #[inline]
    pub fn note(&self) {
        if self.is_open() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether requests count now.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Starts counting from zero.
    pub fn open(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.open.store(true, Ordering::Relaxed);
    }

    /// Stops counting; returns the count since [`Window::open`].
    pub fn close(&self) -> u64 {
        self.open.store(false, Ordering::Relaxed);
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for Window {
    fn default() -> Window {
        Window::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::hint::black_box;
    use std::sync::Mutex;

    thread_local! {
        /// Only this test's thread counts: the harness allocates on others.
        static WATCHED: Cell<bool> = const { Cell::new(false) };
        static SEEN: Cell<[u64; 3]> = const { Cell::new([0; 3]) };
    }

    static WINDOW: Window = Window::new();

    fn note(_: Layout, request: Request) {
        if WATCHED.with(Cell::get) {
            WINDOW.note();
            SEEN.with(|s| {
                let mut seen = s.get();
                seen[request as usize] += 1;
                s.set(seen);
            });
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc::new(note);

    /// One window at a time: the tests share `WINDOW`.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn counts_allocations_and_reallocations_while_open() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        WATCHED.with(|w| w.set(true));
        WINDOW.open();
        let mut v = black_box(Vec::<u8>::with_capacity(8));
        v.reserve(black_box(1024));
        let z = black_box(vec![0u8; 4096]);
        let counted = WINDOW.close();
        WATCHED.with(|w| w.set(false));
        let seen = SEEN.with(Cell::get);
        assert_eq!(counted, 3);
        assert_eq!(
            seen[Request::Alloc as usize]
                + seen[Request::AllocZeroed as usize]
                + seen[Request::Realloc as usize],
            3
        );
        assert_eq!(seen[Request::AllocZeroed as usize], 1);
        assert_eq!(seen[Request::Realloc as usize], 1);
        drop((v, z));
    }

    #[test]
    fn a_closed_window_counts_nothing() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        WATCHED.with(|w| w.set(true));
        WINDOW.open();
        drop(black_box(vec![1u8; 64]));
        assert_eq!(WINDOW.close(), 1);
        drop(black_box(vec![1u8; 64]));
        assert_eq!(WINDOW.close(), 1, "counted while closed");
        WINDOW.open();
        assert_eq!(WINDOW.close(), 0, "reopening starts from zero");
        WATCHED.with(|w| w.set(false));
    }
}
