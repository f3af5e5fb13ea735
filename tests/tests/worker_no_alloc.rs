//! A relay worker in its steady state makes no heap allocation per frame:
//! a counting global allocator watches the whole process while 20 000
//! frames go user -> relay -> connector, after a warm-up, each followed by
//! one the relay drops (denied, forged, replayed, spoofed, expired, for an
//! unknown session, malformed, truncated): the drop path must not allocate
//! either. The test thread itself sends pre-built frames (re-tagged in
//! place) and receives into a fixed buffer, so every allocation counted
//! would be the relay's.
//!
//! The audit log is on, with a short interval: the worker counts every
//! policy decision in its table and hands it over, and the control thread
//! writes the pairs' aggregates several times inside the window (no
//! subscriber is installed, so the lines themselves go nowhere).
//!
//! A second test covers gathered sends: GSO trains in which every third
//! frame is denied, and trains the other way at the same time, so the
//! relay's batches hold forwarded frames with gaps between them, for two
//! destinations, gathered into multi-piece `UDP_SEGMENT` sends.

use std::time::{Duration, Instant};

use alloc_counter::{CountingAlloc, Window};
use loadgen::world::WorldConfig;
use proto::datapath::DropReason;
use proto::ids::UserId;
use proto::wire::{Kind, HEADER_LEN};
use relay::audit::AuditConfig;
use relay::io::train::TrainSender;
use relay::io::IoConfig;
use tests::{await_until, backends, payload, Rig, ALLOWED, DENIED, USER};

/// Every thread's allocations count while it is open.
static ALLOCATIONS: Window = Window::new();
/// The window counts the whole process: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new(|_, _| ALLOCATIONS.note());

const FRAMES: usize = 20_000;
const WINDOW: usize = 64;

/// A frame the relay drops, and how to send it again.
struct Bad {
    frame: Vec<u8>,
    /// Re-tag it with the next counter first (else sent as is).
    retag: bool,
    /// Then flip this byte (a forged tag).
    flip: Option<usize>,
    /// Send the allowed frame just sent again instead (a replay).
    replay: bool,
    reason: DropReason,
}

/// The frames the relay drops, one of each reason a user can cause.
fn bad_frames(rig: &mut Rig) -> Vec<Bad> {
    let bad = |frame: Vec<u8>, retag: bool, reason: DropReason| Bad {
        frame,
        retag,
        flip: None,
        replay: false,
        reason,
    };
    let denied = rig.user_frame(DENIED, &payload(100, 1));
    let forged = Bad {
        flip: Some(30),
        ..bad(
            rig.user_frame(ALLOWED, &payload(100, 2)),
            true,
            DropReason::BadTag,
        )
    };
    let replay = Bad {
        replay: true,
        ..bad(Vec::new(), false, DropReason::Replay)
    };
    let mut spoofed = vec![0u8; HEADER_LEN + 64];
    rig.user
        .write_header(&mut spoofed, Kind::DataUp, UserId(2), ALLOWED);
    let mut expired = rig.user_frame(ALLOWED, &payload(64, 3));
    expired[1] = 1;
    let mut unknown = rig.user_frame(ALLOWED, &payload(64, 4));
    unknown[4..8].copy_from_slice(&0x0fff_fff0u32.to_be_bytes());
    let mut upstream_as_down = vec![0u8; HEADER_LEN + 64];
    rig.user
        .write_header(&mut upstream_as_down, Kind::DataDown, USER, ALLOWED);
    vec![
        bad(denied, true, DropReason::Denied),
        forged,
        replay,
        bad(spoofed, true, DropReason::Spoofed),
        bad(upstream_as_down, true, DropReason::Spoofed),
        bad(expired, true, DropReason::TtlExpired),
        bad(unknown, true, DropReason::UnknownSession),
        bad(vec![0x11; 100], false, DropReason::Malformed),
        bad(payload(20, 5), false, DropReason::Malformed),
    ]
}

