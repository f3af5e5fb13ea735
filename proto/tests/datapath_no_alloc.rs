//! The datapath must not touch the heap: a counting global allocator watches
//! 100 k frames go through every mode, one at a time and in groups, with
//! the audit table recording, and sees zero allocations.

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
/// Frames per [`proto::datapath::Datapath::process_group`] call: two
/// groups of tag lanes.
const GROUP: usize = 8;

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
        for (i, chunk) in bufs.chunks_mut(BATCH).enumerate() {
            let mut dp = fx.datapath(mode);
            if i % 2 == 0 {
                for (v, buf) in verdicts.iter_mut().zip(chunk.iter_mut()) {
                    *v = dp.process(buf);
                }
                continue;
            }
            // Every other batch in groups, as a relay worker judges the
            // segments of a coalesced receive (the tags four at a time).
            for (group_bufs, vs) in chunk.chunks_mut(GROUP).zip(verdicts.chunks_mut(GROUP)) {
                let n = group_bufs.len();
                let mut group: [&mut [u8]; GROUP] = Default::default();
                for (g, buf) in group.iter_mut().zip(group_bufs.iter_mut()) {
                    *g = buf;
                }
                dp.process_group(&mut group[..n], vs);
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
