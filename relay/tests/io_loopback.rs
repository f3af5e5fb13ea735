//! The I/O backends on real loopback sockets: a sender sends single
//! datagrams and GSO trains to an `Io`-driven forwarder, which rewrites each
//! in place and forwards it to a receiver; the receiver must get every
//! forwarded datagram byte-exact and in order per flow.
//!
//! Nothing here sleeps to synchronise: waits are poll timeouts and socket
//! read timeouts, loops are bounded. If io_uring cannot start, the `uring`
//! cases fail unless `ZTNA_SKIP_URING=1`.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use relay::io::train::TrainSender;
use relay::io::{
    bind_socket, Action, Backend, Dest, Dests, Grouping, Handler, Io, IoConfig, IoStats,
};

const BACKENDS: [Backend; 2] = [Backend::Uring, Backend::Mmsg];
/// Backends for the cases where no GRO run arrives (single datagrams, or
/// GRO off), so datagrams need not be frames: the glommio backend splits
/// runs by the frames' declared lengths (its own runs are tested in
/// tests/io_glommio.rs).
#[cfg(feature = "glommio")]
const NO_RUNS: [Backend; 3] = [Backend::Uring, Backend::Mmsg, Backend::Glommio];
#[cfg(not(feature = "glommio"))]
const NO_RUNS: [Backend; 2] = BACKENDS;
/// First byte of a datagram the forwarder must drop.
const DROP: u8 = 0x01;
/// First byte the forwarder writes into what it forwards.
const MARK: u8 = 0xAA;
/// Header: marker, flow, sequence number (u32 BE).
const HDR: usize = 6;

/// Multiplier for every timeout here, from `ZTNA_TEST_TIME_SCALE` (e.g. 20
/// under valgrind, which runs the threads one at a time, ~50x slower).
fn time_scale() -> u32 {
    std::env::var("ZTNA_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Builds `backend`, or `None` when it is `Uring`, cannot start, and the
/// environment opts out of io_uring tests.
fn make_io(backend: Backend, socket: UdpSocket, cfg: IoConfig) -> Option<Io> {
    match Io::new(backend, socket, cfg) {
        Ok(io) => Some(io),
        Err(e) if backend == Backend::Uring && std::env::var("ZTNA_SKIP_URING").as_deref() == Ok("1") => {
            eprintln!("skipping the uring case: {e}");
            None
        }
        Err(e) => panic!(
            "the {backend} backend cannot start here: {e}\n(set ZTNA_SKIP_URING=1 to skip io_uring cases on hosts that block it)"
        ),
    }
}

/// Whether `backend` is to be tested: not filtered out by
/// `ZTNA_TEST_BACKENDS` (e.g. `mmsg`), and able to start (or skipped by the
/// environment).
fn backend_available(backend: Backend) -> bool {
    if let Ok(only) = std::env::var("ZTNA_TEST_BACKENDS") {
        if !only.split(',').any(|b| b.trim() == backend.name()) {
            return false;
        }
    }
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    make_io(backend, sock, IoConfig::default()).is_some()
}

fn pattern(flow: u8, seq: u32, i: usize) -> u8 {
    (u32::from(flow) * 31 + seq * 7 + i as u32) as u8
}

/// Writes datagram `seq` of `flow` into `d`.
fn fill(d: &mut [u8], flow: u8, seq: u32, drop: bool) {
    assert!(d.len() > HDR);
    d[0] = if drop { DROP } else { 0 };
    d[1] = flow;
    d[2..6].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d.iter_mut().enumerate().skip(HDR) {
        *b = pattern(flow, seq, i);
    }
}

/// The forwarder's per-frame logic: drop marked frames, mark and flip the
/// last byte of the others (an in-place rewrite the receiver checks).
/// `work` is spent busy per datagram, to make the forwarder slower than the
/// sender.
fn forward_to(dst: SocketAddr, work: Duration) -> impl Handler + Send {
    Dests::new([dst], move |_src, d: &mut [u8]| {
        if !work.is_zero() {
            let t = Instant::now();
            while t.elapsed() < work {
                std::hint::spin_loop();
            }
        }
        if d.first() == Some(&DROP) {
            return Action::Consume;
        }
        d[0] = MARK;
        let last = d.len() - 1;
        d[last] ^= 0xFF;
        Action::Forward(Dest(0))
    })
}

/// Runs a forwarder thread until it has received `expected` datagrams or
/// stayed idle for ~5 s; returns its counters.
fn spawn_forwarder(
    backend: Backend,
    cfg: IoConfig,
    dst: SocketAddr,
    expected: u64,
    work: Duration,
) -> (SocketAddr, thread::JoinHandle<(Backend, IoStats)>) {
    spawn_forwarder_with(backend, cfg, expected, forward_to(dst, work))
}

/// [`spawn_forwarder`] with the per-datagram logic given.
fn spawn_forwarder_with<H>(
    backend: Backend,
    cfg: IoConfig,
    expected: u64,
    mut handler: H,
) -> (SocketAddr, thread::JoinHandle<(Backend, IoStats)>)
where
    H: Handler + Send + 'static,
{
    let sock = bind_socket(localhost(), &cfg).unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut io = make_io(backend, sock, cfg).expect("checked available");
        let mut idle = 0;
        while io.stats().datagrams_in < expected && idle < 100 * time_scale() {
            let ps = io.poll(Duration::from_millis(50), &mut handler).unwrap();
            idle = if ps.received == 0 { idle + 1 } else { 0 };
        }
        io.flush().unwrap();
        (io.backend(), *io.stats())
    });
    (addr, handle)
}

