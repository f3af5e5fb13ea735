//! The datapath: what a relay worker does to every received frame.
//!
//! ```text
//! classify -> [handshake kinds] check (kind, length), hand to the control thread
//!          -> check header -> session by receiver index
//!   -> [vpn, ztna] replay pre-check, hop tag, replay mark
//!   -> first frame on the session: queue its confirmation
//!   -> [ztna] ids bound to the hop's peer, policy(user, service)
//!   -> route (by service upstream, by user downstream)
//!   -> rewrite header for the next hop in place, tag it
//! ```
//!
//! The three [`Mode`]s exist to measure what each step costs: `forward` is
//! the floor (no authentication), `vpn` is what a VPN hub does, `ztna` is the
//! product. Every frame gets a [`Verdict`]; every drop is counted by
//! [`DropReason`]. Nothing here allocates, locks or makes a syscall: the
//! function only reads the snapshots it is given and rewrites 32 header
//! bytes in place. Of the body it reads (never changes) what the hop tag
//! covers ([`crate::hoptag`]): a data frame's end-to-end record header and
//! AEAD tag, any other kind's whole body.
//!
//! Two entry points judge frames inside a relay worker's I/O callback,
//! where the frames still sit in the receive buffer they are sent from,
//! against snapshots loaded once per received batch:
//! [`Datapath::process`] one frame, [`Datapath::process_group`] several in
//! order (the segments of one coalesced receive). The group gives the same
//! verdicts, counters and state as one `process` per frame; it only
//! computes the data frames' hop tags [`LANES`] at a time
//! ([`crate::hoptag::lanes`]): first every frame's expected tag under its
//! session's key, then each frame's checks in order, then the new tags of
//! the frames it forwards. The tag of each frame depends on nothing the
//! frames before it in the group change (a session's key, the frame's own
//! bytes), so computing it early or late changes no verdict.

use crate::audit::{Access, AuditTable};
use crate::handshake::frames::{self, HandshakeKind};
use crate::hoptag::lanes::LANES;
use crate::hoptag::{DataLane, HopKey};
use crate::policy::CompiledPolicy;
use crate::route::RouteTable;
use crate::session::{AuthFailure, Confirmations, HopId, Peer, SessionTable, TxCounters};
use crate::wire::{self, Direction, Frame, WireError, HOP_TAG_LEN};

/// How much a relay checks per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Parse, route, rewrite, re-tag. No authentication: a cost floor.
    Forward,
    /// `Forward` + hop tag verification + anti-replay.
    Vpn,
    /// `Vpn` + ids bound to the authenticated peer + user→service policy.
    Ztna,
}

impl Mode {
    /// All modes, cheapest first.
    pub const ALL: [Mode; 3] = [Mode::Forward, Mode::Vpn, Mode::Ztna];

    /// The mode's name as used on command lines and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::Vpn => "vpn",
            Mode::Ztna => "ztna",
        }
    }
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode `{s}`: expected forward, vpn or ztna"))
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Not a well-formed frame (length, version, kind, length field, a
    /// body longer than its kind allows: [`wire::Kind::max_body_len`]).
    Malformed = 0,
    /// The receiver index names no session of this worker.
    UnknownSession,
    /// The hop tag did not verify.
    BadTag,
    /// The hop counter was seen before or is too old.
    Replay,
    /// The policy does not allow this user to reach this service.
    Denied,
    /// No next hop for the destination.
    NoRoute,
    /// The ttl ran out.
    TtlExpired,
    /// The frame's ids do not belong to the peer that sent it (a user
    /// sending as another user, a connector answering for a service it does
    /// not serve, a frame in the wrong direction for the peer's role).
    Spoofed,
    /// The next hop's key reached its usage limit; it needs a rekey.
    KeyExhausted,
    /// A hop handshake frame (initiation, response, cookie reply) whose
    /// length, Noise length field or reserved bytes do not fit its kind
    /// ([`frames::parse`]).
    BadHandshake,
    /// A handshake response or cookie reply at a node that sends no
    /// initiations (a relay outside a mesh): it answers nothing.
    UnsolicitedHandshake,
    /// A frame for a session that saw
    /// [`TAG_FAILURE_LIMIT`](crate::session::TAG_FAILURE_LIMIT) frames
    /// fail its tag: the session takes nothing more until the peer's next
    /// handshake replaces it.
    TagLimit,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::UnknownSession,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::Denied,
        DropReason::NoRoute,
        DropReason::TtlExpired,
        DropReason::Spoofed,
        DropReason::KeyExhausted,
        DropReason::BadHandshake,
        DropReason::UnsolicitedHandshake,
        DropReason::TagLimit,
    ];

    /// A short, stable name for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSession => "unknown_session",
            DropReason::BadTag => "bad_tag",
            DropReason::Replay => "replay",
            DropReason::Denied => "denied",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::Spoofed => "spoofed",
            DropReason::KeyExhausted => "key_exhausted",
            DropReason::BadHandshake => "bad_handshake",
            DropReason::UnsolicitedHandshake => "unsolicited_handshake",
            DropReason::TagLimit => "tag_limit",
        }
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten, re-tagged) frame to the next hop `hop`: its
    /// endpoint is `routes.hop(hop)` of the routing snapshot the frame was
    /// judged with, which holds that hop (the datapath just tagged the frame
    /// with its key), so the look-up cannot miss there. Resolve it against
    /// that snapshot only: another one may have no hop `hop`, or another
    /// peer under it.
    ///
    /// A word, not the 32-byte [`std::net::SocketAddr`]: the verdict is
    /// returned per frame, and the address is only needed per send (a relay
    /// worker resolves it once per gathered send, `relay::io::Handler`).
    Forward {
        /// The next hop the frame was rewritten and tagged for.
        hop: HopId,
    },
    /// An authenticated keepalive or control frame for this node.
    Local,
    /// A hop handshake frame of this kind, of a length its kind allows,
    /// that this node accepts: hand it to the control thread as is.
    Handshake(HandshakeKind),
    /// Drop it; it has been counted.
    Drop(DropReason),
}

// Returned per frame: a word, so it comes back in a register rather than
// through a stack slot written piecewise and read back whole (a
// store-forwarding stall each time, docs/perf.md "The 64-byte path").
const _: () = assert!(std::mem::size_of::<Verdict>() <= 8);
const _: () = assert!(std::mem::size_of::<Result<Verdict, DropReason>>() <= 8);

/// Per-worker datapath counters. Plain integers: one worker owns them and
/// publishes copies between batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames judged.
    pub frames: u64,
    /// Bytes of frames judged.
    pub bytes: u64,
    /// Frames forwarded.
    pub forwarded: u64,
    /// Bytes of frames forwarded.
    pub forwarded_bytes: u64,
    /// Keepalive and control frames for this node.
    pub local: u64,
    /// Hop handshake frames handed to the control thread
    /// ([`Verdict::Handshake`]).
    pub handshakes: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Drops for all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Counters) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.forwarded += other.forwarded;
        self.forwarded_bytes += other.forwarded_bytes;
        self.local += other.local;
        self.handshakes += other.handshakes;
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
    }

    /// What was counted since `earlier`, a snapshot of the same counters
    /// (saturating: a counter never goes back, so zero means none).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut drops = [0; DropReason::COUNT];
        for (d, (now, then)) in drops.iter_mut().zip(self.drops.iter().zip(&earlier.drops)) {
            *d = now.saturating_sub(*then);
        }
        Counters {
            frames: self.frames.saturating_sub(earlier.frames),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            forwarded: self.forwarded.saturating_sub(earlier.forwarded),
            forwarded_bytes: self.forwarded_bytes.saturating_sub(earlier.forwarded_bytes),
            local: self.local.saturating_sub(earlier.local),
            handshakes: self.handshakes.saturating_sub(earlier.handshakes),
            drops,
        }
    }

    #[inline]
    fn record(&mut self, len: usize, verdict: Verdict) {
        self.frames += 1;
        self.bytes += len as u64;
        match verdict {
            Verdict::Forward { .. } => {
                self.forwarded += 1;
                self.forwarded_bytes += len as u64;
            }
            Verdict::Local => self.local += 1,
            Verdict::Handshake(_) => self.handshakes += 1,
            Verdict::Drop(r) => self.drops[r as usize] += 1,
        }
    }
}

