//! Handshake DoS defence: mac1, mac2 and cookie replies, after WireGuard.
//!
//! * **mac1** = MAC(key derived from the *responder's* static public key,
//!   frame bytes before mac1). Anyone who knows whom they are talking to can
//!   compute it, so it is no authentication; it lets a relay drop, with one
//!   hash and before any Diffie-Hellman, every frame not meant for it
//!   (scans, stale configurations, random junk).
//! * **mac2** = MAC(cookie, frame bytes before mac2), where
//!   cookie = MAC(secret, source address). Only a sender that can receive at
//!   its source address can learn the cookie, so mac2 proves the address is
//!   not spoofed. A responder checks it only when the caller says it is
//!   under load; then an initiation without a valid mac2 gets a
//!   *cookie reply* instead of any expensive work.
//! * **cookie reply** carries the cookie encrypted under a key derived from
//!   the responder's static public key, with the initiation's mac1 as
//!   associated data, so only the real initiator (who knows the key and the
//!   mac1 it sent) accepts it. It is 64 bytes, smaller than any initiation:
//!   no amplification.
//!
//! # Primitives (our choices; WireGuard uses BLAKE2s and XChaCha20-Poly1305)
//!
//! * MAC: keyed BLAKE3 truncated to 16 bytes; keys derived with BLAKE3's
//!   `derive_key` and a context string per use. BLAKE3 is already a
//!   dependency of `proto` and is fast on short inputs.
//! * Cookie encryption: AES-256-GCM with a 24-byte random nonce, extended
//!   as XChaCha extends ChaCha: the first 12 nonce bytes select a subkey
//!   (keyed BLAKE3 of them under the cookie key), the last 12 are the GCM
//!   nonce. The key never rotates (it is tied to the static key), so a plain
//!   96-bit random nonce would risk collisions after ~2^32 replies; with the
//!   extension a collision needs the same 192-bit nonce.
//! * Secret rotation: the secret for epoch `n` (a [`COOKIE_REFRESH_TIME`]
//!   slice of time since the checker was created) is keyed BLAKE3 of `n`
//!   under a random master secret drawn once. Rotation thus needs no RNG
//!   and no clock of its own: the caller's `now` selects the epoch, and a
//!   cookie is valid only in the epoch it was made in.

use std::net::SocketAddr;
use std::time::Instant;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use rand::{CryptoRng, RngCore};

use super::frames::{
    emit_cookie_reply, CookieReplyFrame, COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN,
    COOKIE_TAG_LEN, MACS_LEN, MAC_LEN,
};
use super::timers::COOKIE_REFRESH_TIME;
use super::HandshakeError;
use crate::ids::ReceiverIndex;

const MAC1_CONTEXT: &str = "ztna-mesh 2026-11 hop handshake mac1";
const COOKIE_KEY_CONTEXT: &str = "ztna-mesh 2026-11 hop handshake cookie encryption";

/// Keyed BLAKE3, truncated to [`MAC_LEN`].
pub(crate) fn mac(key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
    let h = blake3::keyed_hash(key, data);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
    out
}

/// Compares two macs in time independent of where they differ.
fn ct_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The mac1 key of the node whose static public key is `static_key`.
pub(crate) fn mac1_key(static_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(MAC1_CONTEXT, static_key)
}

fn cookie_key(static_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(COOKIE_KEY_CONTEXT, static_key)
}

/// Writes mac1 (under `mac1_key`) and mac2 (under `cookie`, or zeros) into
/// the last [`MACS_LEN`] bytes of `frame`; returns mac1. `frame` is an
/// emitted initiation or response, so it is longer than [`MACS_LEN`].
pub(crate) fn stamp(
    frame: &mut [u8],
    mac1_key: &[u8; 32],
    cookie: Option<&[u8; COOKIE_LEN]>,
) -> [u8; MAC_LEN] {
    let m1_at = frame.len().saturating_sub(MACS_LEN);
    let m2_at = m1_at + MAC_LEN;
    let mac1 = mac(mac1_key, &frame[..m1_at]);
    frame[m1_at..m2_at].copy_from_slice(&mac1);
    let mac2 = cookie.map_or([0; MAC_LEN], |c| mac(&pad_key(c), &frame[..m2_at]));
    frame[m2_at..].copy_from_slice(&mac2);
    mac1
}

