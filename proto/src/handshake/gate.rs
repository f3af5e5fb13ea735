//! The worker's gate for hop handshake initiations: what a relay's worker
//! checks before it copies an initiation into the control thread's
//! bounded queue, so that a flood sheds the flood and not the legitimate
//! initiator next to it.
//!
//! Without a gate, a worker copies every initiation of the right length
//! into the queue and sheds only when the queue is full: a botnet that
//! answers cookies (so its mac2 is valid) fills the queue, and a
//! legitimate initiation is shed as often as junk, or waits behind
//! thousands of frames.
//!
//! In order, each step costing little more than the one before:
//!
//! 1. **mac1** (one keyed BLAKE3 over the frame): the key derives from
//!    the relay's public key, so the worker checks it itself. A frame not
//!    meant for this relay never reaches the queue
//!    ([`GateDrop::BadMac1`]).
//! 2. **Under load** (the queue holds more than
//!    [`GateLimits::under_load`] frames): **mac2** against the cookie of
//!    the frame's source address, from the same secret and epoch the
//!    control thread's [`super::CookieChecker`] uses (rotated every
//!    [`super::timers::COOKIE_REFRESH_TIME`]; the worker holds a copy of
//!    the checker, derived from the same master secret, so nothing is
//!    shared or locked). No valid mac2: the worker makes the **cookie
//!    reply** itself ([`Gate::CookieReply`], 64 bytes, smaller than the
//!    initiation), so a legitimate initiator gets its cookie at once
//!    instead of behind the queue.
//! 3. **Fair share per source** (mac2 valid, so the source address is
//!    proven): sources are keyed by IPv4 address or IPv6 /64, as the rate
//!    limiter keys them ([`super::rate_limiter`]). A source's *weight* is
//!    the number of proven initiations it sent in the current and the
//!    previous window ([`GateLimits::window`]), admitted or not. While the
//!    queue is below [`GateLimits::fair_depth`] every proven initiation is
//!    admitted. Above it a source is admitted only while its weight is
//!    within its fair share, `max(2, share_budget / active sources)`: the
//!    heaviest sources are shed first ([`GateDrop::Shed`]), and an
//!    initiator that sends one initiation per retransmit interval (a
//!    weight of one or two) always gets in. A flood of heavy sources thus
//!    keeps the queue near `fair_depth`, and a light initiation waits
//!    behind at most that many frames. Everything admitted is then subject
//!    to the control thread's own checks (mac1 and mac2 again, the
//!    per-source token bucket, Noise, the certificate).
//!
//! # Trade-offs
//!
//! * **A fixed table, no allocation per frame.** [`SOURCE_SLOTS`] slots
//!   with a keyed hash (random key, so a sender cannot aim at one slot)
//!   and [`PROBES`] probes (double hashing, so no long clusters form). A slot from an earlier window is free.
//!   Only proven addresses take slots, so a spoofed flood takes none. A
//!   source that finds no free slot in its probes (more than about
//!   [`SOURCE_SLOTS`] proven sources in one window) is treated as heavy:
//!   admitted below `fair_depth` only.
//! * **The queue stays one FIFO.** Admission, not reordering: a light
//!   source waits behind about `fair_depth` frames, which the control
//!   thread works through in a fraction of a second (docs/security.md §7
//!   has the figures). Weights span two windows, so a window's start
//!   lets no burst of heavy sources in.
//! * **Many users behind one address** (a NAT) share one source's share
//!   under load; below `fair_depth` nothing changes for them.
//! * **Cookie replies to unproven sources** cost one AES-GCM seal and go
//!   to the claimed address (no amplification, as in WireGuard). The
//!   caller bounds how many it sends per batch.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{CryptoRng, RngCore};

use super::cookie::CookieChecker;
use super::frames::{parse, HandshakeFrame, COOKIE_REPLY_LEN};

/// Slots of a gate's source table.
pub const SOURCE_SLOTS: usize = 4096;
// Odd strides visit distinct slots only in a power-of-two table.
const _: () = assert!(SOURCE_SLOTS.is_power_of_two());
/// Slots probed for one source before it counts as heavy (double
/// hashing: with 1000 sources in the table, all of a new source's probes
/// are taken with a probability near 0.25^16).
pub const PROBES: usize = 16;

