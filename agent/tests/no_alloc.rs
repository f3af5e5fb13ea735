//! The agent's packet path makes no heap allocation per packet once warm.
//!
//! A connector and a proxy-mode client run in this process, each
//! `agent::start::run` on its own thread, with an in-process relay and
//! real targets. A counting global allocator counts allocations and
//! reallocations made on those two threads only (they opt in with a
//! thread-local flag; the test harness, the relay's workers, the targets
//! and the agents' status threads do not count). After a warm-up, the
//! count across a steady 32 MiB TCP echo (both directions through both
//! agents) and a burst of UDP datagrams must be zero.
//!
//! What is per *event*, not per packet, happens outside the window: the
//! hop and end-to-end handshakes, a new TCP connection (the client's and
//! the connector's sockets, smoltcp socket buffers, the target's
//! resolution and dial), a new UDP flow (its sockets). Keepalive pings,
//! sent after `ping_after_ms` of silence, are kept out by a long
//! `ping_after_ms`: a busy window has no silence, but a thread descheduled
//! on a loaded machine would see some. Timers that do fire in the window
//! (status publication, the connector's policy check) must not allocate.
//!
//! One allocation is counted apart: a new packet buffer for the pool
//! (`agent::pool::BUF_LEN` zeroed bytes). The pool grows whenever more
//! packets are in flight at once than ever before, which depends on how
//! the threads were scheduled, not on how many packets went through, so a
//! warm-up cannot be sure to reach the peak. Its growth in the window must
//! stay below [`POOL_GROWTH_MAX`]; a buffer lost per packet would grow it
//! by tens of thousands.
//!
//! To find where a counted allocation comes from, set `NO_ALLOC_BACKTRACES`
//! to how many to capture; their backtraces are printed when the test
//! fails:
//!
//! ```text
//! NO_ALLOC_BACKTRACES=4 cargo test -p agent --test no_alloc -- --nocapture
//! ```

mod common;

use std::alloc::Layout;
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloc_counter::{CountingAlloc, Request};
use common::*;
use proto::datapath::Mode;

/// Which counted agent a thread runs (`NONE`: not counted).
const NONE: usize = 0;
const CONNECTOR_THREAD: usize = 1;
const CLIENT_THREAD: usize = 2;