/// Sends `count` allowed frames, each followed by one of `bad`, keeping at
/// most `WINDOW` allowed frames in flight, re-tagging the pre-built frames
/// in place. Returns allowed frames received.
fn pump(
    rig: &mut Rig,
    frames: &mut [Vec<u8>],
    bad: &mut [Bad],
    count: usize,
    rx: &mut [u8],
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sent, mut received) = (0, 0);
    let relay = rig.world.relay_addr();
    while received < count && Instant::now() < deadline {
        while sent < count && sent - received < WINDOW {
            let f = &mut frames[sent % frames.len()];
            rig.user.retag(f);
            rig.user_socket.send_to(f, relay).unwrap();
            let b = &mut bad[sent % bad.len()];
            if b.replay {
                rig.user_socket.send_to(f, relay).unwrap();
            } else {
                if b.retag {
                    rig.user.retag(&mut b.frame);
                }
                if let Some(i) = b.flip {
                    b.frame[i] ^= 1;
                }
                rig.user_socket.send_to(&b.frame, relay).unwrap();
            }
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
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for io in backends() {
        steady_state(io, IoConfig::default());
    }
}

/// The same with busy polling: the worker spins between batches, and
/// neither the spin nor what it counts allocates.
#[test]
fn busy_polling_worker_does_not_allocate() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for io in backends() {
        let io_config = IoConfig {
            busy_poll: Some(Duration::from_micros(50)),
            ..IoConfig::default()
        };
        let rig = steady_state(io, io_config);
        let s = rig.world.relay.totals().io;
        assert!(
            s.busy_poll_served + s.busy_poll_missed > 0,
            "{io}: the worker never spun: {s:?}"
        );
    }
}

/// Runs the window through a relay with `io_config`, checks that nothing
/// allocated, and returns the rig.
fn steady_state(io: relay::io::Backend, io_config: IoConfig) -> Rig {
    let mut rig = Rig::start_with(&WorldConfig {
        io,
        io_config,
        audit: AuditConfig {
            interval: Duration::from_millis(20),
            ..AuditConfig::default()
        },
        ..WorldConfig::default()
    })
    .unwrap();
    let shared = std::sync::Arc::clone(rig.world.relay.shared());
    let audit = || shared.control_stats().audit;
    let mut frames: Vec<Vec<u8>> = (0..WINDOW)
        .map(|i| {
            rig.user_frame(
                ALLOWED,
                &payload(if i % 2 == 0 { 1400 } else { 64 }, i as u8),
            )
        })
        .collect();
    let mut bad = bad_frames(&mut rig);
    let mut rx = vec![0u8; 65536];
    // Warm-up: first batches grow per-worker tables, publish stats...
    let warm = pump(&mut rig, &mut frames, &mut bad, 2_000, &mut rx);
    assert!(warm > 1_000, "{io}: warm-up delivered only {warm}");
    let before = rig.await_counters("the warm-up's drops", |c| c.dropped_total() >= 2_000);
    // ... and the audit's first lines of the allowed and the denied
    // pair (its maps grow once).
    await_until("the audit's first lines", Duration::from_secs(5), || {
        audit().first_lines >= 2
    });

    let audit_before = audit();
    ALLOCATIONS.open();
    let delivered = pump(&mut rig, &mut frames, &mut bad, FRAMES, &mut rx);
    let allocations = ALLOCATIONS.close();
    let audit_during = audit();

    // Every reason the bad frames stand for was hit during the window.
    let d = rig
        .await_counters("the window's drops", |c| {
            c.dropped_total() >= before.dropped_total() + FRAMES as u64
        })
        .since(&before);
    for b in &bad {
        assert!(
            d.dropped(b.reason) > 0,
            "{io}: no {:?} drop: {d:?}",
            b.reason
        );
    }

    assert!(delivered > FRAMES / 2, "{io}: only {delivered} delivered");
    assert_eq!(
        allocations, 0,
        "{io}: {allocations} allocations for {delivered} frames"
    );
    assert!(
        audit_during.aggregate_lines > audit_before.aggregate_lines,
        "{io}: no audit line written inside the window: {audit_before:?} -> {audit_during:?}"
    );
    // The audit recorded every policy decision of the window (handed
    // over in time, or soon after): each delivered frame, and the
    // denied ones.
    await_until(
        "the window's decisions in the audit",
        Duration::from_secs(5),
        || {
            audit().decisions - audit_before.decisions
                >= delivered as u64 + d.dropped(DropReason::Denied)
        },
    );
    rig
}

