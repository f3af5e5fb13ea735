//! Per-source token buckets for handshake initiations.
//!
//! A handshake costs the responder several X25519 operations and an Ed25519
//! verification (tens of microseconds); a datagram costs the sender almost
//! nothing. This limiter caps how many initiations one source may make the
//! responder process: `rate` per second with bursts of `burst`.
//!
//! # Trade-offs
//!
//! * **Keyed by IP, not IP and port.** A sender picks its source port
//!   freely. IPv6 sources are keyed by their /64 prefix, since one host
//!   usually owns a whole /64 and could otherwise rotate through it.
//! * **Bounded table.** Source addresses can be spoofed, so a flood could
//!   create an entry per packet. The table never holds more than `capacity`
//!   entries. When it is full, entries whose bucket has refilled to `burst`
//!   are swept out (such an entry is identical to a fresh one, so forgetting
//!   it loses nothing); the sweep is O(capacity) and runs at most once per
//!   [`SWEEP_INTERVAL`] so a flood cannot make every packet pay for it. If
//!   the table is still full, every source without an entry shares one
//!   *overflow* bucket. Under a spoofed flood, new legitimate sources then
//!   compete with the flood for that bucket, but sources already in the
//!   table keep their own allowance, memory stays fixed, and the cookie
//!   mechanism (mac2, see [`super::cookie`]) is what lets legitimate peers
//!   prove their address. WireGuard instead grows its table and collects
//!   garbage every second; we prefer a hard bound.
//! * **Integer nanoseconds.** Tokens are kept as nanoseconds of credit, so
//!   refill is exact and needs no floating point.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Initiations per second one source may sustain (WireGuard's value).
pub const DEFAULT_RATE: u32 = 20;
/// Initiations one source may send back to back.
pub const DEFAULT_BURST: u32 = 5;
/// Sources tracked at once.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Least time between two sweeps of a full table.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A token bucket: credit in nanoseconds, refilled by elapsed time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    credit_ns: u64,
    last: Instant,
}

/// Per-source token buckets with a bounded table (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
    capacity: usize,
    /// Nanoseconds of credit one initiation costs.
    cost_ns: u64,
    /// Most credit a bucket holds: `burst` initiations.
    max_ns: u64,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `rate` initiations per second per source with
    /// bursts of `burst`, tracking at most `capacity` sources. `rate` and
    /// `burst` of zero are treated as one.
    pub fn new(rate: u32, burst: u32, capacity: usize, now: Instant) -> RateLimiter {
        let cost_ns = 1_000_000_000 / u64::from(rate.max(1));
        let max_ns = cost_ns * u64::from(burst.max(1));
        RateLimiter {
            buckets: HashMap::with_capacity(capacity.min(DEFAULT_CAPACITY)),
            overflow: Bucket {
                credit_ns: max_ns,
                last: now,
            },
            capacity,
            cost_ns,
            max_ns,
            last_sweep: None,
        }
    }

    /// A limiter with WireGuard's rate and burst and [`DEFAULT_CAPACITY`].
    pub fn with_defaults(now: Instant) -> RateLimiter {
        RateLimiter::new(DEFAULT_RATE, DEFAULT_BURST, DEFAULT_CAPACITY, now)
    }

    /// Whether an initiation from `source` at `now` is within its allowance;
    /// consumes one token when it is.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let key = bucket_key(source);
        let (cost, max) = (self.cost_ns, self.max_ns);
        if let Some(b) = self.buckets.get_mut(&key) {
            return take(b, now, cost, max);
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(now);
        }
        if self.buckets.len() >= self.capacity {
            return take(&mut self.overflow, now, cost, max);
        }
        let mut fresh = Bucket {
            credit_ns: max,
            last: now,
        };
        let allowed = take(&mut fresh, now, cost, max);
        self.buckets.insert(key, fresh);
        allowed
    }

    /// Sources currently tracked (never more than the capacity).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets buckets that have refilled completely, at most once per
    /// [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let max = self.max_ns;
        self.buckets.retain(|_, b| refilled(b, now, max) < max);
    }
}

/// The table key: the address, with IPv6 cut to its /64 prefix.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

fn refilled(b: &Bucket, now: Instant, max: u64) -> u64 {
    let elapsed = now.saturating_duration_since(b.last).as_nanos();
    let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
    b.credit_ns.saturating_add(elapsed).min(max)
}

fn take(b: &mut Bucket, now: Instant, cost: u64, max: u64) -> bool {
    b.credit_ns = refilled(b, now, max);
    // Only move `last` forward: a `now` older than the last update must not
    // rewind the bucket and mint credit on the next call.
    if now > b.last {
        b.last = now;
    }
    if b.credit_ns >= cost {
        b.credit_ns -= cost;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(20, 5, 16, t0);
        let a = v4(1);
        for i in 0..5 {
            assert!(rl.allow(a, t0), "burst {i}");
        }
        assert!(!rl.allow(a, t0));
        // One token per 50 ms at 20/s.
        assert!(!rl.allow(a, t0 + Duration::from_millis(49)));
        assert!(rl.allow(a, t0 + Duration::from_millis(50)));
        assert!(!rl.allow(a, t0 + Duration::from_millis(50)));
        // Long idle refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(rl.allow(a, later));
        }
        assert!(!rl.allow(a, later));
        // Other sources are unaffected.
        assert!(rl.allow(v4(2), t0));
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, 1, 16, t0);
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.allow(a.into(), t0));
        assert!(!rl.allow(b.into(), t0), "same /64 shares the bucket");
        assert!(rl.allow(c.into(), t0));
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn table_is_bounded_under_a_spoofed_flood() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(20, 5, 64, t0);
        let mut allowed = 0;
        for n in 0..100_000u32 {
            if rl.allow(v4(n), t0) {
                allowed += 1;
            }
            assert!(rl.len() <= 64);
        }
        // 64 tracked sources got their first token, the rest shared the
        // overflow bucket's burst of 5.
        assert_eq!(allowed, 64 + 5);
        // A tracked source keeps its own allowance during the flood.
        assert!(rl.allow(v4(0), t0));
    }

    #[test]
    fn sweep_reclaims_idle_entries_but_not_too_often() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(20, 5, 4, t0);
        for n in 0..4 {
            assert!(rl.allow(v4(n), t0));
        }
        // Full, and the buckets have not refilled: the newcomer overflows.
        assert!(rl.allow(v4(100), t0 + Duration::from_millis(10)));
        assert_eq!(rl.len(), 4);
        // Refilled after 50 ms, but the last sweep was under a second ago.
        let t1 = t0 + Duration::from_millis(500);
        rl.allow(v4(101), t1);
        assert!(!rl.buckets.contains_key(&v4(101)));
        // After the sweep interval the idle entries are reclaimed.
        let t2 = t0 + Duration::from_secs(2);
        assert!(rl.allow(v4(102), t2));
        assert!(rl.buckets.contains_key(&v4(102)));
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn time_going_backwards_mints_no_credit() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut rl = RateLimiter::new(1, 1, 4, t0);
        assert!(rl.allow(v4(1), t0));
        assert!(!rl.allow(v4(1), t0 - Duration::from_secs(5)));
        assert!(!rl.allow(v4(1), t0));
        assert!(rl.allow(v4(1), t0 + Duration::from_secs(1)));
    }
}
