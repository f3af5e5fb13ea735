//! The relay's configuration file (TOML) and its defaults.
//!
//! ```toml
//! listen = "0.0.0.0:51820"
//! workers = 0                # 0: one per core
//! io = "uring"               # or "mmsg"
//! mode = "ztna"              # or "vpn", "forward" (for measurement only)
//! policy = "/etc/ztna/policy.toml"
//! ca = "/etc/ztna/ca.pub"
//! certificate = "/etc/ztna/relay.cert"
//! key = "/etc/ztna/relay.key"
//! metrics = "127.0.0.1:9100" # optional Prometheus endpoint
//! batch = 1024               # datagrams handled per poll, at most
//! busy_poll_us = 0           # spin this long for datagrams before sleeping (0: off)
//! log_format = "text"        # or "json": one JSON object per log line
//!
//! [audit]                    # the audit log of access decisions (optional)
//! enabled = true
//! interval_ms = 1000         # aggregates written every interval
//! max_lines = 1000           # pair lines per interval at most, then a summary
//! table_slots = 4096         # per worker: (user, service, verdict) counters
//! remember = 65536           # pairs remembered as already reported
//! ```
//!
//! Command-line flags override the file (see `relay run --help`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proto::datapath::Mode;
use serde::Deserialize;

use crate::audit::AuditConfig;
use crate::io::{Backend, IoConfig};
use crate::logs::LogFormat;

/// Default UDP port of the relay.
pub const DEFAULT_PORT: u16 = 51820;

/// Everything a relay needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the workers' sockets bind (all of them, with `SO_REUSEPORT`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per available core.
    #[serde(default)]
    pub workers: usize,
    /// Pin worker `k` to core `first_core + k`.
    #[serde(default)]
    pub first_core: usize,
    /// Whether to pin workers to cores at all.
    #[serde(default = "yes")]
    pub pin: bool,
    /// I/O backend; `uring` falls back to `mmsg` when io_uring cannot start.
    #[serde(default = "default_io", with = "serde_str")]
    pub io: Backend,
    /// What the datapath checks per frame.
    #[serde(default = "default_mode", with = "serde_str")]
    pub mode: Mode,
    /// The access policy file (TOML); reloaded on SIGHUP and when it changes.
    pub policy: PathBuf,
    /// The CA's public key file: certificates of peers must chain to it.
    pub ca: PathBuf,
    /// This relay's certificate.
    pub certificate: PathBuf,
    /// This relay's static X25519 private key.
    pub key: PathBuf,
    /// Optional address for the Prometheus text endpoint.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Receive buffers per worker, in [`crate::io::BUFFERS`] (see
    /// [`IoConfig::buffers`]).
    #[serde(default = "default_buffers")]
    pub buffers: usize,
    /// Size of each receive buffer; 65536 holds a full GRO run.
    #[serde(default = "default_buffer_size")]
    pub buffer_size: usize,
    /// Datagrams a worker handles per poll, at most (see
    /// [`IoConfig::batch`]).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Busy polling: microseconds a worker spins looking for datagrams
    /// before it sleeps in the kernel (0: off, the default; see
    /// [`IoConfig::busy_poll`]). At most [`crate::io::MAX_BUSY_POLL`].
    #[serde(default)]
    pub busy_poll_us: u64,
    /// Registration in the mesh's etcd; absent: a standalone relay.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    /// How log lines are written on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The audit log of access decisions.
    #[serde(default)]
    pub audit: AuditSection,
}

/// `[audit]`: the audit log of access decisions (see [`crate::audit`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Count and log access decisions at all.
    pub enabled: bool,
    /// How often the aggregates are written, in milliseconds.
    pub interval_ms: u64,
    /// Pair lines per interval at most; the rest go into one summary line.
    pub max_lines: usize,
    /// Slots of each worker's table of (user, service, verdict) counters.
    pub table_slots: usize,
    /// Pairs remembered as already reported.
    pub remember: usize,
}

impl Default for AuditSection {
    fn default() -> AuditSection {
        let d = AuditConfig::default();
        AuditSection {
            enabled: d.enabled,
            interval_ms: d.interval.as_millis() as u64,
            max_lines: d.max_lines,
            table_slots: d.table_slots,
            remember: d.remember,
        }
    }
}

impl AuditSection {
    /// The relay's audit settings.
    pub fn to_config(&self) -> AuditConfig {
        AuditConfig {
            enabled: self.enabled,
            interval: std::time::Duration::from_millis(self.interval_ms),
            max_lines: self.max_lines,
            table_slots: self.table_slots,
            remember: self.remember,
        }
    }
}

