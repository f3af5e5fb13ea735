//! Mesh links: hop sessions between relays that see each other in the
//! mesh's etcd.
//!
//! The mesh view arrives from a [`MeshWatch`] thread over a channel the
//! control loop drains (the watch thread never blocks on it). For each pair
//! of relays exactly one side initiates: the one with the lower relay id.
//!
//! A pair holds one link per worker both relays have. Each worker owns a
//! link port besides the shared port (`RelayRecord::link_ports`); link `k`
//! runs between the two relays' `k`-th link ports: the initiation leaves
//! from worker `k`'s link port to the peer's, the peer answers to it, and
//! each side sends the link's frames to the other's `k`-th port. A UDP
//! 4-tuple per link means the kernel delivers link `k` to worker `k` at
//! both ends (no `SO_REUSEPORT` hash to defeat, no GRO run mixing links),
//! and routes spread flows over the links by a hash of (user, service):
//! transit between two relays uses every core.
//!
//! The initiator pins the peer's static key and link address from its etcd
//! record, retries every [`RETRY`] while unanswered (a fresh initiation,
//! hence a fresh timestamp) and rekeys after `REKEY_AFTER_TIME`. The
//! response comes back through worker `k`'s handshake path; the session is
//! installed exactly as a responder's is, on worker `k`.
//!
//! As responder, a relay accepts a relay certificate only if its key is
//! the `public_key` of a relay record in the current view (and, with
//! `[mesh] peers`, of a relay it may link with): a relay certificate that
//! leaked is useless unless its holder can also register in etcd. Sessions
//! with relays that left the view are removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use proto::control::ControlMessage;
use proto::handshake::timers::REKEY_AFTER_TIME;
use proto::handshake::{CookieJar, HopInitiator, LocalIdentity, Trust};
use proto::identity::{key_from_hex, Role};
use proto::ids::{ReceiverIndex, ServiceId};
use proto::route::{MeshEntry, MeshRoutes};
use proto::session::Peer;

use super::{unix_nanos, Control};
use crate::mesh::paths;
use crate::mesh::registry::{RelayId, RelayRecord};
use crate::mesh::view::{MeshView, MeshWatch};
use crate::worker::ToWorker;

/// How long an initiation waits for its response before a new one goes
/// out.
pub const RETRY: Duration = Duration::from_secs(1);

/// This relay's side of the mesh: who it is, what it last saw in etcd, and
/// the links it initiates.
pub struct MeshLinks {
    me: RelayId,
    identity: LocalIdentity,
    trust: Trust,
    /// Kept for its lifetime: dropping it stops the watch thread.
    _watch: MeshWatch,
    views: Receiver<Arc<MeshView>>,
    /// Static keys of the other relays in the current view.
    keys: HashSet<[u8; 32]>,
    /// Links this relay initiates (the peer's id is greater than ours),
    /// by peer and link number (= worker at both ends).
    outbound: BTreeMap<(RelayId, usize), Outbound>,
    /// The only relays to hold links with (`None`: every relay in the
    /// view). Others are reached through them.
    peers: Option<BTreeSet<RelayId>>,
    /// The links last published in this relay's etcd record.
    published_links: Vec<String>,
    /// The view and the linked relays the route builder's mesh input was
    /// last derived from (`None`: not yet).
    routed: Option<(Arc<MeshView>, BTreeSet<RelayId>)>,
}

