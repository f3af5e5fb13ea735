//! Turning what a TUN device with `IFF_VNET_HDR` hands over into plain IP
//! packets, without I/O: finishing partial checksums and splitting TCP
//! super-packets (TSO) into MTU-sized segments.
//!
//! With `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` the kernel may give one
//! read of up to 64 KiB: the IP and TCP headers once, then the payload of
//! many segments, with `gso_size` bytes of payload per segment. Every
//! segment gets a copy of the headers with its own IP length (and IPv4 id
//! and header checksum), TCP sequence number, flags and checksum: FIN and
//! PSH only on the last, CWR only on the first (RFC 3168 §6.1.2). The
//! kernel's `hdr_len` is not trusted (it reports the skb's linear part);
//! header lengths come from the packet itself.
//!
//! Nothing here panics on any input: a packet that cannot be handled
//! becomes a [`DropReason`].

use super::checksum;
use super::vnet::{self, VirtioNetHdr};
use std::net::{Ipv4Addr, Ipv6Addr};

const PROTO_TCP: u8 = 6;
const IPV4_MIN_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_MIN_HDR: usize = 20;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet read from the device was dropped (cheap to make; the hot
/// path counts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than the headers it claims.
    #[error("packet shorter than its headers")]
    Truncated,
    /// A packet that is not a super-packet yet is longer than the MTU.
    #[error("packet longer than the MTU")]
    Oversize,
    /// `csum_start`/`csum_offset` point outside the packet.
    #[error("checksum offsets outside the packet")]
    BadChecksumOffsets,
    /// A GSO type this device never enables (UDP) or does not know.
    #[error("unsupported GSO type")]
    UnsupportedGso,
    /// The GSO type names another IP version than the packet's.
    #[error("GSO type does not match the IP version")]
    GsoMismatch,
    /// A TSO super-packet whose IP payload is not directly TCP (IPv6
    /// extension headers) or an IPv4 fragment.
    #[error("super-packet is not plain TCP over IP")]
    NotPlainTcp,
    /// `gso_size` is zero.
    #[error("GSO segment size is zero")]
    ZeroGsoSize,
    /// The MTU cannot hold the headers and one payload byte.
    #[error("MTU too small for the packet's headers")]
    MtuTooSmall,
}

/// What to do with a packet read behind a [`VirtioNetHdr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The packet is complete as it is (a partial checksum has been
    /// finished in place) and fits the MTU.
    Whole,
    /// A TCP super-packet: cut it with the [`Segmenter`].
    Split(Segmenter),
}

/// Decides what `packet` (the bytes after `hdr`) becomes for a device of
/// `mtu`; finishes a partial checksum in place for packets kept whole.
pub fn prepare(hdr: &VirtioNetHdr, packet: &mut [u8], mtu: usize) -> Result<Plan, DropReason> {
    match hdr.gso_kind() {
        vnet::GSO_NONE => {
            if packet.len() > mtu {
                return Err(DropReason::Oversize);
            }
            if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
                finish_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
            }
            Ok(Plan::Whole)
        }
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => Segmenter::new(hdr, packet, mtu).map(Plan::Split),
        _ => Err(DropReason::UnsupportedGso),
    }
}

/// Computes the checksum over `packet[csum_start..]` (whose checksum field
/// already holds the pseudo-header sum, as `VIRTIO_NET_HDR_F_NEEDS_CSUM`
/// promises) and stores it at `csum_start + csum_offset`.
pub fn finish_checksum(
    packet: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), DropReason> {
    let start = usize::from(csum_start);
    let field = start + usize::from(csum_offset);
    if field + 2 > packet.len() {
        return Err(DropReason::BadChecksumOffsets);
    }
    let sum = checksum::finish(checksum::add(0, &packet[start..]));
    // As the kernel's skb_checksum_help: a computed 0 is sent as 0xffff
    // (the same value in ones' complement; UDP reserves 0 for "none").
    let sum = if sum == 0 { 0xffff } else { sum };
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Cuts one TCP super-packet into segments, one per
/// [`next_into`](Self::next_into) call; holds no borrow, so the
/// super-packet can stay in the caller's buffer between calls (when the
/// output batch fills up halfway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmenter {
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload (IP and TCP headers with options).
    hdrs: usize,
    /// The super-packet's length (the IP length; trailing bytes ignored).
    total: usize,
    /// Payload bytes per segment.
    mss: usize,
    /// Payload offset of the next segment.
    next: usize,
    /// Segments written so far.
    index: usize,
    ipv4_id: u16,
    seq: u32,
}

