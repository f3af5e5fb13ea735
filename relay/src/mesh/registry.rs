//! This relay's presence in etcd: its record and the services its
//! connectors serve, all under one lease the registry keeps alive.
//!
//! # Key schema
//!
//! Everything lives under one root, [`ROOT`] (`/ztna/v1/`) by default, so
//! one watch on the root sees the whole mesh and a new schema can sit
//! beside the old one (`/ztna/v2/`) during an upgrade:
//!
//! ```text
//! /ztna/v1/relays/<relay-id>                 -> RelayRecord JSON
//!     {"address":"203.0.113.7:4500","region":"eu-west","load":0.25,
//!      "public_key":"<64 hex>","started":1767225600,"links":["relay-b"],
//!      "link_ports":[4501,4502]}
//! /ztna/v1/services/<service-id>/<relay-id>  -> ServiceRecord JSON
//!     {"connectors":[{"id":501,"key":"<64 hex>"},{"id":502,"key":"<64 hex>"}]}
//! /ztna/v1/users/<user-id>/<relay-id>        -> {}
//! ```
//!
//! - `<relay-id>`: 1–64 of `[A-Za-z0-9._-]` ([`RelayId`]); no `/`, so keys
//!   split unambiguously.
//! - `<service-id>`: the decimal [`ServiceId`], as in the policy.
//! - `<user-id>`: the decimal [`UserId`] of a user holding a hop session
//!   with that relay (where its frames go from elsewhere in the mesh).
//! - A service record lists each connector's certificate id and X25519
//!   static key (hex): what a remote relay puts in a user's directory.
//! - Service keys name the service first: "who reaches service 7" is one
//!   prefix read (`/ztna/v1/services/7/`), which is what routing asks; the
//!   reverse ("what does relay A reach") is answered from the same watch.
//! - Every key a relay writes is attached to its lease: when the relay dies
//!   (no keep-alive for one TTL) etcd deletes its record and its services
//!   together, and watchers see the deletes. A clean shutdown revokes the
//!   lease, which does the same at once.
//! - Values are JSON so operators can read them with `etcdctl get` and
//!   fields can be added without breaking older readers (unknown fields are
//!   ignored; a record that does not parse is skipped and counted by the
//!   view, never trusted).
//!
//! # Thread
//!
//! [`Registry::start`] spawns one thread that owns the lease: it grants it,
//! writes the records, renews the lease every TTL/3 and applies changes
//! sent to it. If etcd is unreachable it keeps retrying (the relay keeps
//! serving; [`Registry::connected`] says false); if the lease expired in the
//! meantime it grants a new one and writes everything again. The datapath
//! never waits on it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use proto::identity::{key_from_hex, to_hex};
use proto::ids::{ServiceId, UserId};
use serde::{Deserialize, Serialize};

use super::etcd::{Etcd, EtcdError, LeaseId};

/// The default root of every key.
pub const ROOT: &str = "/ztna/v1/";

/// The default lease TTL: a dead relay's routes vanish within this long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// A relay's name in the mesh (a key segment): 1–64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelayId(String);

/// A relay id that is not a valid key segment.
#[derive(Debug, thiserror::Error)]
#[error("relay id {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
pub struct BadRelayId(String);

