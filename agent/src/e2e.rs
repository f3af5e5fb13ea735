//! End-to-end sessions between a user's agent and a connector: sealing an
//! IP packet into a data frame in place, and opening one.
//!
//! A frame is built around the packet inside one pooled buffer
//! ([`crate::pool`]): the packet sits at [`HEADROOM`]; [`E2eSession::seal`]
//! writes the record header before it and the tag after it; the caller's
//! hop link then writes and tags the hop header in front. Opening is the
//! reverse, also in place: the packet is left at `HEADROOM..len - TAG`.
//!
//! The keys live in `proto`'s endpoint types: [`E2eSender`] owns the send
//! counter (no counter is sealed twice), [`E2eReceiver`] the replay window,
//! checked before opening and marked only after the tag verified (as
//! WireGuard does), so a forged frame cannot move it.

use std::ops::Range;
use std::time::{Duration, Instant};

use proto::aead::{Aad, E2eReceiver, E2eSender, ReceiveError};
use proto::handshake::timers::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use proto::handshake::{E2eSessionKeys, PassiveKeepalive};
use proto::identity::Certificate;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::wire::{E2eRecord, Frame, Kind, E2E_TAG_LEN, HEADER_LEN};

use crate::pool::{HEADROOM, TAILROOM};

/// Sealed frames under one key before the initiator rekeys; far below
/// the AEAD's confidentiality limit (`proto::aead::CONFIDENTIALITY_LIMIT`).
pub const REKEY_AFTER_FRAMES: u64 = proto::aead::CONFIDENTIALITY_LIMIT / 2;

/// Frames sent this long without one opened in return: the initiator
/// starts a new handshake, since the peer may have lost the session (a
/// restarted connector, or one whose policy closed it). WireGuard's
/// keepalive timeout plus its rekey timeout (10 + 5 s).
pub const UNANSWERED_REKEY: Duration = Duration::from_secs(15);

/// A frame opened and nothing sent back for this long: the receiver sends
/// an empty record (an end-to-end keepalive), so that the sender of a
/// one-way flow hears from it before [`UNANSWERED_REKEY`] and keeps its
/// session ([`PassiveKeepalive`], WireGuard's rule).
pub const PASSIVE_KEEPALIVE: Duration = KEEPALIVE_TIMEOUT;

/// Why a received data frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenDrop {
    /// Too short to hold a record.
    #[error("truncated end-to-end record")]
    Truncated,
    /// Counter replayed or too old.
    #[error("replayed end-to-end counter")]
    Replay,
    /// Authentication failed.
    #[error("end-to-end authentication failed")]
    BadTag,
    /// The session is past `REJECT_AFTER_TIME` or its message limit.
    #[error("end-to-end session expired")]
    Expired,
}

/// One established end-to-end session (one direction pair of keys).
pub struct E2eSession {
    local_index: ReceiverIndex,
    remote_index: ReceiverIndex,
    send: E2eSender,
    recv: E2eReceiver,
    established: Instant,
    last_recv: Option<Instant>,
    /// When a keepalive falls due ([`E2eSession::keepalive_due`]): frames
    /// opened count as received, frames sealed as sent.
    keepalive: PassiveKeepalive,
    /// What [`E2eSession::unanswered_for`] saw last: when, the frames
    /// sealed by then, and since when sends have gone unanswered.
    looked: Instant,
    sent_seen: u64,
    unanswered_since: Option<Instant>,
    peer: Certificate,
}

impl std::fmt::Debug for E2eSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eSession")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("next_counter", &self.send.next_counter())
            .field("peer", &self.peer.body.name)
            .finish_non_exhaustive()
    }
}

impl E2eSession {
    /// The session a completed handshake gives.
    pub fn new(keys: E2eSessionKeys, now: Instant) -> E2eSession {
        E2eSession {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: E2eSender::new(&keys.send_key),
            recv: E2eReceiver::new(&keys.recv_key),
            established: now,
            last_recv: None,
            keepalive: PassiveKeepalive::default(),
            looked: now,
            sent_seen: 0,
            unanswered_since: None,
            peer: keys.peer,
        }
    }

