//! Gathering forwarded datagrams into GSO sends across a whole batch.
//!
//! A `UDP_SEGMENT` send needs equal-size datagrams (the last may be
//! shorter) for one destination, but not contiguous memory: `sendmsg`
//! takes an iovec per piece. So the forwarded datagrams of a batch are
//! gathered per destination, wherever they lie in the receive buffers, into
//! [`GatherSend`]s of up to [`MAX_GSO_SEGMENTS`] datagrams, each a chain of
//! [`Stretch`]es: runs of datagrams lying back to back in one buffer (a GRO
//! run forwarded whole is one stretch). A dropped datagram between two
//! forwarded ones, or datagrams for other next hops between them, no longer
//! splits a send; nothing is copied.
//!
//! Destinations are the handler's word-sized keys ([`Dest`]), compared as
//! integers per datagram; a key is resolved to its address once, when the
//! first send for it in the batch is opened (a later send for the same key
//! takes the address from the one before), and the address is stored in
//! the send for the backends. Two keys with one address are two
//! destinations here: their datagrams never share a send.
//!
//! Order per destination key is kept: a datagram only ever joins the newest
//! send for its key, and sends are listed in the order they were opened,
//! which is the order the backends submit them in.
//!
//! Everything is allocated up front: the sends and stretches (at most one
//! per datagram of a batch) and a small open-addressing table from key to
//! its open send, cleared by a generation count. A key the table cannot
//! hold (more than it has room for in one batch) only costs grouping (and
//! a resolve): its datagrams then open sends of their own, still in order.
//!
//! [`Grouping::Contiguous`] keeps the grouping from before (only datagrams
//! back to back in one buffer share a send) and [`Grouping::Compact`] adds
//! closing gaps by moving datagrams down (done by `dispatch`), both to
//! measure against.

use std::net::SocketAddr;

use super::config::Grouping;
use super::dispatch::Dest;
use super::limits::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};

/// End of a stretch chain.
const NONE: u32 = u32::MAX;
/// Slots of the destination table (a power of two).
const TABLE: usize = 256;
/// Slots probed from a destination's home slot.
const PROBES: usize = 8;

/// Datagrams back to back in one receive buffer, all of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stretch {
    /// Address of the first byte.
    pub(crate) addr: usize,
    /// Bytes.
    pub(crate) len: usize,
    /// The buffer they lie in (the backend's index), held while a send
    /// points into it.
    pub(crate) buf: u32,
    /// The send's next stretch, or [`NONE`].
    next: u32,
}

/// One `sendmsg`: `count` datagrams of `segment` bytes (the last may be
/// shorter), `len` bytes in all, in `stretches` pieces, for `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GatherSend {
    /// Destination of every datagram in it, as the handler resolved `dest`.
    pub(crate) dst: SocketAddr,
    /// The handler's key for it.
    pub(crate) dest: Dest,
    /// Size of every datagram but possibly the last.
    pub(crate) segment: usize,
    /// Datagrams.
    pub(crate) count: usize,
    /// Total bytes.
    pub(crate) len: usize,
    /// Pieces (iovecs): at most `count`.
    pub(crate) stretches: usize,
    head: u32,
    tail: u32,
}

impl GatherSend {
    /// Whether the kernel must split it (`UDP_SEGMENT` cmsg needed).
    #[cfg(test)]
    pub(crate) fn is_gso(&self) -> bool {
        self.count > 1
    }

    /// Whether a datagram of `len` bytes may join at the end within the
    /// kernel's GSO limits.
    fn accepts(&self, len: usize, max_segments: usize) -> bool {
        // Only the last datagram may be short: once one is, the send is
        // closed.
        self.len == self.segment * self.count
            && len <= self.segment
            && len > 0
            && self.count < max_segments
            && self.len + len <= MAX_UDP_PAYLOAD
    }
}

/// A destination key's newest send in this batch.
#[derive(Debug, Clone, Copy)]
struct Slot {
    dest: Dest,
    send: u32,
    /// Valid when equal to [`Gather::generation`].
    generation: u32,
}

/// Builds the sends of one batch as forwarded datagrams come in.
#[derive(Debug)]
pub(crate) struct Gather {
    sends: Vec<GatherSend>,
    stretches: Vec<Stretch>,
    table: Box<[Slot]>,
    generation: u32,
    /// The last datagram's destination key and its send: most datagrams go
    /// where the one before went.
    last: Option<(Dest, u32)>,
    max_segments: usize,
    grouping: Grouping,
}

