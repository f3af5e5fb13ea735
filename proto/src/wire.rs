//! Wire format: zero-copy views over frames and owned `Repr`s to build them.
//!
//! Every frame starts with one byte: the protocol version in the high nibble
//! and the [`Kind`] in the low nibble. Data-plane frames (everything but the
//! hop handshake kinds) then carry the fixed 32-byte *hop header*, read and
//! rewritten in place by every relay:
//!
//! ```text
//!  0  u8      version (4 bits) | kind (4 bits)
//!  1  u8      ttl: each relay decrements; 0 -> drop
//!  2  u16     length of the end-to-end part that follows the header
//!  4  u32     hop receiver index (selects the hop session at the receiver)
//!  8  u64     hop counter (nonce of the hop tag, input to the replay window)
//! 16  u32     user id (source)
//! 20  u32     service id (destination)
//! 24  [u8;8]  hop tag over bytes 0..24 and, by kind, parts of the body
//! 32  ...     end-to-end part (relays read, never change, what the tag covers)
//! ```
//!
//! What the hop tag covers, per kind, is [`crate::hoptag`]'s rule.
//!
//! For [`Kind::DataUp`] and [`Kind::DataDown`] the end-to-end part is an
//! [`E2eRecord`]: receiver index (u32), counter (u64), ciphertext, 16-byte
//! AEAD tag. Hop handshake frames ([`Kind::HandshakeInit`],
//! [`Kind::HandshakeResponse`], [`Kind::CookieReply`]) have their own layout,
//! owned by [`crate::handshake`]. `docs/wire.md` is the full specification.
//!
//! All integers are big-endian. Views follow smoltcp: `new_unchecked` wraps
//! any buffer, `new_checked` validates once, and from then on getters and
//! setters index the buffer without failing ("parse, don't validate").
//!
//! # No panics
//! No function here panics on any input when the view was made with
//! `new_checked`; `new_unchecked` views panic on out-of-bounds access only if
//! the caller skipped [`Frame::check_len`], as in smoltcp.

use crate::ids::{ReceiverIndex, ServiceId, UserId};

/// The protocol version this crate speaks, in the high nibble of byte 0.
///
/// 3 since a data frame's hop tag covers the end-to-end AEAD tag alone of
/// its body ([`crate::hoptag`]); version 2 also covered the end-to-end
/// record header, and version 1 the hop header alone. A node of another
/// version tags different bytes, so its frames (and its hop handshakes) are
/// refused as malformed rather than failing as bad tags.
pub const VERSION: u8 = 3;
/// Length of the fixed hop header.
pub const HEADER_LEN: usize = 32;
/// Bytes of the hop header covered by the hop tag (all before the tag);
/// the tag covers parts of the body as well ([`crate::hoptag`]).
pub const TAGGED_LEN: usize = 24;
/// Length of the hop tag.
pub const HOP_TAG_LEN: usize = 8;
/// Length of the end-to-end record header (receiver index + counter).
pub const E2E_HEADER_LEN: usize = 12;
/// Length of the end-to-end AEAD tag.
pub const E2E_TAG_LEN: usize = 16;
/// Bytes a data frame adds around its payload: hop header, end-to-end
/// header and end-to-end tag.
pub const DATA_OVERHEAD: usize = HEADER_LEN + E2E_HEADER_LEN + E2E_TAG_LEN;
/// The largest end-to-end part the 16-bit length field can describe and a
/// UDP/IPv4 datagram can carry.
pub const MAX_BODY_LEN: usize = 65_507 - HEADER_LEN;
// The framing budget: header + end-to-end part around the payload.
const _: () = assert!(DATA_OVERHEAD <= 64);

