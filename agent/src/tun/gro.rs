//! Coalescing consecutive TCP segments of one flow into one super-packet
//! (GRO) before they are written into a TUN device with `IFF_VNET_HDR`,
//! without I/O: the kernel then takes many segments in one system call and
//! one trip through its stack.
//!
//! Only segments that the kernel could have cut from one super-packet are
//! merged, and only when they come one after another: same addresses,
//! ports, IP and TCP header fields (TCP options included, so timestamps
//! must match), contiguous sequence numbers, every payload `gso_size`
//! bytes but the last, which may be shorter; flags ACK, with PSH allowed on
//! the last. Each segment's checksums must verify first, so a merge never
//! hides a corrupt segment the kernel would have dropped. The result is
//! written with `VIRTIO_NET_HDR_F_NEEDS_CSUM` and the pseudo-header sum in
//! the TCP checksum field, as the kernel's own GSO packets carry it.
//!
//! Nothing here panics on any input.

use super::checksum;
use super::vnet::{self, VirtioNetHdr};
use std::net::{Ipv4Addr, Ipv6Addr};

const PROTO_TCP: u8 = 6;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
/// The longest super-packet: its IP length must fit 16 bits.
pub const MAX_SUPER_PACKET: usize = u16::MAX as usize;

/// A run of segments being merged into a caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescer {
    seg: Segment,
    /// Bytes of the buffer in use.
    len: usize,
    segments: usize,
    next_seq: u32,
    /// A short or PSH segment ended the run.
    closed: bool,
}

/// What a mergeable segment looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload.
    hdrs: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

impl Segment {
    /// Parses a TCP segment that may take part in a merge: plain IPv4 (no
    /// fragment) or IPv6 (no extension header) with exact lengths, flags
    /// ACK or ACK|PSH, valid checksums.
    fn parse(p: &[u8]) -> Option<Self> {
        let (v6, l4) = match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if ihl < 20
                    || p.len() < ihl
                    || usize::from(be16(p, 2)) != p.len()
                    || p[9] != PROTO_TCP
                    || be16(p, 6) & 0x3fff != 0
                    || checksum::checksum(&p[..ihl]) != 0
                {
                    return None;
                }
                (false, ihl)
            }
            6 => {
                if p.len() < 40 || p[6] != PROTO_TCP || 40 + usize::from(be16(p, 4)) != p.len() {
                    return None;
                }
                (true, 40)
            }
            _ => return None,
        };
        let tcp = p.get(l4..l4 + 20)?;
        let hdrs = l4 + usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        if hdrs < l4 + 20 || hdrs > p.len() || flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        if checksum::finish(checksum::add(pseudo(p, v6, p.len() - l4), &p[l4..])) != 0 {
            return None;
        }
        Some(Self {
            v6,
            l4,
            hdrs,
            seq: be32(p, l4 + 4),
            flags,
            payload: p.len() - hdrs,
        })
    }
}

/// The pseudo-header sum of the IP packet `p` for a TCP segment of
/// `l4_len` bytes (at most 65535: callers bound it).
fn pseudo(p: &[u8], v6: bool, l4_len: usize) -> u64 {
    if v6 {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap_or_default());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap_or_default());
        checksum::pseudo_v6(src, dst, PROTO_TCP, l4_len as u32)
    } else {
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        checksum::pseudo_v4(src, dst, PROTO_TCP, l4_len as u16)
    }
}

impl Coalescer {
    /// Starts a run with a copy of `packet` in `buf` if it is a TCP
    /// segment that more could follow (with payload, no PSH).
    pub fn start(packet: &[u8], buf: &mut [u8]) -> Option<Self> {
        let seg = Segment::parse(packet)?;
        if seg.payload == 0 || seg.flags & TCP_PSH != 0 {
            return None;
        }
        buf.get_mut(..packet.len())?.copy_from_slice(packet);
        Some(Self {
            seg,
            len: packet.len(),
            segments: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            closed: false,
        })
    }

    /// Appends `packet`'s payload to the run in `buf` if it continues it.
    pub fn push(&mut self, packet: &[u8], buf: &mut [u8]) -> bool {
        if self.closed {
            return false;
        }
        let Some(seg) = Segment::parse(packet) else {
            return false;
        };
        let first = &self.seg;
        if seg.v6 != first.v6
            || seg.l4 != first.l4
            || seg.hdrs != first.hdrs
            || seg.seq != self.next_seq
            || seg.payload == 0
            || seg.payload > first.payload
            || self.len + seg.payload > MAX_SUPER_PACKET.min(buf.len())
            || !same_flow(&buf[..first.hdrs], packet, first.v6, first.l4)
        {
            return false;
        }
        buf[self.len..self.len + seg.payload].copy_from_slice(&packet[seg.hdrs..]);
        self.len += seg.payload;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(seg.payload as u32);
        if seg.flags & TCP_PSH != 0 {
            buf[first.l4 + 13] |= TCP_PSH;
            self.closed = true;
        }
        if seg.payload < first.payload {
            self.closed = true;
        }
        true
    }

