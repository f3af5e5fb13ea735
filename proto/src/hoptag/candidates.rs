//! The MAC constructions considered for the hop tag, behind one trait.
//!
//! They stay public, rather than only the winner, so that the `hoptag`
//! criterion bench compares all of them on the machine at hand and the choice
//! in [`super::HopKey`] can be revisited with numbers. Each takes the 32-byte
//! hop key from the Noise split and derives what it needs at construction.
//!
//! A hop tag's input is the 24 tagged header bytes followed by part or all
//! of the body ([`super`] says which, per kind). [`HopMac::tag_parts`] takes
//! it in those two pieces, so no caller copies a frame to tag it;
//! [`HopMac::tag`] is the same function over one contiguous message (for
//! the reference vectors and the bench). The GMAC candidates only take
//! messages that fit [`GMAC_MAX_INPUT`] (GCM's associated data is one
//! slice, and they assemble it on the stack); they were measured and not
//! chosen, and stay for comparison on the data-frame input.

use crate::aead::backend::{self, Aes256GcmBackend};
use crate::wire::{E2E_TAG_LEN, HOP_TAG_LEN, TAGGED_LEN};
use core::fmt;

/// Domain-separation context for deriving a 128-bit SipHash key from the
/// 32-byte hop key (BLAKE3 `derive_key` contexts must be unique per use).
const SIPHASH_KEY_CONTEXT: &str = "ztna-mesh 2026-11 hop tag SipHash-2-4 key";

/// The longest message the GMAC candidates tag: room for the data-frame
/// tag input (24 header bytes and the 16-byte end-to-end tag) and the
/// short control bodies of the tests and benches. Longer messages get an
/// all-zero tag, which never verifies a real frame.
pub const GMAC_MAX_INPUT: usize = 64;

/// Length of a data frame's tag input: the tagged header and the
/// end-to-end AEAD tag.
pub(crate) const DATA_INPUT_LEN: usize = TAGGED_LEN + E2E_TAG_LEN;

/// A MAC that tags a frame's tag input.
pub trait HopMac: Clone + Send + Sync + fmt::Debug {
    /// Short name, used in bench ids and `Debug` output.
    const NAME: &'static str;

    /// Builds the MAC, running any key schedule now rather than per frame.
    fn new(key: &[u8; 32]) -> Self;

    /// The truncated tag of `header ‖ rest`, without concatenating them.
    fn tag_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> [u8; HOP_TAG_LEN];

    /// The truncated tag of one contiguous message (at least
    /// [`TAGGED_LEN`] bytes for a real frame's input; any length works):
    /// `tag_parts` of its first 24 bytes and the rest.
    fn tag(&self, msg: &[u8]) -> [u8; HOP_TAG_LEN];

    /// The tag of a data frame's input, `header ‖ e2e_tag`:
    /// [`tag_parts`](Self::tag_parts) with the end-to-end AEAD tag as
    /// `rest`. A MAC with a faster way for this one fixed layout overrides
    /// it.
    #[inline]
    fn tag_data(
        &self,
        header: &[u8; TAGGED_LEN],
        e2e_tag: &[u8; E2E_TAG_LEN],
    ) -> [u8; HOP_TAG_LEN] {
        self.tag_parts(header, e2e_tag)
    }

    /// Whether `tag` is the tag of `header ‖ rest`, compared in constant
    /// time.
    #[inline]
    fn verify_parts(
        &self,
        header: &[u8; TAGGED_LEN],
        rest: &[u8],
        tag: &[u8; HOP_TAG_LEN],
    ) -> bool {
        ct_eq(&self.tag_parts(header, rest), tag)
    }
}

/// Compares two tags without a data-dependent branch: the XOR of the two
/// words is tested once, so the time does not depend on where they differ.
#[inline]
pub fn ct_eq(a: &[u8; HOP_TAG_LEN], b: &[u8; HOP_TAG_LEN]) -> bool {
    let diff = u64::from_ne_bytes(*a) ^ u64::from_ne_bytes(*b);
    core::hint::black_box(diff) == 0
}

/// The 12-byte GCM nonce of a message: 4 zero bytes, then the hop counter
/// (bytes `8..16` of the header, big-endian on the wire, copied as is).
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

