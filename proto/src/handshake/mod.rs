//! Handshakes: Sans-IO Noise IK state machines for hop sessions
//! (agent <-> relay, relay <-> relay) and end-to-end sessions
//! (agent <-> connector), with certificate binding, cookies, rate limiting
//! and timers.
//!
//! Bytes in, bytes out: callers pass received frames, `now` as an
//! [`Instant`](std::time::Instant), wall-clock time as unix nanoseconds (for
//! certificate validity and replay timestamps), and an RNG where one is
//! needed; they get back frames to send and raw 32-byte session keys. Noise
//! draws its ephemeral keys from the operating system through snow's
//! default resolver; nothing here reads a clock.
//!
//! * [`ik`]: the IK exchange and certificate checks both handshakes share.
//! * [`hop`]: hop framing, mac1/mac2 and cookie replies around it.
//! * [`e2e`]: end-to-end framing, carried inside data-plane frames, with a
//!   prologue that binds the (user, service) pair.
//! * [`frames`]: the wire layout of the hop handshake frames.
//! * [`cookie`]: mac1, mac2 and cookie replies.
//! * [`gate`]: a relay worker's checks before it queues an initiation
//!   (mac1, mac2 under load, a fair share per source).
//! * [`rate_limiter`]: per-source token buckets for initiations.
//! * [`timestamp`]: replay protection for initiations.
//! * [`timers`]: WireGuard's rekey and keepalive timing.

pub mod cookie;
pub mod e2e;
pub mod frames;
pub mod gate;
pub mod hop;
pub mod ik;
pub mod rate_limiter;
pub mod timers;
pub mod timestamp;

pub use cookie::{CookieChecker, CookieJar};
pub use e2e::{E2eInitiator, E2eResponder, E2eSessionKeys};
pub use frames::{parse, HandshakeFrame};
pub use gate::{Gate, GateDrop, GateLimits, HandshakeGate};
pub use hop::{HopInitiator, HopResponder, HopSessionKeys, InitOutcome};
pub use ik::{LocalIdentity, StaticKeypair, Trust, NOISE_PARAMS};
pub use rate_limiter::RateLimiter;
pub use timers::{PassiveKeepalive, SessionTimers};
pub use timestamp::{Freshness, MAX_CLOCK_SKEW};

use std::net::IpAddr;

use crate::identity::{CertError, Role};
use crate::ids::{ReceiverIndex, ServiceId, UserId};
use crate::wire::WireError;

