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
/// The address of the DNS responder in tun mode (the first two hosts of
/// 100.80.0.0/16 are the device and the responder; services get the rest).
pub const DNS_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 80, 0, 2);
/// Largest `tunnel.ping_after_ms`: the relay's sessions must hear from the
/// agent well within their lifetime.
pub const MAX_PING_AFTER_MS: u64 = 60_000;
/// Largest `tunnel.dead_after_ms`.
pub const MAX_DEAD_AFTER_MS: u64 = 600_000;
/// Largest `tunnel.idle_close_s`: a week.
pub const MAX_IDLE_CLOSE_S: u64 = 7 * 86_400;

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
    /// The file is not valid TOML or has unknown, missing or mistyped
    /// keys.
    #[error("config {path}: {}{message}", where_.as_deref().map(|w| format!("{w}: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where: `line N, key`, when the parser knows.
        where_: Option<String>,
        /// The parser's message.
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
    /// `tcp` (the default) or `udp`.
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
            where_: e.span().map(|span| locate(text, span.start)),
            message: e.message().to_owned(),
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
        let port = self
            .relay
            .address
            .trim()
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok());
        if port.is_none_or(|p| p == 0) {
            return Err(invalid(
                "relay.address",
                format!(
                    "'{}' is not host:port; write e.g. \"relay.example.net:51820\" or \"[2001:db8::1]:51820\"",
                    self.relay.address
                ),
            ));
        }
        let t = &self.tunnel;
        if !(MIN_MTU..=MAX_MTU).contains(&t.mtu) {
            return Err(invalid(
                "tunnel.mtu",
                format!("{} is out of range {MIN_MTU}..={MAX_MTU}", t.mtu),
            ));
        }
        if !(1..=MAX_PING_AFTER_MS).contains(&t.ping_after_ms) {
            return Err(invalid(
                "tunnel.ping_after_ms",
                format!(
                    "{} is out of range 1..={MAX_PING_AFTER_MS}",
                    t.ping_after_ms
                ),
            ));
        }
        if t.dead_after_ms <= t.ping_after_ms || t.dead_after_ms > MAX_DEAD_AFTER_MS {
            return Err(invalid(
                "tunnel.dead_after_ms",
                format!(
                    "{} must be greater than tunnel.ping_after_ms ({}) and at most {MAX_DEAD_AFTER_MS}",
                    t.dead_after_ms, t.ping_after_ms
                ),
            ));
        }
        if !(1..=MAX_IDLE_CLOSE_S).contains(&t.idle_close_s) {
            return Err(invalid(
                "tunnel.idle_close_s",
                format!(
                    "{} is out of range 1..={MAX_IDLE_CLOSE_S} (a week)",
                    t.idle_close_s
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
        if self.status.listen.port() == 0 {
            return Err(invalid(
                "status.listen",
                format!("port 0 picks a random port `agent status` cannot find; use a fixed one such as {DEFAULT_STATUS}"),
            ));
        }
        if let Some(c) = &self.client {
            if c.mode == ClientMode::Tun && !c.listen.is_empty() {
                return Err(invalid(
                    "client.listen",
                    "[[client.listen]] is for mode = \"proxy\"; in tun mode applications reach every service by its name through the TUN device: remove the listeners or set mode = \"proxy\"".into(),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, l) in c.listen.iter().enumerate() {
                if l.service.trim().is_empty() {
                    return Err(invalid(
                        &format!("client.listen[{i}].service"),
                        "is empty; write the service's name from the policy".into(),
                    ));
                }
                if l.listen.port() == 0 {
                    return Err(invalid(
                        &format!("client.listen[{i}].listen"),
                        format!("{}: port 0 picks a random port applications cannot know; use a fixed one", l.listen),
                    ));
                }
                if !seen.insert((l.listen, l.protocol.unwrap_or(Transport::Tcp))) {
                    return Err(invalid(
                        &format!("client.listen[{i}].listen"),
                        format!("{} is used twice", l.listen),
                    ));
                }
            }
            if let Some(dns) = c.tun.dns {
                let ok =
                    matches!(dns, SocketAddr::V4(a) if *a.ip() == DNS_ADDRESS && a.port() != 0);
                if !ok {
                    return Err(invalid(
                        "client.tun.dns",
                        format!("{dns}: the DNS responder answers on {DNS_ADDRESS} (the rest of 100.80.0.0/16 belongs to services); only its port may change, e.g. \"{DNS_ADDRESS}:5353\""),
                    ));
                }
            }
            let name = &c.tun.name;
            if c.mode == ClientMode::Tun
                && (name.is_empty()
                    || name.len() >= 16
                    || name.contains(['/', '\0'])
                    || name.chars().any(char::is_whitespace))
            {
                return Err(invalid(
                    "client.tun.name",
                    format!("'{name}' is not a device name: 1 to 15 bytes, no '/', spaces or NUL"),
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

/// Where a parse error's byte offset `at` falls in `text`: `line N, KEY`
/// with the key's dotted path (`tunnel.mtu`), or the table's when the
/// error is about a table header.
fn locate(text: &str, at: usize) -> String {
    let line_no = text.bytes().take(at).filter(|b| *b == b'\n').count() + 1;
    let mut table = String::new();
    let mut key = String::new();
    for line in text.lines().take(line_no) {
        let t = line.trim();
        key.clear();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').split(']').next().unwrap_or("");
            table = name.trim().to_owned();
        } else if let Some((k, _)) = t.split_once('=') {
            key = k.trim().to_owned();
        }
    }
    let path = match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    };
    if path.is_empty() {
        format!("line {line_no}")
    } else {
        format!("line {line_no}, {path}")
    }
}

/// Parses 64 hex characters (surrounding whitespace allowed).
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    proto::identity::key_from_hex(text.trim())
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
        // An entry without `protocol` is TCP: the same address with an
        // explicit "tcp" is a duplicate too.
        assert!(err(&base(
            "[client]\n[[client.listen]]\nservice = \"a\"\nlisten = \"127.0.0.1:1\"\n[[client.listen]]\nservice = \"b\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"tcp\"\n"
        ))
        .contains("used twice"));
        assert!(err(&base("[client]\n[connector]\npolicy = \"p\"\n")).contains("not both"));
    }

    #[test]
    fn parse_errors_name_the_line_and_the_key() {
        assert_eq!(
            err(&base("[client]\nmoed = \"tun\"\n")),
            "config agent.toml: line 9, client.moed: unknown field `moed`, expected one of `mode`, `listen`, `tun`"
        );
        assert_eq!(
            err(&base("[tunnel]\nmtu = \"big\"\n")),
            "config agent.toml: line 9, tunnel.mtu: invalid type: string \"big\", expected u16"
        );
        let missing = base("").replace(&format!("public_key = \"{KEY}\"\n"), "");
        assert_eq!(
            err(&missing),
            "config agent.toml: line 1, relay: missing field `public_key`"
        );
        assert!(err(&base("[relays]\n"))
            .starts_with("config agent.toml: line 8, relays: unknown field `relays`"));
        assert!(err("[relay\n").starts_with("config agent.toml: line 1, "));
        assert!(
            err(&base("[[client.listen]]\nlisten = \"nope\"\n")).starts_with(
                "config agent.toml: line 9, client.listen.listen: invalid socket address"
            )
        );
    }

    #[test]
    fn values_out_of_range_are_refused() {
        for (extra, key) in [
            ("[tunnel]\nping_after_ms = 0\n", "tunnel.ping_after_ms"),
            ("[tunnel]\nping_after_ms = 18446744073709551615\n", "tunnel.ping_after_ms"),
            ("[tunnel]\nping_after_ms = 9223372036854775807\n", "tunnel.ping_after_ms"),
            ("[tunnel]\ndead_after_ms = 9223372036854775807\n", "tunnel.dead_after_ms"),
            ("[tunnel]\ndead_after_ms = 18446744073709551615\n", "tunnel.dead_after_ms"),
            ("[tunnel]\nidle_close_s = 0\n", "tunnel.idle_close_s"),
            ("[status]\nlisten = \"127.0.0.1:0\"\n", "status.listen"),
            ("[client]\nmode = \"tun\"\n[client.tun]\nname = \"\"\n", "client.tun.name"),
            ("[client]\nmode = \"tun\"\n[client.tun]\nname = \"a/b\"\n", "client.tun.name"),
            ("[client.tun]\ndns = \"100.80.0.9:53\"\n", "client.tun.dns"),
            ("[client.tun]\ndns = \"[::1]:53\"\n", "client.tun.dns"),
            ("[client]\nmode = \"tun\"\n[[client.listen]]\nservice = \"db\"\nlisten = \"127.0.0.1:1\"\n", "client.listen"),
            ("[[client.listen]]\nservice = \"\"\nlisten = \"127.0.0.1:1\"\n", "client.listen[0].service"),
            ("[[client.listen]]\nservice = \"db\"\nlisten = \"127.0.0.1:0\"\n", "client.listen[0].listen"),
        ] {
            let e = err(&base(extra));
            assert!(e.contains(&format!(" {key}: ")), "{extra}: {e}");
        }
        for address in [
            "relay.example.net",
            "",
            ":51820",
            "host:0",
            "host:99999",
            "[::1]",
        ] {
            let text = base("").replace("127.0.0.1:51820", address);
            assert!(err(&text).contains("relay.address: "), "{address}");
        }
        for address in [
            "relay.example.net:51820",
            "[2001:db8::1]:51820",
            "10.0.0.1:1",
        ] {
            let text = base("").replace("127.0.0.1:51820", address);
            assert!(
                AgentConfig::parse(&text, Path::new("a.toml")).is_ok(),
                "{address}"
            );
        }
        let dns = base("[client]\nmode = \"tun\"\n[client.tun]\ndns = \"100.80.0.2:5353\"\n");
        assert!(AgentConfig::parse(&dns, Path::new("a.toml")).is_ok());
    }

    #[test]
    fn public_key_parser() {
        assert_eq!(parse_public_key(KEY).unwrap()[31], 0xff);
        assert!(parse_public_key(&KEY[1..]).is_none());
        assert!(parse_public_key(&format!("{}g", &KEY[1..])).is_none());
        // Multi-byte characters must not panic the chunking.
        assert!(parse_public_key(&"é".repeat(32)).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panic(text in "(?s).{0,300}") {
            let _ = AgentConfig::parse(&text, Path::new("a.toml"));
        }

        #[test]
        fn mutated_configs_are_parsed_or_refused_without_panic(
            pos in 0usize..1000,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut text = base(
                "[client]\nmode = \"tun\"\n[client.tun]\ndns = \"100.80.0.2:53\"\n[tunnel]\nmtu = 1400\n",
            )
            .into_bytes();
            let pos = pos % text.len();
            text[pos] = byte;
            let _ = AgentConfig::parse(&String::from_utf8_lossy(&text), Path::new("a.toml"));
        }
    }
}
