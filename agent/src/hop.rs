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
//!
//! What the user has to fix is reported once, as a [`HopProblem`], in the
//! log and in [`Hop::problems`] (which `agent status` shows): a relay that
//! has not answered [`UNREACHABLE_AFTER`] initiations, a relay whose answer
//! fails our checks, and this agent's certificate nearing or past its end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::control::ControlMessage;
use proto::handshake::timers::{REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use proto::handshake::{CookieJar, HandshakeError, HopInitiator, LocalIdentity, Trust};
use proto::identity::{CaPublicKey, Certificate, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::link::{HopLink, LinkDrop};
use proto::wire::{Frame, Kind, HEADER_LEN};

use crate::status::{span, utc, ErrorLog};

/// Unanswered initiation: try again after this long.
pub const RETRY_AFTER: Duration = Duration::from_millis(1000);
/// Initiations in a row without an answer after which the relay is
/// reported unreachable (the hop keeps trying).
pub const UNREACHABLE_AFTER: u32 = 3;
/// How long before this agent's certificate ends it is reported; a quarter
/// of the certificate's lifetime instead when that is shorter, so that
/// short-lived certificates are not reported from the day they are issued.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);

/// Something about the hop that needs a person: the messages say what to
/// check or do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HopProblem {
    /// Initiations go unanswered. A relay stays silent to initiations it
    /// cannot or will not take, so this is also how a wrong relay key or a
    /// certificate the relay refuses looks from here.
    #[error("no answer from relay {relay} after {attempts} attempts; is it running, is [relay] address right, and is public_key the relay's? (a relay also stays silent to a certificate it refuses, e.g. one from another CA: see the relay's log)")]
    NoAnswer {
        /// The relay's address.
        relay: SocketAddr,
        /// Initiations sent without an answer.
        attempts: u32,
    },
    /// The relay answered, but its answer failed our checks: its
    /// certificate, its key or its role.
    #[error("relay {relay} answered, but its handshake failed this agent's checks: {reason} ([identity] ca must be the CA that issued the relay's certificate, [relay] public_key the key `relay keygen` printed for it)")]
    BadRelay {
        /// The relay's address.
        relay: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// This agent's certificate ends soon.
    #[error("certificate '{name}' expires at {at} (in {left}); renew it before then (`relay ca issue --force` for the same key over [identity] cert: the agent takes it without a restart), or the relay will refuse it", at = utc(*not_after), left = span(*left))]
    CertificateExpiring {
        /// Certificate name.
        name: String,
        /// End of validity, unix seconds.
        not_after: u64,
        /// Seconds left when this was noticed.
        left: u64,
    },
    /// This agent's certificate has ended.
    #[error("certificate '{name}' expired at {at}: the relay refuses new hop sessions from it; issue a new one for the same key over [identity] cert (the agent takes it without a restart)", at = utc(*not_after))]
    CertificateExpired {
        /// Certificate name.
        name: String,
        /// End of validity, unix seconds.
        not_after: u64,
    },
}

/// How far the certificate's end has been reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CertNotice {
    None,
    Expiring,
    Expired,
}

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
    /// Keepalive probes from the relay answered.
    pub probes_answered: u64,
    /// Wall-clock time of the last completed handshake (unix s).
    pub last_handshake_unix: Option<u64>,
    /// Renewed certificates taken.
    pub renewals: u64,
}

struct Pending {
    initiator: HopInitiator,
    frame: Vec<u8>,
    sent: Instant,
    /// The relay answered it (a response or a cookie reply).
    answered: bool,
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
    /// Initiations in a row the relay has not answered.
    unanswered: u32,
    cert_notice: CertNotice,
    /// The certificate problems reported, withdrawn on renewal.
    cert_problems: Vec<String>,
    /// A renewed certificate waits to be presented: handshake now.
    renewed: bool,
    problems: ErrorLog,
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
        let self_id = identity.certificate().body.id;
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
            unanswered: 0,
            cert_notice: CertNotice::None,
            cert_problems: Vec::new(),
            renewed: false,
            problems: ErrorLog::default(),
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

    /// What the user has to fix, oldest first (each logged once when it
    /// was noticed).
    pub fn problems(&self) -> Vec<String> {
        self.problems.to_vec()
    }

    /// The session to send on.
    pub fn link(&mut self) -> Option<&mut HopLink> {
        self.current.as_mut().map(|c| &mut c.link)
    }