impl RelayId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<RelayId, BadRelayId> {
        let id = id.into();
        let ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(RelayId(id))
        } else {
            Err(BadRelayId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RelayId {
    type Error = BadRelayId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RelayId::new(s)
    }
}

impl From<RelayId> for String {
    fn from(id: RelayId) -> String {
        id.0
    }
}

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a relay says about itself (`<root>relays/<relay-id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// Where peers reach its hop port (`ip:port`).
    pub address: std::net::SocketAddr,
    /// Its region, for nearest-relay choices.
    pub region: String,
    /// Its load, 0.0 (idle) to 1.0 (full).
    pub load: f32,
    /// Its Noise static public key, hex: what peers pin on the link.
    pub public_key: String,
    /// When it started, in seconds since the Unix epoch (a restart is a new
    /// incarnation).
    pub started: u64,
    /// The relays it holds a live link with now, by id (sorted). A link is
    /// an edge of the mesh graph only when both ends list each other
    /// ([`super::paths`]).
    #[serde(default)]
    pub links: Vec<String>,
    /// Its per-worker link ports, on `address`'s IP: link `k` with a peer
    /// relay runs between the two relays' `k`-th ports, so that its frames
    /// land on worker `k` at both ends and transit spreads over workers.
    #[serde(default)]
    pub link_ports: Vec<u16>,
}

impl RelayRecord {
    /// Whether `other` describes the same incarnation of the same relay
    /// (address, key and start time; load and links change while it runs).
    pub fn same_incarnation(&self, other: &RelayRecord) -> bool {
        self.address == other.address
            && self.public_key == other.public_key
            && self.started == other.started
            && self.link_ports == other.link_ports
    }

    /// Where its `k`-th link port is reached.
    pub fn link_address(&self, k: usize) -> Option<std::net::SocketAddr> {
        let port = *self.link_ports.get(k)?;
        Some(std::net::SocketAddr::new(self.address.ip(), port))
    }

    /// The relays it lists as linked, skipping malformed ids.
    pub fn linked(&self) -> std::collections::BTreeSet<RelayId> {
        self.links
            .iter()
            .filter_map(|l| RelayId::new(l.clone()).ok())
            .collect()
    }
}

/// The connectors through which a relay reaches one service
/// (`<root>services/<service-id>/<relay-id>`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The connectors (their certificate ids, as in the policy) attached
    /// to that relay that serve it.
    pub connectors: Vec<ConnectorRecord>,
}

/// One connector in a [`ServiceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnectorRecord {
    /// Its certificate id, as in the policy.
    pub id: u32,
    /// Its X25519 static public key (from its certificate), 64 hex digits:
    /// the key a user's agent runs the end-to-end handshake against.
    pub key: String,
}

impl ConnectorRecord {
    /// A record for connector `id` with static key `key`.
    pub fn new(id: u32, key: &[u8; 32]) -> ConnectorRecord {
        ConnectorRecord {
            id,
            key: to_hex(key),
        }
    }

    /// The static key, if `key` is 64 hex digits.
    pub fn static_key(&self) -> Option<[u8; 32]> {
        key_from_hex(&self.key)
    }
}

/// The key of `relay`'s record under `root`.
pub fn relay_key(root: &str, relay: &RelayId) -> String {
    format!("{root}relays/{relay}")
}

/// The key of `relay`'s reach to `service` under `root`.
pub fn service_key(root: &str, service: ServiceId, relay: &RelayId) -> String {
    format!("{root}services/{}/{relay}", service.0)
}

/// The key saying `user` holds a hop session with `relay`, under `root`.
pub fn user_key(root: &str, user: UserId, relay: &RelayId) -> String {
    format!("{root}users/{}/{relay}", user.0)
}

/// A key under `root`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshKey {
    /// `relays/<relay-id>`.
    Relay(RelayId),
    /// `services/<service-id>/<relay-id>`.
    Service(ServiceId, RelayId),
    /// `users/<user-id>/<relay-id>`.
    User(UserId, RelayId),
}

/// Parses a key read from etcd; `None` for keys of no known shape.
pub fn parse_key(root: &str, key: &[u8]) -> Option<MeshKey> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(root)?;
    if let Some(id) = rest.strip_prefix("relays/") {
        return RelayId::new(id).ok().map(MeshKey::Relay);
    }
    if let Some(rest) = rest.strip_prefix("users/") {
        let (user, relay) = rest.split_once('/')?;
        let user = UserId(decimal(user)?);
        return Some(MeshKey::User(user, RelayId::new(relay).ok()?));
    }
    let rest = rest.strip_prefix("services/")?;
    let (service, relay) = rest.split_once('/')?;
    let service = ServiceId(decimal(service)?);
    Some(MeshKey::Service(service, RelayId::new(relay).ok()?))
}

/// A u32 in plain decimal digits (no sign, no spaces).
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// How to register.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// etcd's client URL, `http://host:port`.
    pub endpoint: String,
    /// The key root (default [`ROOT`]); must end with `/`.
    pub root: String,
    /// This relay's id.
    pub relay: RelayId,
    /// This relay's record.
    pub record: RelayRecord,
    /// The lease TTL (whole seconds, at least 1; default [`DEFAULT_TTL`]).
    pub ttl: Duration,
}

