//! The agent's configuration file (TOML) and its validation.
//!
//! One file per agent. Which role the agent plays comes from its
//! certificate: a `user` certificate makes a client, a `connector`
//! certificate a connector. Every error names the file and the key at fault
//! and says what to write instead.
//!
//! ```toml
//! [relay]
//! address = "relay.example.net:51820"
//! public_key = "64 hex characters"   # the relay's X25519 static public key
//!
//! [identity]
//! ca = "/etc/ztna/ca.pub"
//! cert = "/etc/ztna/alice.cert"
//! key = "/etc/ztna/alice.key"
//!
//! [client]                          # user certificates only
//! mode = "proxy"                    # or "tun" (needs CAP_NET_ADMIN)
//! [[client.listen]]
//! service = "postgres-prod"         # a service name from the policy
//! listen = "127.0.0.1:15432"
//!
//! [connector]                       # connector certificates only
//! policy = "/etc/ztna/policy.toml"  # its own copy: every session is checked against it
//!
//! [status]
//! listen = "127.0.0.1:7070"         # `agent status` asks here
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default MTU of the tunnel's inner IP packets: a 1500-byte path minus
/// IPv6 (40) and UDP (8) headers and the frame overhead (60), rounded down.
pub const DEFAULT_MTU: u16 = 1380;
/// Smallest MTU accepted: IPv6's minimum link MTU.
pub const MIN_MTU: u16 = 1280;
/// Largest MTU accepted: the frame must fit a UDP datagram.
pub const MAX_MTU: u16 = 65_000;
/// Default address of the status endpoint.
pub const DEFAULT_STATUS: &str = "127.0.0.1:7070";

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names line, column and key).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key at fault, e.g. `relay.public_key`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

/// How a client lets applications in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientMode {
    /// Per-service local listeners over a user-space TCP/IP stack; no
    /// privileges.
    #[default]
    Proxy,
    /// A TUN device with a virtual address per service; needs
    /// `CAP_NET_ADMIN`.
    Tun,
}

/// Transport of a local listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A TCP listener.
    Tcp,
    /// A UDP socket.
    Udp,
}

/// The whole file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The relay this agent connects to.
    pub relay: RelayConfig,
    /// This agent's identity files.
    pub identity: IdentityConfig,
    /// Client settings (user certificates).
    #[serde(default)]
    pub client: Option<ClientConfig>,
    /// Connector settings (connector certificates).
    #[serde(default)]
    pub connector: Option<ConnectorConfig>,
    /// The status endpoint.
    #[serde(default)]
    pub status: StatusConfig,
    /// Tunnel tuning.
    #[serde(default)]
    pub tunnel: TunnelConfig,
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// `host:port` of the relay.
    pub address: String,
    /// The relay's X25519 static public key, 64 hex characters (printed by
    /// `relay keygen`).
    pub public_key: String,
}

/// `[identity]`: paths are relative to the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The CA's public key file.
    pub ca: PathBuf,
    /// This agent's certificate.
    pub cert: PathBuf,
    /// This agent's static private key.
    pub key: PathBuf,
}

/// `[client]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `proxy` or `tun`.
    #[serde(default)]
    pub mode: ClientMode,
    /// Local listeners (proxy mode).
    #[serde(default)]
    pub listen: Vec<ListenConfig>,
    /// TUN device settings (tun mode).
    #[serde(default)]
    pub tun: TunSettings,
}

/// One `[[client.listen]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The service's name in the policy.
    pub service: String,
    /// Local address to listen on, e.g. `127.0.0.1:15432`.
    pub listen: SocketAddr,
    /// `tcp` or `udp`; defaults to the service's protocol.
    #[serde(default)]
    pub protocol: Option<Transport>,
}

/// `[client.tun]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunSettings {
    /// Device name.
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// Address of the DNS responder for service names (on the device).
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// Try `IFF_VNET_HDR` segmentation offload.
    #[serde(default = "yes")]
    pub offload: bool,
}