impl Gather {
    /// Room for `capacity` datagrams per batch before it grows (it never
    /// should: backends size it for their largest batch), sends of up to
    /// [`MAX_GSO_SEGMENTS`] datagrams (one when not `gso`), grouped as
    /// `grouping` says.
    pub(crate) fn new(capacity: usize, gso: bool, grouping: Grouping) -> Self {
        let empty = Slot {
            dest: Dest(0),
            send: NONE,
            generation: 0,
        };
        Self {
            sends: Vec::with_capacity(capacity),
            stretches: Vec::with_capacity(capacity),
            table: vec![empty; TABLE].into_boxed_slice(),
            generation: 1,
            last: None,
            max_segments: if gso { MAX_GSO_SEGMENTS } else { 1 },
            grouping,
        }
    }

    /// Stops making multi-datagram sends (the kernel refused GSO).
    pub(crate) fn disable_gso(&mut self) {
        self.max_segments = 1;
    }

    /// Whether sends may carry more than one datagram.
    pub(crate) fn gso_enabled(&self) -> bool {
        self.max_segments > 1
    }

    /// How datagrams are grouped.
    pub(crate) fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// Adds one forwarded datagram of `len` bytes at `addr` in buffer
    /// `buf`, for the destination `dest`. When it opens a send and no
    /// earlier send of this batch for `dest` is known, `resolve` gives the
    /// address; `false` (nothing added) if that gives none.
    #[inline]
    pub(crate) fn push<R>(
        &mut self,
        dest: Dest,
        buf: u32,
        addr: usize,
        len: usize,
        resolve: R,
    ) -> bool
    where
        R: FnOnce(Dest) -> Option<SocketAddr>,
    {
        let k = self.stretches.len() as u32;
        // The address of `dest`'s newest send, when that one cannot take
        // this datagram.
        let mut known = None;
        if let Some(i) = self.open_send(dest) {
            let s = &mut self.sends[i];
            if s.accepts(len, self.max_segments) {
                let tail = &mut self.stretches[s.tail as usize];
                if tail.buf == buf && tail.addr + tail.len == addr {
                    tail.len += len;
                    s.len += len;
                    s.count += 1;
                    return true;
                }
                if self.grouping == Grouping::Gather {
                    tail.next = k;
                    s.tail = k;
                    s.stretches += 1;
                    s.len += len;
                    s.count += 1;
                    self.stretches.push(Stretch {
                        addr,
                        len,
                        buf,
                        next: NONE,
                    });
                    return true;
                }
            }
            known = Some(s.dst);
        }
        let Some(dst) = known.or_else(|| resolve(dest)) else {
            return false;
        };
        self.stretches.push(Stretch {
            addr,
            len,
            buf,
            next: NONE,
        });
        let i = self.sends.len() as u32;
        self.sends.push(GatherSend {
            dst,
            dest,
            segment: len,
            count: 1,
            len,
            stretches: 1,
            head: k,
            tail: k,
        });
        self.record(dest, i);
        true
    }

    /// The sends built so far, in the order they were opened.
    pub(crate) fn sends(&self) -> &[GatherSend] {
        &self.sends
    }

    /// The stretches of `send`, in order.
    pub(crate) fn stretches<'a>(&'a self, send: &GatherSend) -> Stretches<'a> {
        Stretches {
            all: &self.stretches,
            next: send.head,
            left: send.stretches,
        }
    }

    /// Forgets all sends (keeps the memory).
    pub(crate) fn clear(&mut self) {
        self.sends.clear();
        self.stretches.clear();
        self.last = None;
        if self.generation == u32::MAX {
            for slot in self.table.iter_mut() {
                slot.generation = 0;
            }
            self.generation = 0;
        }
        self.generation += 1;
    }

    /// The send a datagram for `dest` may join: the newest for `dest` (with
    /// `Contiguous` or `Compact`, only the very last send).
    #[inline]
    fn open_send(&mut self, dest: Dest) -> Option<usize> {
        if let Some((d, i)) = self.last {
            if d == dest {
                return Some(i as usize);
            }
        }
        if self.grouping != Grouping::Gather {
            return None;
        }
        let home = home(dest);
        for p in 0..PROBES {
            let slot = &self.table[(home + p) & (TABLE - 1)];
            if slot.generation != self.generation {
                return None;
            }
            if slot.dest == dest {
                let i = slot.send as usize;
                self.last = Some((dest, slot.send));
                return (i < self.sends.len()).then_some(i);
            }
        }
        None
    }

    /// `send` is now the newest send for `dest`.
    fn record(&mut self, dest: Dest, send: u32) {
        self.last = Some((dest, send));
        if self.grouping != Grouping::Gather {
            return;
        }
        let home = home(dest);
        let mut at = home & (TABLE - 1);
        for p in 0..PROBES {
            let k = (home + p) & (TABLE - 1);
            let slot = &self.table[k];
            if slot.generation != self.generation || slot.dest == dest {
                at = k;
                break;
            }
        }
        // No room within the probes: the home slot's key loses its entry,
        // and its next datagram opens a send of its own.
        self.table[at] = Slot {
            dest,
            send,
            generation: self.generation,
        };
    }
}

