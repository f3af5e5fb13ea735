//! The rig measures what a relay worker does, round after round: every
//! frame passes the tag and the replay window (re-armed with fresh
//! counters), gets the verdict its case implies, and leaves rewritten and
//! tagged for the connector; and a round allocates nothing (the measuring
//! thread's allocations count, as in the datapath's own test,
//! `proto/tests/datapath_no_alloc.rs`).

use std::cell::Cell;

use alloc_counter::{CountingAlloc, Window};
use bench::rig::{Case, Rig, BATCH};
use proto::datapath::{DropReason, Mode, Verdict};
use proto::hoptag::HopKey;
use proto::ids::ReceiverIndex;
use proto::wire::Frame;

thread_local! {
    // Only the measuring thread's allocations count: the other tests run
    // on other threads at the same time.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: Window = Window::new();

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new(|_, _| {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.note();
    }
});

/// The fixture's connector: its receiver index and hop key.
const CONNECTOR_INDEX: ReceiverIndex = ReceiverIndex(0xc0);
const CONNECTOR_KEY: [u8; 32] = [0xcc; 32];

#[test]
fn every_round_passes_the_replay_window_and_is_forwarded_to_the_connector() {
    let connector = HopKey::new(&CONNECTOR_KEY);
    for case in Case::ALL {
        let mut rig = Rig::new(case);
        let mut denied = 0;
        for round in 0..200u64 {
            let forwarded = rig.round();
            for (i, (verdict, frame)) in rig.verdicts().iter().zip(rig.frames()).enumerate() {
                let n = round * BATCH as u64 + i as u64;
                if case.mode == Mode::Ztna && case.denies(n) {
                    assert_eq!(
                        *verdict,
                        Verdict::Drop(DropReason::Denied),
                        "{} frame {n}",
                        case.label()
                    );
                    denied += 1;
                    continue;
                }
                assert!(
                    matches!(verdict, Verdict::Forward { .. }),
                    "{} frame {n}: {verdict:?}",
                    case.label()
                );
                let f = Frame::new_checked(frame).expect("a forwarded frame is well formed");
                assert_eq!(f.receiver(), CONNECTOR_INDEX, "{}", case.label());
                assert!(
                    connector.verify_frame(&f),
                    "{} frame {n}: tagged for the connector",
                    case.label()
                );
                assert_eq!(frame.len(), case.size);
            }
            assert_eq!(
                forwarded,
                rig.verdicts()
                    .iter()
                    .filter(|v| matches!(v, Verdict::Forward { .. }))
                    .count()
            );
        }
        rig.check().unwrap_or_else(|e| panic!("{e}"));
        let expected_denied = if case.mode == Mode::Ztna {
            200 * BATCH as u64 * u64::from(case.deny_percent) / 100
        } else {
            0
        };
        assert_eq!(denied, expected_denied, "{}", case.label());
    }
}

#[test]
fn the_check_catches_a_batch_judged_twice_or_never_armed() {
    let mut rig = Rig::new(Case::allowed(Mode::Vpn, 64));
    rig.round();
    rig.check().unwrap();
    // Judged again: every frame a replay.
    rig.process_batch();
    let e = rig.check().unwrap_err().to_string();
    assert!(e.contains("vpn/64B"), "{e}");

    // Never armed: zeroed buffers, malformed.
    let mut rig = Rig::new(Case::allowed(Mode::Forward, 1400));
    rig.process_batch();
    assert!(rig.check().is_err());
    // Armed and not judged yet is fine.
    let mut rig = Rig::new(Case::allowed(Mode::Ztna, 64));
    rig.round();
    rig.arm();
    rig.check().unwrap();
}

#[test]
fn a_round_allocates_nothing() {
    for case in Case::ALL {
        let mut rig = Rig::new(case);
        rig.round();
        WATCHED.with(|w| w.set(true));
        ALLOCATIONS.open();
        for _ in 0..500 {
            rig.arm();
            std::hint::black_box(rig.process_batch());
        }
        let allocations = ALLOCATIONS.close();
        WATCHED.with(|w| w.set(false));
        assert_eq!(allocations, 0, "{} allocated", case.label());
        rig.check().unwrap_or_else(|e| panic!("{e}"));
    }
}
