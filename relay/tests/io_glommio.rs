//! The glommio backend on real loopback sockets, with datagrams laid out
//! as frames (a hop header whose length field is right), since that is how
//! it splits GRO runs it cannot see the segment size of: GSO trains and
//! singles, some dropped, to several destinations, must arrive complete,
//! byte-exact and in order; a run whose frames do not declare their share
//! is handed over whole, never split at a guessed place; the `UDP_SEGMENT`
//! socket option it sends with never splits a later single datagram.
//!
//! Built only with the relay's `glommio` feature (`required-features`).
//! Nothing sleeps to synchronise: waits are poll timeouts and socket read
//! timeouts, loops are bounded.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use proto::wire::{Kind, HEADER_LEN};
use relay::io::train::TrainSender;
use relay::io::{bind_socket, Action, Backend, Dest, Dests, Grouping, Io, IoConfig, IoStats};

/// Byte 1 (the ttl) of a frame the forwarder must drop.
const DROP: u8 = 0x01;
/// Byte 1 the forwarder writes into what it forwards.
const MARK: u8 = 0xAA;
/// Test header after the hop header's first four bytes: flow (1), seq (4).
const HDR: usize = 9;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn pattern(flow: u8, seq: u32, i: usize) -> u8 {
    (u32::from(flow) * 31 + seq * 7 + i as u32) as u8
}

/// Writes frame `seq` of `flow` into `d`: a data frame's first bytes with
/// the right length field, then flow, seq and a pattern.
fn fill(d: &mut [u8], flow: u8, seq: u32, drop: bool) {
    assert!(d.len() >= HEADER_LEN);
    d[0] = Kind::DataUp.byte0();
    d[1] = if drop { DROP } else { 0 };
    let body = (d.len() - HEADER_LEN) as u16;
    d[2..4].copy_from_slice(&body.to_be_bytes());
    d[4] = flow;
    d[5..9].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d.iter_mut().enumerate().skip(HDR) {
        *b = pattern(flow, seq, i);
    }
}

/// A plain receiving socket with a read timeout.
fn receiver() -> UdpSocket {
    let cfg = IoConfig {
        gro: false,
        ..IoConfig::default()
    };
    let rx = bind_socket(localhost(), &cfg).unwrap();
    rx.set_nonblocking(false).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rx
}

fn glommio_io(cfg: IoConfig) -> (Io, SocketAddr) {
    let sock = bind_socket(localhost(), &cfg).unwrap();
    let addr = sock.local_addr().unwrap();
    let io = Io::new(Backend::Glommio, sock, cfg)
        .unwrap_or_else(|e| panic!("the glommio backend cannot start here: {e}"));
    assert_eq!(io.backend(), Backend::Glommio);
    (io, addr)
}

/// Runs a glommio forwarder thread until it has received `expected`
/// datagrams or stayed idle for ~5 s; drops frames marked [`DROP`], marks
/// the others and flips their last byte, and forwards each to
/// `route[flow]`.
fn spawn_forwarder(
    cfg: IoConfig,
    route: Vec<SocketAddr>,
    expected: u64,
) -> (SocketAddr, thread::JoinHandle<IoStats>) {
    let sock = bind_socket(localhost(), &cfg).unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut io = Io::new(Backend::Glommio, sock, cfg)
            .unwrap_or_else(|e| panic!("the glommio backend cannot start here: {e}"));
        let n = route.len();
        let mut handler = Dests::new(route, |_: SocketAddr, d: &mut [u8]| {
            if d.get(1) == Some(&DROP) {
                return Action::Consume;
            }
            let Some(flow) = d.get(4).map(|&f| usize::from(f)).filter(|&f| f < n) else {
                return Action::Consume;
            };
            d[1] = MARK;
            let last = d.len() - 1;
            d[last] ^= 0xFF;
            Action::Forward(Dest(flow as u32))
        });
        let mut idle = 0;
        while io.stats().datagrams_in < expected && idle < 100 {
            let ps = io.poll(Duration::from_millis(50), &mut handler).unwrap();
            idle = if ps.received == 0 { idle + 1 } else { 0 };
        }
        io.flush().unwrap();
        *io.stats()
    });
    (addr, handle)
}