/// Frames per train in the gathered test, their size, and trains.
const TRAIN: usize = 24;
const TRAIN_FRAME: usize = 300;
const TRAINS: usize = 1_000;

/// Receives what arrived at `socket` (non-blocking); returns the count.
fn drain(socket: &std::net::UdpSocket, rx: &mut [u8]) -> usize {
    let mut n = 0;
    while socket.recv_from(rx).is_ok() {
        n += 1;
    }
    n
}

/// Sends `trains` rounds of one upstream train (every third frame denied)
/// and one downstream train, keeping at most 4 rounds in flight. Returns
/// the frames received (up, down).
fn pump_trains(
    rig: &mut Rig,
    up: &mut [u8],
    down: &mut [u8],
    sender: &mut TrainSender,
    trains: usize,
    rx: &mut [u8],
) -> (usize, usize) {
    let up_due = (0..TRAIN).filter(|k| k % 3 != 2).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    let relay = rig.world.relay_addr();
    let (mut sent, mut got_up, mut got_down) = (0, 0, 0);
    while (got_up < trains * up_due || got_down < trains * TRAIN) && Instant::now() < deadline {
        if sent < trains && got_up + 4 * up_due >= sent * up_due {
            for f in up.chunks_mut(TRAIN_FRAME) {
                rig.user.retag(f);
            }
            for f in down.chunks_mut(TRAIN_FRAME) {
                rig.connector.retag(f);
            }
            let u = sender
                .send(&rig.user_socket, relay, up, TRAIN_FRAME)
                .unwrap();
            let d = sender
                .send(&rig.connector_socket, relay, down, TRAIN_FRAME)
                .unwrap();
            assert_eq!((u.sent, d.sent), (TRAIN, TRAIN));
            sent += 1;
        }
        let (u, d) = (
            drain(&rig.connector_socket, rx),
            drain(&rig.user_socket, rx),
        );
        got_up += u;
        got_down += d;
        if u + d == 0 && sent == trains {
            // Everything sent: wait a little for the rest (bounded by the
            // deadline).
            std::thread::yield_now();
        }
    }
    (got_up, got_down)
}

