//! The datapath must not touch the heap: a counting global allocator watches
//! 100 k frames go through every mode, with the audit table recording, and
//! sees zero allocations.

use std::cell::Cell;

use alloc_counter::{CountingAlloc, Window};
use proto::datapath::{Mode, Verdict};
use proto::testkit::Fixture;

thread_local! {
    // Only this test thread's allocations count; the test harness
    // allocates on other threads.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: Window = Window::new();

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new(|_, _| {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.note();
    }
});

const FRAMES: usize = 100_000;
const BATCH: usize = 64;

#[test]
fn datapath_makes_no_heap_allocation() {
    for mode in Mode::ALL {
        let mut fx = Fixture::new(16, 64);
        fx.audit = Some(proto::audit::AuditTable::new(
            proto::audit::DEFAULT_SLOTS,
            7,
        ));
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

        WATCHED.with(|w| w.set(true));
        ALLOCATIONS.open();
        for chunk in bufs.chunks_mut(BATCH) {
            let mut dp = fx.datapath(mode);
            for (v, buf) in verdicts.iter_mut().zip(chunk.iter_mut()) {
                *v = dp.process(buf);
            }
        }
        let allocations = ALLOCATIONS.close();

        assert_eq!(allocations, 0, "{mode:?} allocated");
        assert_eq!(fx.counters.frames, FRAMES as u64);
        assert!(
            fx.counters.forwarded > FRAMES as u64 / 2,
            "{mode:?}: {:?}",
            fx.counters
        );
        if mode == Mode::Ztna {
            let audit = fx.audit.as_ref().expect("set above");
            let audited: u64 = audit.entries().map(|e| e.counts.frames).sum();
            assert!(
                audited > FRAMES as u64 / 2,
                "the audit table recorded only {audited} decisions"
            );
        }
    }
}