impl fmt::Debug for MeshLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshLinks")
            .field("me", &self.me)
            .field("peers", &self.keys.len())
            .field("outbound", &self.outbound.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One link this relay initiates: link `k` runs between this relay's and
/// the peer's `k`-th link ports, so worker `k` receives its frames at
/// both ends.
struct Outbound {
    record: RelayRecord,
    key: [u8; 32],
    jar: CookieJar,
    /// The peer's `k`-th link port: where initiations and the link's
    /// frames go.
    to: SocketAddr,
    attempt: Option<HopInitiator>,
    last_try: Option<Instant>,
    established: Option<Instant>,
}

impl MeshLinks {
    /// Starts handshakes with `identity` from now on: a renewed
    /// certificate for the same key (links up carry on).
    pub fn renew(&mut self, identity: LocalIdentity) {
        if self.identity.same_key(&identity) {
            self.identity = identity;
        }
    }

    /// Links for relay `me` (certificate `identity`), trusting relay
    /// certificates from `ca`, fed views by `views` from `watch`.
    pub fn new(
        me: RelayId,
        identity: LocalIdentity,
        ca: proto::identity::CaPublicKey,
        watch: MeshWatch,
        views: Receiver<Arc<MeshView>>,
    ) -> MeshLinks {
        MeshLinks {
            me,
            identity,
            trust: Trust::new(ca, &[Role::Relay]),
            _watch: watch,
            views,
            keys: HashSet::new(),
            outbound: BTreeMap::new(),
            peers: None,
            published_links: Vec::new(),
            routed: None,
        }
    }

    /// Holds links only with these relays (both ends must allow a link);
    /// `None`: with every relay in the view.
    pub fn with_peers(mut self, peers: Option<BTreeSet<RelayId>>) -> MeshLinks {
        self.peers = peers;
        self
    }

    /// Whether the etcd watch is live.
    pub fn watch_connected(&self) -> bool {
        self._watch.connected()
    }

    /// Whether a relay certificate with this static key may hold a link:
    /// its key is in the record of a relay of the current view that this
    /// relay links with.
    pub fn admits(&self, static_key: &[u8; 32]) -> bool {
        self.keys.contains(static_key)
    }
}

impl Control {
    /// Tells the route builder what the mesh reaches over the links that
    /// are up, when the view or the set of linked relays changed since it
    /// was last told (it keeps the rest up to date itself):
    ///
    /// * per service, every connector of it behind another relay (from the
    ///   relays' etcd records), each with its relay's place in relay-id
    ///   order (this relay's own connectors take their place from
    ///   [`MeshRoutes::me`]) and the relay first on the shortest path to it
    ///   ([`paths::first_hops`]); relays that no path reaches are left out;
    /// * each user the view places on another relay, with the relay first
    ///   on the path there (a session here takes precedence).
    ///
    /// Also publishes this relay's live links in its etcd record when they
    /// changed.
    pub(super) fn mesh_routes(&mut self) {
        let Some(mesh) = self.mesh.as_ref() else {
            return;
        };
        let mut declared: BTreeMap<RelayId, BTreeSet<RelayId>> = BTreeMap::new();
        let mut keys: BTreeMap<&RelayId, [u8; 32]> = BTreeMap::new();
        let mut mine: BTreeSet<RelayId> = BTreeSet::new();
        for (id, record) in self.view.relays() {
            if *id == mesh.me {
                continue;
            }
            declared.insert(id.clone(), record.linked());
            let Some(key) = key_from_hex(&record.public_key) else {
                continue;
            };
            keys.insert(id, key);
            if self.routing.is_linked(&key) {
                mine.insert(id.clone());
            }
        }
        let unchanged = mesh
            .routed
            .as_ref()
            .is_some_and(|(view, linked)| Arc::ptr_eq(view, &self.view) && *linked == mine);
        if unchanged {
            return;
        }
        let paths = paths::first_hops(&mesh.me, &mine, &declared);
        let via = |relay: &RelayId| paths.get(relay).and_then(|p| keys.get(&p.first)).copied();
        // Every relay lists connectors by (relay id, connector id): a
        // relay's place in that order is its rank among the relay ids.
        let order: BTreeMap<&RelayId, u32> = self
            .view
            .relays()
            .keys()
            .chain([&mesh.me])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .zip(0..)
            .collect();
        let mut input = MeshRoutes {
            me: order.get(&mesh.me).copied().unwrap_or_default(),
            ..MeshRoutes::default()
        };
        let services: BTreeSet<ServiceId> = self.view.services().collect();
        for service in services {
            let mut entries = Vec::new();
            for (relay, record) in self.view.relays_for(service) {
                if *relay == mesh.me {
                    continue;
                }
                let (Some(via), Some(&rank)) = (via(relay), order.get(relay)) else {
                    continue;
                };
                for c in &record.connectors {
                    if let Some(key) = c.static_key() {
                        entries.push(MeshEntry {
                            relay: rank,
                            connector: c.id,
                            key,
                            via,
                        });
                    }
                }
            }
            input.services.insert(service, entries);
        }
        for user in self.view.users() {
            if let Some(via) = self.view.relay_of_user(user).and_then(via) {
                input.users.push((user, via));
            }
        }
        self.routing.set_mesh(input);
        let links: Vec<String> = mine.iter().map(|r| r.as_str().to_owned()).collect();
        let view = Arc::clone(&self.view);
        if let Some(mesh) = self.mesh.as_mut() {
            mesh.routed = Some((view, mine));
            if mesh.published_links != links {
                if let Some(registry) = &self.registry {
                    registry.set_links(links.clone());
                }
                mesh.published_links = links;
            }
        }
    }

    /// Mesh housekeeping, once per loop: take the newest view, start or
    /// retry initiations, rekey, publish the control plane's state.
    pub(super) fn mesh_tick(&mut self, now: Instant) {
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        let mut newest = None;
        while let Ok(view) = mesh.views.try_recv() {
            newest = Some(view);
        }
        if let Some(view) = newest {
            self.apply_view(&view);
            // Remote services and users may have come or gone.
            self.view = view;
            self.routes_dirty = true;
            self.directories_dirty = true;
        }
        let links: Vec<(RelayId, usize)> = self
            .mesh
            .as_ref()
            .map(|m| m.outbound.keys().cloned().collect())
            .unwrap_or_default();
        for link in links {
            self.maybe_initiate(&link, now);
        }
        // The control plane's state, as of the view just applied.
        let status = &self.shared.mesh;
        status.enabled.store(true, Ordering::Relaxed);
        status.watch_connected.store(
            self.mesh.as_ref().is_some_and(MeshLinks::watch_connected),
            Ordering::Relaxed,
        );
        status.registered.store(
            self.registry.as_ref().is_some_and(|r| r.connected()),
            Ordering::Relaxed,
        );
        status
            .revision
            .store(self.view.revision.max(0) as u64, Ordering::Relaxed);
    }

    /// A new view: forget peers that left or changed (a restart is a new
    /// record), remove sessions of relays no longer in it, add new peers.
    fn apply_view(&mut self, view: &MeshView) {
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        let mut keys = HashSet::new();
        let mut wanted = BTreeMap::new();
        for (id, record) in view.relays() {
            if *id == mesh.me || mesh.peers.as_ref().is_some_and(|p| !p.contains(id)) {
                continue;
            }
            let Some(key) = key_from_hex(&record.public_key) else {
                tracing::debug!(relay = %id, "mesh: relay record with a malformed public_key ignored");
                continue;
            };
            keys.insert(key);
            if *id <= mesh.me {
                continue;
            }
            // One link per worker both relays have.
            let links = self.allocators.len().min(record.link_ports.len());
            if links == 0 {
                tracing::debug!(relay = %id, "mesh: relay record without link ports; no link");
            }
            for k in 0..links {
                if let Some(to) = record.link_address(k) {
                    wanted.insert((id.clone(), k), (record.clone(), key, to));
                }
            }
        }
        mesh.keys = keys;
        let mut released = Vec::new();
        mesh.outbound.retain(|(id, k), out| {
            let keep = wanted
                .get(&(id.clone(), *k))
                .is_some_and(|(record, _, _)| record.same_incarnation(&out.record));
            if !keep {
                tracing::info!(relay = %id, link = k, "mesh: relay left the view or changed; its link is dropped");
                if let Some(a) = out.attempt.take() {
                    released.push((*k, a.local_index()));
                }
            }
            keep
        });
        for (link, (record, key, to)) in wanted {
            if let Some(out) = mesh.outbound.get_mut(&link) {
                // Same incarnation; its load or links changed.
                out.record = record;
                continue;
            }
            mesh.outbound.entry(link).or_insert_with(|| Outbound {
                record,
                key,
                jar: CookieJar::new(&key),
                to,
                attempt: None,
                last_try: None,
                established: None,
            });
        }
        for (worker, index) in released {
            self.allocators[worker].release(index);
        }
        // Sessions with relays whose key is in no record any more.
        for slot in 0..self.sessions.len() {
            let gone = self.sessions[slot].as_ref().is_some_and(|s| {
                matches!(s.peer, Peer::Relay(_))
                    && !self.mesh.as_ref().is_some_and(|m| m.admits(&s.static_key))
            });
            if gone {
                self.remove(slot, "relay left the mesh view");
            }
        }
    }

    /// Sends a new initiation on `link` if none is pending and the link is
    /// down or due a rekey, or if the pending one went unanswered for
    /// [`RETRY`]. It leaves from worker `k`'s link port, to the peer's.
    fn maybe_initiate(&mut self, link: &(RelayId, usize), now: Instant) {
        let worker = link.1;
        let Some(out) = self.mesh.as_mut().and_then(|m| m.outbound.get_mut(link)) else {
            return;
        };
        let due = match (&out.attempt, out.established) {
            (Some(_), _) | (None, None) => {
                out.last_try.is_none_or(|t| now.duration_since(t) >= RETRY)
            }
            (None, Some(at)) => now.duration_since(at) >= REKEY_AFTER_TIME,
        };
        if !due {
            return;
        }
        if let Some(old) = out.attempt.take() {
            self.allocators[worker].release(old.local_index());
        }
        let Some(index) = self
            .allocators
            .get_mut(worker)
            .and_then(proto::session::IndexAllocator::allocate)
        else {
            tracing::warn!(relay = %link.0, worker, "mesh: no free receiver index for an initiation");
            return;
        };
        // Reborrow after using the allocators.
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        let Some(out) = mesh.outbound.get_mut(link) else {
            return;
        };
        out.last_try = Some(now);
        match HopInitiator::new(
            &mesh.identity,
            &out.key,
            mesh.trust.clone(),
            index,
            &out.jar,
            now,
            unix_nanos(),
        ) {
            Ok((initiator, frame)) => {
                tracing::debug!(relay = %link.0, link = worker, to = %out.to, %index, "mesh: hop initiation sent");
                out.attempt = Some(initiator);
                let to = out.to;
                let _ = self.workers[worker].send(ToWorker::SendFromLink { to, bytes: frame });
            }
            Err(e) => {
                self.allocators[worker].release(index);
                tracing::warn!(relay = %link.0, error = %e, "mesh: cannot build a hop initiation");
            }
        }
    }

    /// The link whose pending initiation has receiver index `receiver` on
    /// `worker` (its answer comes to that worker's link port), if any.
    fn pending(&self, worker: usize, receiver: ReceiverIndex) -> Option<(RelayId, usize)> {
        let mesh = self.mesh.as_ref()?;
        mesh.outbound.iter().find_map(|(link, out)| {
            (link.1 == worker
                && out
                    .attempt
                    .as_ref()
                    .is_some_and(|a| a.local_index() == receiver))
            .then(|| link.clone())
        })
    }

    /// A `HandshakeResponse` for index `receiver`, arrived at `worker`
    /// from `from`.
    pub(super) fn mesh_response(
        &mut self,
        worker: usize,
        from: SocketAddr,
        frame: &[u8],
        receiver: ReceiverIndex,
    ) {
        let Some(link) = self.pending(worker, receiver) else {
            self.stats.reject(super::HandshakeReject::Unanswered);
            return;
        };
        let now = Instant::now();
        let Some(out) = self.mesh.as_mut().and_then(|m| m.outbound.get_mut(&link)) else {
            return;
        };
        let Some(mut initiator) = out.attempt.take() else {
            return;
        };
        let keys = match initiator.handle_response(frame, now, unix_nanos()) {
            Ok(keys) => keys,
            Err(e) => {
                // A frame for another index or with a bad mac1 leaves the
                // attempt alone; anything later ends it (retried in RETRY).
                if matches!(
                    e,
                    proto::handshake::HandshakeError::BadMac1
                        | proto::handshake::HandshakeError::WrongReceiver { .. }
                ) {
                    out.attempt = Some(initiator);
                } else {
                    self.allocators[worker].release(receiver);
                }
                self.stats.reject(super::HandshakeReject::of(&e));
                tracing::debug!(relay = %link.0, %from, error = %e, "mesh: hop response rejected");
                return;
            }
        };
        out.established = Some(now);
        // The link's frames go to the peer's link port (the response may
        // come from its shared port).
        let to = out.to;
        // Confirmed: the response proved the peer's keys to us.
        let slot = self.establish(worker, to, keys, now, true);
        // The response confirmed the keys to us; a ping confirms them to
        // the peer (which sends nothing before it) and starts keepalives.
        if let Some(e) = self.sessions[slot].as_mut() {
            e.pinged = true;
        }
        self.send_control(slot, &ControlMessage::Ping { digest: 0 });
    }

    /// A `CookieReply` for index `receiver` at `worker`: the peer is under
    /// load; store the cookie and send the initiation again with mac2.
    pub(super) fn mesh_cookie(&mut self, worker: usize, frame: &[u8], receiver: ReceiverIndex) {
        let Some(link) = self.pending(worker, receiver) else {
            self.stats.reject(super::HandshakeReject::Unanswered);
            return;
        };
        let now = Instant::now();
        let Some(out) = self.mesh.as_mut().and_then(|m| m.outbound.get_mut(&link)) else {
            return;
        };
        let Some(initiator) = out.attempt.as_mut() else {
            return;
        };
        if let Err(e) = initiator.handle_cookie_reply(frame, &mut out.jar, now) {
            self.stats.reject(super::HandshakeReject::of(&e));
            tracing::debug!(relay = %link.0, error = %e, "mesh: cookie reply rejected");
            return;
        }
        let bytes = initiator.init_frame(&out.jar, now);
        let to = out.to;
        let _ = self.workers[worker].send(ToWorker::SendFromLink { to, bytes });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use crossbeam_channel::{Receiver, Sender};
    use proto::handshake::{parse, CookieChecker, HandshakeFrame};
    use proto::identity::{key_from_hex as parse_key, to_hex, CaKeypair, Role};
    use proto::ids::ReceiverIndex;
    use proto::testkit::handshake::static_keypair;

    use proto::ids::{ServiceId, UserId};
    use proto::policy::{CompiledPolicy, PolicyFile};
    use proto::route::pick;
    use proto::session::HopId;

    use super::super::tests::{control_over, from, keys, node};
    use super::{MeshLinks, RETRY};
    use crate::control::{connector_services, Control};
    use crate::mesh::registry::{ConnectorRecord, RelayId, RelayRecord, ServiceRecord};
    use crate::mesh::view::{MeshView, MeshWatch, WatchConfig};
    use crate::worker::ToWorker;

    fn id(name: &str) -> RelayId {
        RelayId::new(name).unwrap()
    }

    fn key(seed: u8) -> [u8; 32] {
        static_keypair(seed).public
    }

    /// A relay's record: the static key of `seed`, reached at 127.0.0.1
    /// `port`, with `workers` link ports after it.
    fn record(seed: u8, port: u16, workers: u16) -> RelayRecord {
        RelayRecord {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            region: "r".into(),
            load: 0.0,
            public_key: to_hex(&key(seed)),
            started: 1,
            links: Vec::new(),
            link_ports: (1..=workers).map(|k| port + k).collect(),
        }
    }

    /// Relay `me`'s side of the mesh, with the harness relay's key (seed
    /// 7), over a watch that never connects (nothing listens at its
    /// endpoint): the test hands it views through the sender.
    fn mesh(me: &str) -> (MeshLinks, Sender<Arc<MeshView>>) {
        let ca = CaKeypair::from_seed(&[0x42; 32]);
        let watch = MeshWatch::start(WatchConfig::new("http://127.0.0.1:1"), |_| {}).unwrap();
        let (views, rx) = crossbeam_channel::unbounded();
        let identity = node(1000, Role::Relay, 7);
        (
            MeshLinks::new(id(me), identity, ca.public(), watch, rx),
            views,
        )
    }

    /// A control thread over `workers` workers, in the mesh as `me`
    /// (limited to `peers` if given), that has taken `relays` as its view.
    fn linked(
        me: &str,
        peers: Option<&[&str]>,
        workers: usize,
        relays: &[(&str, RelayRecord)],
        now: Instant,
    ) -> (Control, Vec<Receiver<ToWorker>>, Sender<Arc<MeshView>>) {
        let (links, views) = mesh(me);
        let links = links.with_peers(peers.map(|p| p.iter().map(|r| id(r)).collect()));
        let (control, inboxes) = control_over(workers);
        let mut control = control.with_mesh(Some(links));
        send_view(&views, 1, relays);
        control.mesh_tick(now);
        (control, inboxes, views)
    }

    fn send_view(views: &Sender<Arc<MeshView>>, revision: i64, relays: &[(&str, RelayRecord)]) {
        let relays = relays.iter().map(|(r, rec)| (id(r), rec.clone()));
        views
            .send(Arc::new(MeshView::of_relays(revision, relays)))
            .unwrap();
    }

    /// The initiations a worker was asked to send from its link port.
    fn initiations(inbox: &Receiver<ToWorker>) -> Vec<(SocketAddr, Vec<u8>)> {
        inbox
            .try_iter()
            .filter_map(|m| match m {
                ToWorker::SendFromLink { to, bytes } => Some((to, bytes)),
                _ => None,
            })
            .collect()
    }

    /// The receiver index of the initiation pending on `link`.
    fn pending_index(control: &Control, peer: &str, k: usize) -> Option<ReceiverIndex> {
        let mesh = control.mesh.as_ref().unwrap();
        let out = mesh.outbound.get(&(id(peer), k))?;
        out.attempt.as_ref().map(|a| a.local_index())
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Of each pair of relays the one with the lower id initiates, one
    /// link per worker both have, each from worker `k` to the peer's
    /// `k`-th link port; a relay admits the keys of the other relays in
    /// its view, not its own. (Kills run 10's `<=` -> `>`, which made the
    /// higher id initiate, so a mesh of old and new relays would hold no
    /// link or two, and `||` -> `&&` in the skip of its own record, which
    /// admitted its own key.)
    #[test]
    fn the_lower_relay_id_initiates_one_link_per_shared_worker() {
        let relays = [
            ("relay-a", record(21, 5000, 2)),
            ("relay-b", record(7, 5100, 2)),
            ("relay-c", record(23, 5200, 3)),
        ];
        let (control, inboxes, _views) = linked("relay-b", None, 2, &relays, Instant::now());
        let mesh = control.mesh.as_ref().unwrap();
        let links: Vec<_> = mesh
            .outbound
            .iter()
            .map(|((r, k), out)| (r.as_str(), *k, out.to))
            .collect();
        assert_eq!(links, [("relay-c", 0, at(5201)), ("relay-c", 1, at(5202))]);
        for (k, inbox) in inboxes.iter().enumerate() {
            let to: Vec<_> = initiations(inbox).into_iter().map(|(to, _)| to).collect();
            assert_eq!(to, [at(5201 + k as u16)], "worker {k}");
        }
        assert!(mesh.admits(&key(21)) && mesh.admits(&key(23)));
        assert!(!mesh.admits(&key(7)), "its own key");
    }

    /// With `[mesh] peers`, only the peers' keys are admitted and only
    /// they are linked. (Kills run 10's `delete !` in the peers check,
    /// which linked every relay but the peers, and `||` -> `&&`, which
    /// admitted relays outside the peers.)
    #[test]
    fn with_peers_only_the_peers_are_admitted_and_linked() {
        let relays = [
            ("relay-a", record(21, 5000, 1)),
            ("relay-b", record(22, 5100, 1)),
            ("relay-c", record(23, 5200, 1)),
        ];
        let (control, _inboxes, _views) =
            linked("relay-a", Some(&["relay-c"]), 1, &relays, Instant::now());
        let mesh = control.mesh.as_ref().unwrap();
        let links: Vec<_> = mesh.outbound.keys().cloned().collect();
        assert_eq!(links, [(id("relay-c"), 0)]);
        assert!(mesh.admits(&key(23)));
        assert!(!mesh.admits(&key(22)), "not a peer");
        assert!(!mesh.admits(&key(21)), "its own record");
    }

    /// A new view of the same relay keeps the link's pending initiation
    /// (no new one before [`RETRY`]); a view without the relay drops the
    /// link and releases the initiation's receiver index. (Kills run 10's
    /// `delete !` in `apply_view`'s `retain`, which dropped the pending
    /// initiation of every link that stayed and kept the index of every
    /// link that went.)
    #[test]
    fn a_pending_initiation_outlives_a_new_view_and_goes_with_its_relay() {
        let now = Instant::now();
        let a = ("relay-a", record(7, 5000, 1));
        let b = ("relay-b", record(22, 5100, 1));
        let (mut control, inboxes, views) =
            linked("relay-a", None, 1, &[a.clone(), b.clone()], now);
        assert_eq!(initiations(&inboxes[0]).len(), 1);
        let index = pending_index(&control, "relay-b", 0).unwrap();

        // The same incarnation, busier.
        let mut busier = b.clone();
        busier.1.load = 0.5;
        send_view(&views, 2, &[a.clone(), busier]);
        control.mesh_tick(now + RETRY / 2);
        assert_eq!(pending_index(&control, "relay-b", 0), Some(index));
        assert!(
            initiations(&inboxes[0]).is_empty(),
            "sent again before RETRY"
        );

        // Gone: its slot is the next one handed out.
        send_view(&views, 3, &[a]);
        control.mesh_tick(now + RETRY / 2);
        assert!(control.mesh.as_ref().unwrap().outbound.is_empty());
        let next = control.allocators[0].allocate().unwrap();
        let slot = |i: ReceiverIndex| i.0 & ((1 << proto::session::SLOT_BITS) - 1);
        assert_eq!(slot(next), slot(index));
        assert_ne!(next, index);
    }

    /// A response is matched to the link whose pending initiation used
    /// its receiver index, on the worker it arrived at. (Kills run 10's
    /// `&&` -> `||` in `pending`, which took the first link of that worker
    /// whatever the index: with two peers the second's response went to
    /// the first's initiation, and the second link never came up.)
    #[test]
    fn a_response_is_matched_to_the_link_of_its_worker_and_index() {
        let relays = [
            ("relay-a", record(7, 5000, 2)),
            ("relay-b", record(22, 5100, 2)),
            ("relay-c", record(23, 5200, 2)),
        ];
        let (control, _inboxes, _views) = linked("relay-a", None, 2, &relays, Instant::now());
        for peer in ["relay-b", "relay-c"] {
            for k in 0..2 {
                let index = pending_index(&control, peer, k).unwrap();
                assert_eq!(control.pending(k, index), Some((id(peer), k)), "{peer} {k}");
            }
        }
        assert_eq!(control.pending(0, ReceiverIndex(0xdead)), None);
    }

    /// A cookie reply from a peer under load is taken and the initiation
    /// sent again at once, with a mac2 the peer accepts. (Kills run 10's
    /// `mesh_cookie -> ()`: no test put a mesh peer under load.)
    #[test]
    fn a_cookie_reply_sends_the_initiation_again_with_its_cookie() {
        let now = Instant::now();
        let relays = [
            ("relay-a", record(7, 5000, 1)),
            ("relay-b", record(22, 5100, 1)),
        ];
        let (mut control, inboxes, _views) = linked("relay-a", None, 1, &relays, now);
        let sent = initiations(&inboxes[0]);
        assert_eq!(sent.len(), 1);
        let Ok(HandshakeFrame::Init(init)) = parse(&sent[0].1) else {
            panic!("not an initiation");
        };
        assert_eq!(*init.mac2, [0; 16], "no cookie yet");
        let checker = CookieChecker::new(&key(22), [9; 32], now);
        let source = at(5001);
        let reply = checker.reply(init.sender, init.mac1, source, now, &mut rand::rngs::OsRng);
        control.mesh_cookie(0, &reply, init.sender);

        let again = initiations(&inboxes[0]);
        assert_eq!(again.len(), 1, "sent again");
        assert_eq!(again[0].0, at(5101));
        let Ok(HandshakeFrame::Init(init)) = parse(&again[0].1) else {
            panic!("not an initiation");
        };
        assert!(checker.check_mac2(init.bytes, init.mac2, source, now));
        assert_eq!(control.stats.handshakes_rejected.total(), 0);
    }

    /// A relay lists a service's connectors in the mesh in the order every
    /// relay lists them, itself at its rank among the relay ids, so that
    /// a flow arriving from another relay goes on to the connector the
    /// ingress relay picked. (Kills run 10's deleted `me` field of the
    /// mesh input: this relay then took place 0 whatever its rank, so
    /// behind relay-a its own connector and relay-a's swapped places and
    /// every transit flow went to the other connector than the one chosen
    /// upstream. In the mesh tests a service has one connector in the
    /// whole mesh, whose place in a list of one cannot matter.)
    #[test]
    fn transit_flows_pick_in_the_mesh_order_with_this_relay_at_its_rank() {
        let now = Instant::now();
        let service = ServiceId(2);
        let file = PolicyFile::from_toml_str(
            r#"
            [[connectors]]
            id = 9
            name = "c"
            [[services]]
            id = 2
            name = "s"
            protocol = "udp"
            target = "[::1]:53"
            connectors = ["c"]
            "#,
        )
        .unwrap();
        let policy = CompiledPolicy::compile(&file).unwrap();
        // This relay is relay-b, rank 1: connector 9 here, and a link to
        // relay-a (rank 0, certificate 30, static key [31; 32]), which
        // reaches the service through its connector 10.
        let (links, views) = mesh("relay-b");
        let (control, _inboxes) = control_over(1);
        let mut control = control.with_mesh(Some(links));
        control
            .routing
            .set_connector_services(connector_services(&policy));
        control.shared.swap_policy(policy);
        let local = control.establish(0, from(), keys(9, Role::Connector, 1, now), now, true);
        let link = control.establish(0, from(), keys(30, Role::Relay, 2, now), now, true);
        let mut a = record(0, 5000, 1);
        a.public_key = to_hex(&[31; 32]);
        a.links = vec!["relay-b".into()];
        let reach = ServiceRecord {
            connectors: vec![ConnectorRecord::new(10, &[11; 32])],
        };
        let view =
            MeshView::of_relays(1, [(id("relay-a"), a), (id("relay-b"), record(7, 5100, 1))])
                .with_service(service, id("relay-a"), reach);
        views.send(Arc::new(view)).unwrap();
        control.mesh_tick(now);
        control.mesh_routes();

        // The mesh order: relay-a's connector 10, then this relay's 9.
        let table = control.routing.table();
        let mut seen = BTreeSet::new();
        for u in 0..32 {
            let user = UserId(u);
            let want = match pick(user, service, 2) {
                0 => HopId(link as u32),
                _ => HopId(local as u32),
            };
            assert_eq!(
                table.to_service_transit(service, user),
                Some(want),
                "user {u}"
            );
            seen.insert(want);
        }
        assert_eq!(seen.len(), 2, "both connectors picked");
    }

    /// A renewed certificate for the same key is used from the next
    /// initiation on; one for another key is not. `Debug` shows who the
    /// relay is and its links, no key. (Kills run 10's `renew -> ()`
    /// and the `Debug` that printed nothing.)
    #[test]
    fn links_take_a_renewal_for_their_key_only_and_print_their_links() {
        let relays = [
            ("relay-a", record(7, 5000, 1)),
            ("relay-b", record(22, 5100, 1)),
        ];
        let (mut control, _inboxes, _views) = linked("relay-a", None, 1, &relays, Instant::now());
        let mesh = control.mesh.as_mut().unwrap();
        mesh.renew(node(1001, Role::Relay, 7));
        assert_eq!(mesh.identity.certificate().body.id, 1001);
        mesh.renew(node(1002, Role::Relay, 8));
        assert_eq!(mesh.identity.certificate().body.id, 1001, "another key");
        assert_eq!(
            format!("{mesh:?}"),
            r#"MeshLinks { me: RelayId("relay-a"), peers: 1, outbound: [(RelayId("relay-b"), 0)] }"#
        );
    }

    #[test]
    fn record_keys_parse_as_hex_or_not_at_all() {
        let hex = to_hex(&core::array::from_fn::<u8, 32, _>(|b| b as u8));
        let key = parse_key(&hex).unwrap();
        assert_eq!(key[31], 31);
        assert!(parse_key(&hex[..62]).is_none());
        assert!(parse_key(&format!("{}zz", &hex[..62])).is_none());
        assert!(parse_key("é").is_none());
    }
}
