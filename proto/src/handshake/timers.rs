//! Session and handshake timing: WireGuard's constants as typed durations,
//! and the small decisions built on them.
//!
//! The values follow the WireGuard paper (section 6) except the message
//! limits: a hop tag is only 64 bits, so a key must protect far fewer than
//! WireGuard's 2^60 messages. We rekey after 2^31 and refuse after 2^32
//! messages per key, which keeps the forgery odds per key below 2^-32 even
//! if every message were a forgery attempt.
//!
//! Nothing here reads a clock: every function takes `now`.

use std::time::{Duration, Instant};

/// An initiator starts a new handshake once its session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session older than this is dropped: no frame is sent or accepted on it.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// An unanswered handshake initiation is retransmitted after this long
/// (plus caller-chosen jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A passive keepalive is sent when a frame was received but nothing was
/// sent back for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshake attempts to a peer stop after this long without success.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// How long an initiator keeps using a cookie from a cookie reply, and how
/// often a responder rotates the secret cookies are made from.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// Messages sent under one key after which the sender rekeys.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 31;
/// Messages under one key (either direction) after which it is dropped.
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 32;

/// Timers of one established session.
///
/// Only the side that initiated the session rekeys on age, as in WireGuard,
/// so the two ends do not start crossing handshakes at the same moment.
/// Either side rekeys on its own message count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimers {
    established_at: Instant,
    initiator: bool,
    keepalive: PassiveKeepalive,
}

/// WireGuard's passive keepalive: when a frame was received and nothing
/// has been sent since for [`KEEPALIVE_TIMEOUT`], send a keepalive, so the
/// peer knows its frames arrive even when the traffic is one-way.
///
/// The timer runs from the *first* frame received since this side last
/// sent (WireGuard sets it on a receive when it is not already set, and
/// clears it on a send), not the last: a peer sending steadily one way must
/// still hear from us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassiveKeepalive {
    unanswered_since: Option<Instant>,
}

impl PassiveKeepalive {
    /// Records that this side sent a frame (data or keepalive).
    pub fn on_send(&mut self) {
        self.unanswered_since = None;
    }

    /// Records that an authenticated frame was received at `now`.
    pub fn on_receive(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    /// Whether to send a keepalive at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.unanswered_since
            .is_some_and(|rx| now.saturating_duration_since(rx) >= KEEPALIVE_TIMEOUT)
    }
}

impl SessionTimers {
    /// Timers for a session completed at `established_at`; `initiator` is
    /// whether this side sent the handshake initiation.
    pub fn new(established_at: Instant, initiator: bool) -> SessionTimers {
        SessionTimers {
            established_at,
            initiator,
            keepalive: PassiveKeepalive::default(),
        }
    }

    /// Records that a frame (data or keepalive) was sent at `now`.
    pub fn on_send(&mut self, _now: Instant) {
        self.keepalive.on_send();
    }

    /// Records that an authenticated frame was received at `now`.
    pub fn on_receive(&mut self, now: Instant) {
        self.keepalive.on_receive(now);
    }

    /// Age of the session's keys at `now` (zero if `now` is earlier).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.established_at)
    }

    /// Whether this side should start a new handshake: its own send count
    /// reached [`REKEY_AFTER_MESSAGES`], or (initiator only) the session is
    /// [`REKEY_AFTER_TIME`] old. The old session stays usable until
    /// [`SessionTimers::expired`].
    pub fn should_rekey(&self, now: Instant, sent: u64) -> bool {
        sent >= REKEY_AFTER_MESSAGES || (self.initiator && self.age(now) >= REKEY_AFTER_TIME)
    }

    /// Whether the session must no longer be used: [`REJECT_AFTER_TIME`]
    /// old, or [`REJECT_AFTER_MESSAGES`] sent or received under its keys.
    pub fn expired(&self, now: Instant, sent: u64, received: u64) -> bool {
        self.age(now) >= REJECT_AFTER_TIME
            || sent >= REJECT_AFTER_MESSAGES
            || received >= REJECT_AFTER_MESSAGES
    }

    /// Whether to send a keepalive now ([`PassiveKeepalive`]).
    pub fn needs_keepalive(&self, now: Instant) -> bool {
        self.keepalive.due(now)
    }
}

/// Retransmission state of one handshake attempt series towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeAttempts {
    first_sent: Instant,
    last_sent: Instant,
}

impl HandshakeAttempts {
    /// The first initiation was sent at `now`.
    pub fn new(now: Instant) -> HandshakeAttempts {
        HandshakeAttempts {
            first_sent: now,
            last_sent: now,
        }
    }

