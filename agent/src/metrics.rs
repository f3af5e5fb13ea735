//! `GET /metrics`: the agent's counters in the OpenMetrics text format, for
//! Prometheus.
//!
//! Built with the `prometheus-client` crate: one [`Collector`] reads the
//! status snapshot the agent's threads already publish ([`StatusBoard`]) at
//! scrape time, so nothing on the packet path changes. Names carry the
//! `ztna_agent_` prefix; counters end in `_total` and byte counts in
//! `_bytes` (base units), as OpenMetrics asks.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::status::StatusBoard;

/// The metrics of the agent publishing to `board`.
pub fn registry(board: StatusBoard) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusCollector(board)));
    registry
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Reads the status snapshot on every scrape.
#[derive(Debug)]
struct StatusCollector(StatusBoard);

use relay::metrics::{counter, gauge};

impl Collector for StatusCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let l = &s.link;
        {
            let info = ConstGauge::new(1i64);
            let mut family = e.encode_descriptor(
                "ztna_agent_info",
                "The agent: its role, name, certificate id and version (always 1).",
                None,
                info.metric_type(),
            )?;
            let id = s.id.to_string();
            let labels = [
                ("role", s.role.as_str()),
                ("name", s.name.as_str()),
                ("id", id.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ];
            info.encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut e,
            "ztna_agent_relay_up",
            "1 while the hop session with the relay is up.",
            i64::from(l.hop_up),
        )?;
        counter(
            &mut e,
            "ztna_agent_handshakes",
            "Hop sessions established with the relay.",
            None,
            l.handshakes,
        )?;
        counter(
            &mut e,
            "ztna_agent_hop_lost",
            "Hop sessions presumed lost (the relay went silent).",
            None,
            l.hop_lost,
        )?;
        counter(
            &mut e,
            "ztna_agent_frames_sent",
            "Frames sent to the relay.",
            None,
            l.frames_out,
        )?;
        counter(
            &mut e,
            "ztna_agent_frames_received",
            "Frames received from the relay and accepted.",
            None,
            l.frames_in,
        )?;
        counter(
            &mut e,
            "ztna_agent_sent",
            "Bytes of frames sent to the relay.",
            Some(&Unit::Bytes),
            l.bytes_out,
        )?;
        counter(
            &mut e,
            "ztna_agent_received",
            "Bytes of frames received from the relay.",
            Some(&Unit::Bytes),
            l.bytes_in,
        )?;
        counter(
            &mut e,
            "ztna_agent_send_dropped",
            "Frames that could not be sent to the relay.",
            None,
            l.send_dropped,
        )?;
        counter(
            &mut e,
            "ztna_agent_open_dropped",
            "Frames from the relay dropped: no end-to-end session, or they did not open.",
            None,
            l.open_dropped,
        )?;
        counter(
            &mut e,
            "ztna_agent_keepalives_sent",
            "End-to-end keepalives sent: empty records answering a flow that only came in for 10 s, so that its sender keeps the session.",
            None,
            l.keepalives_out,
        )?;
        counter(
            &mut e,
            "ztna_agent_keepalives_received",
            "End-to-end keepalives received (opened; nothing delivered).",
            None,
            l.keepalives_in,
        )?;
        gauge(
            &mut e,
            "ztna_agent_cert_not_after_seconds",
            "End of validity of the certificate in use, unix seconds: alert well before it (renew over the certificate file; the agent takes it without a restart).",
            l.cert_not_after as i64,
        )?;
        counter(
            &mut e,
            "ztna_agent_cert_renewals",
            "Renewed certificates taken from the files while running.",
            None,
            l.cert_renewals,
        )?;
        gauge(
            &mut e,
            "ztna_agent_errors",
            "Problems `agent status` lists now (the last 16).",
            s.errors.len() as i64,
        )?;
        gauge(
            &mut e,
            "ztna_agent_services",
            "Services in the directory (client) or users' services being served (connector).",
            s.services.len() as i64,
        )?;
        let per_service = |e: &mut DescriptorEncoder<'_>,
                           name: &str,
                           help: &str,
                           unit: Option<&Unit>,
                           value: &dyn Fn(&crate::status::ServiceStatus) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut family = e.encode_descriptor(
                name,
                help,
                unit,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for v in &s.services {
                let labels = [("service", v.name.as_str())];
                ConstCounter::new(value(v)).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        per_service(
            &mut e,
            "ztna_agent_service_in",
            "Bytes from applications into the tunnel, per service.",
            Some(&Unit::Bytes),
            &|v| v.bytes_in,
        )?;
        per_service(
            &mut e,
            "ztna_agent_service_out",
            "Bytes from the tunnel to applications, per service.",
            Some(&Unit::Bytes),
            &|v| v.bytes_out,
        )?;
        {
            let mut family = e.encode_descriptor(
                "ztna_agent_service_flows",
                "Open connections and UDP flows, per service.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for v in &s.services {
                let labels = [("service", v.name.as_str())];
                ConstGauge::new(v.flows as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ServiceStatus, Status};

    #[test]
    fn renders_the_snapshot_in_openmetrics_text() {
        let board = StatusBoard::new();
        board.update(|s: &mut Status| {
            s.role = "client".into();
            s.name = "alice".into();
            s.id = 1001;
            s.link.hop_up = true;
            s.link.frames_out = 7;
            s.link.bytes_in = 4096;
            s.services.push(ServiceStatus {
                id: 10,
                name: "web".into(),
                flows: 2,
                bytes_in: 300,
                bytes_out: 900,
                ..ServiceStatus::default()
            });
        });
        let text = render(&registry(board.clone()));
        for line in [
            "ztna_agent_relay_up 1",
            "ztna_agent_frames_sent_total 7",
            "ztna_agent_received_bytes_total 4096",
            "ztna_agent_service_in_bytes_total{service=\"web\"} 300",
            "ztna_agent_service_out_bytes_total{service=\"web\"} 900",
            "ztna_agent_service_flows{service=\"web\"} 2",
            "# TYPE ztna_agent_frames_sent counter",
            "# UNIT ztna_agent_received_bytes bytes",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(text.contains("role=\"client\""), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        // Read at scrape time: a later update shows in the next scrape.
        board.update(|s: &mut Status| s.link.frames_out = 9);
        assert!(render(&registry(board)).contains("ztna_agent_frames_sent_total 9\n"));
    }
}
