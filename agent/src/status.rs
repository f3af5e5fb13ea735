//! `agent status`: the running agent publishes a snapshot of its state a
//! few times a second; a small HTTP endpoint on loopback serves it as
//! JSON (`GET /status`), and `agent status` fetches and prints it.
//!
//! The endpoint runs on its own thread and reads only the snapshot, so a
//! slow or hostile client cannot stall the packet path. It answers one
//! request per connection, with a read timeout and a size cap.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One service as the agent sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// Service id.
    pub id: u32,
    /// Name from the policy.
    pub name: String,
    /// For a client: the local listener(s); for a connector: the user.
    pub detail: String,
    /// An end-to-end session is up.
    pub session: bool,
    /// End-to-end sessions established so far: the first, then one per
    /// rekey (every 2 minutes) or new handshake.
    #[serde(default)]
    pub sessions: u64,
    /// Open connections and UDP flows.
    pub flows: usize,
    /// Bytes from applications into the tunnel.
    pub bytes_in: u64,
    /// Bytes from the tunnel to applications.
    pub bytes_out: u64,
    /// For a client: the certificate id of the connector the relay's
    /// directory names for this service (where its flows end).
    #[serde(default)]
    pub connector: u32,
}

/// The whole snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `client` or `connector`.
    pub role: String,
    /// Certificate name.
    pub name: String,
    /// Certificate id.
    pub id: u32,
    /// Client mode (`proxy`, `tun`) or empty.
    pub client_mode: String,
    /// Connection mode from the policy (`off`, `on-demand`, ...).
    pub connection_mode: String,
    /// The hop to the relay and the frames on it.
    #[serde(flatten)]
    pub link: LinkStatus,
    /// Services (client) or open pairs (connector).
    pub services: Vec<ServiceStatus>,
    /// tun mode only: the device and its drops.
    #[serde(default)]
    pub tun: TunStatus,
    /// Recent errors, newest last.
    pub errors: Vec<String>,
}

/// What every role reports of its hop and frames.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    /// The relay.
    pub relay: String,
    /// A hop session is up.
    pub hop_up: bool,
    /// Last completed hop handshake, unix seconds.
    pub last_handshake_unix: Option<u64>,
    /// Hop handshakes completed.
    pub handshakes: u64,
    /// Hop sessions lost to silence.
    pub hop_lost: u64,
    /// Frames sent and received.
    pub frames_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes sent to the relay.
    pub bytes_out: u64,
    /// Bytes received from the relay.
    pub bytes_in: u64,
    /// Frames that could not be sent.
    pub send_dropped: u64,
    /// Frames that failed end-to-end checks.
    pub open_dropped: u64,
    /// End-to-end keepalives sent (empty records answering a one-way flow).
    #[serde(default)]
    pub keepalives_out: u64,
    /// End-to-end keepalives received.
    #[serde(default)]
    pub keepalives_in: u64,
    /// End of validity of the certificate in use, unix seconds.
    #[serde(default)]
    pub cert_not_after: u64,
    /// Renewed certificates taken from the files without a restart.
    #[serde(default)]
    pub cert_renewals: u64,
}

/// The TUN device's counters (tun mode; all zero otherwise).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TunStatus {
    /// Device name, empty outside tun mode.
    pub device: String,
    /// Segmentation offload (`IFF_VNET_HDR`) in use.
    pub offload: bool,
    /// Packets read from the device.
    pub packets_read: u64,
    /// Packets to an address that is no service (or while `off`).
    pub unroutable: u64,
    /// Packets dropped in lockdown while the hop was down.
    pub blackholed: u64,
    /// Opened packets refused before the device: wrong source or
    /// destination for the service they came from.
    pub rejected: u64,
    /// Failed writes into the device.
    pub write_errors: u64,
}

/// Where the loop publishes and the endpoint reads.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<Status>>);

impl StatusBoard {
    /// An empty board.
    pub fn new() -> StatusBoard {
        StatusBoard::default()
    }

    /// Replaces the snapshot.
    pub fn publish(&self, status: Status) {
        if let Ok(mut s) = self.0.lock() {
            *s = status;
        }
    }

    /// Rewrites the snapshot in place: `fill` sets every field, reusing the
    /// strings and vectors already there (see [`set_text`]), so a loop that
    /// publishes a few times a second allocates nothing while only
    /// counters change.
    pub fn update(&self, fill: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.0.lock() {
            fill(&mut s);
        }
    }

