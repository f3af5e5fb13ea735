//! A relay and its synthetic peers on loopback: a throwaway PKI, a policy
//! file in a scratch directory, an in-process relay, and helpers that
//! connect users and connectors to it with real hop handshakes.
//!
//! A world may also be two relays in a mesh ([`Topology::TwoRelays`]):
//! users attach to the first, the connector to the second, and every frame
//! crosses both, checked against the same policy on each.
//!
//! For a [`Forwarder::Bare`] run the relays only carry the handshakes:
//! once the fleet is connected, [`World::start_bare`] starts a bare hop per
//! relay of the topology (`relay::bare`: same backend, I/O settings and
//! core, no datapath) chained to the connector's socket, and the traffic
//! goes through them instead ([`World::target`], [`World::hops`]).
//!
//! The policy is `proto::testkit::policy_file`: users `0..users` in group
//! `everyone`, services `0..services` behind connector 1, every service
//! whose id is not a multiple of 4 allowed to everyone (so service 4k is a
//! known-denied pair for every user). With [`WorldConfig::connectors`] > 1
//! the services are spread over connectors `1..=connectors`
//! ([`crate::scenario::connector_of`]).

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proto::datapath::Mode;
use proto::handshake::LocalIdentity;
use proto::identity::Role;
use proto::ids::ReceiverIndex;
use proto::link::HopLink;
use proto::policy::PolicyFile;
use relay::io::{Backend, IoConfig};

use crate::run::Hop;
use crate::scenario::connector_of;
use relay::bare::{Bare, BareOptions};
use relay::{Relay, RelayOptions};

use crate::mesh;
use crate::pki::Pki;

/// The connector id every synthetic service is served by.
pub const CONNECTOR_ID: u32 = 1;

/// What forwards a run's frames: a relay in one of its modes, or the bare
/// hop (`relay::bare`), the floor a relay's latency and cost are read
/// against. Named on the command line as the relay modes are, plus `bare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarder {
    /// A relay in this mode.
    Relay(Mode),
    /// A bare hop per relay of the topology: every datagram sent on
    /// unchanged, nothing checked.
    Bare,
}

impl Forwarder {
    /// Whether frames to pairs the policy denies are dropped on the way.
    pub fn enforces_policy(self) -> bool {
        self == Forwarder::Relay(Mode::Ztna)
    }

    /// The mode of the relays the world starts (for a bare run, they only
    /// carry the handshakes: `forward`).
    pub fn relay_mode(self) -> Mode {
        match self {
            Forwarder::Relay(mode) => mode,
            Forwarder::Bare => Mode::Forward,
        }
    }
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forwarder::Relay(mode) => mode.fmt(f),
            Forwarder::Bare => f.write_str("bare"),
        }
    }
}

impl FromStr for Forwarder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bare" => Ok(Forwarder::Bare),
            other => other.parse::<Mode>().map(Forwarder::Relay).map_err(|_| {
                format!("unknown mode `{other}`: expected ztna, vpn, forward or bare")
            }),
        }
    }
}

/// Which relays a world's frames cross.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Topology {
    /// One relay: users and the connector attach to it.
    #[default]
    OneRelay,
    /// Two relays linked through a mesh registered in the etcd at this
    /// client URL: users attach to the first, the connector to the second.
    TwoRelays {
        /// etcd's client URL, `http://127.0.0.1:port`.
        etcd: String,
    },
}

impl Topology {
    /// Relays on the path.
    pub fn relays(&self) -> usize {
        match self {
            Topology::OneRelay => 1,
            Topology::TwoRelays { .. } => 2,
        }
    }
}