/// A plain receiving socket with a read timeout.
fn receiver() -> UdpSocket {
    let cfg = IoConfig {
        gro: false,
        ..IoConfig::default()
    };
    let rx = bind_socket(localhost(), &cfg).unwrap();
    rx.set_nonblocking(false).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5) * time_scale()))
        .unwrap();
    rx
}

/// What a flow sends: single datagrams (`seg == len`) and GSO trains.
#[derive(Clone, Copy)]
enum Item {
    Single(usize),
    /// `count` segments of `seg` bytes, the last `last` bytes; every
    /// `drop_every`-th segment (if non-zero) marked for dropping.
    Train {
        seg: usize,
        count: usize,
        last: usize,
        drop_every: usize,
    },
}

const ITEMS: &[Item] = &[
    Item::Single(8),
    Item::Single(33),
    Item::Train {
        seg: 1200,
        count: 20,
        last: 700,
        drop_every: 0,
    },
    Item::Single(1400),
    Item::Single(1472),
    Item::Train {
        seg: 64,
        count: 64,
        last: 64,
        drop_every: 0,
    },
    Item::Single(4000),
    Item::Train {
        seg: 1400,
        count: 46,
        last: 1400,
        drop_every: 9,
    },
    Item::Single(9000),
    Item::Single(30_000),
    Item::Train {
        seg: 500,
        count: 10,
        last: 17,
        drop_every: 3,
    },
    Item::Single(60_000),
    Item::Single(100),
];

/// Sends `rounds` rounds of `ITEMS` on each of `flows` flows (interleaved)
/// to `dst`, from `senders` Ios using a `TrainSender` for trains and `send_to` for
/// singles. Returns, per flow, the (seq, len) list the receiver must see, and
/// the number of datagrams sent.
fn send_flows(senders: &mut [Io], dst: SocketAddr, rounds: usize) -> (Vec<Vec<(u32, usize)>>, u64) {
    let flows = senders.len();
    let mut expect = vec![Vec::new(); flows];
    let mut seqs = vec![0u32; flows];
    let mut sent = 0u64;
    let mut buf = vec![0u8; 70_000];
    let mut trains = TrainSender::new(true);
    for _ in 0..rounds {
        for item in ITEMS {
            for (flow, io) in senders.iter_mut().enumerate() {
                let seq = &mut seqs[flow];
                match *item {
                    Item::Single(len) => {
                        fill(&mut buf[..len], flow as u8, *seq, false);
                        io.send_to(dst, &buf[..len]).unwrap();
                        io.flush().unwrap();
                        expect[flow].push((*seq, len));
                        *seq += 1;
                        sent += 1;
                    }
                    Item::Train {
                        seg,
                        count,
                        last,
                        drop_every,
                    } => {
                        let mut off = 0;
                        for k in 0..count {
                            let len = if k + 1 == count { last } else { seg };
                            let drop = drop_every != 0 && k % drop_every == drop_every - 1;
                            fill(&mut buf[off..off + len], flow as u8, *seq, drop);
                            if !drop {
                                expect[flow].push((*seq, len));
                            }
                            *seq += 1;
                            off += len;
                        }
                        let n = trains.send(&*io, dst, &buf[..off], seg).unwrap();
                        assert_eq!(n.sent, count, "the train was sent whole");
                        sent += count as u64;
                    }
                }
            }
        }
    }
    (expect, sent)
}

/// Receives until every flow's expectations are met, checking content and
/// order; panics on a mismatch or a 5 s silence.
fn receive_and_check(rx: &UdpSocket, expect: &[Vec<(u32, usize)>]) {
    let total: usize = expect.iter().map(Vec::len).sum();
    let mut next = vec![0usize; expect.len()];
    let mut buf = vec![0u8; 65_536];
    for got in 0..total {
        let (len, _) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("receiver got {got} of {total} datagrams, then: {e}"));
        let d = &buf[..len];
        assert!(len > HDR, "runt of {len} bytes");
        assert_eq!(d[0], MARK, "forwarder's in-place mark missing");
        let flow = d[1] as usize;
        let seq = u32::from_be_bytes(d[2..6].try_into().unwrap());
        let (want_seq, want_len) = expect[flow][next[flow]];
        assert_eq!(
            (seq, len),
            (want_seq, want_len),
            "flow {flow}: out of order or wrong length"
        );
        for (i, &b) in d.iter().enumerate().take(len - 1).skip(HDR) {
            assert_eq!(
                b,
                pattern(flow as u8, seq, i),
                "flow {flow} seq {seq} byte {i}"
            );
        }
        assert_eq!(
            d[len - 1],
            pattern(flow as u8, seq, len - 1) ^ 0xFF,
            "in-place rewrite of the last byte"
        );
        next[flow] += 1;
    }
}