impl Segmenter {
    /// Checks `packet` against `hdr` and plans segments of at most `mtu`
    /// bytes: `gso_size` payload bytes each, fewer if the MTU demands it.
    pub fn new(hdr: &VirtioNetHdr, packet: &[u8], mtu: usize) -> Result<Self, DropReason> {
        let version = packet.first().ok_or(DropReason::Truncated)? >> 4;
        let (v6, l4, total, ipv4_id) = match (hdr.gso_kind(), version) {
            (vnet::GSO_TCPV4, 4) => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                if ihl < IPV4_MIN_HDR || packet.len() < ihl {
                    return Err(DropReason::Truncated);
                }
                let total = usize::from(be16(packet, 2));
                let frag = be16(packet, 6);
                if packet[9] != PROTO_TCP || frag & 0x3fff != 0 {
                    return Err(DropReason::NotPlainTcp);
                }
                (false, ihl, total, be16(packet, 4))
            }
            (vnet::GSO_TCPV6, 6) => {
                if packet.len() < IPV6_HDR {
                    return Err(DropReason::Truncated);
                }
                if packet[6] != PROTO_TCP {
                    return Err(DropReason::NotPlainTcp);
                }
                let payload = usize::from(be16(packet, 4));
                // 0 would be a jumbogram; take the read's length then.
                let total = if payload == 0 {
                    packet.len()
                } else {
                    IPV6_HDR + payload
                };
                (true, IPV6_HDR, total, 0)
            }
            (vnet::GSO_TCPV4 | vnet::GSO_TCPV6, _) => return Err(DropReason::GsoMismatch),
            _ => return Err(DropReason::UnsupportedGso),
        };
        if total > packet.len() || total < l4 + TCP_MIN_HDR {
            return Err(DropReason::Truncated);
        }
        let data_offset = usize::from(packet[l4 + 12] >> 4) * 4;
        let hdrs = l4 + data_offset;
        if data_offset < TCP_MIN_HDR || hdrs > total {
            return Err(DropReason::Truncated);
        }
        if hdr.gso_size == 0 {
            return Err(DropReason::ZeroGsoSize);
        }
        // An IP length field holds at most 65535, so no segment may be longer.
        let room = mtu.min(usize::from(u16::MAX)).saturating_sub(hdrs);
        let mss = usize::from(hdr.gso_size).min(room);
        if mss == 0 {
            return Err(DropReason::MtuTooSmall);
        }
        Ok(Self {
            v6,
            l4,
            hdrs,
            total,
            mss,
            next: 0,
            index: 0,
            ipv4_id,
            seq: be32(packet, l4 + 4),
        })
    }

    /// Whether every segment has been written.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.index > 0 && self.hdrs + self.next >= self.total
    }

    /// How many segments the super-packet yields in all.
    pub fn segment_count(&self) -> usize {
        (self.total - self.hdrs).div_ceil(self.mss).max(1)
    }

    /// The longest segment this produces (never more than the MTU given
    /// to [`new`](Self::new)).
    #[inline]
    pub fn max_segment_len(&self) -> usize {
        self.hdrs + self.mss
    }

    /// Writes the next segment of `packet` (the same bytes given to
    /// [`new`](Self::new)) to the front of `out` and returns its length.
    /// `None` when done, or when `out` is shorter than
    /// [`max_segment_len`](Self::max_segment_len) or `packet` shorter than
    /// it was (nothing advances then).
    pub fn next_into(&mut self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.is_done() || out.len() < self.max_segment_len() {
            return None;
        }
        let packet = packet.get(..self.total)?;
        let payload = &packet[self.hdrs..];
        let start = self.next;
        let end = (start + self.mss).min(payload.len());
        let len = self.hdrs + (end - start);
        let seg = &mut out[..len];
        seg[..self.hdrs].copy_from_slice(&packet[..self.hdrs]);
        seg[self.hdrs..].copy_from_slice(&payload[start..end]);

        let first = self.index == 0;
        let last = end == payload.len();
        let l4 = self.l4;
        // `len` <= the MTU, itself clamped to u16::MAX in `new`.
        let l4_len = (len - l4) as u16;
        let pseudo = if self.v6 {
            put16(seg, 4, l4_len);
            let src = Ipv6Addr::from(array16(seg, 8));
            let dst = Ipv6Addr::from(array16(seg, 24));
            checksum::pseudo_v6(src, dst, PROTO_TCP, u32::from(l4_len))
        } else {
            put16(seg, 2, len as u16);
            // The id goes up by one per segment, as the kernel's own GSO does.
            put16(seg, 4, self.ipv4_id.wrapping_add(self.index as u16));
            put16(seg, 10, 0);
            let ip_sum = checksum::checksum(&seg[..l4]);
            put16(seg, 10, ip_sum);
            let src = Ipv4Addr::from(array4(seg, 12));
            let dst = Ipv4Addr::from(array4(seg, 16));
            checksum::pseudo_v4(src, dst, PROTO_TCP, l4_len)
        };
        // Sequence numbers wrap modulo 2^32.
        let seq = self.seq.wrapping_add(start as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = seg[l4 + 13];
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if !first {
            flags &= !TCP_CWR;
        }
        seg[l4 + 13] = flags;
        put16(seg, l4 + 16, 0);
        let tcp_sum = checksum::finish(checksum::add(pseudo, &seg[l4..]));
        put16(seg, l4 + 16, tcp_sum);

        self.next = end;
        self.index += 1;
        Some(len)
    }
}