/// How to set up a world.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Users in the policy.
    pub users: u32,
    /// Services in the policy.
    pub services: u32,
    /// Relay datapath mode.
    pub mode: Mode,
    /// Relay I/O backend.
    pub io: Backend,
    /// Relay workers.
    pub workers: usize,
    /// Core of the relay's first worker, if pinned.
    pub relay_core: Option<usize>,
    /// Register the relay in a mesh's etcd (one-relay worlds only: a
    /// two-relay world registers both relays itself).
    pub mesh: Option<relay::MeshOptions>,
    /// One relay, or two in a mesh.
    pub topology: Topology,
    /// The relays' audit log of access decisions.
    pub audit: relay::audit::AuditConfig,
    /// Connectors the services are spread over (1: all behind connector 1).
    pub connectors: u32,
    /// The relays' I/O settings (backend aside).
    pub io_config: IoConfig,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            users: 4,
            services: 8,
            mode: Mode::Ztna,
            io: Backend::Uring,
            workers: 1,
            relay_core: None,
            mesh: None,
            topology: Topology::OneRelay,
            audit: relay::audit::AuditConfig::default(),
            connectors: 1,
            io_config: IoConfig::default(),
        }
    }
}

/// A running relay with a PKI and policy around it.
#[derive(Debug)]
pub struct World {
    /// The CA.
    pub pki: Pki,
    /// The relay users attach to (in a one-relay world, the connector
    /// too).
    pub relay: Relay,
    /// In a two-relay world, the relay the connector attaches to, linked to
    /// [`World::relay`] through the mesh.
    pub exit: Option<Relay>,
    /// The policy the relay started with.
    pub policy: PolicyFile,
    /// Bare hops standing in for the relays ([`World::start_bare`]),
    /// users' side first; empty: frames go through the relays.
    pub bare: Vec<Bare>,
    /// How the relays were started (the bare hops are started alike).
    config: WorldConfig,
    next_index: AtomicU32,
    /// Scratch directory holding the policy file; removed on drop. Last:
    /// fields drop in order, and a relay that outlived its policy file
    /// would log a failed reload.
    pub dir: ScratchDir,
}

