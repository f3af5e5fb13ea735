//! State shared between the control thread and the workers: the immutable
//! snapshots (swapped whole, read once per batch), the stop flag, and each
//! worker's published statistics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use proto::policy::CompiledPolicy;
use proto::route::RouteTable;

use crate::worker::WorkerStats;

/// One peer relay this relay holds hop sessions with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshLink {
    /// The peer's certificate id.
    pub id: u32,
    /// The peer's certificate name.
    pub name: String,
    /// The peer's X25519 static key (its etcd record's `public_key`).
    pub static_key: [u8; 32],
    /// Live hop sessions with it (more than one only while rekeying).
    pub sessions: usize,
}

/// The mesh's control plane as the control thread last saw it (all zero
/// outside a mesh), for metrics and logs.
#[derive(Debug, Default)]
pub struct MeshStatus {
    /// This relay is in a mesh.
    pub enabled: AtomicBool,
    /// The etcd watch is live (false: routing on the last view seen).
    pub watch_connected: AtomicBool,
    /// The last call of the registry to etcd succeeded (its lease lives).
    pub registered: AtomicBool,
    /// The etcd revision of the view in force.
    pub revision: AtomicU64,
    /// Connectors and peer relays taken out of the routes for not
    /// answering keepalives.
    pub peers_lost: AtomicU64,
}

/// What the control thread publishes and the workers read.
#[derive(Debug)]
pub struct Shared {
    /// The live policy. Replaced whole on reload.
    pub policy: ArcSwap<CompiledPolicy>,
    /// The live routing table. Replaced whole when sessions come and go.
    pub routes: ArcSwap<RouteTable>,
    /// Set to ask every thread to finish (also by SIGINT/SIGTERM handlers).
    pub stop: Arc<AtomicBool>,
    /// Set to ask the control thread to reload the policy (also by SIGHUP).
    pub reload: Arc<AtomicBool>,
    /// Policies loaded so far (1 after start), for metrics and tests.
    pub policy_epoch: AtomicU64,
    /// Policy reloads rejected so far.
    pub policy_rejected: AtomicU64,
    /// The relays this one holds hop sessions with (mesh links), as the
    /// control thread last published them.
    pub mesh_links: ArcSwap<Vec<MeshLink>>,
    /// Relay handshakes refused because the peer's key is in no relay
    /// record of the current mesh view.
    pub relay_refused: AtomicU64,
    /// The mesh's control plane.
    pub mesh: MeshStatus,
    stats: Vec<Mutex<WorkerStats>>,
}

impl Shared {
    /// Shared state for `workers` workers.
    pub fn new(policy: CompiledPolicy, workers: usize) -> Shared {
        Shared {
            policy: ArcSwap::from_pointee(policy),
            routes: ArcSwap::from_pointee(RouteTable::new()),
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
            policy_epoch: AtomicU64::new(1),
            policy_rejected: AtomicU64::new(0),
            mesh_links: ArcSwap::from_pointee(Vec::new()),
            relay_refused: AtomicU64::new(0),
            mesh: MeshStatus::default(),
            stats: (0..workers).map(|_| Mutex::default()).collect(),
        }
    }

    /// Replaces the policy; the next batch of every worker uses it.
    pub fn swap_policy(&self, policy: CompiledPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// Asks every thread to finish.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Worker `id` publishes its statistics (between batches, not per
    /// frame).
    pub fn publish(&self, id: usize, stats: WorkerStats) {
        if let Some(slot) = self.stats.get(id) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = stats;
        }
    }

    /// The latest statistics of every worker.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }
}