/// The longest body of a [`Kind::Keepalive`] frame: none. A keepalive is a
/// hop header alone (`HopLink::keepalive` sends nothing else).
pub const MAX_KEEPALIVE_BODY: usize = 0;
/// The longest body of a [`Kind::Control`] frame.
///
/// Derived from the senders: an agent sends `Ping`s and `Pong`s
/// ([`crate::control::PING_LEN`], 9 bytes); a relay sends those and
/// directory parts, which it splits at
/// [`crate::control::DEFAULT_MAX_BODY`] (1200 bytes, so that a control
/// frame fits the IPv6 minimum MTU; a part holding a single longest entry
/// is 315 bytes). The bound adds a margin of 32 bytes and is the same
/// 1232 the hop handshake frames are held to
/// ([`crate::handshake::frames::INIT_MAX_LEN`]). The hop tag covers a
/// control body whole, so this bounds what a forged one costs the receiver
/// (`docs/security.md` §7).
pub const MAX_CONTROL_BODY: usize = 1232;
/// The longest body of a [`Kind::E2eHandshakeUp`] or
/// [`Kind::E2eHandshakeDown`] frame.
///
/// Derived from the end-to-end handshake: an `E2eHandshakeUp` body is at
/// most [`crate::handshake::e2e::E2E_INIT_MAX_LEN`] (1080 bytes: a 4-byte index
/// and a Noise IK first message whose payload is a timestamp, an index and
/// the largest certificate, [`crate::identity::MAX_CERT_LEN`] = 968
/// bytes), an `E2eHandshakeDown` body at most
/// [`crate::handshake::e2e::E2E_RESPONSE_MAX_LEN`] (1028 bytes). The bound
/// leaves a margin of 152 bytes above the longer and, like
/// [`MAX_CONTROL_BODY`], is 1232.
pub const MAX_E2E_HANDSHAKE_BODY: usize = 1232;
// Every sender's largest body is within its kind's bound (the tests of
// `control`, `handshake::e2e` and the relay's control thread build them).
const _: () = assert!(crate::control::DEFAULT_MAX_BODY <= MAX_CONTROL_BODY);
const _: () =
    assert!(crate::control::PART_HEADER_LEN + crate::control::MAX_ENTRY_LEN <= MAX_CONTROL_BODY);
const _: () = assert!(crate::control::PING_LEN <= MAX_CONTROL_BODY);
const _: () = assert!(crate::handshake::e2e::E2E_INIT_MAX_LEN <= MAX_E2E_HANDSHAKE_BODY);
const _: () = assert!(crate::handshake::e2e::E2E_RESPONSE_MAX_LEN <= MAX_E2E_HANDSHAKE_BODY);

/// Default initial ttl: bounds any path through the mesh.
pub const DEFAULT_TTL: u8 = 16;

mod field {
    use core::ops::Range;

    pub const VERSION_KIND: usize = 0;
    pub const TTL: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const USER: Range<usize> = 16..20;
    pub const SERVICE: Range<usize> = 20..24;
    pub const TAG: Range<usize> = 24..32;

    pub const E2E_RECEIVER: Range<usize> = 0..4;
    pub const E2E_COUNTER: Range<usize> = 4..12;
}

/// Why a buffer is not a valid frame. Small and `Copy`: dropping a bad
/// frame must cost nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the layout of its kind requires.
    #[error("frame truncated: shorter than its header")]
    Truncated,
    /// The version nibble is not [`VERSION`].
    #[error("unsupported protocol version")]
    BadVersion,
    /// The kind nibble names no known kind, or a kind not valid here.
    #[error("unknown or unexpected frame kind")]
    BadKind,
    /// The length field disagrees with the datagram's length.
    #[error("length field does not match the datagram length")]
    BadLength,
    /// The body is longer than its kind allows ([`Kind::max_body_len`]).
    #[error("frame body longer than its kind allows")]
    TooLong,
}

/// Direction of a routed frame through the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a user's agent towards the connector of a service: routed by
    /// service id.
    ToService,
    /// From a connector back to a user's agent: routed by user id.
    ToUser,
}

/// What a frame is, from the low nibble of byte 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// End-to-end encrypted data, user -> service.
    DataUp = 1,
    /// End-to-end encrypted data, service -> user.
    DataDown = 2,
    /// An end-to-end Noise handshake message, user -> service.
    E2eHandshakeUp = 3,
    /// An end-to-end Noise handshake message, service -> user.
    E2eHandshakeDown = 4,
    /// Hop keepalive: a hop header with an empty body.
    Keepalive = 5,
    /// Hop-authenticated control message for the receiving node itself.
    Control = 6,
    /// Hop handshake, first message (own layout, see [`crate::handshake`]).
    HandshakeInit = 8,
    /// Hop handshake, second message.
    HandshakeResponse = 9,
    /// Answer to a handshake sent while the receiver is under load.
    CookieReply = 10,
}

