//! The TUN device against the real kernel, each test in a network
//! namespace of its own (`ip netns add ztna-tun-test-<pid>-<tag>`, deleted
//! on drop, also when the test fails), so the interface, its routes and the
//! sockets talking to it never touch the host's network.
//!
//! Needs root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for the
//! device), `ip` (iproute2) and /dev/net/tun. Without them each test fails
//! and says why, unless ZTNA_SKIP_NETNS=1, when it prints that it skipped.
//!
//! Waiting is on readiness (mio, blocking reads with a deadline), never on
//! sleeps.

mod common;

use agent::tun::{PacketBatch, TunConfig, TunDevice, TunError};
use common::netns::Netns;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const LOCAL: Ipv4Addr = Ipv4Addr::new(100, 80, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(100, 80, 0, 2);
const MTU: u16 = 1400;
/// How long any one wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

const TUN: Token = Token(0);
const STREAM: Token = Token(1);

// ---------------------------------------------------------------------------
// The namespace.

/// The namespace, or `None` (after saying so) when it cannot be made and
/// ZTNA_SKIP_NETNS=1; otherwise a failure that says why.
fn skipping() -> bool {
    std::env::var("ZTNA_SKIP_NETNS").as_deref() == Ok("1")
}

fn netns(tag: &str) -> Option<Netns> {
    Netns::for_test(&format!("tun-dev-{tag}"))
}

fn config(offload: bool) -> TunConfig {
    TunConfig {
        name: "ztna0".into(),
        mtu: MTU,
        address: LOCAL,
        prefix_len: 16,
        offload,
    }
}

/// Opens the device (in the calling thread's namespace), or `None` when
/// the machine has no TUN support and ZTNA_SKIP_NETNS=1.
fn open(offload: bool) -> Option<TunDevice> {
    match TunDevice::open(&config(offload)) {
        Ok(dev) => {
            eprintln!(
                "opened {} (offload asked: {offload}, enabled: {})",
                dev.name(),
                dev.offload_enabled()
            );
            Some(dev)
        }
        Err(e @ (TunError::PermissionDenied | TunError::NoTunDevice)) if skipping() => {
            eprintln!("SKIPPED: {e} (ZTNA_SKIP_NETNS=1)");
            None
        }
        Err(e) => panic!("TunDevice::open: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Waiting on the device.

struct Reader {
    poll: Poll,
    events: Events,
    batch: PacketBatch,
}

impl Reader {
    fn new(dev: &TunDevice) -> Self {
        let poll = Poll::new().expect("mio poll");
        poll.registry()
            .register(&mut SourceFd(&dev.as_raw_fd()), TUN, Interest::READABLE)
            .expect("register the TUN fd");
        Self {
            poll,
            events: Events::with_capacity(8),
            batch: dev.batch(64),
        }
    }

    /// Reads batches until `pick` returns something for a packet.
    fn find<T>(&mut self, dev: &mut TunDevice, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.batch.clear();
            match dev.read_packets(&mut self.batch) {
                Ok(_) => {
                    for p in &self.batch {
                        assert!(p.len() <= usize::from(MTU), "packet over the MTU");
                        if let Some(found) = pick(p) {
                            return found;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.poll.poll(&mut self.events, Some(left)).expect("poll");
                    assert!(
                        !self.events.is_empty(),
                        "no matching packet from the device in {PATIENCE:?}"
                    );
                }
                Err(e) => panic!("read_packets: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Packets, built and checked with a checksum independent of the crate's.

fn ones_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for &b in chunks.iter().flat_map(|c| c.iter()) {
        match odd.take() {
            Some(hi) => {
                sum += u32::from(hi) << 8 | u32::from(b);
                sum = (sum & 0xffff) + (sum >> 16);
            }
            None => odd = Some(b),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = src.octets().to_vec();
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto, (len >> 8) as u8, len as u8]);
    p
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, body: &[u8]) -> Vec<u8> {
    let total = 20 + body.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = !ones_sum(&[&p]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Sets the checksum at `at` in the transport header `l4`.
fn seal_l4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &mut [u8], at: usize) {
    l4[at..at + 2].fill(0);
    let sum = !ones_sum(&[&pseudo(src, dst, proto, l4.len()), l4]);
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

fn udp(src: SocketAddr, dst: SocketAddr, data: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        unreachable!("IPv4 only")
    };
    let len = 8 + data.len();
    let mut l4 = Vec::with_capacity(len);
    l4.extend_from_slice(&s.port().to_be_bytes());
    l4.extend_from_slice(&d.port().to_be_bytes());
    l4.extend_from_slice(&(len as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(data);
    seal_l4(*s.ip(), *d.ip(), 17, &mut l4, 6);
    ipv4(*s.ip(), *d.ip(), 17, &l4)
}

/// A parsed IPv4 packet whose header checksum verified.
struct Ip4<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    body: &'a [u8],
}

fn parse_ipv4(p: &[u8]) -> Option<Ip4<'_>> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    assert_eq!(total, p.len(), "IPv4 total length");
    assert_eq!(ones_sum(&[&p[..ihl]]), 0xffff, "IPv4 header checksum");
    Some(Ip4 {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        proto: p[9],
        body: &p[ihl..],
    })
}

fn l4_checksum_ok(ip: &Ip4<'_>) -> bool {
    ones_sum(&[&pseudo(ip.src, ip.dst, ip.proto, ip.body.len()), ip.body]) == 0xffff
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------------------
// Tests.

/// A UDP datagram sent in the namespace to 100.80.0.2 comes out of the
/// device as an IPv4/UDP packet with valid checksums (with offload the
/// kernel leaves the UDP checksum to the reader).
fn udp_leaves_through_the_device(offload: bool) {
    let Some(ns) = netns(if offload { "udp-out-gso" } else { "udp-out" }) else {
        return;
    };
    ns.run(|| {
        let Some(mut dev) = open(offload) else { return };
        let mut reader = Reader::new(&dev);
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = sock.local_addr().expect("local addr").port();
        let small = b"hello through the tunnel".to_vec();
        let full: Vec<u8> = (0..usize::from(MTU) - 28).map(|i| i as u8).collect();
        for data in [&small, &full] {
            sock.send_to(data, (PEER, 9)).expect("send_to 100.80.0.2:9");
            let got = reader.find(&mut dev, |p| {
                let ip = parse_ipv4(p)?;
                (ip.proto == 17 && ip.dst == PEER && be16(ip.body, 2) == 9).then(|| {
                    assert_eq!(ip.src, LOCAL);
                    assert_eq!(be16(ip.body, 0), port);
                    assert!(l4_checksum_ok(&ip), "UDP checksum");
                    ip.body[8..].to_vec()
                })
            });
            assert_eq!(&got, data);
        }
        assert_eq!(dev.stats().dropped, 0);
    });
}

#[test]
fn udp_leaves_through_the_device_plain() {
    udp_leaves_through_the_device(false);
}

#[test]
fn udp_leaves_through_the_device_offload() {
    udp_leaves_through_the_device(true);
}

/// Packets written into the device reach the namespace: a UDP datagram
/// arrives on a socket, an ICMP echo request gets the kernel's reply.
fn written_packets_arrive(offload: bool) {
    let Some(ns) = netns(if offload { "write-gso" } else { "write" }) else {
        return;
    };
    ns.run(|| {
        let Some(mut dev) = open(offload) else { return };
        let sock = UdpSocket::bind((LOCAL, 5555)).expect("bind 100.80.0.1:5555");
        sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let from = SocketAddr::from((PEER, 7));
        dev.write_packet(&udp(from, sock.local_addr().unwrap(), b"pong"))
            .expect("write UDP");
        let mut buf = [0u8; 64];
        let (n, src) = sock.recv_from(&mut buf).expect("the written datagram");
        assert_eq!((&buf[..n], src), (&b"pong"[..], from));

        // ICMP echo request 100.80.0.2 -> 100.80.0.1, id 0x4242 seq 7.
        let mut echo = vec![8, 0, 0, 0, 0x42, 0x42, 0, 7];
        echo.extend_from_slice(b"ping payload");
        let sum = !ones_sum(&[&echo]);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut reader = Reader::new(&dev);
        dev.write_packet(&ipv4(PEER, LOCAL, 1, &echo))
            .expect("write ICMP");
        let reply = reader.find(&mut dev, |p| {
            let ip = parse_ipv4(p)?;
            (ip.proto == 1 && ip.body.first() == Some(&0)).then(|| {
                assert_eq!((ip.src, ip.dst), (LOCAL, PEER));
                assert_eq!(ones_sum(&[ip.body]), 0xffff, "ICMP checksum");
                ip.body.to_vec()
            })
        });
        assert_eq!(&reply[4..8], &[0x42, 0x42, 0, 7]);
        assert_eq!(&reply[8..], b"ping payload");
        assert_eq!(dev.stats().writes, 2);
    });
}

#[test]
fn written_packets_arrive_plain() {
    written_packets_arrive(false);
}

#[test]
fn written_packets_arrive_offload() {
    written_packets_arrive(true);
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

/// A TCP segment PEER:80 -> LOCAL:`port`.
fn tcp_from_peer(port: u16, seq: u32, ack: u32, flags: u8, options: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let mut l4 = Vec::with_capacity(hlen);
    l4.extend_from_slice(&80u16.to_be_bytes());
    l4.extend_from_slice(&port.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&ack.to_be_bytes());
    l4.extend_from_slice(&[((hlen / 4) << 4) as u8, flags, 0xff, 0xff, 0, 0, 0, 0]);
    l4.extend_from_slice(options);
    seal_l4(PEER, LOCAL, 6, &mut l4, 16);
    ipv4(PEER, LOCAL, 6, &l4)
}

/// What a TCP transfer through the device saw.
struct Transfer {
    bytes: usize,
    packets: u64,
    reads: u64,
    super_packets: u64,
    elapsed: Duration,
}

/// Connects from the namespace to 100.80.0.2:80, answers the handshake
/// from the device's side, receives `bytes` bytes there (ACKing each
/// batch) and checks every segment: at most the MTU, checksums valid,
/// contiguous sequence numbers, the bytes that were sent.
fn tcp_stream(dev: &mut TunDevice, bytes: usize) -> Transfer {
    let mut reader = Reader::new(dev);
    let mut stream = TcpStream::connect(SocketAddr::from((PEER, 80))).expect("connect");
    reader
        .poll
        .registry()
        .register(&mut stream, STREAM, Interest::WRITABLE)
        .expect("register the stream");

    let (port, isn) = reader.find(dev, |p| {
        let ip = parse_ipv4(p)?;
        (ip.proto == 6 && be16(ip.body, 2) == 80).then(|| {
            assert_eq!(ip.body[13], SYN, "the first segment is a SYN");
            assert!(l4_checksum_ok(&ip), "SYN checksum");
            (be16(ip.body, 0), be32(ip.body, 4))
        })
    });
    let our_isn = 77_000_000u32;
    // MSS = MTU - 40, NOP, window scale 7: an 8 MiB window with 0xffff.
    let mss = (MTU - 40).to_be_bytes();
    let opts = [2, 4, mss[0], mss[1], 1, 3, 3, 7];
    dev.write_packet(&tcp_from_peer(
        port,
        our_isn,
        isn.wrapping_add(1),
        SYN | ACK,
        &opts,
    ))
    .expect("write SYN-ACK");

    let start = Instant::now();
    let pattern = |i: usize| (i % 251) as u8;
    let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
    let mut sent = 0usize;
    let mut next = isn.wrapping_add(1);
    let mut received = 0usize;
    let stats0 = dev.stats();
    let deadline = Instant::now() + PATIENCE * 6;
    let mut tun_drained = false;
    let mut stream_blocked = false;
    while received < bytes {
        assert!(
            Instant::now() < deadline,
            "transfer stalled at {received} of {bytes} bytes"
        );
        while !stream_blocked && sent < bytes {
            let off = sent % 251;
            let want = (bytes - sent).min(chunk.len() - 251);
            match stream.write(&chunk[off..off + want]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(e) => panic!("stream write: {e}"),
            }
        }
        reader.batch.clear();
        match dev.read_packets(&mut reader.batch) {
            Ok(_) => {
                let before = next;
                for p in &reader.batch {
                    assert!(p.len() <= usize::from(MTU), "segment over the MTU");
                    let Some(ip) = parse_ipv4(p) else { continue };
                    if ip.proto != 6 || be16(ip.body, 2) != 80 {
                        continue;
                    }
                    assert!(l4_checksum_ok(&ip), "TCP checksum of a segment");
                    assert_eq!(ip.body[13] & RST, 0, "the stack reset the connection");
                    let doff = usize::from(ip.body[12] >> 4) * 4;
                    let data = &ip.body[doff..];
                    if data.is_empty() || be32(ip.body, 4) != next {
                        continue; // pure ACK, or a retransmission
                    }
                    for (i, &b) in data.iter().enumerate() {
                        assert_eq!(b, pattern(received + i), "stream byte {}", received + i);
                    }
                    received += data.len();
                    next = next.wrapping_add(data.len() as u32);
                }
                if next != before {
                    dev.write_packet(&tcp_from_peer(port, our_isn + 1, next, ACK, &[]))
                        .expect("write ACK");
                    // The ACK may have freed the socket's send buffer.
                    stream_blocked = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tun_drained = true,
            Err(e) => panic!("read_packets: {e}"),
        }
        if tun_drained && (stream_blocked || sent >= bytes) {
            reader
                .poll
                .poll(&mut reader.events, Some(PATIENCE))
                .expect("poll");
            assert!(!reader.events.is_empty(), "no progress in {PATIENCE:?}");
            for event in &reader.events {
                match event.token() {
                    TUN => tun_drained = false,
                    _ => stream_blocked = false,
                }
            }
        }
    }
    let stats = dev.stats();
    assert_eq!(stats.dropped, stats0.dropped, "dropped packets");
    Transfer {
        bytes: received,
        packets: stats.packets - stats0.packets,
        reads: stats.reads - stats0.reads,
        super_packets: stats.super_packets - stats0.super_packets,
        elapsed: start.elapsed(),
    }
}

fn tcp_stream_in_netns(offload: bool, bytes: usize, tag: &str) -> Option<Transfer> {
    let ns = netns(tag)?;
    ns.run(|| {
        let mut dev = open(offload)?;
        let t = tcp_stream(&mut dev, bytes);
        if dev.offload_enabled() {
            assert!(
                t.super_packets > 0,
                "offload is on but the kernel sent no TCP super-packet"
            );
        }
        eprintln!(
            "offload {}: {} bytes in {:?} ({:.0} MB/s), {} packets from {} reads ({} super-packets)",
            dev.offload_enabled(),
            t.bytes,
            t.elapsed,
            t.bytes as f64 / t.elapsed.as_secs_f64() / 1e6,
            t.packets,
            t.reads,
            t.super_packets,
        );
        Some(t)
    })
}

#[test]
fn tcp_stream_is_cut_into_mtu_segments_offload() {
    tcp_stream_in_netns(true, 4 << 20, "tcp-gso");
}

#[test]
fn tcp_stream_through_the_device_plain() {
    tcp_stream_in_netns(false, 1 << 20, "tcp");
}

/// Not a check: prints throughput with and without offload
/// (`cargo test -p agent --release --test tun_netns -- --ignored --nocapture`).
#[test]
#[ignore = "measurement"]
fn tcp_throughput() {
    for offload in [false, true, false, true] {
        tcp_stream_in_netns(
            offload,
            512 << 20,
            if offload { "bench-gso" } else { "bench" },
        );
    }
}

/// What a TCP transfer written into the device saw.
struct Upload {
    bytes: usize,
    elapsed: Duration,
    writes: u64,
    super_writes: u64,
}

/// Sends `bytes` bytes from the device's side (PEER:80) to a listener on
/// LOCAL:8080 in the namespace: the handshake by hand, then data segments
/// of MSS bytes within the receiver's window, `batch` at a time, with
/// `write_packets` (`coalesce`) or one `write_packet` each. Checks that the
/// socket reads exactly the bytes sent.
fn tcp_upload(dev: &mut TunDevice, bytes: usize, coalesce: bool) -> Upload {
    let mut reader = Reader::new(dev);
    let mut listener =
        mio::net::TcpListener::bind(SocketAddr::from((LOCAL, 8080))).expect("listen on 8080");
    reader
        .poll
        .registry()
        .register(&mut listener, STREAM, Interest::READABLE)
        .expect("register the listener");

    let isn = 5_000_000u32;
    let mss = usize::from(MTU) - 40;
    let m = (mss as u16).to_be_bytes();
    let syn_opts = [2, 4, m[0], m[1], 1, 3, 3, 7];
    dev.write_packet(&tcp_from_peer(8080, isn, 0, SYN, &syn_opts))
        .expect("write SYN");
    let (their_isn, their_window, mut wscale) = reader.find(dev, |p| {
        let ip = parse_ipv4(p)?;
        (ip.proto == 6 && be16(ip.body, 0) == 8080).then(|| {
            assert_eq!(ip.body[13], SYN | ACK, "a SYN-ACK");
            assert_eq!(be32(ip.body, 8), isn + 1);
            assert!(l4_checksum_ok(&ip), "SYN-ACK checksum");
            let doff = usize::from(ip.body[12] >> 4) * 4;
            let mut shift = 0;
            let opts = &ip.body[20..doff];
            let mut i = 0;
            while i < opts.len() {
                match opts[i] {
                    0 => break,
                    1 => i += 1,
                    kind => {
                        let len = usize::from(*opts.get(i + 1).unwrap_or(&2)).max(2);
                        if kind == 3 {
                            shift = opts[i + 2];
                        }
                        i += len;
                    }
                }
            }
            (be32(ip.body, 4), usize::from(be16(ip.body, 14)), shift)
        })
    });
    let ack = their_isn.wrapping_add(1);
    dev.write_packet(&tcp_from_peer(8080, isn + 1, ack, ACK, &[]))
        .expect("write ACK");
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                reader
                    .poll
                    .poll(&mut reader.events, Some(PATIENCE))
                    .expect("poll");
                assert!(!reader.events.is_empty(), "no connection in {PATIENCE:?}");
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    reader
        .poll
        .registry()
        .register(&mut stream, STREAM, Interest::READABLE)
        .expect("register the stream");
    wscale = wscale.min(14);

    let pattern = |i: usize| (i % 253) as u8;
    let payload: Vec<u8> = (0..mss + 253).map(pattern).collect();
    let mut out = PacketBatch::new(64, usize::from(MTU));
    let (mut sent, mut acked, mut window) = (0usize, 0usize, their_window);
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let stats0 = dev.stats();
    let start = Instant::now();
    while received < bytes {
        // Fill the receiver's window, a batch at a time.
        out.clear();
        while !out.is_full() && sent < bytes && sent + mss.min(bytes - sent) <= acked + window {
            let len = mss.min(bytes - sent);
            let data = &payload[sent % 253..sent % 253 + len];
            let seq = (isn + 1).wrapping_add(sent as u32);
            let p = tcp_from_peer(8080, seq, ack, ACK, &[]);
            let mut ip = p.clone();
            ip.extend_from_slice(data);
            // Fix the lengths and checksums for the payload.
            let total = ip.len() as u16;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[10..12].fill(0);
            let sum = !ones_sum(&[&ip[..20]]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            seal_l4(PEER, LOCAL, 6, &mut ip[20..], 16);
            out.push(&ip).expect("room");
            sent += len;
        }
        if !out.is_empty() {
            if coalesce {
                assert_eq!(dev.write_packets(&out).expect("write_packets"), out.len());
            } else {
                for p in &out {
                    dev.write_packet(p).expect("write_packet");
                }
            }
        }
        // What arrived.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => panic!("the connection closed at {received} bytes"),
                Ok(n) => {
                    for (i, &b) in buf[..n].iter().enumerate() {
                        assert_eq!(b, pattern(received + i), "byte {}", received + i);
                    }
                    received += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        // The receiver's ACKs and window.
        let mut progressed = false;
        loop {
            reader.batch.clear();
            match dev.read_packets(&mut reader.batch) {
                Ok(_) => {
                    for p in &reader.batch {
                        let Some(ip) = parse_ipv4(p) else { continue };
                        if ip.proto != 6 || be16(ip.body, 0) != 8080 {
                            continue;
                        }
                        assert_eq!(ip.body[13] & RST, 0, "the stack reset the connection");
                        let a = be32(ip.body, 8).wrapping_sub(isn + 1) as usize;
                        if a <= sent && a >= acked {
                            acked = a;
                            window = usize::from(be16(ip.body, 14)) << wscale;
                            progressed = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read_packets: {e}"),
            }
        }
        let can_send = sent < bytes && sent + mss.min(bytes - sent) <= acked + window;
        if received < bytes && !progressed && !can_send {
            reader
                .poll
                .poll(&mut reader.events, Some(PATIENCE))
                .expect("poll");
            assert!(
                !reader.events.is_empty(),
                "upload stalled: sent {sent}, acked {acked}, window {window}, received {received}"
            );
        }
    }
    let stats = dev.stats();
    assert_eq!(stats.write_errors, stats0.write_errors, "refused writes");
    Upload {
        bytes: received,
        elapsed: start.elapsed(),
        writes: stats.writes - stats0.writes,
        super_writes: stats.super_writes - stats0.super_writes,
    }
}

fn tcp_upload_in_netns(offload: bool, coalesce: bool, bytes: usize, tag: &str) {
    let Some(ns) = netns(tag) else { return };
    ns.run(|| {
        let Some(mut dev) = open(offload) else { return };
        let u = tcp_upload(&mut dev, bytes, coalesce);
        if dev.offload_enabled() && coalesce {
            assert!(u.super_writes > 0, "no segments were merged");
        }
        eprintln!(
            "upload, offload {} coalesce {coalesce}: {} bytes in {:?} ({:.0} MB/s), {} writes ({} merged)",
            dev.offload_enabled(),
            u.bytes,
            u.elapsed,
            u.bytes as f64 / u.elapsed.as_secs_f64() / 1e6,
            u.writes,
            u.super_writes,
        );
    });
}

#[test]
fn tcp_segments_written_are_coalesced_offload() {
    tcp_upload_in_netns(true, true, 4 << 20, "up-gro");
}

#[test]
fn tcp_segments_written_one_by_one_plain() {
    tcp_upload_in_netns(false, true, 1 << 20, "up");
}

/// Not a check: prints upload throughput for plain, offload without GRO
/// and offload with GRO.
#[test]
#[ignore = "measurement"]
fn tcp_upload_throughput() {
    for (offload, coalesce) in [(false, false), (true, false), (true, true)] {
        for _ in 0..2 {
            tcp_upload_in_netns(offload, coalesce, 256 << 20, "bench-up");
        }
    }
}