/// `[mesh]`: where the mesh's membership lives and who this relay is in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// etcd's client URL, `http://host:port`.
    pub etcd: String,
    /// This relay's id in the mesh: 1-64 of `[A-Za-z0-9._-]`, unique.
    pub relay_id: String,
    /// Its region, for nearest-relay choices.
    #[serde(default)]
    pub region: String,
    /// The address peers reach it at (default: `listen`, which must then
    /// not be a wildcard address).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The only relays (by id) to hold direct links with; the rest of the
    /// mesh is reached through them. Absent: a link with every relay in
    /// etcd. Both ends of a link must allow it.
    #[serde(default)]
    pub peers: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_io() -> Backend {
    Backend::Uring
}
fn default_mode() -> Mode {
    Mode::Ztna
}
fn default_buffers() -> usize {
    64
}
fn default_buffer_size() -> usize {
    65536
}
fn default_batch() -> usize {
    IoConfig::default().batch
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or names unknown settings.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            for p in [
                &mut config.policy,
                &mut config.ca,
                &mut config.certificate,
                &mut config.key,
            ] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges; fills `workers` when it is 0.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            self.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        if self.workers > 256 {
            return Err(ConfigError::Invalid(format!(
                "workers = {} is more than 256; use one per core",
                self.workers
            )));
        }
        IoConfig::check_buffers(self.buffers).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if !(2048..=65536).contains(&self.buffer_size) {
            return Err(ConfigError::Invalid(format!(
                "buffer_size = {} must be between 2048 and 65536",
                self.buffer_size
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(ConfigError::Invalid(format!(
                "batch = {} must be between 1 and {MAX_BATCH}",
                self.batch
            )));
        }
        IoConfig::check_busy_poll(self.busy_poll())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.audit
            .to_config()
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }
}

impl Config {
    /// The busy-poll budget (`None`: off).
    pub fn busy_poll(&self) -> Option<std::time::Duration> {
        (self.busy_poll_us > 0).then(|| std::time::Duration::from_micros(self.busy_poll_us))
    }

    /// The workers' I/O settings.
    pub fn io_config(&self) -> IoConfig {
        IoConfig {
            buffers: self.buffers,
            buffer_size: self.buffer_size,
            batch: self.batch,
            busy_poll: self.busy_poll(),
            ..IoConfig::default()
        }
    }
}

/// The largest `batch` the config accepts: far more than the receive
/// buffers of a poll hold at once.
pub const MAX_BATCH: usize = 65_536;

/// (De)serializes a `FromStr + Display` value as a string.
mod serde_str {
    use core::fmt::Display;
    use core::str::FromStr;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults_and_relative_paths() {
        let dir = std::env::temp_dir().join(format!("relay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            "policy = \"p.toml\"\nca = \"ca.pub\"\ncertificate = \"r.cert\"\nkey = \"/abs/r.key\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.mode, Mode::Ztna);
        assert!(c.workers >= 1);
        assert_eq!(c.policy, dir.join("p.toml"));
        assert_eq!(c.key, PathBuf::from("/abs/r.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mesh_table_parses_and_rejects_typos() {
        let dir = std::env::temp_dir().join(format!("relay-config-mesh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        let base = "policy = \"p\"\nca = \"c\"\ncertificate = \"r\"\nkey = \"k\"\n";
        std::fs::write(
            &path,
            format!("{base}[mesh]\netcd = \"http://127.0.0.1:2379\"\nrelay_id = \"a\"\n"),
        )
        .unwrap();
        let m = Config::load(&path).unwrap().mesh.unwrap();
        assert_eq!(
            (m.etcd.as_str(), m.relay_id.as_str(), m.advertise),
            ("http://127.0.0.1:2379", "a", None)
        );
        std::fs::write(
            &path,
            format!("{base}[mesh]\netcd = \"x\"\nrelay = \"a\"\n"),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("relay"), "{e}");
        std::fs::write(&path, base).unwrap();
        assert!(Config::load(&path).unwrap().mesh.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let dir = std::env::temp_dir().join(format!("relay-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "polcy = \"p\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("polcy"), "{e}");
        std::fs::write(
            &path,
            "policy = \"p\"\nca = \"c\"\ncertificate = \"r\"\nkey = \"k\"\nmode = \"fast\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown mode `fast`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn audit_and_log_format_parse_with_defaults_and_checks() {
        let dir = std::env::temp_dir().join(format!("relay-config-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        let base = "policy = \"p\"\nca = \"c\"\ncertificate = \"r\"\nkey = \"k\"\n";
        std::fs::write(&path, base).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.audit.to_config(), AuditConfig::default());
        std::fs::write(
            &path,
            format!("{base}log_format = \"json\"\n[audit]\ninterval_ms = 250\nmax_lines = 10\n"),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let a = c.audit.to_config();
        assert_eq!(
            (a.enabled, a.interval.as_millis(), a.max_lines),
            (true, 250, 10)
        );
        std::fs::write(&path, format!("{base}[audit]\nmax_lines = 0\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("max_lines must be at least 1"), "{e}");
        std::fs::write(&path, format!("{base}[audit]\nintervall_ms = 5\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("intervall_ms"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batch_and_busy_poll_parse_with_defaults_and_bounds() {
        let dir = std::env::temp_dir().join(format!("relay-config-poll-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        let base = "policy = \"p\"\nca = \"c\"\ncertificate = \"r\"\nkey = \"k\"\n";
        std::fs::write(&path, base).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.io_config(), IoConfig::default(), "off by default");
        std::fs::write(&path, format!("{base}batch = 8\nbusy_poll_us = 50\n")).unwrap();
        let io = Config::load(&path).unwrap().io_config();
        assert_eq!(
            (io.batch, io.busy_poll),
            (8, Some(std::time::Duration::from_micros(50)))
        );
        for (line, want) in [
            ("batch = 0", "batch = 0 must be between 1 and 65536"),
            (
                "busy_poll_us = 10001",
                "busy poll of 10001 us is more than 10000 us",
            ),
        ] {
            std::fs::write(&path, format!("{base}{line}\n")).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn buffer_count_uses_the_io_range() {
        let dir = std::env::temp_dir().join(format!("relay-config-buf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        let base = "policy = \"p\"\nca = \"c\"\ncertificate = \"r\"\nkey = \"k\"\n";
        let (lo, hi) = (*crate::io::BUFFERS.start(), *crate::io::BUFFERS.end());
        for (count, ok) in [(lo - 1, false), (lo, true), (hi, true), (hi + 1, false)] {
            std::fs::write(&path, format!("{base}buffers = {count}\n")).unwrap();
            match Config::load(&path) {
                Ok(c) => {
                    assert!(ok, "buffers = {count} accepted");
                    assert_eq!(c.buffers, count);
                }
                Err(e) => {
                    assert!(!ok, "buffers = {count} refused: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("config: buffers = {count} must be between {lo} and {hi}")
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