    /// A copy of the snapshot.
    pub fn snapshot(&self) -> Status {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Puts `errors` (the hop's, which the role does not see) before the
    /// role's own in the published snapshot.
    pub fn add_errors(&self, errors: Vec<String>) {
        if errors.is_empty() {
            return;
        }
        if let Ok(mut s) = self.0.lock() {
            let role = std::mem::replace(&mut s.errors, errors);
            s.errors.extend(role);
        }
    }
}

/// A bounded list of recent error messages.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog(std::collections::VecDeque<String>);

impl ErrorLog {
    /// Entries kept.
    pub const KEEP: usize = 16;

    /// Records (and logs) an error, unless it repeats the newest.
    pub fn push(&mut self, msg: String) {
        if self.0.back() == Some(&msg) {
            return;
        }
        tracing::warn!("{msg}");
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back(msg);
    }

    /// Withdraws `msg` (a problem since fixed).
    pub fn forget(&mut self, msg: &str) {
        self.0.retain(|m| m != msg);
    }

    /// The entries, oldest first.
    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }

    /// Makes `out` a copy of the entries, oldest first, reusing its strings.
    pub fn copy_into(&self, out: &mut Vec<String>) {
        out.truncate(self.0.len());
        for (i, msg) in self.0.iter().enumerate() {
            match out.get_mut(i) {
                Some(s) => s.clone_from(msg),
                None => out.push(msg.clone()),
            }
        }
    }
}

/// Overwrites `s` with `value`'s text, keeping `s`'s allocation (it grows
/// only when the text is longer than any before).
pub fn set_text(s: &mut String, value: impl std::fmt::Display) {
    use std::fmt::Write;
    s.clear();
    let _ = write!(s, "{value}");
}

/// Serves `board` on `addr` until `stop` is set: `GET /status` (JSON, what
/// `agent status` reads) and `GET /metrics` (OpenMetrics text, for
/// Prometheus; see [`crate::metrics`]), on [`relay::http`]. Binds before
/// returning, so a taken port is reported to the caller.
pub fn serve(
    addr: SocketAddr,
    board: StatusBoard,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let registry = crate::metrics::registry(board.clone());
    let (_, handle) = relay::http::serve(
        addr,
        "status",
        stop,
        "{\"error\":\"GET /status or GET /metrics\"}",
        move |path| match path {
            "/status" | "/" => Some(relay::http::Page {
                content_type: "application/json",
                body: serde_json::to_string_pretty(&board.snapshot()).unwrap_or_default(),
            }),
            "/metrics" => Some(relay::http::Page {
                content_type: relay::http::OPENMETRICS,
                body: crate::metrics::render(&registry),
            }),
            _ => None,
        },
    )?;
    Ok(handle)
}

/// Fetches the snapshot from a running agent.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<Status> {
    use anyhow::Context;
    let answer = relay::http::get(addr, "/status").with_context(|| {
        format!("no agent answers on {addr}; is it running, and is [status] listen the same in its config?")
    })?;
    anyhow::ensure!(
        answer.code == 200,
        "the status endpoint on {addr} answered {}",
        answer.code
    );
    serde_json::from_str(&answer.body).context("malformed status JSON")
}

/// Human-readable rendering for `agent status`.
pub fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{} '{}' (id {})", s.role, s.name, s.id);
    if !s.client_mode.is_empty() {
        let _ = writeln!(
            out,
            "  mode:        {} (connection mode {})",
            s.client_mode, s.connection_mode
        );
    }
    let last = s
        .link
        .last_handshake_unix
        .map_or_else(|| "never".to_owned(), utc);
    let _ = writeln!(
        out,
        "  relay:       {} ({}; last handshake {last}; {} handshakes, {} lost)",
        s.link.relay,
        if s.link.hop_up { "up" } else { "DOWN" },
        s.link.handshakes,
        s.link.hop_lost
    );
    if s.link.cert_not_after != 0 {
        let _ = writeln!(
            out,
            "  certificate: valid until {} ({} renewals taken while running)",
            utc(s.link.cert_not_after),
            s.link.cert_renewals
        );
    }
    let _ = writeln!(
        out,
        "  frames:      {} out / {} in ({} B / {} B); dropped: {} send, {} open; keepalives: {} out / {} in",
        s.link.frames_out,
        s.link.frames_in,
        s.link.bytes_out,
        s.link.bytes_in,
        s.link.send_dropped,
        s.link.open_dropped,
        s.link.keepalives_out,
        s.link.keepalives_in
    );
    if !s.tun.device.is_empty() {
        let t = &s.tun;
        let _ = writeln!(
            out,
            "  tun:         {} (offload {}); {} packets read; dropped: {} unroutable, {} black-holed, {} rejected, {} write errors",
            t.device,
            if t.offload { "on" } else { "off" },
            t.packets_read,
            t.unroutable,
            t.blackholed,
            t.rejected,
            t.write_errors
        );
    }
    let _ = writeln!(out, "  services:");
    if s.services.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for v in &s.services {
        let _ = writeln!(
            out,
            "    {:<20} id {:<6} {:<8} {} flows  {} B in / {} B out  {}",
            v.name,
            v.id,
            if v.session { "session" } else { "-" },
            v.flows,
            v.bytes_in,
            v.bytes_out,
            v.detail
        );
    }
    if !s.errors.is_empty() {
        let _ = writeln!(out, "  recent errors:");
        for e in &s.errors {
            let _ = writeln!(out, "    {e}");
        }
    }
    out
}

