//! The end-to-end handshake between a user's agent (initiator, role
//! `User`) and a connector (responder, role `Connector`), carried through
//! the relays in `E2eHandshakeUp` / `E2eHandshakeDown` data-plane frames.
//!
//! It is the shared IK exchange ([`super::ik`]) with its own framing and
//! prologue. Relays authenticate each hop and route these frames by the
//! hop header's user and service ids like data; the functions here handle
//! only the frame *body* (the bytes after the 32-byte hop header) and take
//! the header's `(user, service)` as arguments. Body layout, big-endian:
//!
//! ```text
//! E2eHandshakeUp    0 sender index u32 | 4 Noise IK message 1 (rest of body)
//! E2eHandshakeDown  0 sender index u32 | 4 receiver index u32 | 8 Noise IK message 2
//! ```
//!
//! The Noise prologue is `"ztna-mesh e2e handshake v1" || user u32 ||
//! service u32`, so a handshake made for one (user, service) pair fails to
//! authenticate when replayed or re-routed for another. The connector also
//! requires the agent's certificate id to equal the header's user id: a
//! user cannot open a session that claims another user's id. No mac1 or
//! cookies here: connectors receive these frames only from relays over
//! authenticated hops.

use super::frames::{NOISE_INIT_MIN_LEN, NOISE_RESPONSE_MIN_LEN};
use super::ik::{respond, IkInitiator, LocalIdentity, Trust};
use super::timestamp::TimestampTable;
use super::HandshakeError;
use crate::identity::{Certificate, Role};
use crate::ids::{ReceiverIndex, ServiceId, UserId};
use crate::wire::WireError;

/// Bytes of an `E2eHandshakeUp` body before the Noise message.
pub const E2E_INIT_HEADER_LEN: usize = 4;
/// Bytes of an `E2eHandshakeDown` body before the Noise message.
pub const E2E_RESPONSE_HEADER_LEN: usize = 8;
/// The longest `E2eHandshakeUp` body: the header and a Noise IK first
/// message whose payload is the timestamp (8), the sender index (4) and
/// the largest certificate (the hop initiation's Noise message, at most
/// as long). Within [`crate::wire::MAX_E2E_HANDSHAKE_BODY`].
pub const E2E_INIT_MAX_LEN: usize =
    E2E_INIT_HEADER_LEN + NOISE_INIT_MIN_LEN + 8 + 4 + crate::identity::MAX_CERT_LEN;
/// The longest `E2eHandshakeDown` body: the header and a Noise IK second
/// message whose payload is the sender index (4) and the largest
/// certificate. Within [`crate::wire::MAX_E2E_HANDSHAKE_BODY`].
pub const E2E_RESPONSE_MAX_LEN: usize =
    E2E_RESPONSE_HEADER_LEN + NOISE_RESPONSE_MIN_LEN + 4 + crate::identity::MAX_CERT_LEN;

const E2E_PROLOGUE_LABEL: &[u8] = b"ztna-mesh e2e handshake v1";

/// The prologue binding a handshake to one (user, service) pair.
fn prologue(user: UserId, service: ServiceId) -> Vec<u8> {
    let mut p = Vec::with_capacity(E2E_PROLOGUE_LABEL.len() + 8);
    p.extend_from_slice(E2E_PROLOGUE_LABEL);
    p.extend_from_slice(&user.0.to_be_bytes());
    p.extend_from_slice(&service.0.to_be_bytes());
    p
}

/// A checked view of an `E2eHandshakeUp` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E2eInitBody<'a> {
    /// The agent's index for this session.
    pub sender: ReceiverIndex,
    /// Noise IK message 1.
    pub noise: &'a [u8],
}

/// A checked view of an `E2eHandshakeDown` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E2eResponseBody<'a> {
    /// The connector's index for this session.
    pub sender: ReceiverIndex,
    /// The agent's index, echoed.
    pub receiver: ReceiverIndex,
    /// Noise IK message 2.
    pub noise: &'a [u8],
}

impl<'a> E2eInitBody<'a> {
    /// Checks the length and splits the body. Never panics.
    pub fn parse(body: &'a [u8]) -> Result<E2eInitBody<'a>, WireError> {
        if body.len() < E2E_INIT_HEADER_LEN + NOISE_INIT_MIN_LEN {
            return Err(WireError::Truncated);
        }
        let (idx, noise) = body.split_at(E2E_INIT_HEADER_LEN);
        Ok(E2eInitBody {
            sender: ReceiverIndex(u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]])),
            noise,
        })
    }
}