/// One worker's view of everything the datapath needs for a batch: the
/// snapshots (shared, immutable) and the worker's own mutable state.
#[derive(Debug)]
pub struct Datapath<'a> {
    /// How much to check.
    pub mode: Mode,
    /// Whether this node sends hop initiations (a relay in a mesh links to
    /// other relays): only then are handshake responses and cookie replies
    /// for it. Elsewhere they are dropped as
    /// [`DropReason::UnsolicitedHandshake`].
    pub initiates: bool,
    /// The live policy snapshot.
    pub policy: &'a CompiledPolicy,
    /// The live routing snapshot.
    pub routes: &'a RouteTable,
    /// This worker's receive sessions.
    pub sessions: &'a mut SessionTable,
    /// This worker's counter reservations.
    pub tx: &'a mut TxCounters,
    /// This worker's counters.
    pub counters: &'a mut Counters,
    /// Sessions whose first authenticated frame this worker saw (key
    /// confirmation), for the control thread.
    pub confirmations: &'a mut Confirmations,
    /// This worker's audit table: every policy decision (`ztna` mode) is
    /// counted there by (user, service, verdict). `None`: audit off.
    pub audit: Option<&'a mut AuditTable>,
}

/// Where [`Datapath::judge`] leaves a forwarded frame's new tag.
enum Seal<'s, 'a> {
    /// Computed and written before `judge` returns.
    Now,
    /// Left to the caller, which tags the frame under this hop key
    /// (computing several frames' tags together).
    Later(&'s mut Option<&'a HopKey>),
}