impl Kind {
    /// Decodes the kind nibble.
    #[inline]
    pub const fn from_nibble(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::DataUp,
            2 => Kind::DataDown,
            3 => Kind::E2eHandshakeUp,
            4 => Kind::E2eHandshakeDown,
            5 => Kind::Keepalive,
            6 => Kind::Control,
            8 => Kind::HandshakeInit,
            9 => Kind::HandshakeResponse,
            10 => Kind::CookieReply,
            _ => return None,
        })
    }

    /// Byte 0 of a frame of this kind.
    #[inline]
    pub const fn byte0(self) -> u8 {
        (VERSION << 4) | self as u8
    }

    /// Whether frames of this kind start with the 32-byte hop header.
    #[inline]
    pub const fn has_hop_header(self) -> bool {
        !matches!(
            self,
            Kind::HandshakeInit | Kind::HandshakeResponse | Kind::CookieReply
        )
    }

    /// The shortest body a frame of this kind may have after its hop
    /// header: a data frame's end-to-end header and AEAD tag; nothing for
    /// the others.
    #[inline]
    pub const fn min_body_len(self) -> usize {
        match self {
            Kind::DataUp | Kind::DataDown => E2E_HEADER_LEN + E2E_TAG_LEN,
            _ => 0,
        }
    }

    /// The longest body a frame of this kind may have after its hop header:
    /// [`MAX_KEEPALIVE_BODY`], [`MAX_CONTROL_BODY`],
    /// [`MAX_E2E_HANDSHAKE_BODY`], and for data whatever the 16-bit length
    /// field describes (the datagram bounds it; the hop tag covers 16 bytes
    /// of a data body whatever its length). The hop handshake kinds have no
    /// hop header; [`crate::handshake::frames`] bounds them.
    #[inline]
    pub const fn max_body_len(self) -> usize {
        match self {
            Kind::Keepalive => MAX_KEEPALIVE_BODY,
            Kind::Control => MAX_CONTROL_BODY,
            Kind::E2eHandshakeUp | Kind::E2eHandshakeDown => MAX_E2E_HANDSHAKE_BODY,
            Kind::DataUp
            | Kind::DataDown
            | Kind::HandshakeInit
            | Kind::HandshakeResponse
            | Kind::CookieReply => u16::MAX as usize,
        }
    }

    /// Direction for kinds that relays forward; `None` for kinds that end
    /// at the receiving node.
    #[inline]
    pub const fn direction(self) -> Option<Direction> {
        match self {
            Kind::DataUp | Kind::E2eHandshakeUp => Some(Direction::ToService),
            Kind::DataDown | Kind::E2eHandshakeDown => Some(Direction::ToUser),
            _ => None,
        }
    }

    /// The kind with the same meaning in the opposite direction.
    #[inline]
    pub const fn reversed(self) -> Kind {
        match self {
            Kind::DataUp => Kind::DataDown,
            Kind::DataDown => Kind::DataUp,
            Kind::E2eHandshakeUp => Kind::E2eHandshakeDown,
            Kind::E2eHandshakeDown => Kind::E2eHandshakeUp,
            other => other,
        }
    }
}

/// Reads the version and kind of any frame from its first byte.
#[inline]
pub fn classify(buf: &[u8]) -> Result<Kind, WireError> {
    let b = *buf.first().ok_or(WireError::Truncated)?;
    if b >> 4 != VERSION {
        return Err(WireError::BadVersion);
    }
    Kind::from_nibble(b & 0x0f).ok_or(WireError::BadKind)
}

/// The length a datagram of this protocol says it has, from its first
/// bytes alone: [`HEADER_LEN`] plus the length field for the kinds with a
/// hop header, the Noise message's length plus the fixed parts for a hop
/// handshake initiation or response, and the fixed size of a cookie reply.
/// `None` when the first bytes do not say: too short to hold the field,
/// another version, or an unknown kind.
///
/// Nothing else is checked: a datagram whose declared length is right may
/// still be malformed. For a receiver that gets datagrams back to back in
/// one buffer without their sizes (a `UDP_GRO` run read without its control
/// message, as glommio's sockets read): see relay's `io::glommio`.
pub fn declared_len(datagram: &[u8]) -> Option<usize> {
    use crate::handshake::frames::{
        COOKIE_REPLY_LEN, INIT_HEADER_LEN, MACS_LEN, RESPONSE_HEADER_LEN,
    };
    let kind = classify(datagram).ok()?;
    let field = |at: usize| datagram.get(at..at + 2).map(|b| usize::from(be_u16(b)));
    match kind {
        Kind::HandshakeInit => Some(INIT_HEADER_LEN + field(8)? + MACS_LEN),
        Kind::HandshakeResponse => Some(RESPONSE_HEADER_LEN + field(12)? + MACS_LEN),
        Kind::CookieReply => Some(COOKIE_REPLY_LEN),
        _ => Some(HEADER_LEN + field(2)?),
    }
}

