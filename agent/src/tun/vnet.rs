//! The `virtio_net_hdr` that precedes every packet on a TUN device opened
//! with `IFF_VNET_HDR` (linux/virtio_net.h, the 10-byte legacy layout).
//!
//! The kernel writes its fields in the machine's byte order unless the fd
//! was switched with `TUNSETVNETLE`/`TUNSETVNETBE`; this module never
//! switches it, so fields are native-endian.

/// `flags`: the checksum from `csum_start` to the end of the packet is
/// still to be computed and stored at `csum_start + csum_offset`; the field
/// already holds the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: an IPv4 TCP super-packet.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: a UDP fragmentation-offload super-packet (never enabled here).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: an IPv6 TCP super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP segmentation-offload super-packet (never enabled here).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the super-packet carries ECN (CWR set on the first
/// segment only).
pub const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// One of the `GSO_*` values, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to replicate; the kernel's value is only a
    /// hint (it is the linear part of the skb), so the splitter recomputes it.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS) for a super-packet.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header) when `F_NEEDS_CSUM`.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Bytes on the wire: the size the kernel uses unless `TUNSETVNETHDRSZ`
    /// says otherwise.
    pub const LEN: usize = 10;

    /// Reads a header from the first [`Self::LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = bytes.get(..Self::LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header as the kernel expects it.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// The GSO type without the ECN bit.
    #[inline]
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_emit_round_trip() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.emit();
        assert_eq!(VirtioNetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        // Native-endian, as the kernel writes it.
        assert_eq!(&b[4..6], &1448u16.to_ne_bytes());
    }

    #[test]
    fn short_input_is_none() {
        assert_eq!(VirtioNetHdr::parse(&[0u8; 9]), None);
        assert_eq!(VirtioNetHdr::parse(&[]), None);
        assert_eq!(
            VirtioNetHdr::parse(&[0u8; 12]),
            Some(VirtioNetHdr::default())
        );
    }
}
