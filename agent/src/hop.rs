//! The agent's hop session with its relay: handshake, rekey, liveness,
//! reconnection.
//!
//! Sans-IO: the runtime feeds received handshake frames and the clock in,
//! and sends what [`Hop::poll`] queues. The rules:
//!
//! * No session, or the current one due for rekey ([`REKEY_AFTER_TIME`]):
//!   send an initiation; retry every [`RETRY_AFTER`] with a fresh
//!   initiation (fresh timestamp) for as long as it takes; a relay that
//!   restarts is found again without help.
//! * After a rekey the previous session still accepts frames until it
//!   expires, so frames in flight are not lost.
//! * Silence from the relay for `ping_after` → a control `Ping` (which the
//!   relay answers); silence for `dead_after` although we pinged → the
//!   session is presumed lost (relay restarted or path gone) and a new
//!   handshake starts at once.
//!
//! The first frame sent on a new session is a `Ping`: it confirms the key
//! to the relay, and the relay answers with our directory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::control::ControlMessage;
use proto::handshake::timers::{REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use proto::handshake::{CookieJar, HopInitiator, LocalIdentity, Trust};
use proto::identity::{CaPublicKey, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::link::{HopLink, LinkDrop};
use proto::wire::{Frame, Kind, HEADER_LEN};

/// Unanswered initiation: try again after this long.
pub const RETRY_AFTER: Duration = Duration::from_millis(1000);

/// What happened to the hop on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopEvent {
    /// Nothing worth telling.
    None,
    /// A new session is up (first, rekey or reconnect).
    Established,
}

/// Hop statistics for `agent status`.
#[derive(Debug, Clone, Default)]
pub struct HopStats {
    /// Sessions established.
    pub handshakes: u64,
    /// Initiations sent.
    pub initiations: u64,
    /// Sessions given up for silence.
    pub lost: u64,
    /// Frames refused by the hop check (bad tag, replay, wrong index).
    pub rejected: u64,
    /// Pings sent.
    pub pings: u64,
    /// Wall-clock time of the last completed handshake (unix s).
    pub last_handshake_unix: Option<u64>,
}

struct Pending {
    initiator: HopInitiator,
    frame: Vec<u8>,
    sent: Instant,
}

struct Current {
    link: HopLink,
    established: Instant,
}

/// The hop session manager.
pub struct Hop {
    relay: SocketAddr,
    relay_key: [u8; 32],
    identity: LocalIdentity,
    ca: CaPublicKey,
    jar: CookieJar,
    pending: Option<Pending>,
    current: Option<Current>,
    previous: Option<Current>,
    last_recv: Instant,
    last_ping: Option<Instant>,
    ping_after: Duration,
    dead_after: Duration,
    next_index: u32,
    /// The id this agent writes as `user` in control frames.
    self_id: u32,
    /// Directory digest to put in pings.
    pub digest: u64,
    /// Counters.
    pub stats: HopStats,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hop")
            .field("relay", &self.relay)
            .field("up", &self.is_up())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Hop {
    /// A hop to `relay` (static key `relay_key`), as `identity`.
    pub fn new(
        relay: SocketAddr,
        relay_key: [u8; 32],
        identity: LocalIdentity,
        ca: CaPublicKey,
        ping_after: Duration,
        dead_after: Duration,
        now: Instant,
    ) -> Hop {
        let self_id = identity.certificate().id;
        Hop {
            relay,
            relay_key,
            jar: CookieJar::new(&relay_key),
            identity,
            ca,
            pending: None,
            current: None,
            previous: None,
            last_recv: now,
            last_ping: None,
            ping_after,
            dead_after,
            next_index: rand::random::<u32>() | 1,
            self_id,
            digest: 0,
            stats: HopStats::default(),
        }
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// Whether a session is up to send on.
    pub fn is_up(&self) -> bool {
        self.current.is_some()
    }

    /// The session to send on.
    pub fn link(&mut self) -> Option<&mut HopLink> {
        self.current.as_mut().map(|c| &mut c.link)
    }

    /// Timers: starts, retries or gives up handshakes, sends pings. Frames
    /// to send are appended to `out`. Returns when to call again.
    pub fn poll(&mut self, now: Instant, unix_nanos: u64, out: &mut Vec<Vec<u8>>) -> Instant {
        if let Some(prev) = &self.previous {
            if now.duration_since(prev.established) >= REJECT_AFTER_TIME {
                self.previous = None;
            }
        }
        if let Some(cur) = &self.current {
            let silent = now.duration_since(self.last_recv);
            let pinged_since = self.last_ping.is_some_and(|p| p > self.last_recv);
            if now.duration_since(cur.established) >= REJECT_AFTER_TIME
                || (silent >= self.dead_after && pinged_since)
            {
                tracing::warn!(relay = %self.relay, silent_ms = silent.as_millis() as u64, "hop session to the relay lost; handshaking again");
                self.stats.lost += 1;
                self.current = None;
                self.previous = None;
                self.pending = None;
            }
        }
        let want_handshake = match &self.current {
            None => true,
            Some(cur) => now.duration_since(cur.established) >= REKEY_AFTER_TIME,
        };
        if want_handshake {
            let due = self
                .pending
                .as_ref()
                .is_none_or(|p| now.duration_since(p.sent) >= RETRY_AFTER);
            if due {
                self.initiate(now, unix_nanos, out);
            }
        }
        if self.current.is_some() {
            let silent = now.duration_since(self.last_recv);
            let ping_due = self
                .last_ping
                .is_none_or(|p| now.duration_since(p) >= self.ping_after);
            if silent >= self.ping_after && ping_due {
                if let Some(frame) = self.ping_frame() {
                    out.push(frame);
                    self.last_ping = Some(now);
                }
            }
        }
        self.next_deadline(now)
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = now + self.ping_after;
        if let Some(p) = &self.pending {
            at = at.min(p.sent + RETRY_AFTER);
        }
        if self.current.is_some() {
            at = at.min(self.last_recv + self.ping_after);
            if let Some(p) = self.last_ping {
                at = at.min((p + self.ping_after).max(self.last_recv + self.dead_after));
            }
        }
        at.max(now + Duration::from_millis(1))
    }

    fn initiate(&mut self, now: Instant, unix_nanos: u64, out: &mut Vec<Vec<u8>>) {
        self.next_index = self.next_index.wrapping_add(2) | 1;
        match HopInitiator::new(
            &self.identity,
            &self.relay_key,
            Trust::new(self.ca, &[Role::Relay]),
            ReceiverIndex(self.next_index),
            &self.jar,
            now,
            unix_nanos,
        ) {
            Ok((initiator, frame)) => {
                out.push(frame.clone());
                self.stats.initiations += 1;
                self.pending = Some(Pending {
                    initiator,
                    frame,
                    sent: now,
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot start a hop handshake"),
        }
    }

    /// Handles a `HandshakeResponse` or `CookieReply` from the relay.
    pub fn on_handshake(
        &mut self,
        frame: &[u8],
        now: Instant,
        unix_nanos: u64,
        out: &mut Vec<Vec<u8>>,
    ) -> HopEvent {
        let Some(p) = self.pending.as_mut() else {
            return HopEvent::None;
        };
        match proto::wire::classify(frame) {
            Ok(Kind::HandshakeResponse) => {
                match p.initiator.handle_response(frame, now, unix_nanos) {
                    Ok(keys) => {
                        tracing::info!(relay = %self.relay, peer = %keys.peer.name, index = %keys.local_index, "hop session established");
                        let link = HopLink::from_keys(keys);
                        self.previous = self.current.take();
                        self.current = Some(Current {
                            link,
                            established: now,
                        });
                        self.pending = None;
                        self.last_recv = now;
                        self.stats.handshakes += 1;
                        self.stats.last_handshake_unix = Some(unix_nanos / 1_000_000_000);
                        // Confirm the key and ask for our directory.
                        if let Some(ping) = self.ping_frame() {
                            out.push(ping);
                            self.last_ping = Some(now);
                        }
                        HopEvent::Established
                    }
                    Err(e) => {
                        tracing::warn!(relay = %self.relay, error = %e, "hop handshake response rejected");
                        HopEvent::None
                    }
                }
            }
            Ok(Kind::CookieReply) => {
                match p.initiator.handle_cookie_reply(frame, &mut self.jar, now) {
                    Ok(()) => {
                        // The relay is under load: resend with the cookie.
                        p.frame = p.initiator.init_frame(&self.jar, now);
                        p.sent = now;
                        out.push(p.frame.clone());
                    }
                    Err(e) => tracing::debug!(error = %e, "cookie reply rejected"),
                }
                HopEvent::None
            }
            _ => HopEvent::None,
        }
    }

    /// Checks a data-plane frame from the relay against the current and
    /// the previous session.
    pub fn accept(&mut self, frame: &[u8], now: Instant) -> Result<(), LinkDrop> {
        let receiver = Frame::new_checked(frame)
            .map_err(|_| LinkDrop::Malformed)?
            .receiver();
        let link = [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
            .find(|c| c.link.local_index() == receiver);
        let result = match link {
            Some(c) => c.link.accept(frame),
            None => Err(LinkDrop::WrongReceiver),
        };
        match result {
            Ok(()) => self.last_recv = now,
            Err(_) => self.stats.rejected += 1,
        }
        result
    }

    /// Writes the hop header of `frame` (all of it is the frame) and tags
    /// it; false when no session is up.
    pub fn seal_header(
        &mut self,
        frame: &mut [u8],
        kind: Kind,
        user: UserId,
        service: ServiceId,
    ) -> bool {
        match self.link() {
            Some(link) => {
                link.write_header(frame, kind, user, service);
                true
            }
            None => false,
        }
    }

    fn ping_frame(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        ControlMessage::Ping {
            digest: self.digest,
        }
        .emit(&mut body);
        let mut frame = vec![0u8; HEADER_LEN + body.len()];
        frame[HEADER_LEN..].copy_from_slice(&body);
        let id = self.self_id;
        let link = self.link()?;
        link.write_header(&mut frame, Kind::Control, UserId(id), ServiceId(0));
        self.stats.pings += 1;
        Some(frame)
    }

    /// Sends a ping now (e.g. after a directory change was noticed).
    pub fn ping_now(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if let Some(f) = self.ping_frame() {
            out.push(f);
            self.last_ping = Some(now);
        }
    }
}