/// The least fair share of a source: an initiation and its retransmit.
pub const MIN_SHARE: u32 = 2;

/// Where a gate's thresholds lie, in frames waiting in the control queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Above this depth the relay is under load: mac2 is required (the
    /// control thread's threshold, `UNDER_LOAD_QUEUE` in the relay).
    pub under_load: usize,
    /// Above this depth a source is admitted only within its fair share.
    pub fair_depth: usize,
    /// Weight shared out among the sources active in the window once the
    /// queue is above `fair_depth` (each gets at least two).
    pub share_budget: u32,
    /// The window sources are counted in (a weight spans this one and
    /// the previous one). A legitimate initiator retransmits once per
    /// second, so two windows of a second see two or three of its
    /// initiations at most.
    pub window: Duration,
}

impl Default for GateLimits {
    fn default() -> GateLimits {
        GateLimits {
            under_load: 64,
            fair_depth: 96,
            share_budget: 1024,
            window: Duration::from_secs(1),
        }
    }
}

/// What the worker does with a handshake frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Copy it into the control thread's queue.
    Admit,
    /// Under load without a valid mac2: send this cookie reply to the
    /// source, queue nothing.
    CookieReply([u8; COOKIE_REPLY_LEN]),
    /// Drop it, for this reason.
    Drop(GateDrop),
}

/// Why the gate dropped an initiation (a per-worker counter each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateDrop {
    /// mac1 does not match this relay's key.
    BadMac1,
    /// Under load, the source had its fair share of the queue.
    Shed,
}

impl GateDrop {
    /// A short, stable name for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            GateDrop::BadMac1 => "bad_mac1",
            GateDrop::Shed => "fair_shed",
        }
    }
}

/// One worker's gate (see the module docs). Not shared: each worker owns
/// one, made by [`super::HopResponder::gate`].
pub struct HandshakeGate {
    cookies: CookieChecker,
    limits: GateLimits,
    sources: SourceTable,
}

impl core::fmt::Debug for HandshakeGate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HandshakeGate")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HandshakeGate {
    /// A gate checking macs with `cookies` (a copy of the responder's
    /// checker), with `limits`, whose windows start at `now`. Allocates
    /// its table once.
    pub fn new(cookies: CookieChecker, limits: GateLimits, now: Instant) -> HandshakeGate {
        HandshakeGate {
            cookies,
            limits,
            sources: SourceTable::new(now),
        }
    }

    /// The thresholds.
    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// Judges a handshake frame from `source` while `depth` frames wait in
    /// the control queue. Only initiations are gated; other kinds (a mesh
    /// relay's responses and cookie replies) and frames that do not parse
    /// are admitted for the control thread to judge and count. Never
    /// allocates; `rng` draws a cookie reply's nonce.
    pub fn check<R: RngCore + CryptoRng>(
        &mut self,
        frame: &[u8],
        source: SocketAddr,
        depth: usize,
        now: Instant,
        rng: &mut R,
    ) -> Gate {
        let Ok(HandshakeFrame::Init(init)) = parse(frame) else {
            return Gate::Admit;
        };
        if !self.cookies.check_mac1(init.bytes, init.mac1) {
            return Gate::Drop(GateDrop::BadMac1);
        }
        if depth <= self.limits.under_load {
            return Gate::Admit;
        }
        if !self.cookies.check_mac2(init.bytes, init.mac2, source, now) {
            return Gate::CookieReply(self.cookies.reply(init.sender, init.mac1, source, now, rng));
        }
        let window = self.window(now);
        let limits = self.limits;
        match self.sources.arrive(source_key(source.ip()), window) {
            _ if depth < limits.fair_depth => Gate::Admit,
            Some((weight, active))
                if weight <= (limits.share_budget / active.max(1)).max(MIN_SHARE) =>
            {
                Gate::Admit
            }
            _ => Gate::Drop(GateDrop::Shed),
        }
    }

    /// The number of the window `now` falls in (1 for the first),
    /// stopping at `u32::MAX` (after 49.7 days of 1 ms windows).
    fn window(&self, now: Instant) -> u32 {
        let ms = self.limits.window.as_millis().max(1);
        let since = now
            .saturating_duration_since(self.sources.start)
            .as_millis();
        u32::try_from(since / ms + 1).unwrap_or(u32::MAX)
    }
}

