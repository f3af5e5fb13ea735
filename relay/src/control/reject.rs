//! Why the control thread rejected a hop handshake frame: the breakdown of
//! [`ControlStats::handshakes_failed`](super::ControlStats), for
//! `/metrics` (`ztna_handshakes_rejected_total{reason}`) and the exit
//! report.
//!
//! Handshakes that complete but are then refused (a revoked certificate, a
//! relay key in no record of the mesh view) are not failures of the
//! handshake: they have their own counters (`revoked_refused`,
//! `relay_refused`).

use proto::handshake::HandshakeError;

/// Why a hop handshake frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HandshakeReject {
    /// The frame, the Noise payload or the message kind is not what the
    /// handshake expects (also what the datapath let through by length but
    /// the control thread could not parse).
    Malformed = 0,
    /// Every receiver index of the worker is in use.
    NoIndex,
    /// mac1 does not match this relay's key: the initiator has another key
    /// for us, or the frame was not meant for us.
    BadMac1,
    /// Under load, the source exceeded its initiation rate.
    RateLimited,
    /// Noise could not authenticate the message.
    Decrypt,
    /// The peer's certificate did not verify: another CA, outside its
    /// validity window, a bad field.
    Certificate,
    /// The certificate's role may not connect here (e.g. a relay
    /// certificate on a standalone relay).
    Role,
    /// The certificate binds another static key than the one Noise
    /// authenticated.
    StaticKey,
    /// The initiation's timestamp is not newer than the last accepted one
    /// of that key (a replayed initiation).
    Replay,
    /// The initiation's timestamp is outside the freshness window: off
    /// from this relay's clock by more than the allowed skew, or made
    /// before the relay started (a capture replayed after a restart).
    StaleTimestamp,
    /// A response or cookie reply that answers no initiation of ours (mesh
    /// links only).
    Unanswered,
    /// Anything else (a Noise library error, a pair mismatch).
    Other,
    /// A valid user or connector certificate whose id the current policy
    /// does not list: it holds no session slot.
    NotInPolicy,
    /// A connector certificate whose static key is not the one its
    /// `[[connectors]]` entry pins (`static_key`).
    PinnedKey,
}

impl HandshakeReject {
    /// Number of reasons.
    pub const COUNT: usize = 14;
    /// All reasons, in counter order.
    pub const ALL: [HandshakeReject; Self::COUNT] = [
        HandshakeReject::Malformed,
        HandshakeReject::NoIndex,
        HandshakeReject::BadMac1,
        HandshakeReject::RateLimited,
        HandshakeReject::Decrypt,
        HandshakeReject::Certificate,
        HandshakeReject::Role,
        HandshakeReject::StaticKey,
        HandshakeReject::Replay,
        HandshakeReject::StaleTimestamp,
        HandshakeReject::Unanswered,
        HandshakeReject::Other,
        HandshakeReject::NotInPolicy,
        HandshakeReject::PinnedKey,
    ];

    /// A short, stable name for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            HandshakeReject::Malformed => "malformed",
            HandshakeReject::NoIndex => "no_index",
            HandshakeReject::BadMac1 => "bad_mac1",
            HandshakeReject::RateLimited => "rate_limited",
            HandshakeReject::Decrypt => "decrypt",
            HandshakeReject::Certificate => "certificate",
            HandshakeReject::Role => "role",
            HandshakeReject::StaticKey => "static_key",
            HandshakeReject::Replay => "replay",
            HandshakeReject::StaleTimestamp => "stale_timestamp",
            HandshakeReject::Unanswered => "unanswered",
            HandshakeReject::Other => "other",
            HandshakeReject::NotInPolicy => "not_in_policy",
            HandshakeReject::PinnedKey => "pinned_key",
        }
    }

    /// The reason for a handshake that failed with `e`.
    pub fn of(e: &HandshakeError) -> HandshakeReject {
        match e {
            HandshakeError::Malformed(_)
            | HandshakeError::UnexpectedKind
            | HandshakeError::BadPayload(_) => HandshakeReject::Malformed,
            HandshakeError::BadMac1 => HandshakeReject::BadMac1,
            HandshakeError::RateLimited(_) => HandshakeReject::RateLimited,
            HandshakeError::Decrypt => HandshakeReject::Decrypt,
            HandshakeError::Cert(_) => HandshakeReject::Certificate,
            HandshakeError::RoleNotAllowed { .. } => HandshakeReject::Role,
            HandshakeError::StaticKeyMismatch { .. } => HandshakeReject::StaticKey,
            HandshakeError::Replay { .. } => HandshakeReject::Replay,
            HandshakeError::StaleTimestamp { .. } => HandshakeReject::StaleTimestamp,
            HandshakeError::WrongReceiver { .. }
            | HandshakeError::BadCookieReply
            | HandshakeError::Finished => HandshakeReject::Unanswered,
            HandshakeError::NotInPolicy { .. } => HandshakeReject::NotInPolicy,
            HandshakeError::KeyNotPinned { .. } => HandshakeReject::PinnedKey,
            _ => HandshakeReject::Other,
        }
    }
}

