//! The control thread: hop handshakes, session lifetimes, routes, policy
//! reloads, signals, control messages.
//!
//! Workers hand it every hop handshake frame their datapath accepted (by
//! kind and length: initiations, and in a mesh responses and cookie
//! replies to this relay's own initiations) with the worker's id and the
//! source address. It answers through the same worker (so the reply leaves
//! from the socket the peer's flow hashes to), installs the receive half of
//! a new session into that worker *before* the reply is sent, and publishes
//! a new routing snapshot when sessions come or go.
//!
//! **Key confirmation.** A session the relay answered carries no route
//! until its peer proved it holds the keys: the worker holding it reports
//! the first frame that passed its hop tag ([`FromWorker::Confirmed`]; an
//! authenticated control message counts too), and only then do the peer's
//! routes move to it. Until then they stay on the peer's previous confirmed
//! session, so an initiation sent from a spoofed address (valid mac1, a
//! real certificate, a replay) moves nothing: its response goes to that
//! address, and only whoever receives it there can make a valid tag. The
//! session's send address is the initiation's source, which confirmation
//! proves (see `docs/security.md` §3). A session not confirmed within
//! [`CONFIRM_WITHIN`] is removed. Sessions this relay initiated (mesh
//! links) are confirmed by the response. It reloads the policy on
//! SIGHUP, on [`Shared::reload`], and when the file's modification time
//! changes; a bad file is logged and the last good policy stays.
//!
//! Workers also hand it every authenticated control frame
//! ([`proto::control`]). A user's `Ping` is answered with a `Pong` when the
//! digest it carries is that of the user's current directory, else with the
//! directory: every service the live policy allows the user that has a
//! route now, each with the connector the routing table picks for this user
//! and that connector's static key (from its certificate), and the user's
//! connection mode. A connector's `Ping` gets `Pong { digest: 0 }`. When
//! the policy is reloaded or a connector comes or goes, every user whose
//! newest session has pinged gets its new directory pushed, if it changed.
//! Nothing is sent on a session before a ping arrived on it (key
//! confirmation).

mod health;
mod links;
mod reject;
#[cfg(test)]
mod tests;

pub use health::{DEAD_AFTER, PROBE_EVERY};
pub use links::{MeshLinks, RETRY as MESH_RETRY};
pub use reject::{HandshakeReject, HandshakeRejects};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use proto::control::{
    ControlMessage, Directory, ServiceEntry, DEFAULT_MAX_BODY, MAX_PARTS, MAX_SERVICES,
};
use proto::handshake::timers::REJECT_AFTER_TIME;
use proto::handshake::{
    frames, HandshakeError, HandshakeFrame, HopResponder, HopSessionKeys, InitOutcome,
};
use proto::hoptag::HopKey;
use proto::identity::Certificate;
use proto::identity::Role;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::policy::{CompiledPolicy, PeerVerdict};
use proto::route::{RouteBuilder, RouteSession};
use proto::session::{HopId, IndexAllocator, Peer, RxSession, TxHop};
use proto::wire::{Frame, HeaderRepr, Kind, DEFAULT_TTL, HEADER_LEN};

use crate::mesh::registry::{ConnectorRecord, Registry};
use crate::mesh::view::MeshView;
use crate::policy_source::PolicySource;
use crate::renewal::{IdentityFiles, Renewal};
use crate::shared::{MeshLink, Shared};
use crate::worker::{FromWorker, ToWorker};

/// Handshakes waiting in the queue above which the relay counts itself
/// under load and asks initiators for a cookie round trip first.
pub const UNDER_LOAD_QUEUE: usize = 64;
/// How long the control thread works through its queue before it
/// publishes routes and counters and looks at the policy, expiry and the
/// mesh again (a flood keeps the queue from ever emptying).
pub const DRAIN_FOR: Duration = Duration::from_millis(20);
/// How often the policy file is checked for a change (a `stat`, and a
/// hash of its content while it was modified recently; see
/// [`crate::policy_source`]): with [`crate::policy_source::SETTLE`], the
/// bound on revocation latency.
pub const POLICY_POLL: Duration = Duration::from_millis(50);
/// Hop sessions one identity may hold at once (the current one and those
/// being replaced by rekeys); a new one beyond this evicts the oldest, so
/// one certificate cannot exhaust a worker's receiver indices.
pub const MAX_SESSIONS_PER_PEER: usize = 3;
/// A session the relay answered must be confirmed (a frame on it passed
/// its hop tag) within this long, or it is removed: an initiator sends a
/// frame at once after the response, so only initiations from spoofed
/// addresses and replays wait this long, and they hold a receiver index
/// no longer.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// One live hop session as the control thread tracks it.
#[derive(Debug)]
struct SessionEntry {
    peer: Peer,
    name: String,
    worker: usize,
    index: ReceiverIndex,
    hop: Arc<TxHop>,
    established: Instant,
    /// The peer's X25519 static key, from its certificate (what agents
    /// need of a connector for the end-to-end handshake).
    static_key: [u8; 32],
    /// Whether a frame on this session passed its tag (or this relay
    /// initiated it): until then it carries no route.
    confirmed: bool,
    /// Whether a ping arrived on this session: until then nothing is sent
    /// on it (key confirmation).
    pinged: bool,
    /// Digest of the last directory sent on this session (0: none).
    sent_digest: u64,
    /// Pings this session may still send now (token bucket).
    ping_tokens: f64,
    /// When `ping_tokens` was last refilled.
    ping_refilled: Instant,
    /// Keepalive probes and whether the peer answers them.
    health: health::Health,
}