fn forward_scenario(backend: Backend, cfg: IoConfig, work: Duration) -> IoStats {
    let rx = receiver();
    let rx_addr = rx.local_addr().unwrap();
    let flows = 3;
    let rounds = 4;
    // Count what will be sent, so the forwarder knows when it is done.
    let per_round: usize = ITEMS
        .iter()
        .map(|i| match i {
            Item::Single(_) => 1,
            Item::Train { count, .. } => *count,
        })
        .sum();
    let expected_in = (per_round * rounds * flows) as u64;
    let (fwd_addr, fwd) = spawn_forwarder(backend, cfg, rx_addr, expected_in, work);
    let mut senders: Vec<Io> = (0..flows)
        .map(|_| {
            let s = bind_socket(localhost(), &IoConfig::default()).unwrap();
            Io::new(Backend::Mmsg, s, IoConfig::default()).unwrap()
        })
        .collect();
    let (expect, sent) = send_flows(&mut senders, fwd_addr, rounds);
    assert_eq!(sent, expected_in);
    receive_and_check(&rx, &expect);
    let (used, stats) = fwd.join().unwrap();
    assert_eq!(used, backend);
    let forwarded: u64 = expect.iter().map(|f| f.len() as u64).sum();
    assert_eq!(
        stats.datagrams_in, expected_in,
        "{backend}: every datagram reached the handler"
    );
    assert_eq!(
        stats.datagrams_out, forwarded,
        "{backend}: every forward was sent"
    );
    assert_eq!(
        stats.send_errors.total(),
        0,
        "{backend}: {:?}",
        stats.send_errors
    );
    assert_eq!(
        stats.recv_truncated + stats.recv_errors,
        0,
        "{backend}: {stats:?}"
    );
    stats
}

#[test]
fn forwards_singles_and_gso_trains_in_order_with_gro() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let stats = forward_scenario(backend, IoConfig::default(), Duration::ZERO);
        assert!(
            stats.gro_runs > 0 && stats.gro_segments >= 20,
            "{backend}: GRO must coalesce GSO trains: {stats:?}"
        );
        assert!(
            stats.send_calls < stats.datagrams_out / 4,
            "{backend}: runs must go out as GSO groups: {} sends for {} datagrams",
            stats.send_calls,
            stats.datagrams_out
        );
        assert!(stats.batch_hist.iter().sum::<u64>() > 0);
        eprintln!(
            "{backend}: in {} out {} sends {} syscalls {} gro runs {} ({} segments), no-buffer {}",
            stats.datagrams_in,
            stats.datagrams_out,
            stats.send_calls,
            stats.syscalls,
            stats.gro_runs,
            stats.gro_segments,
            stats.recv_no_buffers
        );
    }
}

/// Destinations of the mixed-destination scenario.
const MIXED_DSTS: usize = 3;

/// Trains whose datagrams go to [`MIXED_DSTS`] destinations round robin,
/// with some dropped, through a forwarder that routes by the datagram's
/// flow byte: each destination must get exactly its datagrams, in order,
/// whatever the grouping; gathering must send them in far fewer sends than
/// datagrams.
fn mixed_destinations_scenario(backend: Backend, cfg: IoConfig) -> IoStats {
    let rxs: Vec<UdpSocket> = (0..MIXED_DSTS).map(|_| receiver()).collect();
    let dsts: Vec<SocketAddr> = rxs.iter().map(|r| r.local_addr().unwrap()).collect();
    // (segment, count, last, drop every, spread over destinations)
    let trains: [(usize, usize, usize, usize, bool); 4] = [
        (1400, 46, 1400, 10, true),
        (64, 64, 64, 7, true),
        (500, 20, 17, 0, true),
        (1200, 30, 1200, 4, false),
    ];
    let rounds = 6;
    let expected_in: usize = trains.iter().map(|t| t.1).sum::<usize>() * rounds;
    let handler = Dests::new(dsts.clone(), move |_: SocketAddr, d: &mut [u8]| {
        if d.first() == Some(&DROP) {
            return Action::Consume;
        }
        let Some(flow) = d
            .get(1)
            .map(|&f| usize::from(f))
            .filter(|&f| f < MIXED_DSTS)
        else {
            return Action::Consume;
        };
        d[0] = MARK;
        let last = d.len() - 1;
        d[last] ^= 0xFF;
        Action::Forward(Dest(flow as u32))
    });
    let (fwd_addr, fwd) = spawn_forwarder_with(backend, cfg, expected_in as u64, handler);
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let sender = Io::new(Backend::Mmsg, sock, IoConfig::default()).unwrap();
    let mut sending = TrainSender::new(true);
    let mut expect = vec![Vec::new(); MIXED_DSTS];
    let mut seqs = [0u32; MIXED_DSTS];
    let mut buf = vec![0u8; 70_000];
    for round in 0..rounds {
        for &(seg, count, last, drop_every, spread) in &trains {
            let mut off = 0;
            for k in 0..count {
                let len = if k + 1 == count { last } else { seg };
                let to = if spread {
                    (k + round) % MIXED_DSTS
                } else {
                    round % MIXED_DSTS
                };
                let drop = drop_every != 0 && k % drop_every == drop_every - 1;
                let seq = &mut seqs[to];
                fill(&mut buf[off..off + len], to as u8, *seq, drop);
                if !drop {
                    expect[to].push((*seq, len));
                }
                *seq += 1;
                off += len;
            }
            let n = sending.send(&sender, fwd_addr, &buf[..off], seg).unwrap();
            assert_eq!(n.sent, count, "the train was sent whole");
        }
    }
    for (k, rx) in rxs.iter().enumerate() {
        let mut only = vec![Vec::new(); MIXED_DSTS];
        only[k] = std::mem::take(&mut expect[k]);
        receive_and_check(rx, &only);
        expect[k] = std::mem::take(&mut only[k]);
        // Nothing more: no datagram for another destination came here.
        rx.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut b = [0u8; 2048];
        assert!(
            rx.recv_from(&mut b).is_err(),
            "{backend}: destination {k} got an extra datagram"
        );
    }
    let (used, stats) = fwd.join().unwrap();
    assert_eq!(used, backend);
    let forwarded: u64 = expect.iter().map(|f| f.len() as u64).sum();
    assert_eq!(stats.datagrams_in, expected_in as u64, "{backend}");
    assert_eq!(stats.datagrams_out, forwarded, "{backend}");
    assert_eq!(
        stats.send_errors.total(),
        0,
        "{backend}: {:?}",
        stats.send_errors
    );
    stats
}

