//! The per-hop MAC: what it covers in a frame, and the key that computes it.
//!
//! Every data-plane frame carries an 8-byte tag at bytes `24..32` under the
//! key of one hop session. A relay verifies the tag of each received frame,
//! rewrites the header for the next hop and tags it again, so both operations
//! sit on the per-packet path twice per frame and must cost a few nanoseconds.
//!
//! # What the tag covers
//!
//! The tag input is the first [`TAGGED_LEN`] header bytes (version|kind, ttl,
//! length, hop receiver index, hop counter, user id, service id), followed
//! by what the kind (byte 0, itself covered) says of the body:
//!
//! | kind | after the 24 header bytes |
//! | --- | --- |
//! | `DataUp`, `DataDown` | the body's last 16 bytes (the end-to-end AEAD tag): [`DATA_BOUND_LEN`] bytes |
//! | `Control`, `E2eHandshakeUp`, `E2eHandshakeDown`, `Keepalive` | the whole body (empty for a keepalive) |
//!
//! A data frame's body is bound through its end-to-end AEAD tag alone. That
//! tag, which no relay and no attacker can compute, already binds the rest
//! of the record: the record header (receiver index and counter, which
//! pick the key and the nonce) and the ciphertext. So a captured hop header
//! cannot be raced with another end-to-end record (an older one of the same
//! pair would otherwise be an end-to-end replay that burns the real frame's
//! hop counter): another record carries another AEAD tag. What the hop tag
//! leaves out, an on-path attacker can change in flight (a record header
//! or ciphertext under the real AEAD tag), and the receiving endpoint then
//! refuses the record, exactly as it refuses a record whose ciphertext was
//! changed; an attacker on the path can drop the frame in any case.
//! Covering the record header as well (wire version 2) cost one more
//! SipHash compression per tag, two per forwarded frame, and protected
//! nothing more. Everything else is covered in full: a control body is
//! read by the receiving node itself, and handshake bodies are rare and
//! short.
//!
//! [`HopKey::tag_frame`] and [`HopKey::verify_frame`] take the whole frame
//! and apply this rule; nothing else computes a hop tag, so no caller can
//! tag the wrong bytes. The body pieces go to the MAC as they lie in the
//! frame, without copying or allocation: a data frame's header and AEAD
//! tag through [`candidates::HopMac::tag_data`], which the chosen MAC
//! computes as straight-line code for that one 40-byte layout.
//!
//! # Choice of MAC
//!
//! Several constructions are kept in [`candidates`] behind the
//! [`candidates::HopMac`] trait so that `cargo bench -p bench --bench hoptag`
//! can compare them on the machine at hand. [`HopKey`] is the one chosen:
//! **SipHash-2-4** with a 128-bit key derived from the 32-byte hop key by
//! BLAKE3 `derive_key`, computed by [`candidates::SipHash24Fixed`] (SipHash
//! with the header taken as three whole words, and a data frame's input as
//! five words read where they lie; checked equal to the `siphasher`
//! crate). On the project's machine (2-core AMD EPYC VM,
//! AES-NI/VAES), over the 24 header bytes alone (the input before the
//! payload was bound), it took ≈17 ns, against ≈18 ns for the general
//! `siphasher` code, 63–81 ns for AES-GMAC (via `aes-gcm` or `ring`: their
//! per-call set-up dominates a short input) and 84–90 ns for keyed BLAKE3;
//! figures in `docs/perf.md` ("Hop tag"). SipHash is also the most
//! forgiving: it is a PRF, so its security does not depend on the counter
//! never repeating, whereas a repeated nonce under GMAC reveals the hash key
//! and lets anyone forge tags.
//!
//! The hop counter inside the tagged bytes makes every tagged header unique,
//! and the replay window ([`crate::replay`]) rejects a header seen before, so a
//! deterministic MAC is enough: no separate nonce is needed.

pub mod candidates;
pub mod lanes;

use crate::wire::{Frame, Kind, E2E_TAG_LEN, HEADER_LEN, HOP_TAG_LEN, TAGGED_LEN};
use candidates::HopMac;
use core::fmt;