    /// Timers: starts, retries or gives up handshakes, sends pings. Frames
    /// to send are appended to `out`. Returns when to call again.
    pub fn poll(&mut self, now: Instant, unix_nanos: u64, out: &mut Vec<Vec<u8>>) -> Instant {
        self.check_certificate(unix_nanos / 1_000_000_000);
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
        if want_handshake || self.renewed {
            // An initiation in flight carries the old certificate: a
            // renewal replaces it at once.
            let due = self.renewed
                || self
                    .pending
                    .as_ref()
                    .is_none_or(|p| now.duration_since(p.sent) >= RETRY_AFTER);
            if due {
                self.renewed = false;
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

    /// Presents `identity`, a renewed certificate for the same key, from
    /// now on, and handshakes with it at the next [`Hop::poll`] so the
    /// relay sees it at once; the current session carries traffic until
    /// the new one is up, so nothing waits. The old certificate's expiry
    /// reports are withdrawn. Returns false, changing nothing, for another
    /// key.
    pub fn renew(&mut self, identity: LocalIdentity) -> bool {
        if !self.identity.same_key(&identity) {
            return false;
        }
        self.identity = identity;
        self.stats.renewals += 1;
        self.cert_notice = CertNotice::None;
        for msg in self.cert_problems.drain(..) {
            self.problems.forget(&msg);
        }
        self.renewed = true;
        true
    }

    /// The certificate this agent presents.
    pub fn certificate(&self) -> &Certificate {
        self.identity.certificate()
    }

    /// Records a problem for `agent status` (and logs it).
    pub fn report(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Reports this agent's certificate once when its end nears and once
    /// when it has passed.
    fn check_certificate(&mut self, now_unix: u64) {
        let Some(problem) = certificate_problem(self.identity.certificate(), now_unix) else {
            return;
        };
        let notice = match problem {
            HopProblem::CertificateExpired { .. } => CertNotice::Expired,
            _ => CertNotice::Expiring,
        };
        if notice > self.cert_notice {
            self.cert_notice = notice;
            let msg = problem.to_string();
            self.problems.push(msg.clone());
            self.cert_problems.push(msg);
        }
    }

    fn initiate(&mut self, now: Instant, unix_nanos: u64, out: &mut Vec<Vec<u8>>) {
        if let Some(p) = &self.pending {
            if p.answered {
                self.unanswered = 0;
            } else {
                self.unanswered = self.unanswered.saturating_add(1);
                if self.unanswered == UNREACHABLE_AFTER {
                    self.problems.push(
                        HopProblem::NoAnswer {
                            relay: self.relay,
                            attempts: self.unanswered,
                        }
                        .to_string(),
                    );
                }
            }
        }
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
                    answered: false,
                });
            }
            Err(e) => self
                .problems
                .push(format!("cannot start a hop handshake: {e}")),
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
                        tracing::info!(relay = %self.relay, peer = %keys.peer.body.name, index = %keys.local_index, "hop session established");
                        if self.unanswered >= UNREACHABLE_AFTER {
                            tracing::info!(relay = %self.relay, "the relay answers again");
                        }
                        self.unanswered = 0;
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
                    Err(e) if not_an_answer(&e) => {
                        tracing::debug!(relay = %self.relay, error = %e, "stray handshake response dropped");
                        HopEvent::None
                    }
                    Err(e) => {
                        p.answered = true;
                        self.problems.push(
                            HopProblem::BadRelay {
                                relay: self.relay,
                                reason: e.to_string(),
                            }
                            .to_string(),
                        );
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
                        p.answered = true;
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

    /// Whether `frame` (a frame [`Hop::accept`] took) is a relay's
    /// keepalive probe: a control `Ping`. The runtime answers it with a
    /// `Pong` ([`pong_body`]) on the session; the relay takes a connector
    /// that stops answering out of its routes.
    pub fn is_probe(frame: &[u8]) -> bool {
        let frame = Frame::new_unchecked(frame);
        matches!(
            ControlMessage::parse(frame.body()),
            Ok(ControlMessage::Ping { .. })
        )
    }

    /// This agent's certificate id (the user id of its control frames).
    pub fn self_id(&self) -> u32 {
        self.self_id
    }

    /// Sends a ping now (e.g. after a directory change was noticed).
    pub fn ping_now(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        if let Some(f) = self.ping_frame() {
            out.push(f);
            self.last_ping = Some(now);
        }
    }
}

/// The body of the `Pong` that answers a relay's probe (built once: the
/// answer is sent without allocating).
pub fn pong_body() -> Vec<u8> {
    let mut body = Vec::new();
    ControlMessage::Pong { digest: 0 }.emit(&mut body);
    body
}

/// What to tell the user about `cert` at `now_unix`: that it has expired,
/// that it expires within [`EXPIRY_WARNING`] (or the last quarter of its
/// lifetime, if shorter), or nothing.
pub fn certificate_problem(cert: &Certificate, now_unix: u64) -> Option<HopProblem> {
    let lifetime = cert.body.not_after.saturating_sub(cert.body.not_before);
    let warn_before = EXPIRY_WARNING.as_secs().min(lifetime / 4);
    if now_unix > cert.body.not_after {
        Some(HopProblem::CertificateExpired {
            name: cert.body.name.clone(),
            not_after: cert.body.not_after,
        })
    } else if cert.body.not_after - now_unix <= warn_before {
        Some(HopProblem::CertificateExpiring {
            name: cert.body.name.clone(),
            not_after: cert.body.not_after,
            left: cert.body.not_after - now_unix,
        })
    } else {
        None
    }
}

/// Whether a failed response is not the relay's answer to our current
/// initiation at all (junk, another attempt's, not for our key), as
/// opposed to an answer that failed our checks.
fn not_an_answer(e: &HandshakeError) -> bool {
    matches!(
        e,
        HandshakeError::Malformed(_)
            | HandshakeError::UnexpectedKind
            | HandshakeError::WrongReceiver { .. }
            | HandshakeError::BadMac1
            | HandshakeError::Finished
    )
}

#[cfg(test)]
mod tests {
    //! The hop's timers against an in-memory relay (`HopResponder`), with
    //! a hand-advanced clock: no sockets, no sleeps.

    use super::*;
    use proto::handshake::{HopResponder, InitOutcome, StaticKeypair};
    use proto::identity::{CaKeypair, CertificateBody};

    /// Unix time the fixtures' certificates are valid around.
    const T0_UNIX: u64 = 1_800_000_000;
    const PING_AFTER: Duration = Duration::from_secs(2);
    const DEAD_AFTER: Duration = Duration::from_secs(6);
    const MS: Duration = Duration::from_millis(1);

    fn ca() -> CaKeypair {
        CaKeypair::from_seed(&[0x11; 32])
    }

    fn node(ca: &CaKeypair, id: u32, name: &str, role: Role, valid: (u64, u64)) -> LocalIdentity {
        let kp = StaticKeypair::generate().unwrap();
        let cert = ca
            .issue(CertificateBody {
                id,
                name: name.into(),
                role,
                groups: vec!["eng".into()],
                static_key: kp.public,
                not_before: valid.0,
                not_after: valid.1,
            })
            .unwrap();
        LocalIdentity::new(kp.private, cert)
    }

    /// An agent's hop and the relay it talks to, on one hand-driven clock.
    struct Sim {
        hop: Hop,
        relay: HopResponder,
        under_load: bool,
        /// The relay's side of each session it completed, oldest first.
        relay_links: Vec<HopLink>,
        /// The certificate names the relay saw on those sessions.
        relay_saw: Vec<String>,
        now: Instant,
        unix_nanos: u64,
        next_index: u32,
    }

    impl Sim {
        fn new() -> Sim {
            Sim::with(&ca(), (T0_UNIX - 86_400, T0_UNIX + 30 * 86_400))
        }

        /// The relay's certificate comes from `relay_ca`; the agent's,
        /// valid over `agent_valid`, from the test CA.
        fn with(relay_ca: &CaKeypair, agent_valid: (u64, u64)) -> Sim {
            let ca = ca();
            let agent = node(&ca, 1001, "alice", Role::User, agent_valid);
            let relay_valid = (T0_UNIX - 3600, T0_UNIX + 86_400);
            let relay = node(relay_ca, 1, "relay-1", Role::Relay, relay_valid);
            let now = Instant::now();
            let responder = HopResponder::new(
                relay.clone(),
                Trust::new(ca.public(), &[Role::User, Role::Connector]),
                [0x77; 32],
                now,
            );
            let hop = Hop::new(
                "192.0.2.1:51820".parse().unwrap(),
                *relay.public_key(),
                agent,
                ca.public(),
                PING_AFTER,
                DEAD_AFTER,
                now,
            );
            Sim {
                hop,
                relay: responder,
                under_load: false,
                relay_links: Vec::new(),
                relay_saw: Vec::new(),
                now,
                unix_nanos: T0_UNIX * 1_000_000_000,
                next_index: 0x100,
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.unix_nanos += u64::try_from(d.as_nanos()).unwrap();
        }

        fn advance_to(&mut self, at: Instant) {
            self.advance(at - self.now);
        }

        fn poll(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            self.hop.poll(self.now, self.unix_nanos, &mut out);
            out
        }

        /// The relay handles `init` and the hop its answer (a response, or
        /// a cookie reply under load); returns the hop's event and what it
        /// queued.
        fn answer(&mut self, init: &[u8]) -> (HopEvent, Vec<Vec<u8>>) {
            self.next_index += 1;
            let outcome = self
                .relay
                .handle_init(
                    init,
                    "198.51.100.7:40000".parse().unwrap(),
                    self.under_load,
                    ReceiverIndex(self.next_index),
                    self.now,
                    self.unix_nanos,
                    &mut rand::rngs::OsRng,
                )
                .expect("the relay accepts the initiation");
            let reply = match outcome {
                InitOutcome::Established { response, keys } => {
                    self.relay_saw.push(keys.peer.body.name.clone());
                    self.relay_links.push(HopLink::from_keys(keys));
                    response
                }
                InitOutcome::CookieReply(reply) => reply.to_vec(),
            };
            let mut out = Vec::new();
            let ev = self
                .hop
                .on_handshake(&reply, self.now, self.unix_nanos, &mut out);
            (ev, out)
        }

        /// Polls once, expects exactly one initiation and answers it.
        fn establish(&mut self) {
            let out = self.poll();
            let init = only(&out, Kind::HandshakeInit);
            let (ev, _) = self.answer(&init);
            assert_eq!(ev, HopEvent::Established);
        }

        /// A control frame from the relay on its `i`-th session.
        fn frame_from_relay(&mut self, i: usize) -> Vec<u8> {
            let mut f = vec![0u8; HEADER_LEN + 4];
            self.relay_links[i].write_header(&mut f, Kind::Control, UserId(1001), ServiceId(0));
            f
        }

        /// The relay's side of session `i` accepts `frame`: addressed to
        /// it and tagged with that session's key.
        fn relay_accepts(&mut self, i: usize, frame: &[u8]) -> bool {
            self.relay_links[i].accept(frame).is_ok()
        }
    }

    fn kinds(out: &[Vec<u8>]) -> Vec<Kind> {
        out.iter()
            .map(|f| proto::wire::classify(f).unwrap())
            .collect()
    }

    fn only(out: &[Vec<u8>], kind: Kind) -> Vec<u8> {
        assert_eq!(kinds(out), vec![kind], "expected exactly one {kind:?}");
        out[0].clone()
    }

    #[test]
    fn first_poll_initiates_and_retries_after_retry_after_only() {
        let mut s = Sim::new();
        let first = only(&s.poll(), Kind::HandshakeInit);
        assert_eq!(s.hop.stats.initiations, 1);
        assert!(!s.hop.is_up());
        s.advance(RETRY_AFTER - MS);
        assert!(s.poll().is_empty(), "no retry before RETRY_AFTER");
        s.advance(MS);
        let second = only(&s.poll(), Kind::HandshakeInit);
        assert_ne!(first, second, "a retry is a fresh initiation");
        assert_eq!(s.hop.stats.initiations, 2);
        // The fresh one is answerable; the stale one is a replay to the
        // relay (older timestamp), so only the newest matters.
        let (ev, _) = s.answer(&second);
        assert_eq!(ev, HopEvent::Established);
    }

    #[test]
    fn response_establishes_and_queues_a_ping() {
        let mut s = Sim::new();
        let init = only(&s.poll(), Kind::HandshakeInit);
        s.advance(Duration::from_millis(30));
        let (ev, out) = s.answer(&init);
        assert_eq!(ev, HopEvent::Established);
        assert!(s.hop.is_up());
        let ping = only(&out, Kind::Control);
        assert!(s.relay_accepts(0, &ping));
        assert_eq!(s.hop.stats.handshakes, 1);
        assert_eq!(s.hop.stats.pings, 1);
        assert_eq!(s.hop.stats.last_handshake_unix, Some(T0_UNIX));
        // Nothing more to send right away, and no second initiation.
        assert!(s.poll().is_empty());
        // A frame the relay tags on the session is accepted.
        let f = s.frame_from_relay(0);
        assert_eq!(s.hop.accept(&f, s.now), Ok(()));
    }

    #[test]
    fn relay_probes_are_told_from_other_control_frames() {
        let mut s = Sim::new();
        s.establish();
        let mut probe = vec![0u8; HEADER_LEN];
        ControlMessage::Ping { digest: 0 }.emit(&mut probe);
        s.relay_links[0].write_header(&mut probe, Kind::Control, UserId(1001), ServiceId(0));
        s.hop.accept(&probe, s.now).unwrap();
        assert!(Hop::is_probe(&probe));
        let mut pong = vec![0u8; HEADER_LEN];
        pong.extend_from_slice(&pong_body());
        assert!(!Hop::is_probe(&pong));
        assert_eq!(
            ControlMessage::parse(&pong_body()),
            Ok(ControlMessage::Pong { digest: 0 })
        );
        assert!(!Hop::is_probe(&s.frame_from_relay(0)));
    }

    /// An agent sends two control messages, its ping and the pong that
    /// answers a relay's probe: both fixed-size, far within the bound a
    /// relay holds control frames to (`MAX_CONTROL_BODY`), and the relay's
    /// side takes the ping.
    #[test]
    fn the_agents_control_messages_fit_the_control_frame_bound() {
        use proto::wire::MAX_CONTROL_BODY;
        let mut s = Sim::new();
        s.establish();
        s.hop.digest = u64::MAX;
        let mut out = Vec::new();
        s.hop.ping_now(s.now, &mut out);
        let ping = only(&out, Kind::Control);
        assert!(s.relay_accepts(0, &ping));
        assert_eq!(ping.len() - HEADER_LEN, proto::control::PING_LEN);
        assert_eq!(pong_body().len(), proto::control::PING_LEN);
        let mut pong = vec![0u8; HEADER_LEN];
        pong.extend_from_slice(&pong_body());
        s.hop
            .seal_header(&mut pong, Kind::Control, UserId(1001), ServiceId(0));
        assert!(s.relay_accepts(0, &pong));
        assert!(pong.len() - HEADER_LEN <= MAX_CONTROL_BODY);
    }

    #[test]
    fn silence_brings_a_ping_after_ping_after() {
        let mut s = Sim::new();
        s.establish();
        // The relay answered the first ping; then silence.
        let f = s.frame_from_relay(0);
        s.hop.accept(&f, s.now).unwrap();
        s.advance(PING_AFTER - MS);
        assert!(s.poll().is_empty(), "no ping before ping_after");
        s.advance(MS);
        let ping = only(&s.poll(), Kind::Control);
        assert!(s.relay_accepts(0, &ping));
        assert_eq!(s.hop.stats.pings, 2);
        // A frame from the relay resets the silence.
        s.advance(Duration::from_millis(500));
        let f = s.frame_from_relay(0);
        s.hop.accept(&f, s.now).unwrap();
        s.advance(PING_AFTER - MS);
        assert!(s.poll().is_empty());
        assert!(s.hop.is_up());
    }

    #[test]
    fn silence_after_a_ping_for_dead_after_drops_the_session_and_reinitiates() {
        let mut s = Sim::new();
        s.establish();
        // Pings go out every ping_after while the relay stays silent...
        let mut t = Duration::ZERO;
        while t + PING_AFTER < DEAD_AFTER {
            s.advance(PING_AFTER);
            t += PING_AFTER;
            only(&s.poll(), Kind::Control);
        }
        s.advance(DEAD_AFTER - t - MS);
        assert!(s.poll().is_empty());
        assert!(s.hop.is_up(), "not dead before dead_after");
        assert_eq!(s.hop.stats.lost, 0);
        // ...and at dead_after the session is given up, a new initiation
        // leaves in the same poll.
        s.advance(MS);
        let out = s.poll();
        only(&out, Kind::HandshakeInit);
        assert!(!s.hop.is_up());
        assert_eq!(s.hop.stats.lost, 1);
        // Frames on the lost session are refused.
        let f = s.frame_from_relay(0);
        assert_eq!(s.hop.accept(&f, s.now), Err(LinkDrop::WrongReceiver));
        // The relay (restarted, say) answers and the hop is back.
        let (ev, _) = s.answer(&out[0]);
        assert_eq!(ev, HopEvent::Established);
        assert_eq!(s.hop.stats.handshakes, 2);
    }

    #[test]
    fn rekey_after_rekey_after_time_keeps_the_old_link_until_reject_after_time() {
        let mut s = Sim::new();
        s.establish();
        let t0 = s.now;
        // Keep the session alive with a frame from the relay every second.
        let step = Duration::from_secs(1);
        while s.now + step < t0 + REKEY_AFTER_TIME {
            s.advance(step);
            let f = s.frame_from_relay(0);
            s.hop.accept(&f, s.now).unwrap();
            assert!(
                !kinds(&s.poll()).contains(&Kind::HandshakeInit),
                "no rekey before REKEY_AFTER_TIME"
            );
        }
        s.advance_to(t0 + REKEY_AFTER_TIME - MS);
        assert!(!kinds(&s.poll()).contains(&Kind::HandshakeInit));
        s.advance(MS);
        let init = only(&s.poll(), Kind::HandshakeInit);
        // While the new handshake runs, the old link still sends.
        assert!(s.hop.is_up());
        let mut frame = vec![0u8; HEADER_LEN + 8];
        assert!(s
            .hop
            .seal_header(&mut frame, Kind::Control, UserId(1001), ServiceId(0)));
        assert!(s.relay_accepts(0, &frame));
        // The new session takes over for sending...
        let (ev, out) = s.answer(&init);
        assert_eq!(ev, HopEvent::Established);
        assert!(s.relay_accepts(1, &only(&out, Kind::Control)));
        assert!(s
            .hop
            .seal_header(&mut frame, Kind::Control, UserId(1001), ServiceId(0)));
        assert!(s.relay_accepts(1, &frame));
        // ...while frames tagged on the previous one are still accepted
        // until REJECT_AFTER_TIME from its start.
        s.advance_to(t0 + REJECT_AFTER_TIME - MS);
        let f = s.frame_from_relay(1);
        s.hop.accept(&f, s.now).unwrap();
        s.poll();
        let f = s.frame_from_relay(0);
        assert_eq!(s.hop.accept(&f, s.now), Ok(()));
        s.advance(MS);
        s.poll();
        let f = s.frame_from_relay(0);
        assert_eq!(s.hop.accept(&f, s.now), Err(LinkDrop::WrongReceiver));
        let f = s.frame_from_relay(1);
        assert_eq!(s.hop.accept(&f, s.now), Ok(()));
        assert!(s.hop.is_up());
        assert_eq!(s.hop.stats.lost, 0);
    }

    #[test]
    fn a_session_lost_while_rekeying_initiates_at_once() {
        let mut s = Sim::new();
        s.establish();
        let t0 = s.now;
        let step = Duration::from_secs(1);
        while s.now + step <= t0 + Duration::from_secs(118) {
            s.advance(step);
            let f = s.frame_from_relay(0);
            s.hop.accept(&f, s.now).unwrap();
            s.poll();
        }
        // The relay's last word, half a second off the retry grid.
        s.advance(Duration::from_millis(500));
        let f = s.frame_from_relay(0);
        s.hop.accept(&f, s.now).unwrap();
        let dead_at = s.now + DEAD_AFTER;
        let half = Duration::from_millis(500);
        while s.now + half < dead_at {
            s.advance(half);
            s.poll();
            assert!(s.hop.is_up());
        }
        assert!(s.hop.stats.initiations > 1, "rekey attempts went out");
        // Dead halfway between two rekey retries: the next initiation
        // does not wait for the retry timer.
        s.advance(half);
        let out = s.poll();
        assert!(!s.hop.is_up());
        assert_eq!(s.hop.stats.lost, 1);
        only(&out, Kind::HandshakeInit);
    }

    #[test]
    fn cookie_reply_under_load_resends_with_mac2_and_completes() {
        let mut s = Sim::new();
        s.under_load = true;
        let t0 = s.now;
        let init = only(&s.poll(), Kind::HandshakeInit);
        s.advance(Duration::from_millis(300));
        let (ev, out) = s.answer(&init);
        assert_eq!(ev, HopEvent::None);
        let resent = only(&out, Kind::HandshakeInit);
        assert_ne!(resent, init, "the resend carries the cookie's mac2");
        assert_eq!(s.hop.stats.initiations, 1, "a resend is not a new attempt");
        // The resend restarts the retry timer.
        s.advance_to(t0 + RETRY_AFTER);
        assert!(s.poll().is_empty());
        let (ev, _) = s.answer(&resent);
        assert_eq!(ev, HopEvent::Established);
        assert!(s.hop.is_up());
    }

    #[test]
    fn junk_and_stale_handshake_frames_change_nothing() {
        let mut s = Sim::new();
        let init = only(&s.poll(), Kind::HandshakeInit);
        let mut out = Vec::new();
        for junk in [&[][..], &[0x19, 0, 0], &init[..]] {
            assert_eq!(
                s.hop.on_handshake(junk, s.now, s.unix_nanos, &mut out),
                HopEvent::None
            );
        }
        assert!(out.is_empty());
        assert_eq!(s.hop.accept(&[1, 2, 3], s.now), Err(LinkDrop::Malformed));
        let (ev, _) = s.answer(&init);
        assert_eq!(ev, HopEvent::Established);
    }

    fn count(problems: &[String], needle: &str) -> usize {
        problems.iter().filter(|p| p.contains(needle)).count()
    }

    #[test]
    fn an_unanswered_relay_is_reported_once_and_retried_forever() {
        let mut s = Sim::new();
        s.poll();
        for _ in 1..UNREACHABLE_AFTER {
            s.advance(RETRY_AFTER);
            only(&s.poll(), Kind::HandshakeInit);
        }
        assert!(
            s.hop.problems().is_empty(),
            "the last attempt may still be answered"
        );
        s.advance(RETRY_AFTER);
        only(&s.poll(), Kind::HandshakeInit);
        let problems = s.hop.problems();
        assert_eq!(
            problems,
            vec![format!(
                "no answer from relay 192.0.2.1:51820 after {UNREACHABLE_AFTER} attempts; is it running, is [relay] address right, and is public_key the relay's? (a relay also stays silent to a certificate it refuses, e.g. one from another CA: see the relay's log)"
            )]
        );
        for _ in 0..20 {
            s.advance(RETRY_AFTER);
            only(&s.poll(), Kind::HandshakeInit);
        }
        assert_eq!(s.hop.problems(), problems, "reported once");
        assert_eq!(
            s.hop.stats.initiations,
            u64::from(UNREACHABLE_AFTER) + 21,
            "still trying"
        );
        // The relay comes up and answers the newest initiation.
        s.advance(RETRY_AFTER);
        let init = only(&s.poll(), Kind::HandshakeInit);
        assert_eq!(s.answer(&init).0, HopEvent::Established);
    }

    #[test]
    fn a_relay_key_other_than_the_configured_one_looks_unreachable() {
        let mut s = Sim::new();
        // The relay at that address holds another key than the one the
        // agent was given: it drops the initiation before any DH.
        let ca = ca();
        let other = node(
            &ca,
            2,
            "relay-2",
            Role::Relay,
            (T0_UNIX - 60, T0_UNIX + 3600),
        );
        s.relay = HopResponder::new(
            other,
            Trust::new(ca.public(), &[Role::User]),
            [1; 32],
            s.now,
        );
        let init = only(&s.poll(), Kind::HandshakeInit);
        let r = s.relay.handle_init(
            &init,
            "198.51.100.7:40000".parse().unwrap(),
            false,
            ReceiverIndex(9),
            s.now,
            s.unix_nanos,
            &mut rand::rngs::OsRng,
        );
        assert_eq!(r, Err(HandshakeError::BadMac1));
        for _ in 0..UNREACHABLE_AFTER {
            s.advance(RETRY_AFTER);
            s.poll();
        }
        assert_eq!(count(&s.hop.problems(), "is public_key the relay's?"), 1);
    }

    #[test]
    fn a_relay_certificate_from_another_ca_is_reported_not_unreachable() {
        let rogue = CaKeypair::from_seed(&[0x99; 32]);
        let mut s = Sim::with(&rogue, (T0_UNIX - 86_400, T0_UNIX + 30 * 86_400));
        for _ in 0..2 * UNREACHABLE_AFTER {
            let init = only(&s.poll(), Kind::HandshakeInit);
            let (ev, out) = s.answer(&init);
            assert_eq!(ev, HopEvent::None);
            assert!(out.is_empty());
            assert!(!s.hop.is_up());
            s.advance(RETRY_AFTER);
        }
        let problems = s.hop.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("relay 192.0.2.1:51820 answered, but its handshake failed this agent's checks: peer certificate rejected: certificate for `relay-1` was not signed by this CA"), "{}", problems[0]);
        assert!(problems[0].contains("[identity] ca"));
    }

    #[test]
    fn the_certificate_end_is_reported_a_day_ahead_and_when_it_passes() {
        let not_after = T0_UNIX + 25 * 3600;
        let mut s = Sim::with(&ca(), (T0_UNIX - 30 * 86_400, not_after));
        s.establish();
        s.poll();
        assert!(s.hop.problems().is_empty());
        s.advance(Duration::from_secs(3600 + 60));
        s.poll();
        s.advance(Duration::from_secs(60));
        s.poll();
        let expiring = format!(
            "certificate 'alice' expires at {} (in 23 h 59 min); renew it before then (`relay ca issue --force` for the same key over [identity] cert: the agent takes it without a restart), or the relay will refuse it",
            utc(not_after)
        );
        assert_eq!(count(&s.hop.problems(), "expires at"), 1);
        assert_eq!(s.hop.problems()[0], expiring);
        s.advance(Duration::from_secs(24 * 3600));
        s.poll();
        s.advance(Duration::from_secs(60));
        s.poll();
        assert_eq!(count(&s.hop.problems(), "expired at"), 1);
        assert!(s.hop.problems().contains(&format!(
            "certificate 'alice' expired at {}: the relay refuses new hop sessions from it; issue a new one for the same key over [identity] cert (the agent takes it without a restart)",
            utc(not_after)
        )));
    }

    #[test]
    fn a_short_lived_certificate_is_reported_in_its_last_quarter() {
        // Valid for 8 h, 4 h of it left: a day's warning would fire from
        // the moment it was issued.
        let mut s = Sim::with(&ca(), (T0_UNIX - 4 * 3600, T0_UNIX + 4 * 3600));
        s.establish();
        s.poll();
        assert!(s.hop.problems().is_empty());
        s.advance(Duration::from_secs(2 * 3600 - 1));
        s.poll();
        assert!(s.hop.problems().is_empty());
        s.advance(Duration::from_secs(1));
        s.poll();
        assert_eq!(count(&s.hop.problems(), "expires at"), 1);
    }

    #[test]
    fn a_renewed_certificate_is_presented_at_once_while_the_old_session_carries_traffic() {
        let not_after = T0_UNIX + 3600;
        let mut s = Sim::with(&ca(), (T0_UNIX - 30 * 86_400, not_after));
        s.establish();
        s.poll();
        assert_eq!(count(&s.hop.problems(), "expires at"), 1);
        let old = s.hop.identity.clone();
        let renewed = {
            let mut body = old.certificate().body.clone();
            body.name = "alice (renewed)".into();
            body.not_after = T0_UNIX + 90 * 86_400;
            LocalIdentity::new(*old.private_key(), ca().issue(body).unwrap())
        };
        // Another key is not a renewal.
        let stranger = node(&ca(), 1001, "alice", Role::User, (T0_UNIX, not_after));
        assert!(!s.hop.renew(stranger));
        assert!(s.poll().is_empty());

        assert!(s.hop.renew(renewed));
        // The expiry report is withdrawn, the session stays up, and the
        // next poll handshakes with the new certificate.
        assert_eq!(count(&s.hop.problems(), "expires at"), 0);
        assert!(s.hop.is_up());
        s.advance(MS);
        let init = only(&s.poll(), Kind::HandshakeInit);
        assert!(s.hop.is_up());
        let (ev, _) = s.answer(&init);
        assert_eq!(ev, HopEvent::Established);
        assert_eq!(s.relay_saw, ["alice", "alice (renewed)"]);
        // Frames from the relay on the old session are still taken.
        let f = s.frame_from_relay(0);
        let now = s.now;
        assert_eq!(s.hop.accept(&f, now), Ok(()));
        // The new certificate is not near its end: nothing to report.
        s.advance(Duration::from_secs(2 * 3600));
        s.poll();
        assert!(s.hop.problems().is_empty(), "{:?}", s.hop.problems());
    }
}