#[test]
fn drops_and_mixed_destinations_arrive_complete_and_in_order_per_destination() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        for grouping in [Grouping::Gather, Grouping::Contiguous, Grouping::Compact] {
            let cfg = IoConfig {
                grouping,
                ..IoConfig::default()
            };
            let stats = mixed_destinations_scenario(backend, cfg);
            eprintln!(
                "{backend} {grouping}: {} datagrams out in {} sends",
                stats.datagrams_out, stats.send_calls
            );
            if grouping == Grouping::Gather {
                assert!(
                    stats.send_calls * 4 < stats.datagrams_out,
                    "{backend}: drops and interleaved destinations must not split sends: {} sends for {} datagrams",
                    stats.send_calls,
                    stats.datagrams_out
                );
            }
        }
        // With a ring of two buffers, sends gather from whichever buffers a
        // poll holds, and buffers come back only after them.
        let tight = IoConfig {
            buffers: 2,
            batch: 100,
            ..IoConfig::default()
        };
        mixed_destinations_scenario(backend, tight);
    }
}

#[test]
fn forwards_without_gro_gso_and_with_tiny_buffer_ring() {
    let cfg = IoConfig {
        gro: false,
        gso: false,
        buffers: 4,
        batch: 16,
        ..IoConfig::default()
    };
    for backend in NO_RUNS {
        if !backend_available(backend) {
            continue;
        }
        let stats = forward_scenario(backend, cfg, Duration::ZERO);
        assert_eq!(stats.gro_runs, 0, "{backend}: GRO was off");
        assert_eq!(
            stats.send_calls, stats.datagrams_out,
            "{backend}: GSO was off"
        );
    }
}

#[test]
fn slow_handler_with_two_buffers_loses_nothing() {
    // The sender outruns the forwarder: the provided-buffer ring runs dry
    // (ENOBUFS ends the multishot receive), data waits in the socket, and the
    // receive is re-armed once buffers come back.
    let cfg = IoConfig {
        buffers: 2,
        batch: 8,
        ..IoConfig::default()
    };
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let stats = forward_scenario(backend, cfg, Duration::from_micros(20));
        eprintln!("{backend}: out of buffers {} times", stats.recv_no_buffers);
    }
}

#[test]
fn consume_sends_nothing() {
    for backend in NO_RUNS {
        if !backend_available(backend) {
            continue;
        }
        let rx = receiver();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut io = make_io(backend, sock, IoConfig::default()).unwrap();
        let tx = UdpSocket::bind(localhost()).unwrap();
        for i in 0..10u8 {
            tx.send_to(&[i; 100], addr).unwrap();
        }
        let mut seen = 0;
        for _ in 0..100 {
            if seen == 10 {
                break;
            }
            seen += io
                .poll(Duration::from_millis(50), &mut |_, _: &mut [u8]| {
                    Action::Consume
                })
                .unwrap()
                .received;
        }
        assert_eq!(seen, 10, "{backend}");
        assert_eq!(io.stats().datagrams_out, 0);
        assert_eq!(io.stats().send_calls, 0);
        let mut b = [0u8; 16];
        assert!(
            rx.recv_from(&mut b).is_err(),
            "{backend}: a consumed datagram was sent"
        );
    }
}

/// A destination key means what that poll's handler resolves it to, and
/// nothing more: the same key in the next poll, resolved by another handler
/// to another address, goes there; nothing gathered in one poll is sent
/// again, or joined by a datagram, in the next.
#[test]
fn a_destination_key_is_resolved_within_its_own_poll_only() {
    for backend in NO_RUNS {
        if !backend_available(backend) {
            continue;
        }
        let (rx_a, rx_b) = (receiver(), receiver());
        let (a, b) = (rx_a.local_addr().unwrap(), rx_b.local_addr().unwrap());
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut io = make_io(backend, sock, IoConfig::default()).unwrap();
        let tx = UdpSocket::bind(localhost()).unwrap();
        // Round r: three datagrams filled with r, all forwarded to key 7,
        // which resolves to `a`, then `b`, then `a` again.
        for (round, to) in [a, b, a].into_iter().enumerate() {
            for _ in 0..3 {
                tx.send_to(&[round as u8; 100], addr).unwrap();
            }
            let mut handler = Dests::new([to; 8], |_, _: &mut [u8]| Action::Forward(Dest(7)));
            let mut seen = 0;
            for _ in 0..100 {
                if seen == 3 {
                    break;
                }
                seen += io
                    .poll(Duration::from_millis(50), &mut handler)
                    .unwrap()
                    .received;
            }
            assert_eq!(seen, 3, "{backend}: round {round}");
        }
        io.flush().unwrap();
        assert_eq!(io.stats().unresolved, 0, "{backend}");
        let want: [(&UdpSocket, &[u8]); 2] = [(&rx_a, &[0, 0, 0, 2, 2, 2]), (&rx_b, &[1, 1, 1])];
        for (rx, want) in want {
            let mut got = Vec::new();
            let mut buf = [0u8; 128];
            for _ in want {
                let (n, _) = rx.recv_from(&mut buf).expect("a forwarded datagram");
                assert_eq!(n, 100, "{backend}");
                got.push(buf[0]);
            }
            got.sort_unstable();
            assert_eq!(got, want, "{backend}");
            rx.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            assert!(
                rx.recv_from(&mut buf).is_err(),
                "{backend}: a datagram sent twice, or to the wrong poll's address"
            );
        }
    }
}

