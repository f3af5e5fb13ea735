//! Hop sessions: what a node keeps for each authenticated link.
//!
//! A hop session has two halves with different owners:
//!
//! * the **receive half** ([`RxSession`]: tag key, replay window, who the
//!   peer is) belongs to the one worker whose socket receives the peer's
//!   frames, and lives in that worker's [`SessionTable`], found by the
//!   receiver index in the frame with one array index;
//! * the **transmit half** ([`TxHop`]: endpoint, the peer's receiver index,
//!   tag key, counter) is shared by every worker that forwards towards the
//!   peer. Its counter is the only shared mutable state on the datapath, and
//!   workers reserve it a block at a time ([`TxCounters`]), so the atomic is
//!   touched once per [`COUNTER_BLOCK`] frames, not per frame.
//!
//! **Key confirmation.** A session a node *responded* to is installed
//! unconfirmed: anyone who can send an initiation with a valid mac1 from
//! any source address gets one, and only the first frame that passes the
//! session's hop tag proves the peer holds the keys (it received the
//! response at the initiation's source). The worker that sees that frame
//! marks the session confirmed and queues its index in its
//! [`Confirmations`] (preallocated: nothing on the datapath allocates); the
//! relay's control thread then routes to the session. A session this node
//! initiated is confirmed by the response itself
//! ([`RxSession::already_confirmed`]).

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::hoptag::candidates::ct_eq;
use crate::hoptag::HopKey;
use crate::ids::{ReceiverIndex, UserId};
use crate::replay::ReplayWindow;
use crate::wire::{Frame, HOP_TAG_LEN};

/// Counters a worker reserves from a [`TxHop`] at a time. Small next to the
/// receiver's replay window, so blocks sent by different workers interleave
/// without looking like replays.
pub const COUNTER_BLOCK: u64 = 256;

/// How far the shared counter may run ahead of a worker's reserved block
/// before the block is thrown away: half the receiver's replay window.
pub const STALE_AFTER: u64 = crate::replay::WINDOW_SIZE / 2;

/// Bits of a receiver index that select the slot in a [`SessionTable`]; the
/// bits above are a generation that makes a stale index miss.
pub const SLOT_BITS: u32 = 20;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// Handle of a transmit hop in a [`crate::route::RouteTable`]. Local to a
/// node; never on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopId(pub u32);

/// Who is at the far end of a hop, from its verified certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A user's agent: may only send frames carrying this user id, upstream.
    User(UserId),
    /// A connector (by certificate id): may only send frames downstream,
    /// for services it is listed for.
    Connector(u32),
    /// Another relay of the mesh: trusted to have checked the ids itself.
    Relay(u32),
}

/// The transmit half of a hop session, shared by all workers.
pub struct TxHop {
    endpoint: SocketAddr,
    remote_index: ReceiverIndex,
    key: HopKey,
    next_counter: AtomicU64,
    /// Distinguishes this hop from an earlier one that had the same
    /// [`HopId`], so stale counter reservations are never reused.
    serial: u64,
}

impl fmt::Debug for TxHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxHop")
            .field("endpoint", &self.endpoint)
            .field("remote_index", &self.remote_index)
            .field("next_counter", &self.next_counter.load(Ordering::Relaxed))
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl TxHop {
    /// A transmit hop towards `endpoint`, whose session the peer knows as
    /// `remote_index`, keyed with the handshake's send key. `serial` must be
    /// unique for the lifetime of the node (a counter will do).
    pub fn new(
        endpoint: SocketAddr,
        remote_index: ReceiverIndex,
        send_key: &[u8; 32],
        serial: u64,
    ) -> TxHop {
        TxHop {
            endpoint,
            remote_index,
            key: HopKey::new(send_key),
            next_counter: AtomicU64::new(0),
            serial,
        }
    }

    /// Where frames for this hop are sent.
    #[inline]
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// The receiver index the peer chose for this session.
    #[inline]
    pub fn remote_index(&self) -> ReceiverIndex {
        self.remote_index
    }

    /// The tag key for frames sent on this hop.
    #[inline]
    pub fn key(&self) -> &HopKey {
        &self.key
    }

    /// Counters handed out so far (all workers together).
    pub fn counters_used(&self) -> u64 {
        self.next_counter.load(Ordering::Relaxed)
    }

    /// Reserves `n` consecutive counters. Relaxed ordering is enough: the
    /// counter only has to be unique, not ordered with other memory.
    #[inline]
    pub fn reserve(&self, n: u64) -> Range<u64> {
        let start = self.next_counter.fetch_add(n, Ordering::Relaxed);
        start..start.saturating_add(n)
    }
}