impl<'a> E2eResponseBody<'a> {
    /// Checks the length and splits the body. Never panics.
    pub fn parse(body: &'a [u8]) -> Result<E2eResponseBody<'a>, WireError> {
        if body.len() < E2E_RESPONSE_HEADER_LEN + NOISE_RESPONSE_MIN_LEN {
            return Err(WireError::Truncated);
        }
        let (idx, noise) = body.split_at(E2E_RESPONSE_HEADER_LEN);
        Ok(E2eResponseBody {
            sender: ReceiverIndex(u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]])),
            receiver: ReceiverIndex(u32::from_be_bytes([idx[4], idx[5], idx[6], idx[7]])),
            noise,
        })
    }
}

/// The outcome of a completed end-to-end handshake: raw AEAD keys and the
/// verified peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2eSessionKeys {
    /// Index the peer puts in records to us.
    pub local_index: ReceiverIndex,
    /// Index we put in records to the peer.
    pub remote_index: ReceiverIndex,
    /// Key for records we seal.
    pub send_key: [u8; 32],
    /// Key for records we open.
    pub recv_key: [u8; 32],
    /// The peer's verified certificate.
    pub peer: Certificate,
}

/// The agent's side of one end-to-end handshake attempt.
#[derive(Debug)]
pub struct E2eInitiator {
    ik: Option<IkInitiator>,
    local_index: ReceiverIndex,
    user: UserId,
    service: ServiceId,
    trust: Trust,
}

impl E2eInitiator {
    /// Starts a handshake from `user` to the connector of `service` whose
    /// static key is `connector_static` (from configuration). Returns the
    /// initiator and the `E2eHandshakeUp` body. The connector's
    /// certificate must satisfy `trust` (normally `Role::Connector` only).
    pub fn new(
        local: &LocalIdentity,
        connector_static: &[u8; 32],
        trust: Trust,
        user: UserId,
        service: ServiceId,
        local_index: ReceiverIndex,
        unix_nanos: u64,
    ) -> Result<(E2eInitiator, Vec<u8>), HandshakeError> {
        let (ik, noise) = IkInitiator::start(
            local,
            connector_static,
            &prologue(user, service),
            local_index,
            unix_nanos,
        )?;
        let mut body = Vec::with_capacity(E2E_INIT_HEADER_LEN + noise.len());
        body.extend_from_slice(&local_index.0.to_be_bytes());
        body.extend_from_slice(&noise);
        Ok((
            E2eInitiator {
                ik: Some(ik),
                local_index,
                user,
                service,
                trust,
            },
            body,
        ))
    }

    /// Our index for this session.
    pub fn local_index(&self) -> ReceiverIndex {
        self.local_index
    }

    /// Handles an `E2eHandshakeDown` body that arrived with `user` and
    /// `service` in its hop header.
    pub fn handle_response(
        &mut self,
        body: &[u8],
        user: UserId,
        service: ServiceId,
        unix_nanos: u64,
    ) -> Result<E2eSessionKeys, HandshakeError> {
        if (user, service) != (self.user, self.service) {
            return Err(HandshakeError::WrongPair {
                user: self.user,
                service: self.service,
                got_user: user,
                got_service: service,
            });
        }
        let resp = E2eResponseBody::parse(body)?;
        if resp.receiver != self.local_index {
            return Err(HandshakeError::WrongReceiver {
                expected: self.local_index,
                got: resp.receiver,
            });
        }
        let ik = self.ik.take().ok_or(HandshakeError::Finished)?;
        let done = ik.finish(resp.noise, resp.sender, &self.trust, unix_nanos)?;
        Ok(E2eSessionKeys {
            local_index: self.local_index,
            remote_index: resp.sender,
            send_key: done.send_key,
            recv_key: done.recv_key,
            peer: done.peer,
        })
    }
}

/// The connector's side: one per connector, long-lived.
#[derive(Debug)]
pub struct E2eResponder {
    local: LocalIdentity,
    trust: Trust,
    timestamps: TimestampTable,
}

