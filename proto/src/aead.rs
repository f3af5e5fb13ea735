//! End-to-end AES-256-GCM between an agent and a connector.
//!
//! Relays never hold these keys: they forward the end-to-end part of a frame
//! untouched. The nonce is the 64-bit end-to-end counter of the frame,
//! big-endian, after four zero bytes, so the sender must never reuse a
//! counter under one key (it rekeys long before the counter could wrap, see
//! [`CONFIDENTIALITY_LIMIT`]). The associated data ([`Aad`]) binds the
//! frame's kind, user id, service id and end-to-end receiver index, so a
//! relay that moved a frame to another user/service pair or session makes it
//! fail to open.
//!
//! Encryption is in place with a detached 16-byte tag, so a frame is sealed
//! in its send buffer with no copy or allocation.

pub mod backend;

use crate::ids::{ReceiverIndex, ServiceId, UserId};
use crate::wire::E2E_TAG_LEN;
use backend::Aes256GcmBackend;
use core::fmt;

/// Length of a GCM nonce: 4 zero bytes and the 64-bit counter.
pub const NONCE_LEN: usize = 12;

/// Length of the serialized associated data, see [`Aad::to_bytes`].
pub const AAD_LEN: usize = 13;

/// Messages one key may seal before the sender must rekey: 2^23.
///
/// AES-GCM's confidentiality bound degrades with the total number of blocks
/// encrypted under one key. RFC 9001 (QUIC), section 6.6 and appendix B.1.1,
/// derives `q ≤ 2^35 / l` messages of `l` blocks for an attacker advantage of
/// at most 2^-57; frames here may be up to 2^16 bytes (the wire length field
/// is a `u16`), that is `l = 2^12`, hence 2^23, the figure QUIC uses. It is
/// far lower than [`REKEY_AFTER_MESSAGES`] and is the limit that binds: a
/// 10 Gb/s flow of 1400-byte frames reaches it in about 9 s, so a busy
/// end-to-end session rekeys that often, besides every 2 minutes.
pub const CONFIDENTIALITY_LIMIT: u64 = 1 << 23;

/// Failed opens one key may see before the receiver must drop the session:
/// 2^52, RFC 9001's integrity limit for AES-GCM (forgery advantage ≤ 2^-57).
pub const INTEGRITY_LIMIT: u64 = 1 << 52;

/// WireGuard's `REKEY_AFTER_MESSAGES`: 2^60 messages.
///
/// Kept as the counter-space bound (the nonce counter and the replay window
/// must never get near `u64::MAX`); for AES-GCM the lower
/// [`CONFIDENTIALITY_LIMIT`] always fires first, so session code should
/// rekey at `min(CONFIDENTIALITY_LIMIT, REKEY_AFTER_MESSAGES)`.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// The backend [`E2eKey`] uses: `ring` when its feature is on.
#[cfg(feature = "ring")]
pub type DefaultBackend = backend::Ring;
/// The backend [`E2eKey`] uses: RustCrypto `aes-gcm` without the `ring`
/// feature.
#[cfg(not(feature = "ring"))]
pub type DefaultBackend = backend::RustCrypto;

/// A frame failed to open: wrong key, counter or associated data, or the
/// ciphertext or tag was altered. The frame must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("end-to-end frame failed authentication (wrong key, counter or ids, or tampered in transit); drop it")]
pub struct OpenError;

/// The fields of a frame that its end-to-end tag binds besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aad {
    /// Source user of the frame.
    pub user: UserId,
    /// Destination service of the frame.
    pub service: ServiceId,
    /// End-to-end receiver index: which session at the far end opens it.
    pub receiver: ReceiverIndex,
    /// The frame's version|kind byte.
    pub kind: u8,
}

impl Aad {
    /// The fixed 13-byte encoding:
    /// `kind | user (u32 BE) | service (u32 BE) | receiver (u32 BE)`.
    #[inline]
    pub fn to_bytes(&self) -> [u8; AAD_LEN] {
        let mut out = [0u8; AAD_LEN];
        out[0] = self.kind;
        out[1..5].copy_from_slice(&self.user.get().to_be_bytes());
        out[5..9].copy_from_slice(&self.service.get().to_be_bytes());
        out[9..13].copy_from_slice(&self.receiver.get().to_be_bytes());
        out
    }
}

