//! Where frames go next: an immutable routing snapshot.
//!
//! A relay's control thread keeps a [`RouteBuilder`] (module [`build`]) up
//! to date as hop sessions come and go, the policy changes (which connector
//! serves which service) and the mesh changes (what other relays reach),
//! and after each batch of changes takes a [`RouteTable`] snapshot from it,
//! which it swaps into the workers as a whole, like the policy. Lookups are
//! by integer id in maps with a multiplicative hash: a few nanoseconds, no
//! allocation.

use core::hash::{BuildHasherDefault, Hasher};
use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::{ServiceId, UserId};
use crate::session::{HopId, TxHop};

pub mod build;

pub use build::{LocalConnector, MeshEntry, MeshRoutes, RouteBuilder, RouteSession};

/// Hasher for integer ids: one multiplication, high bits folded down. Ids
/// are not attacker-chosen in these maps (the control thread fills them from
/// verified certificates and the policy), so no keyed hash is needed.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        let h = (self.0 ^ v).wrapping_mul(crate::hash::FIB);
        self.0 = h ^ (h >> 29);
    }
}

/// A `HashMap` keyed by an integer id, hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Which of `n` next hops (or connectors) a flow of `user` to `service`
/// takes: a stable hash of the pair, the same on every relay, so that the
/// relays along a path through the mesh all pick the same connector and a
/// relay can tell a user which connector its flows reach. One user's flows
/// to one service stay on one connector; users and services spread.
#[inline]
pub fn pick(user: UserId, service: ServiceId, n: usize) -> usize {
    match n {
        0 | 1 => 0,
        n => {
            let pair = (u64::from(user.0) << 32) | u64::from(service.0);
            let h = pair.wrapping_mul(crate::hash::FIB);
            ((h ^ (h >> 29)).wrapping_mul(crate::hash::FIB) >> 32) as usize % n
        }
    }
}

/// Which of `n` equivalent hops (the per-worker links to one peer relay) a
/// flow of `user` to `service` takes: a second stable hash of the pair,
/// independent of [`pick`], so that the flows [`pick`] sends to one relay
/// spread over all its links.
#[inline]
pub fn spread(user: UserId, service: ServiceId, n: usize) -> usize {
    match n {
        0 | 1 => 0,
        n => {
            let pair = (u64::from(service.0) << 32) | u64::from(user.0);
            let h = pair.rotate_left(17).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
            ((h ^ (h >> 31)).wrapping_mul(crate::hash::FIB) >> 32) as usize % n
        }
    }
}

/// Marks a [`HopId`] in a route as a group of equivalent hops (see
/// [`RouteTable::add_group`]) rather than a hop.
const GROUP: u32 = 1 << 31;

/// Where frames for one service go.
///
/// * `local`: the hops of this relay's own connectors of the service, in
///   connector-id order. Frames that enter the mesh here (from a user's
///   agent) use them first.
/// * `mesh`: one entry per connector of the service anywhere in the mesh
///   (this relay's included), in the order every relay lists them (relay
///   id, then connector id), each the next hop towards that connector: a
///   local connector's own hop or the link to the next relay on the path.
///   Frames that enter the mesh here with no local connector, and frames
///   that arrive from another relay, pick among these, so every relay on
///   the path picks the same connector.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// This relay's connectors.
    pub local: Box<[HopId]>,
    /// Every connector in the mesh, as the next hop towards it.
    pub mesh: Box<[HopId]>,
}

/// The next hops this node knows, and which ids they lead to.
///
/// Immutable once published: a relay builds a new one for every change
/// ([`RouteBuilder::table`], a copy of the whole table: every hop, every
/// service's lists, every routed user) and swaps it in whole; the setters
/// below build tables by hand (tests, fixtures).
#[derive(Debug, Default)]
pub struct RouteTable {
    hops: Vec<Option<Arc<TxHop>>>,
    services: IdMap<ServiceId, ServiceRoute>,
    users: IdMap<UserId, HopId>,
    /// Groups of equivalent hops, referred to by tagged ids.
    groups: Vec<Box<[HopId]>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Adds (or replaces) the transmit hop `id`.
    pub fn set_hop(&mut self, id: HopId, hop: Arc<TxHop>) {
        let i = id.0 as usize;
        if self.hops.len() <= i {
            self.hops.resize(i + 1, None);
        }
        self.hops[i] = Some(hop);
    }

