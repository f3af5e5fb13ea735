//! The mesh as etcd last said it was: which relays are alive and which
//! services each reaches, kept current by a watch on a thread of its own.
//!
//! The watcher reads the whole root once (a prefix range, at revision R),
//! then watches from R+1. Each batch of events yields a whole new
//! [`MeshView`], published to [`MeshWatch::latest`] (an `ArcSwap`, loaded
//! like the policy snapshot) and handed to the caller's callback.
//!
//! When etcd goes away the watcher keeps the last view (routing goes on
//! with it), sets [`MeshWatch::connected`] false, counts the disconnect and
//! logs it, then retries. On return it resumes the watch from the last
//! revision it applied, so nothing in between is missed (lease expiries
//! during the outage arrive as deletes). If etcd compacted that revision
//! away it reads the root again and publishes the result as a new view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::ids::{ServiceId, UserId};

use super::etcd::{Etcd, EtcdError, Event, KeyValue};
use super::registry::{parse_key, MeshKey, RelayId, RelayRecord, ServiceRecord, ROOT};

/// One consistent picture of the mesh, at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshView {
    /// The etcd revision this view reflects (0: nothing read yet).
    pub revision: i64,
    relays: BTreeMap<RelayId, RelayRecord>,
    /// service → relay → connectors. May name relays without a record
    /// (briefly, while a relay registers); [`MeshView::relays_for`] leaves
    /// those out.
    reach: BTreeMap<ServiceId, BTreeMap<RelayId, ServiceRecord>>,
    /// user → the relays it holds a hop session with.
    users: BTreeMap<UserId, BTreeSet<RelayId>>,
}

impl MeshView {
    /// Every live relay and its record.
    pub fn relays(&self) -> &BTreeMap<RelayId, RelayRecord> {
        &self.relays
    }

    /// One relay's record, if it is alive.
    pub fn relay(&self, id: &RelayId) -> Option<&RelayRecord> {
        self.relays.get(id)
    }

    /// The services `relay` reaches, with their connectors.
    pub fn services_of<'a>(
        &'a self,
        relay: &'a RelayId,
    ) -> impl Iterator<Item = (ServiceId, &'a ServiceRecord)> + 'a {
        self.reach
            .iter()
            .filter_map(move |(s, by_relay)| by_relay.get(relay).map(|r| (*s, r)))
    }

    /// The live relays that reach `service`, with their connectors.
    pub fn relays_for(
        &self,
        service: ServiceId,
    ) -> impl Iterator<Item = (&RelayId, &ServiceRecord)> + '_ {
        self.reach
            .get(&service)
            .into_iter()
            .flatten()
            .filter(|(relay, _)| self.relays.contains_key(*relay))
    }

    /// Every service some relay reaches.
    pub fn services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.reach.keys().copied()
    }

    /// Every user some relay says it holds a session with.
    pub fn users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users.keys().copied()
    }

    /// A live relay that `user` holds a hop session with (the lowest id
    /// when several say so, e.g. while the user moves).
    pub fn relay_of_user(&self, user: UserId) -> Option<&RelayId> {
        self.users
            .get(&user)?
            .iter()
            .find(|r| self.relays.contains_key(*r))
    }

    fn apply_put(&mut self, root: &str, kv: &KeyValue) -> Result<(), Skip> {
        match parse_key(root, &kv.key).ok_or(Skip)? {
            MeshKey::Relay(id) => {
                let record = serde_json::from_slice(&kv.value).map_err(|_| Skip)?;
                self.relays.insert(id, record);
            }
            MeshKey::Service(service, relay) => {
                let record = serde_json::from_slice(&kv.value).map_err(|_| Skip)?;
                self.reach.entry(service).or_default().insert(relay, record);
            }
            MeshKey::User(user, relay) => {
                self.users.entry(user).or_default().insert(relay);
            }
        }
        Ok(())
    }

    fn apply_delete(&mut self, root: &str, key: &[u8]) {
        match parse_key(root, key) {
            Some(MeshKey::Relay(id)) => {
                self.relays.remove(&id);
            }
            Some(MeshKey::Service(service, relay)) => {
                if let Some(by_relay) = self.reach.get_mut(&service) {
                    by_relay.remove(&relay);
                    if by_relay.is_empty() {
                        self.reach.remove(&service);
                    }
                }
            }
            Some(MeshKey::User(user, relay)) => {
                if let Some(relays) = self.users.get_mut(&user) {
                    relays.remove(&relay);
                    if relays.is_empty() {
                        self.users.remove(&user);
                    }
                }
            }
            None => {}
        }
    }

    /// Drops a key's old value when its new one does not parse: a record
    /// that no longer reads as one is not trusted any more.
    fn forget(&mut self, root: &str, key: &[u8]) {
        self.apply_delete(root, key);
    }
}

