//! The MAC constructions considered for the hop tag, behind one trait.
//!
//! They stay public, rather than only the winner, so that the `hoptag`
//! criterion bench compares all of them on the machine at hand and the choice
//! in [`super::HopKey`] can be revisited with numbers. Each takes the 32-byte
//! hop key from the Noise split and derives what it needs at construction.

use crate::aead::backend::{self, Aes256GcmBackend};
use crate::wire::{HOP_TAG_LEN, TAGGED_LEN};
use core::fmt;

/// Domain-separation context for deriving a 128-bit SipHash key from the
/// 32-byte hop key (BLAKE3 `derive_key` contexts must be unique per use).
const SIPHASH_KEY_CONTEXT: &str = "ztna-mesh 2026-11 hop tag SipHash-2-4 key";

/// A MAC that tags the fixed header of a frame.
pub trait HopMac: Clone + Send + Sync + fmt::Debug {
    /// Short name, used in bench ids and `Debug` output.
    const NAME: &'static str;

    /// Builds the MAC, running any key schedule now rather than per frame.
    fn new(key: &[u8; 32]) -> Self;

    /// The truncated tag of the first [`TAGGED_LEN`] header bytes.
    fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN];

    /// Whether `tag` is the tag of `header`, compared in constant time.
    #[inline]
    fn verify(&self, header: &[u8; TAGGED_LEN], tag: &[u8; HOP_TAG_LEN]) -> bool {
        ct_eq(&self.tag(header), tag)
    }
}

/// Compares two tags without a data-dependent branch: the XOR of the two
/// words is tested once, so the time does not depend on where they differ.
#[inline]
pub fn ct_eq(a: &[u8; HOP_TAG_LEN], b: &[u8; HOP_TAG_LEN]) -> bool {
    let diff = u64::from_ne_bytes(*a) ^ u64::from_ne_bytes(*b);
    core::hint::black_box(diff) == 0
}

/// The 12-byte GCM nonce of a header: 4 zero bytes, then the hop counter
/// (bytes `8..16`, big-endian on the wire, copied as is).
#[inline]
fn gmac_nonce(header: &[u8; TAGGED_LEN]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&header[8..16]);
    nonce
}

/// Truncates a 16-byte GCM tag to the 8 bytes carried on the wire.
#[inline]
fn truncate(full: &[u8]) -> [u8; HOP_TAG_LEN] {
    let mut tag = [0u8; HOP_TAG_LEN];
    tag.copy_from_slice(&full[..HOP_TAG_LEN]);
    tag
}

/// AES-256-GMAC via RustCrypto `aes-gcm`: GCM with the header as associated
/// data and an empty plaintext, the hop counter as nonce, tag truncated to
/// 64 bits. Uses the end-to-end AEAD backend of the same crate.
///
/// Sound only while the sender never reuses a counter under one key: a
/// repeated GCM nonce reveals the GHASH key.
pub type GmacAesGcm = Gmac<backend::RustCrypto>;

/// AES-256-GMAC via `ring`: same construction and nonce rule as
/// [`GmacAesGcm`], with ring's assembly AES-GCM.
#[cfg(feature = "ring")]
pub type GmacRing = Gmac<backend::Ring>;

/// AES-256-GMAC over the header with any AES-256-GCM backend.
#[derive(Clone)]
pub struct Gmac<B> {
    gcm: B,
}

impl<B: Aes256GcmBackend> HopMac for Gmac<B> {
    const NAME: &'static str = B::GMAC_NAME;

    fn new(key: &[u8; 32]) -> Self {
        Self { gcm: B::new(key) }
    }

    #[inline]
    fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN] {
        let full = self.gcm.seal_raw(&gmac_nonce(header), header, &mut []);
        truncate(&full)
    }
}

impl<B: Aes256GcmBackend> fmt::Debug for Gmac<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

/// SipHash-2-4 with a 128-bit key derived from the hop key by BLAKE3
/// `derive_key`; its 64-bit output, little-endian, is the tag.
///
/// A PRF: the tag stays sound even if a counter were ever repeated (the replay
/// window would then drop the frame, nothing leaks about the key).
#[derive(Clone)]
pub struct SipHash24 {
    hasher: siphasher::sip::SipHasher24,
}

impl HopMac for SipHash24 {
    const NAME: &'static str = "siphash24";