impl Default for TunSettings {
    fn default() -> Self {
        TunSettings {
            name: default_tun_name(),
            dns: None,
            offload: true,
        }
    }
}

fn default_tun_name() -> String {
    "ztna0".to_owned()
}

fn yes() -> bool {
    true
}

/// `[connector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// The connector's own copy of the access policy; reloaded when its
    /// content changes.
    pub policy: PathBuf,
}

/// `[status]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Loopback address of the status endpoint; `"off"` is not a value:
    /// leave the table out to use the default.
    #[serde(default = "default_status")]
    pub listen: SocketAddr,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_status(),
        }
    }
}

fn default_status() -> SocketAddr {
    DEFAULT_STATUS.parse().expect("constant address parses")
}

/// `[tunnel]`: timers and sizes; the defaults suit a real network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// MTU of the inner IP packets.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Silence from the relay after which the agent pings it, in ms.
    #[serde(default = "default_ping_ms")]
    pub ping_after_ms: u64,
    /// Silence from the relay after which the agent gives up on the hop
    /// session and handshakes again, in ms.
    #[serde(default = "default_dead_ms")]
    pub dead_after_ms: u64,
    /// On-demand sessions idle this long are closed, in seconds.
    #[serde(default = "default_idle_s")]
    pub idle_close_s: u64,
    /// TCP buffer per direction per connection in the user-space stack,
    /// in KiB.
    #[serde(default = "default_tcp_buffer")]
    pub tcp_buffer_kib: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            mtu: default_mtu(),
            ping_after_ms: default_ping_ms(),
            dead_after_ms: default_dead_ms(),
            idle_close_s: default_idle_s(),
            tcp_buffer_kib: default_tcp_buffer(),
        }
    }
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_ping_ms() -> u64 {
    2_000
}
fn default_dead_ms() -> u64 {
    6_000
}
fn default_idle_s() -> u64 {
    300
}
fn default_tcp_buffer() -> usize {
    1024
}

impl TunnelConfig {
    /// Silence before a ping.
    pub fn ping_after(&self) -> Duration {
        Duration::from_millis(self.ping_after_ms)
    }
    /// Silence before a new hop handshake.
    pub fn dead_after(&self) -> Duration {
        Duration::from_millis(self.dead_after_ms)
    }
    /// Idle time before an on-demand session closes.
    pub fn idle_close(&self) -> Duration {
        Duration::from_secs(self.idle_close_s)
    }
}

impl AgentConfig {
    /// Reads, parses and checks `path`; relative identity paths are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut cfg = AgentConfig::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.identity.ca,
            &mut cfg.identity.cert,
            &mut cfg.identity.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(c) = cfg.connector.as_mut() {
            if c.policy.is_relative() {
                c.policy = base.join(&c.policy);
            }
        }
        Ok(cfg)
    }

    /// Parses and checks `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        if parse_public_key(&self.relay.public_key).is_none() {
            return Err(invalid(
                "relay.public_key",
                "expected 64 hex characters (the relay's static public key, printed by `relay keygen`)".into(),
            ));
        }
        if self.relay.address.trim().is_empty() {
            return Err(invalid("relay.address", "expected \"host:port\"".into()));
        }
        let t = &self.tunnel;
        if !(MIN_MTU..=MAX_MTU).contains(&t.mtu) {
            return Err(invalid(
                "tunnel.mtu",
                format!("{} is out of range {MIN_MTU}..={MAX_MTU}", t.mtu),
            ));
        }
        if t.ping_after_ms == 0 || t.dead_after_ms <= t.ping_after_ms {
            return Err(invalid(
                "tunnel.dead_after_ms",
                format!(
                    "must be greater than tunnel.ping_after_ms ({}), which must be > 0",
                    t.ping_after_ms
                ),
            ));
        }
        if !(16..=65_536).contains(&t.tcp_buffer_kib) {
            return Err(invalid(
                "tunnel.tcp_buffer_kib",
                format!("{} is out of range 16..=65536", t.tcp_buffer_kib),
            ));
        }
        if self.client.is_some() && self.connector.is_some() {
            return Err(invalid(
                "client",
                "a config has [client] or [connector], not both: the certificate's role decides which one is used".into(),
            ));
        }
        if !self.status.listen.ip().is_loopback() {
            return Err(invalid(
                "status.listen",
                format!(
                    "{} is not a loopback address; the status endpoint is unauthenticated",
                    self.status.listen
                ),
            ));
        }
        if let Some(c) = &self.client {
            let mut seen = std::collections::HashSet::new();
            for (i, l) in c.listen.iter().enumerate() {
                if !seen.insert((l.listen, l.protocol)) {
                    return Err(invalid(
                        &format!("client.listen[{i}].listen"),
                        format!("{} is used twice", l.listen),
                    ));
                }
            }
            if c.mode == ClientMode::Tun && c.tun.name.len() >= 16 {
                return Err(invalid(
                    "client.tun.name",
                    "device names are at most 15 bytes".into(),
                ));
            }
        }
        Ok(())
    }

    /// The relay's static public key (checked at parse time).
    pub fn relay_key(&self) -> [u8; 32] {
        parse_public_key(&self.relay.public_key).unwrap_or([0; 32])
    }
}