#[test]
fn gathered_sends_do_not_allocate() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for io in backends() {
        // The audit as in the test above: lines written inside the window.
        let mut rig = Rig::start_with(&WorldConfig {
            io,
            audit: AuditConfig {
                interval: Duration::from_millis(20),
                ..AuditConfig::default()
            },
            ..WorldConfig::default()
        })
        .unwrap();
        let shared = std::sync::Arc::clone(rig.world.relay.shared());
        let audit = || shared.control_stats().audit;
        let mut up = vec![0u8; TRAIN * TRAIN_FRAME];
        for (k, f) in up.chunks_mut(TRAIN_FRAME).enumerate() {
            let service = if k % 3 == 2 { DENIED } else { ALLOWED };
            let frame = rig.user_frame(service, &payload(TRAIN_FRAME - HEADER_LEN, k as u8));
            f.copy_from_slice(&frame);
        }
        let mut down = vec![0u8; TRAIN * TRAIN_FRAME];
        for (k, f) in down.chunks_mut(TRAIN_FRAME).enumerate() {
            f[HEADER_LEN..].copy_from_slice(&payload(TRAIN_FRAME - HEADER_LEN, k as u8));
            rig.connector.write_header(f, Kind::DataDown, USER, ALLOWED);
        }
        for s in [&rig.user_socket, &rig.connector_socket] {
            s.set_nonblocking(true).unwrap();
        }
        let mut sender = TrainSender::new(true);
        let mut rx = vec![0u8; 65536];
        let warm = pump_trains(&mut rig, &mut up, &mut down, &mut sender, 50, &mut rx);
        assert!(warm.0 > 0 && warm.1 > 0, "{io}: warm-up delivered {warm:?}");
        // The audit's first lines of the allowed and the denied pair (its
        // maps grow once), then one more aggregate write.
        await_until("the audit's first lines", Duration::from_secs(5), || {
            audit().first_lines >= 2
        });
        let lines = audit().aggregate_lines;
        pump_trains(&mut rig, &mut up, &mut down, &mut sender, 10, &mut rx);
        await_until("an audit aggregate line", Duration::from_secs(5), || {
            audit().aggregate_lines > lines
        });
        let before = rig.world.relay.totals();

        ALLOCATIONS.open();
        let (got_up, got_down) =
            pump_trains(&mut rig, &mut up, &mut down, &mut sender, TRAINS, &mut rx);
        let allocations = ALLOCATIONS.close();

        let after = rig.world.relay.totals();
        let out = after.io.datagrams_out - before.io.datagrams_out;
        let sends = after.io.send_calls - before.io.send_calls;
        let denied = after.datapath.dropped(DropReason::Denied)
            - before.datapath.dropped(DropReason::Denied);
        eprintln!("{io}: up {got_up}, down {got_down}, {out} datagrams out in {sends} sends, {denied} denied");
        assert!(
            got_up > TRAINS * TRAIN / 2 && got_down > TRAINS * TRAIN / 2,
            "{io}: only {got_up} up and {got_down} down delivered"
        );
        assert!(denied > 0, "{io}: no frame was denied");
        // Gathered: a denied frame every third does not split the sends.
        assert!(
            sends * 4 < out,
            "{io}: {out} datagrams in {sends} sends: not gathered"
        );
        assert_eq!(
            allocations,
            0,
            "{io}: {allocations} allocations for {} frames",
            got_up + got_down
        );
    }
}

/// The bare hop (the floor loadgen measures the relay against) allocates
/// nothing per datagram either, with busy polling or without: otherwise
/// the floor would carry a cost the relay does not.
#[test]
fn bare_hop_does_not_allocate() {
    use relay::bare::{Bare, BareOptions};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for io in backends() {
        for busy_poll in [None, Some(Duration::from_micros(50))] {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let bare = Bare::start(BareOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                destination: rx.local_addr().unwrap(),
                core: None,
                io,
                io_config: IoConfig {
                    busy_poll,
                    ..IoConfig::default()
                },
            })
            .unwrap();
            let frame = payload(1400, 7);
            let mut buf = vec![0u8; 2048];
            // Sends `count` datagrams, at most WINDOW in flight; returns
            // those received.
            let mut pump = |count: usize| {
                let deadline = Instant::now() + Duration::from_secs(30);
                let (mut sent, mut received) = (0, 0);
                while received < count && Instant::now() < deadline {
                    while sent < count && sent - received < WINDOW {
                        tx.send_to(&frame, bare.local_addr()).unwrap();
                        sent += 1;
                    }
                    match rx.recv_from(&mut buf) {
                        Ok(_) => received += 1,
                        // A lost datagram: let the window slide on.
                        Err(_) => received += 1.min(sent - received),
                    }
                }
                received
            };
            // Warm-up: the first polls, the first publication.
            assert!(pump(2_000) > 1_000, "{io}: warm-up");
            ALLOCATIONS.open();
            let delivered = pump(FRAMES);
            let allocations = ALLOCATIONS.close();
            let stats = bare.stop();
            assert!(delivered > FRAMES / 2, "{io}: only {delivered} delivered");
            assert_eq!(
                allocations, 0,
                "{io} busy poll {busy_poll:?}: {allocations} allocations for {delivered} datagrams"
            );
            assert_eq!(
                stats.io.busy_poll_served + stats.io.busy_poll_missed > 0,
                busy_poll.is_some(),
                "{io}: {:?}",
                stats.io
            );
        }
    }
}
