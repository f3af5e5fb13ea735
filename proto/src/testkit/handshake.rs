//! Handshake fixtures for fuzzing and property tests: nodes with fixed
//! keys and certificates, and a raw Noise peer that writes any payload, so
//! a fuzzer reaches the payload and certificate checks behind the Noise
//! decryption (which random bytes never pass).
//!
//! Keys are derived from fixed seeds: seeds written once (see
//! `proto/tests/fuzz_seeds.rs`) stay valid from run to run. Nothing here
//! is secret.

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::{Builder, HandshakeState};

use crate::handshake::cookie::{mac1_key, stamp};
use crate::handshake::frames::{emit_init, emit_response, MACS_LEN};
use crate::handshake::{CookieJar, LocalIdentity, StaticKeypair, Trust, NOISE_PARAMS};
use crate::identity::{CaKeypair, Certificate, CertificateBody, Role};
use crate::ids::{ReceiverIndex, ServiceId, UserId};

/// Unix time (seconds) the fixtures' certificates are valid around.
pub const NOW_UNIX: u64 = 1_800_000_000;
/// The same, in nanoseconds (the handshakes' wall clock).
pub const NOW_NS: u64 = NOW_UNIX * 1_000_000_000;
/// The user id of [`Nodes::agent`].
pub const USER: UserId = UserId(42);
/// The service id the fixtures' end-to-end handshakes are for.
pub const SERVICE: ServiceId = ServiceId(7);
/// Prologue of hop handshakes (as `handshake::hop` writes it; the tests
/// below fail if the two differ).
pub const HOP_PROLOGUE: &[u8] = b"ztna-mesh hop handshake v1";
const E2E_PROLOGUE_LABEL: &[u8] = b"ztna-mesh e2e handshake v1";

/// Prologue of the end-to-end handshake for `(user, service)`.
pub fn e2e_prologue(user: UserId, service: ServiceId) -> Vec<u8> {
    let mut p = E2E_PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&user.0.to_be_bytes());
    p.extend_from_slice(&service.0.to_be_bytes());
    p
}

/// The fixtures' CA.
pub fn ca() -> CaKeypair {
    CaKeypair::from_seed(&[0x11; 32])
}

/// A CA the fixtures' nodes do not trust.
pub fn other_ca() -> CaKeypair {
    CaKeypair::from_seed(&[0x22; 32])
}

/// The X25519 key pair whose private key is `[seed; 32]` (clamped by
/// X25519 itself).
pub fn static_keypair(seed: u8) -> StaticKeypair {
    let private = [seed; 32];
    let mut public = [0u8; 32];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
        dh.set(&private);
        public.copy_from_slice(dh.pubkey());
    }
    StaticKeypair { private, public }
}

/// The certificate body the fixtures issue: valid an hour around
/// [`NOW_UNIX`], in group `eng`.
pub fn body(id: u32, name: &str, role: Role, static_key: [u8; 32]) -> CertificateBody {
    CertificateBody {
        id,
        name: name.into(),
        role,
        groups: vec!["eng".into()],
        static_key,
        not_before: NOW_UNIX - 60,
        not_after: NOW_UNIX + 3600,
    }
}

/// Issues `body` with `ca`; the fixtures' bodies always pass the caps.
pub fn issue(ca: &CaKeypair, body: CertificateBody) -> Certificate {
    match ca.issue(body) {
        Ok(c) => c,
        Err(e) => panic!("fixture certificate rejected: {e}"),
    }
}

/// An identity with the key of `key_seed` and a certificate from `ca`.
pub fn identity(ca: &CaKeypair, id: u32, name: &str, role: Role, key_seed: u8) -> LocalIdentity {
    let kp = static_keypair(key_seed);
    LocalIdentity::new(kp.private, issue(ca, body(id, name, role, kp.public)))
}

/// The fixed nodes: a user's agent, a relay, a connector, all from [`ca`].
#[derive(Debug)]
pub struct Nodes {
    /// The CA.
    pub ca: CaKeypair,
    /// User [`USER`] `alice` (key seed 1).
    pub agent: LocalIdentity,
    /// Relay 1 (key seed 2).
    pub relay: LocalIdentity,
    /// Connector 7 (key seed 3).
    pub connector: LocalIdentity,
}

impl Nodes {
    /// The fixed nodes.
    pub fn new() -> Nodes {
        let ca = ca();
        Nodes {
            agent: identity(&ca, USER.0, "alice", Role::User, 1),
            relay: identity(&ca, 1, "relay-1", Role::Relay, 2),
            connector: identity(&ca, 7, "connector-7", Role::Connector, 3),
            ca,
        }
    }

