//! Building routing snapshots incrementally, from a relay's hop sessions,
//! its policy and what its mesh reaches.
//!
//! [`RouteBuilder`] holds what routes are made of: the live hop sessions
//! (who is at the far end, since when, whether it answers probes), which
//! connector serves which service (from the policy), and, in a mesh, what
//! the other relays reach (plain data the relay derives from its etcd view
//! and its shortest paths: [`MeshRoutes`]). Next to them it keeps the routes
//! derived from them, per peer and per service, and updates only what a
//! change touches. [`RouteBuilder::table`] copies the derived routes into
//! an immutable [`RouteTable`], which the relay swaps into its workers
//! whole.
//!
//! The routes (docs/design.md, "Routing through the mesh"):
//!
//! * a user: to its newest session here; else, in a mesh, to the link
//!   towards the relay that holds it;
//! * a service's `local` list: the newest live session of each connector
//!   the policy names for it, in connector-id order;
//! * a service's `mesh` list (in a mesh only): one entry per connector of
//!   the service anywhere in the mesh, this relay's included, sorted by
//!   (relay, connector id), each its next hop: a local connector's own
//!   session, or the group of links (one per worker, newest live session
//!   of each) to the first relay on the path ([`RouteTable::add_group`]);
//! * a session whose peer stopped answering probes
//!   ([`RouteBuilder::set_alive`]) carries no route until it answers again.
//!   Users are not probed;
//! * a session inserted unconfirmed ([`RouteBuilder::insert_unconfirmed`]:
//!   one the relay answered, whose peer has not yet sent a frame that
//!   passed its hop tag) carries no route until
//!   [`RouteBuilder::confirm`]: until then the peer's previous confirmed
//!   session keeps them (key confirmation, `docs/security.md` §3). So
//!   "newest" above means the newest confirmed one.
//!
//! # What an update costs
//!
//! * A session added, removed, confirmed, or marked alive or silent: that
//!   peer's few
//!   sessions (at most a handful: the current one and those a rekey
//!   replaces); for a connector whose chosen session changed, also the
//!   local and mesh lists of each service it serves. Nothing else is
//!   looked at.
//! * The policy's connector → services map: every connector's services
//!   (a policy reload).
//! * New [`MeshRoutes`] (a new etcd view, or a relay linked or unlinked):
//!   every service's mesh list.
//! * The snapshot, [`RouteBuilder::table`]: one copy of the whole table
//!   (every hop, every service's lists, every routed user), because workers
//!   read an immutable snapshot swapped whole. No session is looked at
//!   again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::{pick, IdMap, RouteTable, ServiceRoute};
use crate::ids::{ServiceId, UserId};
use crate::session::{HopId, Peer, TxHop};

/// A peer's static key: relays are told apart by it (their etcd record
/// names it).
pub type StaticKey = [u8; 32];

/// A new hop session, as [`RouteBuilder::insert`] takes it.
#[derive(Debug, Clone)]
pub struct RouteSession {
    /// Who is at the far end, from its certificate.
    pub peer: Peer,
    /// The peer's X25519 static key, from its certificate.
    pub static_key: StaticKey,
    /// The link (worker) it runs on: a peer relay holds one link per
    /// worker, and each link routes by its own newest session.
    pub link: usize,
    /// When it was established: of a peer's sessions, the newest routes
    /// (ties: the higher hop id).
    pub established: Instant,
    /// Its transmit half.
    pub tx: Arc<TxHop>,
}

/// One of this relay's connectors of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalConnector {
    /// The connector's certificate id.
    pub connector: u32,
    /// Its static key (what a user's agent runs the end-to-end handshake
    /// against).
    pub key: StaticKey,
    /// Its newest live session here.
    pub hop: HopId,
}

/// A connector behind another relay, as the relay derives it from its
/// etcd view and its shortest paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshEntry {
    /// The connector's relay, as a place in the order every relay of the
    /// mesh lists relays in (by relay id); [`MeshRoutes::me`] is this
    /// relay's place in it.
    pub relay: u32,
    /// The connector's certificate id.
    pub connector: u32,
    /// Its static key.
    pub key: StaticKey,
    /// The static key of the first relay on the path to it: frames go over
    /// this relay's links to that relay.
    pub via: StaticKey,
}

/// What the mesh reaches beyond this relay: plain data the relay derives
/// from its etcd view (relay ids, records, shortest paths) so that
/// `proto` needs none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshRoutes {
    /// This relay's place in the order of [`MeshEntry::relay`].
    pub me: u32,
    /// Per service, its connectors behind other relays (in any order; the
    /// builder sorts). Only entries whose path is known.
    pub services: BTreeMap<ServiceId, Vec<MeshEntry>>,
    /// Users whose session is on another relay, with the static key of
    /// the first relay on the path to it. A session here takes precedence.
    pub users: Vec<(UserId, StaticKey)>,
}