/// The GCM nonce of an end-to-end counter: 4 zero bytes, then the counter
/// big-endian.
#[inline]
pub fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// One direction of an end-to-end session key, expanded once.
#[derive(Clone)]
pub struct E2eKey {
    inner: DefaultBackend,
}

impl E2eKey {
    /// Expands a 32-byte key from the end-to-end Noise split.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            inner: DefaultBackend::new(key),
        }
    }

    /// Encrypts `buf` in place under `counter` and returns the tag.
    ///
    /// `counter` must never repeat under this key, which is why only
    /// [`E2eSender`] (which owns the counter) calls it; measurement code
    /// that resends fixed records reaches it through `testkit`.
    ///
    /// # Panics
    ///
    /// If `buf` is longer than GCM allows (about 64 GiB).
    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        counter: u64,
        aad: &Aad,
        buf: &mut [u8],
    ) -> [u8; E2E_TAG_LEN] {
        self.inner.seal_raw(&nonce(counter), &aad.to_bytes(), buf)
    }

    /// Checks `tag` and decrypts `buf` in place, with no replay check
    /// (that is [`E2eReceiver`]'s).
    ///
    /// On error `buf` holds garbage and the frame must be dropped.
    #[inline]
    pub(crate) fn open_in_place(
        &self,
        counter: u64,
        aad: &Aad,
        buf: &mut [u8],
        tag: &[u8; E2E_TAG_LEN],
    ) -> Result<(), OpenError> {
        self.inner
            .open_raw(&nonce(counter), &aad.to_bytes(), buf, tag)
    }
}

impl fmt::Debug for E2eKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: Debug output ends up in logs.
        f.debug_struct("E2eKey")
            .field("backend", &DefaultBackend::NAME)
            .finish_non_exhaustive()
    }
}

/// The sender's half of an end-to-end session: the key and the counter it
/// owns, so that no counter is ever sealed twice under the key (a repeated
/// GCM nonce would reveal the XOR of two plaintexts and the hash key).
#[derive(Debug, Clone)]
pub struct E2eSender {
    key: E2eKey,
    next: u64,
}

/// The sender's key has sealed [`CONFIDENTIALITY_LIMIT`] records: the
/// session must rekey before sending more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("end-to-end key used up ({CONFIDENTIALITY_LIMIT} records sealed): rekey the session")]
pub struct KeyExhausted;

impl E2eSender {
    /// A sender for the 32-byte key of a Noise split, counting from 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: E2eKey::new(key),
            next: 0,
        }
    }

    /// The counter the next record gets: also how many counters were
    /// spent.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Seals `buf` in place under the next counter; returns the counter
    /// (to write into the record header) and the tag.
    pub fn seal(
        &mut self,
        aad: &Aad,
        buf: &mut [u8],
    ) -> Result<(u64, [u8; E2E_TAG_LEN]), KeyExhausted> {
        let counter = self.next;
        if counter >= CONFIDENTIALITY_LIMIT {
            return Err(KeyExhausted);
        }
        self.next = counter + 1;
        Ok((counter, self.key.seal_in_place(counter, aad, buf)))
    }

    /// A sender whose next counter is `next` (to test the limit without
    /// sealing 2^23 records).
    #[cfg(test)]
    fn starting_at(key: &[u8; 32], next: u64) -> Self {
        Self {
            key: E2eKey::new(key),
            next,
        }
    }
}

/// Why [`E2eReceiver::open`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The counter was seen already, or is too old for the window.
    #[error("end-to-end record replayed (or too old for the replay window)")]
    Replay,
    /// The record failed authentication.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// The receiver's half of an end-to-end session: the key and its replay
/// window, together, so no record is opened without the window's check.
/// The window is checked before the open and moved only after the tag
/// verified, so a forged record cannot move it.
#[derive(Debug, Clone)]
pub struct E2eReceiver {
    key: E2eKey,
    window: crate::replay::ReplayWindow,
}