impl E2eResponder {
    /// A responder for the connector `local`, accepting agents that satisfy
    /// `trust` (normally `Role::User` only).
    pub fn new(local: LocalIdentity, trust: Trust) -> E2eResponder {
        E2eResponder {
            local,
            trust,
            timestamps: TimestampTable::new(),
        }
    }

    /// Answers from now on with `local`'s certificate: a renewal, which
    /// must keep the static key ([`LocalIdentity::same_key`]) so that
    /// sessions, cookies and the peers' pinned key stay valid. Returns
    /// false and changes nothing when the key differs.
    pub fn renew(&mut self, local: LocalIdentity) -> bool {
        if !self.local.same_key(&local) {
            return false;
        }
        self.local = local;
        true
    }

    /// Handles an `E2eHandshakeUp` body that arrived with `user` and
    /// `service` in its hop header. Returns the `E2eHandshakeDown` body to
    /// send back (with the same user and service) and the session.
    pub fn handle_init(
        &mut self,
        body: &[u8],
        user: UserId,
        service: ServiceId,
        local_index: ReceiverIndex,
        unix_nanos: u64,
    ) -> Result<(Vec<u8>, E2eSessionKeys), HandshakeError> {
        let init = E2eInitBody::parse(body)?;
        // The header's user id is bound to a `User` certificate with that
        // id, for every role: a connector's or a relay's certificate (were
        // `trust` to admit one) opens no session in any user's name.
        let same_user = |cert: &Certificate| {
            if cert.body.role != Role::User || cert.body.id != user.0 {
                return Err(HandshakeError::UserMismatch {
                    frame: user,
                    name: cert.body.name.clone(),
                    role: cert.body.role,
                    cert_user: UserId(cert.body.id),
                });
            }
            Ok(())
        };
        let (done, noise) = respond(
            &self.local,
            &prologue(user, service),
            init.noise,
            init.sender,
            local_index,
            &self.trust,
            &same_user,
            &mut self.timestamps,
            None,
            unix_nanos,
        )?;
        let mut reply = Vec::with_capacity(E2E_RESPONSE_HEADER_LEN + noise.len());
        reply.extend_from_slice(&local_index.0.to_be_bytes());
        reply.extend_from_slice(&init.sender.0.to_be_bytes());
        reply.extend_from_slice(&noise);
        Ok((
            reply,
            E2eSessionKeys {
                local_index,
                remote_index: init.sender,
                send_key: done.send_key,
                recv_key: done.recv_key,
                peer: done.peer,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::identity::{CaKeypair, CertError};

    const U: UserId = UserId(42);
    const S: ServiceId = ServiceId(7);

    struct Setup {
        agent: LocalIdentity,
        connector: LocalIdentity,
        responder: E2eResponder,
    }

    fn setup() -> Setup {
        let ca = ca();
        let agent = node(&ca, 42, "alice", Role::User);
        let connector = node(&ca, 900, "pg-connector", Role::Connector);
        let responder =
            E2eResponder::new(connector.clone(), Trust::new(ca.public(), &[Role::User]));
        Setup {
            agent,
            connector,
            responder,
        }
    }

    fn start(s: &Setup, user: UserId, service: ServiceId, ts: u64) -> (E2eInitiator, Vec<u8>) {
        E2eInitiator::new(
            &s.agent,
            s.connector.public_key(),
            Trust::new(ca().public(), &[Role::Connector]),
            user,
            service,
            ReceiverIndex(11),
            ts,
        )
        .unwrap()
    }

    #[test]
    fn bodies_shorter_than_a_noise_message_are_truncated_not_a_panic() {
        let init_min = E2E_INIT_HEADER_LEN + NOISE_INIT_MIN_LEN;
        let resp_min = E2E_RESPONSE_HEADER_LEN + NOISE_RESPONSE_MIN_LEN;
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..init_min {
            assert_eq!(
                E2eInitBody::parse(&bytes[..len]),
                Err(WireError::Truncated),
                "init body of {len} bytes"
            );
        }
        for len in 0..resp_min {
            assert_eq!(
                E2eResponseBody::parse(&bytes[..len]),
                Err(WireError::Truncated),
                "response body of {len} bytes"
            );
        }
        // The shortest bodies parse, their indices read big-endian.
        let init = E2eInitBody::parse(&bytes[..init_min]).unwrap();
        assert_eq!(init.sender, ReceiverIndex(0x0001_0203));
        assert_eq!(init.noise, &bytes[E2E_INIT_HEADER_LEN..init_min]);
        let resp = E2eResponseBody::parse(&bytes[..resp_min]).unwrap();
        assert_eq!(resp.sender, ReceiverIndex(0x0001_0203));
        assert_eq!(resp.receiver, ReceiverIndex(0x0405_0607));
        assert_eq!(resp.noise, &bytes[E2E_RESPONSE_HEADER_LEN..resp_min]);
    }

    #[test]
    fn renewed_responder_answers_with_the_new_certificate_only_for_the_same_key() {
        let mut s = setup();
        let key = *s.connector.private_key();
        let public = *s.connector.public_key();
        let renewed = node_with_key(
            &ca(),
            900,
            "pg-connector-renewed",
            Role::Connector,
            key,
            public,
        );
        // Another key under the same id is not a renewal: refused, and the
        // responder keeps answering with the old certificate.
        let other = node(&ca(), 900, "pg-connector-other-key", Role::Connector);
        assert!(!s.responder.renew(other));
        let (mut init, body) = start(&s, U, S, NOW_NS);
        let (reply, _) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        let keys = init.handle_response(&reply, U, S, NOW_NS).unwrap();
        assert_eq!(keys.peer.body.name, "pg-connector");

        assert!(s.responder.renew(renewed));
        let (mut init, body) = start(&s, U, S, NOW_NS + 1);
        let (reply, _) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(23), NOW_NS + 1)
            .unwrap();
        let keys = init.handle_response(&reply, U, S, NOW_NS + 1).unwrap();
        assert_eq!(keys.peer.body.name, "pg-connector-renewed");
    }

    #[test]
    fn round_trip_keys_cross_match() {
        let mut s = setup();
        let (mut init, body) = start(&s, U, S, NOW_NS);
        assert_eq!(&body[..4], &11u32.to_be_bytes());
        assert_eq!(init.local_index(), ReceiverIndex(11));
        let (reply, c_keys) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        let a_keys = init.handle_response(&reply, U, S, NOW_NS).unwrap();
        assert_eq!(a_keys.send_key, c_keys.recv_key);
        assert_eq!(a_keys.recv_key, c_keys.send_key);
        assert_eq!(
            (a_keys.local_index, a_keys.remote_index),
            (ReceiverIndex(11), ReceiverIndex(22))
        );
        assert_eq!(
            (c_keys.local_index, c_keys.remote_index),
            (ReceiverIndex(22), ReceiverIndex(11))
        );
        assert_eq!(a_keys.peer.body.role, Role::Connector);
        assert_eq!(c_keys.peer.body.name, "alice");
    }

    #[test]
    fn e2e_and_hop_keys_differ_for_the_same_parties() {
        // Different prologues: the same static keys never yield related
        // transcripts across the two handshakes or across services.
        let mut s = setup();
        let (_, b1) = start(&s, U, S, NOW_NS);
        let (_, b2) = start(&s, U, ServiceId(8), NOW_NS + 1);
        let r1 = s.responder.handle_init(&b1, U, S, ReceiverIndex(1), NOW_NS);
        let r2 = s
            .responder
            .handle_init(&b2, U, ServiceId(8), ReceiverIndex(2), NOW_NS);
        assert_ne!(r1.unwrap().1.send_key, r2.unwrap().1.send_key);
    }

    #[test]
    fn replay_for_another_service_fails() {
        let mut s = setup();
        let (_, body) = start(&s, U, S, NOW_NS);
        // A relay re-routes the same initiation to another service.
        assert_eq!(
            s.responder
                .handle_init(&body, U, ServiceId(8), ReceiverIndex(1), NOW_NS),
            Err(HandshakeError::Decrypt)
        );
        // Or claims another user id: the prologue differs too.
        assert_eq!(
            s.responder
                .handle_init(&body, UserId(43), S, ReceiverIndex(1), NOW_NS),
            Err(HandshakeError::Decrypt)
        );
        // The genuine pair still works, once.
        assert!(s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(1), NOW_NS)
            .is_ok());
        assert!(matches!(
            s.responder
                .handle_init(&body, U, S, ReceiverIndex(1), NOW_NS),
            Err(HandshakeError::Replay { .. })
        ));
    }

    #[test]
    fn certificate_must_be_for_the_header_user() {
        let mut s = setup();
        // bob (user 43) builds a handshake that claims user 42 in the header.
        let bob = node(&ca(), 43, "bob", Role::User);
        let (_, body) = E2eInitiator::new(
            &bob,
            s.connector.public_key(),
            Trust::new(ca().public(), &[Role::Connector]),
            U,
            S,
            ReceiverIndex(1),
            NOW_NS,
        )
        .unwrap();
        assert!(matches!(
            s.responder
                .handle_init(&body, U, S, ReceiverIndex(1), NOW_NS),
            Err(HandshakeError::UserMismatch {
                cert_user: UserId(43),
                ..
            })
        ));
        // The failed attempt recorded no timestamp: bob's honest handshake
        // with the same timestamp succeeds.
        let (_, body) = E2eInitiator::new(
            &bob,
            s.connector.public_key(),
            Trust::new(ca().public(), &[Role::Connector]),
            UserId(43),
            S,
            ReceiverIndex(1),
            NOW_NS,
        )
        .unwrap();
        assert!(s
            .responder
            .handle_init(&body, UserId(43), S, ReceiverIndex(1), NOW_NS)
            .is_ok());
    }

    #[test]
    fn only_a_user_certificate_opens_a_session_for_its_id_whatever_the_trust() {
        // A connector misconfigured to trust connectors and relays too: a
        // certificate of either role with the header's id still opens
        // nothing in that user's name.
        let ca = ca();
        let s = setup();
        let mut lax = E2eResponder::new(
            s.connector.clone(),
            Trust::new(ca.public(), &[Role::User, Role::Connector, Role::Relay]),
        );
        for role in [Role::Connector, Role::Relay] {
            let other = node(&ca, U.0, "not-a-user", role);
            let (_, body) = E2eInitiator::new(
                &other,
                s.connector.public_key(),
                Trust::new(ca.public(), &[Role::Connector]),
                U,
                S,
                ReceiverIndex(1),
                NOW_NS,
            )
            .unwrap();
            assert!(
                matches!(
                    lax.handle_init(&body, U, S, ReceiverIndex(1), NOW_NS),
                    Err(HandshakeError::UserMismatch { role: r, cert_user: UserId(42), .. }) if r == role
                ),
                "{role}"
            );
        }
        // The user itself still gets in.
        let (_, body) = start(&s, U, S, NOW_NS);
        assert!(lax
            .handle_init(&body, U, S, ReceiverIndex(2), NOW_NS)
            .is_ok());
    }

    #[test]
    fn initiator_rejects_a_connector_from_another_ca_or_expired() {
        // The connector's certificate is from another CA; it trusts ours
        // for the agent, so it answers.
        let rogue = CaKeypair::from_seed(&[0x99; 32]);
        let mut s = setup();
        s.connector = node(&rogue, 900, "pg-connector", Role::Connector);
        s.responder = E2eResponder::new(
            s.connector.clone(),
            Trust::new(ca().public(), &[Role::User]),
        );
        let (mut init, body) = start(&s, U, S, NOW_NS);
        let (reply, _) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        assert_eq!(
            init.handle_response(&reply, U, S, NOW_NS),
            Err(HandshakeError::Cert(CertError::BadSignature(
                "pg-connector".into()
            )))
        );
        // Ours, but the agent's clock is past its not_after.
        let mut s = setup();
        let (mut init, body) = start(&s, U, S, NOW_NS);
        let (reply, _) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        let late = (NOW_UNIX + 7200) * 1_000_000_000;
        assert!(matches!(
            init.handle_response(&reply, U, S, late),
            Err(HandshakeError::Cert(CertError::Expired { .. }))
        ));
    }

    #[test]
    fn connector_role_is_required_of_the_responder() {
        let ca = ca();
        let s = setup();
        // A relay pretending to be the connector (agent configured with its key).
        let relay = node(&ca, 1, "relay-1", Role::Relay);
        let mut fake = E2eResponder::new(relay.clone(), Trust::new(ca.public(), &[Role::User]));
        let (mut init, body) = E2eInitiator::new(
            &s.agent,
            relay.public_key(),
            Trust::new(ca.public(), &[Role::Connector]),
            U,
            S,
            ReceiverIndex(11),
            NOW_NS,
        )
        .unwrap();
        let (reply, _) = fake
            .handle_init(&body, U, S, ReceiverIndex(5), NOW_NS)
            .unwrap();
        assert!(matches!(
            init.handle_response(&reply, U, S, NOW_NS),
            Err(HandshakeError::RoleNotAllowed {
                role: Role::Relay,
                ..
            })
        ));
    }

    #[test]
    fn response_for_another_pair_or_index_is_rejected() {
        let mut s = setup();
        let (mut init, body) = start(&s, U, S, NOW_NS);
        let (reply, _) = s
            .responder
            .handle_init(&body, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        assert!(matches!(
            init.handle_response(&reply, U, ServiceId(8), NOW_NS),
            Err(HandshakeError::WrongPair { .. })
        ));
        let mut other = reply.clone();
        other[7] ^= 1;
        assert!(matches!(
            init.handle_response(&other, U, S, NOW_NS),
            Err(HandshakeError::WrongReceiver { .. })
        ));
        assert_eq!(
            init.handle_response(&reply[..20], U, S, NOW_NS),
            Err(HandshakeError::Malformed(WireError::Truncated))
        );
        assert!(init.handle_response(&reply, U, S, NOW_NS).is_ok());
    }

    /// A node whose certificate is as long as a certificate can be:
    /// the longest name and the most groups of the longest names.
    fn largest(id: u32, role: Role) -> LocalIdentity {
        use crate::identity::{
            CertificateBody, MAX_CERT_LEN, MAX_GROUPS, MAX_GROUP_LEN, MAX_NAME_LEN,
        };
        let kp = super::super::StaticKeypair::generate().unwrap();
        let cert = ca()
            .issue(CertificateBody {
                id,
                name: "n".repeat(MAX_NAME_LEN),
                role,
                groups: (0..MAX_GROUPS)
                    .map(|g| format!("{g:0>width$}", width = MAX_GROUP_LEN))
                    .collect(),
                static_key: kp.public,
                not_before: NOW_UNIX - 60,
                not_after: NOW_UNIX + 3600,
            })
            .unwrap();
        assert_eq!(cert.to_bytes().len(), MAX_CERT_LEN);
        LocalIdentity::new(kp.private, cert)
    }

    /// The end-to-end handshake's two senders at their largest (both
    /// certificates as long as certificates get) write bodies of exactly
    /// the documented maxima, which the frame bound admits: a relay or a
    /// connector never refuses a genuine handshake as too long.
    #[test]
    fn the_largest_handshake_bodies_fit_the_frame_bound() {
        use crate::wire::{Frame, Kind, HEADER_LEN, MAX_E2E_HANDSHAKE_BODY};
        let agent = largest(42, Role::User);
        let connector = largest(900, Role::Connector);
        let mut responder =
            E2eResponder::new(connector.clone(), Trust::new(ca().public(), &[Role::User]));
        let (mut init, up) = E2eInitiator::new(
            &agent,
            connector.public_key(),
            Trust::new(ca().public(), &[Role::Connector]),
            U,
            S,
            ReceiverIndex(11),
            NOW_NS,
        )
        .unwrap();
        assert_eq!(up.len(), E2E_INIT_MAX_LEN);
        let (down, _) = responder
            .handle_init(&up, U, S, ReceiverIndex(22), NOW_NS)
            .unwrap();
        assert_eq!(down.len(), E2E_RESPONSE_MAX_LEN);
        assert!(init.handle_response(&down, U, S, NOW_NS).is_ok());
        for (kind, body) in [(Kind::E2eHandshakeUp, &up), (Kind::E2eHandshakeDown, &down)] {
            assert!(body.len() <= MAX_E2E_HANDSHAKE_BODY);
            let mut frame = vec![0u8; HEADER_LEN + body.len()];
            frame[0] = kind.byte0();
            frame[2..4].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            frame[HEADER_LEN..].copy_from_slice(body);
            assert!(Frame::new_checked(&frame[..]).is_ok(), "{kind:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_body_to_the_connector_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
        ) {
            let mut s = setup();
            let _ = s.responder.handle_init(&bytes, U, S, ReceiverIndex(1), NOW_NS);
        }
    }
}