/// Checks the mac1 of a parsed frame (`bytes` ends with mac1 and mac2).
pub(crate) fn mac1_ok(bytes: &[u8], mac1_key: &[u8; 32], mac1: &[u8; MAC_LEN]) -> bool {
    let m1_at = bytes.len().saturating_sub(MACS_LEN);
    ct_eq(&mac(mac1_key, &bytes[..m1_at]), mac1)
}

/// A 16-byte cookie as a 32-byte BLAKE3 key (zero-extended).
fn pad_key(cookie: &[u8; COOKIE_LEN]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..COOKIE_LEN].copy_from_slice(cookie);
    k
}

/// The responder's side: checks macs and makes cookie replies. A clone
/// checks and answers exactly as the original (same master secret, same
/// epochs): a relay's workers each hold one ([`super::gate`]).
#[derive(Clone)]
pub struct CookieChecker {
    mac1_key: [u8; 32],
    seal_key: [u8; 32],
    master: [u8; 32],
    epoch_start: Instant,
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// A checker for the node whose static public key is `local_static`,
    /// with a master secret drawn from a cryptographic RNG by the caller.
    pub fn new(local_static: &[u8; 32], master_secret: [u8; 32], now: Instant) -> CookieChecker {
        CookieChecker {
            mac1_key: mac1_key(local_static),
            seal_key: cookie_key(local_static),
            master: master_secret,
            epoch_start: now,
        }
    }

    /// Whether a frame's mac1 shows it is meant for this node.
    pub fn check_mac1(&self, bytes: &[u8], mac1: &[u8; MAC_LEN]) -> bool {
        mac1_ok(bytes, &self.mac1_key, mac1)
    }

    /// Whether a frame's mac2 matches the cookie `source` holds now.
    pub fn check_mac2(
        &self,
        bytes: &[u8],
        mac2: &[u8; MAC_LEN],
        source: SocketAddr,
        now: Instant,
    ) -> bool {
        let m2_at = bytes.len().saturating_sub(MAC_LEN);
        let cookie = self.cookie(source, now);
        ct_eq(&mac(&pad_key(&cookie), &bytes[..m2_at]), mac2)
    }

    /// The cookie for `source` in the current epoch.
    fn cookie(&self, source: SocketAddr, now: Instant) -> [u8; COOKIE_LEN] {
        let epoch = now.saturating_duration_since(self.epoch_start).as_secs()
            / COOKIE_REFRESH_TIME.as_secs();
        let secret = blake3::keyed_hash(&self.master, &epoch.to_be_bytes());
        let (addr, len) = address_bytes(source);
        mac(secret.as_bytes(), &addr[..len])
    }

    /// A cookie reply to an initiation from `source` that used index
    /// `receiver` and carried `mac1`.
    pub fn reply<R: RngCore + CryptoRng>(
        &self,
        receiver: ReceiverIndex,
        mac1: &[u8; MAC_LEN],
        source: SocketAddr,
        now: Instant,
        rng: &mut R,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sealed = seal(&self.seal_key, &nonce, mac1, self.cookie(source, now));
        emit_cookie_reply(receiver, &nonce, &sealed)
    }
}

/// The initiator's side, one per peer: the peer's mac1 key and the last
/// cookie it sent us. Outlives single handshake attempts.
#[derive(Clone)]
pub struct CookieJar {
    mac1_key: [u8; 32],
    open_key: [u8; 32],
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
}

impl core::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// An empty jar for the peer whose static public key is `peer_static`.
    pub fn new(peer_static: &[u8; 32]) -> CookieJar {
        CookieJar {
            mac1_key: mac1_key(peer_static),
            open_key: cookie_key(peer_static),
            cookie: None,
        }
    }

    /// The cookie to put in mac2, if one arrived within
    /// [`COOKIE_REFRESH_TIME`] of `now`.
    pub fn fresh_cookie(&self, now: Instant) -> Option<&[u8; COOKIE_LEN]> {
        match &self.cookie {
            Some((c, at)) if now.saturating_duration_since(*at) < COOKIE_REFRESH_TIME => Some(c),
            _ => None,
        }
    }

    /// Writes mac1 and mac2 into an emitted frame; returns mac1.
    pub(crate) fn stamp(&self, frame: &mut [u8], now: Instant) -> [u8; MAC_LEN] {
        stamp(frame, &self.mac1_key, self.fresh_cookie(now))
    }

    /// Opens a cookie reply to the initiation that carried `sent_mac1` and
    /// stores the cookie.
    pub(crate) fn accept(
        &mut self,
        reply: &CookieReplyFrame<'_>,
        sent_mac1: &[u8; MAC_LEN],
        now: Instant,
    ) -> Result<(), HandshakeError> {
        let cookie = open(&self.open_key, reply.nonce, sent_mac1, reply.sealed)
            .ok_or(HandshakeError::BadCookieReply)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }
}