    /// A route target for several equivalent hops (the links to one peer
    /// relay, one per worker): flows are spread over them by [`spread`].
    /// One hop is returned as it is; none gives `None`.
    pub fn add_group(&mut self, hops: Vec<HopId>) -> Option<HopId> {
        match hops.len() {
            0 => None,
            1 => Some(hops[0]),
            _ => {
                let id = GROUP | u32::try_from(self.groups.len()).ok()?;
                self.groups.push(hops.into_boxed_slice());
                Some(HopId(id))
            }
        }
    }

    /// The hop a route entry `id` stands for, for a flow of `user` to
    /// `service`.
    #[inline]
    fn resolve(&self, id: HopId, user: UserId, service: ServiceId) -> Option<HopId> {
        if id.0 & GROUP == 0 {
            return Some(id);
        }
        let group = self.groups.get((id.0 & !GROUP) as usize)?;
        group.get(spread(user, service, group.len())).copied()
    }

    /// Routes `service` to these hops of local connectors (several: flows
    /// are spread over them), keeping its mesh entries.
    pub fn set_service(&mut self, service: ServiceId, hops: Vec<HopId>) {
        let route = self.services.entry(service).or_default();
        route.local = hops.into_boxed_slice();
        if route.local.is_empty() && route.mesh.is_empty() {
            self.services.remove(&service);
        }
    }

    /// Routes `service`'s connectors across the mesh through these hops
    /// (see [`ServiceRoute::mesh`]), keeping its local entries.
    pub fn set_service_mesh(&mut self, service: ServiceId, hops: Vec<HopId>) {
        let route = self.services.entry(service).or_default();
        route.mesh = hops.into_boxed_slice();
        if route.local.is_empty() && route.mesh.is_empty() {
            self.services.remove(&service);
        }
    }

    /// The route of `service`, if any.
    pub fn service(&self, service: ServiceId) -> Option<&ServiceRoute> {
        self.services.get(&service)
    }

    /// Routes frames for `user` to `hop` (or a group from
    /// [`RouteTable::add_group`]).
    pub fn set_user(&mut self, user: UserId, hop: HopId) {
        self.users.insert(user, hop);
    }

    /// One more than the largest hop id: what a worker's
    /// [`crate::session::TxCounters`] must have room for.
    pub fn hop_slots(&self) -> usize {
        self.hops.len()
    }

    /// The transmit hop `id`.
    #[inline]
    pub fn hop(&self, id: HopId) -> Option<&TxHop> {
        self.hops.get(id.0 as usize)?.as_deref()
    }

    /// The hop towards `service` for a flow of `user` entering the mesh
    /// here: a local connector if there is one, else the mesh's pick.
    #[inline]
    pub fn to_service(&self, service: ServiceId, user: UserId) -> Option<HopId> {
        let route = self.services.get(&service)?;
        let hops = if route.local.is_empty() {
            &route.mesh
        } else {
            &route.local
        };
        let id = *hops.get(pick(user, service, hops.len()))?;
        self.resolve(id, user, service)
    }

    /// The hop towards `service` for a flow of `user` that arrived from
    /// another relay: the mesh's pick (the connector the ingress relay
    /// chose), falling back to a local connector while this relay has no
    /// mesh entries for the service.
    #[inline]
    pub fn to_service_transit(&self, service: ServiceId, user: UserId) -> Option<HopId> {
        let route = self.services.get(&service)?;
        let hops = if route.mesh.is_empty() {
            &route.local
        } else {
            &route.mesh
        };
        let id = *hops.get(pick(user, service, hops.len()))?;
        self.resolve(id, user, service)
    }

    /// The hop towards `user`'s agent, for a frame of `service`.
    #[inline]
    pub fn to_user(&self, user: UserId, service: ServiceId) -> Option<HopId> {
        let id = *self.users.get(&user)?;
        self.resolve(id, user, service)
    }