#[test]
fn a_second_socket_is_received_from_and_forwards_leave_from_the_first() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let main = sock.local_addr().unwrap();
        let link = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let link_addr = link.local_addr().unwrap();
        let mut io = match Io::new_with_link(backend, sock, Some(link), IoConfig::default()) {
            Ok(io) => io,
            Err(e) => panic!("{backend}: {e}"),
        };
        assert_eq!(io.link_addr(), Some(link_addr));
        let rx = receiver();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = rx.local_addr().unwrap();
        let tx = UdpSocket::bind(localhost()).unwrap();
        // Datagrams to both ports, interleaved, each forwarded to `rx`.
        for i in 0..20u8 {
            let to = if i % 2 == 0 { main } else { link_addr };
            tx.send_to(&[i; 100], to).unwrap();
        }
        let mut seen = 0;
        for _ in 0..200 {
            if seen == 20 {
                break;
            }
            seen += io
                .poll(
                    Duration::from_millis(20),
                    &mut Dests::new([dst], |_, _: &mut [u8]| Action::Forward(Dest(0))),
                )
                .unwrap()
                .received;
        }
        assert_eq!(seen, 20, "{backend}: not every datagram was received");
        let mut got = Vec::new();
        let mut b = [0u8; 128];
        while got.len() < 20 {
            let (n, from) = rx.recv_from(&mut b).expect("a forwarded datagram");
            assert_eq!(n, 100);
            assert_eq!(
                from, main,
                "{backend}: forwards leave from the first socket"
            );
            got.push(b[0]);
        }
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<u8>>(), "{backend}");
        // A datagram sent from the second socket carries its port.
        assert!(io.send_from_link(dst, b"hello"));
        let (n, from) = rx.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&b"hello"[..], link_addr), "{backend}");
        drop(io);
    }
}

#[test]
fn send_to_queues_and_groups_equal_sizes() {
    for backend in NO_RUNS {
        if !backend_available(backend) {
            continue;
        }
        let rx = receiver();
        let dst = rx.local_addr().unwrap();
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let mut io = make_io(backend, sock, IoConfig::default()).unwrap();
        for i in 0..20u8 {
            io.send_to(dst, &[i; 300]).unwrap();
        }
        io.send_to(dst, b"tail").unwrap();
        // Nothing is sent before the flush.
        rx.set_nonblocking(true).unwrap();
        let mut b = [0u8; 512];
        assert!(
            rx.recv_from(&mut b).is_err(),
            "{backend}: sent before flush"
        );
        rx.set_nonblocking(false).unwrap();
        io.flush().unwrap();
        for i in 0..20u8 {
            let (n, from) = rx.recv_from(&mut b).unwrap();
            assert_eq!(from, io.local_addr().unwrap());
            assert_eq!(&b[..n], &[i; 300][..], "{backend}");
        }
        let (n, _) = rx.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"tail");
        let s = io.stats();
        assert_eq!(s.datagrams_out, 21);
        assert!(
            s.send_calls <= 2,
            "{backend}: 20 equal datagrams and a tail in {} sends",
            s.send_calls
        );
        assert!(
            io.send_to(dst, &vec![0u8; 70_000]).is_err(),
            "oversize must be refused"
        );
    }
}

#[test]
fn poll_returns_after_timeout_when_idle() {
    for backend in NO_RUNS {
        if !backend_available(backend) {
            continue;
        }
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let mut io = make_io(backend, sock, IoConfig::default()).unwrap();
        let start = Instant::now();
        let ps = io
            .poll(Duration::from_millis(30), &mut |_, _: &mut [u8]| {
                Action::Consume
            })
            .unwrap();
        let took = start.elapsed();
        assert_eq!(ps.received, 0);
        assert!(
            took >= Duration::from_millis(25),
            "{backend}: returned after {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{backend}: hung for {took:?}"
        );
        let ps = io
            .poll(Duration::ZERO, &mut |_, _: &mut [u8]| Action::Consume)
            .unwrap();
        assert_eq!(ps.received, 0);
        assert_eq!(io.stats().empty_polls, 2);
    }
}