/// Receives until `expect` (seq, len) is met in order on `rx`, checking
/// every byte; then that nothing more comes.
fn receive_and_check(rx: &UdpSocket, flow: u8, expect: &[(u32, usize)]) {
    let mut buf = vec![0u8; 65_536];
    for (got, &(want_seq, want_len)) in expect.iter().enumerate() {
        let (len, _) = rx.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "flow {flow}: got {got} of {} datagrams, then: {e}",
                expect.len()
            )
        });
        let d = &buf[..len];
        assert!(len > HDR, "runt of {len} bytes");
        assert_eq!(d[1], MARK, "forwarder's in-place mark missing");
        assert_eq!(d[4], flow, "a datagram of another flow came here");
        let seq = u32::from_be_bytes(d[5..9].try_into().unwrap());
        assert_eq!(
            (seq, len),
            (want_seq, want_len),
            "flow {flow}: out of order, split or merged"
        );
        for (i, &b) in d.iter().enumerate().take(len - 1).skip(HDR) {
            assert_eq!(b, pattern(flow, seq, i), "flow {flow} seq {seq} byte {i}");
        }
        assert_eq!(d[len - 1], pattern(flow, seq, len - 1) ^ 0xFF);
    }
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(
        rx.recv_from(&mut buf).is_err(),
        "flow {flow}: an extra datagram"
    );
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// Trains (sent with GSO, so they arrive as GRO runs) and singles to
/// `dsts` destinations, some dropped: (segment, count, last, drop every,
/// spread over destinations).
const TRAINS: [(usize, usize, usize, usize, bool); 6] = [
    (1400, 40, 1400, 0, false),
    (1400, 46, 900, 10, false),
    (64, 64, 64, 7, true),
    (500, 20, 40, 0, true),
    (1200, 30, 1200, 4, false),
    (100, 1, 100, 0, false),
];

fn scenario(cfg: IoConfig, dsts: usize, rounds: usize) -> IoStats {
    let rxs: Vec<UdpSocket> = (0..dsts).map(|_| receiver()).collect();
    let route: Vec<SocketAddr> = rxs.iter().map(|r| r.local_addr().unwrap()).collect();
    let expected_in: usize = TRAINS.iter().map(|t| t.1).sum::<usize>() * rounds;
    let (fwd, handle) = spawn_forwarder(cfg, route, expected_in as u64);
    let tx = UdpSocket::bind(localhost()).unwrap();
    let mut trains = TrainSender::new(true);
    let mut expect = vec![Vec::new(); dsts];
    let mut seqs = vec![0u32; dsts];
    let mut buf = vec![0u8; 70_000];
    for round in 0..rounds {
        for &(seg, count, last, drop_every, spread) in &TRAINS {
            let mut off = 0;
            for k in 0..count {
                let len = if k + 1 == count { last } else { seg };
                let to = if spread { k + round } else { round } % dsts;
                let drop = drop_every != 0 && k % drop_every == drop_every - 1;
                fill(&mut buf[off..off + len], to as u8, seqs[to], drop);
                if !drop {
                    expect[to].push((seqs[to], len));
                }
                seqs[to] += 1;
                off += len;
            }
            let n = trains.send(&tx, fwd, &buf[..off], seg).unwrap();
            assert_eq!(n.sent, count, "the train was sent whole");
        }
    }
    for (k, rx) in rxs.iter().enumerate() {
        receive_and_check(rx, k as u8, &expect[k]);
    }
    let stats = handle.join().unwrap();
    let forwarded: u64 = expect.iter().map(|e| e.len() as u64).sum();
    assert_eq!(stats.datagrams_in, expected_in as u64, "{stats:?}");
    assert_eq!(stats.datagrams_out, forwarded, "{stats:?}");
    assert_eq!(stats.send_errors.total(), 0, "{stats:?}");
    assert_eq!(stats.gro_unsplit, 0, "every run parses: {stats:?}");
    stats
}

