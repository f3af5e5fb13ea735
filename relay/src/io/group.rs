//! Grouping forwarded datagrams into GSO sends.
//!
//! Datagrams of one GRO run lie back to back in one receive buffer, and the
//! relay mostly sends a run on to one next hop unchanged in length. Such a
//! stretch (same destination, same buffer, contiguous, equal length, the last
//! possibly shorter) is exactly what one `UDP_SEGMENT` send carries, so it
//! becomes one [`Group`]. Pure bookkeeping, no I/O: both backends share it.

use std::net::SocketAddr;

use super::limits::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};

/// One send: `count` datagrams of `segment` bytes (the last may be shorter)
/// back to back at `addr`, `len` bytes in all, for `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    /// Destination of every datagram in the group.
    pub(crate) dst: SocketAddr,
    /// The buffer the bytes live in (the backend's index), so it can be
    /// released once the send completes.
    pub(crate) buf: u32,
    /// Address of the first byte (inside that buffer).
    pub(crate) addr: usize,
    /// Total bytes.
    pub(crate) len: usize,
    /// Size of every datagram but possibly the last.
    pub(crate) segment: usize,
    /// Number of datagrams.
    pub(crate) count: usize,
}

impl Group {
    /// A placeholder (no bytes, unspecified destination).
    pub(crate) const EMPTY: Group = Group {
        dst: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
        buf: 0,
        addr: 0,
        len: 0,
        segment: 0,
        count: 0,
    };

    /// Whether the kernel must split it (`UDP_SEGMENT` cmsg needed).
    #[cfg(test)]
    pub(crate) fn is_gso(&self) -> bool {
        self.count > 1
    }

    /// Whether a datagram of `len` bytes at `addr` in `buf` for `dst`
    /// extends this group within the kernel's GSO limits.
    fn extends(
        &self,
        dst: SocketAddr,
        buf: u32,
        addr: usize,
        len: usize,
        max_segments: usize,
    ) -> bool {
        self.dst == dst
            && self.buf == buf
            && self.addr + self.len == addr
            // Only the last datagram may be short: once one is, the group is closed.
            && self.len == self.segment * self.count
            && len <= self.segment
            && len > 0
            && self.count < max_segments
            && self.len + len <= MAX_UDP_PAYLOAD
    }
}

/// Builds groups in order as forwarded datagrams come in.
#[derive(Debug)]
pub(crate) struct Grouper {
    groups: Vec<Group>,
    max_segments: usize,
}

impl Grouper {
    /// A grouper with room for `capacity` groups before it grows, making
    /// groups of up to `max_segments` datagrams (1 disables GSO).
    pub(crate) fn new(capacity: usize, gso: bool) -> Self {
        Self {
            groups: Vec::with_capacity(capacity),
            max_segments: if gso { MAX_GSO_SEGMENTS } else { 1 },
        }
    }

    /// Stops making multi-datagram groups (the kernel refused GSO).
    pub(crate) fn disable_gso(&mut self) {
        self.max_segments = 1;
    }

    /// Whether groups may carry more than one datagram.
    pub(crate) fn gso_enabled(&self) -> bool {
        self.max_segments > 1
    }

    /// Adds one forwarded datagram.
    pub(crate) fn push(&mut self, dst: SocketAddr, buf: u32, addr: usize, len: usize) {
        if let Some(last) = self.groups.last_mut() {
            if last.extends(dst, buf, addr, len, self.max_segments) {
                last.len += len;
                last.count += 1;
                return;
            }
        }
        self.groups.push(Group {
            dst,
            buf,
            addr,
            len,
            segment: len,
            count: 1,
        });
    }

    /// The groups built so far, in order.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Forgets all groups (keeps the memory).
    pub(crate) fn clear(&mut self) {
        self.groups.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn contiguous_equal_run_is_one_group_with_short_tail() {
        let mut g = Grouper::new(8, true);
        for i in 0..5 {
            g.push(a(1), 0, 1000 + i * 100, 100);
        }
        g.push(a(1), 0, 1500, 40);
        // After a short one the group is closed even for an exact fit.
        g.push(a(1), 0, 1540, 40);
        assert_eq!(g.groups().len(), 2);
        assert_eq!(
            g.groups()[0],
            Group {
                dst: a(1),
                buf: 0,
                addr: 1000,
                len: 540,
                segment: 100,
                count: 6
            }
        );
        assert!(g.groups()[0].is_gso());
        assert!(!g.groups()[1].is_gso());
    }

    #[test]
    fn splits_on_destination_buffer_gap_and_growth() {
        let mut g = Grouper::new(8, true);
        g.push(a(1), 0, 0, 100);
        g.push(a(2), 0, 100, 100); // other destination
        g.push(a(2), 1, 200, 100); // other buffer
        g.push(a(2), 1, 400, 100); // gap (a consumed datagram between)
        g.push(a(2), 1, 500, 200); // longer than the segment
        assert_eq!(g.groups().len(), 5);
        assert!(g.groups().iter().all(|x| x.count == 1));
    }

    #[test]
    fn respects_segment_and_size_limits() {
        let mut g = Grouper::new(8, true);
        for i in 0..(MAX_GSO_SEGMENTS + 3) {
            g.push(a(1), 0, i * 10, 10);
        }
        assert_eq!(g.groups().len(), 2);
        assert_eq!(g.groups()[0].count, MAX_GSO_SEGMENTS);
        assert_eq!(g.groups()[1].count, 3);

        g.clear();
        let seg = 9000;
        for i in 0..10 {
            g.push(a(1), 0, i * seg, seg);
        }
        assert!(g.groups().iter().all(|x| x.len <= MAX_UDP_PAYLOAD));
        assert_eq!(g.groups().iter().map(|x| x.count).sum::<usize>(), 10);
        assert_eq!(g.groups()[0].count, MAX_UDP_PAYLOAD / seg);
    }

    #[test]
    fn gso_disabled_means_one_per_group() {
        let mut g = Grouper::new(8, false);
        assert!(!g.gso_enabled());
        g.push(a(1), 0, 0, 10);
        g.push(a(1), 0, 10, 10);
        assert_eq!(g.groups().len(), 2);
        let mut h = Grouper::new(8, true);
        h.disable_gso();
        h.push(a(1), 0, 0, 10);
        h.push(a(1), 0, 10, 10);
        assert_eq!(h.groups().len(), 2);
    }
}