    fn new(key: &[u8; 32]) -> Self {
        Self::with_sip_key(&derive_sip_key(key))
    }

    #[inline]
    fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN] {
        self.hasher.hash(header).to_le_bytes()
    }
}

impl SipHash24 {
    /// Keys SipHash-2-4 directly with a 128-bit key, bypassing the
    /// derivation; for the reference vectors of the SipHash paper.
    pub fn with_sip_key(key: &[u8; 16]) -> Self {
        Self {
            hasher: siphasher::sip::SipHasher24::new_with_key(key),
        }
    }

    /// SipHash-2-4 of any input under this key, for known-answer tests of
    /// the primitive.
    pub fn hash(&self, input: &[u8]) -> u64 {
        self.hasher.hash(input)
    }
}

impl fmt::Debug for SipHash24 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

/// SipHash-2-4 specialised to the 24-byte header: the same function as
/// [`SipHash24`] (same derived key, same tag), computed over three fixed
/// message words with the key-dependent initial state precomputed.
///
/// The general `siphasher` code buffers its input and handles a tail; with a
/// fixed length both go away, which is what makes it the fastest candidate.
/// Equality with [`SipHash24`] on random keys and headers is a test below.
#[derive(Clone)]
pub struct SipHash24Fixed {
    /// `v0..v3` after keying, before any message word.
    init: [u64; 4],
}

impl SipHash24Fixed {
    /// Keys SipHash-2-4 directly with a 128-bit key, as
    /// [`SipHash24::with_sip_key`].
    pub fn with_sip_key(key: &[u8; 16]) -> Self {
        let mut k = [0u8; 8];
        k.copy_from_slice(&key[..8]);
        let k0 = u64::from_le_bytes(k);
        k.copy_from_slice(&key[8..]);
        let k1 = u64::from_le_bytes(k);
        // The initialisation constants of the SipHash paper, section 2.
        Self {
            init: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    /// SipHash-2-4 of a 24-byte input.
    #[inline]
    pub fn hash24(&self, input: &[u8; TAGGED_LEN]) -> u64 {
        let [mut v0, mut v1, mut v2, mut v3] = self.init;
        #[inline(always)]
        fn round(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13) ^ *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16) ^ *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21) ^ *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17) ^ *v2;
            *v2 = v2.rotate_left(32);
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&input[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        // Three message words, then the final word carrying the length
        // (24) in its top byte and no tail bytes.
        for m in [word(0), word(1), word(2), (TAGGED_LEN as u64) << 56] {
            v3 ^= m;
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            v0 ^= m;
        }
        v2 ^= 0xff;
        for _ in 0..4 {
            round(&mut v0, &mut v1, &mut v2, &mut v3);
        }
        v0 ^ v1 ^ v2 ^ v3
    }
}

impl HopMac for SipHash24Fixed {
    const NAME: &'static str = "siphash24-fixed";

    fn new(key: &[u8; 32]) -> Self {
        Self::with_sip_key(&derive_sip_key(key))
    }

    #[inline]
    fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN] {
        self.hash24(header).to_le_bytes()
    }
}

impl fmt::Debug for SipHash24Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

/// The 128-bit SipHash key of a 32-byte hop key.
fn derive_sip_key(key: &[u8; 32]) -> [u8; 16] {
    let derived = blake3::derive_key(SIPHASH_KEY_CONTEXT, key);
    let mut sip_key = [0u8; 16];
    sip_key.copy_from_slice(&derived[..16]);
    sip_key
}

/// Keyed BLAKE3 with the 32-byte hop key, output truncated to 64 bits.
#[derive(Clone)]
pub struct Blake3Keyed {
    key: [u8; 32],
}

impl HopMac for Blake3Keyed {
    const NAME: &'static str = "blake3";

    fn new(key: &[u8; 32]) -> Self {
        Self { key: *key }
    }

    #[inline]
    fn tag(&self, header: &[u8; TAGGED_LEN]) -> [u8; HOP_TAG_LEN] {
        truncate(blake3::keyed_hash(&self.key, header).as_bytes())
    }
}

