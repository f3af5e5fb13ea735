//! Log output of the relay and agent binaries: `tracing` events on stderr,
//! as text (the default) or as one JSON object per line for log shippers
//! (`--log-format json`). The audit log ([`crate::audit`]) is the events of
//! target `audit` in the same stream.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` and the
    /// event's fields (`message` included) at the top level.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`),
/// stderr, `format`. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: a log file or journal gets plain text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
