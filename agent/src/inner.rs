//! Peeking at the inner IP packets the tunnel carries: just enough to know
//! which transport port a packet is for and whether it opens a TCP
//! connection. Never panics on any input.

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

/// What a packet is, for the connector's socket set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner {
    /// A TCP segment to `port`; `syn` when it opens a connection (SYN
    /// without ACK).
    Tcp {
        /// Destination port.
        port: u16,
        /// Opening SYN.
        syn: bool,
    },
    /// A UDP datagram to `port`.
    Udp {
        /// Destination port.
        port: u16,
    },
    /// Anything else (ICMP, fragments, garbage).
    Other,
}

/// Classifies an IPv4 or IPv6 packet.
pub fn classify(packet: &[u8]) -> Inner {
    let (proto, payload) = match packet.first().map(|b| b >> 4) {
        Some(4) => match Ipv4Packet::new_checked(packet) {
            Ok(p) if !p.more_frags() && p.frag_offset() == 0 => {
                let start = p.header_len() as usize;
                let end = (p.total_len() as usize).min(packet.len());
                if start > end {
                    return Inner::Other;
                }
                (p.next_header(), &packet[start..end])
            }
            _ => return Inner::Other,
        },
        Some(6) => match Ipv6Packet::new_checked(packet) {
            Ok(p) => {
                let start = 40;
                let end = (40 + p.payload_len() as usize).min(packet.len());
                if start > end {
                    return Inner::Other;
                }
                (p.next_header(), &packet[start..end])
            }
            Err(_) => return Inner::Other,
        },
        _ => return Inner::Other,
    };
    match proto {
        IpProtocol::Tcp => match TcpPacket::new_checked(payload) {
            Ok(t) => Inner::Tcp {
                port: t.dst_port(),
                syn: t.syn() && !t.ack(),
            },
            Err(_) => Inner::Other,
        },
        IpProtocol::Udp => match UdpPacket::new_checked(payload) {
            Ok(u) => Inner::Udp { port: u.dst_port() },
            Err(_) => Inner::Other,
        },
        _ => Inner::Other,
    }
}

/// The source and destination of an IPv4 packet.
pub fn ipv4_addresses(packet: &[u8]) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    if packet.first().map(|b| b >> 4) != Some(4) {
        return None;
    }
    let p = Ipv4Packet::new_checked(packet).ok()?;
    Some((p.src_addr(), p.dst_addr()))
}

/// Whether `packet` is IPv4 from `src` to `dst`: what a tun-mode client
/// requires of a packet opened from a service's session before it goes
/// into the device (from that service's address, to the client's own).
pub fn comes_from(packet: &[u8], src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> bool {
    ipv4_addresses(packet) == Some((src, dst))
}

/// The destination IPv4 address of a packet, if it is IPv4.
pub fn ipv4_destination(packet: &[u8]) -> Option<std::net::Ipv4Addr> {
    if packet.first().map(|b| b >> 4) != Some(4) {
        return None;
    }
    let p = Ipv4Packet::new_checked(packet).ok()?;
    Some(p.dst_addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // IPv4 + TCP SYN from 100.80.0.1:40000 to 100.80.1.5:5432.
    fn syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 100, 80, 0, 1, 100, 80, 1, 5,
        ];
        p.extend_from_slice(&[
            0x9c, 0x40, 0x15, 0x38, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        p
    }

    #[test]
    fn classifies_a_syn_and_its_port() {
        assert_eq!(
            classify(&syn()),
            Inner::Tcp {
                port: 5432,
                syn: true
            }
        );
        let mut ack = syn();
        ack[33] = 0x10;
        assert_eq!(
            classify(&ack),
            Inner::Tcp {
                port: 5432,
                syn: false
            }
        );
        assert_eq!(
            ipv4_destination(&syn()),
            Some(std::net::Ipv4Addr::new(100, 80, 1, 5))
        );
    }

    #[test]
    fn only_the_service_address_to_ours_fits() {
        use std::net::Ipv4Addr;
        let service = Ipv4Addr::new(100, 80, 1, 5);
        let me = Ipv4Addr::new(100, 80, 0, 1);
        // syn() goes from 100.80.0.1 to 100.80.1.5: turned around, it is a
        // reply from the service to us.
        let mut reply = syn();
        reply[12..16].copy_from_slice(&service.octets());
        reply[16..20].copy_from_slice(&me.octets());
        assert!(comes_from(&reply, service, me));
        // From another address (spoofed by the connector), or to another.
        assert!(!comes_from(&reply, Ipv4Addr::new(100, 80, 1, 6), me));
        assert!(!comes_from(&reply, service, Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!comes_from(&syn(), service, me));
        assert!(!comes_from(&[0x60; 40], service, me), "IPv6 never fits");
        assert!(!comes_from(&[], service, me));
    }

    #[test]
    fn udp_and_garbage() {
        let mut p = vec![
            0x45, 0, 0, 30, 0, 1, 0x40, 0, 64, 17, 0, 0, 100, 80, 0, 1, 100, 80, 1, 5,
        ];
        p.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 10, 0, 0, b'h', b'i']);
        assert_eq!(classify(&p), Inner::Udp { port: 53 });
        assert_eq!(classify(&[]), Inner::Other);
        assert_eq!(classify(&[0x45, 0, 0]), Inner::Other);
        // A fragment is not classified by port.
        let mut frag = p.clone();
        frag[6] = 0x20;
        assert_eq!(classify(&frag), Inner::Other);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
            let mut b = bytes;
            if let Some(first) = b.first_mut() {
                *first = if v6 { 0x60 | (*first & 0xf) } else { 0x40 | (*first & 0xf) };
            }
            let _ = classify(&b);
            let _ = ipv4_destination(&b);
        }
    }
}