impl fmt::Debug for Blake3Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash paper (Aumasson & Bernstein, 2012), appendix A: key 00..0f,
    /// message 00..0e (15 bytes), output 0xa129ca6149be45e5.
    #[test]
    fn siphash24_paper_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: [u8; 15] = core::array::from_fn(|i| i as u8);
        let mac = SipHash24::with_sip_key(&key);
        assert_eq!(mac.hash(&msg), 0xa129_ca61_49be_45e5);
    }

    /// The first entries of the reference `vectors.h` of the SipHash
    /// implementation (key 00..0f, message 00..(n-1)), as little-endian bytes.
    #[test]
    fn siphash24_reference_vectors() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let mac = SipHash24::with_sip_key(&key);
        let expected = [
            (0usize, "310e0edd47db6f72"),
            (1, "fd67dc93c539f874"),
            (2, "5a4fa9d909806c0d"),
            (8, "6224939a79f5f593"),
        ];
        let msg: [u8; 8] = core::array::from_fn(|i| i as u8);
        for (len, hex_le) in expected {
            let out = mac.hash(&msg[..len]).to_le_bytes();
            assert_eq!(hex::encode(out), hex_le, "length {len}");
        }
    }

    /// Row 24 of the reference `vectors.h` (key 00..0f, message 00..17):
    /// the specialised code on the one length it accepts.
    #[test]
    fn siphash24_fixed_reference_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: [u8; TAGGED_LEN] = core::array::from_fn(|i| i as u8);
        let out = SipHash24Fixed::with_sip_key(&key)
            .hash24(&msg)
            .to_le_bytes();
        assert_eq!(hex::encode(out), "94af49f6c650adb8");
        assert_eq!(SipHash24::with_sip_key(&key).hash(&msg).to_le_bytes(), out);
    }

    proptest::proptest! {
        #[test]
        fn siphash24_fixed_equals_general(key: [u8; 32], header: [u8; TAGGED_LEN]) {
            proptest::prop_assert_eq!(
                SipHash24Fixed::new(&key).tag(&header),
                SipHash24::new(&key).tag(&header)
            );
        }
    }

    /// GMAC is GCM with an empty plaintext: both GMAC candidates must give
    /// the truncated tag of a direct GCM computation (GCM itself is checked
    /// against published vectors in the `aead` tests).
    #[test]
    fn gmac_candidates_agree() {
        let key = [7u8; 32];
        let header: [u8; TAGGED_LEN] = core::array::from_fn(|i| (i * 3) as u8);
        let a = GmacAesGcm::new(&key).tag(&header);
        #[cfg(feature = "ring")]
        assert_eq!(a, GmacRing::new(&key).tag(&header));
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new((&key).into());
        let full = cipher
            .encrypt_inout_detached(&gmac_nonce(&header).into(), &header, (&mut [][..]).into())
            .unwrap();
        assert_eq!(a[..], full[..HOP_TAG_LEN]);
    }

    fn exercise<M: HopMac>() {
        let key = [9u8; 32];
        let mac = M::new(&key);
        let header: [u8; TAGGED_LEN] = core::array::from_fn(|i| i as u8);
        let tag = mac.tag(&header);
        assert!(mac.verify(&header, &tag), "{}", M::NAME);
        assert!(mac.clone().verify(&header, &tag), "{} clone", M::NAME);
        for bit in 0..TAGGED_LEN * 8 {
            let mut bad = header;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!mac.verify(&bad, &tag), "{} header bit {bit}", M::NAME);
        }
        for bit in 0..HOP_TAG_LEN * 8 {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!mac.verify(&header, &bad), "{} tag bit {bit}", M::NAME);
        }
        let mut other = key;
        other[0] ^= 0x80;
        assert_ne!(M::new(&other).tag(&header), tag, "{} key", M::NAME);
        assert!(!format!("{mac:?}").contains("9, 9"), "{} Debug", M::NAME);
    }

    #[test]
    fn every_candidate_tags_and_verifies() {
        exercise::<GmacAesGcm>();
        #[cfg(feature = "ring")]
        exercise::<GmacRing>();
        exercise::<SipHash24>();
        exercise::<SipHash24Fixed>();
        exercise::<Blake3Keyed>();
    }

    #[test]
    fn ct_eq_compares_all_bytes() {
        let a = [1, 2, 3, 4, 5, 6, 7, 8];
        assert!(ct_eq(&a, &a));
        for i in 0..HOP_TAG_LEN {
            let mut b = a;
            b[i] ^= 0x40;
            assert!(!ct_eq(&a, &b));
        }
    }
}
