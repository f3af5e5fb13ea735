//! The agent side of a hop session, sans-IO: tagging frames to send and
//! checking frames received.
//!
//! A [`HopLink`] is what an agent (or a synthetic one in the load generator)
//! holds once the hop handshake with its relay completed
//! ([`crate::handshake::HopInitiator`] gives the [`HopSessionKeys`]). It has
//! one transmit counter and one replay window, owned by the one thread that
//! drives the link; the relay's side of the same session is split between
//! workers instead ([`crate::session`]).
//!
//! Several links may share one socket (one host with many users); the relay
//! tells them apart by receiver index, and so does [`HopLink::accept`].

use std::time::Instant;

use crate::handshake::HopSessionKeys;
use crate::hoptag::HopKey;
use crate::identity::Certificate;
use crate::ids::{ReceiverIndex, ServiceId, UserId};
use crate::replay::ReplayWindow;
use crate::wire::{Frame, HeaderRepr, Kind, DEFAULT_TTL, HEADER_LEN};

/// Why a received frame was not accepted by a link. Small and `Copy`:
/// dropping a bad frame must cost nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkDrop {
    /// Not a well-formed data-plane frame.
    #[error("malformed frame")]
    Malformed,
    /// Addressed to another link.
    #[error("frame for another receiver index")]
    WrongReceiver,
    /// The hop tag did not verify.
    #[error("bad hop tag")]
    BadTag,
    /// Replayed or too old.
    #[error("replayed hop counter")]
    Replay,
}

/// An established hop session, agent side.
#[derive(Debug)]
pub struct HopLink {
    local_index: ReceiverIndex,
    remote_index: ReceiverIndex,
    send: HopKey,
    next_counter: u64,
    recv: HopKey,
    window: ReplayWindow,
    peer: Certificate,
    established_at: Instant,
}

impl HopLink {
    /// The link a completed handshake gives.
    pub fn from_keys(keys: HopSessionKeys) -> HopLink {
        HopLink {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: HopKey::new(&keys.send_key),
            next_counter: 0,
            recv: HopKey::new(&keys.recv_key),
            window: ReplayWindow::default(),
            peer: keys.peer,
            established_at: keys.established_at,
        }
    }

    /// The index the relay puts in frames to us.
    pub fn local_index(&self) -> ReceiverIndex {
        self.local_index
    }

    /// The index we put in frames to the relay.
    pub fn remote_index(&self) -> ReceiverIndex {
        self.remote_index
    }

    /// The relay's certificate.
    pub fn peer(&self) -> &Certificate {
        &self.peer
    }

    /// When the handshake completed: the start of the session's timers
    /// ([`crate::handshake::timers`]).
    pub fn established_at(&self) -> Instant {
        self.established_at
    }

    /// The next hop counter this link will use: also the number of frames
    /// tagged so far, which the caller compares with
    /// [`crate::handshake::timers::REKEY_AFTER_MESSAGES`].
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Writes a hop header for a frame filling all of `frame` and tags it
    /// with the next counter. The body must already be in place: the tag
    /// covers it ([`crate::hoptag`]). A `frame` shorter than [`HEADER_LEN`]
    /// is left alone.
    pub fn write_header(&mut self, frame: &mut [u8], kind: Kind, user: UserId, service: ServiceId) {
        let body_len = u16::try_from(frame.len().saturating_sub(HEADER_LEN)).unwrap_or(u16::MAX);
        let repr = HeaderRepr {
            kind,
            ttl: DEFAULT_TTL,
            receiver: self.remote_index,
            counter: 0,
            user,
            service,
            body_len,
        };
        if repr.emit(frame).is_ok() {
            self.retag(frame);
        }
    }

    /// Gives an already built frame (body included: the tag covers it) the
    /// next counter and a fresh tag: how the load generator resends
    /// pre-built frames at line rate. `frame` must be at least
    /// [`HEADER_LEN`] long (the caller built it); a shorter one is left
    /// alone.
    #[inline]
    pub fn retag(&mut self, frame: &mut [u8]) {
        if frame.len() < HEADER_LEN {
            return;
        }
        let mut f = Frame::new_unchecked(frame);
        f.set_counter(self.next_counter);
        self.next_counter += 1;
        self.send.seal_frame(&mut f);
    }