    /// Whether `hop` is one of this relay's connectors of `service`: a
    /// connector may only answer for services it serves.
    #[inline]
    pub fn serves(&self, hop: HopId, service: ServiceId) -> bool {
        self.services
            .get(&service)
            .is_some_and(|route| route.local.contains(&hop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ReceiverIndex;

    fn hop() -> Arc<TxHop> {
        Arc::new(TxHop::new(
            "127.0.0.1:9".parse().unwrap(),
            ReceiverIndex(1),
            &[0; 32],
            0,
        ))
    }

    #[test]
    fn routes_by_service_and_user() {
        let mut t = RouteTable::new();
        t.set_hop(HopId(2), hop());
        t.set_service(ServiceId(10), vec![HopId(2)]);
        t.set_user(UserId(5), HopId(2));
        assert_eq!(t.to_service(ServiceId(10), UserId(1)), Some(HopId(2)));
        assert_eq!(t.to_service(ServiceId(11), UserId(1)), None);
        assert_eq!(t.to_user(UserId(5), ServiceId(10)), Some(HopId(2)));
        assert!(t.hop(HopId(2)).is_some());
        assert!(t.hop(HopId(1)).is_none());
        assert!(t.hop(HopId(99)).is_none());
        assert!(t.serves(HopId(2), ServiceId(10)));
        assert!(!t.serves(HopId(3), ServiceId(10)));
        assert_eq!(t.hop_slots(), 3);
    }

    #[test]
    fn spreads_users_over_connectors_stably() {
        let mut t = RouteTable::new();
        t.set_service(ServiceId(1), vec![HopId(0), HopId(1), HopId(2)]);
        let mut used = [0u32; 3];
        for u in 0..3000 {
            let h = t.to_service(ServiceId(1), UserId(u)).unwrap();
            assert_eq!(t.to_service(ServiceId(1), UserId(u)), Some(h));
            used[h.0 as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 700), "{used:?}");
    }

    #[test]
    fn groups_spread_flows_over_their_hops() {
        let mut t = RouteTable::new();
        assert_eq!(t.add_group(Vec::new()), None);
        assert_eq!(t.add_group(vec![HopId(4)]), Some(HopId(4)));
        let links = t.add_group(vec![HopId(7), HopId(8)]).unwrap();
        assert_ne!(links, HopId(7));
        let s = ServiceId(3);
        t.set_service_mesh(s, vec![links]);
        t.set_user(UserId(1), links);
        let mut used = [0u32; 2];
        for u in 0..2000 {
            let h = t.to_service(s, UserId(u)).unwrap();
            assert_eq!(t.to_service_transit(s, UserId(u)), Some(h));
            used[(h.0 - 7) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 800), "{used:?}");
        let down: std::collections::BTreeSet<HopId> = (0..64)
            .filter_map(|s| t.to_user(UserId(1), ServiceId(s)))
            .collect();
        assert_eq!(down.len(), 2, "one user's services spread too");
    }

    #[test]
    fn one_user_spreads_over_services() {
        let mut used = [0u32; 4];
        for s in 0..4000 {
            used[pick(UserId(7), ServiceId(s), 4)] += 1;
        }
        assert!(used.iter().all(|&n| n > 800), "{used:?}");
        assert_eq!(pick(UserId(7), ServiceId(3), 0), 0);
        assert_eq!(pick(UserId(7), ServiceId(3), 1), 0);
    }

    #[test]
    fn entering_frames_prefer_local_connectors_transit_follows_the_mesh() {
        let (s, u) = (ServiceId(4), UserId(9));
        let mut t = RouteTable::new();
        // Only the mesh reaches it: both directions use the mesh's pick.
        t.set_service_mesh(s, vec![HopId(5), HopId(6), HopId(7)]);
        let mesh = [HopId(5), HopId(6), HopId(7)][pick(u, s, 3)];
        assert_eq!(t.to_service(s, u), Some(mesh));
        assert_eq!(t.to_service_transit(s, u), Some(mesh));
        assert!(!t.serves(mesh, s), "a relay link is not a connector");
        // A local connector: frames entering here use it, transit does not.
        t.set_service(s, vec![HopId(1)]);
        assert_eq!(t.to_service(s, u), Some(HopId(1)));
        assert_eq!(t.to_service_transit(s, u), Some(mesh));
        assert!(t.serves(HopId(1), s));
        // No mesh entries (no view yet): transit falls back to local.
        t.set_service_mesh(s, Vec::new());
        assert_eq!(t.to_service_transit(s, u), Some(HopId(1)));
        // Neither: the service is gone.
        t.set_service(s, Vec::new());
        assert_eq!(t.to_service(s, u), None);
        assert!(t.service(s).is_none());
    }
}
