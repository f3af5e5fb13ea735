//! The relay: thread-per-core workers forwarding frames between hop
//! sessions, checking each against the policy, and a control thread for
//! handshakes, routes, policy reloads and control messages (each user's
//! directory of reachable services, [`proto::control`]). The per-frame
//! logic is `proto`'s; this crate moves bytes and owns threads.
//!
//! ```text
//!             +-------------------- control thread --------------------+
//!             | hop handshakes, sessions, routes, policy reload, signals |
//!             | control messages: users' directories, pushed on change   |
//!             +---------------------------------------------------------+
//!                 ^ handshake and control   | Install/Remove/Send
//!                 | frames                  |
//!                 |                         v          (crossbeam channels)
//!  socket 0 -> [worker 0: io backend -> proto::datapath -> GSO send]  core 0
//!  socket 1 -> [worker 1: ...]                                         core 1
//!        (SO_REUSEPORT on one port; policy and routes read through ArcSwap
//!         snapshots loaded once per batch)
//! ```

pub mod admission;
pub mod audit;
pub mod bare;
pub mod config;
pub mod control;
pub mod http;
pub mod io;
pub mod keys;
pub mod logs;
pub mod mesh;
pub mod metrics;
pub mod policy_source;
pub mod renewal;
pub mod shared;
pub mod threads;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use proto::datapath::Mode;
use proto::handshake::{Freshness, GateLimits, HopResponder, LocalIdentity, Trust};
use proto::identity::{CaPublicKey, Role};

use crate::control::{Control, ControlStats};
use crate::io::{Backend, Io, IoConfig};
use crate::policy_source::{PolicyLoadError, PolicySource};
use crate::shared::{Shared, WorkerStats};
use crate::threads::{Joiner, Watched};

/// Queue depth between the workers and the control thread, in handshake
/// and control frames. Beyond it workers shed them (counted).
pub const CONTROL_QUEUE: usize = 4096;

/// The cores this process may run on, as they were the first time anyone
/// asked. Workers are pinned to entries of this list, so a caller that
/// later pins its own thread (the load generator, keeping off the relay's
/// cores) must call this first: the affinity of a pinned thread would
/// otherwise hide the other cores from a relay it starts.
pub fn allowed_cores() -> &'static [core_affinity::CoreId] {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Everything needed to start a relay, resolved (keys loaded, paths
/// checked).
#[derive(Debug)]
pub struct RelayOptions {
    /// Address to bind; port 0 picks a free port (shared by all workers).
    pub listen: SocketAddr,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Pin worker `k` to core `first_core + k` when `pin` is set.
    pub first_core: usize,
    /// Whether to pin.
    pub pin: bool,
    /// Preferred I/O backend.
    pub io: Backend,
    /// Buffer sizes and GRO/GSO switches.
    pub io_config: IoConfig,
    /// What the datapath checks.
    pub mode: Mode,
    /// This relay's key and certificate.
    pub identity: LocalIdentity,
    /// The files `identity` came from, watched for a renewed certificate
    /// (`None`: it never changes while the relay runs).
    pub renewal: Option<renewal::IdentityFiles>,
    /// The CA peers' certificates must chain to.
    pub ca: CaPublicKey,
    /// The policy file.
    pub policy: PathBuf,
    /// Registration in the mesh's etcd (`None`: a standalone relay).
    pub mesh: Option<MeshOptions>,
    /// The audit log of access decisions ([`audit`]).
    pub audit: audit::AuditConfig,
}

/// How a relay registers itself in the mesh's etcd.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// etcd's client URL, `http://host:port`.
    pub etcd: String,
    /// This relay's id in the mesh.
    pub relay_id: mesh::registry::RelayId,
    /// Its region.
    pub region: String,
    /// The address peers reach it at; `None`: the bound address.
    pub advertise: Option<SocketAddr>,
    /// The lease TTL.
    pub ttl: std::time::Duration,
    /// The only relays to hold links with (`None`: every relay in etcd);
    /// the others are reached through them.
    pub peers: Option<Vec<mesh::registry::RelayId>>,
}