impl RegistryConfig {
    /// A configuration with the default root and TTL.
    pub fn new(endpoint: impl Into<String>, relay: RelayId, record: RelayRecord) -> RegistryConfig {
        RegistryConfig {
            endpoint: endpoint.into(),
            root: ROOT.to_string(),
            relay,
            record,
            ttl: DEFAULT_TTL,
        }
    }
}

/// Why a registry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The endpoint is malformed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The root does not end with `/`.
    #[error("mesh key root {0:?} must start and end with '/' (e.g. \"/ztna/v1/\")")]
    Root(String),
    /// The TTL is below one second.
    #[error("lease TTL {0:?} is below etcd's minimum of 1 s")]
    Ttl(Duration),
    /// The thread could not be spawned.
    #[error("cannot spawn the mesh registry thread: {0}")]
    Spawn(std::io::Error),
}

/// What the registry thread has done.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Leases granted (more than one: a lease expired while etcd was away).
    pub grants: AtomicU64,
    /// Keep-alives that etcd answered.
    pub keepalives: AtomicU64,
    /// Calls to etcd that failed.
    pub errors: AtomicU64,
}

enum Command {
    Service(ServiceId, Option<ServiceRecord>),
    /// A user's session came (true) or went (false).
    User(UserId, bool),
    Load(f32),
    /// The relays with a live link.
    Links(Vec<String>),
    /// Stop; revoke the lease if true.
    Stop(bool),
}

/// This relay's registration, kept alive by a thread of its own.
#[derive(Debug)]
pub struct Registry {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    connected: Arc<AtomicBool>,
    stats: Arc<RegistryStats>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Service(s, r) => write!(f, "Service({s}, {r:?})"),
            Command::User(u, on) => write!(f, "User({u}, {on})"),
            Command::Load(l) => write!(f, "Load({l})"),
            Command::Links(l) => write!(f, "Links({l:?})"),
            Command::Stop(r) => write!(f, "Stop(revoke: {r})"),
        }
    }
}

impl Registry {
    /// Starts the registry thread. It registers at once and retries while
    /// etcd is unreachable; this returns without waiting for etcd.
    pub fn start(config: RegistryConfig) -> Result<Registry, RegistryError> {
        let client = Etcd::new(&config.endpoint)?;
        if !config.root.starts_with('/') || !config.root.ends_with('/') {
            return Err(RegistryError::Root(config.root));
        }
        if config.ttl < Duration::from_secs(1) {
            return Err(RegistryError::Ttl(config.ttl));
        }
        let (commands, inbox) = crossbeam_channel::unbounded();
        let connected = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RegistryStats::default());
        let mut state = State {
            client,
            relay_key: relay_key(&config.root, &config.relay),
            config,
            services: BTreeMap::new(),
            users: std::collections::BTreeSet::new(),
            lease: None,
            dirty: true,
            connected: Arc::clone(&connected),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("mesh-registry".into())
            .spawn(move || state.run(inbox))
            .map_err(RegistryError::Spawn)?;
        Ok(Registry {
            commands,
            thread: Some(thread),
            connected,
            stats,
        })
    }

    /// Announces that this relay reaches `service` through `connectors`
    /// (replacing what was said before).
    pub fn set_service(&self, service: ServiceId, connectors: Vec<ConnectorRecord>) {
        let _ = self.commands.send(Command::Service(
            service,
            Some(ServiceRecord { connectors }),
        ));
    }

    /// Withdraws `service` (its last connector left).
    pub fn remove_service(&self, service: ServiceId) {
        let _ = self.commands.send(Command::Service(service, None));
    }

    /// Announces that `user` holds a hop session with this relay.
    pub fn add_user(&self, user: UserId) {
        let _ = self.commands.send(Command::User(user, true));
    }

    /// Withdraws `user` (its last session here is gone).
    pub fn remove_user(&self, user: UserId) {
        let _ = self.commands.send(Command::User(user, false));
    }

    /// Updates this relay's load in its record.
    pub fn set_load(&self, load: f32) {
        let _ = self.commands.send(Command::Load(load));
    }

    /// Publishes the relays this relay holds a live link with (in its
    /// record), so that others can route through it.
    pub fn set_links(&self, links: Vec<String>) {
        let _ = self.commands.send(Command::Links(links));
    }

    /// Whether the last call to etcd succeeded (the registration is live).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The thread's counters.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Revokes the lease (this relay and its services vanish from the mesh
    /// at once) and stops the thread.
    pub fn stop(mut self) {
        self.shut(true);
    }