/// Rejected handshake frames by [`HandshakeReject`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeRejects([u64; HandshakeReject::COUNT]);

impl HandshakeRejects {
    /// Rejections for one reason.
    pub fn get(&self, reason: HandshakeReject) -> u64 {
        self.0[reason as usize]
    }

    /// Rejections for all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts one rejection.
    pub(crate) fn count(&mut self, reason: HandshakeReject) {
        self.0[reason as usize] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::handshake::HandshakeError as E;
    use proto::identity::{CertError, Role};
    use proto::ids::{ReceiverIndex, ServiceId, UserId};
    use proto::wire::WireError;

    /// Every handshake error is counted under its own reason; the catch-all
    /// `Other` takes only the errors no reason names.
    #[test]
    fn each_handshake_error_is_counted_under_its_reason() {
        use HandshakeReject as R;
        let name = || "n".to_owned();
        let cases = [
            (E::Malformed(WireError::Truncated), R::Malformed),
            (E::UnexpectedKind, R::Malformed),
            (E::BadPayload("x"), R::Malformed),
            (E::BadMac1, R::BadMac1),
            (E::RateLimited([127, 0, 0, 1].into()), R::RateLimited),
            (E::Decrypt, R::Decrypt),
            (E::Cert(CertError::Truncated), R::Certificate),
            (
                E::RoleNotAllowed {
                    name: name(),
                    role: Role::Relay,
                    allowed: vec![Role::User],
                },
                R::Role,
            ),
            (E::StaticKeyMismatch { name: name() }, R::StaticKey),
            (
                E::Replay {
                    peer: name(),
                    timestamp: 1,
                    last: 2,
                },
                R::Replay,
            ),
            (
                E::StaleTimestamp {
                    timestamp: 1,
                    now: 2,
                    skew_secs: 3,
                },
                R::StaleTimestamp,
            ),
            (
                E::WrongReceiver {
                    expected: ReceiverIndex(1),
                    got: ReceiverIndex(2),
                },
                R::Unanswered,
            ),
            (E::BadCookieReply, R::Unanswered),
            (E::Finished, R::Unanswered),
            (
                E::NotInPolicy {
                    name: name(),
                    role: Role::User,
                    id: 1,
                },
                R::NotInPolicy,
            ),
            (
                E::KeyNotPinned {
                    name: name(),
                    role: Role::User,
                    id: 1,
                    key: name(),
                },
                R::PinnedKey,
            ),
            (
                E::WrongPair {
                    user: UserId(1),
                    service: ServiceId(2),
                    got_user: UserId(3),
                    got_service: ServiceId(4),
                },
                R::Other,
            ),
        ];
        for (e, reason) in &cases {
            assert_eq!(HandshakeReject::of(e), *reason, "{e}");
        }
        // Every reason but NoIndex (which no error carries) is reached.
        let reached: std::collections::BTreeSet<_> = cases.iter().map(|(_, r)| r.name()).collect();
        assert_eq!(reached.len(), HandshakeReject::COUNT - 1);
    }

    #[test]
    fn names_are_unique_and_in_counter_order() {
        let names: std::collections::BTreeSet<_> =
            HandshakeReject::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), HandshakeReject::COUNT);
        for (i, r) in HandshakeReject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut c = HandshakeRejects::default();
        c.count(HandshakeReject::Role);
        c.count(HandshakeReject::Role);
        c.count(HandshakeReject::BadMac1);
        assert_eq!((c.get(HandshakeReject::Role), c.total()), (2, 3), "{c:?}");
    }
}
