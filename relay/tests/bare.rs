//! The bare hop on real loopback sockets, both backends: what is sent to
//! it arrives at its destination byte for byte and in order (single
//! datagrams and GSO trains, which it receives coalesced by GRO), and it
//! publishes a relay worker's statistics for what it did.
//!
//! Nothing sleeps to synchronise: receives have timeouts, the published
//! statistics are awaited with a deadline, and `stop` returns the final
//! ones.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay::bare::{Bare, BareOptions};
use relay::io::train::TrainSender;
use relay::io::{bind_socket, Backend, Io, IoConfig};

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The backends to test: both, unless io_uring cannot start here and the
/// environment opts out of it (`ZTNA_SKIP_URING=1`, said out loud).
fn backends() -> Vec<Backend> {
    let sock = bind_socket(localhost(), &IoConfig::default()).unwrap();
    match Io::new(Backend::Uring, sock, IoConfig::default()) {
        Ok(_) => vec![Backend::Uring, Backend::Mmsg],
        Err(e) if std::env::var("ZTNA_SKIP_URING").as_deref() == Ok("1") => {
            eprintln!("ZTNA_SKIP_URING=1: the uring case is NOT tested ({e})");
            vec![Backend::Mmsg]
        }
        Err(e) => panic!("io_uring cannot start here: {e} (ZTNA_SKIP_URING=1 skips)"),
    }
}

/// A blocking receiver with a read timeout, GRO off (one datagram per
/// receive).
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

/// `recv_from`, again when interrupted (a thread that set up and dropped
/// an io_uring ring may see `EINTR` while the kernel tears it down).
fn recv(rx: &UdpSocket, buf: &mut [u8]) -> usize {
    loop {
        match rx.recv_from(buf) {
            Ok((n, _)) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("a datagram did not arrive: {e}"),
        }
    }
}

/// Datagram `seq`: its number, then a pattern of it, `len` bytes in all.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|i| (seq as usize * 13 + i) as u8).collect();
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// Rounds of one single datagram (of a size that changes every round) and
/// one GSO train of `TRAIN` equal ones; each round waits for its
/// datagrams before the next is sent.
const ROUNDS: u32 = 60;
const TRAIN: usize = 16;
const SEG: usize = 700;

/// Sends the rounds through `bare` to `rx` and checks every datagram.
/// Returns (datagrams, bytes) sent.
fn send_and_check(bare: &Bare, rx: &UdpSocket) -> (u64, u64) {
    let tx = UdpSocket::bind(localhost()).unwrap();
    let mut trains = TrainSender::new(true);
    let mut got = vec![0u8; 2048];
    let (mut seq, mut bytes) = (0u32, 0u64);
    for round in 0..ROUNDS {
        let single = datagram(seq, 40 + round as usize * 20);
        tx.send_to(&single, bare.local_addr()).unwrap();
        let mut expect = vec![single];
        seq += 1;
        let mut train = Vec::with_capacity(TRAIN * SEG);
        for _ in 0..TRAIN {
            let d = datagram(seq, SEG);
            train.extend_from_slice(&d);
            expect.push(d);
            seq += 1;
        }
        assert_eq!(
            trains
                .send(&tx, bare.local_addr(), &train, SEG)
                .unwrap()
                .sent,
            TRAIN
        );
        for want in expect {
            let n = recv(rx, &mut got);
            assert!(
                got[..n] == want[..],
                "{}: round {round}: expected datagram {} ({} bytes), got {} bytes starting {:?}",
                bare.backend(),
                u32::from_be_bytes([want[0], want[1], want[2], want[3]]),
                want.len(),
                n,
                &got[..n.min(4)]
            );
            bytes += n as u64;
        }
    }
    (u64::from(seq), bytes)
}

fn start(backend: Backend, destination: SocketAddr, busy_poll: Option<Duration>) -> Bare {
    Bare::start(BareOptions {
        listen: localhost(),
        destination,
        core: None,
        io: backend,
        io_config: IoConfig {
            busy_poll,
            ..IoConfig::default()
        },
    })
    .unwrap()
}

#[test]
fn forwards_every_datagram_unchanged_and_in_order() {
    for backend in backends() {
        for busy_poll in [None, Some(Duration::from_micros(200))] {
            let rx = receiver();
            let bare = start(backend, rx.local_addr().unwrap(), busy_poll);
            assert_eq!(bare.backend(), backend);
            assert_eq!(bare.destination(), rx.local_addr().unwrap());
            let (datagrams, bytes) = send_and_check(&bare, &rx);
            // Nothing more than what was sent.
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            assert!(
                rx.recv_from(&mut [0u8; 64]).is_err(),
                "{backend}: an extra datagram arrived"
            );
            let s = bare.stop();
            let d = &s.datapath;
            assert_eq!(
                (d.frames, d.forwarded, d.bytes, d.forwarded_bytes),
                (datagrams, datagrams, bytes, bytes),
                "{backend} busy poll {busy_poll:?}: {s:?}"
            );
            assert_eq!(s.io.datagrams_in, datagrams, "{backend}");
            assert_eq!(s.io.datagrams_out, datagrams, "{backend}");
            assert!(s.cpu.is_some_and(|c| c > Duration::ZERO), "{backend}");
            // GSO trains arrive coalesced: polls of more than one.
            assert!(
                s.io.batch_hist[1..].iter().sum::<u64>() > 0,
                "{backend}: every poll took one datagram: {:?}",
                s.io.batch_hist
            );
            let spun = s.io.busy_poll_served + s.io.busy_poll_missed;
            assert_eq!(
                spun > 0,
                busy_poll.is_some(),
                "{backend} busy poll {busy_poll:?}: {:?}",
                s.io
            );
        }
    }
}

#[test]
fn statistics_are_published_while_it_runs() {
    for backend in backends() {
        let rx = receiver();
        let bare = start(backend, rx.local_addr().unwrap(), None);
        // Published once at the start: the CPU time a reader subtracts
        // from later snapshots.
        let first = bare.totals();
        assert_eq!(first.datapath.frames, 0);
        assert!(first.cpu.is_some(), "{backend}: {first:?}");
        let (datagrams, _) = send_and_check(&bare, &rx);
        // Published every 100 ms: wait for it, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while bare.totals().datapath.frames < datagrams {
            assert!(
                Instant::now() < deadline,
                "{backend}: published {:?}",
                bare.totals().datapath
            );
            std::thread::yield_now();
        }
        let t = bare.totals();
        assert_eq!(t.datapath.forwarded, datagrams, "{backend}");
        assert!(t.cpu.is_some(), "{backend}");
        drop(bare);
    }
}

#[test]
fn a_taken_port_is_an_error_not_a_panic() {
    let taken = UdpSocket::bind(localhost()).unwrap();
    let err = Bare::start(BareOptions {
        listen: taken.local_addr().unwrap(),
        destination: taken.local_addr().unwrap(),
        core: None,
        io: Backend::Mmsg,
        io_config: IoConfig::default(),
    })
    .unwrap_err();
    assert!(err.to_string().contains("cannot bind"), "{err}");
}