#[inline]
fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A zero-copy view of a data-plane frame: the hop header and the body
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it. Call [`Frame::check_len`] before
    /// using any accessor, or use [`Frame::new_checked`].
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer and checks that it is a well-formed data-plane frame:
    /// long enough, right version, a kind that has a hop header, a length
    /// field equal to the body's real length, and a body no longer than
    /// the kind allows ([`Kind::max_body_len`]: a relay refuses a longer
    /// keepalive, control or end-to-end handshake frame before it looks up
    /// the session or computes a MAC over the body).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Validates the buffer as described in [`Frame::new_checked`].
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let kind = classify(buf)?;
        if !kind.has_hop_header() {
            return Err(WireError::BadKind);
        }
        if usize::from(be_u16(&buf[field::LENGTH])) != buf.len() - HEADER_LEN {
            return Err(WireError::BadLength);
        }
        // One unsigned comparison for both bounds (a body below the
        // minimum wraps to a huge value); which one failed is sorted out
        // only on the way out.
        let body = buf.len() - HEADER_LEN;
        let min_body = kind.min_body_len();
        if body.wrapping_sub(min_body) > kind.max_body_len() - min_body {
            return Err(if body < min_body {
                WireError::Truncated
            } else {
                WireError::TooLong
            });
        }
        Ok(())
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole frame as bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The frame kind. A checked view always holds a valid kind; an
    /// unchecked view with an unknown nibble reads as [`Kind::Control`]
    /// (use [`classify`] to tell the two apart).
    #[inline]
    pub fn kind(&self) -> Kind {
        let nibble = self.buffer.as_ref()[field::VERSION_KIND] & 0x0f;
        Kind::from_nibble(nibble).unwrap_or(Kind::Control)
    }

    /// Remaining hops this frame may take.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Length of the end-to-end part, from the length field.
    #[inline]
    pub fn body_len(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Hop receiver index: selects the hop session at the receiving node.
    #[inline]
    pub fn receiver(&self) -> ReceiverIndex {
        ReceiverIndex(be_u32(&self.buffer.as_ref()[field::RECEIVER]))
    }

    /// Hop counter: nonce of the hop tag and input to the replay window.
    #[inline]
    pub fn counter(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::COUNTER])
    }

    /// Source user.
    #[inline]
    pub fn user(&self) -> UserId {
        UserId(be_u32(&self.buffer.as_ref()[field::USER]))
    }

    /// Destination service.
    #[inline]
    pub fn service(&self) -> ServiceId {
        ServiceId(be_u32(&self.buffer.as_ref()[field::SERVICE]))
    }

    /// The header bytes the hop tag covers (it covers body bytes too:
    /// [`crate::hoptag::HopKey::tag_frame`] is the one reader).
    #[inline]
    pub(crate) fn tagged(&self) -> &[u8; TAGGED_LEN] {
        self.buffer.as_ref()[..TAGGED_LEN]
            .try_into()
            .expect("checked frame is at least HEADER_LEN long")
    }

    /// The hop tag.
    #[inline]
    pub fn tag(&self) -> &[u8; HOP_TAG_LEN] {
        self.buffer.as_ref()[field::TAG]
            .try_into()
            .expect("checked frame is at least HEADER_LEN long")
    }

    /// The end-to-end part after the hop header.
    #[inline]
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets version and kind.
    #[inline]
    pub fn set_kind(&mut self, kind: Kind) {
        self.buffer.as_mut()[field::VERSION_KIND] = kind.byte0();
    }

    /// Sets the ttl.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the length field.
    #[inline]
    pub fn set_body_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the hop receiver index.
    #[inline]
    pub fn set_receiver(&mut self, r: ReceiverIndex) {
        self.buffer.as_mut()[field::RECEIVER].copy_from_slice(&r.0.to_be_bytes());
    }

    /// Sets the hop counter.
    #[inline]
    pub fn set_counter(&mut self, c: u64) {
        self.buffer.as_mut()[field::COUNTER].copy_from_slice(&c.to_be_bytes());
    }

    /// Sets the source user.
    #[inline]
    pub fn set_user(&mut self, u: UserId) {
        self.buffer.as_mut()[field::USER].copy_from_slice(&u.0.to_be_bytes());
    }

    /// Sets the destination service.
    #[inline]
    pub fn set_service(&mut self, s: ServiceId) {
        self.buffer.as_mut()[field::SERVICE].copy_from_slice(&s.0.to_be_bytes());
    }

    /// Sets the hop tag.
    #[inline]
    pub fn set_tag(&mut self, tag: &[u8; HOP_TAG_LEN]) {
        self.buffer.as_mut()[field::TAG].copy_from_slice(tag);
    }

    /// Rewrites the header for the next hop in place: new receiver index and
    /// counter, ttl decremented by one. The caller then computes and sets the
    /// tag with the next hop's key ([`crate::hoptag::HopKey::seal_frame`]). Returns `false` (and leaves the frame
    /// alone) when the ttl is already zero or one, i.e. the frame may not
    /// take another hop.
    #[inline]
    pub fn rewrite_for_next_hop(&mut self, receiver: ReceiverIndex, counter: u64) -> bool {
        let ttl = self.ttl();
        if ttl <= 1 {
            return false;
        }
        let buf = self.buffer.as_mut();
        buf[field::TTL] = ttl - 1;
        buf[field::RECEIVER].copy_from_slice(&receiver.0.to_be_bytes());
        buf[field::COUNTER].copy_from_slice(&counter.to_be_bytes());
        true
    }

    /// The end-to-end part, mutable (agents seal and open in place).
    #[inline]
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// An owned, parsed hop header: what to emit into a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    /// Frame kind; must have a hop header.
    pub kind: Kind,
    /// Remaining hops.
    pub ttl: u8,
    /// Hop receiver index.
    pub receiver: ReceiverIndex,
    /// Hop counter.
    pub counter: u64,
    /// Source user.
    pub user: UserId,
    /// Destination service.
    pub service: ServiceId,
    /// Length of the end-to-end part.
    pub body_len: u16,
}

