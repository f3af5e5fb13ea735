//! Wire layout of the hop handshake frames: `HandshakeInit`,
//! `HandshakeResponse` and `CookieReply`.
//!
//! These frames have no hop header (there is no hop session yet). Byte 0 is
//! [`Kind::byte0`], bytes 1..4 are reserved and must be zero, integers are
//! big-endian. `docs/wire.md` ("Handshakes") is the full table.
//!
//! ```text
//! HandshakeInit      0 byte0 | 1 [0;3] | 4 sender u32 | 8 len u16 | 10 noise[len] | mac1[16] | mac2[16]
//! HandshakeResponse  0 byte0 | 1 [0;3] | 4 sender u32 | 8 receiver u32 | 12 len u16 | 14 noise[len] | mac1 | mac2
//! CookieReply        0 byte0 | 1 [0;3] | 4 receiver u32 | 8 nonce[24] | 32 cookie[16] | 48 tag[16]   (64 bytes)
//! ```
//!
//! [`parse`] classifies a datagram by `(kind, length)` against the named
//! constants below (each kind's minimum and maximum length) and returns
//! borrowed views, so the receiver index and macs are read before any
//! cryptography. It never panics. A relay's datapath runs it on every
//! handshake-kind frame before handing the frame to its control thread.

use crate::ids::ReceiverIndex;
use crate::wire::{classify, Kind, WireError};

/// Length of mac1 and of mac2.
pub const MAC_LEN: usize = 16;
/// Both macs at the end of an initiation or response.
pub const MACS_LEN: usize = 2 * MAC_LEN;
/// Bytes of an initiation before the Noise message.
pub const INIT_HEADER_LEN: usize = 10;
/// Bytes of a response before the Noise message.
pub const RESPONSE_HEADER_LEN: usize = 14;
/// Shortest Noise IK first message: ephemeral (32), encrypted static
/// (32 + 16), empty encrypted payload (16).
pub const NOISE_INIT_MIN_LEN: usize = 32 + 32 + 16 + 16;
/// Shortest Noise IK second message: ephemeral (32), empty encrypted
/// payload (16).
pub const NOISE_RESPONSE_MIN_LEN: usize = 32 + 16;
/// Shortest valid initiation frame.
pub const INIT_MIN_LEN: usize = INIT_HEADER_LEN + NOISE_INIT_MIN_LEN + MACS_LEN;
/// Shortest valid response frame.
pub const RESPONSE_MIN_LEN: usize = RESPONSE_HEADER_LEN + NOISE_RESPONSE_MIN_LEN + MACS_LEN;
/// Length of the random nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of the AEAD tag on the encrypted cookie.
pub const COOKIE_TAG_LEN: usize = 16;
/// Exact length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + COOKIE_TAG_LEN;

/// Longest initiation: the IK payload is a timestamp (8), the sender index
/// (4) and the largest certificate.
pub const INIT_MAX_LEN: usize = INIT_MIN_LEN + 8 + 4 + crate::identity::MAX_CERT_LEN;
/// Longest response: the IK payload is the sender index (4) and the
/// largest certificate.
pub const RESPONSE_MAX_LEN: usize = RESPONSE_MIN_LEN + 4 + crate::identity::MAX_CERT_LEN;

// A cookie reply answers an initiation and must never amplify it.
const _: () = assert!(COOKIE_REPLY_LEN <= INIT_MIN_LEN);
// The largest initiation and response fit one datagram at the IPv6
// minimum MTU (1280 - 40 IPv6 - 8 UDP), so handshakes never rely on
// fragmentation.
const _: () = assert!(INIT_MAX_LEN <= 1232);
const _: () = assert!(RESPONSE_MAX_LEN <= 1232);

/// A checked view of a `HandshakeInit` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitFrame<'a> {
    /// The whole frame.
    pub bytes: &'a [u8],
    /// The initiator's receiver index for this session.
    pub sender: ReceiverIndex,
    /// The Noise IK first message.
    pub noise: &'a [u8],
    /// MAC proving the sender knows the responder's static public key.
    pub mac1: &'a [u8; MAC_LEN],
    /// MAC proving the sender can receive at its source address (or zero).
    pub mac2: &'a [u8; MAC_LEN],
}