/// Body bytes of a data frame the tag covers: the end-to-end AEAD tag (the
/// body's last [`E2E_TAG_LEN`] bytes).
pub const DATA_BOUND_LEN: usize = E2E_TAG_LEN;

/// The MAC used for hop tags; see the module documentation for why.
type Chosen = candidates::SipHash24Fixed;

/// Key of one direction of a hop session: tags and verifies frames.
///
/// Built once per session from the 32 bytes of the Noise split; everything the
/// MAC needs (the 128-bit SipHash key) is derived at construction, so
/// [`tag_frame`](Self::tag_frame) and [`verify_frame`](Self::verify_frame)
/// do no key schedule and no allocation.
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
    /// of at most 2^15 bytes; our input is 40 bytes for data frames, at most
    /// one datagram otherwise. Staying a factor of two
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

    /// The hop tag of `frame` under this key: the MAC of the bytes the
    /// module documentation lists for the frame's kind. The tag field
    /// itself (bytes `24..32`) is not read.
    ///
    /// Like every accessor of an unchecked [`Frame`], it panics only on a
    /// buffer shorter than the header; a data frame whose body is shorter
    /// than [`DATA_BOUND_LEN`] (which [`Frame::new_checked`] refuses) is
    /// tagged over its whole body.
    #[inline]
    pub fn tag_frame<T: AsRef<[u8]>>(&self, frame: &Frame<T>) -> [u8; HOP_TAG_LEN] {
        let header = frame.tagged();
        let body = frame.body();
        let bound = match frame.kind() {
            Kind::DataUp | Kind::DataDown => body.last_chunk::<E2E_TAG_LEN>(),
            _ => None,
        };
        match bound {
            Some(e2e_tag) => self.mac.tag_data(header, e2e_tag),
            None => self.mac.tag_parts(header, body),
        }
    }

    /// Whether `frame` carries its right tag under this key.
    ///
    /// The comparison takes the same time whichever bytes differ, so a
    /// forger learns nothing from timing.
    #[inline]
    pub fn verify_frame<T: AsRef<[u8]>>(&self, frame: &Frame<T>) -> bool {
        candidates::ct_eq(&self.tag_frame(frame), frame.tag())
    }

    /// Computes `frame`'s tag and writes it into the tag field: the last
    /// step of building or rewriting a frame (everything the tag covers
    /// must be in place).
    #[inline]
    pub fn seal_frame<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        let tag = self.tag_frame(frame);
        frame.set_tag(&tag);
    }
}

/// One data frame's tag input, and the key it is tagged under: a lane of
/// [`HopKey::tag_data_lanes`].
#[derive(Debug, Clone, Copy)]
pub struct DataLane<'a> {
    key: &'a HopKey,
    input: lanes::DataInput<'a>,
}

impl<'a> DataLane<'a> {
    /// The lane of `frame` under `key`: `None` unless `frame` is a data
    /// frame whose body holds the end-to-end AEAD tag its hop tag binds
    /// (anything else is tagged on its own, [`HopKey::tag_frame`]).
    #[inline]
    pub fn of(key: &'a HopKey, frame: Frame<&'a [u8]>) -> Option<Self> {
        if !matches!(frame.kind(), Kind::DataUp | Kind::DataDown) {
            return None;
        }
        let bytes = frame.into_inner();
        let header = bytes.first_chunk::<TAGGED_LEN>()?;
        let e2e_tag = bytes.get(HEADER_LEN..)?.last_chunk::<E2E_TAG_LEN>()?;
        Some(DataLane {
            key,
            input: lanes::DataInput { header, e2e_tag },
        })
    }
}