/// Why a relay could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The policy file could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    /// A worker's socket or I/O backend could not start.
    #[error("worker {worker} could not start: {error}")]
    Io {
        /// Which worker.
        worker: usize,
        /// Why.
        error: crate::io::IoError,
    },
    /// A thread could not be spawned.
    #[error("cannot spawn thread: {0}")]
    Spawn(std::io::Error),
    /// The options are inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// The link port of worker `k` when the relay listens on `listen`: the
/// ports right after it (`listen + 1 + k`), or ephemeral ports when
/// `listen` is 0.
fn link_port(listen: u16, k: usize) -> Result<u16, StartError> {
    if listen == 0 {
        return Ok(0);
    }
    u16::try_from(k + 1)
        .ok()
        .and_then(|k| listen.checked_add(k))
        .ok_or_else(|| {
            StartError::Invalid(format!(
                "mesh: worker {k}'s link port (listen port {listen} + {}) is above 65535; listen on a lower port",
                k + 1
            ))
        })
}

/// Registers this relay in etcd: its record now, its services as
/// connectors come and go (the control thread updates them).
fn start_registry(
    m: &MeshOptions,
    bound: SocketAddr,
    link_ports: &[u16],
    public_key: &[u8; 32],
) -> Result<mesh::registry::Registry, StartError> {
    let address = m.advertise.unwrap_or(bound);
    if address.ip().is_unspecified() {
        return Err(StartError::Invalid(format!(
            "mesh: the relay listens on {bound}, which peers cannot dial; set [mesh] advertise to the address they should use"
        )));
    }
    let record = mesh::registry::RelayRecord {
        address,
        region: m.region.clone(),
        load: 0.0,
        public_key: proto::identity::to_hex(public_key),
        started: control::unix_nanos() / 1_000_000_000,
        links: Vec::new(),
        link_ports: link_ports.to_vec(),
    };
    let mut config =
        mesh::registry::RegistryConfig::new(m.etcd.clone(), m.relay_id.clone(), record);
    config.ttl = m.ttl;
    mesh::registry::Registry::start(config)
        .map_err(|e| StartError::Invalid(format!("mesh: cannot start the etcd registry: {e}")))
}

/// Watches the mesh's etcd and hands each new view to the control thread,
/// which keeps hop sessions with the relays in it.
fn start_links(
    m: &MeshOptions,
    identity: proto::handshake::LocalIdentity,
    ca: CaPublicKey,
) -> Result<control::MeshLinks, StartError> {
    // Unbounded: the watch thread must never block on the control thread;
    // views are small and the control loop drains them every pass.
    let (tx, rx) = crossbeam_channel::unbounded();
    let watch =
        mesh::view::MeshWatch::start(mesh::view::WatchConfig::new(m.etcd.clone()), move |view| {
            let _ = tx.send(view);
        })
        .map_err(|e| StartError::Invalid(format!("mesh: cannot watch etcd: {e}")))?;
    Ok(
        control::MeshLinks::new(m.relay_id.clone(), identity, ca, watch, rx)
            .with_peers(m.peers.as_ref().map(|p| p.iter().cloned().collect())),
    )
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    workers: Vec<Watched<WorkerStats>>,
    control: Option<Watched<ControlStats>>,
    local_addr: SocketAddr,
    backend: Backend,
    public_key: [u8; 32],
    started: Instant,
}

/// What a relay did, from start to stop.
#[derive(Debug, Clone, Default)]
pub struct RelayReport {
    /// Per-worker statistics.
    pub workers: Vec<WorkerStats>,
    /// The control thread's counters.
    pub control: ControlStats,
    /// All workers' statistics added up.
    pub total: WorkerStats,
    /// Threads that panicked (their statistics count as zero above).
    /// Empty after a clean run.
    pub failures: Vec<threads::ThreadFailure>,
}