/// A worker's cache of counter blocks reserved from shared [`TxHop`]s,
/// indexed by [`HopId`].
#[derive(Debug, Default)]
pub struct TxCounters {
    blocks: Vec<Reservation>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Reservation {
    serial: u64,
    next: u64,
    end: u64,
}

impl TxCounters {
    /// An empty cache; room for `hops` hop ids is made up front so the
    /// datapath does not grow it.
    pub fn with_capacity(hops: usize) -> TxCounters {
        TxCounters {
            blocks: vec![Reservation::default(); hops],
        }
    }

    /// Makes room for hop ids below `hops`. The worker calls it for every
    /// frame it judges, with the current route table's size: a length
    /// comparison, which grows the cache only on the first frame after a
    /// larger route table arrived.
    pub fn ensure(&mut self, hops: usize) {
        if self.blocks.len() < hops {
            self.blocks.resize(hops, Reservation::default());
        }
    }

    /// The next hop counter for `hop`, or `None` when the key has reached
    /// [`HopKey::USAGE_LIMIT`] and must not tag another frame.
    #[inline]
    pub fn next(&mut self, id: HopId, hop: &TxHop) -> Option<u64> {
        let Some(r) = self.blocks.get_mut(id.0 as usize) else {
            // Route table larger than the cache: `ensure` was skipped. Take
            // a single counter rather than fail or allocate here.
            let c = hop.reserve(1).start;
            return (c < HopKey::USAGE_LIMIT).then_some(c);
        };
        // A block reserved long ago may lag the shared counter by more than
        // the receiver's replay window if other workers kept sending: then
        // its counters would be dropped as too old. One relaxed load of a
        // line that is written once per COUNTER_BLOCK frames is cheap.
        let stale = || hop.counters_used().saturating_sub(r.next) > STALE_AFTER;
        if r.serial != hop.serial || r.next >= r.end || stale() {
            let block = hop.reserve(COUNTER_BLOCK);
            *r = Reservation {
                serial: hop.serial,
                next: block.start,
                end: block.end,
            };
        }
        let c = r.next;
        if c >= HopKey::USAGE_LIMIT {
            return None;
        }
        r.next += 1;
        Some(c)
    }
}

/// Frames failing the hop tag that one receive session takes before it
/// refuses every frame ([`RxSession`]): a receive-side integrity limit, as
/// QUIC has one per key. A legitimate peer's frames do not fail the tag
/// (UDP's checksum catches corruption first), so only forgeries count.
/// 2^20 forgeries each succeeding with probability 2^-64 give an attacker
/// at most a 2^-44 chance per session key, and after the limit the
/// session costs no more MAC computations. The price: whoever sees a
/// session's receiver index on the path can end the session with 2^20
/// datagrams (the peer's next rekey replaces it); such an attacker can
/// already drop its frames.
pub const TAG_FAILURE_LIMIT: u32 = 1 << 20;

/// The receive half of a hop session, owned by one worker.
#[derive(Debug)]
pub struct RxSession {
    key: HopKey,
    window: ReplayWindow,
    peer: Peer,
    reply_hop: HopId,
    frames: u64,
    confirmed: bool,
    /// Frames that failed the tag, up to [`TAG_FAILURE_LIMIT`].
    tag_failures: u32,
}

impl RxSession {
    /// A session receiving with the handshake's receive key, from `peer`,
    /// answered through `reply_hop`. It is unconfirmed until the first
    /// frame that passes its tag (see the module docs).
    pub fn new(recv_key: &[u8; 32], peer: Peer, reply_hop: HopId) -> RxSession {
        RxSession {
            key: HopKey::new(recv_key),
            window: ReplayWindow::default(),
            peer,
            reply_hop,
            frames: 0,
            confirmed: false,
            tag_failures: 0,
        }
    }