/// Where a mesh list entry leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A local connector's session.
    Hop(HopId),
    /// The links to the relay with this static key.
    Relay(StaticKey),
}

/// One entry of a service's mesh list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listed {
    relay: u32,
    connector: u32,
    key: StaticKey,
    next: Next,
}

/// What the builder remembers of a session.
#[derive(Debug, Clone, Copy)]
struct Session {
    peer: Peer,
    static_key: StaticKey,
    link: usize,
    established: Instant,
    alive: bool,
    confirmed: bool,
}

impl Session {
    /// Whether it may carry routes.
    fn routable(&self) -> bool {
        self.alive && self.confirmed
    }
}

/// A session's age: the newest of a peer's sessions is the largest.
type Age = (Instant, HopId);

/// The mesh part of the builder: its input and the lists derived from it.
#[derive(Debug, Default)]
struct Mesh {
    input: MeshRoutes,
    /// Per service, local and remote entries merged in mesh order.
    lists: BTreeMap<ServiceId, Vec<Listed>>,
}

/// Keeps a relay's routes up to date as sessions, policy and mesh change,
/// and makes [`RouteTable`] snapshots of them (see the module docs for
/// what each update costs).
#[derive(Debug, Default)]
pub struct RouteBuilder {
    /// Every session's transmit half, by hop id.
    hops: Vec<Option<Arc<TxHop>>>,
    sessions: IdMap<HopId, Session>,
    user_sessions: IdMap<UserId, Vec<Age>>,
    /// Derived: each user's newest session.
    users: IdMap<UserId, HopId>,
    connector_sessions: IdMap<u32, Vec<Age>>,
    /// Derived: each connector's newest live session, and its key.
    connectors: IdMap<u32, (HopId, StaticKey)>,
    connector_services: IdMap<u32, Vec<ServiceId>>,
    /// Derived: each service's connectors here, by connector id.
    local: BTreeMap<ServiceId, Vec<LocalConnector>>,
    /// Peer relays' sessions by static key, then by link.
    relay_sessions: BTreeMap<StaticKey, BTreeMap<usize, Vec<Age>>>,
    /// Derived: per peer relay, the newest live session of each link, in
    /// link order (only relays with at least one).
    links: BTreeMap<StaticKey, Vec<HopId>>,
    /// `None` outside a mesh.
    mesh: Option<Mesh>,
}

impl RouteBuilder {
    /// A builder with no sessions, no policy and no mesh.
    pub fn new() -> RouteBuilder {
        RouteBuilder::default()
    }

    /// Adds the session with transmit hop `hop` (replacing one with the
    /// same id), confirmed: one whose keys the peer already proved (a
    /// session this node initiated, proved by the response). It is alive
    /// until [`RouteBuilder::set_alive`] says not.
    pub fn insert(&mut self, hop: HopId, session: RouteSession) {
        self.insert_as(hop, session, true);
    }

    /// Adds the session with transmit hop `hop` (replacing one with the
    /// same id), unconfirmed: it carries no route until
    /// [`RouteBuilder::confirm`]. What a responder does with a session
    /// whose peer has sent nothing on it yet.
    pub fn insert_unconfirmed(&mut self, hop: HopId, session: RouteSession) {
        self.insert_as(hop, session, false);
    }

    /// The session `hop`'s peer sent a frame that passed its hop tag: it
    /// may carry routes now (and, being the newest, takes them). Returns
    /// whether it was unconfirmed until now.
    pub fn confirm(&mut self, hop: HopId) -> bool {
        let Some(s) = self.sessions.get_mut(&hop) else {
            return false;
        };
        if s.confirmed {
            return false;
        }
        s.confirmed = true;
        let s = *s;
        self.update_peer(&s);
        true
    }

    /// Whether the session `hop` is confirmed (`None`: no such session).
    pub fn is_confirmed(&self, hop: HopId) -> Option<bool> {
        self.sessions.get(&hop).map(|s| s.confirmed)
    }

    fn insert_as(&mut self, hop: HopId, session: RouteSession, confirmed: bool) {
        self.remove(hop);
        let i = hop.0 as usize;
        if self.hops.len() <= i {
            self.hops.resize(i + 1, None);
        }
        self.hops[i] = Some(session.tx);
        let s = Session {
            peer: session.peer,
            static_key: session.static_key,
            link: session.link,
            established: session.established,
            alive: true,
            confirmed,
        };
        self.sessions.insert(hop, s);
        let age = (s.established, hop);
        match s.peer {
            Peer::User(u) => {
                self.user_sessions.entry(u).or_default().push(age);
                self.update_user(u);
            }
            Peer::Connector(c) => {
                self.connector_sessions.entry(c).or_default().push(age);
                self.update_connector(c);
            }
            Peer::Relay(_) => {
                self.relay_sessions
                    .entry(s.static_key)
                    .or_default()
                    .entry(s.link)
                    .or_default()
                    .push(age);
                self.update_relay(s.static_key);
            }
        }
    }