/// Parses 64 hex characters.
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn base(extra: &str) -> String {
        format!(
            "[relay]\naddress = \"127.0.0.1:51820\"\npublic_key = \"{KEY}\"\n\
             [identity]\nca = \"ca.pub\"\ncert = \"a.cert\"\nkey = \"a.key\"\n{extra}"
        )
    }

    fn err(text: &str) -> String {
        AgentConfig::parse(text, Path::new("agent.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let c = AgentConfig::parse(&base(""), Path::new("a.toml")).unwrap();
        assert_eq!(c.tunnel.mtu, DEFAULT_MTU);
        assert_eq!(c.status.listen, default_status());
        assert_eq!(c.relay_key()[1], 0x11);
        assert!(c.client.is_none() && c.connector.is_none());
    }

    #[test]
    fn client_listeners_parse() {
        let c = AgentConfig::parse(
            &base("[client]\nmode = \"proxy\"\n[[client.listen]]\nservice = \"db\"\nlisten = \"127.0.0.1:15432\"\n"),
            Path::new("a.toml"),
        )
        .unwrap();
        let client = c.client.unwrap();
        assert_eq!(client.mode, ClientMode::Proxy);
        assert_eq!(client.listen[0].service, "db");
        assert_eq!(client.listen[0].protocol, None);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&base("[tunnel]\nmtu = 100\n")).contains("tunnel.mtu"));
        assert!(err(&base("[status]\nlisten = \"0.0.0.0:7070\"\n")).contains("loopback"));
        assert!(err(&base("[client]\nmoed = \"tun\"\n")).contains("moed"));
        assert!(
            err(&base("[tunnel]\nping_after_ms = 10\ndead_after_ms = 5\n"))
                .contains("dead_after_ms")
        );
        let bad_key = base("").replace(KEY, "zz");
        assert!(err(&bad_key).contains("relay.public_key"));
        assert!(err(&base(
            "[client]\n[[client.listen]]\nservice = \"a\"\nlisten = \"127.0.0.1:1\"\n[[client.listen]]\nservice = \"b\"\nlisten = \"127.0.0.1:1\"\n"
        ))
        .contains("used twice"));
        assert!(err(&base("[client]\n[connector]\npolicy = \"p\"\n")).contains("not both"));
    }

    #[test]
    fn public_key_parser() {
        assert_eq!(parse_public_key(KEY).unwrap()[31], 0xff);
        assert!(parse_public_key(&KEY[1..]).is_none());
        assert!(parse_public_key(&format!("{}g", &KEY[1..])).is_none());
        // Multi-byte characters must not panic the chunking.
        assert!(parse_public_key(&"é".repeat(32)).is_none());
    }
}