    /// Stops keeping the lease alive without revoking it, as a crashed relay
    /// would: the records vanish when the TTL runs out.
    pub fn abandon(mut self) {
        self.shut(false);
    }

    fn shut(&mut self, revoke: bool) {
        let _ = self.commands.send(Command::Stop(revoke));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shut(true);
    }
}

struct State {
    client: Etcd,
    config: RegistryConfig,
    relay_key: String,
    /// What etcd should hold for this relay's services.
    services: BTreeMap<ServiceId, ServiceRecord>,
    /// The users etcd should list under this relay.
    users: std::collections::BTreeSet<UserId>,
    lease: Option<LeaseId>,
    /// etcd may not hold the desired state (a write failed, or the lease is
    /// new): write everything on the next tick.
    dirty: bool,
    connected: Arc<AtomicBool>,
    stats: Arc<RegistryStats>,
}

impl State {
    fn run(&mut self, inbox: Receiver<Command>) {
        let renew = self.config.ttl / 3;
        let mut next_tick = Instant::now();
        loop {
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + if self.dirty { renew.min(RETRY) } else { renew };
            }
            match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(Command::Stop(revoke)) => return self.stop(revoke),
                Ok(Command::Service(service, record)) => {
                    let result = match record {
                        Some(r) => {
                            let value = serde_json::to_vec(&r).unwrap_or_default();
                            self.services.insert(service, r);
                            self.lease.map(|lease| {
                                let key =
                                    service_key(&self.config.root, service, &self.config.relay);
                                self.client.put(&key, &value, Some(lease)).map(drop)
                            })
                        }
                        None => {
                            self.services.remove(&service);
                            self.lease.map(|_| {
                                let key =
                                    service_key(&self.config.root, service, &self.config.relay);
                                self.client.delete(&key)
                            })
                        }
                    };
                    self.settle(result);
                }
                Ok(Command::User(user, on)) => {
                    let key = user_key(&self.config.root, user, &self.config.relay);
                    let result = if on {
                        self.users.insert(user);
                        self.lease
                            .map(|lease| self.client.put(&key, b"{}", Some(lease)).map(drop))
                    } else {
                        self.users.remove(&user);
                        self.lease.map(|_| self.client.delete(&key))
                    };
                    self.settle(result);
                }
                Ok(Command::Load(load)) => {
                    self.config.record.load = load;
                    let result = self.lease.map(|lease| self.put_record(lease));
                    self.settle(result);
                }
                Ok(Command::Links(links)) => {
                    self.config.record.links = links;
                    let result = self.lease.map(|lease| self.put_record(lease));
                    self.settle(result);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every handle is gone without a Stop: revoke.
                Err(RecvTimeoutError::Disconnected) => return self.stop(true),
            }
        }
    }

    /// Notes the outcome of an immediate write; `None` (no lease yet)
    /// leaves it to the next tick.
    fn settle(&mut self, result: Option<Result<(), EtcdError>>) {
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.failed(&e);
                self.dirty = true;
            }
            None => self.dirty = true,
        }
    }

    /// Renews the lease, or (re)grants it and writes everything.
    fn tick(&mut self) {
        if let Some(lease) = self.lease {
            match self.client.keep_alive(lease) {
                Ok(_) => {
                    self.stats.keepalives.fetch_add(1, Ordering::Relaxed);
                    self.up();
                }
                Err(EtcdError::LeaseGone(_)) => {
                    tracing::warn!(relay = %self.config.relay, "mesh lease expired (etcd was unreachable for longer than its TTL); registering again");
                    self.lease = None;
                    self.dirty = true;
                }
                Err(e) => return self.failed(&e),
            }
        }
        if self.lease.is_none() {
            match self.client.grant(self.config.ttl) {
                Ok(lease) => {
                    self.stats.grants.fetch_add(1, Ordering::Relaxed);
                    self.lease = Some(lease);
                    self.dirty = true;
                }
                Err(e) => return self.failed(&e),
            }
        }
        if self.dirty {
            if let Some(lease) = self.lease {
                match self.write_all(lease) {
                    Ok(()) => {
                        self.dirty = false;
                        self.up();
                        tracing::info!(relay = %self.config.relay, services = self.services.len(), lease = format_args!("{:x}", lease.0), "registered in the mesh");
                    }
                    Err(EtcdError::LeaseGone(_)) => self.lease = None,
                    Err(e) => self.failed(&e),
                }
            }
        }
    }

    fn write_all(&self, lease: LeaseId) -> Result<(), EtcdError> {
        // The record first: a watcher never sees services of a relay it
        // cannot reach.
        self.put_record(lease)?;
        for (service, record) in &self.services {
            let key = service_key(&self.config.root, *service, &self.config.relay);
            let value = serde_json::to_vec(record).unwrap_or_default();
            self.client.put(&key, &value, Some(lease))?;
        }
        for user in &self.users {
            let key = user_key(&self.config.root, *user, &self.config.relay);
            self.client.put(&key, b"{}", Some(lease))?;
        }
        Ok(())
    }

    fn put_record(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let value = serde_json::to_vec(&self.config.record).unwrap_or_default();
        self.client
            .put(&self.relay_key, &value, Some(lease))
            .map(drop)
    }

    fn up(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(relay = %self.config.relay, etcd = self.client.endpoint(), "mesh registry reached etcd");
        }
    }

    fn failed(&self, e: &EtcdError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(relay = %self.config.relay, error = %e, "mesh registry lost etcd; retrying, the relay keeps serving");
        } else {
            tracing::debug!(relay = %self.config.relay, error = %e, "mesh registry: etcd still unreachable");
        }
    }

    fn stop(&mut self, revoke: bool) {
        if let (true, Some(lease)) = (revoke, self.lease) {
            match self.client.revoke(lease) {
                Ok(()) => {
                    tracing::info!(relay = %self.config.relay, "left the mesh (lease revoked)")
                }
                Err(e) => {
                    tracing::warn!(relay = %self.config.relay, error = %e, "could not revoke the mesh lease; its records vanish when the TTL runs out")
                }
            }
        }
    }
}

