//! A relay and its synthetic peers on loopback: a throwaway PKI, a policy
//! file in a scratch directory, an in-process relay, and helpers that
//! connect users and connectors to it with real hop handshakes.
//!
//! The policy is `proto::testkit::policy_file`: users `0..users` in group
//! `everyone`, services `0..services` behind connector 1, every service
//! whose id is not a multiple of 4 allowed to everyone (so service 4k is a
//! known-denied pair for every user).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use proto::datapath::Mode;
use proto::handshake::LocalIdentity;
use proto::identity::Role;
use proto::ids::ReceiverIndex;
use proto::link::HopLink;
use proto::policy::PolicyFile;
use relay::io::{Backend, IoConfig};
use relay::{Relay, RelayOptions};

use crate::pki::Pki;

/// The connector id every synthetic service is served by.
pub const CONNECTOR_ID: u32 = 1;

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
    /// Register the relay in a mesh's etcd.
    pub mesh: Option<relay::MeshOptions>,
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
        }
    }
}

/// A running relay with a PKI and policy around it.
#[derive(Debug)]
pub struct World {
    /// Scratch directory holding the policy file; removed on drop.
    pub dir: ScratchDir,
    /// The CA.
    pub pki: Pki,
    /// The relay.
    pub relay: Relay,
    /// The policy the relay started with.
    pub policy: PolicyFile,
    next_index: AtomicU32,
}

impl World {
    /// Starts a relay on 127.0.0.1 (free port) with the synthetic policy.
    pub fn start(cfg: &WorldConfig) -> anyhow::Result<World> {
        let dir = ScratchDir::new("world")?;
        let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
        let policy = proto::testkit::policy_file(cfg.users, cfg.services);
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy.to_toml_string())?;
        let identity = pki.node(1000, "relay-1", Role::Relay, &[])?;
        let relay = Relay::start(RelayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: cfg.workers,
            first_core: cfg.relay_core.unwrap_or(0),
            pin: cfg.relay_core.is_some(),
            io: cfg.io,
            io_config: IoConfig::default(),
            mode: cfg.mode,
            identity,
            ca: pki.ca(),
            policy: policy_path,
            mesh: cfg.mesh.clone(),
        })?;
        Ok(World {
            dir,
            pki,
            relay,
            policy,
            next_index: AtomicU32::new(1),
        })
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
    /// or when it notices the change).
    pub fn write_policy(&self, text: &str) -> std::io::Result<()> {
        std::fs::write(self.policy_path(), text)
    }

    /// A new identity for user `u` (certificate id = user id).
    pub fn user_identity(&self, u: u32) -> anyhow::Result<LocalIdentity> {
        self.pki
            .node(u, &format!("user{u}"), Role::User, &["everyone"])
    }

    /// A new identity for the connector serving every service.
    pub fn connector_identity(&self) -> anyhow::Result<LocalIdentity> {
        self.pki
            .node(CONNECTOR_ID, "connector1", Role::Connector, &[])
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

    /// Waits (bounded) until the relay's routing snapshot has a route for
    /// `service` and for every user in `users`: sessions are installed by
    /// the control thread right after the handshake reply, routes follow.
    pub fn await_routes(
        &self,
        service: proto::ids::ServiceId,
        users: &[proto::ids::UserId],
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let routes = self.relay.shared().routes.load();
            let user = proto::ids::UserId(0);
            if routes.to_service(service, user).is_some()
                && users
                    .iter()
                    .all(|u| routes.to_user(*u, proto::ids::ServiceId(0)).is_some())
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("relay did not publish routes for {service} within 5 s");
            }
            std::thread::yield_now();
        }
    }
}

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
