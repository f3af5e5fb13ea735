//! `GET /metrics`: the relay's counters in the OpenMetrics text format, for
//! Prometheus.
//!
//! Built with the `prometheus-client` crate: one [`Collector`] reads what
//! the workers and the control thread already publish in [`Shared`]
//! (between batches, never per frame) at scrape time, and
//! [`crate::http`] serves it. Counters end in `_total`, byte counts in
//! `_bytes` (base units); per-worker series carry a `worker` label.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use proto::datapath::DropReason;

use crate::control::HandshakeReject;
use crate::io::BATCH_BUCKETS;
use crate::shared::{Shared, WorkerStats};

/// Binds `addr` and serves metrics on a background thread until the relay
/// stops. Returns the bound address.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let registry = registry(Arc::clone(&shared));
    let (local, _thread) = crate::http::serve(
        addr,
        "relay-metrics",
        Arc::clone(&shared.stop),
        "try GET /metrics\n",
        move |path| {
            (path == "/metrics").then(|| crate::http::Page {
                content_type: crate::http::OPENMETRICS,
                body: encode(&registry),
            })
        },
    )?;
    tracing::info!(%local, "metrics on http://{local}/metrics");
    Ok(local)
}

/// The relay's metrics registry, reading `shared` at every scrape.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector(shared)));
    registry
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The metrics text for the current published state of `shared`.
pub fn render(shared: &Arc<Shared>) -> String {
    encode(&registry(Arc::clone(shared)))
}

#[derive(Debug)]
struct RelayCollector(Arc<Shared>);

/// One per-worker counter family.
fn per_worker(
    e: &mut DescriptorEncoder<'_>,
    workers: &[WorkerStats],
    (name, help, unit): (&str, &str, Option<&Unit>),
    value: impl Fn(&WorkerStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (i, w) in workers.iter().enumerate() {
        let worker = i.to_string();
        ConstCounter::new(value(w))
            .encode(family.encode_family(&[("worker", worker.as_str())])?)?;
    }
    Ok(())
}

/// Encodes one counter (`_total` is appended, and `_<unit>` before it)
/// whose value was read at scrape time: the building block of the relay's
/// and the agent's collectors.
pub fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, unit, c.metric_type())?)
}