    /// What a relay accepts on hop handshakes: users, connectors, relays.
    pub fn relay_trust(&self) -> Trust {
        Trust::new(
            self.ca.public(),
            &[Role::User, Role::Connector, Role::Relay],
        )
    }

    /// What an agent accepts from its relay.
    pub fn agent_trust(&self) -> Trust {
        Trust::new(self.ca.public(), &[Role::Relay])
    }

    /// What a connector accepts on end-to-end handshakes.
    pub fn connector_trust(&self) -> Trust {
        Trust::new(self.ca.public(), &[Role::User])
    }

    /// What an agent accepts from a connector.
    pub fn e2e_trust(&self) -> Trust {
        Trust::new(self.ca.public(), &[Role::Connector])
    }
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes::new()
    }
}

/// The payload of an initiation: timestamp, sender index, certificate.
pub fn init_payload(timestamp: u64, sender: ReceiverIndex, cert: &[u8]) -> Vec<u8> {
    let mut p = timestamp.to_be_bytes().to_vec();
    p.extend_from_slice(&sender.0.to_be_bytes());
    p.extend_from_slice(cert);
    p
}

/// The payload of a response: sender index, certificate.
pub fn response_payload(sender: ReceiverIndex, cert: &[u8]) -> Vec<u8> {
    let mut p = sender.0.to_be_bytes().to_vec();
    p.extend_from_slice(cert);
    p
}

/// One side of a Noise IK handshake that writes whatever payload it is
/// given: the peer the checks in `handshake` must not trust blindly.
pub struct RawNoise(HandshakeState);

impl core::fmt::Debug for RawNoise {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawNoise").finish_non_exhaustive()
    }
}

fn builder<'a>(private: &'a [u8; 32], prologue: &'a [u8]) -> Option<Builder<'a>> {
    let params = NOISE_PARAMS.parse().ok()?;
    Builder::new(params)
        .local_private_key(private)
        .ok()?
        .prologue(prologue)
        .ok()
}