/// A source's table key: an IPv4 address, or an IPv6 address cut to its
/// /64 (one host usually owns a whole /64).
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => (0xffff_u128 << 32) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

/// The [`PROBES`] slots probed, in order, for a source whose keyed hash
/// is `h` (double hashing): the start from the hash's low bits, the
/// stride from its high bits. An odd stride visits distinct slots of the
/// power-of-two table, and sources that share a start slot part after
/// it (no long clusters).
fn probe_slots(h: u64) -> impl Iterator<Item = usize> {
    let (start, stride) = (h as usize, (h >> 32) as usize | 1);
    (0..PROBES).map(move |p| start.wrapping_add(p.wrapping_mul(stride)) % SOURCE_SLOTS)
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: u128,
    /// The window `current` counts in (0: never used).
    window: u32,
    /// Proven initiations in `window`.
    current: u32,
    /// Proven initiations in the window before `window`.
    previous: u32,
}

/// Proven initiations per source in the current and previous window:
/// fixed size, open addressing with a random hash key.
struct SourceTable {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
    window: u32,
    active: u32,
    /// Sources active in the previous window: the share is computed
    /// with the larger of the two, so a new window's first arrivals do
    /// not see a near-empty table and a share of the whole budget.
    previous_active: u32,
}

impl SourceTable {
    fn new(start: Instant) -> SourceTable {
        SourceTable {
            slots: vec![Slot::default(); SOURCE_SLOTS].into_boxed_slice(),
            hasher: std::collections::hash_map::RandomState::new(),
            start,
            window: 0,
            active: 0,
            previous_active: 0,
        }
    }

    /// Counts an initiation of `key` in `window`; returns the source's
    /// weight (this window's initiations and the previous window's) and
    /// the number of sources active (in this window or the previous one,
    /// whichever saw more). `None` when the
    /// source has no slot and none is free in its probes. A slot whose
    /// counts are older than the previous window is free.
    fn arrive(&mut self, key: u128, window: u32) -> Option<(u32, u32)> {
        if window != self.window {
            self.previous_active = if self.window + 1 == window {
                self.active
            } else {
                0
            };
            self.window = window;
            self.active = 0;
        }
        let mut free = None;
        let mut found = None;
        for i in probe_slots(self.hasher.hash_one(key)) {
            let s = &self.slots[i];
            let live = s.window != 0 && s.window.saturating_add(1) >= window;
            if live && s.key == key {
                found = Some(i);
                break;
            }
            if !live && free.is_none() {
                free = Some(i);
            }
        }
        let i = match found {
            Some(i) => i,
            None => {
                let i = free?;
                self.slots[i] = Slot {
                    key,
                    window,
                    current: 0,
                    previous: 0,
                };
                i
            }
        };
        let s = &mut self.slots[i];
        if s.window != window {
            // The previous window's counts move back one window.
            s.previous = if s.window + 1 == window { s.current } else { 0 };
            s.current = 0;
            s.window = window;
        }
        if s.current == 0 {
            self.active += 1;
        }
        s.current = s.current.saturating_add(1);
        let active = self.active.max(self.previous_active);
        Some((s.current.saturating_add(s.previous), active))
    }
}

#[cfg(test)]
mod tests {
    use super::super::cookie::CookieJar;
    use super::*;
    use rand::SeedableRng;

    const RELAY: [u8; 32] = [3; 32];