/// Pings a session may send in a burst: an agent pings on a new session,
/// then every few seconds; a reconnect or a push may add one or two.
pub const PING_BURST: f64 = 5.0;
/// Pings per second a session earns back. Each ping may cost a policy
/// lookup per service and a directory in reply, so a peer flooding pings
/// is cut to this rate (the rest is counted as rate limited).
pub const PING_RATE: f64 = 10.0;

/// Control-thread counters, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Hop sessions established.
    pub handshakes_ok: u64,
    /// Handshake frames rejected (bad mac1, bad certificate, replays...).
    pub handshakes_failed: u64,
    /// The same, by reason (they add up to `handshakes_failed`).
    pub handshakes_rejected: HandshakeRejects,
    /// Cookie replies sent while under load.
    pub cookie_replies: u64,
    /// Sessions removed after `REJECT_AFTER_TIME`.
    pub sessions_expired: u64,
    /// Successful policy loads (the first included).
    pub policy_epoch: u64,
    /// Rejected policy reloads.
    pub policy_rejected: u64,
    /// Control messages received (authenticated by the datapath).
    pub control_received: u64,
    /// Control messages that did not parse, came on a session that is gone,
    /// or are not for a relay (a `Pong` or a directory part).
    pub control_rejected: u64,
    /// Pings dropped because their session sent more than [`PING_RATE`]
    /// per second (after a burst of [`PING_BURST`]).
    pub pings_rate_limited: u64,
    /// `Pong`s sent.
    pub pongs_sent: u64,
    /// Directories sent, in answer to a ping or pushed.
    pub directories_sent: u64,
    /// Of those, directories pushed unprompted after a policy or connector
    /// change.
    pub directories_pushed: u64,
    /// `DirectoryPart` messages sent.
    pub directory_parts_sent: u64,
    /// Peer relays this relay holds a hop session with now (mesh links
    /// up).
    pub relay_links: u64,
    /// Relay handshakes refused: the peer's key is in no relay record of
    /// the current mesh view.
    pub relay_refused: u64,
    /// Keepalive probes sent to connectors and peer relays.
    pub probes_sent: u64,
    /// Connectors and peer relays taken out of the routes for not
    /// answering probes.
    pub peers_lost: u64,
    /// Handshakes refused because the certificate is revoked.
    pub revoked_refused: u64,
    /// Sessions confirmed by their peer (a first frame passed the tag).
    pub sessions_confirmed: u64,
    /// Sessions removed unconfirmed after [`CONFIRM_WITHIN`].
    pub sessions_unconfirmed: u64,
    /// Sessions closed because a reload revoked their certificate.
    pub revoked_closed: u64,
    /// Connector and user sessions closed because a reload pinned other
    /// static keys for their id.
    pub pinned_closed: u64,
    /// User and connector sessions closed because a reload removed their
    /// identity from the policy (`[[users]]`, `[[connectors]]`).
    pub unlisted_closed: u64,
    /// Renewed certificates of this relay taken from its files.
    pub cert_renewals: u64,
    /// Changed key or certificate files refused (see the log).
    pub cert_renewals_refused: u64,
    /// End of validity of the certificate this relay presents, unix
    /// seconds (0: unknown).
    pub cert_not_after: u64,
    /// The audit log's counters ([`crate::audit`]).
    pub audit: crate::audit::AuditStats,
}

impl ControlStats {
    /// Counts a rejected handshake frame, in total and by reason.
    fn reject(&mut self, reason: HandshakeReject) {
        self.handshakes_failed += 1;
        self.handshakes_rejected.count(reason);
    }
}

/// The control thread's state.
#[derive(Debug)]
pub struct Control {
    shared: Arc<Shared>,
    responder: HopResponder,
    inbox: Receiver<FromWorker>,
    workers: Vec<Sender<ToWorker>>,
    allocators: Vec<IndexAllocator>,
    /// Slab of sessions; the slot number is the session's [`HopId`].
    sessions: Vec<Option<SessionEntry>>,
    /// (worker, receiver index) -> slot, for control frames.
    by_index: HashMap<(usize, ReceiverIndex), usize>,
    free_hops: Vec<u32>,
    next_serial: u64,
    policy_source: PolicySource,
    /// The routes, kept up to date as sessions, the policy and the mesh
    /// change; each publication takes a snapshot of them.
    routing: RouteBuilder,
    rng: rand::rngs::StdRng,
    stats: ControlStats,
    routes_dirty: bool,
    /// Set when users' directories may have changed (policy reloaded, a
    /// connector came or went); the next route publication pushes them.
    directories_dirty: bool,
    /// Registration in the mesh's etcd, if this relay is in a mesh.
    registry: Option<Registry>,
    /// What was last announced there: service -> local connectors.
    announced: BTreeMap<ServiceId, Vec<ConnectorRecord>>,
    /// The users last announced there (those with a session here).
    announced_users: BTreeSet<UserId>,
    /// The mesh as etcd last said it was (empty outside a mesh).
    view: Arc<MeshView>,
    /// Links to the other relays of the mesh, if this relay is in one.
    mesh: Option<MeshLinks>,
    /// This relay's key and certificate files, watched for a renewal.
    renewal: Option<IdentityFiles>,
    /// The audit log of access decisions, if on.
    audit: Option<crate::audit::Auditor>,
    /// When the audit last wrote its lines.
    last_audit: Instant,
}