impl Relay {
    /// Loads the policy, binds one socket per worker, starts the workers
    /// (each pinned, each creating its own I/O backend on its own thread)
    /// and the control thread. Returns once every worker is serving.
    pub fn start(opts: RelayOptions) -> Result<Relay, StartError> {
        if opts.workers == 0 {
            return Err(StartError::Invalid("workers must be at least 1".into()));
        }
        opts.audit
            .validate()
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        let mut source = PolicySource::new(&opts.policy);
        let loaded = source.load()?;
        tracing::info!(
            path = %opts.policy.display(),
            users = loaded.policy.stats().users,
            services = loaded.policy.stats().services,
            took_ms = loaded.took.as_millis() as u64,
            "policy loaded"
        );
        let mut shared = Shared::new(loaded.policy, opts.workers);
        if opts.audit.enabled {
            shared = shared.with_audit(opts.audit.table_slots);
        }
        let shared = Arc::new(shared);
        let (to_control, control_inbox) = crossbeam_channel::bounded(CONTROL_QUEUE);
        let cores = allowed_cores();

        let public_key = *opts.identity.public_key();
        let auditor = opts.audit.enabled.then(|| {
            let cert = &opts.identity.certificate().body;
            audit::Auditor::new(
                opts.audit.clone(),
                audit::RelayName {
                    id: cert.id,
                    name: cert.name.clone(),
                },
            )
        });
        let mesh_identity = opts.mesh.as_ref().map(|_| opts.identity.clone());
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        // A standalone relay refuses relay peers: their frames skip the
        // id-binding check, so a leaked relay certificate must not be
        // usable on the public port (docs/security.md). In a mesh, relay
        // peers are accepted only with a key registered in etcd (the
        // control thread checks it against the current view).
        let roles: &[Role] = if opts.mesh.is_some() {
            &[Role::User, Role::Connector, Role::Relay]
        } else {
            &[Role::User, Role::Connector]
        };
        // Initiations made before this start (minus the allowed clock
        // skew) are refused: the replay table starts empty.
        let responder = HopResponder::new(
            opts.identity,
            Trust::new(opts.ca, roles),
            secret,
            Instant::now(),
        )
        .with_freshness(Freshness::new(control::unix_nanos()));
        let mut workers = Vec::with_capacity(opts.workers);
        let mut inboxes = Vec::with_capacity(opts.workers);
        let mut local_addr = opts.listen;
        let mut backend = opts.io;
        let mut link_ports = Vec::new();
        for k in 0..opts.workers {
            let socket = crate::io::bind_socket(local_addr, &opts.io_config)
                .map_err(|error| StartError::Io { worker: k, error })?;
            let getsockname = |source| StartError::Io {
                worker: k,
                error: crate::io::IoError::Sys {
                    op: "getsockname",
                    source,
                },
            };
            if k == 0 {
                local_addr = socket.local_addr().map_err(getsockname)?;
            }
            // In a mesh, each worker also owns a link port of its own (see
            // `mesh::registry::RelayRecord::link_ports`).
            let link = match &opts.mesh {
                None => None,
                Some(_) => {
                    let port = link_port(opts.listen.port(), k)?;
                    let link = crate::io::bind_socket(
                        SocketAddr::new(local_addr.ip(), port),
                        &opts.io_config,
                    )
                    .map_err(|error| StartError::Io { worker: k, error })?;
                    link_ports.push(link.local_addr().map_err(getsockname)?.port());
                    Some(link)
                }
            };
            let (tx, rx) = crossbeam_channel::unbounded();
            inboxes.push(tx);
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let core = opts
                .pin
                .then(|| {
                    cores
                        .get((opts.first_core + k) % cores.len().max(1))
                        .copied()
                })
                .flatten();
            let (worker_shared, control, io_config, mode, want) = (
                Arc::clone(&shared),
                to_control.clone(),
                opts.io_config,
                opts.mode,
                opts.io,
            );
            // The worker checks initiations before it queues them, with a
            // copy of the responder's cookie checker (docs/security.md §7).
            let admission = admission::Admission::new(responder.gate(
                GateLimits {
                    under_load: control::UNDER_LOAD_QUEUE,
                    ..GateLimits::default()
                },
                Instant::now(),
            ));
            let handle = std::thread::Builder::new()
                .name(format!("relay-worker-{k}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(
                                worker = k,
                                core = core.id,
                                "could not pin worker to its core"
                            );
                        }
                    }
                    // The ring is created on the thread that submits to it
                    // (IORING_SETUP_SINGLE_ISSUER).
                    match Io::start_with_link(want, socket, link, io_config) {
                        Ok(io) => {
                            let _ = ready_tx.send(Ok(io.backend()));
                            worker::run(k, io, mode, worker_shared, rx, control, admission)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            WorkerStats::default()
                        }
                    }
                })
                .map_err(StartError::Spawn)?;
            match ready_rx.recv() {
                Ok(Ok(b)) => backend = b,
                Ok(Err(error)) => {
                    shared.request_stop();
                    return Err(StartError::Io { worker: k, error });
                }
                Err(_) => {
                    shared.request_stop();
                    return Err(StartError::Invalid(format!(
                        "worker {k} exited during start"
                    )));
                }
            }
            workers.push(Watched::new(handle));
        }

        let registry = match &opts.mesh {
            None => None,
            Some(m) => Some(start_registry(m, local_addr, &link_ports, &public_key)?),
        };
        let links = match (&opts.mesh, mesh_identity) {
            (Some(m), Some(identity)) => Some(start_links(m, identity, opts.ca)?),
            _ => None,
        };
        let control = Control::new(
            Arc::clone(&shared),
            responder,
            control_inbox,
            inboxes,
            source,
        )
        .with_registry(registry)
        .with_mesh(links)
        .with_renewal(opts.renewal)
        .with_audit(auditor);
        let control = std::thread::Builder::new()
            .name("relay-control".into())
            .spawn(move || control.run())
            .map_err(StartError::Spawn)?;
        tracing::info!(%local_addr, workers = opts.workers, io = %backend, mode = opts.mode.name(), "relay serving");
        Ok(Relay {
            shared,
            workers,
            control: Some(Watched::new(control)),
            local_addr,
            backend,
            public_key,
            started: Instant::now(),
        })
    }

    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The I/O backend the workers actually use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This relay's Noise static public key (what agents are configured
    /// with).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The peer relays this relay holds hop sessions with now (empty for a
    /// standalone relay).
    pub fn mesh_links(&self) -> Arc<Vec<shared::MeshLink>> {
        self.shared.mesh_links.load_full()
    }

    /// The state shared with the threads (for signal handlers and
    /// metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Latest published statistics of every worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.shared.worker_stats()
    }

    /// Every worker's latest published statistics added up (datapath and
    /// I/O counters, sheds, sessions, CPU time). Workers publish every
    /// [`worker::PUBLISH_EVERY`].
    pub fn totals(&self) -> WorkerStats {
        self.shared.totals()
    }

    /// Serves Prometheus metrics on `addr` (`GET /metrics`) until the relay
    /// stops. Returns the bound address.
    pub fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        metrics::serve(addr, Arc::clone(&self.shared))
    }

    /// Asks the control thread to reload the policy file now.
    pub fn reload_policy(&self) {
        self.shared
            .reload
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the relay has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Whether a stop was requested (by [`Relay::stop`] or a signal).
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every thread (workers finish their batch and flush) and
    /// returns what they did.
    pub fn stop(mut self) -> RelayReport {
        self.shared.request_stop();
        self.join()
    }

    /// The name of a relay thread that has ended although the relay was
    /// not asked to stop (it panicked, or a worker's I/O failed); `None`
    /// while every thread runs, and once the relay is stopping. The
    /// `relay` binary checks it as it waits, and stops the relay when a
    /// thread died ([`crate::threads`] says why).
    pub fn ended_early(&self) -> Option<&str> {
        if self.stopping() {
            return None;
        }
        let workers = self.workers.iter().map(|w| (w.name(), w.is_finished()));
        let control = self.control.iter().map(|c| (c.name(), c.is_finished()));
        workers
            .chain(control)
            .find(|(_, finished)| *finished)
            .map(|(name, _)| name)
    }

    fn join(&mut self) -> RelayReport {
        let mut joiner = Joiner::default();
        let workers: Vec<WorkerStats> = self.workers.drain(..).map(|w| joiner.join(w)).collect();
        let control = self
            .control
            .take()
            .map(|c| joiner.join(c))
            .unwrap_or_default();
        let total = WorkerStats::sum(&workers);
        RelayReport {
            workers,
            control,
            total,
            failures: joiner.failures,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.workers.is_empty() || self.control.is_some() {
            self.shared.request_stop();
            self.join();
        }
    }
}