/// `recv_from` on a blocking socket, again when interrupted: a thread
/// that set up and dropped an io_uring ring (`backend_available` does) may
/// see its next blocking receive end with `EINTR` while the kernel tears
/// the ring down.
fn recv_retrying(rx: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match rx.recv_from(buf) {
            Ok((n, _)) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Ping-pong through a forwarder built with `busy_poll`: one datagram at a
/// time, the next sent `gap` after the last came back, so the forwarder's
/// polls wait between datagrams. (Without a gap the next datagram is
/// often there before the forwarder's next poll: its send syscall
/// delivers on loopback and wakes this thread, which answers within it.)
/// Returns the forwarder's counters; every datagram must come back
/// byte-exact and in order.
fn ping_pong(backend: Backend, busy_poll: Option<Duration>, count: u32, gap: Duration) -> IoStats {
    let cfg = IoConfig {
        busy_poll,
        ..IoConfig::default()
    };
    let rx = receiver();
    let (fwd, handle) = spawn_forwarder(
        backend,
        cfg,
        rx.local_addr().unwrap(),
        u64::from(count),
        Duration::ZERO,
    );
    let tx = UdpSocket::bind(localhost()).unwrap();
    let mut sent = vec![0u8; 200];
    let mut got = [0u8; 512];
    for seq in 0..count {
        fill(&mut sent, 1, seq, false);
        // Pacing, not synchronisation: the forwarder is polling again
        // (spinning, with busy polling) when the datagram arrives.
        let t = Instant::now();
        while t.elapsed() < gap {
            std::hint::spin_loop();
        }
        tx.send_to(&sent, fwd).unwrap();
        let n = recv_retrying(&rx, &mut got)
            .unwrap_or_else(|e| panic!("{backend}: datagram {seq} did not come back: {e}"));
        let mut want = sent.clone();
        want[0] = MARK;
        want[199] ^= 0xFF;
        assert_eq!(n, 200, "{backend}: datagram {seq}");
        assert!(
            got[..n] == want[..],
            "{backend}: datagram {seq} came back altered or out of order"
        );
    }
    let (_, stats) = handle.join().unwrap();
    assert_eq!(stats.datagrams_in, u64::from(count));
    stats
}

#[test]
fn busy_polling_delivers_and_takes_datagrams_while_spinning() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        // A budget far above the gap: the next datagram arrives while
        // the forwarder spins, unless one of the two threads is
        // descheduled meanwhile (on a machine whose cores are busy, many
        // polls). A spin that cannot see datagrams serves none at all.
        let s = ping_pong(
            backend,
            Some(Duration::from_millis(5)),
            200,
            Duration::from_micros(200),
        );
        eprintln!(
            "{backend}: busy poll served {}, missed {}, spun {} us, {} syscalls",
            s.busy_poll_served,
            s.busy_poll_missed,
            s.busy_poll_time_ns / 1000,
            s.syscalls
        );
        assert!(
            s.busy_poll_served > 0,
            "{backend}: none of 200 datagrams was taken while spinning: {s:?}"
        );
        assert!(s.busy_poll_time_ns > 0, "{backend}: no spin time: {s:?}");
    }
}

#[test]
fn without_busy_polling_nothing_spins() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let s = ping_pong(backend, None, 50, Duration::from_micros(200));
        assert_eq!(
            (s.busy_poll_served, s.busy_poll_missed, s.busy_poll_time_ns),
            (0, 0, 0),
            "{backend}: spun with busy polling off"
        );
    }
}

/// CPU time of the calling thread, to the nanosecond.
fn thread_cpu_ns() -> Duration {
    relay::worker::thread_cpu_time().expect("CLOCK_THREAD_CPUTIME_ID is readable on Linux")
}

#[test]
fn busy_polling_sleeps_once_the_budget_is_spent() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let cfg = IoConfig {
            busy_poll: Some(Duration::from_millis(2)),
            ..IoConfig::default()
        };
        let sock = bind_socket(localhost(), &cfg).unwrap();
        let mut io = make_io(backend, sock, cfg).unwrap();
        let (start, cpu) = (Instant::now(), thread_cpu_ns());
        let ps = io
            .poll(Duration::from_millis(200), &mut |_, _: &mut [u8]| {
                Action::Consume
            })
            .unwrap();
        let (took, cpu) = (start.elapsed(), thread_cpu_ns() - cpu);
        assert_eq!(ps.received, 0);
        assert!(
            took >= Duration::from_millis(190),
            "{backend}: an idle poll returned after {took:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{backend}: hung for {took:?}"
        );
        // Spinning the whole 200 ms would cost about that much CPU.
        assert!(
            cpu < Duration::from_millis(100),
            "{backend}: the poll used {cpu:?} of CPU in {took:?}: it spun instead of sleeping"
        );
        assert_eq!(ps.busy_poll, relay::io::BusyPoll::Missed, "{backend}");
        assert!(
            ps.spin_time >= Duration::from_millis(2) && ps.spin_time < Duration::from_millis(100),
            "{backend}: spun {:?}",
            ps.spin_time
        );
        let s = io.stats();
        assert_eq!(
            (s.busy_poll_served, s.busy_poll_missed),
            (0, 1),
            "{backend}"
        );
        // A poll that may not wait does not spin either.
        let ps = io
            .poll(Duration::ZERO, &mut |_, _: &mut [u8]| Action::Consume)
            .unwrap();
        assert_eq!(ps.busy_poll, relay::io::BusyPoll::NoSpin, "{backend}");
        assert_eq!(io.stats().busy_poll_missed, 1, "{backend}");
    }
}

/// A wait shorter than a millisecond ends when it should, not at the next
/// whole millisecond: a paced load generator waits for its next train's
/// time this way, and a millisecond too long bunches its trains. The
/// shortest of several waits is compared (a busy machine may delay any
/// one of them).
#[test]
fn short_waits_are_not_rounded_up_to_a_millisecond() {
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let mut io = make_io(backend, sock, IoConfig::default()).unwrap();
        let wait = Duration::from_micros(200);
        let shortest = (0..20)
            .map(|_| {
                let start = Instant::now();
                let ps = io
                    .poll(wait, &mut |_, _: &mut [u8]| Action::Consume)
                    .unwrap();
                assert_eq!(ps.received, 0);
                start.elapsed()
            })
            .min()
            .unwrap();
        assert!(shortest >= wait, "{backend}: returned after {shortest:?}");
        assert!(
            shortest < Duration::from_micros(900),
            "{backend}: a {wait:?} wait took at least {shortest:?}"
        );
    }
}