/// Encodes one gauge whose value was read at scrape time.
pub fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for RelayCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let workers = shared.worker_stats();
        {
            let info = ConstGauge::new(1i64);
            let mut family = e.encode_descriptor(
                "ztna_relay_info",
                "This relay's build (always 1).",
                None,
                info.metric_type(),
            )?;
            info.encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        let bytes = Some(&Unit::Bytes);
        for (desc, value) in [
            (("ztna_frames", "Frames judged by the datapath.", None), (|w: &WorkerStats| w.datapath.frames) as fn(&WorkerStats) -> u64),
            (("ztna_judged", "Bytes of frames judged.", bytes), |w| w.datapath.bytes),
            (("ztna_forwarded_frames", "Frames forwarded.", None), |w| w.datapath.forwarded),
            (("ztna_forwarded", "Bytes forwarded.", bytes), |w| w.datapath.forwarded_bytes),
            (("ztna_local_frames", "Authenticated keepalive and control frames for this relay.", None), |w| w.datapath.local),
            (("ztna_keepalive_frames", "Authenticated keepalive frames (of the local frames).", None), |w| w.keepalives),
            (("ztna_control_frames", "Authenticated control frames (of the local frames; those not shed go to the control thread).", None), |w| w.control_frames),
            (("ztna_handshake_frames", "Hop handshake frames handed to the control thread.", None), |w| w.datapath.handshakes),
            (("ztna_handshakes_shed", "Hop handshake frames shed because the control queue was full.", None), |w| w.handshakes_shed),
            (("ztna_control_shed", "Authenticated control frames shed because the control queue was full.", None), |w| w.control_shed),
            (("ztna_io_received_datagrams", "Datagrams received (each GRO segment counted).", None), |w| w.io.datagrams_in),
            (("ztna_io_sent_datagrams", "Datagrams sent.", None), |w| w.io.datagrams_out),
            (("ztna_io_send_calls", "Send calls (one per GSO group).", None), |w| w.io.send_calls),
            (("ztna_io_syscalls", "Syscalls or io_uring submits.", None), |w| w.io.syscalls),
            (("ztna_io_send_dropped", "Datagrams dropped on send: the socket stayed full, or the kernel refused them.", None), |w| w.io.send_dropped),
            (("ztna_io_unresolved", "Datagrams forwarded to a next hop the worker could not resolve to an address (not sent; never expected).", None), |w| w.io.unresolved),
            (("ztna_io_recv_no_buffers", "Receives that found no free buffer (the kernel dropped what arrived meanwhile).", None), |w| w.io.recv_no_buffers),
            (("ztna_io_recv_truncated", "Received datagrams dropped for being cut short by a too-small receive buffer.", None), |w| w.io.recv_truncated),
            (("ztna_io_recv_errors", "Receive completions that failed otherwise or had no usable source address.", None), |w| w.io.recv_errors),
            (("ztna_io_busy_poll_served", "Busy polling: polls that received datagrams while spinning, without sleeping in the kernel.", None), |w| w.io.busy_poll_served),
            (("ztna_io_busy_poll_missed", "Busy polling: polls whose spin budget ran out with nothing received; they then slept in the kernel.", None), |w| w.io.busy_poll_missed),
        ] {
            per_worker(&mut e, &workers, desc, value)?;
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_io_busy_poll",
                "Busy polling: time spent spinning for datagrams (part of the worker's CPU time).",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for (i, w) in workers.iter().enumerate() {
                let worker = i.to_string();
                ConstCounter::new(w.io.busy_poll_time_ns as f64 / 1e9)
                    .encode(family.encode_family(&[("worker", worker.as_str())])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_dropped_frames",
                "Frames dropped by the datapath, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (i, w) in workers.iter().enumerate() {
                let worker = i.to_string();
                for r in DropReason::ALL {
                    let labels = [("worker", worker.as_str()), ("reason", r.name())];
                    ConstCounter::new(w.datapath.dropped(r))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_handshakes_gated",
                "Hop initiations a worker did not queue for the control thread, by what it did instead: dropped for a bad mac1, shed under load beyond the source's fair share, answered with a cookie reply, or dropped for want of cookie replies in the batch.",
                None,
                MetricType::Counter,
            )?;
            for (i, w) in workers.iter().enumerate() {
                let worker = i.to_string();
                for (reason, n) in w.handshakes_gated.by_reason() {
                    let labels = [("worker", worker.as_str()), ("reason", reason)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_io_batches",
                "Polls by datagrams received, in power-of-two buckets: min is the bucket's lower bound (inclusive), the next bucket's min its exclusive upper bound.",
                None,
                MetricType::Counter,
            )?;
            for (i, w) in workers.iter().enumerate() {
                let worker = i.to_string();
                for b in 0..BATCH_BUCKETS {
                    let min = (1u64 << b).to_string();
                    let labels = [("worker", worker.as_str()), ("min", min.as_str())];
                    ConstCounter::new(w.io.batch_hist[b]).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_sessions",
                "Installed hop sessions.",
                None,
                MetricType::Gauge,
            )?;
            for (i, w) in workers.iter().enumerate() {
                let worker = i.to_string();
                ConstGauge::new(w.sessions as i64)
                    .encode(family.encode_family(&[("worker", worker.as_str())])?)?;
            }
        }
        let c = shared.control_stats();
        {
            let mut family = e.encode_descriptor(
                "ztna_handshakes",
                "Hop handshakes answered by the control thread, by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [("ok", c.handshakes_ok), ("failed", c.handshakes_failed)] {
                ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_handshakes_rejected",
                "Hop handshake frames the control thread rejected, by reason (they add up to ztna_handshakes_total{result=\"failed\"}).",
                None,
                MetricType::Counter,
            )?;
            for r in HandshakeReject::ALL {
                ConstCounter::new(c.handshakes_rejected.get(r))
                    .encode(family.encode_family(&[("reason", r.name())])?)?;
            }
        }
        for (name, help, value) in [
            ("ztna_cookie_replies", "Cookie replies sent while under load.", c.cookie_replies),
            ("ztna_sessions_expired", "Hop sessions removed after REJECT_AFTER_TIME.", c.sessions_expired),
            ("ztna_sessions_confirmed", "Hop sessions confirmed by their peer (a first frame passed the hop tag; sessions this relay initiated count at once): only these carry routes.", c.sessions_confirmed),
            ("ztna_sessions_unconfirmed", "Hop sessions removed because no frame on them passed the hop tag within CONFIRM_WITHIN (initiations from spoofed addresses, replays).", c.sessions_unconfirmed),
            ("ztna_control_received", "Control messages received (authenticated).", c.control_received),
            ("ztna_control_rejected", "Control messages that did not parse, came on a session that is gone, or were not for a relay.", c.control_rejected),
            ("ztna_pings_rate_limited", "Pings dropped for exceeding the per-session rate.", c.pings_rate_limited),
            ("ztna_directories_sent", "Directories sent to users, in answer to a ping or pushed.", c.directories_sent),
            ("ztna_directories_pushed", "Directories pushed unprompted after a policy or connector change.", c.directories_pushed),
            ("ztna_directory_parts_sent", "Directory parts (control messages) sent.", c.directory_parts_sent),
            ("ztna_pongs_sent", "Pongs sent in answer to pings.", c.pongs_sent),
            ("ztna_probes_sent", "Keepalive probes sent to connectors and peer relays.", c.probes_sent),
            ("ztna_peers_lost", "Connectors and peer relays taken out of the routes for not answering probes.", c.peers_lost),
            ("ztna_revoked_refused", "Handshakes refused because the certificate is revoked.", c.revoked_refused),
            ("ztna_pinned_closed", "Connector and user sessions closed by a policy reload that pins other static keys for their id.", c.pinned_closed),
            ("ztna_unlisted_closed", "User and connector sessions closed by a policy reload that no longer lists their identity.", c.unlisted_closed),
            ("ztna_revoked_closed", "Sessions closed because a reload revoked their certificate.", c.revoked_closed),
            ("ztna_cert_renewals", "Renewed certificates of this relay taken from its files without a restart.", c.cert_renewals),
            ("ztna_cert_renewals_refused", "Changed key or certificate files refused (the log says why).", c.cert_renewals_refused),
        ] {
            counter(&mut e, name, help, None, value)?;
        }
        {
            let mut family = e.encode_descriptor(
                "ztna_audit_lines",
                "Audit log lines written, by kind: first (a pair's first line), aggregate (its counts in a later interval), summary (what the line bound or full tables left out).",
                None,
                MetricType::Counter,
            )?;
            let a = &c.audit;
            for (kind, n) in [
                ("first", a.first_lines),
                ("aggregate", a.aggregate_lines),
                ("summary", a.summary_lines),
            ] {
                ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
            }
        }
        for (name, help, value) in [
            ("ztna_audit_decisions", "Policy decisions (frames) the audit log counted.", c.audit.decisions),
            ("ztna_audit_suppressed_pairs", "Audit lines of (user, service, verdict) pairs left out by the per-interval line bound (counted in summary lines).", c.audit.suppressed_pairs),
            ("ztna_audit_overflow_frames", "Decisions of pairs that found no room in a worker's audit table or the interval's map (counted in summary lines only).", c.audit.overflow_frames),
        ] {
            counter(&mut e, name, help, None, value)?;
        }
        gauge(
            &mut e,
            "ztna_cert_not_after_seconds",
            "End of validity of the certificate this relay presents, unix seconds: alert well before it (renew with `relay ca issue --force`).",
            c.cert_not_after as i64,
        )?;
        gauge(
            &mut e,
            "ztna_policy_epoch",
            "Policies loaded since start.",
            shared.policy_epoch.load(Ordering::Relaxed) as i64,
        )?;
        counter(
            &mut e,
            "ztna_policy_rejected",
            "Policy reloads rejected.",
            None,
            shared.policy_rejected.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "ztna_relay_handshakes_refused",
            "Relay handshakes refused: the key is in no relay record of the mesh view.",
            None,
            shared.relay_refused.load(Ordering::Relaxed),
        )?;
        let mesh = &shared.mesh;
        if mesh.enabled.load(Ordering::Relaxed) {
            let flag = |b: &AtomicBool| i64::from(b.load(Ordering::Relaxed));
            gauge(
                &mut e,
                "ztna_mesh_etcd_watch_connected",
                "1 while the mesh's etcd watch is live; 0: routing on the last view seen.",
                flag(&mesh.watch_connected),
            )?;
            gauge(
                &mut e,
                "ztna_mesh_etcd_registered",
                "1 while this relay's registration (its lease) is kept alive in etcd.",
                flag(&mesh.registered),
            )?;
            gauge(
                &mut e,
                "ztna_mesh_view_revision",
                "The etcd revision of the mesh view in force.",
                mesh.revision.load(Ordering::Relaxed) as i64,
            )?;
            gauge(
                &mut e,
                "ztna_mesh_links",
                "Peer relays this relay holds links with.",
                shared.mesh_links.load().len() as i64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoStats;
    use crate::shared::WorkerStats;

    #[test]
    fn audit_counters_are_rendered() {
        let shared = Arc::new(Shared::new(
            proto::policy::CompiledPolicy::compile(&proto::policy::PolicyFile::default()).unwrap(),
            1,
        ));
        shared.publish_control(&crate::control::ControlStats {
            audit: crate::audit::AuditStats {
                decisions: 11,
                first_lines: 2,
                aggregate_lines: 3,
                summary_lines: 4,
                suppressed_pairs: 5,
                overflow_frames: 6,
            },
            ..crate::control::ControlStats::default()
        });
        let text = render(&shared);
        for line in [
            "ztna_audit_lines_total{kind=\"first\"} 2\n",
            "ztna_audit_lines_total{kind=\"aggregate\"} 3\n",
            "ztna_audit_lines_total{kind=\"summary\"} 4\n",
            "ztna_audit_decisions_total 11\n",
            "ztna_audit_suppressed_pairs_total 5\n",
            "ztna_audit_overflow_frames_total 6\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn io_drop_counters_are_rendered_per_worker() {
        let shared = Arc::new(Shared::new(
            proto::policy::CompiledPolicy::compile(&proto::policy::PolicyFile::default()).unwrap(),
            2,
        ));
        for (id, base) in [(0usize, 10u64), (1, 20)] {
            let io = IoStats {
                send_dropped: base + 1,
                recv_no_buffers: base + 2,
                recv_truncated: base + 3,
                recv_errors: base + 4,
                busy_poll_served: base + 5,
                busy_poll_missed: base + 6,
                unresolved: base + 7,
                busy_poll_time_ns: base * 100_000_000,
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
            ("io_busy_poll_served_total", 5),
            ("io_busy_poll_missed_total", 6),
            ("io_unresolved_total", 7),
        ] {
            assert!(
                text.contains(&format!(
                    "# TYPE ztna_{} counter\n",
                    name.trim_end_matches("_total")
                )),
                "{name} undeclared in:\n{text}"
            );
            for (worker, base) in [(0, 10), (1, 20)] {
                let line = format!("ztna_{name}{{worker=\"{worker}\"}} {}\n", base + offset);
                assert!(text.contains(&line), "missing {line:?} in:\n{text}");
            }
        }
        for line in [
            "# TYPE ztna_io_busy_poll_seconds counter\n",
            "ztna_io_busy_poll_seconds_total{worker=\"0\"} 1.0\n",
            "ztna_io_busy_poll_seconds_total{worker=\"1\"} 2.0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_counter_of_the_exit_report_is_exported() {
        let shared = Arc::new(Shared::new(
            proto::policy::CompiledPolicy::compile(&proto::policy::PolicyFile::default()).unwrap(),
            1,
        ));
        shared.publish(
            0,
            WorkerStats {
                keepalives: 3,
                control_frames: 4,
                handshakes_shed: 5,
                control_shed: 6,
                ..WorkerStats::default()
            },
        );
        let mut c = crate::control::ControlStats {
            handshakes_failed: 3,
            cookie_replies: 7,
            pongs_sent: 8,
            directory_parts_sent: 9,
            ..Default::default()
        };
        c.handshakes_rejected.count(HandshakeReject::Role);
        c.handshakes_rejected.count(HandshakeReject::Role);
        c.handshakes_rejected.count(HandshakeReject::BadMac1);
        shared.publish_control(&c);
        let text = render(&shared);
        for line in [
            "ztna_keepalive_frames_total{worker=\"0\"} 3\n",
            "ztna_control_frames_total{worker=\"0\"} 4\n",
            "ztna_handshakes_shed_total{worker=\"0\"} 5\n",
            "ztna_control_shed_total{worker=\"0\"} 6\n",
            "ztna_cookie_replies_total 7\n",
            "ztna_pongs_sent_total 8\n",
            "ztna_directory_parts_sent_total 9\n",
            "ztna_handshakes_total{result=\"failed\"} 3\n",
            "ztna_handshakes_rejected_total{reason=\"role\"} 2\n",
            "ztna_handshakes_rejected_total{reason=\"bad_mac1\"} 1\n",
            "ztna_handshakes_rejected_total{reason=\"replay\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
