//! Where frames go next: an immutable routing snapshot.
//!
//! Built by the control thread from the live hop sessions (which connector
//! serves which service, which user is attached where, which peer relay
//! announces what) and swapped into the workers as a whole, like the policy.
//! Lookups are by integer id in maps with a multiplicative hash: a few
//! nanoseconds, no allocation.

use core::hash::{BuildHasherDefault, Hasher};
use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::{ServiceId, UserId};
use crate::session::{HopId, TxHop};

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
        let h = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// A `HashMap` keyed by an integer id, hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Which of `n` next hops (or connectors) a flow of `user` takes: a stable
/// hash of the user id, the same on every relay, so a relay that forwards
/// to another can tell which of that relay's connectors the flow reaches.
#[inline]
pub fn pick(user: UserId, n: usize) -> usize {
    match n {
        0 | 1 => 0,
        n => (u64::from(user.0).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % n,
    }
}

/// The next hops this node knows, and which ids they lead to.
#[derive(Debug, Default)]
pub struct RouteTable {
    hops: Vec<Option<Arc<TxHop>>>,
    services: IdMap<ServiceId, Box<[HopId]>>,
    users: IdMap<UserId, HopId>,
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

    /// Routes `service` to these hops (several: flows are spread over them).
    pub fn set_service(&mut self, service: ServiceId, hops: Vec<HopId>) {
        if hops.is_empty() {
            self.services.remove(&service);
        } else {
            self.services.insert(service, hops.into_boxed_slice());
        }
    }

    /// Routes frames for `user` to `hop`.
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

    /// The hop towards `service` for a flow of `user`. Flows of one user
    /// stay on one connector; users are spread over all connectors.
    #[inline]
    pub fn to_service(&self, service: ServiceId, user: UserId) -> Option<HopId> {
        let hops = self.services.get(&service)?;
        hops.get(pick(user, hops.len())).copied()
    }

    /// The hop towards `user`'s agent.
    #[inline]
    pub fn to_user(&self, user: UserId) -> Option<HopId> {
        self.users.get(&user).copied()
    }

    /// Whether `hop` is one of the hops `service` is routed to: a connector
    /// may only answer for services it serves.
    #[inline]
    pub fn serves(&self, hop: HopId, service: ServiceId) -> bool {
        self.services
            .get(&service)
            .is_some_and(|hops| hops.contains(&hop))
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
        assert_eq!(t.to_user(UserId(5)), Some(HopId(2)));
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
}