    fn init() -> Vec<u8> {
        // The smallest well-formed initiation: noise of the minimum length.
        let noise = super::super::frames::NOISE_INIT_MIN_LEN;
        let mut f = vec![0x38, 0, 0, 0, 0, 0, 0, 7];
        f.extend_from_slice(&(noise as u16).to_be_bytes());
        f.extend_from_slice(&vec![0x5a; noise]);
        f.extend_from_slice(&[0; super::super::frames::MACS_LEN]);
        f
    }

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::new(IpAddr::V4((0x0a00_0000 + i).into()), 40000)
    }

    struct Bed {
        gate: HandshakeGate,
        checker: CookieChecker,
        rng: rand::rngs::StdRng,
        now: Instant,
    }

    fn bed() -> Bed {
        let now = Instant::now();
        let checker = CookieChecker::new(&RELAY, [9; 32], now);
        Bed {
            gate: HandshakeGate::new(checker.clone(), GateLimits::default(), now),
            checker,
            rng: rand::rngs::StdRng::seed_from_u64(1),
            now,
        }
    }

    impl Bed {
        /// An initiation from `from` stamped with the cookie it got.
        fn proven(&mut self, from: SocketAddr) -> Vec<u8> {
            let mut jar = CookieJar::new(&RELAY);
            let mut f = init();
            let mac1 = jar.stamp(&mut f, self.now);
            let reply = self.checker.reply(
                crate::ids::ReceiverIndex(7),
                &mac1,
                from,
                self.now,
                &mut self.rng,
            );
            let HandshakeFrame::CookieReply(r) = parse(&reply).unwrap() else {
                panic!("not a cookie reply")
            };
            jar.accept(&r, &mac1, self.now).unwrap();
            jar.stamp(&mut f, self.now);
            f
        }

        fn check(&mut self, f: &[u8], from: SocketAddr, depth: usize) -> Gate {
            self.gate.check(f, from, depth, self.now, &mut self.rng)
        }
    }

    #[test]
    fn drop_reasons_keep_their_metric_labels() {
        // The labels of `ztna_handshakes_gated_total` (docs/security.md),
        // which dashboards and alerts select on.
        assert_eq!(GateDrop::BadMac1.name(), "bad_mac1");
        assert_eq!(GateDrop::Shed.name(), "fair_shed");
    }

    #[test]
    fn a_gate_keeps_the_limits_it_was_given() {
        let now = Instant::now();
        let limits = GateLimits {
            under_load: 3,
            fair_depth: 5,
            share_budget: 7,
            window: Duration::from_millis(250),
        };
        let gate = HandshakeGate::new(CookieChecker::new(&RELAY, [9; 32], now), limits, now);
        assert_eq!(gate.limits(), limits);
    }

    #[test]
    fn bad_mac1_is_dropped_at_any_depth() {
        let mut b = bed();
        let mut f = init();
        CookieJar::new(&[4; 32]).stamp(&mut f, b.now);
        for depth in [0, 100, 10_000] {
            assert_eq!(b.check(&f, addr(1), depth), Gate::Drop(GateDrop::BadMac1));
        }
    }

    #[test]
    fn mac2_is_required_only_under_load_and_answered_with_a_cookie() {
        let mut b = bed();
        let mut f = init();
        CookieJar::new(&RELAY).stamp(&mut f, b.now);
        assert_eq!(b.check(&f, addr(1), 64), Gate::Admit);
        let Gate::CookieReply(reply) = b.check(&f, addr(1), 65) else {
            panic!("no cookie reply under load")
        };
        assert!(matches!(parse(&reply), Ok(HandshakeFrame::CookieReply(_))));
        let proven = b.proven(addr(1));
        assert_eq!(b.check(&proven, addr(1), 65), Gate::Admit);
        // The cookie is bound to the address: another one gets a reply.
        assert!(matches!(
            b.check(&proven, addr(2), 65),
            Gate::CookieReply(_)
        ));
    }

    #[test]
    fn heavy_sources_are_shed_first_and_a_light_one_gets_in() {
        let mut b = bed();
        let limits = b.gate.limits();
        let deep = limits.fair_depth;
        // 1000 bots, 40 initiations each per window, at a deep queue.
        let bots: Vec<(SocketAddr, Vec<u8>)> =
            (0..1000).map(|i| (addr(i), b.proven(addr(i)))).collect();
        let legit = addr(5000);
        let f = b.proven(legit);
        for window in 0..3 {
            let mut admitted = 0;
            for round in 0..40 {
                for (a, bot) in &bots {
                    if b.check(bot, *a, deep) == Gate::Admit {
                        admitted += 1;
                    }
                }
                // The legitimate initiator: one initiation per window,
                // amid the flood, always admitted.
                if round == 20 {
                    assert_eq!(b.check(&f, legit, deep), Gate::Admit, "window {window}");
                }
            }
            // Each bot got in while its weight was within the least share
            // (2): twice in the first window, never after (its weight
            // carries over from the window before).
            let expected = if window == 0 { 2000 } else { 0 };
            assert_eq!(admitted, expected, "bots admitted in window {window}");
            b.now += limits.window;
        }
        // Below the fair depth every proven initiation is admitted.
        assert_eq!(b.check(&bots[0].1, bots[0].0, deep - 1), Gate::Admit);
        // A source silent for two windows is light again.
        b.now += 2 * limits.window;
        for _ in 0..MIN_SHARE {
            assert_eq!(b.check(&bots[0].1, bots[0].0, deep), Gate::Admit);
        }
    }

    #[test]
    fn few_sources_share_the_budget() {
        let mut b = bed();
        let deep = b.gate.limits().fair_depth;
        let (a, c) = (addr(1), addr(2));
        let (fa, fc) = (b.proven(a), b.proven(c));
        assert_eq!(b.check(&fc, c, deep), Gate::Admit);
        let mut n = 0;
        while b.check(&fa, a, deep) == Gate::Admit {
            n += 1;
            assert!(n <= 1024, "never shed");
        }
        // Two active sources: half the budget each.
        assert_eq!(n, 512);
    }

    #[test]
    fn ipv6_sources_are_keyed_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_ne!(
            source_key("10.0.0.1".parse().unwrap()),
            source_key("::a00:1".parse().unwrap())
        );
    }

    #[test]
    fn a_full_neighbourhood_makes_a_source_heavy_not_a_panic() {
        let mut t = SourceTable::new(Instant::now());
        let mut none = 0;
        for k in 0..(SOURCE_SLOTS as u128 * 2) {
            if t.arrive(k, 1).is_none() {
                none += 1;
            }
        }
        assert!(none >= SOURCE_SLOTS, "{none}");
        assert_eq!(t.active as usize, 2 * SOURCE_SLOTS - none);
        // Two windows later every slot is free again.
        assert!(t.arrive(SOURCE_SLOTS as u128 * 3, 2).is_none());
        assert_eq!(t.arrive(SOURCE_SLOTS as u128 * 3, 3).map(|w| w.0), Some(1));
    }

    #[test]
    fn weights_span_the_current_and_the_previous_window() {
        let mut t = SourceTable::new(Instant::now());
        for n in 1..=3 {
            assert_eq!(t.arrive(7, 1), Some((n, 1)));
        }
        assert_eq!(t.arrive(7, 2), Some((4, 1)), "3 before, 1 now");
        assert_eq!(t.arrive(8, 2), Some((1, 2)));
        assert_eq!(
            t.arrive(7, 3),
            Some((2, 2)),
            "1 before, 1 now; 2 active before"
        );
        assert_eq!(t.arrive(7, 5), Some((1, 1)), "a gap forgets");
    }

    #[test]
    fn probes_are_distinct_and_part_sources_that_share_a_start() {
        for h in [
            0u64,
            1,
            1 << 32,
            2 << 32,
            3 << 32,
            u64::MAX,
            0x1234_5678_9abc_def0,
        ] {
            let slots: std::collections::HashSet<usize> = probe_slots(h).collect();
            assert_eq!(slots.len(), PROBES, "hash {h:#x}");
        }
        // The same start slot, other high bits: another stride.
        let a: Vec<usize> = probe_slots(5).collect();
        let b: Vec<usize> = probe_slots(5 | (2 << 32)).collect();
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1..], b[1..]);
    }

    #[test]
    fn the_window_number_saturates_after_two_to_the_32_windows() {
        // 1 ms windows run out of u32 after 49.7 days of uptime: the
        // window number stops at u32::MAX instead of overflowing.
        let mut b = bed();
        b.gate.limits.window = Duration::from_millis(1);
        let start = b.now;
        assert_eq!(b.gate.window(start), 1);
        let last = start + Duration::from_millis(u64::from(u32::MAX) - 2);
        assert_eq!(b.gate.window(last), u32::MAX - 1);
        for ms in [u64::from(u32::MAX), 2 * u64::from(u32::MAX)] {
            assert_eq!(b.gate.window(start + Duration::from_millis(ms)), u32::MAX);
        }
        b.now = start + Duration::from_millis(2 * u64::from(u32::MAX));
        let f = b.proven(addr(1));
        assert_eq!(
            b.check(&f, addr(1), b.gate.limits().fair_depth),
            Gate::Admit
        );
    }

    #[test]
    fn a_thousand_sources_all_find_a_slot() {
        for _ in 0..20 {
            let mut t = SourceTable::new(Instant::now());
            for k in 0..1000u128 {
                assert!(t.arrive(k, 1).is_some(), "source {k}");
            }
        }
    }
}