impl E2eReceiver {
    /// A receiver for the 32-byte key of a Noise split.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: E2eKey::new(key),
            window: crate::replay::ReplayWindow::new(),
        }
    }

    /// Opens `buf` in place if `counter` is new to the window and the tag
    /// verifies; on error `buf` may hold garbage and the record must be
    /// dropped.
    pub fn open(
        &mut self,
        counter: u64,
        aad: &Aad,
        buf: &mut [u8],
        tag: &[u8; E2E_TAG_LEN],
    ) -> Result<(), ReceiveError> {
        if !self.window.check(counter) {
            return Err(ReceiveError::Replay);
        }
        self.key.open_in_place(counter, aad, buf, tag)?;
        if !self.window.update(counter) {
            return Err(ReceiveError::Replay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::backend::RustCrypto;
    use super::*;

    /// One record of `tests/data/aes256gcm_kat.txt`.
    struct Kat {
        name: String,
        key: [u8; 32],
        iv: [u8; NONCE_LEN],
        pt: Vec<u8>,
        aad: Vec<u8>,
        ct: Vec<u8>,
        tag: [u8; E2E_TAG_LEN],
    }

    fn parse_kats(text: &str) -> Vec<Kat> {
        let mut out = Vec::new();
        let mut fields = std::collections::HashMap::new();
        let lines = text.lines().chain(core::iter::once(""));
        for line in lines {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if line.is_empty() {
                if !fields.is_empty() {
                    out.push(kat_from(&fields));
                    fields.clear();
                }
                continue;
            }
            let (k, v) = line.split_once('=').expect("KAT line is `Field = value`");
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
        out
    }

    fn kat_from(f: &std::collections::HashMap<String, String>) -> Kat {
        let bytes = |k: &str| hex::decode(&f[k]).unwrap_or_else(|e| panic!("{k}: {e}"));
        Kat {
            name: f["Name"].clone(),
            key: bytes("Key").try_into().expect("32-byte key"),
            iv: bytes("IV").try_into().expect("12-byte IV"),
            pt: bytes("PT"),
            aad: bytes("AAD"),
            ct: bytes("CT"),
            tag: bytes("Tag").try_into().expect("16-byte tag"),
        }
    }

    fn kats() -> Vec<Kat> {
        let kats = parse_kats(include_str!("../tests/data/aes256gcm_kat.txt"));
        assert_eq!(kats.len(), 6, "every record of the KAT file is loaded");
        kats
    }

    fn known_answers<B: Aes256GcmBackend>() {
        for kat in kats() {
            let key = B::new(&kat.key);
            let mut buf = kat.pt.clone();
            let tag = key.seal_raw(&kat.iv, &kat.aad, &mut buf);
            assert_eq!(
                hex::encode(&buf),
                hex::encode(&kat.ct),
                "{} {}",
                B::NAME,
                kat.name
            );
            assert_eq!(tag, kat.tag, "{} {}", B::NAME, kat.name);
            key.open_raw(&kat.iv, &kat.aad, &mut buf, &kat.tag)
                .unwrap_or_else(|_| panic!("{} {} open", B::NAME, kat.name));
            assert_eq!(buf, kat.pt, "{} {}", B::NAME, kat.name);
            let mut bad = kat.tag;
            bad[15] ^= 1;
            let mut buf = kat.ct.clone();
            assert_eq!(
                key.open_raw(&kat.iv, &kat.aad, &mut buf, &bad),
                Err(OpenError)
            );
        }
    }

    #[test]
    fn known_answers_rustcrypto() {
        known_answers::<RustCrypto>();
    }

    #[cfg(feature = "ring")]
    #[test]
    fn known_answers_ring() {
        known_answers::<backend::Ring>();
    }

    const SIZES: [usize; 5] = [0, 1, 64, 1400, 9000];

    fn aad() -> Aad {
        Aad {
            user: UserId(1_000_001),
            service: ServiceId(42),
            receiver: ReceiverIndex(0xdead_beef),
            kind: 0x11,
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Seals with `S`, opens with `O`, at every size.
    fn interop<S: Aes256GcmBackend, O: Aes256GcmBackend>() {
        let k = [0x3c; 32];
        let (s, o) = (S::new(&k), O::new(&k));
        let a = aad().to_bytes();
        for (i, len) in SIZES.into_iter().enumerate() {
            let n = nonce(1 << 40 | i as u64);
            let mut buf = payload(len);
            let tag = s.seal_raw(&n, &a, &mut buf);
            if len > 0 {
                assert_ne!(buf, payload(len), "{len} bytes encrypted");
            }
            o.open_raw(&n, &a, &mut buf, &tag)
                .unwrap_or_else(|_| panic!("{} -> {} at {len} bytes", S::NAME, O::NAME));
            assert_eq!(buf, payload(len));
        }
    }

    #[test]
    fn interop_rustcrypto_to_rustcrypto() {
        interop::<RustCrypto, RustCrypto>();
    }

    #[cfg(feature = "ring")]
    #[test]
    fn interop_ring_to_rustcrypto_and_back() {
        interop::<backend::Ring, RustCrypto>();
        interop::<RustCrypto, backend::Ring>();
        interop::<backend::Ring, backend::Ring>();
    }

    #[test]
    fn e2e_round_trip_every_size() {
        let key = E2eKey::new(&[9; 32]);
        for len in SIZES {
            let mut buf = payload(len);
            let tag = key.seal_in_place(7, &aad(), &mut buf);
            key.open_in_place(7, &aad(), &mut buf, &tag).unwrap();
            assert_eq!(buf, payload(len));
        }
    }

    #[test]
    fn e2e_key_matches_raw_construction() {
        // Pins the nonce and AAD layout: both backends, built by hand.
        let k = [5; 32];
        let mut expected = payload(100);
        let n: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02];
        let a = [
            0x11, 0x00, 0x0f, 0x42, 0x41, 0x00, 0x00, 0x00, 0x2a, 0xde, 0xad, 0xbe, 0xef,
        ];
        assert_eq!(aad().to_bytes(), a);
        assert_eq!(nonce(0x0102), n);
        let raw_tag = RustCrypto::new(&k).seal_raw(&n, &a, &mut expected);
        let mut buf = payload(100);
        let tag = E2eKey::new(&k).seal_in_place(0x0102, &aad(), &mut buf);
        assert_eq!(buf, expected);
        assert_eq!(tag, raw_tag);
    }

    /// Every tampering makes open fail.
    #[test]
    fn tampering_fails_to_open() {
        let key = E2eKey::new(&[1; 32]);
        for len in SIZES {
            let mut sealed = payload(len);
            let tag = key.seal_in_place(99, &aad(), &mut sealed);
            let try_open = |counter: u64, a: &Aad, ct: &[u8], tag: &[u8; 16]| {
                let mut buf = ct.to_vec();
                key.open_in_place(counter, a, &mut buf, tag)
            };
            assert_eq!(try_open(99, &aad(), &sealed, &tag), Ok(()));
            if len > 0 {
                let mut ct = sealed.clone();
                ct[len / 2] ^= 0x01;
                assert_eq!(try_open(99, &aad(), &ct, &tag), Err(OpenError), "ct {len}");
                // Truncation is tampering too.
                assert_eq!(
                    try_open(99, &aad(), &sealed[..len - 1], &tag),
                    Err(OpenError)
                );
            }
            for bit in 0..128 {
                let mut t = tag;
                t[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    try_open(99, &aad(), &sealed, &t),
                    Err(OpenError),
                    "tag bit {bit}"
                );
            }
            assert_eq!(
                try_open(98, &aad(), &sealed, &tag),
                Err(OpenError),
                "counter"
            );
            assert_eq!(
                try_open(99 | 1 << 63, &aad(), &sealed, &tag),
                Err(OpenError)
            );
            let moved = [
                Aad {
                    user: UserId(2),
                    ..aad()
                },
                Aad {
                    service: ServiceId(43),
                    ..aad()
                },
                Aad {
                    receiver: ReceiverIndex(1),
                    ..aad()
                },
                Aad {
                    kind: 0x12,
                    ..aad()
                },
            ];
            for a in moved {
                assert_eq!(try_open(99, &a, &sealed, &tag), Err(OpenError), "{a:?}");
            }
            let other = E2eKey::new(&[2; 32]);
            let mut buf = sealed.clone();
            assert_eq!(
                other.open_in_place(99, &aad(), &mut buf, &tag),
                Err(OpenError)
            );
        }
    }

    #[test]
    fn aad_fields_land_in_distinct_bytes() {
        // No two different Aads encode alike (fields cannot bleed).
        let base = aad().to_bytes();
        for i in 0..AAD_LEN {
            let mut a = aad();
            match i {
                0 => a.kind ^= 1,
                1..=4 => a.user.0 ^= 1 << (8 * (4 - i)),
                5..=8 => a.service.0 ^= 1 << (8 * (8 - i)),
                _ => a.receiver.0 ^= 1 << (8 * (12 - i)),
            }
            let b = a.to_bytes();
            for j in 0..AAD_LEN {
                assert_eq!(b[j] != base[j], i == j, "field byte {i} vs {j}");
            }
        }
    }

    #[test]
    fn a_sender_never_reuses_a_counter_and_a_receiver_never_opens_one_twice() {
        let key = [0x42; 32];
        let mut tx = E2eSender::new(&key);
        let mut rx = E2eReceiver::new(&key);
        let a = aad();
        let mut sealed = Vec::new();
        for want in 0..5u64 {
            let mut buf = vec![want as u8; 40];
            let (counter, tag) = tx.seal(&a, &mut buf).unwrap();
            assert_eq!(counter, want);
            sealed.push((counter, buf, tag));
        }
        assert_eq!(tx.next_counter(), 5);
        // Out of order is fine; each once.
        for (counter, buf, tag) in sealed.iter().rev() {
            let mut b = buf.clone();
            rx.open(*counter, &a, &mut b, tag).unwrap();
            assert_eq!(b, vec![*counter as u8; 40]);
        }
        let (counter, buf, tag) = &sealed[2];
        let mut b = buf.clone();
        assert_eq!(
            rx.open(*counter, &a, &mut b, tag),
            Err(ReceiveError::Replay)
        );
        // A forged record under a fresh counter fails and does not move the
        // window: the real one under that counter still opens.
        let mut real = vec![7u8; 40];
        let (c, tag) = tx.seal(&a, &mut real).unwrap();
        let mut forged = real.clone();
        forged[0] ^= 1;
        assert_eq!(
            rx.open(c, &a, &mut forged, &tag),
            Err(ReceiveError::Open(OpenError))
        );
        rx.open(c, &a, &mut real, &tag).unwrap();
    }

    #[test]
    fn a_sender_stops_at_the_confidentiality_limit() {
        let mut tx = E2eSender::starting_at(&[1; 32], CONFIDENTIALITY_LIMIT - 1);
        let a = aad();
        let mut buf = [0u8; 16];
        let (c, _) = tx.seal(&a, &mut buf).unwrap();
        assert_eq!(c, CONFIDENTIALITY_LIMIT - 1);
        assert_eq!(tx.seal(&a, &mut buf), Err(KeyExhausted));
        assert_eq!(tx.next_counter(), CONFIDENTIALITY_LIMIT);
    }

    #[test]
    fn limits_are_ordered() {
        let limits = [CONFIDENTIALITY_LIMIT, REKEY_AFTER_MESSAGES, INTEGRITY_LIMIT];
        assert!(limits[0] < limits[1] && limits[2] < limits[1]);
    }

    #[test]
    fn debug_hides_the_key() {
        let s = format!("{:?}", E2eKey::new(&[0xee; 32]));
        assert!(s.starts_with("E2eKey"), "{s}");
        assert!(!s.contains("238"), "{s}");
        assert!(OpenError.to_string().contains("drop it"));
    }
}