/// Without the `glommio` feature the backend is named but not built: a
/// typed error says how to get it, and `start` falls back.
#[cfg(not(feature = "glommio"))]
#[test]
fn glommio_without_the_feature_says_how_to_build_it() {
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let err = Io::new(Backend::Glommio, sock, IoConfig::default()).unwrap_err();
    assert!(err.to_string().contains("--features glommio"), "{err}");
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let io = Io::start(Backend::Glommio, sock, IoConfig::default()).unwrap();
    assert_ne!(io.backend(), Backend::Glommio);
}

#[test]
fn start_prefers_uring() {
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let io = Io::start(Backend::Uring, sock, IoConfig::default()).unwrap();
    if std::env::var("ZTNA_SKIP_URING").as_deref() != Ok("1") {
        assert_eq!(
            io.backend(),
            Backend::Uring,
            "io_uring should start on this host"
        );
    }
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let io = Io::start(Backend::Mmsg, sock, IoConfig::default()).unwrap();
    assert_eq!(io.backend(), Backend::Mmsg);
}

/// CPU time this thread has used (user + system), from
/// `/proc/thread-self/stat` (clock ticks, assumed 100 Hz).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| -> u64 {
        rest.split_whitespace()
            .nth(i)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// The forwarder's configuration for `forward_rate_1400`: the default, with
/// `ZTNA_BENCH_BATCH` / `ZTNA_BENCH_BUFFERS` overriding batch and buffers.
fn bench_config() -> IoConfig {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    let d = IoConfig::default();
    IoConfig {
        batch: var("ZTNA_BENCH_BATCH").unwrap_or(d.batch),
        buffers: var("ZTNA_BENCH_BUFFERS").unwrap_or(d.buffers),
        ..d
    }
}

/// Rough forwarding rate of one `Io` on 1400-byte GSO trains, ~3 s per
/// backend. `cargo test -p relay --release --test io_loopback -- --ignored --nocapture`
#[test]
#[ignore = "throughput measurement, not a check"]
fn forward_rate_1400() {
    const RUN: Duration = Duration::from_secs(3);
    /// Pins the calling thread to core `k` (modulo the cores there are).
    fn pin(k: usize) {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(c) = cores.get(k % cores.len().max(1)) {
            core_affinity::set_for_current(*c);
        }
    }
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        let rx_sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let rx_addr = rx_sock.local_addr().unwrap();
        let fwd_sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
        let fwd_addr = fwd_sock.local_addr().unwrap();
        let receiver = thread::spawn(move || {
            pin(0);
            let mut io = Io::new(Backend::Mmsg, rx_sock, IoConfig::default()).unwrap();
            let start = Instant::now();
            while start.elapsed() < RUN + Duration::from_millis(500) {
                io.poll(Duration::from_millis(20), &mut |_, _: &mut [u8]| {
                    Action::Consume
                })
                .unwrap();
            }
            io.stats().datagrams_in
        });
        let forwarder = thread::Builder::new()
            .name("fwd".into())
            .spawn(move || {
                pin(1);
                let mut io = Io::new(backend, fwd_sock, bench_config()).unwrap();
                let mut handler = Dests::new([rx_addr], |_: SocketAddr, d: &mut [u8]| {
                    d[0] ^= 1;
                    Action::Forward(Dest(0))
                });
                // Warm up until traffic flows, then measure.
                while io.stats().datagrams_in == 0 {
                    io.poll(Duration::from_millis(100), &mut handler).unwrap();
                }
                let before = *io.stats();
                let cpu0 = thread_cpu();
                let start = Instant::now();
                while start.elapsed() < RUN {
                    io.poll(Duration::from_millis(20), &mut handler).unwrap();
                }
                let secs = start.elapsed().as_secs_f64();
                let cpu = (thread_cpu() - cpu0).as_secs_f64();
                let after = *io.stats();
                (before, after, secs, cpu)
            })
            .unwrap();
        let sender = thread::spawn(move || {
            pin(0);
            let s = bind_socket(localhost(), &IoConfig::default()).unwrap();
            let mut trains = TrainSender::new(true);
            let train = vec![0x5Au8; 1400 * 46];
            let start = Instant::now();
            let mut sent = 0;
            while start.elapsed() < RUN + Duration::from_millis(300) {
                sent += trains.send(&s, fwd_addr, &train, 1400).unwrap().sent;
            }
            sent
        });
        let sent = sender.join().unwrap();
        let (before, after, secs, cpu) = forwarder.join().unwrap();
        let got = receiver.join().unwrap();
        let fin = after.datagrams_in - before.datagrams_in;
        let fout = after.datagrams_out - before.datagrams_out;
        let polls = after.batch_hist.iter().sum::<u64>() - before.batch_hist.iter().sum::<u64>();
        eprintln!(
            "{backend} {:?}: forwarder {:.2} Mpps in, {:.2} Mpps out ({:.1} Gb/s) over {secs:.1} s, on {:.0} % of a core = {:.2} Mpps per CPU-second; {} sends, {} syscalls, {} polls, no-buffer {}, send errors {:?}; sender {sent}, receiver {got}",
            (bench_config().batch, bench_config().buffers),
            fin as f64 / secs / 1e6,
            fout as f64 / secs / 1e6,
            fout as f64 * 1400.0 * 8.0 / secs / 1e9,
            cpu / secs * 100.0,
            fout as f64 / cpu.max(1e-9) / 1e6,
            after.send_calls - before.send_calls,
            after.syscalls - before.syscalls,
            polls,
            after.recv_no_buffers - before.recv_no_buffers,
            after.send_errors,
        );
    }
}