    /// The same session, confirmed from the start: one this node initiated,
    /// whose keys the peer's response proved.
    pub fn already_confirmed(mut self) -> RxSession {
        self.confirmed = true;
        self
    }

    /// Whether a frame passed this session's tag (or it was confirmed from
    /// the start).
    #[inline]
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Marks the session confirmed: after a frame passed its tag and the
    /// confirmation was queued.
    #[inline]
    pub(crate) fn confirm(&mut self) {
        self.confirmed = true;
    }

    /// The verified peer.
    #[inline]
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The transmit hop back to this peer.
    #[inline]
    pub fn reply_hop(&self) -> HopId {
        self.reply_hop
    }

    /// Frames accepted on this session (tag and replay checks passed).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames that failed this session's tag (at most
    /// [`TAG_FAILURE_LIMIT`]).
    /// The key this session's frames are tagged under.
    #[inline]
    pub(crate) fn key(&self) -> &HopKey {
        &self.key
    }

    pub fn tag_failures(&self) -> u32 {
        self.tag_failures
    }

    /// Verifies the hop tag of `frame` (a checked frame: what the tag
    /// covers is [`crate::hoptag`]'s rule), then (only then) runs its
    /// counter through the replay window. Returns which check failed, if
    /// any. A session that saw [`TAG_FAILURE_LIMIT`] bad tags refuses
    /// every frame, before any MAC.
    ///
    /// `expected` is the frame's tag under this session's key when the
    /// caller computed it already (with other frames' tags,
    /// [`HopKey::tag_data_lanes`]); `None` computes it here.
    #[inline]
    pub(crate) fn authenticate<T: AsRef<[u8]>>(
        &mut self,
        frame: &Frame<T>,
        expected: Option<&[u8; HOP_TAG_LEN]>,
    ) -> Result<(), AuthFailure> {
        let counter = frame.counter();
        if self.tag_failures >= TAG_FAILURE_LIMIT {
            return Err(AuthFailure::TagLimit);
        }
        // Cheap early reject before the MAC, as boringtun does; the window
        // is only marked after the tag verified.
        if !self.window.check(counter) {
            return Err(AuthFailure::Replay);
        }
        let valid = match expected {
            Some(tag) => ct_eq(tag, frame.tag()),
            None => self.key.verify_frame(frame),
        };
        if !valid {
            self.tag_failures += 1;
            return Err(AuthFailure::BadTag);
        }
        if !self.window.update(counter) {
            return Err(AuthFailure::Replay);
        }
        self.frames += 1;
        Ok(())
    }
}

/// Receiver indices of sessions a worker saw confirmed (their first frame
/// passed the hop tag), for the worker to tell its control thread. Sized
/// once ([`Confirmations::CAPACITY`]); when full, a session stays
/// unconfirmed and its next frame tries again, so nothing is lost and
/// nothing allocates.
#[derive(Debug)]
pub struct Confirmations {
    queue: VecDeque<ReceiverIndex>,
}

impl Default for Confirmations {
    fn default() -> Confirmations {
        Confirmations::new()
    }
}

impl Confirmations {
    /// Confirmations a worker holds before it delivers them.
    pub const CAPACITY: usize = 1024;

    /// An empty queue with room for [`Confirmations::CAPACITY`].
    pub fn new() -> Confirmations {
        Confirmations {
            queue: VecDeque::with_capacity(Self::CAPACITY),
        }
    }

    /// Queues `index`; false (and nothing queued) when full.
    #[inline]
    pub(crate) fn push(&mut self, index: ReceiverIndex) -> bool {
        if self.queue.len() >= Self::CAPACITY {
            return false;
        }
        self.queue.push_back(index);
        true
    }