thread_local! {
    /// Set once by an agent's thread before it starts.
    static AGENT: Cell<usize> = const { Cell::new(NONE) };
    /// Set while this thread captures a backtrace (which allocates).
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// Counting is on.
static WINDOW: AtomicBool = AtomicBool::new(false);
/// Allocations counted, per `AGENT` value.
static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// New pool buffers, per `AGENT` value.
static POOL_GROWTH: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Backtraces still to capture.
static TRACES_LEFT: AtomicUsize = AtomicUsize::new(0);
/// Captured: the agent, when, where.
static TRACES: Mutex<Vec<(usize, Instant, Backtrace)>> = Mutex::new(Vec::new());

/// Pool growth allowed in the window, per agent: what can be in flight at
/// once beyond the warm-up's peak (a stack's receive queue, one receive
/// batch from the relay, one egress burst), which depends on scheduling,
/// not on how many packets pass. The window moves ~25 k packets per
/// direction, so a buffer lost per packet would still blow this.
const POOL_GROWTH_MAX: u64 = (agent::netstack::RX_QUEUE
    + agent::runtime::INBOX_CAPACITY
    + agent::netstack::EGRESS_BURST) as u64;

/// Counts an allocation made on an agent's thread while the window is
/// open; captures its backtrace if asked to. Its own allocations (a
/// backtrace) happen with `CAPTURING` set, so they are not counted and do
/// not recurse into another capture.
fn note(layout: Layout, request: Request) {
    if !WINDOW.load(Ordering::Relaxed) {
        return;
    }
    // `try_with`: a thread being torn down has no locals left; it is no
    // agent's packet path.
    let agent = AGENT.try_with(Cell::get).unwrap_or(NONE);
    if agent == NONE || CAPTURING.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    if request == Request::AllocZeroed
        && layout.size() == agent::pool::BUF_LEN
        && layout.align() == 1
    {
        POOL_GROWTH[agent].fetch_add(1, Ordering::Relaxed);
        return;
    }
    COUNTS[agent].fetch_add(1, Ordering::Relaxed);
    let wanted = TRACES_LEFT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if wanted {
        CAPTURING.with(|c| c.set(true));
        let trace = Backtrace::force_capture();
        if let Ok(mut traces) = TRACES.lock() {
            traces.push((agent, Instant::now(), trace));
        }
        CAPTURING.with(|c| c.set(false));
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new(note);

const WARM_TCP: usize = 8 << 20;
const MEASURED_TCP: usize = 32 << 20;
const UDP_BURST: usize = 2_000;
/// Datagrams in flight at most during a burst.
const UDP_WINDOW: usize = 32;

/// Streams `total` bytes through an established echo connection, writing
/// on a helper thread and reading here; checks every byte came back.
fn echo_stream(s: &TcpStream, total: usize, seed: u64) {
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut state = seed | 1;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = total;
        while left > 0 {
            let k = left.min(buf.len());
            fill(&mut buf[..k], &mut state);
            writer.write_all(&buf[..k]).unwrap();
            left -= k;
        }
    });
    let mut reader = s;
    let mut state = seed | 1;
    let (mut got, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut left = total;
    while left > 0 {
        let k = left.min(got.len());
        reader.read_exact(&mut got[..k]).unwrap();
        fill(&mut want[..k], &mut state);
        assert!(got[..k] == want[..k], "echo corrupted");
        left -= k;
    }
    sender.join().unwrap();
}

/// Sends `count` datagrams (of two sizes) through the UDP listener with
/// at most `UDP_WINDOW` unanswered; returns the echoes received.
fn udp_burst(u: &UdpSocket, to: SocketAddr, count: usize) -> usize {
    let mut out = [0u8; 1200];
    let mut buf = [0u8; 2048];
    let (mut sent, mut received, mut lost) = (0, 0, 0);
    while received + lost < count {
        while sent < count && sent - received - lost < UDP_WINDOW {
            let len = if sent % 2 == 0 { out.len() } else { 64 };
            out[..8].copy_from_slice(&(sent as u64).to_be_bytes());
            u.send_to(&out[..len], to).unwrap();
            sent += 1;
        }
        match u.recv_from(&mut buf) {
            Ok((n, _)) => {
                assert!(n == 1200 || n == 64, "echo of {n} bytes");
                received += 1;
            }
            // A lost datagram: let the window slide on.
            Err(_) => lost += 1,
        }
    }
    received
}

#[test]
fn packet_path_does_not_allocate_in_steady_state() {
    let mut w = World::start(Mode::Ztna);
    // No keepalive in the window (see the top of the file).
    w.ping_after_ms = 5_000;
    let t = Targets::basic();
    w.write_policy(&t, true);
    w.start_relay();
    let (cfg, status) = w.connector_config();
    let connector = InProcessAgent::start(&cfg, status, "conn-a", || {
        AGENT.with(|a| a.set(CONNECTOR_THREAD))
    });
    let echo = free_tcp_port();
    let uecho = free_udp_port();
    let (cfg, status) = w.client_config(
        "alice",
        ALICE,
        &["eng"],
        &[("echo", echo, "tcp"), ("uecho", uecho, "udp")],
    );
    let client = InProcessAgent::start(&cfg, status, "alice", || {
        AGENT.with(|a| a.set(CLIENT_THREAD))
    });
    connector.wait_for("connector hop session", Duration::from_secs(10), |s| {
        s.link.hop_up
    });
    client.wait_for("client directory", Duration::from_secs(10), |s| {
        s.link.hop_up && s.services.len() >= 2
    });

    // Warm-up: a connection's worth of traffic, then a UDP flow.
    let s = TcpStream::connect(echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    echo_stream(&s, WARM_TCP, 1);
    drop(s);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // The first datagram may wait for the session; the flow is up once
    // one comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while udp_burst(&u, uecho, 1) == 0 {
        assert!(Instant::now() < deadline, "no UDP echo");
    }
    udp_burst(&u, uecho, UDP_BURST);
    // The measured connection is opened (a per-connection event) and
    // carries a first round trip before the window opens.
    let s = TcpStream::connect(echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    echo_stream(&s, 1 << 16, 2);

    let traces = std::env::var("NO_ALLOC_BACKTRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    TRACES_LEFT.store(traces, Ordering::Relaxed);
    let opened = Instant::now();
    WINDOW.store(true, Ordering::Relaxed);
    echo_stream(&s, MEASURED_TCP, 3);
    let tcp_took = opened.elapsed();
    let echoed = udp_burst(&u, uecho, UDP_BURST);
    WINDOW.store(false, Ordering::Relaxed);
    let udp_took = opened.elapsed() - tcp_took;
    drop(s);

    let count = |c: &[AtomicU64; 3], agent: usize| c[agent].load(Ordering::Relaxed);
    let (conn, cli) = (
        count(&COUNTS, CONNECTOR_THREAD),
        count(&COUNTS, CLIENT_THREAD),
    );
    let (conn_pool, cli_pool) = (
        count(&POOL_GROWTH, CONNECTOR_THREAD),
        count(&POOL_GROWTH, CLIENT_THREAD),
    );
    eprintln!(
        "{} MiB echoed in {tcp_took:?}, {echoed}/{UDP_BURST} datagrams in {udp_took:?}: \
         allocations: connector {conn}, client {cli}; new pool buffers: connector \
         {conn_pool}, client {cli_pool}",
        MEASURED_TCP >> 20
    );
    assert!(echoed >= UDP_BURST * 9 / 10, "only {echoed} UDP echoes");
    if conn + cli > 0 {
        let traces = TRACES.lock().map(|t| t.len()).unwrap_or(0);
        if let Ok(traces) = TRACES.lock() {
            for (agent, at, trace) in traces.iter() {
                let who = if *agent == CONNECTOR_THREAD {
                    "connector"
                } else {
                    "client"
                };
                let at = at.duration_since(opened);
                eprintln!(
                    "---- allocation on the {who} thread, {at:?} into the window ----\n{trace}"
                );
            }
        }
        panic!(
            "the packet path allocated: connector {conn}, client {cli} ({traces} backtraces \
             above; set NO_ALLOC_BACKTRACES=N for N of them)"
        );
    }
    assert!(
        conn_pool <= POOL_GROWTH_MAX && cli_pool <= POOL_GROWTH_MAX,
        "the pool grew by {conn_pool} (connector) and {cli_pool} (client) buffers: \
         are buffers lost instead of put back?"
    );
}