    /// Segments in the run.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Completes the run in `buf`: returns the header to write before
    /// `buf[..len]` and `len`. A run of one is the packet as it came,
    /// behind a zero header.
    pub fn finish(&self, buf: &mut [u8]) -> (VirtioNetHdr, usize) {
        let s = &self.seg;
        if self.segments == 1 {
            return (VirtioNetHdr::default(), self.len);
        }
        let p = &mut buf[..self.len];
        if s.v6 {
            put16(p, 4, (self.len - 40) as u16);
        } else {
            put16(p, 2, self.len as u16);
            put16(p, 10, 0);
            let sum = checksum::checksum(&p[..s.l4]);
            put16(p, 10, sum);
        }
        // NEEDS_CSUM: the field holds the (uncomplemented) pseudo-header sum.
        let partial = checksum::fold(pseudo(p, s.v6, self.len - s.l4));
        put16(p, s.l4 + 16, partial);
        let hdr = VirtioNetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if s.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            },
            hdr_len: s.hdrs as u16,
            gso_size: s.payload as u16,
            csum_start: s.l4 as u16,
            csum_offset: 16,
        };
        (hdr, self.len)
    }
}

/// Whether `p`'s headers match the run's `head` in every field that must
/// be equal across the segments of one super-packet: all but the IP
/// length, IPv4 id and checksums, TCP sequence number, PSH and checksum.
fn same_flow(head: &[u8], p: &[u8], v6: bool, l4: usize) -> bool {
    let Some(h) = p.get(..head.len()) else {
        return false;
    };
    let ip_same = if v6 {
        h[..4] == head[..4] && h[6..40] == head[6..40]
    } else {
        h[..2] == head[..2] && h[6..10] == head[6..10] && h[12..l4] == head[12..l4]
    };
    let (t, th) = (&h[l4..], &head[l4..]);
    ip_same
        && t[..4] == th[..4]
        && t[8..13] == th[8..13]
        && t[13] & !TCP_PSH == th[13] & !TCP_PSH
        && t[14..16] == th[14..16]
        && t[18..] == th[18..]
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tun::offload::{self, Segmenter};
    use crate::tun::test_packets::{checksums_valid, reseal_tcp, set_ipv4_id, tcp_packet};
    use proptest::prelude::*;

    const ACK: u8 = TCP_ACK;
    const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    fn gso(v6: bool, size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
            gso_size: size,
            ..Default::default()
        }
    }

    /// The segments the kernel (here: our segmenter) would cut.
    fn cut(v6: bool, seq: u32, flags: u8, payload: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let p = tcp_packet(v6, seq, flags, &TS, payload);
        let mut seg = Segmenter::new(&gso(v6, mss), &p, 65535).unwrap();
        let mut out = vec![0u8; 65535];
        let mut segs = Vec::new();
        while let Some(n) = seg.next_into(&p, &mut out) {
            segs.push(out[..n].to_vec());
        }
        segs
    }

    /// Coalesces `segs` from the front as the device does; returns each
    /// run's header and bytes.
    fn coalesce(segs: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut buf = vec![0u8; MAX_SUPER_PACKET];
        let mut out = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            match Coalescer::start(&segs[i], &mut buf) {
                Some(mut run) => {
                    i += 1;
                    while i < segs.len() && run.push(&segs[i], &mut buf) {
                        i += 1;
                    }
                    let (hdr, len) = run.finish(&mut buf);
                    out.push((hdr, buf[..len].to_vec()));
                }
                None => {
                    out.push((VirtioNetHdr::default(), segs[i].clone()));
                    i += 1;
                }
            }
        }
        out
    }

    /// Cuts a coalesced run again, as the kernel will.
    fn recut(hdr: &VirtioNetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        if hdr.gso_type == vnet::GSO_NONE {
            return vec![p.to_vec()];
        }
        let mut seg = Segmenter::new(hdr, p, 65535).unwrap();
        let mut out = vec![0u8; 65535];
        let mut segs = Vec::new();
        while let Some(n) = seg.next_into(p, &mut out) {
            segs.push(out[..n].to_vec());
        }
        segs
    }

    #[test]
    fn merges_a_flow_and_cuts_back_to_the_same_segments() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
            let segs = cut(v6, 9000, ACK | TCP_PSH, &payload, 1200);
            assert_eq!(segs.len(), 5);
            let runs = coalesce(&segs);
            assert_eq!(runs.len(), 1, "v6 {v6}");
            let (hdr, sp) = &runs[0];
            assert_eq!(hdr.flags, vnet::F_NEEDS_CSUM);
            assert_eq!(hdr.gso_size, 1200);
            assert_eq!(usize::from(hdr.hdr_len), sp.len() - 5000);
            // The partial checksum is what NEEDS_CSUM means: finishing it
            // gives a valid packet.
            let mut done = sp.clone();
            offload::finish_checksum(&mut done, hdr.csum_start, hdr.csum_offset).unwrap();
            assert!(checksums_valid(&done));
            assert_eq!(recut(hdr, sp), segs);
        }
    }

    #[test]
    fn a_lone_segment_goes_as_it_came() {
        let segs = cut(false, 1, ACK, &[5; 100], 1000);
        let runs = coalesce(&segs);
        assert_eq!(runs, vec![(VirtioNetHdr::default(), segs[0].clone())]);
    }

    #[test]
    fn does_not_merge_what_the_kernel_would_not_have_cut() {
        let a = cut(false, 0, ACK, &[1; 2000], 1000);
        let runs = |segs: &[Vec<u8>]| coalesce(segs).len();

        // A gap in sequence numbers.
        let b = cut(false, 2001, ACK, &[1; 1000], 1000);
        assert_eq!(runs(&[a[0].clone(), a[1].clone(), b[0].clone()]), 2);
        // A longer segment after a shorter one.
        let c = cut(false, 1500, ACK, &[1; 1000], 1000);
        let short = cut(false, 1000, ACK, &[1; 500], 1000);
        assert_eq!(runs(&[a[0].clone(), short[0].clone(), c[0].clone()]), 2);
        // Another flow (IPv6 after IPv4).
        let v6 = cut(true, 2000, ACK, &[1; 1000], 1000);
        assert_eq!(runs(&[a[0].clone(), a[1].clone(), v6[0].clone()]), 2);
        // PSH ends a run; FIN, SYN, RST never merge.
        let psh = cut(false, 0, ACK | TCP_PSH, &[1; 1000], 1000);
        assert_eq!(runs(&[psh[0].clone(), a[1].clone()]), 2);
        let fin = cut(false, 2000, ACK | 0x01, &[1; 1000], 1000);
        assert_eq!(runs(&[a[0].clone(), a[1].clone(), fin[0].clone()]), 2);
        // A different timestamp option.
        let mut ts = a[1].clone();
        ts[20 + 20 + 7] ^= 1;
        reseal_tcp(&mut ts);
        assert_eq!(runs(&[a[0].clone(), ts]), 2);
        // A corrupt checksum.
        let mut bad = a[1].clone();
        *bad.last_mut().unwrap() ^= 0xff;
        assert_eq!(runs(&[a[0].clone(), bad]), 2);
        // A different window.
        let mut win = a[1].clone();
        win[20 + 14] = 0;
        reseal_tcp(&mut win);
        assert_eq!(runs(&[a[0].clone(), win]), 2);
    }

    #[test]
    fn stops_at_64k() {
        let segs: Vec<Vec<u8>> = (0..70u32)
            .map(|i| {
                let mut s = tcp_packet(false, i * 1000, ACK, &TS, &[3; 1000]);
                set_ipv4_id(&mut s, 0x1234 + i as u16);
                s
            })
            .collect();
        let runs = coalesce(&segs);
        assert!(runs.len() >= 2);
        assert!(runs.iter().all(|(_, p)| p.len() <= MAX_SUPER_PACKET));
        let back: Vec<Vec<u8>> = runs.iter().flat_map(|(h, p)| recut(h, p)).collect();
        assert_eq!(back, segs);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn coalesce_then_cut_is_the_identity(
            v6 in any::<bool>(),
            len in 1usize..30_000,
            mss in 1u16..3000,
            seq in any::<u32>(),
            psh in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let flags = if psh { ACK | TCP_PSH } else { ACK };
            let segs = cut(v6, seq, flags, &payload, mss);
            let runs = coalesce(&segs);
            for (hdr, p) in &runs {
                prop_assert!(p.len() <= MAX_SUPER_PACKET);
                if hdr.gso_type == vnet::GSO_NONE {
                    prop_assert!(checksums_valid(p));
                }
            }
            let back: Vec<Vec<u8>> = runs.iter().flat_map(|(h, p)| recut(h, p)).collect();
            prop_assert_eq!(back, segs);
        }

        #[test]
        fn never_panics(
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            buf_len in 0usize..400,
        ) {
            let mut buf = vec![0u8; buf_len];
            let mut i = 0;
            while i < packets.len() {
                if let Some(mut run) = Coalescer::start(&packets[i], &mut buf) {
                    while i + 1 < packets.len() && run.push(&packets[i + 1], &mut buf) {
                        i += 1;
                    }
                    let (_, len) = run.finish(&mut buf);
                    prop_assert!(len <= buf.len());
                }
                i += 1;
            }
        }

        #[test]
        fn never_panics_on_mangled_segments(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 0..6),
            v6 in any::<bool>(),
        ) {
            let mut segs = cut(v6, 0, ACK, &[9; 4000], 1000);
            for (s, at, b) in edits {
                let seg = &mut segs[s.index(4)];
                let at = at.index(seg.len());
                seg[at] = b;
            }
            let _ = coalesce(&segs);
        }
    }
}