/// Splits a contiguous message into the header and the rest; a message
/// shorter than the header is zero-padded to it (then the rest is empty).
#[inline]
fn split_msg(msg: &[u8]) -> ([u8; TAGGED_LEN], &[u8]) {
    let mut header = [0u8; TAGGED_LEN];
    let n = msg.len().min(TAGGED_LEN);
    header[..n].copy_from_slice(&msg[..n]);
    (header, msg.get(TAGGED_LEN..).unwrap_or(&[]))
}

/// AES-256-GMAC via RustCrypto `aes-gcm`: GCM with the message as associated
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

/// AES-256-GMAC over the message with any AES-256-GCM backend, for
/// messages of at most [`GMAC_MAX_INPUT`] bytes.
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
    fn tag_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> [u8; HOP_TAG_LEN] {
        let len = TAGGED_LEN + rest.len();
        if len > GMAC_MAX_INPUT {
            return [0; HOP_TAG_LEN];
        }
        let mut aad = [0u8; GMAC_MAX_INPUT];
        aad[..TAGGED_LEN].copy_from_slice(header);
        aad[TAGGED_LEN..len].copy_from_slice(rest);
        let full = self.gcm.seal_raw(&gmac_nonce(header), &aad[..len], &mut []);
        truncate(&full)
    }

    #[inline]
    fn tag(&self, msg: &[u8]) -> [u8; HOP_TAG_LEN] {
        let (header, rest) = split_msg(msg);
        self.tag_parts(&header, rest)
    }

    #[inline]
    fn verify_parts(
        &self,
        header: &[u8; TAGGED_LEN],
        rest: &[u8],
        tag: &[u8; HOP_TAG_LEN],
    ) -> bool {
        // The all-zero tag of an over-long message must not verify.
        TAGGED_LEN + rest.len() <= GMAC_MAX_INPUT && ct_eq(&self.tag_parts(header, rest), tag)
    }
}

impl<B: Aes256GcmBackend> fmt::Debug for Gmac<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAME)
    }
}

/// SipHash-2-4 with a 128-bit key derived from the hop key by BLAKE3
/// `derive_key`; its 64-bit output, little-endian, is the tag. The general
/// code of the `siphasher` crate, as the reference for [`SipHash24Fixed`].
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
    fn tag_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> [u8; HOP_TAG_LEN] {
        use core::hash::Hasher;
        // `write` streams bytes: two writes hash the concatenation.
        let mut h = self.hasher;
        h.write(header);
        h.write(rest);
        h.finish().to_le_bytes()
    }

    #[inline]
    fn tag(&self, msg: &[u8]) -> [u8; HOP_TAG_LEN] {
        self.hasher.hash(msg).to_le_bytes()
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

/// SipHash-2-4 with the key-dependent initial state precomputed and the
/// 24-byte header taken as three whole message words: the same function as
/// [`SipHash24`] (same derived key, same tag, checked equal on random keys
/// and inputs below), without the general code's input buffering.
///
/// The header is exactly three words, so the rest of the input starts on a
/// word boundary: whole words straight from the caller's slice, then one
/// final word with the tail bytes and the length. A data frame's input, the
/// one the datapath hashes twice per frame, has its own straight-line code
/// ([`hash_data`](Self::hash_data)).
#[derive(Clone)]
pub struct SipHash24Fixed {
    /// `v0..v3` after keying, before any message word.
    init: [u64; 4],
    /// `init` with the first three steps of the first SipRound done: they
    /// update `v0` and `v1` from each other alone, before the first message
    /// word (absorbed into `v3`) reaches them, so they are the same for
    /// every input under this key ([`SipHash24Fixed::hash_data`]).
    init_half: [u64; 4],
}

/// One SipRound.
#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    sip_round_head(v);
    sip_round_tail(v);
}

/// The first three steps of a SipRound: `v0` and `v1` from each other.
#[inline(always)]
fn sip_round_head(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
}

