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
    use proto::identity::{key_from_hex as parse_key, to_hex};

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
