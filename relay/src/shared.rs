//! State shared between the control thread and the workers: the immutable
//! snapshots (swapped whole, read once per batch), the stop flag, each
//! worker's published statistics ([`WorkerStats`], added up by
//! [`Shared::totals`]) and each worker's audit hand-off slot
//! ([`Shared::hand_off_audit`], [`Shared::drain_audit`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::audit::AuditTable;
use proto::datapath::Counters;
use proto::policy::CompiledPolicy;
use proto::route::RouteTable;

use crate::io::IoStats;

/// A worker's published statistics, or several workers' added up
/// ([`WorkerStats::sum`]).
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Datapath verdict counters.
    pub datapath: Counters,
    /// I/O backend counters.
    pub io: IoStats,
    /// Hop handshakes dropped because the control thread's queue was full.
    pub handshakes_shed: u64,
    /// Control frames dropped because the control thread's queue was full.
    pub control_shed: u64,
    /// Hop initiations the worker's gate kept out of the control queue
    /// (bad mac1, fair share, answered with a cookie reply).
    pub handshakes_gated: crate::admission::GateCounts,
    /// Authenticated keepalive frames (of the datapath's local frames).
    pub keepalives: u64,
    /// Authenticated control frames (the other local frames; those not
    /// shed went to the control thread).
    pub control_frames: u64,
    /// Installed receive sessions.
    pub sessions: usize,
    /// CPU time the worker thread has used, where the OS tells (in a sum:
    /// the total of the workers that told).
    pub cpu: Option<Duration>,
    /// The worker thread's Linux thread id, for per-thread counters
    /// (`perf_event_open`: the load generator reads the worker's
    /// instructions and cycles where the machine has them). In a sum: the
    /// one worker's, and none for several.
    pub thread: Option<i32>,
}