impl<'a> Datapath<'a> {
    /// Judges one frame, rewriting it in place when it is forwarded.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8]) -> Verdict {
        let len = frame.len();
        let verdict = match self.judge(frame, None, Seal::Now) {
            Ok(v) => v,
            Err(reason) => Verdict::Drop(reason),
        };
        self.counters.record(len, verdict);
        verdict
    }

    /// Judges `frames` in order, as [`process`](Self::process) on each in
    /// turn would (the same verdicts, rewrites, counters and session
    /// state), and writes `verdicts[i]` for `frames[i]`. Computes the hop
    /// tags of up to [`LANES`] data frames together.
    ///
    /// `verdicts` must be at least as long as `frames`; frames beyond its
    /// length are not judged.
    #[inline]
    pub fn process_group(&mut self, frames: &mut [&mut [u8]], verdicts: &mut [Verdict]) {
        debug_assert!(verdicts.len() >= frames.len());
        for (frames, verdicts) in frames.chunks_mut(LANES).zip(verdicts.chunks_mut(LANES)) {
            self.process_lanes(frames, verdicts);
        }
    }

    /// [`process_group`](Self::process_group) of at most [`LANES`] frames.
    #[inline]
    fn process_lanes(&mut self, frames: &mut [&mut [u8]], verdicts: &mut [Verdict]) {
        let expected = self.expected_tags(frames);
        let mut seal: [Option<&'a HopKey>; LANES] = [None; LANES];
        for (i, (frame, verdict)) in frames.iter_mut().zip(verdicts.iter_mut()).enumerate() {
            let len = frame.len();
            *verdict = match self.judge(frame, expected[i].as_ref(), Seal::Later(&mut seal[i])) {
                Ok(v) => v,
                Err(reason) => Verdict::Drop(reason),
            };
            self.counters.record(len, *verdict);
        }
        seal_lanes(frames, &seal);
    }

    /// The tag each data frame of `frames` (at most [`LANES`]) must carry
    /// under the key of the session its receiver index names; `None` for
    /// any other frame, which [`judge`](Self::judge) verifies on its own
    /// if it needs to.
    #[inline]
    fn expected_tags(&self, frames: &[&mut [u8]]) -> [Option<[u8; HOP_TAG_LEN]>; LANES] {
        let mut lanes: [Option<DataLane<'_>>; LANES] = [None; LANES];
        if self.mode == Mode::Forward {
            return [None; LANES];
        }
        for (lane, buf) in lanes.iter_mut().zip(frames) {
            let Ok(frame) = Frame::new_checked(&**buf) else {
                continue;
            };
            if let Some(session) = self.sessions.get(frame.receiver()) {
                *lane = DataLane::of(session.key(), frame);
            }
        }
        // One data frame alone gains nothing from the lanes.
        if lanes.iter().flatten().count() < 2 {
            return [None; LANES];
        }
        let tags = HopKey::tag_data_lanes(&lanes);
        core::array::from_fn(|i| lanes[i].map(|_| tags[i]))
    }

    #[inline]
    fn judge(
        &mut self,
        buf: &mut [u8],
        expected: Option<&[u8; HOP_TAG_LEN]>,
        seal: Seal<'_, 'a>,
    ) -> Result<Verdict, DropReason> {
        let len = buf.len();
        let kind = wire::classify(buf).map_err(|_: WireError| DropReason::Malformed)?;
        if !kind.has_hop_header() {
            // By (kind, length), as the control thread will parse it: what
            // could never parse is dropped here, not queued.
            let kind = frames::parse(buf)
                .map_err(|_| DropReason::BadHandshake)?
                .kind();
            if kind != HandshakeKind::Init && !self.initiates {
                return Err(DropReason::UnsolicitedHandshake);
            }
            return Ok(Verdict::Handshake(kind));
        }
        let mut frame = Frame::new_checked(buf).map_err(|_| DropReason::Malformed)?;
        let session = self
            .sessions
            .get_mut(frame.receiver())
            .ok_or(DropReason::UnknownSession)?;
        if self.mode != Mode::Forward {
            session
                .authenticate(&frame, expected)
                .map_err(|e| match e {
                    AuthFailure::BadTag => DropReason::BadTag,
                    AuthFailure::Replay => DropReason::Replay,
                    AuthFailure::TagLimit => DropReason::TagLimit,
                })?;
        }
        // Key confirmation: the first frame that passed the tag (in
        // `forward` mode, which authenticates nothing, any frame). Queued
        // for the control thread, which then routes to the session; when
        // the queue is full the next frame tries again.
        if !session.is_confirmed() && self.confirmations.push(frame.receiver()) {
            session.confirm();
        }
        let Some(direction) = kind.direction() else {
            return Ok(Verdict::Local);
        };
        let (user, service) = (frame.user(), frame.service());
        if self.mode == Mode::Ztna {
            let bound = match (direction, session.peer()) {
                (Direction::ToService, Peer::User(u)) => u == user,
                // By the certificate id the session was made with, against
                // the live policy, not by the session the routes name: a
                // connector that rekeyed answers on its new session before
                // the control thread moved the routes to it (and any
                // session of a listed connector is its own; pinning,
                // docs/security.md §7b, keeps other keys out).
                (Direction::ToUser, Peer::Connector(c)) => self.policy.connector_serves(c, service),
                (_, Peer::Relay(_)) => true,
                _ => false,
            };
            if !bound {
                return Err(DropReason::Spoofed);
            }
            let allowed = self.policy.allowed(user, service);
            if let Some(audit) = self.audit.as_deref_mut() {
                let access = if allowed { Access::Allow } else { Access::Deny };
                audit.record(user, service, access, len);
            }
            if !allowed {
                return Err(DropReason::Denied);
            }
        }
        if frame.ttl() <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let hop_id = match direction {
            Direction::ToService if matches!(session.peer(), Peer::Relay(_)) => {
                self.routes.to_service_transit(service, user)
            }
            Direction::ToService => self.routes.to_service(service, user),
            Direction::ToUser => self.routes.to_user(user, service),
        }
        .ok_or(DropReason::NoRoute)?;
        let hop = self.routes.hop(hop_id).ok_or(DropReason::NoRoute)?;
        let counter = self.tx.next(hop_id, hop).ok_or(DropReason::KeyExhausted)?;
        frame.rewrite_for_next_hop(hop.remote_index(), counter);
        match seal {
            Seal::Now => hop.key().seal_frame(&mut frame),
            Seal::Later(key) => *key = Some(hop.key()),
        }
        Ok(Verdict::Forward { hop: hop_id })
    }
}

/// Tags each frame of `frames` that `keys` gives a key (the frames a group
/// forwards, rewritten for their next hop): the data frames together, any
/// other kind on its own.
#[inline]
fn seal_lanes(frames: &mut [&mut [u8]], keys: &[Option<&HopKey>; LANES]) {
    let mut lanes: [Option<DataLane<'_>>; LANES] = [None; LANES];
    for ((lane, buf), key) in lanes.iter_mut().zip(frames.iter()).zip(keys) {
        if let Some(key) = key {
            *lane = DataLane::of(key, Frame::new_unchecked(&**buf));
        }
    }
    // One data frame alone gains nothing from the lanes.
    let together = lanes.iter().flatten().count() > 1;
    let tags = together.then(|| HopKey::tag_data_lanes(&lanes));
    let laned = lanes.map(|lane| together && lane.is_some());
    for (i, (buf, key)) in frames.iter_mut().zip(keys).enumerate() {
        let Some(key) = key else { continue };
        let mut frame = Frame::new_unchecked(&mut **buf);
        match &tags {
            Some(tags) if laned[i] => frame.set_tag(&tags[i]),
            _ => key.seal_frame(&mut frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hoptag::HopKey;
    use crate::ids::{ReceiverIndex, ServiceId, UserId};
    use crate::session::{Confirmations, RxSession, TxHop};
    use crate::testkit::{user_index, user_key, write_frame, Fixture, CONNECTOR_HOP};
    use crate::wire::{Kind, HEADER_LEN};
    use std::sync::Arc;

    const ALLOWED: u32 = 1;
    const DENIED: u32 = 4;

    /// The verdict forwarding to `hop`, which the fixture's routes hold.
    fn forward(fx: &Fixture, hop: HopId) -> Verdict {
        assert!(fx.routes.hop(hop).is_some(), "the hop is routed");
        Verdict::Forward { hop }
    }

    fn frame(fx: &mut Fixture, user: u32, service: u32) -> Vec<u8> {
        let mut buf = vec![0xab; 200];
        fx.upstream(user, service, &mut buf, 200);
        buf
    }

    /// Counters with every field set, each to its own value (so that no
    /// sum equals a product or a difference of two of them).
    fn counters(base: u64) -> Counters {
        let mut drops = [0; DropReason::COUNT];
        for (i, d) in drops.iter_mut().enumerate() {
            *d = base + 11 * i as u64;
        }
        Counters {
            frames: base + 1,
            bytes: base + 2,
            forwarded: base + 3,
            forwarded_bytes: base + 4,
            local: base + 5,
            handshakes: base + 6,
            drops,
        }
    }

    /// `add` adds every field and `since` takes every field back. (Killed
    /// the cargo-mutants survivors `+=` -> `-=` / `*=` in `add` for
    /// `bytes`, `forwarded`, `local` and `handshakes`: the older test left
    /// those fields zero on both sides, where `0 + 0`, `0 - 0` and `0 * 0`
    /// agree.)
    #[test]
    fn since_undoes_add() {
        let earlier = counters(5);
        let step = counters(300);
        let mut now = earlier.clone();
        now.add(&step);
        assert_eq!(now.frames, 6 + 301);
        assert_eq!(now.dropped(DropReason::TagLimit), (5 + 121) + (300 + 121));
        assert_eq!(now.since(&earlier), step);
        assert_eq!(
            earlier.since(&now),
            Counters::default(),
            "saturates, never wraps"
        );
    }

    /// Each verdict is counted once, under its own counter, with the
    /// frame's length in the byte counters; `dropped` reads one reason and
    /// `dropped_total` all. (Killed the cargo-mutants survivors in
    /// `record`, whose byte and per-verdict counters no test read
    /// exactly, and `dropped` -> 1.)
    #[test]
    fn each_verdict_is_counted_once_with_its_bytes() {
        let mut c = Counters::default();
        let hop = Verdict::Forward { hop: CONNECTOR_HOP };
        c.record(100, hop);
        c.record(120, hop);
        c.record(60, Verdict::Local);
        c.record(150, Verdict::Handshake(HandshakeKind::Init));
        c.record(40, Verdict::Drop(DropReason::Replay));
        c.record(41, Verdict::Drop(DropReason::Replay));
        c.record(42, Verdict::Drop(DropReason::Denied));
        let mut drops = [0; DropReason::COUNT];
        drops[DropReason::Replay as usize] = 2;
        drops[DropReason::Denied as usize] = 1;
        assert_eq!(
            c,
            Counters {
                frames: 7,
                bytes: 100 + 120 + 60 + 150 + 40 + 41 + 42,
                forwarded: 2,
                forwarded_bytes: 220,
                local: 1,
                handshakes: 1,
                drops,
            }
        );
        assert_eq!(c.dropped(DropReason::Replay), 2);
        assert_eq!(c.dropped(DropReason::Malformed), 0);
        assert_eq!(c.dropped_total(), 3);
    }

    /// The modes' names, as command lines and reports spell them: each
    /// displays as its name and parses back from it, and nothing else
    /// parses. (Killed the cargo-mutants survivors that emptied `name` or
    /// `Display`, made `from_str` accept anything or nothing.)
    #[test]
    fn modes_are_named_displayed_and_parsed_as_on_the_command_line() {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["forward", "vpn", "ztna"]);
        for mode in Mode::ALL {
            assert_eq!(mode.to_string(), mode.name());
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
        }
        for bad in ["", "VPN", "ztna ", "xyzzy"] {
            let err = bad.parse::<Mode>().unwrap_err();
            assert!(err.contains("expected forward, vpn or ztna"), "{err}");
        }
    }

    /// The drop reasons' names are the relay's `reason` metric labels:
    /// stable, distinct, in counter order. (Killed the cargo-mutants
    /// survivors `DropReason::name` -> `""` / `"xyzzy"`; the relay's
    /// metrics tests read them, no `proto` test did.)
    #[test]
    fn drop_reasons_keep_their_metric_labels() {
        let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "malformed",
                "unknown_session",
                "bad_tag",
                "replay",
                "denied",
                "no_route",
                "ttl_expired",
                "spoofed",
                "key_exhausted",
                "bad_handshake",
                "unsolicited_handshake",
                "tag_limit",
            ]
        );
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of counter order");
        }
    }

    #[test]
    fn allowed_frame_is_rewritten_for_the_connector() {
        let mut fx = Fixture::new(2, 8);
        let mut buf = frame(&mut fx, 1, ALLOWED);
        let before = buf.clone();
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Forward { hop: CONNECTOR_HOP },
            "the connector's hop"
        );
        assert_eq!(
            fx.routes.hop(CONNECTOR_HOP).map(|h| h.endpoint()),
            Some("127.0.0.1:9".parse().unwrap()),
            "which the snapshot resolves to the connector's endpoint"
        );
        let f = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.receiver(), ReceiverIndex(0xc0));
        assert_eq!(f.ttl(), wire::DEFAULT_TTL - 1);
        assert_eq!((f.user(), f.service()), (UserId(1), ServiceId(ALLOWED)));
        assert!(HopKey::new(&[0xcc; 32]).verify_frame(&f));
        assert_eq!(buf[HEADER_LEN..], before[HEADER_LEN..], "payload untouched");
        assert_eq!(fx.counters.forwarded, 1);
    }

    #[test]
    fn policy_is_checked_only_in_ztna() {
        let mut fx = Fixture::new(1, 8);
        let mut a = frame(&mut fx, 0, DENIED);
        let mut b = frame(&mut fx, 0, DENIED);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut a),
            Verdict::Drop(DropReason::Denied)
        );
        assert_eq!(
            fx.datapath(Mode::Vpn).process(&mut b),
            forward(&fx, CONNECTOR_HOP)
        );
        assert_eq!(fx.counters.dropped(DropReason::Denied), 1);
    }

    #[test]
    fn ztna_counts_each_policy_decision_in_the_audit_table() {
        use crate::audit::{Access, AuditTable, Counts};
        let mut fx = Fixture::new(2, 8);
        fx.audit = Some(AuditTable::new(64, 1));
        let mut frames = [
            frame(&mut fx, 1, ALLOWED),
            frame(&mut fx, 1, ALLOWED),
            frame(&mut fx, 1, DENIED),
        ];
        for f in &mut frames {
            fx.datapath(Mode::Ztna).process(f);
        }
        // A spoofed frame is no policy decision: not audited.
        let mut spoofed = vec![0; 100];
        write_frame(
            &mut spoofed,
            Kind::DataUp,
            user_index(0),
            0,
            UserId(1),
            ServiceId(ALLOWED),
            &HopKey::new(&user_key(0)),
        );
        fx.datapath(Mode::Ztna).process(&mut spoofed);
        // Neither is a frame judged in vpn mode (no policy there).
        let mut vpn = frame(&mut fx, 0, DENIED);
        fx.datapath(Mode::Vpn).process(&mut vpn);

        let table = fx.audit.as_ref().expect("set above");
        let mut entries: Vec<_> = table
            .entries()
            .map(|e| (e.user, e.service, e.access, e.counts))
            .collect();
        entries.sort_by_key(|e| e.2);
        assert_eq!(
            entries,
            [
                (
                    UserId(1),
                    ServiceId(ALLOWED),
                    Access::Allow,
                    Counts {
                        frames: 2,
                        bytes: 400
                    }
                ),
                (
                    UserId(1),
                    ServiceId(DENIED),
                    Access::Deny,
                    Counts {
                        frames: 1,
                        bytes: 200
                    }
                ),
            ]
        );
    }

    #[test]
    fn replayed_and_forged_frames_are_dropped_by_vpn_and_ztna() {
        for mode in [Mode::Vpn, Mode::Ztna] {
            let mut fx = Fixture::new(1, 8);
            let original = frame(&mut fx, 0, ALLOWED);
            let mut first = original.clone();
            let mut replay = original.clone();
            let mut forged = frame(&mut fx, 0, ALLOWED);
            forged[24] ^= 1;
            let mut dp = fx.datapath(mode);
            assert!(matches!(dp.process(&mut first), Verdict::Forward { .. }));
            assert_eq!(dp.process(&mut replay), Verdict::Drop(DropReason::Replay));
            assert_eq!(dp.process(&mut forged), Verdict::Drop(DropReason::BadTag));
            // The forged frame did not burn its counter: the real one passes.
            let mut real = original.clone();
            write_frame(
                &mut real,
                Kind::DataUp,
                user_index(0),
                1,
                UserId(0),
                ServiceId(ALLOWED),
                &HopKey::new(&user_key(0)),
            );
            assert!(matches!(dp.process(&mut real), Verdict::Forward { .. }));
        }
    }

    /// A data frame from user 0 to `ALLOWED` with hop counter `counter`,
    /// carrying an end-to-end record with counter `e2e_counter`: receiver
    /// index 0x11, a payload and an AEAD tag that differ per record (the
    /// relay cannot open them; it only reads them).
    fn data_with_record(counter: u64, e2e_counter: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 100];
        let body = &mut buf[HEADER_LEN..];
        body[..4].copy_from_slice(&0x11u32.to_be_bytes());
        body[4..12].copy_from_slice(&e2e_counter.to_be_bytes());
        let n = body.len();
        body[12..n - 16].fill(0x40 ^ e2e_counter as u8);
        body[n - 16..].fill(0x90 ^ e2e_counter as u8);
        write_frame(
            &mut buf,
            Kind::DataUp,
            user_index(0),
            counter,
            UserId(0),
            ServiceId(ALLOWED),
            &HopKey::new(&user_key(0)),
        );
        buf
    }

    /// A `Control` frame (a `Ping`) from user 0 with hop counter `counter`.
    fn control_ping(counter: u64) -> Vec<u8> {
        let mut body = Vec::new();
        crate::control::ControlMessage::Ping {
            digest: 0x0102_0304_0506_0708,
        }
        .emit(&mut body);
        let mut buf = vec![0u8; HEADER_LEN + body.len()];
        buf[HEADER_LEN..].copy_from_slice(&body);
        write_frame(
            &mut buf,
            Kind::Control,
            user_index(0),
            counter,
            UserId(0),
            ServiceId(0),
            &HopKey::new(&user_key(0)),
        );
        buf
    }

    /// The hop tag binds a data frame's end-to-end AEAD tag (the body's
    /// last 16 bytes): any byte of it changed under a valid hop tag is
    /// `bad_tag`, and none of those forgeries burns the hop counter. The
    /// record header (receiver index, counter) and the ciphertext are
    /// bound by that AEAD tag, which the relay cannot check: changed in
    /// flight they pass the hop tag, as documented (`crate::hoptag`), and
    /// the receiving endpoint refuses the record.
    #[test]
    fn e2e_aead_tag_changed_under_a_valid_tag_fails_the_tag_and_the_record_header_is_not_covered() {
        for mode in [Mode::Vpn, Mode::Ztna] {
            let mut fx = Fixture::new(1, 8);
            let good = data_with_record(0, 7);
            let n = good.len();
            for i in n - 16..n {
                for flip in [0x01, 0x80] {
                    let mut bad = good.clone();
                    bad[i] ^= flip;
                    assert_eq!(
                        fx.datapath(mode).process(&mut bad),
                        Verdict::Drop(DropReason::BadTag),
                        "{mode}: byte {i} ^ {flip:#x}"
                    );
                }
            }
            let mut real = good.clone();
            assert_eq!(
                fx.datapath(mode).process(&mut real),
                forward(&fx, CONNECTOR_HOP),
                "{mode}: the forgeries left the counter to the real frame"
            );
            assert_eq!(real[HEADER_LEN..], good[HEADER_LEN..], "body untouched");
            let mut header_changed = data_with_record(1, 7);
            header_changed[HEADER_LEN + 11] ^= 0x01;
            assert_eq!(
                fx.datapath(mode).process(&mut header_changed),
                forward(&fx, CONNECTOR_HOP),
                "{mode}: the record header is the endpoint's to check"
            );
        }
    }

    /// An on-path attacker without keys captures a fresh frame's header and
    /// races it, ahead of the real frame, with an older end-to-end record
    /// of the same pair and length (an end-to-end replay). The relay
    /// refuses it as `bad_tag`, does not mark the hop counter, and the real
    /// frame passes after it.
    #[test]
    fn a_captured_header_raced_with_an_older_record_is_bad_tag_and_the_real_frame_passes() {
        for mode in [Mode::Vpn, Mode::Ztna] {
            let mut fx = Fixture::new(1, 8);
            let mut old = data_with_record(0, 5);
            let old_record = old[HEADER_LEN..].to_vec();
            assert_eq!(
                fx.datapath(mode).process(&mut old),
                forward(&fx, CONNECTOR_HOP)
            );
            let real = data_with_record(1, 6);
            let mut raced = real.clone();
            raced[HEADER_LEN..].copy_from_slice(&old_record);
            assert_eq!(
                fx.datapath(mode).process(&mut raced),
                Verdict::Drop(DropReason::BadTag),
                "{mode}"
            );
            let mut delivered = real.clone();
            assert_eq!(
                fx.datapath(mode).process(&mut delivered),
                forward(&fx, CONNECTOR_HOP),
                "{mode}: the real frame still passes"
            );
            assert_eq!(delivered[HEADER_LEN..], real[HEADER_LEN..]);
            // And the forwarded frame's tag binds the same record for the
            // next hop.
            let f = Frame::new_checked(&delivered[..]).unwrap();
            assert!(HopKey::new(&[0xcc; 32]).verify_frame(&f));
            let mut swapped = delivered.clone();
            swapped[HEADER_LEN..].copy_from_slice(&old_record);
            assert!(
                !HopKey::new(&[0xcc; 32]).verify_frame(&Frame::new_checked(&swapped[..]).unwrap())
            );
        }
    }

    /// A control body is authenticated in full: any byte flipped is
    /// `bad_tag` (and burns nothing); the real frame is then for this node.
    #[test]
    fn any_byte_of_a_control_body_flipped_is_bad_tag() {
        for mode in [Mode::Vpn, Mode::Ztna] {
            let mut fx = Fixture::new(1, 8);
            let good = control_ping(0);
            for i in HEADER_LEN..good.len() {
                for flip in [0x01, 0x80] {
                    let mut bad = good.clone();
                    bad[i] ^= flip;
                    assert_eq!(
                        fx.datapath(mode).process(&mut bad),
                        Verdict::Drop(DropReason::BadTag),
                        "{mode}: byte {i} ^ {flip:#x}"
                    );
                }
            }
            assert_eq!(fx.datapath(mode).process(&mut good.clone()), Verdict::Local);
        }
    }

    #[test]
    fn forward_mode_does_not_authenticate() {
        let mut fx = Fixture::new(1, 8);
        let mut forged = frame(&mut fx, 0, DENIED);
        forged[24] ^= 1;
        assert_eq!(
            fx.datapath(Mode::Forward).process(&mut forged),
            forward(&fx, CONNECTOR_HOP)
        );
    }

    #[test]
    fn ids_must_belong_to_the_sending_peer() {
        let mut fx = Fixture::new(2, 8);
        // User 0's session carrying user 1's id.
        let mut buf = vec![0; 100];
        write_frame(
            &mut buf,
            Kind::DataUp,
            user_index(0),
            0,
            UserId(1),
            ServiceId(ALLOWED),
            &HopKey::new(&user_key(0)),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::Spoofed)
        );
        // A user sending downstream.
        write_frame(
            &mut buf,
            Kind::DataDown,
            user_index(0),
            1,
            UserId(0),
            ServiceId(ALLOWED),
            &HopKey::new(&user_key(0)),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::Spoofed)
        );
        // The connector answering for a service it does not serve.
        let conn = HopKey::new(&[0xcd; 32]);
        write_frame(
            &mut buf,
            Kind::DataDown,
            ReceiverIndex(0xc0c0),
            0,
            UserId(0),
            ServiceId(99),
            &conn,
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn connector_replies_are_routed_to_the_user() {
        let mut fx = Fixture::new(3, 8);
        let mut buf = vec![0; 100];
        write_frame(
            &mut buf,
            Kind::DataDown,
            ReceiverIndex(0xc0c0),
            0,
            UserId(2),
            ServiceId(ALLOWED),
            &HopKey::new(&[0xcd; 32]),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            forward(&fx, HopId(3))
        );
        let f = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.receiver(), ReceiverIndex(0x1002));
        assert!(HopKey::new(&user_key(2)).verify_frame(&f));
    }

    #[test]
    fn connector_replies_for_a_denied_pair_are_denied() {
        // The connector serves DENIED (it is routed there); the policy
        // holds in both directions.
        let mut fx = Fixture::new(3, 8);
        let mut buf = vec![0; 100];
        write_frame(
            &mut buf,
            Kind::DataDown,
            ReceiverIndex(0xc0c0),
            0,
            UserId(2),
            ServiceId(DENIED),
            &HopKey::new(&[0xcd; 32]),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::Denied)
        );
    }

    #[test]
    fn ttl_zero_and_one_are_not_forwarded() {
        let mut fx = Fixture::new(1, 8);
        let key = HopKey::new(&user_key(0));
        for (counter, ttl) in [(0, 0u8), (1, 1)] {
            let mut buf = vec![0; 100];
            write_frame(
                &mut buf,
                Kind::DataUp,
                user_index(0),
                counter,
                UserId(0),
                ServiceId(ALLOWED),
                &key,
            );
            buf[1] = ttl;
            key.seal_frame(&mut Frame::new_unchecked(&mut buf[..]));
            assert_eq!(
                fx.datapath(Mode::Ztna).process(&mut buf),
                Verdict::Drop(DropReason::TtlExpired),
                "ttl {ttl}"
            );
        }
    }

    #[test]
    fn ids_changed_under_a_valid_tag_fail_the_tag() {
        for (byte, what) in [(19, "user id"), (23, "service id")] {
            let mut fx = Fixture::new(3, 8);
            let mut buf = frame(&mut fx, 1, ALLOWED);
            // Another user, another service: both allowed by the policy.
            buf[byte] = 2;
            assert_eq!(
                fx.datapath(Mode::Ztna).process(&mut buf),
                Verdict::Drop(DropReason::BadTag),
                "{what} changed"
            );
        }
    }

    #[test]
    fn a_session_past_its_tag_failure_limit_drops_even_valid_frames() {
        let mut fx = Fixture::new(3, 8);
        let good = frame(&mut fx, 1, ALLOWED);
        let mut forged = good.clone();
        forged[24] ^= 1;
        let mut dp = fx.datapath(Mode::Ztna);
        for _ in 0..crate::session::TAG_FAILURE_LIMIT {
            let mut f = forged.clone();
            assert_eq!(dp.process(&mut f), Verdict::Drop(DropReason::BadTag));
        }
        let mut f = good;
        assert_eq!(dp.process(&mut f), Verdict::Drop(DropReason::TagLimit));
        assert_eq!(dp.counters.dropped(DropReason::TagLimit), 1);
    }

    #[test]
    fn a_frame_for_a_removed_session_misses_the_slot_reused_after_it() {
        use crate::session::IndexAllocator;
        let mut fx = Fixture::new(1, 8);
        let mut alloc = IndexAllocator::new();
        let old = alloc.allocate().unwrap();
        let key = [0x66; 32];
        fx.sessions
            .install(old, RxSession::new(&key, Peer::User(UserId(0)), HopId(1)));
        fx.sessions.remove(old);
        alloc.release(old);
        // The slot's next session: same slot, next generation, same peer
        // and key (the worst case: only the generation tells them apart).
        let new = alloc.allocate().unwrap();
        assert_ne!(old, new);
        fx.sessions
            .install(new, RxSession::new(&key, Peer::User(UserId(0)), HopId(1)));
        let mut buf = vec![0; 100];
        write_frame(
            &mut buf,
            Kind::DataUp,
            old,
            0,
            UserId(0),
            ServiceId(ALLOWED),
            &HopKey::new(&key),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::UnknownSession)
        );
    }

    #[test]
    fn frames_from_a_relay_follow_the_mesh_and_are_still_checked() {
        let mut fx = Fixture::new(3, 8);
        let relay_key = [0xeeu8; 32];
        let link = HopId(90);
        fx.routes.set_hop(
            link,
            Arc::new(TxHop::new(
                "127.0.0.1:11".parse().unwrap(),
                ReceiverIndex(0x900),
                &[0xef; 32],
                9,
            )),
        );
        fx.tx = TxCounters::with_capacity(fx.routes.hop_slots());
        fx.sessions.install(
            ReceiverIndex(0xeeee),
            RxSession::new(&relay_key, Peer::Relay(2), link),
        );
        // The service has a local connector and, in the mesh, only the
        // connector behind `link`: users here use the local one, frames
        // from the relay go where the ingress relay sent them.
        fx.routes.set_service_mesh(ServiceId(ALLOWED), vec![link]);
        let mut counter = 0;
        let mut from_relay = |fx: &mut Fixture, user: u32, service: u32| {
            let mut buf = vec![0; 100];
            write_frame(
                &mut buf,
                Kind::DataUp,
                ReceiverIndex(0xeeee),
                counter,
                UserId(user),
                ServiceId(service),
                &HopKey::new(&relay_key),
            );
            counter += 1;
            fx.datapath(Mode::Ztna).process(&mut buf)
        };
        assert_eq!(
            from_relay(&mut fx, 1, ALLOWED),
            Verdict::Forward { hop: link }
        );
        assert_eq!(
            fx.routes.hop(link).map(|h| h.endpoint()),
            Some("127.0.0.1:11".parse().unwrap())
        );
        assert_eq!(
            from_relay(&mut fx, 1, DENIED),
            Verdict::Drop(DropReason::Denied),
            "a transit relay enforces the policy too"
        );
        let mut buf = frame(&mut fx, 1, ALLOWED);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            forward(&fx, CONNECTOR_HOP)
        );
    }

    #[test]
    fn malformed_unknown_ttl_and_route_drops_are_counted() {
        let mut fx = Fixture::new(1, 8);
        let key = HopKey::new(&user_key(0));
        let mut dp_frames: Vec<(Vec<u8>, DropReason)> = Vec::new();
        dp_frames.push((vec![0x11; 10], DropReason::Malformed));
        dp_frames.push((vec![0xff; 100], DropReason::Malformed));
        let mut unknown = vec![0; 100];
        write_frame(
            &mut unknown,
            Kind::DataUp,
            ReceiverIndex(77),
            0,
            UserId(0),
            ServiceId(ALLOWED),
            &key,
        );
        dp_frames.push((unknown, DropReason::UnknownSession));
        let mut ttl = vec![0; 100];
        write_frame(
            &mut ttl,
            Kind::DataUp,
            user_index(0),
            0,
            UserId(0),
            ServiceId(ALLOWED),
            &key,
        );
        ttl[1] = 1;
        key.seal_frame(&mut Frame::new_unchecked(&mut ttl[..]));
        dp_frames.push((ttl, DropReason::TtlExpired));
        let mut noroute = vec![0; 100];
        write_frame(
            &mut noroute,
            Kind::DataUp,
            user_index(0),
            1,
            UserId(0),
            ServiceId(1),
            &key,
        );
        fx.routes.set_service(ServiceId(1), Vec::new());
        dp_frames.push((noroute, DropReason::NoRoute));
        let mut dp = fx.datapath(Mode::Ztna);
        for (buf, reason) in &mut dp_frames {
            assert_eq!(dp.process(buf), Verdict::Drop(*reason), "{reason:?}");
        }
        for reason in [
            DropReason::Malformed,
            DropReason::UnknownSession,
            DropReason::TtlExpired,
            DropReason::NoRoute,
        ] {
            assert!(fx.counters.dropped(reason) >= 1, "{reason:?}");
        }
        assert_eq!(fx.counters.dropped_total(), 5);
        assert_eq!(fx.counters.frames, 5);
    }

    #[test]
    fn handshakes_and_keepalives_stay_on_this_node() {
        let mut fx = Fixture::new(1, 8);
        let mut hs = frames::emit_init(ReceiverIndex(7), &[0; frames::NOISE_INIT_MIN_LEN]).unwrap();
        let mut ka = vec![0; HEADER_LEN];
        write_frame(
            &mut ka,
            Kind::Keepalive,
            user_index(0),
            0,
            UserId(0),
            ServiceId(0),
            &HopKey::new(&user_key(0)),
        );
        let mut dp = fx.datapath(Mode::Ztna);
        assert_eq!(dp.process(&mut hs), Verdict::Handshake(HandshakeKind::Init));
        assert_eq!(dp.process(&mut ka), Verdict::Local);
        assert_eq!((fx.counters.handshakes, fx.counters.local), (1, 1));
    }

    /// A response and a cookie reply of the right sizes.
    fn answers() -> [(Vec<u8>, HandshakeKind); 2] {
        let response = frames::emit_response(
            ReceiverIndex(8),
            ReceiverIndex(7),
            &[0; frames::NOISE_RESPONSE_MIN_LEN],
        )
        .unwrap();
        let cookie = frames::emit_cookie_reply(ReceiverIndex(7), &[0; 24], &[0; 32]).to_vec();
        [
            (response, HandshakeKind::Response),
            (cookie, HandshakeKind::CookieReply),
        ]
    }

    #[test]
    fn answers_to_initiations_reach_only_a_node_that_initiates() {
        for mode in Mode::ALL {
            let mut fx = Fixture::new(1, 8);
            for (mut frame, _) in answers() {
                assert_eq!(
                    fx.datapath(mode).process(&mut frame),
                    Verdict::Drop(DropReason::UnsolicitedHandshake),
                    "{mode}"
                );
            }
            assert_eq!(fx.counters.dropped(DropReason::UnsolicitedHandshake), 2);
            assert_eq!(fx.counters.handshakes, 0);

            fx.initiates = true;
            for (mut frame, kind) in answers() {
                assert_eq!(
                    fx.datapath(mode).process(&mut frame),
                    Verdict::Handshake(kind),
                    "{mode}"
                );
            }
            assert_eq!(fx.counters.handshakes, 2);
        }
    }

    #[test]
    fn handshake_frames_of_the_wrong_size_are_dropped() {
        let init = frames::emit_init(ReceiverIndex(7), &[0; frames::NOISE_INIT_MIN_LEN]).unwrap();
        let [(response, _), (cookie, _)] = answers();
        let mut long_init = init.clone();
        long_init.push(0);
        let mut long_cookie = cookie.clone();
        long_cookie.push(0);
        let oversized = frames::emit_init(
            ReceiverIndex(7),
            &vec![0; frames::INIT_MAX_LEN - frames::INIT_MIN_LEN + frames::NOISE_INIT_MIN_LEN + 1],
        )
        .unwrap();
        let mut bad = vec![
            init[..init.len() - 1].to_vec(),
            long_init,
            oversized,
            vec![Kind::HandshakeInit.byte0(); 120],
            response[..response.len() - 1].to_vec(),
            cookie[..cookie.len() - 1].to_vec(),
            long_cookie,
        ];
        let mut fx = Fixture::new(1, 8);
        fx.initiates = true;
        for frame in &mut bad {
            assert_eq!(
                fx.datapath(Mode::Ztna).process(frame),
                Verdict::Drop(DropReason::BadHandshake),
                "{} bytes of kind {:#x}",
                frame.len(),
                frame[0]
            );
        }
        assert_eq!(
            fx.counters.dropped(DropReason::BadHandshake),
            bad.len() as u64
        );
        assert_eq!(fx.counters.handshakes, 0);
    }

    /// A new session of user 0 (as a relay installs one when it answers
    /// an initiation), unconfirmed, under index `NEW`.
    const NEW: ReceiverIndex = ReceiverIndex(0x7777);
    const NEW_KEY: [u8; 32] = [0x77; 32];

    fn with_new_session(fx: &mut Fixture) {
        fx.sessions.install(
            NEW,
            RxSession::new(&NEW_KEY, Peer::User(UserId(0)), HopId(1)),
        );
    }

    fn on_new(kind: Kind, counter: u64, key: &[u8; 32]) -> Vec<u8> {
        // 100 bytes, or as many as the kind allows (a keepalive: 32).
        let mut buf = vec![0; HEADER_LEN + kind.max_body_len().min(100 - HEADER_LEN)];
        write_frame(
            &mut buf,
            kind,
            NEW,
            counter,
            UserId(0),
            ServiceId(ALLOWED),
            &HopKey::new(key),
        );
        buf
    }

    #[test]
    fn the_first_frame_that_passes_the_tag_confirms_a_session_once() {
        let mut fx = Fixture::new(1, 8);
        with_new_session(&mut fx);
        // A forged frame (bad tag) and a replay confirm nothing.
        let mut forged = on_new(Kind::Keepalive, 0, &[0x66; 32]);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut forged),
            Verdict::Drop(DropReason::BadTag)
        );
        assert!(fx.confirmations.is_empty());
        assert!(!fx.sessions.get(NEW).unwrap().is_confirmed());
        // The keepalive an initiator sends right after the response does.
        let mut keepalive = on_new(Kind::Keepalive, 0, &NEW_KEY);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut keepalive),
            Verdict::Local
        );
        assert!(fx.sessions.get(NEW).unwrap().is_confirmed());
        assert_eq!(fx.confirmations.pop(), Some(NEW));
        // Its replay does nothing more, nor does later traffic.
        let mut replay = on_new(Kind::Keepalive, 0, &NEW_KEY);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut replay),
            Verdict::Drop(DropReason::Replay)
        );
        let mut data = on_new(Kind::DataUp, 1, &NEW_KEY);
        assert!(matches!(
            fx.datapath(Mode::Ztna).process(&mut data),
            Verdict::Forward { .. }
        ));
        assert!(fx.confirmations.is_empty());
        // The fixture's sessions were confirmed from the start.
        let mut old = frame(&mut fx, 0, ALLOWED);
        fx.datapath(Mode::Ztna).process(&mut old);
        assert!(fx.confirmations.is_empty());
    }

    #[test]
    fn a_data_frame_confirms_too_and_is_still_judged() {
        // Whatever the frame's fate after the tag (here: a denied
        // service), the key is confirmed.
        let mut fx = Fixture::new(1, 8);
        with_new_session(&mut fx);
        let mut buf = vec![0; 100];
        write_frame(
            &mut buf,
            Kind::DataUp,
            NEW,
            0,
            UserId(0),
            ServiceId(DENIED),
            &HopKey::new(&NEW_KEY),
        );
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut buf),
            Verdict::Drop(DropReason::Denied)
        );
        assert_eq!(fx.confirmations.pop(), Some(NEW));
    }

    #[test]
    fn a_full_confirmation_queue_leaves_the_session_to_the_next_frame() {
        let mut fx = Fixture::new(1, 8);
        for i in 0..Confirmations::CAPACITY as u32 {
            fx.sessions.install(
                ReceiverIndex(0x10_0000 + i),
                RxSession::new(&NEW_KEY, Peer::User(UserId(0)), HopId(1)),
            );
            let mut f = vec![0; HEADER_LEN];
            write_frame(
                &mut f,
                Kind::Keepalive,
                ReceiverIndex(0x10_0000 + i),
                0,
                UserId(0),
                ServiceId(ALLOWED),
                &HopKey::new(&NEW_KEY),
            );
            fx.datapath(Mode::Ztna).process(&mut f);
        }
        assert_eq!(fx.confirmations.len(), Confirmations::CAPACITY);
        with_new_session(&mut fx);
        let mut first = on_new(Kind::Keepalive, 0, &NEW_KEY);
        assert_eq!(fx.datapath(Mode::Ztna).process(&mut first), Verdict::Local);
        assert!(!fx.sessions.get(NEW).unwrap().is_confirmed(), "not lost");
        assert_eq!(fx.confirmations.pop(), Some(ReceiverIndex(0x10_0000)));
        let mut second = on_new(Kind::Keepalive, 1, &NEW_KEY);
        fx.datapath(Mode::Ztna).process(&mut second);
        assert!(fx.sessions.get(NEW).unwrap().is_confirmed());
        // A confirmation given back (not delivered yet) goes first.
        let head = fx.confirmations.pop().unwrap();
        fx.confirmations.unpop(head);
        assert_eq!(fx.confirmations.pop(), Some(head));
    }

    /// Frames of every kind a relay sees, one per pick `(what, user,
    /// service, length or position, byte)`: valid data up (allowed or
    /// denied by service) and down, replays and copies with a byte changed
    /// of earlier frames, control frames, end-to-end handshake frames,
    /// frames for unknown sessions, garbage.
    fn mixed_frames(picks: &[(usize, u32, u32, usize, u8)]) -> Vec<Vec<u8>> {
        let mut gen = Fixture::new(3, 8);
        let mut down_counter = 0;
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for &(what, user, service, n, byte) in picks {
            let f = match what {
                0 | 1 => {
                    let mut f = vec![byte; 64 + n];
                    let len = f.len();
                    gen.upstream(user, service, &mut f, len);
                    f
                }
                2 => {
                    let mut f = vec![byte; 60 + n];
                    down_counter += 1;
                    write_frame(
                        &mut f,
                        Kind::DataDown,
                        ReceiverIndex(0xc0c0),
                        down_counter,
                        UserId(user),
                        ServiceId(service),
                        &HopKey::new(&[0xcd; 32]),
                    );
                    f
                }
                3 | 4 if !frames.is_empty() => {
                    let mut f = frames[n % frames.len()].clone();
                    if what == 4 && !f.is_empty() {
                        let i = usize::from(byte) % f.len();
                        f[i] ^= 1 << (n % 8);
                    }
                    f
                }
                5 => {
                    let kind = if byte % 2 == 0 {
                        Kind::Control
                    } else {
                        Kind::E2eHandshakeUp
                    };
                    let mut f = vec![byte; HEADER_LEN + 8 + n % 64];
                    let counter = 1000 + frames.len() as u64;
                    write_frame(
                        &mut f,
                        kind,
                        user_index(user),
                        counter,
                        UserId(user),
                        ServiceId(service),
                        &HopKey::new(&user_key(user)),
                    );
                    f
                }
                6 => {
                    let mut f = vec![byte; 100];
                    write_frame(
                        &mut f,
                        Kind::DataUp,
                        ReceiverIndex(0x7777),
                        1,
                        UserId(user),
                        ServiceId(service),
                        &HopKey::new(&user_key(user)),
                    );
                    f
                }
                _ => vec![byte; n % 80],
            };
            frames.push(f);
        }
        frames
    }

    proptest::proptest! {
        /// Only a frame tagged with the session's key confirms it, whatever
        /// else is sent first.
        #[test]
        fn only_a_valid_tag_confirms(
            junk in proptest::collection::vec((proptest::prelude::any::<[u8; 32]>(), 0u64..64, 0..3usize), 0..8),
            then_valid in proptest::prelude::any::<bool>(),
        ) {
            let mut fx = Fixture::new(1, 8);
            with_new_session(&mut fx);
            for (key, counter, kind) in junk {
                proptest::prop_assume!(key != NEW_KEY);
                let kind = [Kind::Keepalive, Kind::DataUp, Kind::Control][kind];
                let mut f = on_new(kind, counter, &key);
                fx.datapath(Mode::Ztna).process(&mut f);
            }
            proptest::prop_assert!(fx.confirmations.is_empty());
            proptest::prop_assert!(!fx.sessions.get(NEW).unwrap().is_confirmed());
            if then_valid {
                let mut f = on_new(Kind::Keepalive, 100, &NEW_KEY);
                fx.datapath(Mode::Ztna).process(&mut f);
                proptest::prop_assert_eq!(fx.confirmations.pop(), Some(NEW));
                proptest::prop_assert!(fx.sessions.get(NEW).unwrap().is_confirmed());
            }
        }

        /// A valid data or control frame from a user, any bit flipped
        /// anywhere the hop tag covers (header, a data frame's AEAD tag, a
        /// control frame's whole body): the relay
        /// refuses it without marking the counter, then takes the real one.
        #[test]
        fn a_bit_flip_where_the_tag_covers_is_never_accepted(
            control in proptest::prelude::any::<bool>(),
            e2e_counter in 0u64..1000,
            counter in 0u64..1000,
            pick: usize,
            bit in 0u8..8,
        ) {
            let good = if control { control_ping(counter) } else { data_with_record(counter, e2e_counter) };
            let n = good.len();
            let covered: Vec<usize> = if control {
                (0..n).collect()
            } else {
                (0..HEADER_LEN).chain(n - 16..n).collect()
            };
            let i = covered[pick % covered.len()];
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            let mut fx = Fixture::new(1, 8);
            let v = fx.datapath(Mode::Ztna).process(&mut bad);
            // Bit 3 of the kind byte turns a data frame (kind 1) into a
            // handshake response (9), which has no hop header: the
            // handshake parser refuses it (seed in
            // proptest-regressions/datapath.txt).
            proptest::prop_assert!(
                matches!(v, Verdict::Drop(DropReason::BadTag | DropReason::Malformed | DropReason::UnknownSession | DropReason::BadHandshake)),
                "byte {} bit {}: {:?}", i, bit, v
            );
            let want = if control { Verdict::Local } else { forward(&fx, CONNECTOR_HOP) };
            proptest::prop_assert_eq!(fx.datapath(Mode::Ztna).process(&mut good.clone()), want);
        }

        #[test]
        fn any_bytes_get_a_verdict_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), mode in 0..3usize) {
            let mut fx = Fixture::new(2, 8);
            let mut buf = bytes;
            let v = fx.datapath(Mode::ALL[mode]).process(&mut buf);
            if let Verdict::Forward { .. } = v {
                // Whatever is forwarded is still a well-formed frame.
                proptest::prop_assert!(Frame::new_checked(&buf[..]).is_ok());
            }
            proptest::prop_assert_eq!(fx.counters.frames, 1);
        }
    }

    proptest::proptest! {
        // Three fixtures and up to 40 frames a case: fewer cases than the
        // default keep it to seconds in a debug build.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A group judges its frames exactly as one call per frame does,
        /// whatever the mix and however the frames are cut into groups:
        /// verdicts, rewritten bytes and new tags, counters, session state
        /// (the next replays and tag failures depend on it), audit.
        #[test]
        fn a_group_judges_as_frame_by_frame(
            picks in proptest::collection::vec((0..8usize, 0u32..3, 0u32..8, 0usize..200, proptest::prelude::any::<u8>()), 0..40),
            cuts in proptest::collection::vec(1..=9usize, 1..12),
            mode in 0..3usize,
        ) {
            let mode = Mode::ALL[mode];
            let frames = mixed_frames(&picks);
            let (mut one, mut grouped) = (Fixture::new(3, 8), Fixture::new(3, 8));
            one.audit = Some(crate::audit::AuditTable::new(64, 1));
            grouped.audit = Some(crate::audit::AuditTable::new(64, 1));
            let mut a = frames.clone();
            let want: Vec<Verdict> = a.iter_mut().map(|f| one.datapath(mode).process(f)).collect();
            let mut b = frames;
            let mut got = vec![Verdict::Local; b.len()];
            let (mut rest, mut verdicts, mut cut) = (&mut b[..], &mut got[..], cuts.iter().cycle());
            while !rest.is_empty() {
                let n = (*cut.next().expect("cycle")).min(rest.len());
                let (group, tail) = rest.split_at_mut(n);
                let (vs, vtail) = verdicts.split_at_mut(n);
                let mut group: Vec<&mut [u8]> = group.iter_mut().map(|f| &mut f[..]).collect();
                grouped.datapath(mode).process_group(&mut group, vs);
                (rest, verdicts) = (tail, vtail);
            }
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(&b, &a);
            proptest::prop_assert_eq!(&grouped.counters, &one.counters);
            let audit = |fx: &Fixture| {
                let mut e: Vec<_> = fx.audit.as_ref().expect("set").entries().map(|e| (e.user, e.service, e.access, e.counts)).collect();
                e.sort_by_key(|e| (e.0, e.1, e.2));
                e
            };
            proptest::prop_assert_eq!(audit(&grouped), audit(&one));
            for u in 0..3 {
                let (x, y) = (one.sessions.get(user_index(u)).expect("fixture"), grouped.sessions.get(user_index(u)).expect("fixture"));
                proptest::prop_assert_eq!((x.frames(), x.tag_failures()), (y.frames(), y.tag_failures()));
            }
        }
    }
}