/// `unix` seconds as a UTC date and time, `2026-01-31 23:59:59 UTC`.
pub fn utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days, in unsigned arithmetic (days
    // since 1970 are never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A span of seconds for people: `3 d 4 h`, `5 h 12 min`, `40 s`.
pub fn span(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{secs} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> relay::http::Response {
        relay::http::get(addr, path).unwrap()
    }

    #[test]
    fn serves_the_published_snapshot_and_metrics() {
        let board = StatusBoard::new();
        let stop = Arc::new(AtomicBool::new(false));
        // Bind to a free port first to learn it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let t = serve(addr, board.clone(), stop.clone()).unwrap();
        board.publish(Status {
            role: "client".into(),
            link: LinkStatus {
                hop_up: true,
                frames_in: 42,
                ..LinkStatus::default()
            },
            ..Status::default()
        });
        let got = fetch(addr).unwrap();
        assert_eq!(got.link.frames_in, 42);
        assert!(got.link.hop_up);
        let metrics = get(addr, "/metrics");
        assert_eq!(metrics.code, 200, "{metrics:?}");
        assert!(
            metrics.head.contains("application/openmetrics-text"),
            "{metrics:?}"
        );
        assert!(
            metrics
                .body
                .contains("\nztna_agent_frames_received_total 42\n"),
            "{metrics:?}"
        );
        // Anything else is an error, and the server survives garbage.
        assert_eq!(get(addr, "/nothing").code, 404);
        use std::io::{Read, Write};
        use std::net::TcpStream;
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x00\xffjunk\r\n\r\n").unwrap();
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
        // Idle connections do not hold up a scrape (each request is read
        // on its own thread).
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = std::time::Instant::now();
        assert_eq!(fetch(addr).unwrap().link.frames_in, 42);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "a scrape waited {:?} behind idle connections",
            started.elapsed()
        );
        drop(idle);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn dates_and_spans_read_right() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
        assert!(utc(u64::MAX).ends_with("UTC"), "no overflow");
        assert_eq!(span(40), "40 s");
        assert_eq!(span(3 * 60 + 5), "3 min");
        assert_eq!(span(5 * 3600 + 12 * 60), "5 h 12 min");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
    }

    #[test]
    fn hop_errors_come_before_the_roles() {
        let board = StatusBoard::new();
        board.publish(Status {
            errors: vec!["role".into()],
            ..Status::default()
        });
        board.add_errors(vec!["hop".into()]);
        assert_eq!(board.snapshot().errors, vec!["hop", "role"]);
    }

    #[test]
    fn error_log_is_bounded_and_skips_repeats() {
        let mut log = ErrorLog::default();
        log.push("a".into());
        log.push("a".into());
        assert_eq!(log.to_vec(), vec!["a".to_string()]);
        for i in 0..40 {
            log.push(i.to_string());
        }
        assert_eq!(log.to_vec().len(), ErrorLog::KEEP);
        assert_eq!(log.to_vec().last().unwrap(), "39");
    }

    #[test]
    fn in_place_updates_match_fresh_copies_and_keep_their_buffers() {
        let mut log = ErrorLog::default();
        let mut out = vec!["an older, longer message".to_string(); ErrorLog::KEEP + 2];
        log.push("a".into());
        log.push("b".into());
        let first = out[0].as_ptr();
        log.copy_into(&mut out);
        assert_eq!(out, log.to_vec());
        assert_eq!(out[0].as_ptr(), first, "the string was reused");
        let mut short = vec![String::new()];
        log.copy_into(&mut short);
        assert_eq!(short, log.to_vec());

        let mut text = String::from("127.0.0.1:51820");
        let (ptr, cap) = (text.as_ptr(), text.capacity());
        set_text(&mut text, "10.0.0.1:1");
        assert_eq!(text, "10.0.0.1:1");
        set_text(&mut text, format_args!("user {}", 7));
        assert_eq!(text, "user 7");
        assert_eq!((text.as_ptr(), text.capacity()), (ptr, cap));

        let board = StatusBoard::new();
        board.update(|s| {
            set_text(&mut s.role, "connector");
            s.link.frames_in = 3;
        });
        let snap = board.snapshot();
        assert_eq!((snap.role.as_str(), snap.link.frames_in), ("connector", 3));
    }
}