impl HopKey {
    /// The tag [`tag_frame`](Self::tag_frame) gives each present lane's
    /// frame, [`lanes::LANES`] computed together ([`lanes`]). An absent
    /// lane's tag is unspecified.
    #[inline]
    pub fn tag_data_lanes(
        lanes: &[Option<DataLane<'_>>; lanes::LANES],
    ) -> [[u8; HOP_TAG_LEN]; lanes::LANES] {
        // An absent lane hashes a present one's input again: cheaper than a
        // branch per lane, and the result is not read.
        let Some(any) = lanes.iter().flatten().next() else {
            return [[0; HOP_TAG_LEN]; lanes::LANES];
        };
        let lane = |i: usize| lanes[i].unwrap_or(*any);
        let keys = core::array::from_fn(|i| &lane(i).key.mac);
        let inputs = core::array::from_fn(|i| lane(i).input);
        lanes::hash_data(keys, inputs).map(u64::to_le_bytes)
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
    use crate::wire::{HEADER_LEN, TAGGED_LEN, VERSION};

    const KEY: [u8; 32] = [0x42; 32];

    /// A frame of `kind` with a `body_len`-byte body of varied bytes,
    /// tagged under `KEY`.
    fn frame(kind: Kind, counter: u64, body_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; HEADER_LEN + body_len];
        f[0] = kind.byte0();
        f[1] = 16;
        f[2..4].copy_from_slice(&u16::try_from(body_len).unwrap().to_be_bytes());
        f[4..8].copy_from_slice(&7u32.to_be_bytes());
        f[8..16].copy_from_slice(&counter.to_be_bytes());
        f[16..20].copy_from_slice(&1001u32.to_be_bytes());
        f[20..24].copy_from_slice(&2002u32.to_be_bytes());
        for (i, b) in f[HEADER_LEN..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
        HopKey::new(&KEY).seal_frame(&mut Frame::new_unchecked(&mut f[..]));
        f
    }

    fn verifies(key: &HopKey, f: &[u8]) -> bool {
        key.verify_frame(&Frame::new_checked(f).expect("well-formed"))
    }

    /// Which body bytes of a frame of `kind` with a body of `len` bytes the
    /// tag must cover (module documentation, "What the tag covers").
    fn covered(kind: Kind, len: usize, i: usize) -> bool {
        match kind {
            Kind::DataUp | Kind::DataDown => i >= len - E2E_TAG_LEN,
            _ => true,
        }
    }

    #[test]
    fn round_trip() {
        let key = HopKey::new(&KEY);
        for counter in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            assert!(verifies(&key, &frame(Kind::DataUp, counter, 60)));
        }
        assert_eq!(
            VERSION, 3,
            "the version that binds the payload through its AEAD tag"
        );
    }

    #[test]
    fn any_bit_flip_in_header_or_tag_fails() {
        let key = HopKey::new(&KEY);
        for kind in [Kind::DataUp, Kind::Control, Kind::Keepalive] {
            let len = if kind == Kind::Keepalive { 0 } else { 40 };
            let f = frame(kind, 99, len);
            for bit in 0..HEADER_LEN * 8 {
                let mut bad = f.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                // Flips that make it malformed (version, kind, length) are
                // refused before any tag is looked at.
                if let Ok(bad) = Frame::new_checked(&bad[..]) {
                    assert!(
                        !key.verify_frame(&bad),
                        "{kind:?}: flip of bit {bit} passed"
                    );
                }
            }
        }
    }

    /// The binding, byte by byte: a data frame's end-to-end AEAD tag and
    /// every byte of any other kind's body are covered; a data frame's
    /// record header and ciphertext are not (the AEAD tag binds them).
    #[test]
    fn the_tag_covers_exactly_the_bytes_of_its_kind() {
        let key = HopKey::new(&KEY);
        for kind in [
            Kind::DataUp,
            Kind::DataDown,
            Kind::Control,
            Kind::E2eHandshakeUp,
            Kind::E2eHandshakeDown,
            Kind::Keepalive,
        ] {
            // A keepalive's body is empty (`Kind::max_body_len`).
            for len in [28, 29, 45, 200].map(|l| l.min(kind.max_body_len())) {
                let f = frame(kind, 5, len);
                assert!(verifies(&key, &f));
                for i in 0..len {
                    let mut bad = f.clone();
                    bad[HEADER_LEN + i] ^= 0x01;
                    assert_eq!(
                        verifies(&key, &bad),
                        !covered(kind, len, i),
                        "{kind:?}, body of {len}: byte {i}"
                    );
                }
            }
        }
    }

    /// An unchecked data frame whose body is too short for the binding
    /// (which `Frame::new_checked` refuses) is tagged over its whole body,
    /// as documented, and never panics: the guard on the body's length is
    /// what keeps the binding's slices inside it.
    #[test]
    fn a_data_frame_too_short_for_the_binding_is_tagged_whole() {
        let key = HopKey::new(&KEY);
        for len in [0, 1, 12, DATA_BOUND_LEN - 1] {
            let f = frame(Kind::DataUp, 9, len);
            let unchecked = Frame::new_unchecked(&f[..]);
            let mut body_changed = f.clone();
            if let Some(b) = body_changed.get_mut(HEADER_LEN) {
                *b ^= 0x80;
            }
            let tag = key.tag_frame(&unchecked);
            assert_eq!(&tag, unchecked.tag(), "body of {len}");
            if len > 0 {
                assert_ne!(
                    key.tag_frame(&Frame::new_unchecked(&body_changed[..])),
                    tag,
                    "body of {len}: its first byte is covered"
                );
            }
        }
    }

    /// The tag input is the header and the covered bytes where they lie:
    /// the same bytes given contiguously to the chosen MAC give the same
    /// tag (so the bench of contiguous inputs measures the real thing).
    #[test]
    fn tag_frame_is_the_mac_of_the_documented_input() {
        let mac = Chosen::new(&KEY);
        let key = HopKey::new(&KEY);
        let data = frame(Kind::DataUp, 3, 100);
        let mut input = data[..TAGGED_LEN].to_vec();
        input.extend_from_slice(&data[data.len() - E2E_TAG_LEN..]);
        assert_eq!(input.len(), TAGGED_LEN + DATA_BOUND_LEN);
        assert_eq!(
            key.tag_frame(&Frame::new_checked(&data[..]).unwrap()),
            mac.tag(&input)
        );
        let control = frame(Kind::Control, 3, 30);
        let mut input = control[..TAGGED_LEN].to_vec();
        input.extend_from_slice(&control[HEADER_LEN..]);
        assert_eq!(
            key.tag_frame(&Frame::new_checked(&control[..]).unwrap()),
            mac.tag(&input)
        );
    }

    #[test]
    fn the_tag_field_is_not_input() {
        let key = HopKey::new(&KEY);
        let mut f = frame(Kind::DataUp, 1, 40);
        let tag = key.tag_frame(&Frame::new_checked(&f[..]).unwrap());
        f[24..32].copy_from_slice(&[0xee; 8]);
        assert_eq!(key.tag_frame(&Frame::new_checked(&f[..]).unwrap()), tag);
    }

    #[test]
    fn different_keys_differ() {
        let f = frame(Kind::DataUp, 5, 40);
        let mut other = KEY;
        other[31] ^= 1;
        let a = HopKey::new(&KEY);
        let b = HopKey::new(&other);
        let view = Frame::new_checked(&f[..]).unwrap();
        assert_ne!(a.tag_frame(&view), b.tag_frame(&view));
        assert!(!b.verify_frame(&view));
    }

    #[test]
    fn counter_changes_the_tag() {
        let (a, b) = (frame(Kind::DataUp, 1, 40), frame(Kind::DataUp, 2, 40));
        assert_ne!(a[24..32], b[24..32]);
    }

    proptest::proptest! {
        /// Any single bit flipped anywhere in a tagged frame that still
        /// parses fails verification, unless it is in a data frame's
        /// ciphertext.
        #[test]
        fn random_frames_and_bit_flips(
            kind_i in 0usize..6,
            len in 28usize..300,
            counter: u64,
            bit: usize,
        ) {
            let kind = [
                Kind::DataUp,
                Kind::DataDown,
                Kind::E2eHandshakeUp,
                Kind::E2eHandshakeDown,
                Kind::Keepalive,
                Kind::Control,
            ][kind_i];
            let len = len.min(kind.max_body_len());
            let key = HopKey::new(&KEY);
            let f = frame(kind, counter, len);
            proptest::prop_assert!(verifies(&key, &f));
            let bit = bit % (f.len() * 8);
            let mut bad = f.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let byte = bit / 8;
            if let Ok(view) = Frame::new_checked(&bad[..]) {
                let exempt = byte >= HEADER_LEN && !covered(kind, len, byte - HEADER_LEN);
                proptest::prop_assert_eq!(key.verify_frame(&view), exempt, "byte {}", byte);
            }
        }
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