impl WorkerStats {
    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &WorkerStats) {
        let WorkerStats {
            datapath,
            io,
            handshakes_shed,
            control_shed,
            handshakes_gated,
            keepalives,
            control_frames,
            sessions,
            cpu,
            // Not additive: `sum` keeps the thread of a single worker.
            thread: _,
        } = other;
        self.datapath.add(datapath);
        self.io += io;
        self.handshakes_shed += handshakes_shed;
        self.control_shed += control_shed;
        self.handshakes_gated.add(handshakes_gated);
        self.keepalives += keepalives;
        self.control_frames += control_frames;
        self.sessions += sessions;
        self.cpu = match (self.cpu, *cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// `workers` added up: the one place where workers' statistics are
    /// summed (for [`Shared::totals`] and a stopped relay's report).
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> WorkerStats {
        let mut total = WorkerStats::default();
        let mut threads = 0;
        for w in workers {
            total.add(w);
            threads += 1;
            total.thread = w.thread;
        }
        if threads != 1 {
            total.thread = None;
        }
        total
    }
}

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
    /// The control thread's counters, as of its last loop.
    control: Mutex<crate::control::ControlStats>,
    stats: Vec<Mutex<WorkerStats>>,
    /// Per worker, the audit table it last handed over (empty once the
    /// control thread drained it). No slots: audit off.
    audit: Vec<Mutex<AuditTable>>,
    /// Slots of every audit table.
    audit_table_slots: usize,
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
            control: Mutex::default(),
            stats: (0..workers).map(|_| Mutex::default()).collect(),
            audit: Vec::new(),
            audit_table_slots: 0,
        }
    }

    /// Turns the audit on: each worker gets a hand-off slot holding an
    /// empty table of `table_slots` slots (see [`crate::audit`]).
    pub fn with_audit(mut self, table_slots: usize) -> Shared {
        self.audit_table_slots = table_slots;
        self.audit = (0..self.stats.len())
            .map(|_| Mutex::new(AuditTable::new(table_slots, rand::random())))
            .collect();
        self
    }

    /// A new audit table for a worker to record into; `None`: audit off.
    /// Allocates (once, at the worker's start).
    pub fn new_audit_table(&self) -> Option<AuditTable> {
        (!self.audit.is_empty()).then(|| AuditTable::new(self.audit_table_slots, rand::random()))
    }

    /// Worker `id` offers its audit table, between batches: when its slot
    /// is free and empty (drained), the two tables are swapped and the
    /// worker goes on with the empty one. Never waits (a slot the control
    /// thread holds, or has not drained yet, leaves the worker counting in
    /// its own table) and never allocates. Returns whether it handed over.
    pub fn hand_off_audit(&self, id: usize, table: &mut AuditTable) -> bool {
        if table.is_empty() {
            return false;
        }
        let Some(slot) = self.audit.get(id) else {
            return false;
        };
        let mut slot = match slot.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if !slot.is_empty() {
            return false;
        }
        std::mem::swap(&mut *slot, table);
        true
    }

    /// The control thread drains worker `id`'s hand-off slot: `f` sees the
    /// table if it holds anything; then it is cleared for the next hand-off.
    pub fn drain_audit(&self, id: usize, f: impl FnOnce(&AuditTable)) {
        if let Some(slot) = self.audit.get(id) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if !slot.is_empty() {
                f(&slot);
                slot.clear();
            }
        }
    }

    /// Workers (and hand-off slots).
    pub fn workers(&self) -> usize {
        self.stats.len()
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

    /// The control thread publishes its counters (once per loop; a copy
    /// of a few integers under an uncontended lock).
    pub fn publish_control(&self, stats: &crate::control::ControlStats) {
        let mut slot = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        if *slot != *stats {
            slot.clone_from(stats);
        }
    }

    /// The control thread's counters as last published.
    pub fn control_stats(&self) -> crate::control::ControlStats {
        self.control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The latest statistics of every worker.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }

    /// Every worker's latest statistics added up.
    pub fn totals(&self) -> WorkerStats {
        WorkerStats::sum(&self.worker_stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_published_worker() {
        let policy =
            CompiledPolicy::compile(&proto::policy::PolicyFile::default()).expect("empty policy");
        let shared = Shared::new(policy, 3);
        for (id, n) in [(0usize, 1u64), (1, 10), (2, 100)] {
            let mut s = WorkerStats {
                handshakes_shed: n,
                control_shed: 2 * n,
                handshakes_gated: crate::admission::GateCounts {
                    fair_shed: 6 * n,
                    ..Default::default()
                },
                sessions: n as usize,
                cpu: (id != 1).then(|| Duration::from_millis(n)),
                ..WorkerStats::default()
            };
            s.datapath.frames = n;
            s.datapath.forwarded = 3 * n;
            s.io.send_dropped = 4 * n;
            s.io.recv_errors = 5 * n;
            shared.publish(id, s);
        }
        let t = shared.totals();
        assert_eq!((t.datapath.frames, t.datapath.forwarded), (111, 333));
        assert_eq!((t.io.send_dropped, t.io.recv_errors), (444, 555));
        assert_eq!(t.handshakes_gated.total(), 666);
        assert_eq!(
            (t.handshakes_shed, t.control_shed, t.sessions),
            (111, 222, 111)
        );
        // Worker 1 did not tell its CPU time: the others' add up.
        assert_eq!(t.cpu, Some(Duration::from_millis(101)));
    }

    #[test]
    fn a_sum_names_a_thread_only_for_a_single_worker() {
        let one = WorkerStats {
            thread: Some(41),
            ..WorkerStats::default()
        };
        let other = WorkerStats {
            thread: Some(42),
            ..WorkerStats::default()
        };
        assert_eq!(WorkerStats::sum([&one]).thread, Some(41));
        assert_eq!(WorkerStats::sum([&one, &other]).thread, None);
        assert_eq!(WorkerStats::sum([]).thread, None);
    }

    #[test]
    fn a_worker_publishes_its_own_thread() {
        // The id a per-thread counter is opened on: this thread's, not the
        // process's.
        let main = crate::worker::thread_id();
        let spawned = std::thread::spawn(crate::worker::thread_id)
            .join()
            .expect("thread ran");
        assert_ne!(main, spawned);
        assert_eq!(main, crate::worker::thread_id());
    }

    #[test]
    fn audit_tables_are_handed_over_only_into_a_drained_slot() {
        use proto::audit::Access;
        use proto::ids::{ServiceId, UserId};
        let policy =
            CompiledPolicy::compile(&proto::policy::PolicyFile::default()).expect("empty policy");
        assert!(Shared::new(policy.clone(), 1).new_audit_table().is_none());
        let shared = Shared::new(policy, 2).with_audit(64);
        let mut t = shared.new_audit_table().expect("audit on");
        assert!(!shared.hand_off_audit(0, &mut t), "nothing to hand over");
        t.record(UserId(1), ServiceId(2), Access::Allow, 10);
        assert!(shared.hand_off_audit(0, &mut t));
        assert!(
            t.is_empty(),
            "the worker goes on with the slot's empty table"
        );
        // Not drained yet: the worker keeps counting in its own table.
        t.record(UserId(1), ServiceId(2), Access::Allow, 10);
        assert!(!shared.hand_off_audit(0, &mut t));
        assert_eq!(t.len(), 1);
        let mut seen = Vec::new();
        shared.drain_audit(0, |table| seen.extend(table.entries()));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].counts.frames, 1);
        shared.drain_audit(0, |_| panic!("drained already"));
        shared.drain_audit(1, |_| panic!("worker 1 handed nothing over"));
        assert!(shared.hand_off_audit(0, &mut t));
        shared.drain_audit(0, |table| assert_eq!(table.len(), 1));
    }
}
