//! The Noise IK exchange with certificate binding, shared by the hop and
//! the end-to-end handshakes (they differ only in framing and prologue).
//!
//! Pattern `Noise_IK_25519_AESGCM_SHA256`:
//!
//! ```text
//! -> e, es, s, ss   payload: timestamp (u64 BE, unix ns) || initiator index (u32 BE) || initiator certificate
//! <- e, ee, se      payload: responder index (u32 BE) || responder certificate
//! ```
//!
//! Each side's receiver index travels in clear in the frame (it must be
//! readable before any cryptography) and again inside the authenticated
//! payload; the two must be equal, so an attacker cannot rewrite the index
//! and have the session complete with a wrong one.
//!
//! The initiator knows the responder's static key up front (configuration
//! or the responder's certificate). Each side checks the peer certificate
//! against the CA, the validity window, the allowed roles, and that the
//! certificate's `static_key` is the static key Noise authenticated. The
//! responder also requires the initiator's timestamp to be fresh (hop
//! handshakes: [`super::timestamp::Freshness`]) and greater than any it
//! accepted before from that static key, so a captured initiation cannot
//! be replayed (WireGuard's TAI64N rule); it checks that before the
//! certificate's signature.
//!
//! Keys come from snow's raw split: the first key protects initiator ->
//! responder traffic, the second responder -> initiator.

use snow::params::NoiseParams;
use snow::{Builder, HandshakeState};

use super::timestamp::{Freshness, TimestampTable};
use super::HandshakeError;
use crate::identity::{CaPublicKey, Certificate, Role};
use crate::ids::ReceiverIndex;

/// The Noise protocol name of both handshakes.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Bytes Noise adds to the first message around its payload.
const INIT_OVERHEAD: usize = 32 + 32 + 16 + 16;
/// Bytes Noise adds to the second message around its payload.
const RESPONSE_OVERHEAD: usize = 32 + 16;
/// Length of the timestamp at the start of the initiation payload.
const TIMESTAMP_LEN: usize = 8;
/// Length of a receiver index in a payload.
const INDEX_LEN: usize = 4;

fn params() -> Result<NoiseParams, HandshakeError> {
    NOISE_PARAMS.parse().map_err(HandshakeError::Noise)
}

/// An X25519 static key pair for Noise.
#[derive(Clone)]
pub struct StaticKeypair {
    /// The private key; keep it secret.
    pub private: [u8; 32],
    /// The public key, to put in the node's certificate.
    pub public: [u8; 32],
}

impl core::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Generates a key pair from the operating system's RNG (through
    /// snow's resolver, the same source Noise uses for ephemeral keys).
    pub fn generate() -> Result<StaticKeypair, HandshakeError> {
        let kp = Builder::new(params()?)
            .generate_keypair()
            .map_err(HandshakeError::Noise)?;
        let mut out = StaticKeypair {
            private: [0; 32],
            public: [0; 32],
        };
        if kp.private.len() != 32 || kp.public.len() != 32 {
            return Err(HandshakeError::BadPayload(
                "X25519 key of unexpected length",
            ));
        }
        out.private.copy_from_slice(&kp.private);
        out.public.copy_from_slice(&kp.public);
        Ok(out)
    }
}

/// This node's identity in handshakes: its static private key and the
/// certificate binding the matching public key.
#[derive(Clone)]
pub struct LocalIdentity {
    private_key: [u8; 32],
    certificate: Certificate,
    cert_bytes: Vec<u8>,
}

impl core::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("certificate", &self.certificate.body.name)
            .finish_non_exhaustive()
    }
}

impl LocalIdentity {
    /// Pairs a static private key with this node's certificate. The
    /// certificate must carry the matching public key; if it does not,
    /// every peer rejects our handshakes with
    /// [`HandshakeError::StaticKeyMismatch`].
    pub fn new(private_key: [u8; 32], certificate: Certificate) -> LocalIdentity {
        let cert_bytes = certificate.to_bytes();
        LocalIdentity {
            private_key,
            certificate,
            cert_bytes,
        }
    }

    /// This node's certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// This node's static public key, as its certificate states it.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.certificate.body.static_key
    }

    /// This node's static private key (to write it to a key file).
    pub fn private_key(&self) -> &[u8; 32] {
        &self.private_key
    }

    /// Whether `other` is this identity under another certificate: the
    /// same private key, so sessions, cookies and pinned keys stay valid
    /// when a node swaps one for the other (a certificate renewal).
    pub fn same_key(&self, other: &LocalIdentity) -> bool {
        self.private_key == other.private_key
            && self.certificate.body.static_key == other.certificate.body.static_key
    }
}

/// What a node accepts from peers: certificates signed by `ca` with one of
/// `allowed_roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The CA every peer certificate must be signed by.
    pub ca: CaPublicKey,
    /// Roles a peer may have, e.g. only `Relay` for a mesh link.
    pub allowed_roles: Vec<Role>,
}