    /// The oldest queued confirmation.
    pub fn pop(&mut self) -> Option<ReceiverIndex> {
        self.queue.pop_front()
    }

    /// Puts back a confirmation [`Confirmations::pop`] gave, which could
    /// not be delivered yet: it is the next one popped.
    pub fn unpop(&mut self, index: ReceiverIndex) {
        if self.queue.len() < Self::CAPACITY {
            self.queue.push_front(index);
        }
    }

    /// Queued confirmations.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Which check of [`RxSession::authenticate`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    BadTag,
    Replay,
    /// The session saw [`TAG_FAILURE_LIMIT`] bad tags.
    TagLimit,
}

/// A worker's receive sessions, found by receiver index with one array
/// index and one comparison.
///
/// A receiver index is `generation << SLOT_BITS | slot`. The control
/// thread allocates indices (see [`IndexAllocator`]) and installs sessions;
/// the generation makes frames for a removed session miss instead of
/// landing on the session that reused its slot.
#[derive(Debug, Default)]
pub struct SessionTable {
    slots: Vec<Option<(ReceiverIndex, RxSession)>>,
    live: usize,
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> SessionTable {
        SessionTable::default()
    }

    /// Installs `session` under `index`, replacing whatever held its slot.
    /// Called between batches; may allocate.
    pub fn install(&mut self, index: ReceiverIndex, session: RxSession) {
        let slot = (index.0 & SLOT_MASK) as usize;
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].replace((index, session)).is_none() {
            self.live += 1;
        }
    }

    /// Removes the session under `index`, if that exact index is installed.
    pub fn remove(&mut self, index: ReceiverIndex) -> Option<RxSession> {
        let slot = self.slots.get_mut((index.0 & SLOT_MASK) as usize)?;
        if slot.as_ref().is_some_and(|(i, _)| *i == index) {
            self.live -= 1;
            slot.take().map(|(_, s)| s)
        } else {
            None
        }
    }

    /// The session under `index`.
    #[inline]
    pub fn get_mut(&mut self, index: ReceiverIndex) -> Option<&mut RxSession> {
        match self.slots.get_mut((index.0 & SLOT_MASK) as usize) {
            Some(Some((i, s))) if *i == index => Some(s),
            _ => None,
        }
    }

    /// The session under `index`, read-only.
    pub fn get(&self, index: ReceiverIndex) -> Option<&RxSession> {
        match self.slots.get((index.0 & SLOT_MASK) as usize) {
            Some(Some((i, s))) if *i == index => Some(s),
            _ => None,
        }
    }

    /// Number of installed sessions.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no session is installed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// Hands out receiver indices for one [`SessionTable`]: free slots are
/// reused, each reuse with the next generation.
#[derive(Debug, Default)]
pub struct IndexAllocator {
    generations: Vec<u32>,
    in_use: Vec<bool>,
    free: Vec<u32>,
}

impl IndexAllocator {
    /// An allocator with no slot in use.
    pub fn new() -> IndexAllocator {
        IndexAllocator::default()
    }