    /// A (re)transmission was sent at `now`.
    pub fn on_send(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Whether the last initiation went unanswered for [`REKEY_TIMEOUT`]
    /// plus `jitter` (the caller draws it, WireGuard uses 0..333 ms) and a
    /// new initiation should be sent.
    pub fn retransmit_due(&self, now: Instant, jitter: Duration) -> bool {
        !self.gave_up(now)
            && now.saturating_duration_since(self.last_sent) >= REKEY_TIMEOUT + jitter
    }

    /// Whether attempts have gone on for [`REKEY_ATTEMPT_TIME`] and the
    /// peer should be given up on until new traffic asks for it.
    pub fn gave_up(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.first_sent) >= REKEY_ATTEMPT_TIME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn constants_match_wireguard_and_the_tag_budget() {
        assert_eq!(REKEY_AFTER_TIME, 120 * S);
        assert_eq!(REJECT_AFTER_TIME, 180 * S);
        assert_eq!(REKEY_TIMEOUT, 5 * S);
        assert_eq!(KEEPALIVE_TIMEOUT, 10 * S);
        assert_eq!(REKEY_ATTEMPT_TIME, 90 * S);
        const { assert!(REKEY_AFTER_MESSAGES < REJECT_AFTER_MESSAGES) };
        const { assert!(REJECT_AFTER_MESSAGES <= 1 << 32) };
    }

    #[test]
    fn initiator_rekeys_on_age_responder_does_not() {
        let t0 = Instant::now();
        let init = SessionTimers::new(t0, true);
        let resp = SessionTimers::new(t0, false);
        assert!(!init.should_rekey(t0 + 119 * S, 0));
        assert!(init.should_rekey(t0 + 120 * S, 0));
        assert!(!resp.should_rekey(t0 + 150 * S, 0));
        assert!(resp.should_rekey(t0, REKEY_AFTER_MESSAGES));
        assert!(!resp.should_rekey(t0, REKEY_AFTER_MESSAGES - 1));
        // A clock that appears to go backwards is treated as age zero.
        assert_eq!(init.age(t0), Duration::ZERO);
    }

    #[test]
    fn expiry_by_age_and_count() {
        let t0 = Instant::now();
        let t = SessionTimers::new(t0, true);
        assert!(!t.expired(t0 + 179 * S, 0, 0));
        assert!(t.expired(t0 + 180 * S, 0, 0));
        assert!(t.expired(t0, REJECT_AFTER_MESSAGES, 0));
        assert!(t.expired(t0, 0, REJECT_AFTER_MESSAGES));
        assert!(!t.expired(t0, REJECT_AFTER_MESSAGES - 1, REJECT_AFTER_MESSAGES - 1));
    }

    #[test]
    fn keepalive_after_unanswered_receive() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(t0, false);
        assert!(!t.needs_keepalive(t0 + 60 * S), "nothing received yet");
        t.on_receive(t0 + S);
        assert!(!t.needs_keepalive(t0 + 10 * S));
        assert!(t.needs_keepalive(t0 + 11 * S));
        t.on_send(t0 + 11 * S);
        assert!(!t.needs_keepalive(t0 + 30 * S), "answered");
        t.on_receive(t0 + 31 * S);
        assert!(t.needs_keepalive(t0 + 41 * S));
        // A steady one-way sender: the timer runs from the first frame
        // not answered, so frames every second do not hold it off.
        t.on_send(t0 + 41 * S);
        for s in 42..=52 {
            t.on_receive(t0 + s * S);
        }
        assert!(!t.needs_keepalive(t0 + 51 * S));
        assert!(t.needs_keepalive(t0 + 52 * S));
    }

    #[test]
    fn handshake_retransmits_then_gives_up() {
        let t0 = Instant::now();
        let mut a = HandshakeAttempts::new(t0);
        let jitter = Duration::from_millis(200);
        assert!(!a.retransmit_due(t0 + 5 * S, jitter));
        assert!(a.retransmit_due(t0 + 5 * S + jitter, jitter));
        a.on_send(t0 + 6 * S);
        assert!(!a.retransmit_due(t0 + 10 * S, Duration::ZERO));
        assert!(a.retransmit_due(t0 + 11 * S, Duration::ZERO));
        assert!(!a.gave_up(t0 + 89 * S));
        assert!(a.gave_up(t0 + 90 * S));
        assert!(!a.retransmit_due(t0 + 95 * S, Duration::ZERO));
    }
}
