//! The datapath must not touch the heap: a counting global allocator watches
//! 100 k frames go through every mode and sees zero allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::datapath::{Mode, Verdict};
use proto::testkit::Fixture;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Only this test thread's allocations inside the measured section count;
    // the test harness allocates on other threads.
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call unchanged to the system allocator; the only
// addition is a relaxed counter increment, which cannot allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 100_000;
const BATCH: usize = 64;

#[test]
fn datapath_makes_no_heap_allocation() {
    for mode in Mode::ALL {
        let mut fx = Fixture::new(16, 64);
        // Frames prepared up front: 1400 B and 64 B, allowed, denied and
        // forged, so every branch of the datapath runs.
        let mut bufs: Vec<Vec<u8>> = (0..FRAMES)
            .map(|i| {
                let mut b = vec![0u8; 1400];
                let len = if i % 2 == 0 { 1400 } else { 64 };
                let n = fx.upstream((i % 16) as u32, (i % 64) as u32, &mut b, len);
                b.truncate(n);
                if i % 97 == 0 {
                    b[30] ^= 1;
                }
                b
            })
            .collect();
        let mut verdicts = [Verdict::Local; BATCH];

        WATCHING.with(|w| w.set(true));
        for chunk in bufs.chunks_mut(BATCH) {
            let mut dp = fx.datapath(mode);
            for (v, buf) in verdicts.iter_mut().zip(chunk.iter_mut()) {
                *v = dp.process(buf);
            }
        }
        WATCHING.with(|w| w.set(false));

        assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "{mode:?} allocated");
        assert_eq!(fx.counters.frames, FRAMES as u64);
        assert!(
            fx.counters.forwarded > FRAMES as u64 / 2,
            "{mode:?}: {:?}",
            fx.counters
        );
    }
}