#[test]
fn trains_singles_drops_and_destinations_arrive_complete_and_in_order() {
    // One destination: GRO runs come in whole and go out as GSO sends.
    let stats = scenario(IoConfig::default(), 1, 4);
    eprintln!(
        "glommio: in {} out {} sends {} gro runs {} ({} segments)",
        stats.datagrams_in,
        stats.datagrams_out,
        stats.send_calls,
        stats.gro_runs,
        stats.gro_segments
    );
    assert!(
        stats.gro_runs > 0 && stats.gro_segments >= 40,
        "GSO trains must arrive as GRO runs and be split: {stats:?}"
    );
    assert!(
        stats.send_calls * 4 < stats.datagrams_out,
        "runs must go out as UDP_SEGMENT sends: {} sends for {} datagrams",
        stats.send_calls,
        stats.datagrams_out
    );
    // Three destinations, every grouping; and two buffers with small
    // batches.
    for grouping in [Grouping::Gather, Grouping::Contiguous, Grouping::Compact] {
        scenario(
            IoConfig {
                grouping,
                ..IoConfig::default()
            },
            3,
            3,
        );
    }
    scenario(
        IoConfig {
            buffers: 2,
            batch: 50,
            ..IoConfig::default()
        },
        3,
        2,
    );
    // Without GRO and GSO: one datagram per read and per send.
    let stats = scenario(
        IoConfig {
            gro: false,
            gso: false,
            ..IoConfig::default()
        },
        2,
        2,
    );
    assert_eq!(stats.gro_runs, 0);
    assert_eq!(stats.send_calls, stats.datagrams_out);
}

/// Polls `io` until `n` datagrams were handed over, recording their
/// lengths; consumes them all.
fn take(io: &mut Io, n: usize) -> Vec<usize> {
    let mut lens = Vec::new();
    for _ in 0..100 {
        if lens.len() >= n {
            break;
        }
        io.poll(Duration::from_millis(50), &mut |_, d: &mut [u8]| {
            lens.push(d.len());
            Action::Consume
        })
        .unwrap();
    }
    lens
}

#[test]
fn a_run_that_does_not_parse_is_handed_over_whole() {
    let (mut io, addr) = glommio_io(IoConfig::default());
    let tx = UdpSocket::bind(localhost()).unwrap();
    let mut trains = TrainSender::new(true);
    let mut buf = vec![0u8; 2000];
    for k in 0..10 {
        fill(&mut buf[k * 100..(k + 1) * 100], 0, k as u32, false);
    }
    // Sanity: the good run splits into its ten frames.
    trains.send(&tx, addr, &buf[..1000], 100).unwrap();
    assert_eq!(take(&mut io, 10), vec![100; 10]);
    assert_eq!(io.stats().gro_unsplit, 0);
    assert!(io.stats().gro_runs >= 1, "{:?}", io.stats());
    // The fourth frame declares 50 bytes: no cut at 100 (nor at 50).
    buf[302..304].copy_from_slice(&18u16.to_be_bytes());
    trains.send(&tx, addr, &buf[..1000], 100).unwrap();
    assert_eq!(take(&mut io, 1), vec![1000], "handed over whole");
    assert_eq!(io.stats().gro_unsplit, 1);
    // A run of 100-byte pieces that are not frames at all: whole, and not
    // told from one datagram that is no frame (nor counted).
    let junk = [0x77u8; 800];
    trains.send(&tx, addr, &junk, 100).unwrap();
    assert_eq!(take(&mut io, 1), vec![800]);
    tx.send_to(&[0x55; 300], addr).unwrap();
    assert_eq!(take(&mut io, 1), vec![300]);
    assert_eq!(io.stats().gro_unsplit, 1);
}

