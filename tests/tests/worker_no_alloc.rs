//! A relay worker in its steady state makes no heap allocation per frame:
//! a counting global allocator watches the whole process while 20 000
//! frames go user -> relay -> connector, after a warm-up. The test thread
//! itself sends pre-built frames (re-tagged in place) and receives into a
//! fixed buffer, so every allocation counted would be the relay's.

use std::time::{Duration, Instant};

use alloc_counter::{CountingAlloc, Window};
use tests::{backends, payload, Rig, ALLOWED};

/// Every thread's allocations count while it is open.
static ALLOCATIONS: Window = Window::new();

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new(|_, _| ALLOCATIONS.note());

const FRAMES: usize = 20_000;
const WINDOW: usize = 64;

/// Sends `count` frames, keeping at most `WINDOW` in flight, re-tagging the
/// pre-built `frames` in place. Returns frames received.
fn pump(rig: &mut Rig, frames: &mut [Vec<u8>], count: usize, rx: &mut [u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sent, mut received) = (0, 0);
    while received < count && Instant::now() < deadline {
        while sent < count && sent - received < WINDOW {
            let f = &mut frames[sent % frames.len()];
            rig.user.retag(f);
            rig.user_socket.send_to(f, rig.world.relay_addr()).unwrap();
            sent += 1;
        }
        match rig.connector_socket.recv_from(rx) {
            Ok(_) => received += 1,
            // A lost datagram: let the window slide on.
            Err(_) => received += 1.min(sent - received),
        }
    }
    received
}

#[test]
fn worker_steady_state_does_not_allocate() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let mut frames: Vec<Vec<u8>> = (0..WINDOW)
            .map(|i| {
                rig.user_frame(
                    ALLOWED,
                    &payload(if i % 2 == 0 { 1400 } else { 64 }, i as u8),
                )
            })
            .collect();
        let mut rx = vec![0u8; 65536];
        // Warm-up: first batches grow per-worker tables, publish stats...
        let warm = pump(&mut rig, &mut frames, 2_000, &mut rx);
        assert!(warm > 1_000, "{io}: warm-up delivered only {warm}");

        ALLOCATIONS.open();
        let delivered = pump(&mut rig, &mut frames, FRAMES, &mut rx);
        let allocations = ALLOCATIONS.close();

        assert!(delivered > FRAMES / 2, "{io}: only {delivered} delivered");
        assert_eq!(
            allocations, 0,
            "{io}: {allocations} allocations for {delivered} frames"
        );
    }
}
