//! Hand-built packets for the tests, with checksums computed independently
//! of `checksum`.

use std::net::Ipv6Addr;

const PROTO_TCP: u8 = 6;

/// Independent RFC 1071 sum: 16-bit words, folded every step.
pub fn ones_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for data in chunks {
        assert!(data.len() % 2 == 0 || std::ptr::eq(*data, *chunks.last().unwrap()));
        for pair in data.chunks(2) {
            sum += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    sum as u16
}

/// Whether the IP header and the TCP or UDP checksum of `p` verify.
pub fn checksums_valid(p: &[u8]) -> bool {
    let (proto, l4, src_dst): (u8, usize, &[u8]) = if p[0] >> 4 == 4 {
        let ihl = usize::from(p[0] & 0xf) * 4;
        if ones_sum(&[&p[..ihl]]) != 0xffff {
            return false;
        }
        (p[9], ihl, &p[12..20])
    } else {
        (p[6], 40, &p[8..40])
    };
    let l4_len = p.len() - l4;
    let pseudo_tail = [0, 0, (l4_len >> 8) as u8, l4_len as u8, 0, 0, 0, proto];
    ones_sum(&[src_dst, &pseudo_tail, &p[l4..]]) == 0xffff
}

/// A TCP packet with correct checksums, computed with `ones_sum`.
pub fn tcp_packet(v6: bool, seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let tcp_len = 20 + options.len() + payload.len();
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        p.extend_from_slice(&[PROTO_TCP, 64]);
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    } else {
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, PROTO_TCP, 0, 0]);
        p.extend_from_slice(&[100, 80, 0, 1, 100, 80, 0, 7]);
        let sum = !ones_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let l4 = p.len();
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&443u16.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes()); // ack
    p.push((((20 + options.len()) / 4) << 4) as u8);
    p.push(flags);
    p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    let src_dst = if v6 {
        p[8..40].to_vec()
    } else {
        p[12..20].to_vec()
    };
    let tail = [
        0,
        0,
        (tcp_len >> 8) as u8,
        tcp_len as u8,
        0,
        0,
        0,
        PROTO_TCP,
    ];
    let sum = !ones_sum(&[&src_dst, &tail, &p[l4..]]);
    p[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    assert!(checksums_valid(&p));
    p
}

/// Sets an IPv4 packet's id and recomputes its header checksum.
pub fn set_ipv4_id(p: &mut [u8], id: u16) {
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[10..12].fill(0);
    let ihl = usize::from(p[0] & 0xf) * 4;
    let sum = !ones_sum(&[&p[..ihl]]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Recomputes the IPv4 header and TCP checksums of `p` after an edit.
pub fn reseal_tcp(p: &mut [u8]) {
    let l4 = if p[0] >> 4 == 4 {
        let ihl = usize::from(p[0] & 0xf) * 4;
        p[10..12].fill(0);
        let sum = !ones_sum(&[&p[..ihl]]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        ihl
    } else {
        40
    };
    let src_dst = if l4 == 40 {
        p[8..40].to_vec()
    } else {
        p[12..20].to_vec()
    };
    let tcp_len = p.len() - l4;
    let tail = [
        0,
        0,
        (tcp_len >> 8) as u8,
        tcp_len as u8,
        0,
        0,
        0,
        PROTO_TCP,
    ];
    p[l4 + 16..l4 + 18].fill(0);
    let sum = !ones_sum(&[&src_dst, &tail, &p[l4..]]);
    p[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}