#[cfg(test)]
impl MeshView {
    /// A view of these relays (and nothing else) at `revision`: for the
    /// control thread's tests, which hand it views without an etcd.
    pub(crate) fn of_relays(
        revision: i64,
        relays: impl IntoIterator<Item = (RelayId, RelayRecord)>,
    ) -> MeshView {
        MeshView {
            revision,
            relays: relays.into_iter().collect(),
            ..MeshView::default()
        }
    }

    /// The same view, where `relay` also reaches `service`.
    pub(crate) fn with_service(
        mut self,
        service: ServiceId,
        relay: RelayId,
        record: ServiceRecord,
    ) -> MeshView {
        self.reach.entry(service).or_default().insert(relay, record);
        self
    }
}

/// A record that was skipped (unknown key shape or unparsable value).
#[derive(Debug)]
struct Skip;

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// etcd's client URL, `http://host:port`.
    pub endpoint: String,
    /// The key root (default [`ROOT`]).
    pub root: String,
    /// How long to wait between attempts while etcd is unreachable.
    pub retry: Duration,
    /// Probe etcd after the watch has been silent this long (a partitioned
    /// etcd does not close the socket).
    pub probe_after: Duration,
}

impl WatchConfig {
    /// A configuration with the default root and timings.
    pub fn new(endpoint: impl Into<String>) -> WatchConfig {
        WatchConfig {
            endpoint: endpoint.into(),
            root: ROOT.to_string(),
            retry: Duration::from_millis(250),
            probe_after: Duration::from_secs(2),
        }
    }
}

/// What the watcher has seen.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Views published.
    pub updates: AtomicU64,
    /// Times etcd was lost (connected → disconnected).
    pub disconnects: AtomicU64,
    /// Records skipped as malformed (bad key shape or bad JSON).
    pub malformed: AtomicU64,
    /// Full re-reads of the root (start, and after a compaction).
    pub resyncs: AtomicU64,
}

/// Why a watcher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The endpoint is malformed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The thread could not be spawned.
    #[error("cannot spawn the mesh watch thread: {0}")]
    Spawn(std::io::Error),
}