/// The rest of a SipRound, after [`sip_round_head`].
#[inline(always)]
fn sip_round_tail(v: &mut [u64; 4]) {
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// Absorbs one message word: two SipRounds ("2" of SipHash-2-4).
#[inline(always)]
fn sip_compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sip_round(v);
    sip_round(v);
    v[0] ^= m;
}

/// Little-endian word from exactly 8 bytes.
#[inline(always)]
fn le_word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
}

impl SipHash24Fixed {
    /// Keys SipHash-2-4 directly with a 128-bit key, as
    /// [`SipHash24::with_sip_key`].
    pub fn with_sip_key(key: &[u8; 16]) -> Self {
        let k0 = le_word(&key[..8]);
        let k1 = le_word(&key[8..]);
        // The initialisation constants of the SipHash paper, section 2.
        let init = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        let mut init_half = init;
        sip_round_head(&mut init_half);
        Self { init, init_half }
    }

    /// The state after keying and the key-only first steps of round one
    /// ([`hash_data`](Self::hash_data) starts there; so do the lanes of
    /// [`super::lanes`]).
    #[inline(always)]
    // Only the AVX2 lanes read it (`hash_data` reads the field).
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_feature = "avx2")),
        allow(dead_code)
    )]
    pub(crate) fn init_half(&self) -> &[u64; 4] {
        &self.init_half
    }

    /// SipHash-2-4 of `header ‖ rest`.
    #[inline]
    pub fn hash_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> u64 {
        let mut v = self.init;
        for w in header.chunks_exact(8) {
            sip_compress(&mut v, le_word(w));
        }
        self.finish(v, TAGGED_LEN, rest)
    }

    /// SipHash-2-4 of a data frame's tag input, `header ‖ e2e_tag` (40
    /// bytes), read where the two pieces lie in the frame.
    ///
    /// The same function as [`hash_parts`](Self::hash_parts) over those
    /// bytes (checked equal below on random inputs), written for the one
    /// layout the datapath hashes twice per frame: the 40 bytes are five
    /// whole little-endian words, known at compile time, so the six
    /// compressions (the five words, then the length word) are
    /// straight-line code on words loaded from the frame, with no copy of
    /// the input into a buffer, no loop and no tail.
    #[inline]
    pub fn hash_data(&self, header: &[u8; TAGGED_LEN], e2e_tag: &[u8; E2E_TAG_LEN]) -> u64 {
        // The first word: `v3 ^= m0`, then the first SipRound from where
        // `init_half` left it, the second, `v0 ^= m0`.
        let m0 = le_word(&header[..8]);
        let mut v = self.init_half;
        v[3] ^= m0;
        sip_round_tail(&mut v);
        sip_round(&mut v);
        v[0] ^= m0;
        sip_compress(&mut v, le_word(&header[8..16]));
        sip_compress(&mut v, le_word(&header[16..]));
        sip_compress(&mut v, le_word(&e2e_tag[..8]));
        sip_compress(&mut v, le_word(&e2e_tag[8..]));
        // The final word: no tail bytes, the length (40) in the top byte.
        sip_compress(&mut v, (DATA_INPUT_LEN as u64) << 56);
        finalize(v)
    }

    /// SipHash-2-4 of any contiguous input.
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u64 {
        self.finish(self.init, 0, input)
    }

    /// Absorbs `rest` after `done` bytes (a multiple of 8) were absorbed
    /// into `v`, then the final word and the finalisation rounds.
    #[inline(always)]
    fn finish(&self, mut v: [u64; 4], done: usize, rest: &[u8]) -> u64 {
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            sip_compress(&mut v, le_word(w));
        }
        let tail = words.remainder();
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        // The final word: the tail bytes, and the total length mod 256 in
        // its top byte.
        last[7] = (done.wrapping_add(rest.len()) & 0xff) as u8;
        sip_compress(&mut v, u64::from_le_bytes(last));
        finalize(v)
    }
}