    /// Removes the session with transmit hop `hop`, if there is one.
    pub fn remove(&mut self, hop: HopId) {
        let Some(s) = self.sessions.remove(&hop) else {
            return;
        };
        if let Some(slot) = self.hops.get_mut(hop.0 as usize) {
            *slot = None;
        }
        let age = (s.established, hop);
        match s.peer {
            Peer::User(u) => {
                remove_age(&mut self.user_sessions, u, age);
                self.update_user(u);
            }
            Peer::Connector(c) => {
                remove_age(&mut self.connector_sessions, c, age);
                self.update_connector(c);
            }
            Peer::Relay(_) => {
                if let Some(links) = self.relay_sessions.get_mut(&s.static_key) {
                    if let Some(ages) = links.get_mut(&s.link) {
                        ages.retain(|a| *a != age);
                        if ages.is_empty() {
                            links.remove(&s.link);
                        }
                    }
                    if links.is_empty() {
                        self.relay_sessions.remove(&s.static_key);
                    }
                }
                self.update_relay(s.static_key);
            }
        }
    }

    /// Marks the session `hop` as answering probes or not: a connector's or
    /// peer relay's session that stopped answering carries no route until
    /// it answers again. (Users carry their routes regardless.)
    pub fn set_alive(&mut self, hop: HopId, alive: bool) {
        let Some(s) = self.sessions.get_mut(&hop) else {
            return;
        };
        if s.alive == alive {
            return;
        }
        s.alive = alive;
        match s.peer {
            Peer::User(_) => {}
            Peer::Connector(c) => self.update_connector(c),
            Peer::Relay(_) => {
                let key = s.static_key;
                self.update_relay(key);
            }
        }
    }

    /// Recomputes the routes of `s`'s peer.
    fn update_peer(&mut self, s: &Session) {
        match s.peer {
            Peer::User(u) => self.update_user(u),
            Peer::Connector(c) => self.update_connector(c),
            Peer::Relay(_) => self.update_relay(s.static_key),
        }
    }

    /// Which services each connector serves (from the live policy),
    /// replacing the previous map. A service named twice for one
    /// connector lists it once.
    pub fn set_connector_services(&mut self, map: impl IntoIterator<Item = (u32, Vec<ServiceId>)>) {
        self.connector_services = map
            .into_iter()
            .map(|(c, mut services)| {
                services.sort_unstable();
                services.dedup();
                (c, services)
            })
            .collect();
        self.local.clear();
        for (&c, &(hop, key)) in &self.connectors {
            for s in self.connector_services.get(&c).into_iter().flatten() {
                insert_local(
                    self.local.entry(*s).or_default(),
                    LocalConnector {
                        connector: c,
                        key,
                        hop,
                    },
                );
            }
        }
        self.refresh_all_mesh_lists();
    }

    /// Puts this relay in a mesh, with what the other relays reach;
    /// replaces the previous mesh input.
    pub fn set_mesh(&mut self, input: MeshRoutes) {
        self.mesh = Some(Mesh {
            input,
            lists: BTreeMap::new(),
        });
        self.refresh_all_mesh_lists();
    }

    /// Whether this relay holds at least one live link with the relay
    /// whose static key is `relay`.
    pub fn is_linked(&self, relay: &StaticKey) -> bool {
        self.links.contains_key(relay)
    }