/// The running watcher. Dropping it stops the thread.
#[derive(Debug)]
pub struct MeshWatch {
    latest: Arc<ArcSwap<MeshView>>,
    connected: Arc<AtomicBool>,
    stats: Arc<WatchStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MeshWatch {
    /// Starts watching. `on_update` runs on the watch thread with every new
    /// view (keep it short: hand the view over, e.g. into a channel).
    pub fn start(
        config: WatchConfig,
        on_update: impl FnMut(Arc<MeshView>) + Send + 'static,
    ) -> Result<MeshWatch, WatchError> {
        let client = Etcd::new(&config.endpoint)?;
        let latest = Arc::new(ArcSwap::from_pointee(MeshView::default()));
        let connected = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WatchStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut watcher = Watcher {
            client,
            config,
            view: MeshView::default(),
            latest: Arc::clone(&latest),
            connected: Arc::clone(&connected),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            on_update: Box::new(on_update),
        };
        let thread = std::thread::Builder::new()
            .name("mesh-watch".into())
            .spawn(move || watcher.run())
            .map_err(WatchError::Spawn)?;
        Ok(MeshWatch {
            latest,
            connected,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The latest view (the last known one while etcd is away).
    pub fn latest(&self) -> Arc<MeshView> {
        self.latest.load_full()
    }

    /// Whether the watch is live (false: the view may be stale).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The watcher's counters.
    pub fn stats(&self) -> &WatchStats {
        &self.stats
    }
}

impl Drop for MeshWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long one watch read blocks before the stop flag is looked at.
const POLL: Duration = Duration::from_millis(100);

struct Watcher {
    client: Etcd,
    config: WatchConfig,
    view: MeshView,
    latest: Arc<ArcSwap<MeshView>>,
    connected: Arc<AtomicBool>,
    stats: Arc<WatchStats>,
    stop: Arc<AtomicBool>,
    on_update: Box<dyn FnMut(Arc<MeshView>) + Send>,
}

impl Watcher {
    fn run(&mut self) {
        // Whether `view` must be rebuilt from a full read before watching.
        let mut resync = true;
        while !self.stop.load(Ordering::Relaxed) {
            match self.session(&mut resync) {
                Err(EtcdError::Stopped) => return,
                Err(EtcdError::Compacted(rev)) => {
                    tracing::warn!(
                        compacted = rev,
                        last = self.view.revision,
                        "mesh watch fell behind etcd's compaction; reading the mesh again"
                    );
                    resync = true;
                }
                Err(e) => {
                    self.lost(&e);
                    std::thread::sleep(self.config.retry);
                }
                Ok(()) => {}
            }
        }
    }

    /// One connection's worth of watching: (re)read if needed, watch from
    /// the next revision, apply batches until something breaks.
    fn session(&mut self, resync: &mut bool) -> Result<(), EtcdError> {
        if *resync {
            let (revision, kvs) = self.client.range_prefix(&self.config.root)?;
            let mut view = MeshView {
                revision,
                ..MeshView::default()
            };
            for kv in &kvs {
                if view.apply_put(&self.config.root, kv).is_err() {
                    self.skipped(kv);
                }
            }
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            *resync = false;
            self.publish(view);
        }
        let mut watch = self
            .client
            .watch(&self.config.root, self.view.revision + 1)?;
        self.up();
        let stop = Arc::clone(&self.stop);
        let keep_on = move || !stop.load(Ordering::Relaxed);
        loop {
            let (revision, events) = watch.next(POLL, self.config.probe_after, &keep_on)?;
            if events.is_empty() {
                continue;
            }
            let mut view = self.view.clone();
            for event in &events {
                match event {
                    Event::Put(kv) => {
                        if view.apply_put(&self.config.root, kv).is_err() {
                            view.forget(&self.config.root, &kv.key);
                            self.skipped(kv);
                        }
                    }
                    Event::Delete(kv) => view.apply_delete(&self.config.root, &kv.key),
                }
            }
            view.revision = revision.max(self.view.revision);
            self.publish(view);
        }
    }

    fn publish(&mut self, view: MeshView) {
        let changed = view != self.view;
        self.view = view;
        if changed || self.stats.updates.load(Ordering::Relaxed) == 0 {
            let view = Arc::new(self.view.clone());
            self.latest.store(Arc::clone(&view));
            self.stats.updates.fetch_add(1, Ordering::Relaxed);
            (self.on_update)(view);
        } else {
            // Same relays and services; only the revision moved.
            self.latest.store(Arc::new(self.view.clone()));
        }
    }

    fn skipped(&self, kv: &KeyValue) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "skipped a malformed mesh record");
    }

    fn up(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(
                etcd = self.client.endpoint(),
                revision = self.view.revision,
                relays = self.view.relays.len(),
                "mesh watch live"
            );
        }
    }

    fn lost(&self, e: &EtcdError) {
        if self.connected.swap(false, Ordering::Relaxed) {
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, revision = self.view.revision, relays = self.view.relays.len(), "mesh watch lost etcd; routing on the last known view until it returns");
        } else {
            tracing::debug!(error = %e, "mesh watch: etcd still unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision: 1,
            lease: None,
        }
    }

    const RECORD: &str =
        r#"{"address":"127.0.0.1:4500","region":"r","load":0.5,"public_key":"00","started":1}"#;

    #[test]
    fn views_join_relays_and_services() {
        let mut v = MeshView::default();
        v.apply_put(ROOT, &kv("/ztna/v1/relays/a", RECORD)).unwrap();
        v.apply_put(
            ROOT,
            &kv(
                "/ztna/v1/services/7/a",
                r#"{"connectors":[{"id":1,"key":"00"}]}"#,
            ),
        )
        .unwrap();
        v.apply_put(
            ROOT,
            &kv(
                "/ztna/v1/services/7/b",
                r#"{"connectors":[{"id":2,"key":"00"}]}"#,
            ),
        )
        .unwrap();
        let a = RelayId::new("a").unwrap();
        let reach: Vec<_> = v.relays_for(ServiceId(7)).map(|(r, _)| r.clone()).collect();
        assert_eq!(reach, vec![a.clone()], "b has no record: not reachable");
        assert_eq!(v.services_of(&a).count(), 1);
        v.apply_delete(ROOT, b"/ztna/v1/relays/a");
        assert_eq!(v.relays_for(ServiceId(7)).count(), 0);
    }

    #[test]
    fn views_know_where_users_are() {
        let mut v = MeshView::default();
        v.apply_put(ROOT, &kv("/ztna/v1/users/9/b", "{}")).unwrap();
        assert_eq!(v.relay_of_user(UserId(9)), None, "b has no record");
        v.apply_put(ROOT, &kv("/ztna/v1/relays/b", RECORD)).unwrap();
        let b = RelayId::new("b").unwrap();
        assert_eq!(v.relay_of_user(UserId(9)), Some(&b));
        v.apply_delete(ROOT, b"/ztna/v1/users/9/b");
        assert_eq!(v.relay_of_user(UserId(9)), None);
    }

    #[test]
    fn malformed_records_are_skipped() {
        let mut v = MeshView::default();
        assert!(v.apply_put(ROOT, &kv("/ztna/v1/relays/a", "{")).is_err());
        assert!(v
            .apply_put(ROOT, &kv("/ztna/v1/relays/a/b", RECORD))
            .is_err());
        assert!(v
            .apply_put(ROOT, &kv("/ztna/v1/services/7/a", r#"{"connectors":[7]}"#))
            .is_err());
        assert_eq!(v, MeshView::default());
    }
}