impl World {
    /// Starts a relay on 127.0.0.1 (free port) with the synthetic policy;
    /// for [`Topology::TwoRelays`], two relays registered in the mesh's
    /// etcd, and waits until they hold a link. Pinned relays share the one
    /// core `relay_core`, so a two-relay world has the relaying core budget
    /// of a one-relay world.
    pub fn start(cfg: &WorldConfig) -> anyhow::Result<World> {
        let dir = ScratchDir::new("world")?;
        let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
        let mut policy = proto::testkit::policy_file(cfg.users, cfg.services);
        if cfg.connectors > 1 {
            spread_services(&mut policy, cfg.connectors);
        }
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy.to_toml_string())?;
        let start = |cert_id: u32, name: &str, mesh: Option<relay::MeshOptions>| {
            Relay::start(RelayOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                workers: cfg.workers,
                first_core: cfg.relay_core.unwrap_or(0),
                pin: cfg.relay_core.is_some(),
                io: cfg.io,
                io_config: cfg.io_config,
                mode: cfg.mode,
                identity: pki.node(cert_id, name, Role::Relay, &[])?,
                renewal: None,
                ca: pki.ca(),
                policy: policy_path.clone(),
                mesh,
                audit: cfg.audit.clone(),
            })
            .map_err(anyhow::Error::from)
            .and_then(|relay| {
                // glommio is asked for only to be compared: a relay that
                // fell back from it (the relay warned why) measures
                // nothing worth having. (uring falling back to mmsg, where
                // io_uring is blocked, is the relay as deployed there:
                // the results carry the backend that ran.)
                anyhow::ensure!(
                    relay.backend() == cfg.io || cfg.io != relay::io::Backend::Glommio,
                    "the relay runs the {} backend, not {} as asked (see its warning)",
                    relay.backend(),
                    cfg.io
                );
                Ok(relay)
            })
        };
        let (relay, exit) = match &cfg.topology {
            Topology::OneRelay => (start(1000, "relay-1", cfg.mesh.clone())?, None),
            Topology::TwoRelays { etcd } => {
                anyhow::ensure!(
                    cfg.mesh.is_none(),
                    "a two-relay world registers its relays itself; leave WorldConfig::mesh unset"
                );
                // Ids unique to this world: a relay of an earlier world in
                // the same etcd is never mistaken for one of these.
                static WORLDS: AtomicU32 = AtomicU32::new(0);
                let n = WORLDS.fetch_add(1, Ordering::Relaxed);
                let id = |side: &str| format!("loadgen-{}-{n}-{side}", std::process::id());
                let (a_id, b_id) = (id("a"), id("b"));
                let a = start(1000, "relay-a", Some(mesh::mesh_options(etcd, &a_id)?))?;
                let b = start(1001, "relay-b", Some(mesh::mesh_options(etcd, &b_id)?))?;
                mesh::await_link((&a_id, &a), (&b_id, &b), etcd)?;
                (a, Some(b))
            }
        };
        Ok(World {
            dir,
            pki,
            relay,
            exit,
            policy,
            bare: Vec::new(),
            config: cfg.clone(),
            next_index: AtomicU32::new(1),
        })
    }

    /// Starts a bare hop per relay of the topology, chained, the last
    /// sending to `sink` (the connector's socket), each on the relays'
    /// core with their backend and I/O settings. From now on frames go
    /// through them: [`World::target`] is the first, [`World::hops`] lists
    /// them. The relays stay up, idle (their sessions are what the
    /// fleet's keys came from).
    pub fn start_bare(&mut self, sink: SocketAddr) -> anyhow::Result<()> {
        anyhow::ensure!(self.bare.is_empty(), "the bare hops are already up");
        let mut destination = sink;
        let mut hops = Vec::new();
        for _ in 0..self.config.topology.relays() {
            let hop = Bare::start(BareOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                destination,
                core: self.config.relay_core,
                io: self.config.io,
                io_config: self.config.io_config,
            })?;
            destination = hop.local_addr();
            hops.push(hop);
        }
        hops.reverse();
        self.bare = hops;
        Ok(())
    }

    /// Where the users' frames go: the first bare hop if there are any,
    /// else the users' relay.
    pub fn target(&self) -> SocketAddr {
        self.bare
            .first()
            .map_or_else(|| self.relay_addr(), Bare::local_addr)
    }

    /// What the frames cross, users' side first: the bare hops if there
    /// are any, else the relays.
    pub fn hops(&self) -> Vec<&dyn Hop> {
        if self.bare.is_empty() {
            self.relays().into_iter().map(|r| r as &dyn Hop).collect()
        } else {
            self.bare.iter().map(|b| b as &dyn Hop).collect()
        }
    }

    /// The I/O backend the frames' forwarders use (after any fallback).
    pub fn backend(&self) -> Backend {
        self.bare
            .first()
            .map_or_else(|| self.relay.backend(), Bare::backend)
    }

    /// The relays every frame crosses, users' side first.
    pub fn relays(&self) -> Vec<&Relay> {
        std::iter::once(&self.relay).chain(&self.exit).collect()
    }

    /// The relay the connector attaches to.
    pub fn connector_relay(&self) -> &Relay {
        self.exit.as_ref().unwrap_or(&self.relay)
    }

    /// Stops every relay (and bare hop), users' side first, and returns
    /// what each relay did.
    pub fn stop(self) -> Vec<relay::RelayReport> {
        for hop in self.bare {
            let s = hop.stop();
            tracing::debug!(
                frames = s.datapath.frames,
                busy_poll_served = s.io.busy_poll_served,
                busy_poll_missed = s.io.busy_poll_missed,
                "bare hop stopped"
            );
        }
        std::iter::once(self.relay)
            .chain(self.exit)
            .map(Relay::stop)
            .collect()
    }

    /// The relay's address.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay.local_addr()
    }

    /// The policy file the relay watches.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Replaces the policy file's content (the relay reloads it when asked
    /// or when it notices the change), atomically as an operator should
    /// (docs/security.md §8): written beside it, then renamed over it. A
    /// plain rewrite lets the relay's poll read a half-written file, which
    /// may still parse: a policy without the users past the cut, whose
    /// sessions the reload then closes.
    pub fn write_policy(&self, text: &str) -> std::io::Result<()> {
        let path = self.policy_path();
        let staged = path.with_extension("toml.new");
        std::fs::write(&staged, text)?;
        std::fs::rename(&staged, &path)
    }

    /// A new identity for user `u` (certificate id = user id).
    pub fn user_identity(&self, u: u32) -> anyhow::Result<LocalIdentity> {
        self.pki
            .node(u, &format!("user{u}"), Role::User, &["everyone"])
    }

    /// A new identity for the connector serving every service.
    pub fn connector_identity(&self) -> anyhow::Result<LocalIdentity> {
        self.nth_connector_identity(CONNECTOR_ID)
    }

    /// A new identity for connector `id` (1-based, as in the policy).
    pub fn nth_connector_identity(&self, id: u32) -> anyhow::Result<LocalIdentity> {
        self.pki
            .node(id, &format!("connector{id}"), Role::Connector, &[])
    }

    /// Runs a hop handshake for `me` from `socket`.
    pub fn connect(&self, socket: &UdpSocket, me: &LocalIdentity) -> anyhow::Result<HopLink> {
        let index = ReceiverIndex(self.next_index.fetch_add(1, Ordering::Relaxed));
        crate::link::handshake(
            socket,
            self.relay_addr(),
            self.relay.public_key(),
            me,
            self.pki.ca(),
            index,
        )
    }

    /// Waits (bounded) until every relay's routing snapshot has a route
    /// for `service` and for every user in `users`: sessions are installed
    /// by the control thread right after the handshake reply, routes
    /// follow (in a two-relay world, after the other relay's announcement
    /// went through etcd).
    pub fn await_routes(
        &self,
        service: proto::ids::ServiceId,
        users: &[proto::ids::UserId],
    ) -> anyhow::Result<()> {
        // Through the mesh, routes to users wait for etcd: the users'
        // relay announces each with a write of its own (setting up 10 000
        // users took 100-125 s through two relays, 20 s through one, on the
        // project's VM, 2026-12-02).
        let within = if self.exit.is_some() {
            ROUTES_WITHIN + MESH_ROUTE_PER_USER * u32::try_from(users.len()).unwrap_or(u32::MAX)
        } else {
            ROUTES_WITHIN
        };
        let deadline = Instant::now() + within;
        loop {
            let routed = self.relays().iter().all(|relay| {
                let routes = relay.shared().routes.load();
                routes.to_service(service, proto::ids::UserId(0)).is_some()
                    && users
                        .iter()
                        .all(|u| routes.to_user(*u, proto::ids::ServiceId(0)).is_some())
            });
            if routed {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("the relays did not publish routes for {service} within {within:?}");
            }
            std::thread::yield_now();
        }
    }
}

/// Puts each service of `policy` behind connector
/// [`connector_of`]`(service, connectors)` alone.
fn spread_services(policy: &mut PolicyFile, connectors: u32) {
    policy.connectors = (1..=connectors)
        .map(|id| proto::policy::Connector {
            id,
            name: format!("connector{id}"),
            static_key: None,
        })
        .collect();
    for service in &mut policy.services {
        service.connectors = vec![format!("connector{}", connector_of(service.id, connectors))];
    }
}

/// How long routes may take to appear after the sessions they need.
const ROUTES_WITHIN: Duration = Duration::from_secs(10);
/// In a two-relay world, added per user awaited.
const MESH_ROUTE_PER_USER: Duration = Duration::from_millis(20);

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `ztna-NAME-PID-N`.
    pub fn new(name: &str) -> std::io::Result<ScratchDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ztna-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
