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
/// stderr, `format`. Call once, first thing (a second call changes
/// nothing).
pub fn init(format: LogFormat) {
    // Colours only on a terminal: a log file or journal gets plain text.
    let _ = try_init_with(format, std::io::stderr, std::io::stderr().is_terminal());
}

/// [`init`] with another writer (tests capture the lines with it), ANSI
/// colours in text only when `ansi`. Fails when a global subscriber is set
/// already.
pub fn try_init_with<W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    }
}