/// Why a handshake frame was dropped or a handshake failed. The frame that
/// caused it should be dropped; the messages say what to fix when the cause
/// is configuration rather than an attack.
#[derive(Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The frame does not have the layout of its kind.
    #[error("malformed handshake frame: {0}")]
    Malformed(#[from] WireError),
    /// A hop handshake frame of a kind this side does not expect here
    /// (e.g. a response given to a responder).
    #[error("unexpected handshake frame kind for this side of the handshake")]
    UnexpectedKind,
    /// mac1 does not match this node's static key: the frame is for another
    /// node (or the sender has a stale key for us). Dropped before any
    /// Diffie-Hellman.
    #[error("handshake dropped before any DH: mac1 does not match this node's static key; the peer is configured with a different public key for us")]
    BadMac1,
    /// The source exceeded its handshake rate while we are under load.
    #[error("handshake from {0} dropped: per-source rate limit exceeded")]
    RateLimited(IpAddr),
    /// Noise could not decrypt or authenticate a message.
    #[error("handshake message failed to authenticate: the peer's static key is not the one configured here, or the message was altered")]
    Decrypt,
    /// The decrypted payload is not what the protocol expects.
    #[error("handshake payload malformed: {0}")]
    BadPayload(&'static str),
    /// The peer's certificate did not verify.
    #[error("peer certificate rejected: {0}")]
    Cert(#[from] CertError),
    /// The peer's certificate has a role not allowed here.
    #[error("certificate for `{name}` has role {role}, but only {allowed:?} may connect here; issue it with an allowed role or connect to the right node")]
    RoleNotAllowed {
        /// Certificate name.
        name: String,
        /// Its role.
        role: Role,
        /// The roles this side accepts.
        allowed: Vec<Role>,
    },
    /// The certificate's static key is not the key Noise authenticated.
    #[error("certificate for `{name}` binds a different static key than the one the peer used; reissue the certificate for the node's current key")]
    StaticKeyMismatch {
        /// Certificate name.
        name: String,
    },
    /// An initiation whose timestamp is not newer than the last accepted
    /// one from the same peer. Checked before the certificate, so the peer
    /// is named by its static key.
    #[error("handshake initiation from static key {peer}... replayed or out of order (timestamp {timestamp} <= last accepted {last}); check the peer's clock if this repeats")]
    Replay {
        /// The first bytes of the peer's static key, in hex.
        peer: String,
        /// Timestamp in the rejected initiation, unix ns.
        timestamp: u64,
        /// Greatest accepted so far, unix ns.
        last: u64,
    },
    /// An initiation whose timestamp is outside the freshness window
    /// ([`timestamp::Freshness`]): too far from our clock, or made before
    /// this node started (a captured initiation replayed after a restart).
    #[error("handshake initiation timestamp {timestamp} is more than {skew_secs} s from this node's clock ({now}) or older than its start; a replay, or a peer whose clock is off: run NTP on both")]
    StaleTimestamp {
        /// Timestamp in the rejected initiation, unix ns.
        timestamp: u64,
        /// Our clock, unix ns.
        now: u64,
        /// The allowed skew, seconds.
        skew_secs: u64,
    },
    /// A response or cookie reply addressed to another handshake.
    #[error("handshake frame is for receiver index {got}, not this handshake's {expected}")]
    WrongReceiver {
        /// Our index.
        expected: ReceiverIndex,
        /// The index in the frame.
        got: ReceiverIndex,
    },
    /// A cookie reply that does not open under the peer's key and our last
    /// mac1.
    #[error(
        "cookie reply rejected: not from the peer we initiated to, or not for our last initiation"
    )]
    BadCookieReply,
    /// The initiator already completed or failed; start a new one.
    #[error("this handshake already finished or failed; start a new initiation")]
    Finished,
    /// An end-to-end initiation whose certificate is not the user named in
    /// the frame's hop header: another user's, or not a user's at all
    /// (whatever roles the responder trusts, only a `User` certificate
    /// with the header's id opens a session for that id).
    #[error("end-to-end handshake for {frame} carries the {role} certificate of `{name}` (id {cert_user}); only the user certificate issued for that user id may open it")]
    UserMismatch {
        /// User id in the hop header.
        frame: UserId,
        /// Certificate name.
        name: String,
        /// The certificate's role.
        role: Role,
        /// The certificate's id.
        cert_user: UserId,
    },
    /// An end-to-end response for another (user, service) pair.
    #[error(
        "end-to-end handshake response is for {got_user}/{got_service}, expected {user}/{service}"
    )]
    WrongPair {
        /// Expected user.
        user: UserId,
        /// Expected service.
        service: ServiceId,
        /// User in the frame.
        got_user: UserId,
        /// Service in the frame.
        got_service: ServiceId,
    },
    /// The responder's policy does not list the certificate's id (a
    /// user not in `[[users]]`, a connector not in `[[connectors]]`).
    #[error("the {role} certificate of `{name}` (id {id}) is valid but its id is not in this node's policy; add it to the policy, or issue the certificate for a listed id")]
    NotInPolicy {
        /// Certificate name.
        name: String,
        /// The certificate's role.
        role: Role,
        /// The certificate's id.
        id: u32,
    },
    /// A connector or user certificate whose static key is not one the
    /// responder's policy pins for its id (`static_key` of its
    /// `[[connectors]]` entry, `static_keys` of its `[[users]]` entry):
    /// another certificate issued for that id.
    #[error("the {role} certificate of `{name}` (id {id}) certifies static key {key}..., not a key the policy pins for {role} {id}; if it was re-keyed or is a new device on purpose, put its key in the pin ({}), else revoke this certificate", pin_key(*role))]
    KeyNotPinned {
        /// Certificate name.
        name: String,
        /// The certificate's role.
        role: Role,
        /// The certificate's id.
        id: u32,
        /// The first 8 hex digits of the key it certifies.
        key: String,
    },
    /// snow refused to build or run the handshake (a bug or a bad key
    /// length, not a peer problem).
    #[error("Noise protocol error: {0}")]
    Noise(snow::Error),
}

/// Where the policy pins a key for a certificate of `role`, for
/// [`HandshakeError::KeyNotPinned`]'s message.
fn pin_key(role: Role) -> &'static str {
    match role {
        Role::User => "static_keys of its [[users]] entry",
        Role::Connector | Role::Relay => "static_key of its [[connectors]] entry",
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Shared fixtures: a CA and nodes with real keys and certificates.

    use super::*;
    use crate::identity::{CaKeypair, CertificateBody};

    /// Unix time the fixtures' certificates are valid around.
    pub const NOW_UNIX: u64 = 1_800_000_000;
    /// The same, in nanoseconds.
    pub const NOW_NS: u64 = NOW_UNIX * 1_000_000_000;

    pub fn ca() -> CaKeypair {
        CaKeypair::from_seed(&[0x11; 32])
    }

    /// A node with a fresh static key and a certificate from `ca`.
    pub fn node(ca: &CaKeypair, id: u32, name: &str, role: Role) -> LocalIdentity {
        let kp = StaticKeypair::generate().unwrap();
        node_with_key(ca, id, name, role, kp.private, kp.public)
    }

    pub fn node_with_key(
        ca: &CaKeypair,
        id: u32,
        name: &str,
        role: Role,
        private: [u8; 32],
        cert_key: [u8; 32],
    ) -> LocalIdentity {
        let cert = ca
            .issue(CertificateBody {
                id,
                name: name.into(),
                role,
                groups: vec!["eng".into()],
                static_key: cert_key,
                not_before: NOW_UNIX - 60,
                not_after: NOW_UNIX + 3600,
            })
            .unwrap();
        LocalIdentity::new(private, cert)
    }
}