    /// The index the peer puts in records to us.
    pub fn local_index(&self) -> ReceiverIndex {
        self.local_index
    }

    /// The verified peer certificate.
    pub fn peer(&self) -> &Certificate {
        &self.peer
    }

    /// When the handshake completed.
    pub fn established(&self) -> Instant {
        self.established
    }

    /// Frames sealed so far.
    pub fn sent(&self) -> u64 {
        self.send.next_counter()
    }

    /// Whether a frame has been opened on this session (key confirmation).
    pub fn confirmed(&self) -> bool {
        self.last_recv.is_some()
    }

    /// Whether the initiator should start a new handshake.
    pub fn should_rekey(&self, now: Instant) -> bool {
        now.duration_since(self.established) >= REKEY_AFTER_TIME
            || self.send.next_counter() >= REKEY_AFTER_FRAMES
    }

    /// How long frames sealed on this session have gone without a frame
    /// opened in return, as seen by the calls to this (made about once a
    /// second): a send seen with nothing opened since the last call starts
    /// the clock, anything opened since the last call stops it.
    pub fn unanswered_for(&mut self, now: Instant) -> Duration {
        let heard = self.last_recv.is_some_and(|t| t >= self.looked);
        let sent = self.send.next_counter();
        if heard {
            self.unanswered_since = None;
        } else if sent != self.sent_seen {
            self.unanswered_since.get_or_insert(now);
        }
        self.sent_seen = sent;
        self.looked = now;
        self.unanswered_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Whether this side should send a keepalive now: a frame was opened
    /// [`PASSIVE_KEEPALIVE`] ago or more and nothing has been sealed since
    /// (any frame sealed answers, so a flow with traffic both ways never
    /// sends one). Sealing the keepalive clears it, so one is due at most
    /// once per frame opened after it.
    pub fn keepalive_due(&self, now: Instant) -> bool {
        self.keepalive.due(now) && !self.expired(now)
    }

    /// Whether the keys may no longer be used at all.
    pub fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.established) >= REJECT_AFTER_TIME
            || self.send.next_counter() >= proto::aead::CONFIDENTIALITY_LIMIT
    }

    /// Time since the last frame was opened (or since establishment).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.duration_since(self.last_recv.unwrap_or(self.established))
    }

    /// Seals the packet at `buf[HEADROOM..HEADROOM + len]` for a frame of
    /// `kind` between `user` and `service`; returns the frame's length. The
    /// hop header (bytes `0..HEADER_LEN`) is left for the hop link.
    ///
    /// `buf` must be at least `HEADROOM + len + TAILROOM` long (0 is
    /// returned otherwise).
    pub fn seal(
        &mut self,
        kind: Kind,
        user: UserId,
        service: ServiceId,
        buf: &mut [u8],
        len: usize,
    ) -> usize {
        let frame_len = HEADROOM + len + TAILROOM;
        if buf.len() < frame_len {
            return 0;
        }
        let aad = Aad {
            user,
            service,
            receiver: self.remote_index,
            kind: kind.byte0(),
        };
        let body = &mut buf[HEADER_LEN..frame_len];
        // The body is at least the record header and tag long, so the
        // checked view cannot fail.
        let Ok(mut record) = E2eRecord::new_checked(body) else {
            return 0;
        };
        let (payload, tag) = record.payload_and_tag_mut();
        // A spent key seals nothing (`expired` says so before this).
        let Ok((counter, sealed)) = self.send.seal(&aad, payload) else {
            return 0;
        };
        *tag = sealed;
        record.set_header(self.remote_index, counter);
        self.keepalive.on_send();
        frame_len
    }

    /// Opens the data frame `frame` (hop header already checked by the hop
    /// link) in place; returns where the packet lies in `frame`. An
    /// expired session opens nothing.
    pub fn open(&mut self, frame: &mut [u8], now: Instant) -> Result<Range<usize>, OpenDrop> {
        if self.expired(now) {
            return Err(OpenDrop::Expired);
        }
        if frame.len() < HEADROOM + TAILROOM {
            return Err(OpenDrop::Truncated);
        }
        let (kind, user, service) = {
            let f = Frame::new_unchecked(&*frame);
            (f.kind(), f.user(), f.service())
        };
        let aad = Aad {
            user,
            service,
            receiver: self.local_index,
            kind: kind.byte0(),
        };
        let end = frame.len() - E2E_TAG_LEN;
        let body = &mut frame[HEADER_LEN..];
        let counter = {
            let record = E2eRecord::new_checked(&*body).map_err(|_| OpenDrop::Truncated)?;
            record.counter()
        };
        let Ok(mut record) = E2eRecord::new_checked(body) else {
            return Err(OpenDrop::Truncated);
        };
        let (payload, tag) = record.payload_and_tag_mut();
        let tag = *tag;
        self.recv
            .open(counter, &aad, payload, &tag)
            .map_err(|e| match e {
                ReceiveError::Replay => OpenDrop::Replay,
                _ => OpenDrop::BadTag,
            })?;
        self.last_recv = Some(now);
        self.keepalive.on_receive(now);
        Ok(HEADROOM..end)
    }
}