impl Control {
    /// A control thread over `shared`, answering handshakes with
    /// `responder`, talking to the workers through `workers`.
    pub fn new(
        shared: Arc<Shared>,
        responder: HopResponder,
        inbox: Receiver<FromWorker>,
        workers: Vec<Sender<ToWorker>>,
        policy_source: PolicySource,
    ) -> Control {
        use rand::SeedableRng;
        let mut routing = RouteBuilder::new();
        routing.set_connector_services(connector_services(&shared.policy.load()));
        let cert_not_after = responder.certificate().body.not_after;
        Control {
            allocators: workers.iter().map(|_| IndexAllocator::new()).collect(),
            shared,
            responder,
            inbox,
            workers,
            sessions: Vec::new(),
            by_index: HashMap::new(),
            free_hops: Vec::new(),
            next_serial: 1,
            policy_source,
            routing,
            rng: rand::rngs::StdRng::from_entropy(),
            stats: ControlStats {
                policy_epoch: 1,
                cert_not_after,
                ..ControlStats::default()
            },
            routes_dirty: false,
            directories_dirty: false,
            registry: None,
            announced: BTreeMap::new(),
            announced_users: BTreeSet::new(),
            view: Arc::new(MeshView::default()),
            mesh: None,
            renewal: None,
            audit: None,
            last_audit: Instant::now(),
        }
    }

    /// Takes renewed certificates from `files` while running
    /// ([`crate::renewal`]).
    pub fn with_renewal(mut self, files: Option<IdentityFiles>) -> Control {
        self.renewal = files;
        self
    }

    /// Writes the audit log of the workers' access decisions
    /// ([`crate::audit`]); the workers' hand-off slots must exist
    /// ([`Shared::with_audit`]).
    pub fn with_audit(mut self, audit: Option<crate::audit::Auditor>) -> Control {
        self.audit = audit;
        self
    }

    /// Announces this relay's services in the mesh's etcd as connectors
    /// come and go (and withdraws them on stop).
    pub fn with_registry(mut self, registry: Option<Registry>) -> Control {
        self.registry = registry;
        self
    }

    /// Holds hop sessions with the relays of the mesh view.
    pub fn with_mesh(mut self, mesh: Option<MeshLinks>) -> Control {
        self.mesh = mesh;
        self
    }