/// A checked view of a `HandshakeResponse` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFrame<'a> {
    /// The whole frame.
    pub bytes: &'a [u8],
    /// The responder's receiver index for this session.
    pub sender: ReceiverIndex,
    /// The initiator's index, echoed back.
    pub receiver: ReceiverIndex,
    /// The Noise IK second message.
    pub noise: &'a [u8],
    /// MAC keyed with the initiator's static public key.
    pub mac1: &'a [u8; MAC_LEN],
    /// Unused (zero) in this version.
    pub mac2: &'a [u8; MAC_LEN],
}

/// A checked view of a `CookieReply` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReplyFrame<'a> {
    /// The initiator's index from the initiation being answered.
    pub receiver: ReceiverIndex,
    /// Random nonce of the cookie encryption.
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    /// Encrypted cookie followed by its tag.
    pub sealed: &'a [u8; COOKIE_LEN + COOKIE_TAG_LEN],
}

/// A classified hop handshake frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFrame<'a> {
    /// First message, initiator to responder.
    Init(InitFrame<'a>),
    /// Second message, responder to initiator.
    Response(ResponseFrame<'a>),
    /// The responder's answer under load.
    CookieReply(CookieReplyFrame<'a>),
}

impl HandshakeFrame<'_> {
    /// Which of the three messages this is.
    #[inline]
    pub const fn kind(&self) -> HandshakeKind {
        match self {
            HandshakeFrame::Init(_) => HandshakeKind::Init,
            HandshakeFrame::Response(_) => HandshakeKind::Response,
            HandshakeFrame::CookieReply(_) => HandshakeKind::CookieReply,
        }
    }
}

/// The kind of a hop handshake frame that [`parse`] accepted: what a
/// relay's datapath tells its worker, which hands the frame on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeKind {
    /// A `HandshakeInit`: a peer starts a hop session with this node.
    Init,
    /// A `HandshakeResponse`: the answer to an initiation this node sent.
    Response,
    /// A `CookieReply`: the peer is under load and wants this node's
    /// initiation again, with mac2.
    CookieReply,
}

/// Classifies and checks a hop handshake datagram by `(kind, length)`.
/// Errors: shorter than the kind's minimum ([`WireError::Truncated`]),
/// wrong version, a kind that is not a hop handshake kind or non-zero
/// reserved bytes ([`WireError::BadKind`]), longer than the kind's maximum
/// or a Noise length that disagrees with the datagram
/// ([`WireError::BadLength`]).
pub fn parse(buf: &[u8]) -> Result<HandshakeFrame<'_>, WireError> {
    let kind = classify(buf)?;
    let (min, max) = match kind {
        Kind::HandshakeInit => (INIT_MIN_LEN, INIT_MAX_LEN),
        Kind::HandshakeResponse => (RESPONSE_MIN_LEN, RESPONSE_MAX_LEN),
        Kind::CookieReply => (COOKIE_REPLY_LEN, COOKIE_REPLY_LEN),
        _ => return Err(WireError::BadKind),
    };
    if buf.len() < min {
        return Err(WireError::Truncated);
    }
    if buf.len() > max {
        return Err(WireError::BadLength);
    }
    if buf[1..4] != [0, 0, 0] {
        return Err(WireError::BadKind);
    }
    let sender = ReceiverIndex(be_u32(&buf[4..8]));
    match kind {
        Kind::HandshakeInit => {
            let noise = noise_slice(buf, INIT_HEADER_LEN)?;
            let (mac1, mac2) = macs(buf);
            Ok(HandshakeFrame::Init(InitFrame {
                bytes: buf,
                sender,
                noise,
                mac1,
                mac2,
            }))
        }
        Kind::HandshakeResponse => {
            let noise = noise_slice(buf, RESPONSE_HEADER_LEN)?;
            let (mac1, mac2) = macs(buf);
            Ok(HandshakeFrame::Response(ResponseFrame {
                bytes: buf,
                sender,
                receiver: ReceiverIndex(be_u32(&buf[8..12])),
                noise,
                mac1,
                mac2,
            }))
        }
        _ => {
            let (nonce, sealed) = buf[8..].split_at(COOKIE_NONCE_LEN);
            Ok(HandshakeFrame::CookieReply(CookieReplyFrame {
                receiver: sender,
                nonce: nonce.try_into().map_err(|_| WireError::Truncated)?,
                sealed: sealed.try_into().map_err(|_| WireError::BadLength)?,
            }))
        }
    }
}