/// The end-to-end receiver index of a data frame's record, if it has one.
pub fn record_receiver(frame: &[u8]) -> Option<ReceiverIndex> {
    let body = frame.get(HEADER_LEN..)?;
    E2eRecord::new_checked(body).ok().map(|r| r.receiver())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::identity::{CertificateBody, Role};

    fn keys(local: u32, remote: u32, send: u8, recv: u8) -> E2eSessionKeys {
        let ca = proto::identity::CaKeypair::from_seed(&[7; 32]);
        let peer = ca
            .issue(CertificateBody {
                id: 1,
                name: "peer".into(),
                role: Role::Connector,
                groups: vec![],
                static_key: [9; 32],
                not_before: 0,
                not_after: u64::MAX / 2,
            })
            .unwrap();
        E2eSessionKeys {
            local_index: ReceiverIndex(local),
            remote_index: ReceiverIndex(remote),
            send_key: [send; 32],
            recv_key: [recv; 32],
            peer,
        }
    }

    fn pair() -> (E2eSession, E2eSession) {
        let now = Instant::now();
        (
            E2eSession::new(keys(1, 2, 0xa, 0xb), now),
            E2eSession::new(keys(2, 1, 0xb, 0xa), now),
        )
    }

    fn frame(a: &mut E2eSession, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let len = a.seal(
            Kind::DataUp,
            UserId(5),
            ServiceId(6),
            &mut buf,
            payload.len(),
        );
        buf.truncate(len);
        let repr = proto::wire::HeaderRepr {
            kind: Kind::DataUp,
            ttl: 16,
            receiver: ReceiverIndex(0),
            counter: 0,
            user: UserId(5),
            service: ServiceId(6),
            body_len: (len - HEADER_LEN) as u16,
        };
        repr.emit(&mut buf).unwrap();
        buf
    }

    #[test]
    fn seal_then_open_round_trips_and_rejects_replay() {
        let (mut a, mut b) = pair();
        let mut f = frame(&mut a, b"hello packet");
        assert_eq!(record_receiver(&f), Some(ReceiverIndex(2)));
        let mut copy = f.clone();
        let range = b.open(&mut f, Instant::now()).unwrap();
        assert_eq!(&f[range], b"hello packet");
        assert!(b.confirmed());
        assert_eq!(b.open(&mut copy, Instant::now()), Err(OpenDrop::Replay));
    }

    #[test]
    fn tampering_fails_and_does_not_move_the_window() {
        let (mut a, mut b) = pair();
        let good = frame(&mut a, b"payload");
        // Payload bit flipped.
        let mut bad = good.clone();
        bad[HEADROOM] ^= 1;
        assert_eq!(b.open(&mut bad, Instant::now()), Err(OpenDrop::BadTag));
        // Ids moved to another pair: the AAD no longer matches.
        let mut moved = good.clone();
        Frame::new_unchecked(&mut moved[..]).set_service(ServiceId(7));
        assert_eq!(b.open(&mut moved, Instant::now()), Err(OpenDrop::BadTag));
        // Direction changed.
        let mut turned = good.clone();
        Frame::new_unchecked(&mut turned[..]).set_kind(Kind::DataDown);
        assert_eq!(b.open(&mut turned, Instant::now()), Err(OpenDrop::BadTag));
        // The genuine frame still opens: the failures did not mark its counter.
        let mut good = good;
        assert!(b.open(&mut good, Instant::now()).is_ok());
        assert_eq!(
            b.open(&mut [0u8; HEADROOM], Instant::now()),
            Err(OpenDrop::Truncated)
        );
    }

    /// The clock a restarted connector is noticed by: it starts at the
    /// first look that sees a send with nothing opened since the look
    /// before, keeps running over further sends, and stops at the first
    /// look after a frame was opened.
    #[test]
    fn sends_without_an_answer_are_timed_until_one_is_opened() {
        let (mut a, mut b) = pair();
        let t0 = a.established();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(a.unanswered_for(at(1_000)), Duration::ZERO, "nothing sent");
        frame(&mut a, b"ping");
        assert_eq!(a.unanswered_for(at(2_000)), Duration::ZERO);
        assert_eq!(a.unanswered_for(at(17_000)), UNANSWERED_REKEY);
        frame(&mut a, b"again");
        assert_eq!(a.unanswered_for(at(18_000)), Duration::from_secs(16));
        let mut reply = frame(&mut b, b"pong");
        a.open(&mut reply, at(18_500)).unwrap();
        assert_eq!(a.unanswered_for(at(19_000)), Duration::ZERO, "answered");
        // A send answered before the next look is not counted either.
        frame(&mut a, b"more");
        let mut reply = frame(&mut b, b"answer");
        a.open(&mut reply, at(19_500)).unwrap();
        assert_eq!(a.unanswered_for(at(20_000)), Duration::ZERO);
        assert_eq!(a.unanswered_for(at(60_000)), Duration::ZERO, "no new sends");
    }

    #[test]
    fn a_keepalive_falls_due_once_after_frames_opened_and_not_answered() {
        let (mut a, mut b) = pair();
        let t0 = b.established();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!b.keepalive_due(at(60_000)), "nothing opened");
        // A one-way flow: the timer runs from the first frame opened, not
        // the last, so a steady sender still hears from us.
        for ms in [1_000, 5_000, 10_999] {
            b.open(&mut frame(&mut a, b"one way"), at(ms)).unwrap();
        }
        assert!(!b.keepalive_due(at(10_999)));
        assert!(b.keepalive_due(at(11_000)), "10 s after the first");
        // The keepalive: an empty record, which the sender opens as one.
        let mut keepalive = frame(&mut b, b"");
        assert!(!b.keepalive_due(at(11_000)), "sealing answers");
        assert!(!b.keepalive_due(at(30_000)), "nothing opened since");
        let range = a.open(&mut keepalive, at(11_100)).unwrap();
        assert!(range.is_empty());
        assert_eq!(a.unanswered_for(at(12_000)), Duration::ZERO, "heard");
        // Traffic both ways never makes one due.
        b.open(&mut frame(&mut a, b"request"), at(40_000)).unwrap();
        frame(&mut b, b"reply");
        assert!(!b.keepalive_due(at(55_000)));
        // Nor does an expired session.
        b.open(&mut frame(&mut a, b"late"), at(56_000)).unwrap();
        assert!(!b.keepalive_due(t0 + REJECT_AFTER_TIME));
    }

    #[test]
    fn rekey_and_expiry_follow_the_timers() {
        let (a, _) = pair();
        let t = a.established();
        assert!(!a.should_rekey(t));
        assert!(a.should_rekey(t + REKEY_AFTER_TIME));
        assert!(!a.expired(t + REKEY_AFTER_TIME));
        assert!(a.expired(t + REJECT_AFTER_TIME));
    }
}