/// SipHash's finalisation ("4" of SipHash-2-4) after the last word.
#[inline(always)]
fn finalize(mut v: [u64; 4]) -> u64 {
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

impl HopMac for SipHash24Fixed {
    const NAME: &'static str = "siphash24-fixed";

    fn new(key: &[u8; 32]) -> Self {
        Self::with_sip_key(&derive_sip_key(key))
    }

    #[inline]
    fn tag_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> [u8; HOP_TAG_LEN] {
        self.hash_parts(header, rest).to_le_bytes()
    }

    #[inline]
    fn tag_data(
        &self,
        header: &[u8; TAGGED_LEN],
        e2e_tag: &[u8; E2E_TAG_LEN],
    ) -> [u8; HOP_TAG_LEN] {
        self.hash_data(header, e2e_tag).to_le_bytes()
    }

    #[inline]
    fn tag(&self, msg: &[u8]) -> [u8; HOP_TAG_LEN] {
        self.hash(msg).to_le_bytes()
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
    fn tag_parts(&self, header: &[u8; TAGGED_LEN], rest: &[u8]) -> [u8; HOP_TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(header);
        h.update(rest);
        truncate(h.finalize().as_bytes())
    }

    #[inline]
    fn tag(&self, msg: &[u8]) -> [u8; HOP_TAG_LEN] {
        truncate(blake3::keyed_hash(&self.key, msg).as_bytes())
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
        assert_eq!(
            SipHash24::with_sip_key(&key).hash(&msg),
            0xa129_ca61_49be_45e5
        );
        assert_eq!(
            SipHash24Fixed::with_sip_key(&key).hash(&msg),
            0xa129_ca61_49be_45e5
        );
    }

    /// Entries of the reference `vectors.h` of the SipHash implementation
    /// (key 00..0f, message 00..(n-1)), as little-endian bytes: both
    /// implementations, contiguous and (from 24 bytes on) in two parts.
    #[test]
    fn siphash24_reference_vectors() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let general = SipHash24::with_sip_key(&key);
        let fixed = SipHash24Fixed::with_sip_key(&key);
        let expected = [
            (0usize, "310e0edd47db6f72"),
            (1, "fd67dc93c539f874"),
            (2, "5a4fa9d909806c0d"),
            (8, "6224939a79f5f593"),
            (24, "94af49f6c650adb8"),
            (40, "d0a704536ba93e0e"),
            (52, "b274cb8ebf87870a"),
            (63, "724506eb4c328a95"),
        ];
        let msg: [u8; 64] = core::array::from_fn(|i| i as u8);
        for (len, hex_le) in expected {
            let m = &msg[..len];
            assert_eq!(
                hex::encode(general.hash(m).to_le_bytes()),
                hex_le,
                "length {len}"
            );
            assert_eq!(
                hex::encode(fixed.hash(m).to_le_bytes()),
                hex_le,
                "length {len}"
            );
            if len >= TAGGED_LEN {
                let header: &[u8; TAGGED_LEN] = m[..TAGGED_LEN].try_into().unwrap();
                let rest = &m[TAGGED_LEN..];
                let parts = fixed.hash_parts(header, rest).to_le_bytes();
                assert_eq!(hex::encode(parts), hex_le, "length {len}, in parts");
                assert_eq!(
                    hex::encode(general.tag_parts(header, rest)),
                    hex_le,
                    "length {len}, siphasher in parts"
                );
            }
            if len == DATA_INPUT_LEN {
                let header: &[u8; TAGGED_LEN] = m[..TAGGED_LEN].try_into().unwrap();
                let data = fixed.hash_data(header, m[TAGGED_LEN..].try_into().unwrap());
                assert_eq!(hex::encode(data.to_le_bytes()), hex_le, "data layout");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn siphash24_fixed_equals_general(
            key: [u8; 32],
            header: [u8; TAGGED_LEN],
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut msg = header.to_vec();
            msg.extend_from_slice(&rest);
            let reference = SipHash24::new(&key).tag(&msg);
            proptest::prop_assert_eq!(SipHash24Fixed::new(&key).tag_parts(&header, &rest), reference);
            proptest::prop_assert_eq!(SipHash24Fixed::new(&key).tag(&msg), reference);
            proptest::prop_assert_eq!(SipHash24::new(&key).tag_parts(&header, &rest), reference);
        }

        /// The data-frame layout's straight-line SipHash is the general
        /// one (`siphasher`, and the fixed code's streaming path) over the
        /// same 40 bytes, for any key and input.
        #[test]
        fn siphash24_data_layout_equals_general(
            key: [u8; 32],
            header: [u8; TAGGED_LEN],
            e2e_tag: [u8; E2E_TAG_LEN],
        ) {
            let mut msg = header.to_vec();
            msg.extend_from_slice(&e2e_tag);
            let reference = SipHash24::new(&key).tag(&msg);
            let fixed = SipHash24Fixed::new(&key);
            proptest::prop_assert_eq!(fixed.tag_data(&header, &e2e_tag), reference);
            proptest::prop_assert_eq!(fixed.tag_parts(&header, &msg[TAGGED_LEN..]), reference);
            proptest::prop_assert_eq!(SipHash24::new(&key).tag_data(&header, &e2e_tag), reference);
        }

        #[test]
        fn blake3_parts_equal_contiguous(
            header: [u8; TAGGED_LEN],
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut msg = header.to_vec();
            msg.extend_from_slice(&rest);
            let mac = Blake3Keyed::new(&[3; 32]);
            proptest::prop_assert_eq!(mac.tag_parts(&header, &rest), mac.tag(&msg));
        }
    }

    /// GMAC is GCM with an empty plaintext: both GMAC candidates must give
    /// the truncated tag of a direct GCM computation (GCM itself is checked
    /// against published vectors in the `aead` tests).
    #[test]
    fn gmac_candidates_agree() {
        let key = [7u8; 32];
        let msg: [u8; 52] = core::array::from_fn(|i| (i * 3) as u8);
        let header: [u8; TAGGED_LEN] = msg[..TAGGED_LEN].try_into().unwrap();
        let a = GmacAesGcm::new(&key).tag(&msg);
        assert_eq!(
            a,
            GmacAesGcm::new(&key).tag_parts(&header, &msg[TAGGED_LEN..])
        );
        #[cfg(feature = "ring")]
        assert_eq!(a, GmacRing::new(&key).tag(&msg));
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new((&key).into());
        let full = cipher
            .encrypt_inout_detached(&gmac_nonce(&header).into(), &msg, (&mut [][..]).into())
            .unwrap();
        assert_eq!(a[..], full[..HOP_TAG_LEN]);
    }

    #[test]
    fn gmac_refuses_over_long_input() {
        let mac = GmacAesGcm::new(&[7; 32]);
        let header = [1u8; TAGGED_LEN];
        let rest = [2u8; GMAC_MAX_INPUT - TAGGED_LEN + 1];
        let tag = mac.tag_parts(&header, &rest);
        assert_eq!(tag, [0; HOP_TAG_LEN]);
        assert!(!mac.verify_parts(&header, &rest, &tag));
    }

    fn exercise<M: HopMac>() {
        let key = [9u8; 32];
        let mac = M::new(&key);
        let header: [u8; TAGGED_LEN] = core::array::from_fn(|i| i as u8);
        let rest: [u8; 28] = core::array::from_fn(|i| (100 + i) as u8);
        let tag = mac.tag_parts(&header, &rest);
        assert!(mac.verify_parts(&header, &rest, &tag), "{}", M::NAME);
        assert!(
            mac.clone().verify_parts(&header, &rest, &tag),
            "{} clone",
            M::NAME
        );
        for bit in 0..TAGGED_LEN * 8 {
            let mut bad = header;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !mac.verify_parts(&bad, &rest, &tag),
                "{} header bit {bit}",
                M::NAME
            );
        }
        for bit in 0..rest.len() * 8 {
            let mut bad = rest;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !mac.verify_parts(&header, &bad, &tag),
                "{} rest bit {bit}",
                M::NAME
            );
        }
        // A shorter rest is another message, even with a matching prefix.
        assert!(
            !mac.verify_parts(&header, &rest[..27], &tag),
            "{} length",
            M::NAME
        );
        for bit in 0..HOP_TAG_LEN * 8 {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !mac.verify_parts(&header, &rest, &bad),
                "{} tag bit {bit}",
                M::NAME
            );
        }
        let mut other = key;
        other[0] ^= 0x80;
        assert_ne!(
            M::new(&other).tag_parts(&header, &rest),
            tag,
            "{} key",
            M::NAME
        );
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