/// The Noise message of an initiation or response whose header is
/// `header_len` long; its u16 length field sits just before it.
fn noise_slice(buf: &[u8], header_len: usize) -> Result<&[u8], WireError> {
    let len = usize::from(u16::from_be_bytes([
        buf[header_len - 2],
        buf[header_len - 1],
    ]));
    if header_len + len + MACS_LEN != buf.len() {
        return Err(WireError::BadLength);
    }
    Ok(&buf[header_len..header_len + len])
}

/// The two macs at the end of a frame at least [`MACS_LEN`] long.
fn macs(buf: &[u8]) -> (&[u8; MAC_LEN], &[u8; MAC_LEN]) {
    let (_, tail) = buf.split_at(buf.len() - MACS_LEN);
    let (m1, m2) = tail.split_at(MAC_LEN);
    // Both halves are exactly MAC_LEN by construction.
    (
        m1.try_into().unwrap_or(&[0; MAC_LEN]),
        m2.try_into().unwrap_or(&[0; MAC_LEN]),
    )
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds an initiation with both macs zeroed (the cookie module fills
/// them). Fails only if `noise` is longer than a u16 can describe.
pub(crate) fn emit_init(sender: ReceiverIndex, noise: &[u8]) -> Result<Vec<u8>, WireError> {
    let len = u16::try_from(noise.len()).map_err(|_| WireError::BadLength)?;
    let mut out = Vec::with_capacity(INIT_HEADER_LEN + noise.len() + MACS_LEN);
    out.extend_from_slice(&[Kind::HandshakeInit.byte0(), 0, 0, 0]);
    out.extend_from_slice(&sender.0.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(noise);
    out.extend_from_slice(&[0; MACS_LEN]);
    Ok(out)
}

/// Builds a response with both macs zeroed.
pub(crate) fn emit_response(
    sender: ReceiverIndex,
    receiver: ReceiverIndex,
    noise: &[u8],
) -> Result<Vec<u8>, WireError> {
    let len = u16::try_from(noise.len()).map_err(|_| WireError::BadLength)?;
    let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + noise.len() + MACS_LEN);
    out.extend_from_slice(&[Kind::HandshakeResponse.byte0(), 0, 0, 0]);
    out.extend_from_slice(&sender.0.to_be_bytes());
    out.extend_from_slice(&receiver.0.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(noise);
    out.extend_from_slice(&[0; MACS_LEN]);
    Ok(out)
}

/// Builds a cookie reply.
pub(crate) fn emit_cookie_reply(
    receiver: ReceiverIndex,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8; COOKIE_LEN + COOKIE_TAG_LEN],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut out = [0u8; COOKIE_REPLY_LEN];
    out[0] = Kind::CookieReply.byte0();
    out[4..8].copy_from_slice(&receiver.0.to_be_bytes());
    out[8..8 + COOKIE_NONCE_LEN].copy_from_slice(nonce);
    out[8 + COOKIE_NONCE_LEN..].copy_from_slice(sealed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_round_trips_and_rejects_every_truncation() {
        let noise = [0x5a; NOISE_INIT_MIN_LEN + 3];
        let mut f = emit_init(ReceiverIndex(0x0102_0304), &noise).unwrap();
        let n = f.len();
        f[n - 32..n - 16].fill(1);
        f[n - 16..].fill(2);
        assert_eq!(&f[..10], &[0x38, 0, 0, 0, 1, 2, 3, 4, 0, 99]);
        let HandshakeFrame::Init(v) = parse(&f).unwrap() else {
            panic!("not an init")
        };
        assert_eq!(v.sender, ReceiverIndex(0x0102_0304));
        assert_eq!(v.noise, &noise[..]);
        assert_eq!((v.mac1, v.mac2), (&[1; 16], &[2; 16]));
        for len in 0..f.len() {
            assert!(parse(&f[..len]).is_err(), "len {len}");
        }
        let mut long = f.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(WireError::BadLength));
    }

    #[test]
    fn response_round_trips() {
        let noise = [7; NOISE_RESPONSE_MIN_LEN];
        let f = emit_response(ReceiverIndex(5), ReceiverIndex(6), &noise).unwrap();
        assert_eq!(f.len(), RESPONSE_MIN_LEN);
        let HandshakeFrame::Response(v) = parse(&f).unwrap() else {
            panic!("not a response")
        };
        assert_eq!((v.sender, v.receiver), (ReceiverIndex(5), ReceiverIndex(6)));
        assert_eq!(v.noise, &noise[..]);
    }

    #[test]
    fn cookie_reply_has_exact_length() {
        let f = emit_cookie_reply(ReceiverIndex(9), &[1; 24], &[2; 32]);
        let HandshakeFrame::CookieReply(v) = parse(&f).unwrap() else {
            panic!("not a cookie reply")
        };
        assert_eq!(v.receiver, ReceiverIndex(9));
        assert_eq!((v.nonce, v.sealed), (&[1; 24], &[2; 32]));
        assert_eq!(parse(&f[..63]), Err(WireError::Truncated));
        let mut long = f.to_vec();
        long.push(0);
        assert_eq!(parse(&long), Err(WireError::BadLength));
    }

    #[test]
    fn longest_init_and_response_pass_one_byte_more_does_not() {
        let cert_max = crate::identity::MAX_CERT_LEN;
        let init = emit_init(
            ReceiverIndex(1),
            &vec![0; NOISE_INIT_MIN_LEN + 12 + cert_max],
        )
        .unwrap();
        assert_eq!(init.len(), INIT_MAX_LEN);
        assert_eq!(parse(&init).map(|f| f.kind()), Ok(HandshakeKind::Init));
        let init = emit_init(
            ReceiverIndex(1),
            &vec![0; NOISE_INIT_MIN_LEN + 13 + cert_max],
        )
        .unwrap();
        assert_eq!(parse(&init), Err(WireError::BadLength));

        let noise = vec![0; NOISE_RESPONSE_MIN_LEN + 4 + cert_max];
        let resp = emit_response(ReceiverIndex(1), ReceiverIndex(2), &noise).unwrap();
        assert_eq!(resp.len(), RESPONSE_MAX_LEN);
        assert_eq!(parse(&resp).map(|f| f.kind()), Ok(HandshakeKind::Response));
        let noise = vec![0; NOISE_RESPONSE_MIN_LEN + 5 + cert_max];
        let resp = emit_response(ReceiverIndex(1), ReceiverIndex(2), &noise).unwrap();
        assert_eq!(parse(&resp), Err(WireError::BadLength));

        // The figures docs/wire.md gives.
        assert_eq!((INIT_MAX_LEN, RESPONSE_MAX_LEN), (1118, 1066));

        let cookie = emit_cookie_reply(ReceiverIndex(1), &[0; 24], &[0; 32]);
        assert_eq!(
            parse(&cookie).map(|f| f.kind()),
            Ok(HandshakeKind::CookieReply)
        );
    }

    #[test]
    fn rejects_reserved_bytes_and_other_kinds() {
        let mut f = emit_init(ReceiverIndex(1), &[0; NOISE_INIT_MIN_LEN]).unwrap();
        f[2] = 1;
        assert_eq!(parse(&f), Err(WireError::BadKind));
        f[2] = 0;
        f[0] = Kind::DataUp.byte0();
        assert_eq!(parse(&f), Err(WireError::BadKind));
        f[0] = 0x48;
        assert_eq!(parse(&f), Err(WireError::BadVersion));
        // Versions 1 and 2 (the hop tag over other bytes) are other
        // versions.
        for older in [0x18, 0x28] {
            f[0] = older;
            assert_eq!(parse(&f), Err(WireError::BadVersion));
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