    /// Runs until [`Shared::stop`] is set; returns the counters.
    pub fn run(mut self) -> ControlStats {
        let mut last_policy_check = Instant::now();
        let mut last_expiry = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            // Wait for messages only until the policy file is due a look
            // (a message that wakes the loop early must not push the poll
            // back by a whole wait), and a changed file is looked at again
            // as soon as it may have settled.
            let wait = if self.policy_source.settling() {
                crate::policy_source::SETTLE
            } else {
                POLICY_POLL.saturating_sub(last_policy_check.elapsed())
            };
            match self.inbox.recv_timeout(wait.min(Duration::from_millis(50))) {
                Ok(msg) => {
                    self.handle(msg);
                    // Drain what else is queued before publishing routes,
                    // so a burst of handshakes costs one snapshot; but for
                    // [`DRAIN_FOR`] at most: under a handshake flood the
                    // queue never empties, and routes, policy reloads,
                    // expiry and the published counters must go on.
                    let started = Instant::now();
                    while started.elapsed() < DRAIN_FOR {
                        let Ok(msg) = self.inbox.try_recv() else {
                            break;
                        };
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            let look = now.duration_since(last_policy_check) >= POLICY_POLL
                || self.policy_source.settling();
            if self.shared.reload.swap(false, Ordering::Relaxed)
                || (look && self.policy_source.changed_at(now))
            {
                self.reload_policy();
            }
            if look {
                last_policy_check = now;
            }
            if now.duration_since(last_expiry) >= Duration::from_secs(1) {
                last_expiry = now;
                self.expire(now);
                self.renew();
            }
            self.mesh_tick(now);
            self.probe(now);
            if self.routes_dirty {
                self.publish_routes();
            }
            self.audit_tick(now, false);
            self.shared.publish_control(&self.stats);
        }
        // What the workers handed over last is written before the end.
        self.audit_tick(Instant::now(), true);
        self.shared.publish_control(&self.stats);
        // A clean stop withdraws this relay from the mesh at once (the
        // lease is revoked) instead of after its TTL.
        if let Some(registry) = self.registry.take() {
            registry.stop();
        }
        self.stats
    }

    /// Takes a renewed certificate from this relay's files: new handshakes
    /// (answered and, in a mesh, started) present it; sessions up carry on.
    fn renew(&mut self) {
        let Some(files) = &mut self.renewal else {
            return;
        };
        match files.poll(unix_nanos() / 1_000_000_000) {
            Renewal::Unchanged => {}
            Renewal::Renewed(identity) => {
                let body = &identity.certificate().body;
                let (name, not_after) = (body.name.clone(), body.not_after);
                if let Some(mesh) = &mut self.mesh {
                    mesh.renew(identity.clone());
                }
                if self.responder.renew(identity) {
                    self.stats.cert_renewals += 1;
                    self.stats.cert_not_after = not_after;
                    tracing::info!(cert = %files.cert_path().display(), %name, not_after, "certificate renewed; new handshakes present it");
                }
            }
            Renewal::Refused { error, first } => {
                if first {
                    self.stats.cert_renewals_refused += 1;
                    tracing::error!(%error);
                }
            }
        }
    }

    /// Takes what the workers handed over; writes the audit lines when the
    /// interval is up (or `now` when `last`).
    fn audit_tick(&mut self, now: Instant, last: bool) {
        let Some(auditor) = self.audit.as_mut() else {
            return;
        };
        for worker in 0..self.shared.workers() {
            self.shared
                .drain_audit(worker, |table| auditor.absorb(table));
        }
        self.stats.audit = auditor.stats();
        if last || now.duration_since(self.last_audit) >= auditor.config().interval {
            self.last_audit = now;
            auditor.flush(&self.shared.policy.load(), &mut crate::audit::TracingSink);
            self.stats.audit = auditor.stats();
        }
    }

    fn handle(&mut self, msg: FromWorker) {
        match msg {
            FromWorker::Handshake {
                worker,
                from,
                bytes,
            } => self.handshake(worker, from, &bytes),
            FromWorker::Control {
                worker,
                index,
                bytes,
            } => self.control(worker, index, &bytes),
            FromWorker::Confirmed { worker, index } => {
                if let Some(&slot) = self.by_index.get(&(worker, index)) {
                    self.confirm(slot);
                }
            }
        }
    }

    /// The peer of the session in `slot` proved it holds the keys: its
    /// routes move to the session (it is the newest).
    fn confirm(&mut self, slot: usize) {
        let Some(e) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if e.confirmed {
            return;
        }
        e.confirmed = true;
        self.stats.sessions_confirmed += 1;
        tracing::debug!(peer = %e.name, index = %e.index, worker = e.worker, "hop session confirmed; routes move to it");
        if self.routing.confirm(HopId(slot as u32)) {
            self.routes_dirty = true;
            if !matches!(e.peer, Peer::User(_)) {
                self.directories_dirty = true;
            }
        }
    }

    fn handshake(&mut self, worker: usize, from: SocketAddr, frame: &[u8]) {
        // Junk costs a parse, not a receiver index. Responses and cookie
        // replies answer this relay's own mesh initiations.
        match frames::parse(frame) {
            Ok(HandshakeFrame::Init(_)) => {}
            Ok(HandshakeFrame::Response(r)) => {
                let receiver = r.receiver;
                return self.mesh_response(worker, from, frame, receiver);
            }
            Ok(HandshakeFrame::CookieReply(r)) => {
                let receiver = r.receiver;
                return self.mesh_cookie(worker, frame, receiver);
            }
            Err(_) => {
                self.stats.reject(HandshakeReject::Malformed);
                return;
            }
        }
        let Some(index) = self
            .allocators
            .get_mut(worker)
            .and_then(IndexAllocator::allocate)
        else {
            tracing::warn!(worker, %from, "no free receiver index; handshake dropped");
            self.stats.reject(HandshakeReject::NoIndex);
            return;
        };
        let under_load = self.inbox.len() > UNDER_LOAD_QUEUE;
        let now = Instant::now();
        // The policy in force decides who may hold a session: a user or
        // connector it does not list, or a connector certificate for
        // another key than the pinned one, is refused before the response.
        let policy = self.shared.policy.load();
        let outcome = self.responder.handle_init_checked(
            frame,
            from,
            under_load,
            index,
            now,
            unix_nanos(),
            &mut self.rng,
            &|cert| policy_admits(&policy, cert),
        );
        match outcome {
            Ok(InitOutcome::Established { keys, .. })
                if self
                    .shared
                    .policy
                    .load()
                    .is_revoked(&keys.peer.body.static_key) =>
            {
                // A revoked certificate: no session, no response.
                self.allocators[worker].release(index);
                self.stats.revoked_refused += 1;
                tracing::info!(worker, %from, peer = %keys.peer.body.name, id = keys.peer.body.id, role = %keys.peer.body.role, "handshake refused: the certificate is revoked ([[revoked]] in the policy)");
            }
            Ok(InitOutcome::Established { keys, .. })
                if keys.peer.body.role == Role::Relay
                    && !self
                        .mesh
                        .as_ref()
                        .is_some_and(|m| m.admits(&keys.peer.body.static_key)) =>
            {
                // A relay certificate whose key no relay registered in
                // etcd: no session, no response.
                self.allocators[worker].release(index);
                self.stats.relay_refused += 1;
                self.shared
                    .relay_refused
                    .store(self.stats.relay_refused, Ordering::Relaxed);
                tracing::debug!(worker, %from, peer = %keys.peer.body.name, id = keys.peer.body.id, "relay handshake refused: its key is in no relay record of the mesh view");
            }
            Ok(InitOutcome::Established { response, keys }) => {
                // Unconfirmed: no route until the initiator's first frame
                // passes the tag. Its address is `from`, which that frame
                // proves (the response goes there).
                self.establish(worker, from, keys, now, false);
                self.send(worker, from, response);
            }
            Ok(InitOutcome::CookieReply(reply)) => {
                self.allocators[worker].release(index);
                self.stats.cookie_replies += 1;
                self.send(worker, from, reply.to_vec());
            }
            Err(e) => {
                self.allocators[worker].release(index);
                let reason = HandshakeReject::of(&e);
                self.stats.reject(reason);
                if matches!(
                    reason,
                    HandshakeReject::NotInPolicy | HandshakeReject::PinnedKey
                ) {
                    // A CA-signed certificate the policy refuses: worth an
                    // operator's look (a stolen or stale certificate).
                    tracing::info!(worker, %from, reason = reason.name(), error = %e, "hop handshake refused by the policy");
                } else {
                    tracing::debug!(worker, %from, error = %e, "hop handshake rejected");
                }
            }
        }
    }

    /// Installs a new session in `worker` and the routes; returns its slot.
    /// `confirmed`: the peer already proved its keys (this relay initiated
    /// the session); otherwise the session carries no route until the
    /// worker reports its first authenticated frame.
    fn establish(
        &mut self,
        worker: usize,
        from: SocketAddr,
        keys: HopSessionKeys,
        now: Instant,
        confirmed: bool,
    ) -> usize {
        let peer = match keys.peer.body.role {
            Role::User => Peer::User(UserId(keys.peer.body.id)),
            Role::Connector => Peer::Connector(keys.peer.body.id),
            Role::Relay => Peer::Relay(keys.peer.body.id),
        };
        let hop = Arc::new(TxHop::new(
            from,
            keys.remote_index,
            &keys.send_key,
            self.next_serial,
        ));
        self.next_serial += 1;
        self.evict_beyond_limit(peer, worker);
        let slot = match self.free_hops.pop() {
            Some(s) => s,
            None => {
                self.sessions.push(None);
                (self.sessions.len() - 1) as u32
            }
        };
        let hop_id = HopId(slot);
        let session = RxSession::new(&keys.recv_key, peer, hop_id);
        let session = if confirmed {
            session.already_confirmed()
        } else {
            session
        };
        // Install before the reply leaves: the peer's first data frame can
        // only follow the reply, and the worker applies its inbox in order.
        let _ = self.workers[worker].send(ToWorker::Install {
            index: keys.local_index,
            session: Box::new(session),
        });
        self.by_index
            .insert((worker, keys.local_index), slot as usize);
        tracing::info!(
            peer = %keys.peer.body.name,
            role = %keys.peer.body.role,
            id = keys.peer.body.id,
            %from,
            worker,
            index = %keys.local_index,
            "hop session established"
        );
        let route = RouteSession {
            peer,
            static_key: keys.peer.body.static_key,
            link: worker,
            established: now,
            tx: Arc::clone(&hop),
        };
        if confirmed {
            self.routing.insert(hop_id, route);
        } else {
            self.routing.insert_unconfirmed(hop_id, route);
        }
        self.sessions[slot as usize] = Some(SessionEntry {
            peer,
            name: keys.peer.body.name,
            worker,
            index: keys.local_index,
            hop,
            established: now,
            static_key: keys.peer.body.static_key,
            confirmed,
            pinged: false,
            sent_digest: 0,
            ping_tokens: PING_BURST,
            ping_refilled: now,
            health: health::Health::new(now),
        });
        self.stats.handshakes_ok += 1;
        if confirmed {
            self.stats.sessions_confirmed += 1;
            self.routes_dirty = true;
            if !matches!(peer, Peer::User(_)) {
                self.directories_dirty = true;
            }
        }
        slot as usize
    }

    fn send(&self, worker: usize, to: SocketAddr, bytes: Vec<u8>) {
        let _ = self.workers[worker].send(ToWorker::Send { to, bytes });
    }

    /// Removes sessions older than `REJECT_AFTER_TIME` (their keys may no
    /// longer be used, and the peer has rekeyed by now if it is alive) and
    /// sessions still unconfirmed after [`CONFIRM_WITHIN`].
    fn expire(&mut self, now: Instant) {
        for slot in 0..self.sessions.len() {
            let Some(s) = self.sessions[slot].as_ref() else {
                continue;
            };
            let age = now.duration_since(s.established);
            if age >= REJECT_AFTER_TIME {
                self.remove(slot, "expired");
                self.stats.sessions_expired += 1;
            } else if !s.confirmed && age >= CONFIRM_WITHIN {
                self.remove(slot, "never confirmed");
                self.stats.sessions_unconfirmed += 1;
            }
        }
    }

    /// Makes room for one more session of `peer`: evicts its oldest while it
    /// holds [`MAX_SESSIONS_PER_PEER`] or more, the oldest unconfirmed one
    /// first (so initiations from spoofed addresses, which are never
    /// confirmed, evict each other and not the session that carries the
    /// peer's routes). A peer relay holds one link per worker: its limit
    /// counts per worker.
    fn evict_beyond_limit(&mut self, peer: Peer, worker: usize) {
        let relay = matches!(peer, Peer::Relay(_));
        loop {
            // Unconfirmed (false) before confirmed, then oldest first.
            type Rank = ((bool, Instant), usize);
            let mine = self.sessions.iter().enumerate().filter_map(|(i, e)| {
                e.as_ref()
                    .filter(|e| e.peer == peer && (!relay || e.worker == worker))
                    .map(|e| ((e.confirmed, e.established), i))
            });
            let (count, oldest) = mine.fold((0, None), |(n, old): (usize, Option<Rank>), cur| {
                (n + 1, Some(old.map_or(cur, |o| o.min(cur))))
            });
            match oldest {
                Some((_, slot)) if count >= MAX_SESSIONS_PER_PEER => self.remove(slot, "replaced"),
                _ => return,
            }
        }
    }

    /// Removes the session in `slot` from its worker, the allocator and the
    /// routes.
    fn remove(&mut self, slot: usize, why: &str) {
        if let Some(s) = self.sessions[slot].take() {
            tracing::info!(peer = %s.name, index = %s.index, why, "hop session removed");
            let _ = self.workers[s.worker].send(ToWorker::Remove { index: s.index });
            self.allocators[s.worker].release(s.index);
            self.by_index.remove(&(s.worker, s.index));
            self.free_hops.push(slot as u32);
            self.routing.remove(HopId(slot as u32));
            self.routes_dirty = true;
            if !matches!(s.peer, Peer::User(_)) {
                self.directories_dirty = true;
            }
        }
    }

    fn reload_policy(&mut self) {
        match self.policy_source.load() {
            Ok(loaded) => {
                let stats = loaded.policy.stats();
                self.routing
                    .set_connector_services(connector_services(&loaded.policy));
                self.shared.swap_policy(loaded.policy);
                self.stats.policy_epoch += 1;
                self.shared
                    .policy_epoch
                    .store(self.stats.policy_epoch, Ordering::Relaxed);
                self.routes_dirty = true;
                self.directories_dirty = true;
                // Sessions the new policy no longer admits end now: those
                // of certificates revoked now, users and connectors it no
                // longer lists, and those whose pin moved away from their
                // key (a stolen certificate of a listed id).
                let policy = self.shared.policy.load();
                self.close_unadmitted(&policy);
                tracing::info!(
                    path = %self.policy_source.path().display(),
                    epoch = self.stats.policy_epoch,
                    users = stats.users,
                    services = stats.services,
                    revoked = policy.revoked_count(),
                    pinned = policy.pinned_count(),
                    pinned_users = policy.pinned_user_count(),
                    took_ms = loaded.took.as_millis() as u64,
                    "policy reloaded"
                );
            }
            Err(e) => {
                self.policy_source.mark_seen();
                self.stats.policy_rejected += 1;
                self.shared
                    .policy_rejected
                    .store(self.stats.policy_rejected, Ordering::Relaxed);
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
            }
        }
    }

    /// Closes, in one pass, every session `policy` would not admit at a
    /// handshake now: any peer's whose certificate it revokes
    /// (`revoked_closed`); a user's or connector's
    /// ([`CompiledPolicy::admits_peer`]) whose identity it no longer lists
    /// (`unlisted_closed`) or whose key it no longer pins for the id
    /// (`pinned_closed`), logged once per identity with how many of its
    /// sessions closed. Other relay sessions are the mesh view's business.
    fn close_unadmitted(&mut self, policy: &CompiledPolicy) {
        // (role, id, why) -> (certificate name, sessions closed)
        let mut closed: BTreeMap<(&'static str, u32, &'static str), (String, usize)> =
            BTreeMap::new();
        for slot in 0..self.sessions.len() {
            let Some(e) = self.sessions[slot].as_ref() else {
                continue;
            };
            if policy.is_revoked(&e.static_key) {
                self.remove(slot, "certificate revoked");
                self.stats.revoked_closed += 1;
                continue;
            }
            let (role, id, role_name) = match e.peer {
                Peer::User(u) => (Role::User, u.0, "user"),
                Peer::Connector(c) => (Role::Connector, c, "connector"),
                Peer::Relay(_) => continue,
            };
            let why = match policy.admits_peer(role, id, &e.static_key) {
                PeerVerdict::Allow => continue,
                PeerVerdict::NotListed => {
                    self.stats.unlisted_closed += 1;
                    "no longer in the policy"
                }
                PeerVerdict::KeyNotPinned => {
                    self.stats.pinned_closed += 1;
                    "key no longer pinned"
                }
            };
            let name = e.name.clone();
            closed.entry((role_name, id, why)).or_insert((name, 0)).1 += 1;
            self.remove(slot, why);
        }
        for ((role, id, why), (name, sessions)) in closed {
            tracing::info!(role, id, %name, sessions, "policy reload: the {role}'s hop sessions closed, {why}");
        }
    }

    /// Publishes a snapshot of the routes ([`RouteBuilder::table`]: users
    /// to their newest session, services to the newest live session of
    /// every connector serving them, and in a mesh what other relays
    /// reach), and announces this relay's services and users in etcd.
    fn publish_routes(&mut self) {
        // What the other relays reach, if the view or the links changed.
        self.mesh_routes();
        let routes = self.routing.table();
        let local: BTreeMap<ServiceId, Vec<ConnectorRecord>> = self
            .routing
            .local_services()
            .map(|(s, cs)| {
                let records = cs
                    .iter()
                    .map(|c| ConnectorRecord::new(c.connector, &c.key))
                    .collect();
                (s, records)
            })
            .collect();
        self.announce(local);
        self.announce_users(self.routing.local_users().collect());
        self.shared.routes.store(Arc::new(routes));
        self.routes_dirty = false;
        self.publish_mesh_links();
        if self.directories_dirty {
            self.directories_dirty = false;
            self.push_directories();
        }
    }

    /// Publishes the peer relays this relay holds sessions with, and logs
    /// links coming up and going down.
    fn publish_mesh_links(&mut self) {
        let mut links: BTreeMap<u32, MeshLink> = BTreeMap::new();
        for e in self.sessions.iter().flatten() {
            if let Peer::Relay(id) = e.peer {
                links
                    .entry(id)
                    .or_insert_with(|| MeshLink {
                        id,
                        name: e.name.clone(),
                        static_key: e.static_key,
                        sessions: 0,
                    })
                    .sessions += 1;
            }
        }
        let before = self.shared.mesh_links.load();
        for l in before.iter().filter(|l| !links.contains_key(&l.id)) {
            tracing::info!(peer = %l.name, id = l.id, "mesh link down");
        }
        for l in links.values() {
            if !before.iter().any(|b| b.id == l.id) {
                tracing::info!(peer = %l.name, id = l.id, "mesh link up");
            }
        }
        let links: Vec<MeshLink> = links.into_values().collect();
        self.stats.relay_links = links.len() as u64;
        if **before != links {
            self.shared.mesh_links.store(Arc::new(links));
        }
    }

    /// Tells the mesh's etcd which services this relay's connectors serve
    /// now: only what changed since the last announcement.
    fn announce(&mut self, local: BTreeMap<ServiceId, Vec<ConnectorRecord>>) {
        let Some(registry) = &self.registry else {
            return;
        };
        for (service, connectors) in &local {
            if self.announced.get(service) != Some(connectors) {
                registry.set_service(*service, connectors.clone());
            }
        }
        for service in self.announced.keys() {
            if !local.contains_key(service) {
                registry.remove_service(*service);
            }
        }
        self.announced = local;
    }

    /// Tells the mesh's etcd which users hold a session here now: only
    /// what changed since the last announcement.
    fn announce_users(&mut self, local: BTreeSet<UserId>) {
        let Some(registry) = &self.registry else {
            return;
        };
        for user in local.difference(&self.announced_users) {
            registry.add_user(*user);
        }
        for user in self.announced_users.difference(&local) {
            registry.remove_user(*user);
        }
        self.announced_users = local;
    }

    /// A control message from the session `index` of `worker`, already
    /// authenticated by the worker's datapath.
    fn control(&mut self, worker: usize, index: ReceiverIndex, body: &[u8]) {
        self.stats.control_received += 1;
        let Some(&slot) = self.by_index.get(&(worker, index)) else {
            // Removed (expired, replaced) while the frame was queued.
            self.stats.control_rejected += 1;
            return;
        };
        // The frame passed the session's tag: the key is confirmed (the
        // worker reports it too, after its batch; this may come first).
        self.confirm(slot);
        let now = Instant::now();
        let digest = match ControlMessage::parse(body) {
            Ok(ControlMessage::Ping { digest }) => digest,
            Ok(ControlMessage::Pong { .. }) => {
                // The answer to a keepalive probe.
                return self.heard(slot, now);
            }
            Ok(other) => {
                self.stats.control_rejected += 1;
                tracing::debug!(worker, %index, message = ?other, "control message not for a relay; dropped");
                return;
            }
            Err(e) => {
                self.stats.control_rejected += 1;
                tracing::debug!(worker, %index, error = %e, "malformed control message dropped");
                return;
            }
        };
        self.heard(slot, now);
        if let Some(entry) = self.sessions.get_mut(slot).and_then(Option::as_mut) {
            let earned = now.duration_since(entry.ping_refilled).as_secs_f64() * PING_RATE;
            entry.ping_tokens = (entry.ping_tokens + earned).min(PING_BURST);
            entry.ping_refilled = now;
            if entry.ping_tokens < 1.0 {
                self.stats.pings_rate_limited += 1;
                return;
            }
            entry.ping_tokens -= 1.0;
        }
        // The directory is computed from the routing snapshot: bring it up
        // to date with the sessions first (this may push to other users).
        if self.routes_dirty {
            self.publish_routes();
        }
        let Some(entry) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        entry.pinged = true;
        match entry.peer {
            Peer::User(user) => {
                let directory = self.directory(user);
                if directory.digest == digest {
                    if let Some(e) = self.sessions[slot].as_mut() {
                        e.sent_digest = digest;
                    }
                    self.send_control(slot, &ControlMessage::Pong { digest });
                } else {
                    self.send_directory(slot, &directory);
                }
            }
            Peer::Connector(_) | Peer::Relay(_) => {
                self.send_control(slot, &ControlMessage::Pong { digest: 0 })
            }
        }
    }

    /// What `user` may reach now: every service the live policy allows it
    /// that has a route, with the connector the routes pick for this user
    /// ([`RouteBuilder::connector_for`], as published: directories are
    /// computed right after a publication), and the user's connection mode.
    fn directory(&self, user: UserId) -> Directory {
        let policy = self.shared.policy.load();
        let services = policy
            .services()
            .filter(|s| policy.allowed(user, s.id))
            .filter_map(|s| {
                let (connector, connector_key) = self
                    .routing
                    .connector_for(user, s.id)
                    .or_else(|| self.unconfirmed_connector(&s.connectors))?;
                Some(ServiceEntry {
                    id: s.id,
                    name: s.name.clone(),
                    protocol: s.protocol,
                    port: s.port,
                    connector,
                    connector_key,
                })
            })
            .collect();
        Directory::new(policy.connection_mode(user), services)
    }

    /// A connector of `serving` that holds a session not confirmed yet
    /// (its first frame is on its way), with the key its CA-signed
    /// certificate names. Right after a relay restart the users and the
    /// connectors handshake in any order: without this, a user that gets
    /// its directory between a connector's handshake and its first frame
    /// would be told the service is gone and close its connections. The
    /// entry routes nothing until the session is confirmed; the directory
    /// is pushed again once it is.
    fn unconfirmed_connector(&self, serving: &[u32]) -> Option<(u32, [u8; 32])> {
        self.sessions
            .iter()
            .flatten()
            .filter(|e| !e.confirmed)
            .find_map(|e| match e.peer {
                Peer::Connector(id) if serving.contains(&id) => Some((id, e.static_key)),
                _ => None,
            })
    }

    /// Sends every user whose newest confirmed session has pinged its
    /// directory, if it differs from the last one sent on that session.
    fn push_directories(&mut self) {
        let mut newest: HashMap<UserId, (Instant, usize)> = HashMap::new();
        for (slot, entry) in self.sessions.iter().enumerate() {
            let Some(e) = entry.as_ref().filter(|e| e.confirmed) else {
                continue;
            };
            if let Peer::User(u) = e.peer {
                if newest.get(&u).is_none_or(|n| n.0 <= e.established) {
                    newest.insert(u, (e.established, slot));
                }
            }
        }
        for (user, (_, slot)) in newest {
            let Some(e) = self.sessions[slot].as_ref().filter(|e| e.pinged) else {
                continue;
            };
            let sent = e.sent_digest;
            let directory = self.directory(user);
            if directory.digest != sent {
                self.stats.directories_pushed += 1;
                self.send_directory(slot, &directory);
            }
        }
    }

    /// Sends `directory` in parts on the session in `slot` and remembers
    /// its digest there.
    fn send_directory(&mut self, slot: usize, directory: &Directory) {
        let parts = directory.parts(DEFAULT_MAX_BODY);
        if directory.services.len() > MAX_SERVICES || parts.len() > usize::from(MAX_PARTS) {
            tracing::error!(
                services = directory.services.len(),
                parts = parts.len(),
                "directory too large for an agent to accept ({MAX_SERVICES} services, {MAX_PARTS} parts); not sent: grant the user fewer services"
            );
            return;
        }
        let Some(e) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        e.sent_digest = directory.digest;
        tracing::debug!(peer = %e.name, digest = directory.digest, services = directory.services.len(), mode = %directory.mode, "directory sent");
        self.stats.directories_sent += 1;
        for part in &parts {
            self.send_control(slot, part);
            self.stats.directory_parts_sent += 1;
        }
    }

    /// Sends one control message on the session in `slot`: a `Control`
    /// frame with the peer's id as user id, service 0, the next counter of
    /// the session's transmit hop, tagged with its key, from the worker
    /// that holds the session.
    fn send_control(&mut self, slot: usize, msg: &ControlMessage) {
        let Some(e) = self.sessions.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let user = match e.peer {
            Peer::User(u) => u,
            Peer::Connector(id) | Peer::Relay(id) => UserId(id),
        };
        let mut frame = vec![0u8; HEADER_LEN];
        msg.emit(&mut frame);
        let Ok(body_len) = u16::try_from(frame.len() - HEADER_LEN) else {
            tracing::error!(
                len = frame.len(),
                "control message too long for a frame; not sent"
            );
            return;
        };
        let counter = e.hop.reserve(1).start;
        if counter >= HopKey::USAGE_LIMIT {
            // The peer must rekey; it will ping again on the new session.
            return;
        }
        let header = HeaderRepr {
            kind: Kind::Control,
            ttl: DEFAULT_TTL,
            receiver: e.hop.remote_index(),
            counter,
            user,
            service: ServiceId(0),
            body_len,
        };
        if header.emit(&mut frame).is_err() {
            return;
        }
        e.hop
            .key()
            .seal_frame(&mut Frame::new_unchecked(&mut frame[..]));
        if matches!(msg, ControlMessage::Pong { .. }) {
            self.stats.pongs_sent += 1;
        }
        let (worker, to) = (e.worker, e.hop.endpoint());
        self.send(worker, to, frame);
    }
}

/// The policy's word on a hop initiator's verified certificate
/// ([`CompiledPolicy::admits_peer`]), as a handshake error.
fn policy_admits(policy: &CompiledPolicy, cert: &Certificate) -> Result<(), HandshakeError> {
    let body = &cert.body;
    match policy.admits_peer(body.role, body.id, &body.static_key) {
        PeerVerdict::Allow => Ok(()),
        PeerVerdict::NotListed => Err(HandshakeError::NotInPolicy {
            name: body.name.clone(),
            role: body.role,
            id: body.id,
        }),
        PeerVerdict::KeyNotPinned => Err(HandshakeError::KeyNotPinned {
            name: body.name.clone(),
            role: body.role,
            id: body.id,
            key: proto::identity::to_hex(&body.static_key)
                .chars()
                .take(8)
                .collect(),
        }),
    }
}

fn connector_services(policy: &CompiledPolicy) -> HashMap<u32, Vec<ServiceId>> {
    let mut map: HashMap<u32, Vec<ServiceId>> = HashMap::new();
    for service in policy.services() {
        for c in &service.connectors {
            map.entry(*c).or_default().push(service.id);
        }
    }
    map
}

/// Wall-clock time for certificate validity and handshake timestamps.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
