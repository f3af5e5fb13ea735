//! Prometheus text exposition of the relay's counters on `GET /metrics`.
//!
//! A plain blocking thread on a `TcpListener`: scrapes are rare (seconds
//! apart) and read only what the workers already publish between batches,
//! so nothing here touches the datapath.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::datapath::DropReason;

use crate::io::BATCH_BUCKETS;
use crate::shared::Shared;

/// Binds `addr` and serves metrics on a background thread until the relay
/// stops. Returns the bound address.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("relay-metrics".into())
        .spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &shared) {
                            tracing::debug!(error = %e, "metrics scrape failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics listener error"),
                }
            }
        })?;
    tracing::info!(%local, "metrics on http://{local}/metrics");
    Ok(local)
}

fn answer(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A scrape is a few hundred bytes; never buffer more than 8 KiB of
    // whatever a client sends.
    let mut reader = BufReader::new(std::io::Read::take(stream, 8192));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers (bounded: a scrape sends a handful).
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut stream = reader.into_inner().into_inner();
    let (status, body) = if request_line.starts_with("GET /metrics") {
        ("200 OK", render(shared))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The metrics text for the current published state.
pub fn render(shared: &Shared) -> String {
    let workers = shared.worker_stats();
    let mut out = String::new();
    let counter = |out: &mut String,
                   name: &str,
                   help: &str,
                   values: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(out, "# HELP ztna_{name} {help}\n# TYPE ztna_{name} counter");
        for (labels, v) in values {
            let _ = writeln!(out, "ztna_{name}{{{labels}}} {v}");
        }
    };
    let w = |i: usize| format!("worker=\"{i}\"");
    counter(
        &mut out,
        "frames_total",
        "Frames judged by the datapath.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.datapath.frames)),
    );
    counter(
        &mut out,
        "bytes_total",
        "Bytes of frames judged.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.datapath.bytes)),
    );
    counter(
        &mut out,
        "forwarded_frames_total",
        "Frames forwarded.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.datapath.forwarded)),
    );
    counter(
        &mut out,
        "forwarded_bytes_total",
        "Bytes forwarded.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.datapath.forwarded_bytes)),
    );
    counter(
        &mut out,
        "handshake_frames_total",
        "Hop handshake frames handed to the control thread.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.datapath.handshakes)),
    );
    counter(
        &mut out,
        "handshakes_shed_total",
        "Hop handshake frames shed because the control queue was full.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.handshakes_shed)),
    );
    counter(
        &mut out,
        "control_shed_total",
        "Authenticated control frames shed because the control queue was full.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.control_shed)),
    );
    counter(
        &mut out,
        "dropped_frames_total",
        "Frames dropped, by reason.",
        &mut workers.iter().enumerate().flat_map(|(i, s)| {
            DropReason::ALL.iter().map(move |r| {
                (
                    format!("worker=\"{i}\",reason=\"{}\"", r.name()),
                    s.datapath.dropped(*r),
                )
            })
        }),
    );
    counter(
        &mut out,
        "io_send_calls_total",
        "Send calls (one per GSO group).",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.send_calls)),
    );
    counter(
        &mut out,
        "io_syscalls_total",
        "Syscalls or io_uring submits.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.syscalls)),
    );
    // What the I/O layer lost, apart from the datapath's drops by reason.
    counter(
        &mut out,
        "io_send_dropped_total",
        "Datagrams lost to failed sends (send buffer full past the wait, or a send error).",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.send_dropped)),
    );
    counter(
        &mut out,
        "io_recv_no_buffers_total",
        "Times the receive side ran out of buffers (the kernel dropped what arrived meanwhile).",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.recv_no_buffers)),
    );
    counter(
        &mut out,
        "io_recv_truncated_total",
        "Received datagrams dropped for being cut short by a too-small receive buffer.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.recv_truncated)),
    );
    counter(
        &mut out,
        "io_recv_errors_total",
        "Receive completions that failed otherwise or had no usable source address.",
        &mut workers
            .iter()
            .enumerate()
            .map(|(i, s)| (w(i), s.io.recv_errors)),
    );
    counter(
        &mut out,
        "io_batches_total",
        "Polls by datagrams received, in power-of-two buckets: min is the bucket's lower bound (inclusive), the next bucket's min its exclusive upper bound.",
        &mut workers.iter().enumerate().flat_map(|(i, s)| {
            (0..BATCH_BUCKETS).map(move |b| (format!("worker=\"{i}\",min=\"{}\"", 1u64 << b), s.io.batch_hist[b]))
        }),
    );
    let _ = writeln!(
        out,
        "# HELP ztna_sessions Installed hop sessions.\n# TYPE ztna_sessions gauge"
    );
    for (i, s) in workers.iter().enumerate() {
        let _ = writeln!(out, "ztna_sessions{{{}}} {}", w(i), s.sessions);
    }
    let _ = writeln!(
        out,
        "# HELP ztna_policy_epoch Policies loaded since start.\n# TYPE ztna_policy_epoch gauge\nztna_policy_epoch {}\n# HELP ztna_policy_rejected_total Policy reloads rejected.\n# TYPE ztna_policy_rejected_total counter\nztna_policy_rejected_total {}",
        shared.policy_epoch.load(Ordering::Relaxed),
        shared.policy_rejected.load(Ordering::Relaxed)
    );
    let mesh = &shared.mesh;
    if mesh.enabled.load(Ordering::Relaxed) {
        let flag = |b: &std::sync::atomic::AtomicBool| u8::from(b.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP ztna_mesh_etcd_watch_connected 1 while the mesh's etcd watch is live; 0: routing on the last view seen.\n# TYPE ztna_mesh_etcd_watch_connected gauge\nztna_mesh_etcd_watch_connected {}\n\
             # HELP ztna_mesh_etcd_registered 1 while this relay's registration (its lease) is kept alive in etcd.\n# TYPE ztna_mesh_etcd_registered gauge\nztna_mesh_etcd_registered {}\n\
             # HELP ztna_mesh_view_revision The etcd revision of the mesh view in force.\n# TYPE ztna_mesh_view_revision gauge\nztna_mesh_view_revision {}\n\
             # HELP ztna_mesh_links Peer relays this relay holds links with.\n# TYPE ztna_mesh_links gauge\nztna_mesh_links {}\n\
             # HELP ztna_mesh_peers_lost_total Connectors and relays taken out of the routes for not answering keepalives.\n# TYPE ztna_mesh_peers_lost_total counter\nztna_mesh_peers_lost_total {}",
            flag(&mesh.watch_connected),
            flag(&mesh.registered),
            mesh.revision.load(Ordering::Relaxed),
            shared.mesh_links.load().len(),
            mesh.peers_lost.load(Ordering::Relaxed),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoStats;
    use crate::shared::WorkerStats;

    #[test]
    fn io_drop_counters_are_rendered_per_worker() {
        let shared = Shared::new(
            proto::policy::CompiledPolicy::compile(&proto::policy::PolicyFile::default()).unwrap(),
            2,
        );
        for (id, base) in [(0usize, 10u64), (1, 20)] {
            let io = IoStats {
                send_dropped: base + 1,
                recv_no_buffers: base + 2,
                recv_truncated: base + 3,
                recv_errors: base + 4,
                ..IoStats::default()
            };
            shared.publish(
                id,
                WorkerStats {
                    io,
                    ..WorkerStats::default()
                },
            );
        }
        let text = render(&shared);
        for (name, offset) in [
            ("io_send_dropped_total", 1),
            ("io_recv_no_buffers_total", 2),
            ("io_recv_truncated_total", 3),
            ("io_recv_errors_total", 4),
        ] {
            assert!(
                text.contains(&format!("# TYPE ztna_{name} counter\n")),
                "{name} undeclared in:\n{text}"
            );
            for (worker, base) in [(0, 10), (1, 20)] {
                let line = format!("ztna_{name}{{worker=\"{worker}\"}} {}\n", base + offset);
                assert!(text.contains(&line), "missing {line:?} in:\n{text}");
            }
        }
    }
}
