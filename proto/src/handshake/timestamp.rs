//! Replay protection for handshake initiations: per peer, the greatest
//! timestamp accepted so far (WireGuard keeps a TAI64N timestamp the same
//! way).
//!
//! An initiation carries the initiator's wall-clock time in unix
//! nanoseconds inside its encrypted, authenticated payload. A responder
//! accepts it only if that time is strictly greater than the last one it
//! accepted from the same static key, so a captured initiation replayed
//! later (even to a restarted session) is refused before any state changes.
//!
//! The table is keyed by the peer's authenticated static key and written
//! only after the peer's certificate verified, so it holds at most one entry
//! per certificate the CA issued: spoofed traffic cannot grow it.

use std::collections::HashMap;

use super::HandshakeError;
use crate::identity::Certificate;

/// Greatest accepted initiation timestamp per peer static key.
#[derive(Debug, Default, Clone)]
pub struct TimestampTable {
    latest: HashMap<[u8; 32], u64>,
}

impl TimestampTable {
    /// An empty table.
    pub fn new() -> TimestampTable {
        TimestampTable::default()
    }

    /// Fails with [`HandshakeError::Replay`] unless `timestamp` is newer
    /// than any accepted from `peer`.
    pub(crate) fn check(&self, peer: &Certificate, timestamp: u64) -> Result<(), HandshakeError> {
        match self.latest.get(&peer.body.static_key) {
            Some(&last) if timestamp <= last => Err(HandshakeError::Replay {
                name: peer.body.name.clone(),
                timestamp,
                last,
            }),
            _ => Ok(()),
        }
    }

    /// Records an accepted timestamp.
    pub(crate) fn record(&mut self, peer: &Certificate, timestamp: u64) {
        let e = self.latest.entry(peer.body.static_key).or_insert(timestamp);
        *e = (*e).max(timestamp);
    }

    /// Peers with a recorded timestamp.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether no timestamp is recorded.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CaKeypair, CertificateBody, Role};

    #[test]
    fn only_strictly_newer_timestamps_pass() {
        let cert = CaKeypair::from_seed(&[1; 32])
            .issue(CertificateBody {
                id: 1,
                name: "r1".into(),
                role: Role::Relay,
                groups: vec![],
                static_key: [5; 32],
                not_before: 0,
                not_after: u64::MAX,
            })
            .unwrap();
        let mut t = TimestampTable::new();
        t.check(&cert, 0).unwrap();
        t.record(&cert, 100);
        assert!(matches!(
            t.check(&cert, 100),
            Err(HandshakeError::Replay { last: 100, .. })
        ));
        assert!(t.check(&cert, 99).is_err());
        t.check(&cert, 101).unwrap();
        t.record(&cert, 50); // never moves backwards
        assert!(t.check(&cert, 100).is_err());
        assert_eq!(t.len(), 1);
    }
}