    /// The users with a session here.
    pub fn local_users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users.keys().copied()
    }

    /// The services this relay's connectors serve, each with its
    /// connectors in connector-id order.
    pub fn local_services(&self) -> impl Iterator<Item = (ServiceId, &[LocalConnector])> + '_ {
        self.local.iter().map(|(s, cs)| (*s, cs.as_slice()))
    }

    /// The connector (id and static key) that a flow of `user` to
    /// `service` entering the mesh here reaches: the one
    /// [`RouteTable::to_service`] picks in this builder's
    /// [`RouteBuilder::table`]. What a user's directory names.
    pub fn connector_for(&self, user: UserId, service: ServiceId) -> Option<(u32, StaticKey)> {
        if let Some(local) = self.local.get(&service) {
            let c = local.get(pick(user, service, local.len()))?;
            return Some((c.connector, c.key));
        }
        let list = self.mesh.as_ref()?.lists.get(&service)?;
        let routed = || list.iter().filter(|e| self.leads_somewhere(e.next));
        let n = routed().count();
        let e = routed().nth(pick(user, service, n))?;
        Some((e.connector, e.key))
    }

    /// The routing snapshot: a copy of the derived routes, with the links
    /// to each peer relay as one group.
    pub fn table(&self) -> RouteTable {
        // Up to the highest live hop: what workers size their counter
        // reservations by.
        let used = self
            .hops
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        let mut table = RouteTable {
            hops: self.hops[..used].to_vec(),
            ..RouteTable::default()
        };
        let mut groups: BTreeMap<&StaticKey, HopId> = BTreeMap::new();
        for (key, hops) in &self.links {
            if let Some(group) = table.add_group(hops.clone()) {
                groups.insert(key, group);
            }
        }
        let resolve = |next: Next| match next {
            Next::Hop(hop) => Some(hop),
            Next::Relay(key) => groups.get(&key).copied(),
        };
        for (s, cs) in &self.local {
            table.services.insert(
                *s,
                ServiceRoute {
                    local: cs.iter().map(|c| c.hop).collect(),
                    mesh: Box::default(),
                },
            );
        }
        table.users = self.users.clone();
        if let Some(mesh) = &self.mesh {
            for (s, list) in &mesh.lists {
                let hops: Box<[HopId]> = list.iter().filter_map(|e| resolve(e.next)).collect();
                if !hops.is_empty() {
                    table.services.entry(*s).or_default().mesh = hops;
                }
            }
            for (user, via) in &mesh.input.users {
                if self.users.contains_key(user) {
                    continue;
                }
                if let Some(hop) = groups.get(via) {
                    table.users.insert(*user, *hop);
                }
            }
        }
        table
    }

    /// Whether a mesh list entry has a next hop now.
    fn leads_somewhere(&self, next: Next) -> bool {
        match next {
            Next::Hop(_) => true,
            Next::Relay(key) => self.links.contains_key(&key),
        }
    }

    fn update_user(&mut self, user: UserId) {
        // Users are not probed: only confirmation matters.
        let newest = self
            .user_sessions
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|(_, hop)| self.sessions.get(hop).is_some_and(|s| s.confirmed))
            .max()
            .map(|&(_, hop)| hop);
        if self.user_sessions.get(&user).is_some_and(Vec::is_empty) {
            self.user_sessions.remove(&user);
        }
        match newest {
            Some(hop) => {
                self.users.insert(user, hop);
            }
            None => {
                self.users.remove(&user);
            }
        }
    }

    fn update_connector(&mut self, c: u32) {
        let newest = self
            .connector_sessions
            .get(&c)
            .into_iter()
            .flatten()
            .filter(|(_, hop)| self.sessions.get(hop).is_some_and(Session::routable))
            .max()
            .and_then(|&(_, hop)| Some((hop, self.sessions.get(&hop)?.static_key)));
        if self.connector_sessions.get(&c).is_some_and(Vec::is_empty) {
            self.connector_sessions.remove(&c);
        }
        if self.connectors.get(&c) == newest.as_ref() {
            return;
        }
        match newest {
            Some(n) => self.connectors.insert(c, n),
            None => self.connectors.remove(&c),
        };
        let services = self.connector_services.get(&c).cloned().unwrap_or_default();
        for s in services {
            let list = self.local.entry(s).or_default();
            list.retain(|l| l.connector != c);
            if let Some((hop, key)) = newest {
                insert_local(
                    list,
                    LocalConnector {
                        connector: c,
                        key,
                        hop,
                    },
                );
            }
            if list.is_empty() {
                self.local.remove(&s);
            }
            self.refresh_mesh_list(s);
        }
    }

    fn update_relay(&mut self, key: StaticKey) {
        let hops: Vec<HopId> = self
            .relay_sessions
            .get(&key)
            .into_iter()
            .flat_map(|links| links.values())
            .filter_map(|ages| {
                ages.iter()
                    .filter(|(_, hop)| self.sessions.get(hop).is_some_and(Session::routable))
                    .max()
                    .map(|&(_, hop)| hop)
            })
            .collect();
        if hops.is_empty() {
            self.links.remove(&key);
        } else {
            self.links.insert(key, hops);
        }
    }

    fn refresh_all_mesh_lists(&mut self) {
        let Some(mesh) = &mut self.mesh else {
            return;
        };
        mesh.lists.clear();
        let services: Vec<ServiceId> = mesh
            .input
            .services
            .keys()
            .chain(self.local.keys())
            .copied()
            .collect();
        for s in services {
            self.refresh_mesh_list(s);
        }
    }

    /// Rebuilds `service`'s mesh list from its local connectors and the
    /// mesh input (a few entries; nothing else is looked at).
    fn refresh_mesh_list(&mut self, service: ServiceId) {
        let Some(mesh) = &mut self.mesh else {
            return;
        };
        let me = mesh.input.me;
        let local = self
            .local
            .get(&service)
            .into_iter()
            .flatten()
            .map(|c| Listed {
                relay: me,
                connector: c.connector,
                key: c.key,
                next: Next::Hop(c.hop),
            });
        let remote = mesh
            .input
            .services
            .get(&service)
            .into_iter()
            .flatten()
            .map(|e| Listed {
                relay: e.relay,
                connector: e.connector,
                key: e.key,
                next: Next::Relay(e.via),
            });
        let mut list: Vec<Listed> = local.chain(remote).collect();
        // Stable: of two entries for one (relay, connector), the first
        // (the local one, if either is) stays.
        list.sort_by_key(|e| (e.relay, e.connector));
        list.dedup_by_key(|e| (e.relay, e.connector));
        if list.is_empty() {
            mesh.lists.remove(&service);
        } else {
            mesh.lists.insert(service, list);
        }
    }
}