/// Source address bytes the cookie is bound to: IP octets then port
/// (6 bytes for IPv4, 18 for IPv6), in a stack buffer.
fn address_bytes(source: SocketAddr) -> ([u8; 18], usize) {
    let mut buf = [0u8; 18];
    let ip_len = match source.ip() {
        std::net::IpAddr::V4(ip) => {
            buf[..4].copy_from_slice(&ip.octets());
            4
        }
        std::net::IpAddr::V6(ip) => {
            buf[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    buf[ip_len..ip_len + 2].copy_from_slice(&source.port().to_be_bytes());
    (buf, ip_len + 2)
}

/// The AES-256-GCM instance and GCM nonce for an extended 24-byte nonce.
fn extended_gcm(key: &[u8; 32], nonce: &[u8; COOKIE_NONCE_LEN]) -> (Aes256Gcm, [u8; 12]) {
    let (head, tail) = nonce.split_at(12);
    let subkey = blake3::keyed_hash(key, head);
    let cipher = Aes256Gcm::new(&(*subkey.as_bytes()).into());
    let mut gcm_nonce = [0u8; 12];
    gcm_nonce.copy_from_slice(tail);
    (cipher, gcm_nonce)
}

fn seal(
    key: &[u8; 32],
    nonce: &[u8; COOKIE_NONCE_LEN],
    ad: &[u8; MAC_LEN],
    cookie: [u8; COOKIE_LEN],
) -> [u8; COOKIE_LEN + COOKIE_TAG_LEN] {
    let (cipher, gcm_nonce) = extended_gcm(key, nonce);
    let mut buf = cookie;
    let mut out = [0u8; COOKIE_LEN + COOKIE_TAG_LEN];
    // AES-GCM fails only for inputs beyond 2^36 bytes; 16 bytes cannot.
    if let Ok(tag) = cipher.encrypt_inout_detached(&gcm_nonce.into(), ad, (&mut buf[..]).into()) {
        out[..COOKIE_LEN].copy_from_slice(&buf);
        out[COOKIE_LEN..].copy_from_slice(&tag);
    }
    out
}

fn open(
    key: &[u8; 32],
    nonce: &[u8; COOKIE_NONCE_LEN],
    ad: &[u8; MAC_LEN],
    sealed: &[u8; COOKIE_LEN + COOKIE_TAG_LEN],
) -> Option<[u8; COOKIE_LEN]> {
    let (cipher, gcm_nonce) = extended_gcm(key, nonce);
    let mut buf = [0u8; COOKIE_LEN];
    buf.copy_from_slice(&sealed[..COOKIE_LEN]);
    let mut tag = [0u8; COOKIE_TAG_LEN];
    tag.copy_from_slice(&sealed[COOKIE_LEN..]);
    cipher
        .decrypt_inout_detached(&gcm_nonce.into(), ad, (&mut buf[..]).into(), &tag.into())
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::super::frames::{parse, HandshakeFrame};
    use super::*;
    use rand::SeedableRng;
    use std::time::Duration;

    const STATIC: [u8; 32] = [3; 32];

    fn src() -> SocketAddr {
        "192.0.2.1:51820".parse().unwrap()
    }

    fn frame() -> Vec<u8> {
        let mut f = vec![0x38, 0, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4];
        f.extend_from_slice(&[0; MACS_LEN]);
        f
    }

    #[test]
    fn mac1_binds_the_responder_key() {
        let now = Instant::now();
        let jar = CookieJar::new(&STATIC);
        let mut f = frame();
        let mac1 = jar.stamp(&mut f, now);
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        assert!(checker.check_mac1(&f, &mac1));
        let other = CookieChecker::new(&[4; 32], [1; 32], now);
        assert!(!other.check_mac1(&f, &mac1));
        f[5] ^= 1;
        assert!(!checker.check_mac1(&f, &mac1));
    }

    #[test]
    fn cookie_round_trip_enables_mac2() {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        let mut jar = CookieJar::new(&STATIC);
        let mut f = frame();
        let mac1 = jar.stamp(&mut f, now);
        let m2: [u8; 16] = f[f.len() - 16..].try_into().unwrap();
        assert_eq!(m2, [0; 16], "no cookie yet");
        assert!(!checker.check_mac2(&f, &m2, src(), now));

        let reply = checker.reply(ReceiverIndex(1), &mac1, src(), now, &mut rng);
        let HandshakeFrame::CookieReply(view) = parse(&reply).unwrap() else {
            panic!("not a cookie reply")
        };
        // A reply opened against another mac1 is rejected.
        assert_eq!(
            jar.clone().accept(&view, &[9; 16], now),
            Err(HandshakeError::BadCookieReply)
        );
        jar.accept(&view, &mac1, now).unwrap();
        jar.stamp(&mut f, now);
        let m2: [u8; 16] = f[f.len() - 16..].try_into().unwrap();
        assert!(checker.check_mac2(&f, &m2, src(), now));
        // The cookie is bound to the source address and port.
        let other: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        assert!(!checker.check_mac2(&f, &m2, other, now));
        // It expires with the secret's epoch.
        assert!(!checker.check_mac2(&f, &m2, src(), now + COOKIE_REFRESH_TIME));
        // And the jar stops using it after COOKIE_REFRESH_TIME.
        assert!(jar.fresh_cookie(now + COOKIE_REFRESH_TIME).is_none());
        assert!(jar
            .fresh_cookie(now + COOKIE_REFRESH_TIME - Duration::from_secs(1))
            .is_some());
    }

    #[test]
    fn macs_differing_in_bits_that_cancel_out_are_unequal() {
        // Two bytes flipped by the same bit: their differences XOR to
        // zero, so only an OR of the differences sees them.
        let a = [0x5a; MAC_LEN];
        let mut b = a;
        b[0] ^= 1;
        b[1] ^= 1;
        assert!(ct_eq(&a, &a));
        assert!(!ct_eq(&a, &b));
        let now = Instant::now();
        let mut f = frame();
        let mac1 = CookieJar::new(&STATIC).stamp(&mut f, now);
        let mut forged = mac1;
        forged[3] ^= 0x40;
        forged[9] ^= 0x40;
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        assert!(checker.check_mac1(&f, &mac1));
        assert!(!checker.check_mac1(&f, &forged));
    }

    #[test]
    fn a_cookie_reply_opens_only_for_the_responder_it_came_from() {
        // The reply is sealed under a key derived from the responder's
        // static key: a jar for another responder, even with the right
        // mac1, cannot open it.
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        let mac1 = [5; 16];
        let reply = checker.reply(ReceiverIndex(1), &mac1, src(), now, &mut rng);
        let HandshakeFrame::CookieReply(view) = parse(&reply).unwrap() else {
            panic!("not a cookie reply")
        };
        assert_eq!(
            CookieJar::new(&[4; 32]).accept(&view, &mac1, now),
            Err(HandshakeError::BadCookieReply)
        );
        assert_eq!(CookieJar::new(&STATIC).accept(&view, &mac1, now), Ok(()));
    }

    #[test]
    fn an_ipv6_source_gets_a_cookie_bound_to_its_address_and_port() {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let from: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        let mut jar = CookieJar::new(&STATIC);
        let mut f = frame();
        let mac1 = jar.stamp(&mut f, now);
        let reply = checker.reply(ReceiverIndex(1), &mac1, from, now, &mut rng);
        let HandshakeFrame::CookieReply(view) = parse(&reply).unwrap() else {
            panic!("not a cookie reply")
        };
        jar.accept(&view, &mac1, now).unwrap();
        jar.stamp(&mut f, now);
        let m2: [u8; 16] = f[f.len() - 16..].try_into().unwrap();
        assert!(checker.check_mac2(&f, &m2, from, now));
        for other in [
            "[2001:db8::1]:51821",
            "[2001:db8::2]:51820",
            "192.0.2.1:51820",
        ] {
            let other: SocketAddr = other.parse().unwrap();
            assert!(!checker.check_mac2(&f, &m2, other, now), "{other}");
        }
    }

    #[test]
    fn tampered_cookie_reply_is_rejected() {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let checker = CookieChecker::new(&STATIC, [1; 32], now);
        let mac1 = [5; 16];
        let reply = checker.reply(ReceiverIndex(1), &mac1, src(), now, &mut rng);
        for i in 8..reply.len() {
            let mut r = reply;
            r[i] ^= 0x80;
            let HandshakeFrame::CookieReply(view) = parse(&r).unwrap() else {
                panic!("not a cookie reply")
            };
            let mut jar = CookieJar::new(&STATIC);
            assert!(jar.accept(&view, &mac1, now).is_err(), "byte {i}");
        }
    }
}