impl Trust {
    /// Trust certificates from `ca` with any of `allowed_roles`.
    pub fn new(ca: CaPublicKey, allowed_roles: &[Role]) -> Trust {
        Trust {
            ca,
            allowed_roles: allowed_roles.to_vec(),
        }
    }

    /// Checks a peer's certificate and its binding to the static key Noise
    /// authenticated (`remote_static`).
    pub(crate) fn check(
        &self,
        cert: &Certificate,
        remote_static: Option<&[u8]>,
        unix_nanos: u64,
    ) -> Result<(), HandshakeError> {
        // Cheap comparisons first; the signature check is the costly part.
        if !self.allowed_roles.contains(&cert.body.role) {
            return Err(HandshakeError::RoleNotAllowed {
                name: cert.body.name.clone(),
                role: cert.body.role,
                allowed: self.allowed_roles.clone(),
            });
        }
        if remote_static != Some(&cert.body.static_key[..]) {
            return Err(HandshakeError::StaticKeyMismatch {
                name: cert.body.name.clone(),
            });
        }
        cert.verify(&self.ca, unix_nanos / 1_000_000_000)?;
        Ok(())
    }
}

/// What a completed IK exchange yields.
#[derive(Debug)]
pub(crate) struct Established {
    pub send_key: [u8; 32],
    pub recv_key: [u8; 32],
    pub peer: Certificate,
}

/// An initiator that has sent the first message and waits for the second.
pub(crate) struct IkInitiator {
    state: HandshakeState,
}

impl core::fmt::Debug for IkInitiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkInitiator").finish_non_exhaustive()
    }
}

impl IkInitiator {
    /// Writes the first message to the responder with static key
    /// `peer_static`; `unix_nanos` is the replay-protection timestamp and
    /// `local_index` the index this side put in the frame.
    pub(crate) fn start(
        local: &LocalIdentity,
        peer_static: &[u8; 32],
        prologue: &[u8],
        local_index: ReceiverIndex,
        unix_nanos: u64,
    ) -> Result<(IkInitiator, Vec<u8>), HandshakeError> {
        let mut state = Builder::new(params()?)
            .local_private_key(&local.private_key)
            .and_then(|b| b.remote_public_key(peer_static))
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(HandshakeError::Noise)?;
        let mut payload = Vec::with_capacity(TIMESTAMP_LEN + INDEX_LEN + local.cert_bytes.len());
        payload.extend_from_slice(&unix_nanos.to_be_bytes());
        payload.extend_from_slice(&local_index.0.to_be_bytes());
        payload.extend_from_slice(&local.cert_bytes);
        let mut msg = vec![0u8; INIT_OVERHEAD + payload.len()];
        let n = state
            .write_message(&payload, &mut msg)
            .map_err(HandshakeError::Noise)?;
        msg.truncate(n);
        Ok((IkInitiator { state }, msg))
    }

    /// Reads the second message, whose frame named `remote_index` as the
    /// responder's index, and checks the responder's certificate.
    pub(crate) fn finish(
        mut self,
        msg: &[u8],
        remote_index: ReceiverIndex,
        trust: &Trust,
        unix_nanos: u64,
    ) -> Result<Established, HandshakeError> {
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .state
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        let rest = take_index(payload.get(..n).unwrap_or_default(), remote_index)?;
        let cert = Certificate::from_bytes(rest)?;
        trust.check(&cert, self.state.get_remote_static(), unix_nanos)?;
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::BadPayload("Noise handshake not finished"));
        }
        let (i_to_r, r_to_i) = self.state.dangerously_get_raw_split();
        Ok(Established {
            send_key: i_to_r,
            recv_key: r_to_i,
            peer: cert,
        })
    }
}