    /// A fresh receiver index, or `None` when all 2^[`SLOT_BITS`] slots are
    /// in use.
    pub fn allocate(&mut self) -> Option<ReceiverIndex> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.generations.len()).ok()?;
                if s > SLOT_MASK {
                    return None;
                }
                self.generations.push(0);
                self.in_use.push(false);
                s
            }
        };
        self.in_use[slot as usize] = true;
        let generation = &mut self.generations[slot as usize];
        *generation = (*generation + 1) & (u32::MAX >> SLOT_BITS);
        Some(ReceiverIndex((*generation << SLOT_BITS) | slot))
    }

    /// Takes `index` itself, if its slot is free here: for an index another
    /// allocator handed out (a relay's outbound handshake, whose response
    /// may arrive at another worker than the one that sent it). Returns
    /// whether it was free. O(free slots).
    pub fn claim(&mut self, index: ReceiverIndex) -> bool {
        let slot = index.0 & SLOT_MASK;
        let generation = index.0 >> SLOT_BITS;
        while self.generations.len() <= slot as usize {
            let Ok(s) = u32::try_from(self.generations.len()) else {
                return false;
            };
            self.generations.push(0);
            self.in_use.push(false);
            self.free.push(s);
        }
        if self.in_use[slot as usize] {
            return false;
        }
        self.free.retain(|&s| s != slot);
        self.in_use[slot as usize] = true;
        self.generations[slot as usize] = generation;
        true
    }

    /// Returns an index for reuse (O(1); releasing a free slot is a no-op).
    pub fn release(&mut self, index: ReceiverIndex) {
        let slot = index.0 & SLOT_MASK;
        if let Some(used) = self.in_use.get_mut(slot as usize) {
            if *used {
                *used = false;
                self.free.push(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(serial: u64) -> TxHop {
        TxHop::new(
            "127.0.0.1:1".parse().unwrap(),
            ReceiverIndex(5),
            &[1; 32],
            serial,
        )
    }

    #[test]
    fn counters_are_unique_across_workers() {
        let h = hop(1);
        let mut a = TxCounters::with_capacity(1);
        let mut b = TxCounters::with_capacity(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next(HopId(0), &h).unwrap()));
            assert!(seen.insert(b.next(HopId(0), &h).unwrap()));
        }
        assert_eq!(seen.len(), 2000);
    }

    #[test]
    fn a_new_hop_under_an_old_id_gets_fresh_counters() {
        let mut c = TxCounters::with_capacity(1);
        assert_eq!(c.next(HopId(0), &hop(1)), Some(0));
        assert_eq!(c.next(HopId(0), &hop(2)), Some(0));
    }

    #[test]
    fn a_block_left_far_behind_is_replaced() {
        let h = hop(1);
        let mut slow = TxCounters::with_capacity(1);
        let mut busy = TxCounters::with_capacity(1);
        assert_eq!(slow.next(HopId(0), &h), Some(0));
        for _ in 0..STALE_AFTER + COUNTER_BLOCK {
            busy.next(HopId(0), &h).unwrap();
        }
        let c = slow.next(HopId(0), &h).unwrap();
        assert!(
            h.counters_used() - c <= COUNTER_BLOCK,
            "stale counter {c} reused"
        );
    }

    #[test]
    fn exhausted_key_stops_tagging() {
        let h = hop(1);
        h.next_counter
            .store(HopKey::USAGE_LIMIT - 1, Ordering::Relaxed);
        let mut c = TxCounters::with_capacity(1);
        assert_eq!(c.next(HopId(0), &h), Some(HopKey::USAGE_LIMIT - 1));
        assert_eq!(c.next(HopId(0), &h), None);
        let mut small = TxCounters::default();
        assert_eq!(small.next(HopId(3), &h), None);
    }

    #[test]
    fn stale_index_misses_after_reuse() {
        let mut alloc = IndexAllocator::new();
        let mut table = SessionTable::new();
        let first = alloc.allocate().unwrap();
        table.install(first, RxSession::new(&[0; 32], Peer::Relay(1), HopId(0)));
        assert!(table.get(first).is_some());
        assert!(table.remove(first).is_some());
        alloc.release(first);
        let second = alloc.allocate().unwrap();
        assert_eq!(second.0 & SLOT_MASK, first.0 & SLOT_MASK);
        assert_ne!(second, first);
        table.install(second, RxSession::new(&[0; 32], Peer::Relay(2), HopId(0)));
        assert!(table.get(first).is_none());
        assert_eq!(table.get(second).unwrap().peer(), Peer::Relay(2));
        assert_eq!(table.len(), 1);
    }

    /// A checked keepalive frame with `counter`, tagged under `key`, or
    /// with a zero tag when `forged`.
    fn keepalive(key: &[u8; 32], counter: u64, forged: bool) -> [u8; crate::wire::HEADER_LEN] {
        let mut buf = [0u8; crate::wire::HEADER_LEN];
        crate::wire::HeaderRepr {
            kind: crate::wire::Kind::Keepalive,
            ttl: 1,
            receiver: ReceiverIndex(1),
            counter,
            user: UserId(0),
            service: crate::ids::ServiceId(0),
            body_len: 0,
        }
        .emit(&mut buf)
        .unwrap();
        if !forged {
            HopKey::new(key).seal_frame(&mut Frame::new_unchecked(&mut buf[..]));
        }
        buf
    }

    fn auth(s: &mut RxSession, frame: &[u8]) -> Result<(), AuthFailure> {
        s.authenticate(&Frame::new_checked(frame).unwrap(), None)
    }

    #[test]
    fn authenticate_rejects_bad_tag_and_replay() {
        let key = [7u8; 32];
        let mut s = RxSession::new(&key, Peer::Relay(1), HopId(0));
        assert_eq!(auth(&mut s, &keepalive(&key, 1, false)), Ok(()));
        assert_eq!(
            auth(&mut s, &keepalive(&key, 1, false)),
            Err(AuthFailure::Replay)
        );
        assert_eq!(
            auth(&mut s, &keepalive(&key, 2, true)),
            Err(AuthFailure::BadTag)
        );
        // A forged frame must not consume the counter.
        assert_eq!(auth(&mut s, &keepalive(&key, 2, false)), Ok(()));
        assert_eq!(s.frames(), 2);
    }

    #[test]
    fn a_session_refuses_everything_after_the_tag_failure_limit() {
        let key = [7u8; 32];
        let mut s = RxSession::new(&key, Peer::User(crate::ids::UserId(1)), HopId(0));
        for c in 0..u64::from(TAG_FAILURE_LIMIT) - 1 {
            assert_eq!(
                auth(&mut s, &keepalive(&key, c, true)),
                Err(AuthFailure::BadTag)
            );
        }
        // One short of the limit, a valid frame still passes.
        assert_eq!(auth(&mut s, &keepalive(&key, 1, false)), Ok(()));
        assert_eq!(
            auth(&mut s, &keepalive(&key, 2, true)),
            Err(AuthFailure::BadTag)
        );
        assert_eq!(s.tag_failures(), TAG_FAILURE_LIMIT);
        // Now even a valid tag is refused, and failures stop counting.
        assert_eq!(
            auth(&mut s, &keepalive(&key, 3, false)),
            Err(AuthFailure::TagLimit)
        );
        assert_eq!(
            auth(&mut s, &keepalive(&key, 4, true)),
            Err(AuthFailure::TagLimit)
        );
        assert_eq!(s.tag_failures(), TAG_FAILURE_LIMIT);
        assert_eq!(s.frames(), 1);
    }

    #[test]
    fn a_worker_takes_its_counters_from_one_block_until_it_runs_out() {
        let h = hop(1);
        let mut c = TxCounters::with_capacity(1);
        for want in 0..COUNTER_BLOCK {
            assert_eq!(c.next(HopId(0), &h), Some(want));
            // One reservation from the shared counter for the whole block.
            assert_eq!(h.counters_used(), COUNTER_BLOCK);
        }
        assert_eq!(c.next(HopId(0), &h), Some(COUNTER_BLOCK));
        assert_eq!(h.counters_used(), 2 * COUNTER_BLOCK);
    }

    #[test]
    fn a_block_lagging_by_exactly_stale_after_is_kept() {
        let h = hop(1);
        let mut c = TxCounters::with_capacity(1);
        assert_eq!(c.next(HopId(0), &h), Some(0));
        // Other workers ran the shared counter ahead: the block's next
        // counter (1) lags it by exactly STALE_AFTER, still in the window.
        h.next_counter.store(1 + STALE_AFTER, Ordering::Relaxed);
        assert_eq!(c.next(HopId(0), &h), Some(1));
        // One further and the block is thrown away.
        h.next_counter.store(2 + STALE_AFTER + 1, Ordering::Relaxed);
        assert_eq!(c.next(HopId(0), &h), Some(2 + STALE_AFTER + 1));
    }

    #[test]
    fn ensure_grows_the_cache_and_never_shrinks_it() {
        let h = hop(1);
        let mut c = TxCounters::default();
        c.ensure(3);
        assert_eq!(c.next(HopId(2), &h), Some(0));
        assert_eq!(h.counters_used(), COUNTER_BLOCK, "a block, not one counter");
        let h = hop(2);
        let mut c = TxCounters::with_capacity(4);
        c.ensure(1);
        assert_eq!(c.next(HopId(3), &h), Some(0));
        assert_eq!(h.counters_used(), COUNTER_BLOCK, "a block, not one counter");
    }

    #[test]
    fn a_hop_past_the_cache_takes_single_counters_up_to_the_usage_limit() {
        let h = hop(1);
        let mut c = TxCounters::default();
        assert_eq!(c.next(HopId(0), &h), Some(0));
        assert_eq!(h.counters_used(), 1, "one counter, no block");
        h.next_counter
            .store(HopKey::USAGE_LIMIT - 1, Ordering::Relaxed);
        assert_eq!(c.next(HopId(0), &h), Some(HopKey::USAGE_LIMIT - 1));
        assert_eq!(c.next(HopId(0), &h), None);
    }

    #[test]
    fn a_reused_slot_goes_through_every_generation_before_repeating_one() {
        let mut alloc = IndexAllocator::new();
        let mut seen = std::collections::BTreeSet::new();
        let generations = 1u32 << (32 - SLOT_BITS);
        for _ in 0..generations {
            let i = alloc.allocate().unwrap();
            assert_eq!(i.0 & SLOT_MASK, 0);
            assert!(seen.insert(i), "{i:?} handed out twice");
            alloc.release(i);
        }
        // The generation wraps: the first index comes back only now.
        assert!(seen.contains(&alloc.allocate().unwrap()));
    }

    #[test]
    fn every_slot_is_handed_out_once_then_none() {
        let mut alloc = IndexAllocator::new();
        let mut last = None;
        for slot in 0..=SLOT_MASK {
            let i = alloc.allocate().unwrap();
            assert_eq!(i.0 & SLOT_MASK, slot);
            last = Some(i);
        }
        assert_eq!(alloc.allocate(), None);
        let last = last.unwrap();
        alloc.release(last);
        assert_eq!(alloc.allocate().unwrap().0 & SLOT_MASK, SLOT_MASK);
    }

    #[test]
    fn a_claimed_index_is_followed_by_its_next_generation() {
        let claimed = ReceiverIndex((7 << SLOT_BITS) | 3);
        let mut alloc = IndexAllocator::new();
        assert!(alloc.claim(claimed));
        alloc.release(claimed);
        // The slot is reused with the generation after the claimed one, so
        // frames for the claimed index miss the new session.
        assert_eq!(alloc.allocate(), Some(ReceiverIndex((8 << SLOT_BITS) | 3)));
    }

    #[test]
    fn a_full_confirmation_queue_takes_nothing_back() {
        let mut q = Confirmations::new();
        for i in 0..Confirmations::CAPACITY as u32 {
            assert!(q.push(ReceiverIndex(i)));
        }
        assert!(!q.push(ReceiverIndex(9999)));
        assert!(!q.is_empty());
        q.unpop(ReceiverIndex(9999));
        assert_eq!(q.len(), Confirmations::CAPACITY);
        assert_eq!(q.pop(), Some(ReceiverIndex(0)));
    }

    #[test]
    fn claim_takes_a_specific_free_index_once() {
        let mut other = IndexAllocator::new();
        let a = other.allocate().unwrap();
        let b = other.allocate().unwrap();
        let mut mine = IndexAllocator::new();
        assert!(mine.claim(b));
        assert!(!mine.claim(b));
        // The slots below the claimed one stay available, the claimed one
        // is not handed out again until released.
        let next = mine.allocate().unwrap();
        assert_eq!(next.0 & SLOT_MASK, a.0 & SLOT_MASK);
        assert!(mine.allocate().unwrap().0 & SLOT_MASK > b.0 & SLOT_MASK);
        mine.release(b);
        assert!(mine.claim(b));
    }
}
