//! The audit log of access decisions, as a log shipper reads it: a real
//! relay on loopback, real handshakes and frames, and its log lines
//! captured through the JSON formatter `relay --log-format json` installs
//! (`relay::logs`), parsed back.
//!
//! Checked: one `first` line per (user, service, verdict), later counts in
//! `aggregate` lines, the counts of a pair's lines adding up to the frames
//! it sent, names and deny reasons; then a flood of 5000 distinct denied
//! pairs writes at most `max_lines` pair lines and one summary per
//! interval, and every decision the relay made is accounted for exactly
//! once (in a pair line, or in a summary's suppressed or overflow counts).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use loadgen::world::WorldConfig;
use proto::datapath::DropReason;
use proto::ids::{ServiceId, UserId};
use proto::link::HopLink;
use proto::wire::{Kind, HEADER_LEN};
use relay::audit::AuditConfig;
use relay::io::Backend;
use relay::logs::LogFormat;
use serde_json::Value;
use tests::{await_until, payload, Rig};

/// Pair lines per interval at most, in this test.
const BOUND: usize = 100;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Every line written so far, parsed: each must be a JSON object.
    fn lines(&self) -> Vec<Value> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes)
            .expect("log output is UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The audit lines so far.
    fn audit(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["target"] == "audit")
            .collect()
    }
}

/// (user, service, verdict).
type Key = (u64, u64, String);

fn key(line: &Value) -> Key {
    (
        line["user_id"].as_u64().expect("user_id"),
        line["service_id"].as_u64().expect("service_id"),
        line["verdict"].as_str().expect("verdict").to_owned(),
    )
}

fn pair_lines(lines: &[Value]) -> impl Iterator<Item = &Value> {
    lines
        .iter()
        .filter(|l| l["audit"] == "first" || l["audit"] == "aggregate")
}

/// Frames and bytes per key over all pair lines.
fn totals(lines: &[Value]) -> BTreeMap<Key, (u64, u64)> {
    let mut t = BTreeMap::new();
    for l in pair_lines(lines) {
        let e = t.entry(key(l)).or_insert((0, 0));
        e.0 += l["frames"].as_u64().expect("frames");
        e.1 += l["bytes"].as_u64().expect("bytes");
    }
    t
}

/// Every decision the lines account for: pair lines' frames, summaries'
/// suppressed and overflowed frames.
fn accounted(lines: &[Value]) -> u64 {
    lines
        .iter()
        .map(|l| match l["audit"].as_str() {
            Some("first" | "aggregate") => l["frames"].as_u64().expect("frames"),
            Some("summary") => {
                l["suppressed_frames"].as_u64().expect("suppressed_frames")
                    + l["overflow_frames"].as_u64().expect("overflow_frames")
            }
            other => panic!("unknown audit line kind {other:?}: {l}"),
        })
        .sum()
}

/// A data frame from `user` on `link` to `service`.
fn frame(link: &mut HopLink, user: u32, service: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN + body.len()];
    f[HEADER_LEN..].copy_from_slice(body);
    link.write_header(&mut f, Kind::DataUp, UserId(user), ServiceId(service));
    f
}

