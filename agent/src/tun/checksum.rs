//! The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers that
//! TCP and UDP fold into theirs.
//!
//! Sums are carried as an unfolded `u64` ones'-complement accumulator so a
//! caller can add the pseudo-header, the header and the payload piecewise
//! and fold once at the end.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data`, read as big-endian 16-bit words (an odd trailing byte is
/// padded with zero on the right), to the running sum `acc`.
///
/// The accumulator never overflows for inputs below 2^32 bytes: each step
/// adds at most 2^32 - 1.
#[inline]
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    // Summing 32-bit big-endian words and folding later gives the same
    // ones'-complement result as summing 16-bit words (RFC 1071 §2(C)).
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum to 16 bits (without complementing it).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for a running sum: the complement of its fold.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The checksum over `data` alone, as stored in an IPv4 header.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(add(0, data))
}

/// The running sum of the IPv4 pseudo-header for an upper-layer protocol
/// `proto` whose header and payload are `len` bytes long.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    let acc = add(0, &src.octets());
    let acc = add(acc, &dst.octets());
    acc + u64::from(proto) + u64::from(len)
}

/// The running sum of the IPv6 pseudo-header (RFC 8200 §8.1).
#[inline]
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u64 {
    let acc = add(0, &src.octets());
    let acc = add(acc, &dst.octets());
    acc + u64::from(proto) + u64::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook 16-bit loop, kept independent of `add`.
    fn naive(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_of_a_real_header() {
        // A captured IPv4 header (192.168.0.1 -> 192.168.0.199, UDP) whose
        // checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header that carries its checksum sums to zero.
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_lengths_pad_on_the_right() {
        assert_eq!(checksum(&[0xab]), !0xab00);
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), naive(&[0x12, 0x34, 0x56]));
        assert_eq!(checksum(&[]), 0xffff);
    }

    proptest! {
        #[test]
        fn matches_the_naive_loop(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), naive(&data));
        }

        #[test]
        fn piecewise_at_even_splits_equals_whole(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..300,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let acc = add(add(0, &data[..cut]), &data[cut..]);
            prop_assert_eq!(finish(acc), naive(&data));
        }
    }
}