/// Reads a first message, whose frame named `remote_index` as the
/// initiator's index, checks the initiator (timestamp, then certificate and
/// binding), runs the caller's extra check `accept` on the verified
/// certificate, and writes the second message carrying `local_index`.
///
/// The timestamp is checked first, as soon as Noise has decrypted the
/// payload and authenticated the initiator's static key (the `es` and
/// `ss` DH of the first message): against `freshness` if given, then
/// against the last one accepted from that static key. So a replayed or
/// stale initiation costs two DH, never the certificate's signature
/// verification. `timestamps` is updated only when everything checked out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn respond(
    local: &LocalIdentity,
    prologue: &[u8],
    msg: &[u8],
    remote_index: ReceiverIndex,
    local_index: ReceiverIndex,
    trust: &Trust,
    accept: &dyn Fn(&Certificate) -> Result<(), HandshakeError>,
    timestamps: &mut TimestampTable,
    freshness: Option<&Freshness>,
    unix_nanos: u64,
) -> Result<(Established, Vec<u8>), HandshakeError> {
    let mut state = Builder::new(params()?)
        .local_private_key(&local.private_key)
        .and_then(|b| b.prologue(prologue))
        .and_then(|b| b.build_responder())
        .map_err(HandshakeError::Noise)?;
    let mut payload = vec![0u8; msg.len()];
    let n = state
        .read_message(msg, &mut payload)
        .map_err(|_| HandshakeError::Decrypt)?;
    let payload = payload.get(..n).unwrap_or_default();
    if payload.len() < TIMESTAMP_LEN {
        return Err(HandshakeError::BadPayload(
            "initiation payload lacks a timestamp",
        ));
    }
    let (ts, rest) = payload.split_at(TIMESTAMP_LEN);
    let mut ts_bytes = [0u8; TIMESTAMP_LEN];
    ts_bytes.copy_from_slice(ts);
    let timestamp = u64::from_be_bytes(ts_bytes);
    let remote_static: [u8; 32] = state
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::BadPayload(
            "Noise gave no 32-byte static key for the initiator",
        ))?;
    // Cheap checks before the certificate's signature (see above).
    if let Some(f) = freshness {
        f.check(timestamp, unix_nanos)?;
    }
    timestamps.check(&remote_static, timestamp)?;
    let cert = Certificate::from_bytes(take_index(rest, remote_index)?)?;
    trust.check(&cert, Some(&remote_static[..]), unix_nanos)?;
    accept(&cert)?;

    let mut reply_payload = Vec::with_capacity(INDEX_LEN + local.cert_bytes.len());
    reply_payload.extend_from_slice(&local_index.0.to_be_bytes());
    reply_payload.extend_from_slice(&local.cert_bytes);
    let mut reply = vec![0u8; RESPONSE_OVERHEAD + reply_payload.len()];
    let n = state
        .write_message(&reply_payload, &mut reply)
        .map_err(HandshakeError::Noise)?;
    reply.truncate(n);
    if !state.is_handshake_finished() {
        return Err(HandshakeError::BadPayload("Noise handshake not finished"));
    }
    let (i_to_r, r_to_i) = state.dangerously_get_raw_split();
    timestamps.record(&remote_static, timestamp);
    Ok((
        Established {
            send_key: r_to_i,
            recv_key: i_to_r,
            peer: cert,
        },
        reply,
    ))
}

/// Splits the sender's index off the front of a payload and checks it is
/// the index the frame carried in clear.
fn take_index(payload: &[u8], claimed: ReceiverIndex) -> Result<&[u8], HandshakeError> {
    if payload.len() < INDEX_LEN {
        return Err(HandshakeError::BadPayload("payload lacks the sender index"));
    }
    let (idx, rest) = payload.split_at(INDEX_LEN);
    if idx != claimed.0.to_be_bytes() {
        return Err(HandshakeError::BadPayload(
            "sender index in the frame differs from the authenticated one",
        ));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::handshake::{Nodes, HOP_PROLOGUE, NOW_NS};

    /// The agent's initiation to the relay, receiver index 3, at `NOW_NS`.
    fn start_as_agent(n: &Nodes) -> (IkInitiator, Vec<u8>) {
        IkInitiator::start(
            &n.agent,
            n.relay.public_key(),
            HOP_PROLOGUE,
            ReceiverIndex(3),
            NOW_NS,
        )
        .unwrap()
    }

    /// The overhead constants are exactly what Noise adds around each
    /// message's payload: the buffer sized with them is filled to the last
    /// byte. (Killed the cargo-mutants survivors that enlarged them, e.g.
    /// `INIT_OVERHEAD = 32 * 32 + 16 + 16`: every handshake still worked,
    /// each message buffer ten times the size it needs.)
    #[test]
    fn noise_adds_exactly_the_overheads_the_buffers_are_sized_with() {
        let n = Nodes::new();
        let (initiator, init) = start_as_agent(&n);
        assert_eq!(
            init.len(),
            INIT_OVERHEAD + TIMESTAMP_LEN + INDEX_LEN + n.agent.cert_bytes.len()
        );
        let (responder, reply) = respond(
            &n.relay,
            HOP_PROLOGUE,
            &init,
            ReceiverIndex(3),
            ReceiverIndex(4),
            &n.relay_trust(),
            &|_| Ok(()),
            &mut TimestampTable::new(),
            None,
            NOW_NS,
        )
        .unwrap();
        assert_eq!(
            reply.len(),
            RESPONSE_OVERHEAD + INDEX_LEN + n.relay.cert_bytes.len()
        );
        let initiator = initiator
            .finish(&reply, ReceiverIndex(4), &n.agent_trust(), NOW_NS)
            .unwrap();
        assert_eq!(initiator.send_key, responder.recv_key);
        assert_eq!(initiator.recv_key, responder.send_key);
    }

    /// A local identity prints its certificate's name and never its
    /// private key; an initiator prints its type only (its Noise state
    /// holds the ephemeral key). (Killed the survivors that made both
    /// `Debug`s print nothing.)
    #[test]
    fn identities_and_initiators_print_no_key() {
        let n = Nodes::new();
        let text = format!("{:?}", n.agent);
        assert_eq!(text, r#"LocalIdentity { certificate: "alice", .. }"#);
        assert!(!text.contains(&format!("{:?}", n.agent.private_key())));
        let (initiator, _) = start_as_agent(&n);
        assert_eq!(format!("{initiator:?}"), "IkInitiator { .. }");
    }
}