#[test]
fn audit_lines_are_per_flow_counted_and_bounded_under_a_flood_of_pairs() {
    let capture = Capture::default();
    let writer = capture.clone();
    relay::logs::try_init_with(LogFormat::Json, move || writer.clone(), false)
        .expect("the only subscriber of this test binary");

    let mut rig = Rig::start_with(&WorldConfig {
        io: Backend::Mmsg,
        audit: AuditConfig {
            interval: Duration::from_millis(200),
            max_lines: BOUND,
            ..AuditConfig::default()
        },
        ..WorldConfig::default()
    })
    .unwrap();
    let user2_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut user2 = rig
        .world
        .connect(&user2_socket, &rig.world.user_identity(2).unwrap())
        .unwrap();
    let relay_addr = rig.world.relay_addr();

    // The policy (proto::testkit::policy_file(4, 8)): users 0-3, services
    // 0-7, those with ids divisible by 4 denied; service 99 is unknown.
    let mut expected: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    // Several pairs, allowed and denied.
    for pair in [
        (1, 1, 5),
        (1, 2, 3),
        (1, 4, 4),
        (1, 0, 2),
        (1, 99, 1),
        (2, 3, 2),
        (2, 4, 6),
    ] {
        send(&mut rig, (&mut user2, &user2_socket), &mut expected, pair);
    }
    wait_for(&capture, &expected);
    let lines = capture.audit();
    for l in pair_lines(&lines) {
        assert_eq!(l["level"], "INFO", "{l}");
        assert_eq!(l["relay_id"], 1000, "{l}");
        assert_eq!(l["relay"], "relay-1", "{l}");
        assert_eq!(l["interval_ms"], 200, "{l}");
        let (user, service, verdict) = key(l);
        assert_eq!(l["user"], format!("user{user}"), "{l}");
        if service < 8 {
            assert_eq!(l["service"], format!("service{service}"), "{l}");
        } else {
            assert!(l.get("service").is_none(), "no name for {service}: {l}");
        }
        match (verdict.as_str(), service) {
            ("allow", _) => assert!(l.get("reason").is_none(), "{l}"),
            ("deny", 99) => assert_eq!(l["reason"], "unknown_service", "{l}"),
            ("deny", _) => assert_eq!(l["reason"], "not_granted", "{l}"),
            _ => panic!("verdict {verdict}: {l}"),
        }
    }

    // The same pairs again: counted in aggregate lines, announced once.
    for pair in [(1, 1, 7), (2, 4, 1)] {
        send(&mut rig, (&mut user2, &user2_socket), &mut expected, pair);
    }
    wait_for(&capture, &expected);
    let lines = capture.audit();
    let mut firsts: BTreeMap<Key, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["audit"] == "first") {
        *firsts.entry(key(l)).or_default() += 1;
    }
    assert_eq!(
        firsts,
        expected.keys().map(|k| (k.clone(), 1)).collect(),
        "one first line per (user, service, verdict)"
    );
    let aggregated: u64 = lines
        .iter()
        .filter(|l| l["audit"] == "aggregate" && key(l) == (1, 1, "allow".to_owned()))
        .map(|l| l["frames"].as_u64().expect("frames"))
        .sum();
    assert!(
        aggregated >= 7,
        "the second round of (1, 1) is in aggregate lines: {aggregated}"
    );
    assert!(
        lines.iter().all(|l| l["audit"] != "summary"),
        "nothing suppressed yet"
    );

    // A flood: 5000 distinct denied pairs (forged service ids), then an
    // allowed marker frame behind them on the same socket and worker.
    let flood_from = capture.audit().len();
    let before = rig.counters();
    for s in 1000..6000u32 {
        let f = frame(&mut rig.user, 1, s, &payload(32, 0));
        rig.user_socket.send_to(&f, relay_addr).unwrap();
    }
    let marker_body = payload(100, 0xee);
    let marker = frame(&mut rig.user, 1, 1, &marker_body);
    rig.send_from_user(&marker);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rig.connector_receive(1, Duration::from_millis(100));
        if got.iter().any(|f| f[HEADER_LEN..] == marker_body[..]) {
            break;
        }
        assert!(Instant::now() < deadline, "the marker did not arrive");
    }
    // Everything before the marker is judged; wait for it to be published.
    let c = rig.await_counters("the marker's forward", |c| c.forwarded > before.forwarded);
    let flood = c.dropped(DropReason::Denied) - before.dropped(DropReason::Denied);
    assert!(
        flood > 20 * BOUND as u64,
        "only {flood} of the 5000 flood frames reached the relay"
    );
    // Every decision (forwarded or denied: there were no others) is in the
    // lines exactly once.
    let decisions = c.forwarded + c.dropped(DropReason::Denied);
    await_until(
        "audit lines accounting for every decision",
        Duration::from_secs(10),
        || accounted(&capture.audit()) == decisions,
    );
    let lines = capture.audit();
    let flood_lines = &lines[flood_from..];
    let mut per_interval: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for l in flood_lines {
        let seq = l["interval_seq"].as_u64().expect("interval_seq");
        let e = per_interval.entry(seq).or_default();
        if l["audit"] == "summary" {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    for (seq, (pairs, summaries)) in &per_interval {
        assert!(
            *pairs <= BOUND && *summaries <= 1,
            "interval {seq}: {pairs} pair lines and {summaries} summaries (bound {BOUND} + 1)"
        );
    }
    let suppressed: u64 = flood_lines
        .iter()
        .filter(|l| l["audit"] == "summary")
        .map(|l| l["suppressed_pairs"].as_u64().expect("suppressed_pairs"))
        .sum();
    eprintln!(
        "flood: {flood} denied frames judged; {} audit lines over {} intervals (pair lines, summaries: {per_interval:?}); {suppressed} pair lines suppressed",
        flood_lines.len(),
        per_interval.len()
    );
    assert!(
        suppressed > 0,
        "the bound suppressed nothing: {per_interval:?}"
    );
    assert!(
        flood_lines.len() < 5000 / 4,
        "{} lines for a flood of {flood} frames",
        flood_lines.len()
    );
    // Still one first line per key over the whole run.
    let mut firsts: BTreeMap<Key, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["audit"] == "first") {
        *firsts.entry(key(l)).or_default() += 1;
    }
    assert!(
        firsts.values().all(|&n| n == 1),
        "a pair announced twice: {:?}",
        firsts.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>()
    );
    // The relay's own counters (in /metrics) agree with the lines.
    await_until(
        "the audit counters published",
        Duration::from_secs(5),
        || {
            let stats = rig.world.relay.shared().control_stats().audit;
            stats.decisions == decisions && stats.lines() == lines.len() as u64
        },
    );
}

/// Sends `n` frames from `u` (1: the rig's user, 2: `user2`) to `s`, and
/// counts them in `expected`.
fn send(
    rig: &mut Rig,
    (user2, user2_socket): (&mut HopLink, &std::net::UdpSocket),
    expected: &mut BTreeMap<Key, (u64, u64)>,
    (u, s, n): (u32, u32, u64),
) {
    let verdict = if s % 4 != 0 && s < 8 { "allow" } else { "deny" };
    for i in 0..n {
        let body = payload(60 + 10 * s as usize, i as u8);
        let (link, socket) = if u == 1 {
            (&mut rig.user, &rig.user_socket)
        } else {
            (&mut *user2, user2_socket)
        };
        let f = frame(link, u, s, &body);
        socket.send_to(&f, rig.world.relay_addr()).unwrap();
        let e = expected
            .entry((u64::from(u), u64::from(s), verdict.to_owned()))
            .or_default();
        e.0 += 1;
        e.1 += f.len() as u64;
    }
}

/// Waits until the audit lines count exactly `expected`.
fn wait_for(capture: &Capture, expected: &BTreeMap<Key, (u64, u64)>) {
    await_until(
        "audit lines counting every frame sent",
        Duration::from_secs(10),
        || totals(&capture.audit()) == *expected,
    );
}