/// Inserts `c` into `list`, kept sorted by connector id.
fn insert_local(list: &mut Vec<LocalConnector>, c: LocalConnector) {
    let at = list.partition_point(|l| l.connector < c.connector);
    list.insert(at, c);
}

/// Removes `age` from `map[peer]`.
fn remove_age<K: Eq + core::hash::Hash>(map: &mut IdMap<K, Vec<Age>>, peer: K, age: Age) {
    if let Some(ages) = map.get_mut(&peer) {
        ages.retain(|a| *a != age);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::ids::ReceiverIndex;

    const A: StaticKey = [0xaa; 32];
    const B: StaticKey = [0xbb; 32];

    fn tx(hop: u32) -> Arc<TxHop> {
        let to = SocketAddr::from(([127, 0, 0, 1], 10_000 + hop as u16));
        Arc::new(TxHop::new(to, ReceiverIndex(hop), &[0; 32], 0))
    }

    fn at(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn session(peer: Peer, key: StaticKey, link: usize, ms: u64, hop: u32) -> RouteSession {
        RouteSession {
            peer,
            static_key: key,
            link,
            established: at(ms),
            tx: tx(hop),
        }
    }

    fn add(b: &mut RouteBuilder, hop: u32, peer: Peer, key: StaticKey, link: usize, ms: u64) {
        b.insert(HopId(hop), session(peer, key, link, ms, hop));
    }

    fn local(t: &RouteTable, s: u32) -> Vec<u32> {
        t.service(ServiceId(s))
            .map(|r| r.local.iter().map(|h| h.0).collect())
            .unwrap_or_default()
    }

    #[test]
    fn users_route_to_their_newest_session() {
        let mut b = RouteBuilder::new();
        let u = UserId(1);
        add(&mut b, 1, Peer::User(u), [1; 32], 0, 10);
        add(&mut b, 2, Peer::User(u), [1; 32], 0, 20);
        add(&mut b, 0, Peer::User(u), [1; 32], 0, 5);
        assert_eq!(b.table().to_user(u, ServiceId(0)), Some(HopId(2)));
        b.remove(HopId(2));
        assert_eq!(b.table().to_user(u, ServiceId(0)), Some(HopId(1)));
        assert!(
            b.table().hop(HopId(2)).is_none(),
            "its transmit half is gone"
        );
        // Users are not probed: a silent one keeps its route.
        b.set_alive(HopId(1), false);
        assert_eq!(b.table().to_user(u, ServiceId(0)), Some(HopId(1)));
        // Established at the same instant: the higher hop id.
        add(&mut b, 7, Peer::User(u), [1; 32], 0, 10);
        assert_eq!(b.table().to_user(u, ServiceId(0)), Some(HopId(7)));
        for hop in [0, 1, 7] {
            b.remove(HopId(hop));
        }
        assert_eq!(b.table().to_user(u, ServiceId(0)), None);
        assert_eq!(b.local_users().count(), 0);
    }

    #[test]
    fn an_unconfirmed_session_takes_no_route_until_confirmed() {
        let mut b = RouteBuilder::new();
        b.set_connector_services([(5, vec![ServiceId(10)])]);
        let u = UserId(1);
        add(&mut b, 1, Peer::User(u), [1; 32], 0, 10);
        add(&mut b, 2, Peer::Connector(5), [5; 32], 0, 10);
        add(&mut b, 3, Peer::Relay(7), A, 0, 10);
        // Newer sessions of each, answered but not confirmed: the routes
        // stay on the confirmed ones (a spoofed initiation moves nothing).
        for (hop, peer, key) in [
            (11, Peer::User(u), [1; 32]),
            (12, Peer::Connector(5), [5; 32]),
            (13, Peer::Relay(7), A),
        ] {
            b.insert_unconfirmed(HopId(hop), session(peer, key, 0, 20, hop));
            assert_eq!(b.is_confirmed(HopId(hop)), Some(false));
        }
        let t = b.table();
        assert_eq!(t.to_user(u, ServiceId(10)), Some(HopId(1)));
        assert_eq!(t.to_service(ServiceId(10), u), Some(HopId(2)));
        assert!(!t.serves(HopId(12), ServiceId(10)));
        assert!(b.is_linked(&A));
        b.set_mesh(MeshRoutes {
            me: 0,
            services: BTreeMap::new(),
            users: vec![(UserId(9), A)],
        });
        assert_eq!(b.table().to_user(UserId(9), ServiceId(0)), Some(HopId(3)));
        // Confirmed (the first frame passed its tag): the routes move.
        for hop in [11, 12, 13] {
            assert!(b.confirm(HopId(hop)));
            assert!(!b.confirm(HopId(hop)), "once");
        }
        let t = b.table();
        assert_eq!(t.to_user(u, ServiceId(10)), Some(HopId(11)));
        assert_eq!(t.to_service(ServiceId(10), u), Some(HopId(12)));
        assert!(t.serves(HopId(12), ServiceId(10)));
        assert_eq!(t.to_user(UserId(9), ServiceId(0)), Some(HopId(13)));
        assert!(!b.confirm(HopId(99)), "no such session");
        // A peer with no earlier session gets its routes on confirmation
        // only.
        let v = UserId(2);
        b.insert_unconfirmed(HopId(20), session(Peer::User(v), [2; 32], 0, 30, 20));
        assert_eq!(b.table().to_user(v, ServiceId(10)), None);
        assert_eq!(b.local_users().filter(|x| *x == v).count(), 0);
        b.confirm(HopId(20));
        assert_eq!(b.table().to_user(v, ServiceId(10)), Some(HopId(20)));
        // Removing the only confirmed session of a user whose newer one is
        // unconfirmed leaves it without a route (not with the unconfirmed
        // one).
        b.insert_unconfirmed(HopId(21), session(Peer::User(v), [2; 32], 0, 40, 21));
        b.remove(HopId(20));
        assert_eq!(b.table().to_user(v, ServiceId(10)), None);
        b.remove(HopId(21));
        assert_eq!(b.local_users().filter(|x| *x == v).count(), 0);
    }

    #[test]
    fn services_route_to_the_newest_live_session_of_each_connector_in_id_order() {
        let mut b = RouteBuilder::new();
        b.set_connector_services([
            (5, vec![ServiceId(10), ServiceId(11)]),
            (3, vec![ServiceId(10)]),
        ]);
        add(&mut b, 1, Peer::Connector(5), [5; 32], 0, 10);
        add(&mut b, 2, Peer::Connector(3), [3; 32], 0, 10);
        add(&mut b, 9, Peer::Connector(4), [4; 32], 0, 10);
        let t = b.table();
        assert_eq!(local(&t, 10), [2, 1], "connector 3 before connector 5");
        assert_eq!(local(&t, 11), [1]);
        assert!(t.service(ServiceId(12)).is_none());
        assert!(
            t.hop(HopId(9)).is_some(),
            "a connector the policy names for nothing"
        );
        assert!(
            t.service(ServiceId(10)).is_some_and(|r| r.mesh.is_empty()),
            "no mesh"
        );

        // A rekey: the newer session routes.
        add(&mut b, 4, Peer::Connector(5), [5; 32], 0, 20);
        assert_eq!(local(&b.table(), 10), [2, 4]);
        // It stops answering: the older one routes again.
        b.set_alive(HopId(4), false);
        assert_eq!(local(&b.table(), 10), [2, 1]);
        // Both silent: connector 5 is out, and service 11 with it.
        b.set_alive(HopId(1), false);
        assert_eq!(local(&b.table(), 10), [2]);
        assert!(b.table().service(ServiceId(11)).is_none());
        // It answers again.
        b.set_alive(HopId(4), true);
        assert_eq!(local(&b.table(), 11), [4]);

        let served: Vec<(ServiceId, Vec<u32>)> = b
            .local_services()
            .map(|(s, cs)| (s, cs.iter().map(|c| c.connector).collect()))
            .collect();
        assert_eq!(
            served,
            [(ServiceId(10), vec![3, 5]), (ServiceId(11), vec![5])]
        );
        assert_eq!(
            b.connector_for(UserId(0), ServiceId(11)),
            Some((5, [5; 32]))
        );

        // The policy moves connector 3 to service 11.
        b.set_connector_services([(5, vec![ServiceId(10)]), (3, vec![ServiceId(11)])]);
        assert_eq!(local(&b.table(), 10), [4]);
        assert_eq!(local(&b.table(), 11), [2]);
    }

    /// A relay (`me` = 1 in the mesh order) with connector 5 of service 1
    /// here, links to relay A (two workers) and B (one), and the mesh
    /// entries: (0, 7) and (2, 8) via A, (2, 3) via B.
    fn meshed() -> RouteBuilder {
        let mut b = RouteBuilder::new();
        b.set_connector_services([(5, vec![ServiceId(1)])]);
        add(&mut b, 1, Peer::Connector(5), [5; 32], 0, 0);
        add(&mut b, 20, Peer::Relay(100), A, 0, 0);
        add(&mut b, 21, Peer::Relay(100), A, 1, 0);
        add(&mut b, 30, Peer::Relay(200), B, 0, 0);
        let entry = |relay, connector: u32, via| MeshEntry {
            relay,
            connector,
            key: [connector as u8; 32],
            via,
        };
        b.set_mesh(MeshRoutes {
            me: 1,
            services: BTreeMap::from([
                (
                    ServiceId(1),
                    vec![entry(2, 8, A), entry(0, 7, A), entry(2, 3, B)],
                ),
                (ServiceId(2), vec![entry(2, 3, B)]),
            ]),
            users: vec![(UserId(40), A), (UserId(41), B), (UserId(42), A)],
        });
        add(&mut b, 2, Peer::User(UserId(42)), [42; 32], 0, 0);
        b
    }

    #[test]
    fn mesh_lists_every_connector_in_mesh_order_over_the_links() {
        let b = meshed();
        let t = b.table();
        let route = t.service(ServiceId(1)).unwrap();
        assert_eq!(&route.local[..], [HopId(1)]);
        // (0, 7) via A, (1, 5) here, (2, 3) via B, (2, 8) via A.
        let mesh = &route.mesh;
        assert_eq!(mesh.len(), 4);
        assert_eq!((mesh[1], mesh[2]), (HopId(1), HopId(30)), "B has one link");
        assert_eq!(mesh[0], mesh[3], "both via A's group");
        let mut spread = BTreeSet::new();
        for u in 0..64 {
            let s = ServiceId(1);
            let want = [7, 5, 3, 8][pick(UserId(u), s, 4)];
            // The connector the mesh list picks, which transit frames follow.
            let hop = t.to_service_transit(s, UserId(u)).unwrap();
            match want {
                5 => assert_eq!(hop, HopId(1)),
                3 => assert_eq!(hop, HopId(30)),
                _ => {
                    assert!([20, 21].contains(&hop.0), "{hop:?}");
                    spread.insert(hop);
                }
            }
            // Entering here: the local connector; the directory agrees.
            assert_eq!(t.to_service(s, UserId(u)), Some(HopId(1)));
            assert_eq!(b.connector_for(UserId(u), s), Some((5, [5; 32])));
            // A service only other relays reach: the directory names the
            // connector the mesh list picks.
            assert_eq!(b.connector_for(UserId(u), ServiceId(2)), Some((3, [3; 32])));
        }
        assert_eq!(spread.len(), 2, "flows to A use both links");
        // Users: here to their session, elsewhere over the links.
        assert_eq!(t.to_user(UserId(42), ServiceId(1)), Some(HopId(2)));
        assert_eq!(t.to_user(UserId(41), ServiceId(1)), Some(HopId(30)));
        assert!(t
            .to_user(UserId(40), ServiceId(1))
            .is_some_and(|h| [20, 21].contains(&h.0)));
    }

    #[test]
    fn silent_links_and_connectors_leave_the_mesh_lists() {
        let mut b = meshed();
        assert!(b.is_linked(&B));
        b.set_alive(HopId(30), false);
        assert!(!b.is_linked(&B));
        let t = b.table();
        assert_eq!(
            t.service(ServiceId(1)).unwrap().mesh.len(),
            3,
            "(2, 3) via B left out"
        );
        assert!(t.service(ServiceId(2)).is_none(), "only B reached it");
        assert_eq!(b.connector_for(UserId(0), ServiceId(2)), None);
        assert_eq!(t.to_user(UserId(41), ServiceId(1)), None);
        // One of A's two links silent: the group is the other link.
        b.set_alive(HopId(20), false);
        assert_eq!(b.table().to_user(UserId(40), ServiceId(1)), Some(HopId(21)));
        // The local connector silent: it leaves both lists.
        b.set_alive(HopId(1), false);
        let t = b.table();
        let route = t.service(ServiceId(1)).unwrap();
        assert!(route.local.is_empty());
        assert_eq!(&route.mesh[..], [HopId(21), HopId(21)]);
        for u in 0..16 {
            let (c, _) = b.connector_for(UserId(u), ServiceId(1)).unwrap();
            assert_eq!(c, [7, 8][pick(UserId(u), ServiceId(1), 2)]);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            hop: u32,
            peer: u8,
            id: u8,
            link: usize,
            ms: u64,
            confirmed: bool,
        },
        Confirm(u32),
        Remove(u32),
        Alive(u32, bool),
        Policy(Vec<(u32, Vec<ServiceId>)>),
        Mesh(u32, Vec<(u32, u32, u8)>),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let services = || proptest::collection::vec((0..4u32).prop_map(ServiceId), 0..3);
        prop_oneof![
            4 => (0..12u32, 0..3u8, 0..4u8, 0..2usize, 0..4u64, any::<bool>())
                .prop_map(|(hop, peer, id, link, ms, confirmed)| Op::Insert { hop, peer, id, link, ms, confirmed }),
            2 => (0..12u32).prop_map(Op::Confirm),
            2 => (0..12u32).prop_map(Op::Remove),
            2 => (0..12u32, any::<bool>()).prop_map(|(h, a)| Op::Alive(h, a)),
            1 => proptest::collection::vec((0..4u32, services()), 0..4).prop_map(Op::Policy),
            1 => (0..3u32, proptest::collection::vec((0..4u32, 0..3u32, 0..4u8), 0..6))
                .prop_map(|(me, e)| Op::Mesh(me, e)),
        ]
    }

    fn mesh_input(me: u32, entries: &[(u32, u32, u8)]) -> MeshRoutes {
        let mut services: BTreeMap<ServiceId, Vec<MeshEntry>> = BTreeMap::new();
        for &(s, relay, via) in entries {
            services.entry(ServiceId(s)).or_default().push(MeshEntry {
                relay,
                connector: 9,
                key: [9; 32],
                via: [via; 32],
            });
        }
        let users = (0..4).map(|u| (UserId(u), [u as u8; 32])).collect();
        MeshRoutes {
            me,
            services,
            users,
        }
    }

    fn peer_of(peer: u8, id: u8) -> (Peer, StaticKey) {
        match peer {
            0 => (Peer::User(UserId(u32::from(id))), [id; 32]),
            1 => (Peer::Connector(u32::from(id)), [0x10 + id; 32]),
            _ => (Peer::Relay(u32::from(id)), [id; 32]),
        }
    }

    /// Everything a worker or a directory can ask of the routes.
    fn observe(b: &RouteBuilder) -> Vec<String> {
        let t = b.table();
        let mut out = vec![format!("slots {}", t.hop_slots())];
        for h in 0..12 {
            out.push(format!(
                "hop {h} {:?}",
                t.hop(HopId(h)).map(TxHop::endpoint)
            ));
        }
        for s in (0..4).map(ServiceId) {
            out.push(format!("{s:?} {:?}", t.service(s).map(|r| &r.local)));
            for u in (0..6).map(UserId) {
                out.push(format!(
                    "{s:?} {u:?} {:?} {:?} {:?} {:?}",
                    t.to_service(s, u),
                    t.to_service_transit(s, u),
                    t.to_user(u, s),
                    b.connector_for(u, s)
                ));
            }
        }
        out
    }

    proptest::proptest! {
        /// Whatever the order of updates, the builder ends up with the
        /// routes of a builder given only the end state.
        #[test]
        fn incremental_updates_match_a_fresh_build(ops in proptest::collection::vec(op(), 0..40)) {
            let mut b = RouteBuilder::new();
            // Per hop: the session, alive, confirmed.
            let mut live: BTreeMap<u32, (RouteSession, bool, bool)> = BTreeMap::new();
            let mut policy = Vec::new();
            let mut mesh = None;
            for op in ops {
                match op {
                    Op::Insert { hop, peer, id, link, ms, confirmed } => {
                        let (peer, key) = peer_of(peer, id);
                        let s = session(peer, key, link, ms, hop);
                        if confirmed {
                            b.insert(HopId(hop), s.clone());
                        } else {
                            b.insert_unconfirmed(HopId(hop), s.clone());
                        }
                        live.insert(hop, (s, true, confirmed));
                    }
                    Op::Confirm(hop) => {
                        let was = live.get(&hop).map(|s| !s.2).unwrap_or(false);
                        proptest::prop_assert_eq!(b.confirm(HopId(hop)), was);
                        if let Some(s) = live.get_mut(&hop) {
                            s.2 = true;
                        }
                    }
                    Op::Remove(hop) => {
                        b.remove(HopId(hop));
                        live.remove(&hop);
                    }
                    Op::Alive(hop, alive) => {
                        b.set_alive(HopId(hop), alive);
                        if let Some(s) = live.get_mut(&hop) {
                            s.1 = alive;
                        }
                    }
                    Op::Policy(map) => {
                        b.set_connector_services(map.clone());
                        policy = map;
                    }
                    Op::Mesh(me, entries) => {
                        let input = mesh_input(me, &entries);
                        b.set_mesh(input.clone());
                        mesh = Some(input);
                    }
                }
            }
            let mut fresh = RouteBuilder::new();
            fresh.set_connector_services(policy);
            if let Some(input) = mesh {
                fresh.set_mesh(input);
            }
            for (hop, (s, alive, confirmed)) in live.into_iter().rev() {
                if confirmed {
                    fresh.insert(HopId(hop), s);
                } else {
                    fresh.insert_unconfirmed(HopId(hop), s);
                }
                fresh.set_alive(HopId(hop), alive);
            }
            proptest::prop_assert_eq!(observe(&b), observe(&fresh));
        }
    }
}