/// Forwarder CPU per forwarded frame for each send grouping, on the shapes
/// of issue 12: 1400-byte GSO trains of 46 frames with every tenth frame
/// dropped (deny-mix 10 %), and trains spread round robin over 1, 8 and 64
/// destinations (fan-out). The groupings take turns in 1 s slices (A B C,
/// C B A, ...), the forwarder pinned to one core, sender and receivers to
/// the other, so the VM's drift falls on all alike; CPU time is the
/// forwarder thread's own. The handler does nothing but route, so this is
/// the I/O path's cost alone.
/// `cargo test -p relay --release --test io_loopback grouping_cost -- --ignored --nocapture`
#[test]
#[ignore = "measurement, not a check"]
fn grouping_cost_per_frame() {
    const SLICE: Duration = Duration::from_secs(1);
    const ROUNDS: usize = 4;
    fn pin(k: usize) {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(c) = cores.get(k % cores.len().max(1)) {
            core_affinity::set_for_current(*c);
        }
    }
    // (label, destinations, drop every)
    let shapes: [(&str, usize, usize); 4] = [
        ("deny-mix-10", 1, 10),
        ("fan-out-1", 1, 0),
        ("fan-out-8", 8, 0),
        ("fan-out-64", 64, 0),
    ];
    let groupings = [Grouping::Gather, Grouping::Contiguous, Grouping::Compact];
    for backend in BACKENDS {
        if !backend_available(backend) {
            continue;
        }
        for (label, dsts, drop_every) in shapes {
            // ns/frame and frames/send per grouping, per round.
            let mut ns: Vec<Vec<f64>> = vec![Vec::new(); groupings.len()];
            let mut per_send: Vec<Vec<f64>> = vec![Vec::new(); groupings.len()];
            for round in 0..ROUNDS {
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..groupings.len()).collect()
                } else {
                    (0..groupings.len()).rev().collect()
                };
                for g in order {
                    let (cpu_ns, frames, sends) =
                        grouping_slice(backend, groupings[g], dsts, drop_every, SLICE, pin);
                    ns[g].push(cpu_ns / frames.max(1) as f64);
                    per_send[g].push(frames as f64 / sends.max(1) as f64);
                }
            }
            for (g, grouping) in groupings.iter().enumerate() {
                let mut v = ns[g].clone();
                v.sort_by(f64::total_cmp);
                eprintln!(
                    "{backend} {label:<11} {grouping:<10}: {:>6.0} ns/frame (median of {ROUNDS}; {:.0}..{:.0}), {:.1} frames/send",
                    v[v.len() / 2],
                    v[0],
                    v[v.len() - 1],
                    per_send[g].iter().sum::<f64>() / per_send[g].len() as f64
                );
            }
        }
    }
}

/// One slice of [`grouping_cost_per_frame`]: returns the forwarder's CPU
/// ns, frames forwarded and sends made while measuring.
fn grouping_slice(
    backend: Backend,
    grouping: Grouping,
    dsts: usize,
    drop_every: usize,
    slice: Duration,
    pin: fn(usize),
) -> (f64, u64, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let rxs: Vec<UdpSocket> = (0..dsts)
        .map(|_| bind_socket(localhost(), &IoConfig::default()).unwrap())
        .collect();
    let dst_addrs: Vec<SocketAddr> = rxs.iter().map(|r| r.local_addr().unwrap()).collect();
    let fwd_sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    let fwd_addr = fwd_sock.local_addr().unwrap();
    let drainer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            pin(0);
            let mut b = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0;
                for r in &rxs {
                    while r.recv_from(&mut b).is_ok() {
                        got += 1;
                    }
                }
                if got == 0 {
                    thread::yield_now();
                }
            }
        })
    };
    let sender = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            pin(0);
            let s = bind_socket(localhost(), &IoConfig::default()).unwrap();
            let mut trains = TrainSender::new(true);
            let mut train = vec![0u8; 1400 * 46];
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for d in train.chunks_mut(1400) {
                    let drop = drop_every != 0 && k % drop_every == drop_every - 1;
                    d[0] = if drop { DROP } else { 0 };
                    d[1] = (k % dsts) as u8;
                    k += 1;
                }
                let _ = trains.try_send(&s, fwd_addr, &train, 1400);
            }
        })
    };
    let forwarder = thread::spawn(move || {
        pin(1);
        let cfg = IoConfig {
            grouping,
            ..IoConfig::default()
        };
        let mut io = Io::new(backend, fwd_sock, cfg).unwrap();
        let n = dst_addrs.len();
        let mut handler = Dests::new(dst_addrs, move |_: SocketAddr, d: &mut [u8]| {
            if d[0] == DROP {
                return Action::Consume;
            }
            Action::Forward(Dest((usize::from(d[1]) % n) as u32))
        });
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            io.poll(Duration::from_millis(20), &mut handler).unwrap();
        }
        let before = *io.stats();
        let cpu0 = relay::worker::thread_cpu_time().unwrap_or_default();
        let start = Instant::now();
        while start.elapsed() < slice {
            io.poll(Duration::from_millis(20), &mut handler).unwrap();
        }
        let cpu = relay::worker::thread_cpu_time().unwrap_or_default() - cpu0;
        let after = *io.stats();
        (
            cpu.as_nanos() as f64,
            after.datagrams_out - before.datagrams_out,
            after.send_calls - before.send_calls,
        )
    });
    let out = forwarder.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drainer.join().unwrap();
    out
}