fn write(state: &mut HandshakeState, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; payload.len() + 128];
    let n = state.write_message(payload, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

impl RawNoise {
    /// An initiator with `private` to the responder `peer_static`; returns
    /// it and the first message carrying `payload` (`None` only for a
    /// payload too long for one Noise message).
    pub fn initiate(
        private: &[u8; 32],
        peer_static: &[u8; 32],
        prologue: &[u8],
        payload: &[u8],
    ) -> Option<(RawNoise, Vec<u8>)> {
        let mut state = builder(private, prologue)?
            .remote_public_key(peer_static)
            .ok()?
            .build_initiator()
            .ok()?;
        let msg = write(&mut state, payload)?;
        Some((RawNoise(state), msg))
    }

    /// A responder with `private` that read the first message `msg`
    /// (`None` if it does not decrypt).
    pub fn respond_to(private: &[u8; 32], prologue: &[u8], msg: &[u8]) -> Option<RawNoise> {
        let mut state = builder(private, prologue)?.build_responder().ok()?;
        let mut payload = vec![0u8; msg.len()];
        state.read_message(msg, &mut payload).ok()?;
        Some(RawNoise(state))
    }

    /// The second message, carrying `payload`.
    pub fn reply(mut self, payload: &[u8]) -> Option<Vec<u8>> {
        write(&mut self.0, payload)
    }
}

/// A `HandshakeInit` frame around a Noise message, with the mac1 the
/// responder whose static key is `responder_static` expects and no mac2.
pub fn hop_init_frame(
    sender: ReceiverIndex,
    noise: &[u8],
    responder_static: &[u8; 32],
) -> Option<Vec<u8>> {
    let mut f = emit_init(sender, noise).ok()?;
    stamp(&mut f, &mac1_key(responder_static), None);
    Some(f)
}

/// A `HandshakeResponse` frame around a Noise message, with the mac1 the
/// initiator whose static key is `initiator_static` expects.
pub fn hop_response_frame(
    sender: ReceiverIndex,
    receiver: ReceiverIndex,
    noise: &[u8],
    initiator_static: &[u8; 32],
) -> Option<Vec<u8>> {
    let mut f = emit_response(sender, receiver, noise).ok()?;
    stamp(&mut f, &mac1_key(initiator_static), None);
    Some(f)
}

/// Rewrites the macs at the end of any frame longer than both macs: mac1
/// for the node with static key `static_key`, mac2 from the cookie in
/// `jar` if it holds a fresh one at `now`. Shorter frames are left alone.
pub fn restamp(
    frame: &mut [u8],
    static_key: &[u8; 32],
    jar: Option<&CookieJar>,
    now: std::time::Instant,
) {
    if frame.len() <= MACS_LEN {
        return;
    }
    stamp(
        frame,
        &mac1_key(static_key),
        jar.and_then(|j| j.fresh_cookie(now)),
    );
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use rand::SeedableRng;

    use super::*;
    use crate::handshake::{E2eInitiator, E2eResponder, HopInitiator, HopResponder, InitOutcome};

    /// A raw Noise initiator with an honest payload is accepted: the
    /// prologue, framing and macs here are the ones `handshake` uses.
    #[test]
    fn raw_initiations_are_what_the_responders_accept() {
        let n = Nodes::new();
        let idx = ReceiverIndex(9);
        let payload = init_payload(NOW_NS, idx, &n.agent.certificate().to_bytes());
        let (_, noise) = RawNoise::initiate(
            n.agent.private_key(),
            n.relay.public_key(),
            HOP_PROLOGUE,
            &payload,
        )
        .unwrap();
        let frame = hop_init_frame(idx, &noise, n.relay.public_key()).unwrap();
        let now = Instant::now();
        let mut r = HopResponder::new(n.relay.clone(), n.relay_trust(), [7; 32], now);
        let src: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let out = r.handle_init(&frame, src, false, ReceiverIndex(1), now, NOW_NS, &mut rng);
        assert!(
            matches!(out, Ok(InitOutcome::Established { .. })),
            "{out:?}"
        );

        let (_, noise) = RawNoise::initiate(
            n.agent.private_key(),
            n.connector.public_key(),
            &e2e_prologue(USER, SERVICE),
            &payload,
        )
        .unwrap();
        let mut body = idx.0.to_be_bytes().to_vec();
        body.extend_from_slice(&noise);
        let mut e = E2eResponder::new(n.connector.clone(), n.connector_trust());
        let out = e.handle_init(&body, USER, SERVICE, ReceiverIndex(1), NOW_NS);
        assert!(out.is_ok(), "{out:?}");
    }

    /// A raw Noise responder with an honest payload completes both
    /// initiators.
    #[test]
    fn raw_responses_are_what_the_initiators_accept() {
        let n = Nodes::new();
        let now = Instant::now();
        let jar = CookieJar::new(n.relay.public_key());
        let (mut i, init) = HopInitiator::new(
            &n.agent,
            n.relay.public_key(),
            n.agent_trust(),
            ReceiverIndex(5),
            &jar,
            now,
            NOW_NS,
        )
        .unwrap();
        // The Noise message sits after the 10-byte header.
        let noise = &init[10..init.len() - MACS_LEN];
        let raw = RawNoise::respond_to(n.relay.private_key(), HOP_PROLOGUE, noise).unwrap();
        let cert = n.relay.certificate().to_bytes();
        let msg = raw
            .reply(&response_payload(ReceiverIndex(8), &cert))
            .unwrap();
        let frame = hop_response_frame(
            ReceiverIndex(8),
            ReceiverIndex(5),
            &msg,
            n.agent.public_key(),
        )
        .unwrap();
        let keys = i.handle_response(&frame, now, NOW_NS).unwrap();
        assert_eq!(keys.peer, *n.relay.certificate());

        let (mut e, body) = E2eInitiator::new(
            &n.agent,
            n.connector.public_key(),
            n.e2e_trust(),
            USER,
            SERVICE,
            ReceiverIndex(6),
            NOW_NS,
        )
        .unwrap();
        let raw = RawNoise::respond_to(
            n.connector.private_key(),
            &e2e_prologue(USER, SERVICE),
            &body[4..],
        )
        .unwrap();
        let cert = n.connector.certificate().to_bytes();
        let msg = raw
            .reply(&response_payload(ReceiverIndex(3), &cert))
            .unwrap();
        let mut down = 3u32.to_be_bytes().to_vec();
        down.extend_from_slice(&6u32.to_be_bytes());
        down.extend_from_slice(&msg);
        let keys = e.handle_response(&down, USER, SERVICE, NOW_NS).unwrap();
        assert_eq!(keys.peer, *n.connector.certificate());
    }

    #[test]
    fn fixed_keys_are_real_key_pairs() {
        let a = static_keypair(1);
        let b = static_keypair(1);
        assert_eq!(a.public, b.public);
        assert_ne!(a.public, static_keypair(2).public);
        assert_ne!(a.public, [0; 32]);
    }
}