/// The home slot of `dest` in the destination table.
#[inline]
fn home(dest: Dest) -> usize {
    // Fibonacci hashing: the top bits of the product (consecutive keys, a
    // relay's hop ids, land far apart).
    (u64::from(dest.0).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

const _: () = assert!(TABLE == 1 << 8, "home() yields 8 bits");

/// The stretches of one send, in order.
#[derive(Debug)]
pub(crate) struct Stretches<'a> {
    all: &'a [Stretch],
    next: u32,
    left: usize,
}

impl<'a> Iterator for Stretches<'a> {
    type Item = &'a Stretch;

    fn next(&mut self) -> Option<&'a Stretch> {
        if self.left == 0 {
            return None;
        }
        let s = self.all.get(self.next as usize)?;
        self.left -= 1;
        self.next = s.next;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Pushes a datagram for the key `port`, which resolves to `a(port)`.
    fn push(g: &mut Gather, port: u16, buf: u32, addr: usize, len: usize) {
        let pushed = g.push(Dest(u32::from(port)), buf, addr, len, |d| {
            u16::try_from(d.0).ok().map(a)
        });
        assert!(pushed, "every key resolves");
    }

    /// A send as (dst port, segment, count, [(buf, addr, len)]).
    type Layout = (u16, usize, usize, Vec<(u32, usize, usize)>);

    /// Every send, in order.
    fn layout(g: &Gather) -> Vec<Layout> {
        g.sends()
            .iter()
            .map(|s| {
                let parts: Vec<_> = g.stretches(s).map(|t| (t.buf, t.addr, t.len)).collect();
                assert_eq!(parts.len(), s.stretches);
                assert_eq!(parts.iter().map(|p| p.2).sum::<usize>(), s.len);
                (s.dst.port(), s.segment, s.count, parts)
            })
            .collect()
    }

    #[test]
    fn drops_and_interleaved_destinations_do_not_split_sends() {
        let mut g = Gather::new(64, true, Grouping::Gather);
        // Buffer 0: A A (dropped) A B A B; buffer 1: B A A.
        push(&mut g, 1, 0, 0, 100);
        push(&mut g, 1, 0, 100, 100);
        push(&mut g, 1, 0, 300, 100);
        push(&mut g, 2, 0, 400, 100);
        push(&mut g, 1, 0, 500, 100);
        push(&mut g, 2, 0, 600, 100);
        push(&mut g, 2, 1, 0, 100);
        push(&mut g, 1, 1, 100, 100);
        push(&mut g, 1, 1, 200, 60);
        assert_eq!(
            layout(&g),
            [
                (
                    1,
                    100,
                    6,
                    vec![(0, 0, 200), (0, 300, 100), (0, 500, 100), (1, 100, 160)]
                ),
                (2, 100, 3, vec![(0, 400, 100), (0, 600, 100), (1, 0, 100)]),
            ]
        );
        assert!(g.sends().iter().all(GatherSend::is_gso));
    }

    #[test]
    fn contiguous_grouping_splits_like_before() {
        let mut g = Gather::new(64, true, Grouping::Contiguous);
        push(&mut g, 1, 0, 0, 100);
        push(&mut g, 1, 0, 100, 100);
        push(&mut g, 1, 0, 300, 100); // gap
        push(&mut g, 2, 0, 400, 100); // other destination
        push(&mut g, 1, 0, 500, 100); // back again
        assert_eq!(
            g.sends().iter().map(|s| s.count).collect::<Vec<_>>(),
            [2, 1, 1, 1]
        );
        assert!(g.sends().iter().all(|s| s.stretches == 1));
    }

    #[test]
    fn a_short_or_longer_datagram_closes_the_send_and_order_holds() {
        let mut g = Gather::new(64, true, Grouping::Gather);
        push(&mut g, 1, 0, 0, 100);
        push(&mut g, 1, 0, 200, 40); // short: closes
        push(&mut g, 2, 0, 300, 100);
        push(&mut g, 1, 0, 400, 100); // new send for 1, after the closed one
        push(&mut g, 1, 0, 500, 200); // longer: new send
        push(&mut g, 1, 0, 700, 200);
        let l = layout(&g);
        let ports: Vec<_> = l.iter().map(|x| (x.0, x.2)).collect();
        assert_eq!(ports, [(1, 2), (2, 1), (1, 1), (1, 2)]);
        // Per destination, the sends' bytes are in arrival order.
        let ones: Vec<usize> = l
            .iter()
            .filter(|x| x.0 == 1)
            .flat_map(|x| x.3.iter().map(|p| p.1))
            .collect();
        assert!(ones.windows(2).all(|w| w[0] < w[1]), "{ones:?}");
    }

    #[test]
    fn segment_and_size_limits_hold() {
        let mut g = Gather::new(256, true, Grouping::Gather);
        for i in 0..(MAX_GSO_SEGMENTS + 3) {
            // Every other datagram dropped: one stretch per datagram.
            push(&mut g, 1, 0, i * 20, 10);
        }
        assert_eq!(
            g.sends().iter().map(|s| s.count).collect::<Vec<_>>(),
            [MAX_GSO_SEGMENTS, 3]
        );
        assert_eq!(g.sends()[0].stretches, MAX_GSO_SEGMENTS);
        g.clear();
        for i in 0..10 {
            push(&mut g, 1, i, 0, 9000);
        }
        assert!(g.sends().iter().all(|s| s.len <= MAX_UDP_PAYLOAD));
        assert_eq!(g.sends()[0].count, MAX_UDP_PAYLOAD / 9000);
    }

    #[test]
    fn gso_off_and_zero_length_make_single_sends() {
        let mut g = Gather::new(8, false, Grouping::Gather);
        assert!(!g.gso_enabled());
        push(&mut g, 1, 0, 0, 10);
        push(&mut g, 1, 0, 10, 10);
        assert_eq!(g.sends().len(), 2);
        let mut h = Gather::new(8, true, Grouping::Gather);
        push(&mut h, 1, 0, 0, 0);
        push(&mut h, 1, 0, 0, 0);
        assert_eq!(h.sends().len(), 2);
        h.disable_gso();
        push(&mut h, 2, 0, 0, 10);
        push(&mut h, 2, 0, 10, 10);
        assert_eq!(h.sends().len(), 4);
    }

    /// Each destination's buffers, in send order.
    fn per_destination(g: &Gather) -> std::collections::HashMap<u16, Vec<u32>> {
        let mut seen: std::collections::HashMap<u16, Vec<u32>> = Default::default();
        for s in g.sends() {
            for t in g.stretches(s) {
                seen.entry(s.dst.port()).or_default().push(t.buf);
            }
        }
        seen
    }

    #[test]
    fn many_destinations_stay_in_order_beyond_the_table() {
        // 100 destinations, three rounds of one datagram each (each round
        // in its own buffer): the table holds them all, one send each.
        let mut g = Gather::new(4096, true, Grouping::Gather);
        for round in 0..3u32 {
            for d in 0..100u16 {
                push(&mut g, d, round, usize::from(d) * 100, 100);
            }
        }
        assert_eq!(g.sends().len(), 100);
        let seen = per_destination(&g);
        assert_eq!(seen.len(), 100);
        assert!(seen.values().all(|v| v == &[0, 1, 2]));
        // 1000: more than the table holds; what it loses opens new sends,
        // and order still holds.
        g.clear();
        for round in 0..3u32 {
            for d in 0..1000u16 {
                push(&mut g, d, round, usize::from(d) * 100, 100);
            }
        }
        let seen = per_destination(&g);
        assert_eq!(seen.len(), 1000);
        assert!(seen.values().all(|v| v == &[0, 1, 2]));
        g.clear();
        assert!(g.sends().is_empty());
        push(&mut g, 5, 9, 0, 100);
        push(&mut g, 6, 9, 100, 100);
        push(&mut g, 5, 9, 200, 100);
        assert_eq!(g.sends().len(), 2, "stale table entries are not reused");
    }

    #[test]
    fn generation_wrap_forgets_old_entries() {
        let mut g = Gather::new(8, true, Grouping::Gather);
        g.generation = u32::MAX;
        push(&mut g, 1, 0, 0, 100);
        push(&mut g, 2, 0, 100, 100);
        g.clear();
        assert_eq!(g.generation, 1);
        assert!(g.table.iter().all(|s| s.generation == 0));
        push(&mut g, 2, 0, 0, 100);
        push(&mut g, 1, 0, 200, 100);
        push(&mut g, 2, 0, 300, 100);
        assert_eq!(
            g.sends().iter().map(|s| s.count).collect::<Vec<_>>(),
            [2, 1]
        );
    }
}