// Callers check lengths first; these index within checked bounds.
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

#[inline]
fn array4(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

#[inline]
fn array16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tun::batch::PacketBatch;
    use crate::tun::test_packets::{checksums_valid, ones_sum, tcp_packet};
    use proptest::prelude::*;

    const ACK: u8 = 0x10;

    fn gso_hdr(v6: bool, gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
            hdr_len: 0, // ignored
            gso_size,
            csum_start: if v6 { 40 } else { 20 },
            csum_offset: 16,
        }
    }

    fn split(hdr: &VirtioNetHdr, packet: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, DropReason> {
        let mut seg = Segmenter::new(hdr, packet, mtu)?;
        let mut out = vec![0u8; mtu];
        let mut segs = Vec::new();
        for _ in 0..seg.segment_count() {
            let n = seg.next_into(packet, &mut out).expect("a segment");
            segs.push(out[..n].to_vec());
        }
        assert!(seg.is_done());
        assert_eq!(seg.next_into(packet, &mut out), None);
        Ok(segs)
    }

    fn tcp_off(p: &[u8]) -> usize {
        if p[0] >> 4 == 4 {
            usize::from(p[0] & 0xf) * 4
        } else {
            40
        }
    }

    fn seq_of(p: &[u8]) -> u32 {
        be32(p, tcp_off(p) + 4)
    }

    fn flags_of(p: &[u8]) -> u8 {
        p[tcp_off(p) + 13]
    }

    fn payload_of(p: &[u8]) -> &[u8] {
        let l4 = tcp_off(p);
        &p[l4 + usize::from(p[l4 + 12] >> 4) * 4..]
    }

    #[test]
    fn splits_an_ipv4_super_packet() {
        let payload: Vec<u8> = (0..3500u32).map(|i| i as u8).collect();
        let p = tcp_packet(false, 1000, ACK | TCP_PSH | TCP_FIN, &[], &payload);
        let segs = split(&gso_hdr(false, 1448), &p, 1500).unwrap();
        let lens: Vec<usize> = segs.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![1488, 1488, 40 + 604]);
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_valid(s), "segment {i} checksum");
            assert_eq!(be16(s, 2) as usize, s.len(), "IPv4 total length");
            assert_eq!(be16(s, 4), 0x1234 + i as u16, "IPv4 id");
            assert_eq!(seq_of(s), 1000 + 1448 * i as u32);
            assert_eq!(
                payload_of(s),
                &payload[1448 * i..(1448 * (i + 1)).min(3500)]
            );
        }
        assert_eq!(flags_of(&segs[0]), ACK);
        assert_eq!(flags_of(&segs[1]), ACK);
        assert_eq!(flags_of(&segs[2]), ACK | TCP_PSH | TCP_FIN);
    }

    #[test]
    fn splits_an_ipv6_super_packet_with_options() {
        // Timestamps option: NOP NOP TS(10).
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let payload = vec![0xa5; 4000];
        let p = tcp_packet(true, u32::MAX - 100, ACK | TCP_PSH, &opts, &payload);
        let segs = split(&gso_hdr(true, 1208), &p, 1280).unwrap();
        assert_eq!(segs.len(), 4);
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= 1280);
            assert!(checksums_valid(s), "segment {i} checksum");
            assert_eq!(be16(s, 4) as usize, s.len() - 40, "IPv6 payload length");
            assert_eq!(&s[60..72], &opts, "options copied");
            // Sequence numbers wrap.
            assert_eq!(seq_of(s), (u32::MAX - 100).wrapping_add(1208 * i as u32));
        }
        assert_eq!(flags_of(&segs[3]), ACK | TCP_PSH);
        assert_eq!(flags_of(&segs[0]), ACK);
    }

    #[test]
    fn resegments_when_gso_size_exceeds_the_mtu() {
        let p = tcp_packet(false, 0, ACK, &[], &[1; 9000]);
        let segs = split(&gso_hdr(false, 8960), &p, 1500).unwrap();
        assert!(segs.iter().all(|s| s.len() <= 1500 && checksums_valid(s)));
        assert_eq!(segs.len(), 9000usize.div_ceil(1460));
    }

    #[test]
    fn cwr_only_on_the_first_segment() {
        let p = tcp_packet(false, 0, ACK | TCP_CWR, &[], &[0; 3000]);
        let mut hdr = gso_hdr(false, 1000);
        hdr.gso_type |= vnet::GSO_ECN;
        let segs = split(&hdr, &p, 1500).unwrap();
        assert_eq!(flags_of(&segs[0]), ACK | TCP_CWR);
        assert_eq!(flags_of(&segs[1]), ACK);
        assert_eq!(flags_of(&segs[2]), ACK);
    }

    #[test]
    fn ignores_bytes_after_the_ip_length() {
        let mut p = tcp_packet(false, 5, ACK, &[], &[9; 100]);
        p.extend_from_slice(&[0xee; 7]);
        let segs = split(&gso_hdr(false, 60), &p, 1500).unwrap();
        assert_eq!(segs.len(), 2);
        assert!(segs.iter().all(|s| checksums_valid(s)));
        assert_eq!(payload_of(&segs[1]), &[9; 40]);
    }

    #[test]
    fn finishes_a_partial_udp_checksum() {
        // IPv4/UDP 100.80.0.1:5353 -> 100.80.0.2:9, "hello", checksum field
        // holding the pseudo-header sum as the kernel leaves it.
        let mut p = vec![
            0x45, 0, 0, 33, 0, 1, 0x40, 0, 64, 17, 0, 0, 100, 80, 0, 1, 100, 80, 0, 2, 0x14, 0xe9,
            0, 9, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let ip = !ones_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let pseudo = ones_sum(&[&p[12..20], &[0, 17, 0, 13]]);
        p[26..28].copy_from_slice(&pseudo.to_be_bytes());
        assert!(!checksums_valid(&p));
        let hdr = VirtioNetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(prepare(&hdr, &mut p, 1500), Ok(Plan::Whole));
        assert!(checksums_valid(&p));
    }

    #[test]
    fn whole_packets_pass_untouched() {
        let p = tcp_packet(false, 1, ACK, &[], b"x");
        let mut q = p.clone();
        assert_eq!(
            prepare(&VirtioNetHdr::default(), &mut q, 1500),
            Ok(Plan::Whole)
        );
        assert_eq!(p, q);
        assert_eq!(
            prepare(&VirtioNetHdr::default(), &mut q, 20),
            Err(DropReason::Oversize)
        );
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let v4 = tcp_packet(false, 0, ACK, &[], &[0; 100]);
        let v6 = tcp_packet(true, 0, ACK, &[], &[0; 100]);
        let mut h = gso_hdr(true, 50);
        assert_eq!(Segmenter::new(&h, &v4, 1500), Err(DropReason::GsoMismatch));
        h.gso_type = vnet::GSO_UDP_L4;
        assert_eq!(
            prepare(&h, &mut v6.clone(), 1500),
            Err(DropReason::UnsupportedGso)
        );
        assert_eq!(
            Segmenter::new(&gso_hdr(false, 0), &v4, 1500),
            Err(DropReason::ZeroGsoSize)
        );
        assert_eq!(
            Segmenter::new(&gso_hdr(false, 50), &v4, 40),
            Err(DropReason::MtuTooSmall)
        );
        assert_eq!(
            Segmenter::new(&gso_hdr(false, 50), &v4[..v4.len() - 1], 1500),
            Err(DropReason::Truncated)
        );
        let mut ext = v6.clone();
        ext[6] = 0; // hop-by-hop options header
        assert_eq!(
            Segmenter::new(&gso_hdr(true, 50), &ext, 1500),
            Err(DropReason::NotPlainTcp)
        );
        let mut frag = v4.clone();
        frag[6] = 0x20; // more fragments
        assert_eq!(
            Segmenter::new(&gso_hdr(false, 50), &frag, 1500),
            Err(DropReason::NotPlainTcp)
        );
        let bad = VirtioNetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 100,
            csum_offset: 60,
            ..Default::default()
        };
        assert_eq!(
            prepare(&bad, &mut v4.clone(), 1500),
            Err(DropReason::BadChecksumOffsets)
        );
    }

    #[test]
    fn resumes_into_a_later_buffer() {
        let p = tcp_packet(false, 0, ACK, &[], &[3; 250]);
        let mut seg = Segmenter::new(&gso_hdr(false, 100), &p, 1500).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(
            seg.next_into(&p, &mut small),
            None,
            "too small: no progress"
        );
        let mut out = [0u8; 1500];
        assert_eq!(seg.next_into(&p, &mut out), Some(140));
        assert_eq!(seg.next_into(&p[..50], &mut out), None, "shrunk packet");
        assert_eq!(seg.next_into(&p, &mut out), Some(140));
        assert_eq!(seg.next_into(&p, &mut out), Some(90));
        assert!(seg.is_done());
    }

    /// Runs the read path's sans-IO part over one read, as the device does.
    fn drain(hdr_bytes: &[u8], packet: &mut [u8], mtu: usize) -> usize {
        let Some(hdr) = VirtioNetHdr::parse(hdr_bytes) else {
            return 0;
        };
        let mut batch = PacketBatch::new(64, mtu.max(1));
        match prepare(&hdr, packet, mtu) {
            Ok(Plan::Whole) => {
                assert!(packet.len() <= mtu);
                1
            }
            Ok(Plan::Split(mut seg)) => {
                let count = seg.segment_count();
                let mut made = 0;
                for _ in 0..count {
                    if batch.is_full() {
                        batch.clear();
                    }
                    let out = batch.spare().expect("room after clear");
                    let n = seg.next_into(packet, out).expect("a segment per count");
                    assert!(n <= mtu);
                    batch.commit(n);
                    made += 1;
                }
                assert!(seg.is_done());
                made
            }
            Err(_) => 0,
        }
    }

    fn any_super_packet() -> impl Strategy<Value = (bool, Vec<u8>, u32, u8)> {
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..20_000),
            any::<u32>(),
            any::<u8>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn segments_reassemble_to_the_payload(
            (v6, payload, seq, flags) in any_super_packet(),
            gso_size in 1u16..9000,
            mtu in 100usize..9100,
            with_ts in any::<bool>(),
        ) {
            let opts: &[u8] = if with_ts { &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2] } else { &[] };
            let p = tcp_packet(v6, seq, flags, opts, &payload);
            let segs = split(&gso_hdr(v6, gso_size), &p, mtu).unwrap();
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                prop_assert!(s.len() <= mtu);
                prop_assert!(checksums_valid(s), "segment {} checksum", i);
                prop_assert_eq!(seq_of(s), seq.wrapping_add(joined.len() as u32));
                let last = i + 1 == segs.len();
                let f = flags_of(s);
                prop_assert_eq!(f & (TCP_FIN | TCP_PSH), if last { flags & (TCP_FIN | TCP_PSH) } else { 0 });
                prop_assert_eq!(f & TCP_CWR, if i == 0 { flags & TCP_CWR } else { 0 });
                joined.extend_from_slice(payload_of(s));
            }
            prop_assert_eq!(joined, payload);
        }

        #[test]
        fn never_panics_on_arbitrary_reads(
            hdr in proptest::collection::vec(any::<u8>(), 0..12),
            mut packet in proptest::collection::vec(any::<u8>(), 0..3000),
            mtu in 0usize..70_000,
        ) {
            drain(&hdr, &mut packet, mtu);
        }

        #[test]
        fn never_panics_on_mangled_super_packets(
            (v6, payload, seq, flags) in any_super_packet(),
            gso_type in prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x81, 0x84]),
            gso_size in any::<u16>(),
            csum in any::<(u16, u16)>(),
            mtu in 0usize..70_000,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut p = tcp_packet(v6, seq, flags, &[], &payload);
            for (i, b) in edits {
                let at = i.index(p.len());
                p[at] = b;
            }
            let keep = cut.index(p.len() + 1);
            p.truncate(keep.max(p.len() / 2));
            let hdr = VirtioNetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type,
                hdr_len: 0,
                gso_size,
                csum_start: csum.0,
                csum_offset: csum.1,
            };
            drain(&hdr.emit(), &mut p, mtu);
        }
    }
}