    /// A `Keepalive` frame (hop header, empty body, ids 0) with the next
    /// counter. An initiator sends one at once after the handshake
    /// response: it confirms the keys to the relay, which routes nothing
    /// to a new session before a frame on it passed the hop tag
    /// (`docs/security.md` §3). The agent sends a control `Ping` instead,
    /// which confirms as well.
    pub fn keepalive(&mut self) -> Vec<u8> {
        let mut frame = vec![0u8; HEADER_LEN];
        self.write_header(&mut frame, Kind::Keepalive, UserId(0), ServiceId(0));
        frame
    }

    /// This link as its peer holds it: receiving under this side's send
    /// key at this side's remote index, and sending the other way; a
    /// fresh replay window and counter. For a measurement's receiver that
    /// checks this side's own frames after a hop that forwards them
    /// unchanged (`loadgen`'s sink behind its bare hop), so that it does
    /// the same work per frame as behind a relay.
    pub fn reversed(&self) -> HopLink {
        HopLink {
            local_index: self.remote_index,
            remote_index: self.local_index,
            send: self.recv.clone(),
            next_counter: 0,
            recv: self.send.clone(),
            window: ReplayWindow::default(),
            peer: self.peer.clone(),
            established_at: self.established_at,
        }
    }

    /// Checks a frame the relay sent on this link: shape, receiver index,
    /// replay pre-check, tag, then the counter is marked seen. A frame with
    /// a bad tag never moves the window.
    #[inline]
    pub fn accept(&mut self, frame: &[u8]) -> Result<(), LinkDrop> {
        let f = Frame::new_checked(frame).map_err(|_| LinkDrop::Malformed)?;
        if f.receiver() != self.local_index {
            return Err(LinkDrop::WrongReceiver);
        }
        if !self.window.check(f.counter()) {
            return Err(LinkDrop::Replay);
        }
        if !self.recv.verify_frame(&f) {
            return Err(LinkDrop::BadTag);
        }
        if !self.window.update(f.counter()) {
            return Err(LinkDrop::Replay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::test_util::{ca, node};
    use crate::identity::Role;
    use crate::testkit::write_frame;

    const SEND: [u8; 32] = [0x21; 32];
    const RECV: [u8; 32] = [0x42; 32];

    /// A link as a handshake would give it: we are index 7, the relay 9.
    fn link() -> HopLink {
        let relay = node(&ca(), 1, "relay-1", Role::Relay);
        HopLink::from_keys(HopSessionKeys {
            local_index: ReceiverIndex(7),
            remote_index: ReceiverIndex(9),
            send_key: SEND,
            recv_key: RECV,
            peer: relay.certificate().clone(),
            established_at: Instant::now(),
        })
    }

    /// A frame from the relay on `link()`'s session.
    fn from_relay(receiver: u32, counter: u64) -> Vec<u8> {
        let mut f = vec![0u8; HEADER_LEN + 4];
        write_frame(
            &mut f,
            Kind::Control,
            ReceiverIndex(receiver),
            counter,
            UserId(3),
            ServiceId(0),
            &HopKey::new(&RECV),
        );
        f
    }

    #[test]
    fn keepalive_is_a_tagged_empty_frame_with_the_next_counter() {
        let mut l = link();
        let k = l.keepalive();
        let f = Frame::new_checked(&k[..]).unwrap();
        assert_eq!(f.kind(), Kind::Keepalive);
        assert_eq!((f.receiver(), f.counter()), (ReceiverIndex(9), 0));
        assert!(f.body().is_empty());
        assert!(HopKey::new(&SEND).verify_frame(&f));
        assert_eq!(l.next_counter(), 1);
    }

    #[test]
    fn written_headers_carry_the_peer_index_counters_and_a_valid_tag() {
        let mut l = link();
        assert_eq!(
            (l.local_index(), l.remote_index()),
            (ReceiverIndex(7), ReceiverIndex(9))
        );
        assert_eq!(l.peer().body.name, "relay-1");
        let mut f = vec![0xee; HEADER_LEN + 30];
        l.write_header(&mut f, Kind::DataUp, UserId(3), ServiceId(5));
        let frame = Frame::new_checked(&f[..]).unwrap();
        let h = HeaderRepr::parse(&frame);
        assert_eq!(
            (h.kind, h.ttl, h.receiver, h.counter, h.user, h.service, h.body_len),
            (
                Kind::DataUp,
                DEFAULT_TTL,
                ReceiverIndex(9),
                0,
                UserId(3),
                ServiceId(5),
                30
            )
        );
        assert!(HopKey::new(&SEND).verify_frame(&frame));
        assert_eq!(&f[HEADER_LEN..], &[0xee; 30], "body untouched");

        l.retag(&mut f);
        let frame = Frame::new_checked(&f[..]).unwrap();
        assert_eq!(frame.counter(), 1);
        assert!(HopKey::new(&SEND).verify_frame(&frame));
        assert_eq!(l.next_counter(), 2);

        // Too short for a header: nothing written, no counter used.
        let mut short = [0u8; HEADER_LEN - 1];
        l.write_header(&mut short, Kind::DataUp, UserId(3), ServiceId(5));
        l.retag(&mut short);
        assert_eq!(short, [0; HEADER_LEN - 1]);
        assert_eq!(l.next_counter(), 2);
    }

    #[test]
    fn the_reversed_link_accepts_this_sides_frames_once() {
        let mut l = link();
        let mut peer = l.reversed();
        assert_eq!(peer.local_index(), l.remote_index());
        assert_eq!(peer.remote_index(), l.local_index());
        let mut f = vec![0u8; 80];
        l.write_header(&mut f, Kind::DataUp, UserId(1), ServiceId(2));
        assert_eq!(peer.accept(&f), Ok(()));
        assert_eq!(peer.accept(&f), Err(LinkDrop::Replay));
        assert_eq!(
            l.accept(&f),
            Err(LinkDrop::WrongReceiver),
            "not for this side"
        );
        let mut back = vec![0u8; 80];
        peer.write_header(&mut back, Kind::DataDown, UserId(1), ServiceId(2));
        assert_eq!(l.accept(&back), Ok(()), "and the other way");
    }

    #[test]
    fn accepts_the_relays_frames_once() {
        let mut l = link();
        let f = from_relay(7, 3);
        assert_eq!(l.accept(&f), Ok(()));
        assert_eq!(l.accept(&f), Err(LinkDrop::Replay));
        assert_eq!(l.accept(&from_relay(7, 1)), Ok(()), "reordering is fine");
    }

    #[test]
    fn rejects_bad_tags_without_burning_the_counter() {
        let mut l = link();
        let good = from_relay(7, 5);
        let mut forged = good.clone();
        forged[24] ^= 1;
        assert_eq!(l.accept(&forged), Err(LinkDrop::BadTag));
        // A frame tagged with our own send key is not the relay's.
        let mut reflected = good.clone();
        write_frame(
            &mut reflected,
            Kind::Control,
            ReceiverIndex(7),
            5,
            UserId(3),
            ServiceId(0),
            &HopKey::new(&SEND),
        );
        assert_eq!(l.accept(&reflected), Err(LinkDrop::BadTag));
        assert_eq!(l.accept(&good), Ok(()));
    }

    #[test]
    fn rejects_other_receivers_and_malformed_frames() {
        let mut l = link();
        assert_eq!(l.accept(&from_relay(8, 0)), Err(LinkDrop::WrongReceiver));
        let good = from_relay(7, 0);
        assert_eq!(l.accept(&good[..HEADER_LEN - 1]), Err(LinkDrop::Malformed));
        assert_eq!(l.accept(&good[..HEADER_LEN + 1]), Err(LinkDrop::Malformed));
        assert_eq!(l.accept(&[]), Err(LinkDrop::Malformed));
        assert_eq!(l.accept(&good), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_judged_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let mut l = link();
            let _ = l.accept(&bytes);
            let mut buf = bytes;
            l.retag(&mut buf);
            l.write_header(&mut buf, Kind::Keepalive, UserId(1), ServiceId(0));
        }
    }
}