/// How soon a failed registration is retried.
const RETRY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let a = RelayId::new("relay-a.eu_1").unwrap();
        let k = relay_key(ROOT, &a);
        assert_eq!(k, "/ztna/v1/relays/relay-a.eu_1");
        assert_eq!(
            parse_key(ROOT, k.as_bytes()),
            Some(MeshKey::Relay(a.clone()))
        );
        let k = service_key(ROOT, ServiceId(7), &a);
        assert_eq!(k, "/ztna/v1/services/7/relay-a.eu_1");
        assert_eq!(
            parse_key(ROOT, k.as_bytes()),
            Some(MeshKey::Service(ServiceId(7), a))
        );
    }

    #[test]
    fn user_keys_round_trip() {
        let a = RelayId::new("a").unwrap();
        let k = user_key(ROOT, UserId(42), &a);
        assert_eq!(k, "/ztna/v1/users/42/a");
        assert_eq!(
            parse_key(ROOT, k.as_bytes()),
            Some(MeshKey::User(UserId(42), a))
        );
    }

    #[test]
    fn connector_keys_round_trip_as_hex() {
        let key = [0xab; 32];
        let r = ConnectorRecord::new(5, &key);
        assert_eq!(r.key.len(), 64);
        assert_eq!(r.static_key(), Some(key));
        let bad = ConnectorRecord {
            id: 5,
            key: "zz".repeat(32),
        };
        assert_eq!(bad.static_key(), None);
    }

    #[test]
    fn odd_keys_are_not_parsed() {
        for k in [
            "/ztna/v1/relays/",
            "/ztna/v1/relays/a/b",
            "/ztna/v1/services/7",
            "/ztna/v1/services/x/a",
            "/ztna/v1/services/+7/a",
            "/ztna/v1/services/99999999999/a",
            "/ztna/v1/other/a",
            "/ztna/v1/users/x/a",
            "/ztna/v1/users/7",
            "/elsewhere/relays/a",
        ] {
            assert_eq!(parse_key(ROOT, k.as_bytes()), None, "{k}");
        }
        assert_eq!(parse_key(ROOT, b"/ztna/v1/relays/\xff"), None);
    }

    #[test]
    fn relay_ids_are_key_segments() {
        assert!(RelayId::new("").is_err());
        assert!(RelayId::new("a/b").is_err());
        assert!(RelayId::new("a".repeat(65)).is_err());
        assert!(RelayId::new("a".repeat(64)).is_ok());
    }
}
