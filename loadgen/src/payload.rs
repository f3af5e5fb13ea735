//! The end-to-end part of a synthetic data frame, as the agent seals it and
//! the connector opens it.
//!
//! Plaintext is a pattern derived from the flow, so the receiver can check
//! every byte it opens. Two kinds of records travel:
//! - **pool records**, sealed once per (flow, size) with counter
//!   [`pool_counter`]`(size index)` (one counter per size: the same counter
//!   under one key for two plaintexts would be a GCM nonce reuse) and resent
//!   as they are (the relay reads only a record's header and AEAD tag,
//!   which the hop tag covers, never opens it, so a resent record costs it
//!   exactly what a fresh one does);
//! - **samples**, sealed fresh as the first frame of every train, whose
//!   counter is [`SAMPLE_BIT`] | the send time in nanoseconds since the
//!   run's epoch. The counter is the AEAD nonce, so the timestamp is
//!   authenticated, never repeats, and gives the one-way latency.
//!
//! Resending sealed records is a replay by design, and the counter carries
//! a value, so the generator seals and opens through `proto::testkit`'s
//! caller-counter functions instead of the endpoint types a real agent uses
//! (`proto::aead::{E2eSender, E2eReceiver}`, which own the counter and the
//! replay window).

use proto::aead::{Aad, E2eKey};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::testkit::{open_with_counter, seal_with_counter};
use proto::wire::{E2eRecord, Kind};

/// Marks a sample's counter; the low 63 bits are its send time.
pub const SAMPLE_BIT: u64 = 1 << 63;
/// The counter of the pool records of the first size; the `i`-th size's
/// records take [`pool_counter`]`(i)`.
pub const POOL_COUNTER: u64 = 1;

/// The counter of a flow's pool record of size index `size_idx`: distinct
/// per size, never a sample's.
#[inline]
pub fn pool_counter(size_idx: usize) -> u64 {
    POOL_COUNTER + size_idx as u64
}

/// Byte `i` of flow `flow`'s plaintext.
#[inline]
pub fn pattern_byte(flow: usize, i: usize) -> u8 {
    (flow as u8) ^ (i as u8).wrapping_mul(29) ^ 0x5a
}

/// The associated data of an upstream record.
#[inline]
pub fn aad(user: UserId, service: ServiceId, receiver: ReceiverIndex) -> Aad {
    Aad {
        user,
        service,
        receiver,
        kind: Kind::DataUp.byte0(),
    }
}

/// One direction of a flow's end-to-end session.
#[derive(Debug, Clone)]
pub struct FlowKey {
    /// Index into the plan's flows: selects the plaintext pattern.
    pub flow: usize,
    /// The user.
    pub user: UserId,
    /// The service.
    pub service: ServiceId,
    /// The end-to-end receiver index the connector knows this session by.
    pub receiver: ReceiverIndex,
    /// The AEAD key.
    pub key: E2eKey,
}

impl FlowKey {
    /// Fills `body` (the whole frame body: record header, payload, tag)
    /// with the flow's pattern sealed under `counter`. Returns `false`
    /// when `body` is too short to be a record.
    pub fn seal(&self, body: &mut [u8], counter: u64) -> bool {
        let Ok(mut rec) = E2eRecord::new_checked(body) else {
            return false;
        };
        rec.set_header(self.receiver, counter);
        let (payload, tag_out) = rec.payload_and_tag_mut();
        for (i, b) in payload.iter_mut().enumerate() {
            *b = pattern_byte(self.flow, i);
        }
        let aad = aad(self.user, self.service, self.receiver);
        *tag_out = seal_with_counter(&self.key, counter, &aad, payload);
        true
    }

    /// Opens a record of this flow in place and checks its plaintext.
    pub fn open_and_check(&self, body: &mut [u8]) -> bool {
        let Ok(mut rec) = E2eRecord::new_checked(body) else {
            return false;
        };
        if rec.receiver() != self.receiver {
            return false;
        }
        let counter = rec.counter();
        let (payload, tag) = rec.payload_and_tag_mut();
        let tag = *tag;
        let aad = aad(self.user, self.service, self.receiver);
        if open_with_counter(&self.key, counter, &aad, payload, &tag).is_err() {
            return false;
        }
        payload
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(self.flow, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(flow: usize) -> FlowKey {
        FlowKey {
            flow,
            user: UserId(3),
            service: ServiceId(5),
            receiver: ReceiverIndex(9),
            key: E2eKey::new(&[7; 32]),
        }
    }

    #[test]
    fn sealed_records_open_and_any_flipped_bit_is_caught() {
        let k = key(2);
        let mut body = vec![0u8; 100];
        assert!(k.seal(&mut body, SAMPLE_BIT | 12345));
        let sealed = body.clone();
        assert!(k.open_and_check(&mut body));
        for bit in [0, 8 * 12 + 3, 8 * 50, 8 * 99 + 7] {
            let mut tampered = sealed.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !k.open_and_check(&mut tampered),
                "bit {bit} flip undetected"
            );
        }
    }

    #[test]
    fn another_flows_pattern_fails_the_check() {
        let mut body = vec![0u8; 64];
        assert!(key(1).seal(&mut body, POOL_COUNTER));
        assert!(!key(2).open_and_check(&mut body));
    }

    #[test]
    fn pool_records_of_different_sizes_never_share_a_counter() {
        let counters: std::collections::BTreeSet<u64> = (0..16).map(pool_counter).collect();
        assert_eq!(counters.len(), 16);
        assert!(counters.iter().all(|c| c & SAMPLE_BIT == 0));
    }

    #[test]
    fn too_short_bodies_are_refused() {
        let mut body = vec![0u8; 27];
        assert!(!key(0).seal(&mut body, 1));
        assert!(!key(0).open_and_check(&mut body));
    }
}