#[test]
fn the_gso_option_never_splits_a_later_single_datagram() {
    let (mut io, addr) = glommio_io(IoConfig::default());
    let rx = receiver();
    let dst = rx.local_addr().unwrap();
    let tx = UdpSocket::bind(localhost()).unwrap();
    let mut trains = TrainSender::new(true);
    let mut buf = vec![0u8; 2000];
    for k in 0..8 {
        fill(&mut buf[k * 100..(k + 1) * 100], 0, k as u32, false);
    }
    fill(&mut buf[800..1300], 0, 8, false);
    let forward = |io: &mut Io, n: usize| {
        let mut seen = 0;
        for _ in 0..100 {
            if seen == n {
                break;
            }
            seen += io
                .poll(
                    Duration::from_millis(50),
                    &mut Dests::new([dst], |_, _: &mut [u8]| Action::Forward(Dest(0))),
                )
                .unwrap()
                .received;
        }
        assert_eq!(seen, n);
    };
    // A run of eight 100-byte frames, forwarded as one GSO send: the option
    // is now 100.
    trains.send(&tx, addr, &buf[..800], 100).unwrap();
    forward(&mut io, 8);
    // A send outside glommio (its own sendmmsg): a single of 300 bytes.
    io.send_to(dst, &[0x42; 300]).unwrap();
    io.flush().unwrap();
    // The run again (option 100), then a 500-byte single forwarded, in
    // the same poll if it arrives in time, else in the next.
    trains.send(&tx, addr, &buf[..800], 100).unwrap();
    tx.send_to(&buf[800..1300], addr).unwrap();
    forward(&mut io, 9);
    let mut b = [0u8; 2048];
    let mut lens = Vec::new();
    for _ in 0..18 {
        lens.push(rx.recv_from(&mut b).expect("a forwarded datagram").0);
    }
    let mut want = vec![100; 8];
    want.push(300);
    want.extend([100; 8]);
    want.push(500);
    assert_eq!(lens, want);
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    assert!(rx.recv_from(&mut b).is_err(), "a datagram was split");
    let s = io.stats();
    assert!(s.send_calls < 10, "each run went out as one send: {s:?}");
}

#[test]
fn poll_returns_after_timeout_when_idle() {
    let (mut io, _) = glommio_io(IoConfig::default());
    let start = Instant::now();
    let ps = io
        .poll(Duration::from_millis(30), &mut |_, _: &mut [u8]| {
            Action::Consume
        })
        .unwrap();
    let took = start.elapsed();
    assert_eq!(ps.received, 0);
    assert!(took >= Duration::from_millis(25), "returned after {took:?}");
    assert!(took < Duration::from_secs(5), "hung for {took:?}");
    let ps = io
        .poll(Duration::ZERO, &mut |_, _: &mut [u8]| Action::Consume)
        .unwrap();
    assert_eq!(ps.received, 0);
    assert_eq!(io.stats().empty_polls, 2);
}

#[test]
fn a_link_socket_is_refused_and_start_falls_back() {
    let cfg = IoConfig::default();
    let sock = bind_socket(localhost(), &cfg).unwrap();
    let link = bind_socket(localhost(), &cfg).unwrap();
    let err = Io::new_with_link(Backend::Glommio, sock, Some(link), cfg).unwrap_err();
    assert!(err.to_string().contains("link"), "{err}");
    let sock = bind_socket(localhost(), &cfg).unwrap();
    let link = bind_socket(localhost(), &cfg).unwrap();
    let io = Io::start_with_link(Backend::Glommio, sock, Some(link), cfg).unwrap();
    assert_ne!(io.backend(), Backend::Glommio);
    assert!(io.link_addr().is_some());
}