impl HeaderRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> HeaderRepr {
        HeaderRepr {
            kind: frame.kind(),
            ttl: frame.ttl(),
            receiver: frame.receiver(),
            counter: frame.counter(),
            user: frame.user(),
            service: frame.service(),
            body_len: frame.body_len(),
        }
    }

    /// Total frame length this header describes.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    /// Writes the header (tag zeroed) into the first [`HEADER_LEN`] bytes of
    /// `buf`. Fails with [`WireError::Truncated`] when `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let mut frame = Frame::new_unchecked(header);
        frame.set_kind(self.kind);
        frame.set_ttl(self.ttl);
        frame.set_body_len(self.body_len);
        frame.set_receiver(self.receiver);
        frame.set_counter(self.counter);
        frame.set_user(self.user);
        frame.set_service(self.service);
        frame.set_tag(&[0; HOP_TAG_LEN]);
        Ok(())
    }
}

/// A zero-copy view of the end-to-end record inside a data frame's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E2eRecord<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> E2eRecord<T> {
    /// Wraps and checks a body: at least the record header and the tag.
    pub fn new_checked(buffer: T) -> Result<E2eRecord<T>, WireError> {
        if buffer.as_ref().len() < E2E_HEADER_LEN + E2E_TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(E2eRecord { buffer })
    }

    /// Receiver index of the end-to-end session at the far endpoint.
    #[inline]
    pub fn receiver(&self) -> ReceiverIndex {
        ReceiverIndex(be_u32(&self.buffer.as_ref()[field::E2E_RECEIVER]))
    }

    /// End-to-end counter: the AEAD nonce.
    #[inline]
    pub fn counter(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::E2E_COUNTER])
    }

    /// Length of the sealed payload.
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.buffer.as_ref().len() - E2E_HEADER_LEN - E2E_TAG_LEN
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> E2eRecord<T> {
    /// Writes the record header.
    #[inline]
    pub fn set_header(&mut self, receiver: ReceiverIndex, counter: u64) {
        let b = self.buffer.as_mut();
        b[field::E2E_RECEIVER].copy_from_slice(&receiver.0.to_be_bytes());
        b[field::E2E_COUNTER].copy_from_slice(&counter.to_be_bytes());
    }

    /// Splits into (payload, tag) for sealing or opening in place.
    #[inline]
    pub fn payload_and_tag_mut(&mut self) -> (&mut [u8], &mut [u8; E2E_TAG_LEN]) {
        let b = &mut self.buffer.as_mut()[E2E_HEADER_LEN..];
        let split = b.len() - E2E_TAG_LEN;
        let (payload, tag) = b.split_at_mut(split);
        (
            payload,
            tag.try_into().expect("split leaves exactly E2E_TAG_LEN"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A DataUp frame: ttl 16, receiver 0x01020304, counter 5, user 7,
    // service 9, tag 0xaa.., e2e receiver 0x11, counter 1, 2 payload bytes,
    // 16-byte e2e tag.
    #[rustfmt::skip]
    const DATA: [u8; 62] = [
        0x31, 0x10, 0x00, 0x1e,
        0x01, 0x02, 0x03, 0x04,
        0, 0, 0, 0, 0, 0, 0, 5,
        0, 0, 0, 7,
        0, 0, 0, 9,
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
        0, 0, 0, 0x11,
        0, 0, 0, 0, 0, 0, 0, 1,
        0xde, 0xad,
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ];

    #[test]
    fn declared_len_reads_each_kinds_own_length() {
        use crate::handshake::frames::{COOKIE_REPLY_LEN, MACS_LEN};
        assert_eq!(declared_len(&DATA), Some(DATA.len()));
        // A keepalive: the header alone.
        let mut keepalive = [0u8; HEADER_LEN];
        keepalive[0] = Kind::Keepalive.byte0();
        assert_eq!(declared_len(&keepalive), Some(HEADER_LEN));
        // The length field is all that is read: 4 bytes suffice.
        assert_eq!(
            declared_len(&[Kind::DataUp.byte0(), 0, 0x01, 0x00]),
            Some(HEADER_LEN + 256)
        );
        let mut init = [0u8; 10];
        init[0] = Kind::HandshakeInit.byte0();
        init[8..10].copy_from_slice(&96u16.to_be_bytes());
        assert_eq!(declared_len(&init), Some(10 + 96 + MACS_LEN));
        let mut response = [0u8; 14];
        response[0] = Kind::HandshakeResponse.byte0();
        response[12..14].copy_from_slice(&48u16.to_be_bytes());
        assert_eq!(declared_len(&response), Some(14 + 48 + MACS_LEN));
        assert_eq!(
            declared_len(&[Kind::CookieReply.byte0()]),
            Some(COOKIE_REPLY_LEN)
        );
        // Too short for the field, another version, an unknown kind.
        assert_eq!(declared_len(&[]), None);
        assert_eq!(declared_len(&DATA[..3]), None);
        assert_eq!(declared_len(&init[..9]), None);
        assert_eq!(declared_len(&[0x11, 0, 0, 0]), None);
        assert_eq!(declared_len(&[0x3f, 0, 0, 0]), None);
    }

    #[test]
    fn parses_data_frame() {
        let f = Frame::new_checked(&DATA[..]).unwrap();
        assert_eq!(f.kind(), Kind::DataUp);
        assert_eq!(f.ttl(), 16);
        assert_eq!(f.body_len(), 30);
        assert_eq!(f.receiver(), ReceiverIndex(0x0102_0304));
        assert_eq!(f.counter(), 5);
        assert_eq!(f.user(), UserId(7));
        assert_eq!(f.service(), ServiceId(9));
        assert_eq!(f.tag(), &[0xaa; 8]);
        let rec = E2eRecord::new_checked(f.body()).unwrap();
        assert_eq!(rec.receiver(), ReceiverIndex(0x11));
        assert_eq!(rec.counter(), 1);
        assert_eq!(rec.payload_len(), 2);
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let repr = HeaderRepr::parse(&Frame::new_checked(&DATA[..]).unwrap());
        let mut out = [0u8; 62];
        repr.emit(&mut out).unwrap();
        out[32..].copy_from_slice(&DATA[32..]);
        out[24..32].copy_from_slice(&[0xaa; 8]);
        assert_eq!(out, DATA);
        assert_eq!(repr.frame_len(), DATA.len());
    }

    #[test]
    fn rejects_truncated_and_bad_fields() {
        for len in 0..DATA.len() {
            assert!(Frame::new_checked(&DATA[..len]).is_err(), "len {len}");
        }
        let mut bad = DATA;
        bad[0] = 0x41;
        assert_eq!(Frame::new_checked(&bad[..]), Err(WireError::BadVersion));
        // Version 1 tagged the header alone, version 2 the end-to-end
        // record header too: refused as other versions.
        for older in [0x11, 0x21] {
            bad[0] = older;
            assert_eq!(Frame::new_checked(&bad[..]), Err(WireError::BadVersion));
        }
        bad[0] = 0x37;
        assert_eq!(Frame::new_checked(&bad[..]), Err(WireError::BadKind));
        bad[0] = 0x38; // handshake kinds have no hop header
        assert_eq!(Frame::new_checked(&bad[..]), Err(WireError::BadKind));
        let mut bad = DATA;
        bad[3] = 0x1f;
        assert_eq!(Frame::new_checked(&bad[..]), Err(WireError::BadLength));
    }

    #[test]
    fn keepalive_may_have_empty_body() {
        let mut buf = [0u8; HEADER_LEN];
        HeaderRepr {
            kind: Kind::Keepalive,
            ttl: 1,
            receiver: ReceiverIndex(1),
            counter: 0,
            user: UserId(0),
            service: ServiceId(0),
            body_len: 0,
        }
        .emit(&mut buf)
        .unwrap();
        assert_eq!(
            Frame::new_checked(&buf[..]).unwrap().kind(),
            Kind::Keepalive
        );
    }

    /// A frame of `kind` with a body of `len` bytes, its length field right.
    fn of_len(kind: Kind, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; HEADER_LEN + len];
        f[0] = kind.byte0();
        f[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        f
    }

    #[test]
    fn bodies_longer_than_their_kind_allows_are_refused() {
        for (kind, max) in [
            (Kind::Keepalive, MAX_KEEPALIVE_BODY),
            (Kind::Control, MAX_CONTROL_BODY),
            (Kind::E2eHandshakeUp, MAX_E2E_HANDSHAKE_BODY),
            (Kind::E2eHandshakeDown, MAX_E2E_HANDSHAKE_BODY),
        ] {
            assert_eq!(kind.max_body_len(), max);
            assert!(
                Frame::new_checked(&of_len(kind, max)[..]).is_ok(),
                "{kind:?}"
            );
            assert_eq!(
                Frame::new_checked(&of_len(kind, max + 1)[..]),
                Err(WireError::TooLong),
                "{kind:?}"
            );
            assert_eq!(
                Frame::new_checked(&of_len(kind, MAX_BODY_LEN)[..]),
                Err(WireError::TooLong),
                "{kind:?}"
            );
        }
        // Data is bounded by the length field (and the datagram) alone.
        for kind in [Kind::DataUp, Kind::DataDown] {
            assert_eq!(kind.max_body_len(), usize::from(u16::MAX));
            assert!(Frame::new_checked(&of_len(kind, MAX_BODY_LEN)[..]).is_ok());
        }
        assert_eq!((MAX_KEEPALIVE_BODY, MAX_CONTROL_BODY), (0, 1232));
        assert_eq!(MAX_E2E_HANDSHAKE_BODY, 1232);
    }

    #[test]
    fn rewrite_decrements_ttl_and_stops_at_one() {
        let mut buf = DATA;
        let mut f = Frame::new_checked(&mut buf[..]).unwrap();
        assert!(f.rewrite_for_next_hop(ReceiverIndex(42), 99));
        assert_eq!(
            (f.ttl(), f.receiver(), f.counter()),
            (15, ReceiverIndex(42), 99)
        );
        f.set_ttl(1);
        assert!(!f.rewrite_for_next_hop(ReceiverIndex(43), 100));
        assert_eq!(f.receiver(), ReceiverIndex(42));
    }

    #[test]
    fn kinds_round_trip_through_the_nibble() {
        for v in 0..16u8 {
            if let Some(k) = Kind::from_nibble(v) {
                assert_eq!(k as u8, v);
                assert_eq!(classify(&[k.byte0()]), Ok(k));
                assert_eq!(k.reversed().reversed(), k);
            }
        }
        assert_eq!(classify(&[]), Err(WireError::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn checked_views_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            if let Ok(f) = Frame::new_checked(&bytes[..]) {
                let _ = HeaderRepr::parse(&f);
                let _ = (f.tagged(), f.tag(), f.body());
                if let Ok(r) = E2eRecord::new_checked(f.body()) {
                    let _ = (r.receiver(), r.counter(), r.payload_len());
                }
            }
        }
    }
}
