//! The per-hop MAC over the fixed frame header.
//!
//! Every data-plane frame carries an 8-byte tag at bytes `24..32` that
//! authenticates the first [`TAGGED_LEN`] bytes of its header (version|kind,
//! ttl, length, hop receiver index, hop counter, user id, service id) under the
//! key of one hop session. A relay verifies the tag of each received frame,
//! rewrites the header for the next hop and tags it again, so both operations
//! sit on the per-packet path twice per frame and must cost a few nanoseconds.
//!
//! # Choice of MAC
//!
//! Several constructions are kept in [`candidates`] behind the
//! [`candidates::HopMac`] trait so that `cargo bench -p bench --bench hoptag`
//! can compare them on the machine at hand. [`HopKey`] is the one chosen:
//! **SipHash-2-4** with a 128-bit key derived from the 32-byte hop key by
//! BLAKE3 `derive_key`, computed by [`candidates::SipHash24Fixed`] (SipHash
//! specialised to the 24-byte input, checked equal to the `siphasher` crate).
//! On the project's machine (2-core AMD EPYC VM, AES-NI/VAES) it tags a
//! header in ≈17 ns, against ≈18 ns for the general `siphasher` code,
//! 63–81 ns for AES-GMAC (via `aes-gcm` or `ring`: their per-call set-up
//! dominates a 24-byte input) and 84–90 ns for keyed BLAKE3; figures in
//! `docs/perf.md` ("Hop tag"). SipHash is also the most forgiving: it is
//! a PRF, so its security does not depend on the counter never repeating,
//! whereas a repeated nonce under GMAC reveals the hash key and lets anyone
//! forge tags.
//!
//! The hop counter inside the tagged bytes makes every tagged header unique,
//! and the replay window ([`crate::replay`]) rejects a header seen before, so a
//! deterministic MAC is enough: no separate nonce is needed.

pub mod candidates;

use crate::wire::{HOP_TAG_LEN, TAGGED_LEN};
use candidates::HopMac;
use core::fmt;

/// The MAC used for hop tags; see the module documentation for why.
type Chosen = candidates::SipHash24Fixed;

/// Key of one direction of a hop session: tags and verifies frame headers.
///
/// Built once per session from the 32 bytes of the Noise split; everything the
/// MAC needs (the 128-bit SipHash key) is derived at construction, so
/// [`tag`](Self::tag) and [`verify`](Self::verify) do no key schedule and no
/// allocation.
#[derive(Clone)]
pub struct HopKey {
    mac: Chosen,
}

impl HopKey {
    /// Most tags one key may produce, and most failed verifications a receiver
    /// should tolerate, before the session must be rekeyed: 2^31.
    ///
    /// With a 64-bit tag, an attacker who submits `v` forged frames succeeds
    /// with probability about `v / 2^64` for a PRF such as SipHash (and
    /// `v·(ℓ+1) / 2^64` for GMAC with ℓ = 2 blocks of input). NIST SP 800-38D,
    /// appendix C, table 2 allows 2^32 invocations for 64-bit tags over inputs
    /// of at most 2^15 bytes; our input is 24 bytes. Staying a factor of two
    /// under that keeps the forgery probability per key below about 2^-31
    /// (each success buys a single frame, still end-to-end authenticated) and
    /// keeps the hop counter far from wrapping. The limit is reached after
    /// about 3 minutes at 12 M frames/s on one key, so under normal load the
    /// 2-minute time-based rekey fires first; this constant is the backstop.
    /// Quinn's `PacketKey::integrity_limit` plays the same role.
    pub const USAGE_LIMIT: u64 = 1 << 31;

    /// Derives the hop MAC key from the 32-byte key of a Noise split.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            mac: Chosen::new(key),
        }
    }

    /// Computes the tag of the first [`TAGGED_LEN`] bytes of a header.
    #[inline]
    pub fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN] {
        self.mac.tag(header)
    }

    /// Whether `tag` is the tag of `header` under this key.
    ///
    /// The comparison takes the same time whichever bytes differ, so a
    /// forger learns nothing from timing.
    #[inline]
    pub fn verify(&self, header: &[u8; TAGGED_LEN], tag: &[u8; HOP_TAG_LEN]) -> bool {
        self.mac.verify(header, tag)
    }
}

impl fmt::Debug for HopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes: Debug output ends up in logs.
        f.debug_struct("HopKey")
            .field("mac", &Chosen::NAME)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn header(counter: u64) -> [u8; TAGGED_LEN] {
        let mut h = [0u8; TAGGED_LEN];
        h[0] = 0x11; // version 1, kind data
        h[1] = 64; // ttl
        h[2..4].copy_from_slice(&1400u16.to_be_bytes());
        h[4..8].copy_from_slice(&7u32.to_be_bytes());
        h[8..16].copy_from_slice(&counter.to_be_bytes());
        h[16..20].copy_from_slice(&1001u32.to_be_bytes());
        h[20..24].copy_from_slice(&2002u32.to_be_bytes());
        h
    }

    #[test]
    fn round_trip() {
        let key = HopKey::new(&KEY);
        for counter in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            let h = header(counter);
            assert!(key.verify(&h, &key.tag(&h)));
        }
    }

    #[test]
    fn any_bit_flip_in_header_fails() {
        let key = HopKey::new(&KEY);
        let h = header(99);
        let tag = key.tag(&h);
        for bit in 0..TAGGED_LEN * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!key.verify(&bad, &tag), "flip of header bit {bit} passed");
        }
    }

    #[test]
    fn any_bit_flip_in_tag_fails() {
        let key = HopKey::new(&KEY);
        let h = header(99);
        let tag = key.tag(&h);
        for bit in 0..HOP_TAG_LEN * 8 {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!key.verify(&h, &bad), "flip of tag bit {bit} passed");
        }
    }

    #[test]
    fn different_keys_differ() {
        let h = header(5);
        let mut other = KEY;
        other[31] ^= 1;
        let a = HopKey::new(&KEY);
        let b = HopKey::new(&other);
        assert_ne!(a.tag(&h), b.tag(&h));
        assert!(!b.verify(&h, &a.tag(&h)));
    }

    #[test]
    fn counter_changes_the_tag() {
        let key = HopKey::new(&KEY);
        assert_ne!(key.tag(&header(1)), key.tag(&header(2)));
    }

    #[test]
    fn debug_hides_the_key() {
        let key = HopKey::new(&[0xab; 32]);
        let s = format!("{key:?}");
        assert!(s.contains("HopKey"));
        assert!(!s.to_lowercase().contains("ab, "), "{s}");
        assert!(!s.contains("171"), "{s}");
    }

    #[test]
    fn is_send_sync_clone() {
        fn assert_bounds<T: Clone + Send + Sync + fmt::Debug>() {}
        assert_bounds::<HopKey>();
    }
}
