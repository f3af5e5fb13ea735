//! What a completion is about: the typed form of `user_data`.
//!
//! Every submission carries a [`Token`] encoded into its 64-bit
//! `user_data`, and every completion is decoded back here, so the encoding
//! lives in one place. Send slots are indices below 2^32; the three fixed
//! operations take the top values of the range, which no slot index
//! reaches.

/// The operation a submission or completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// The multishot receive on the worker's socket.
    Recv,
    /// The multishot receive on the second socket (a mesh relay's link
    /// port), into the same buffers.
    RecvLink,
    /// A cancellation (its completion is ignored).
    Cancel,
    /// The `SendMsg` of this send slot.
    Send(u32),
}

const RECV: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
const RECV_LINK: u64 = u64::MAX - 2;

impl Token {
    /// The `user_data` to submit with.
    pub(crate) const fn encode(self) -> u64 {
        match self {
            Self::Recv => RECV,
            Self::RecvLink => RECV_LINK,
            Self::Cancel => CANCEL,
            Self::Send(slot) => slot as u64,
        }
    }

    /// The token a completion's `user_data` names; `None` for a value no
    /// submission of ours carries.
    pub(crate) fn decode(user_data: u64) -> Option<Self> {
        match user_data {
            RECV => Some(Self::Recv),
            RECV_LINK => Some(Self::RecvLink),
            CANCEL => Some(Self::Cancel),
            slot => u32::try_from(slot).ok().map(Self::Send),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips_and_values_are_distinct() {
        let tokens = [
            Token::Recv,
            Token::RecvLink,
            Token::Cancel,
            Token::Send(0),
            Token::Send(1),
            Token::Send(u32::MAX),
        ];
        for t in tokens {
            assert_eq!(Token::decode(t.encode()), Some(t), "{t:?}");
        }
        let mut values: Vec<u64> = tokens.iter().map(|t| t.encode()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), tokens.len());
    }

    #[test]
    fn foreign_values_decode_to_nothing() {
        for v in [u64::from(u32::MAX) + 1, 1 << 40, u64::MAX - 3] {
            assert_eq!(Token::decode(v), None, "{v:#x}");
        }
    }
}
