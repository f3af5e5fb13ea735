//! A worker's audit table: access decisions counted per (user, service,
//! verdict), never logged per frame.
//!
//! The datapath records every policy decision it makes ([`Datapath`]'s
//! `audit`) into a fixed-size open-addressing table that its worker owns:
//! no allocation, no lock, no syscall per frame. The relay hands full tables
//! to its control thread between batches and gets empty ones back; the
//! control thread turns them into audit lines (the first decision of a pair,
//! then counts per interval) under a rate bound.
//!
//! Trade-offs:
//! - **Bounded probes.** Service ids are chosen by the sender (a user may
//!   forge frames for any id and have them denied), so an attacker can aim
//!   keys at one bucket. A lookup gives up after [`MAX_PROBES`] slots and
//!   the frame is counted in [`AuditTable::overflow`] instead: a flood costs
//!   at most that many probes per frame, never a long chain. The hash is
//!   also keyed with a per-table seed.
//! - **Fill bound.** A table takes pairs until it is three quarters full;
//!   further new pairs go to the overflow counters (frames and bytes by
//!   verdict), so probe chains stay short and the control thread still
//!   reports the overflowed frames as one "other pairs" count.
//! - **No "new pair" flag here.** Whether a pair was seen before is the
//!   control thread's question (it remembers pairs across many tables); a
//!   worker only counts.
//!
//! [`Datapath`]: crate::datapath::Datapath

use crate::hash::FIB;
use crate::ids::{ServiceId, UserId};

/// Slots a probe sequence visits at most before the frame is counted as
/// overflow.
pub const MAX_PROBES: usize = 8;

/// Slots of a table unless configured otherwise.
pub const DEFAULT_SLOTS: usize = 4096;

/// The smallest table: a few pairs must always fit.
pub const MIN_SLOTS: usize = 16;

/// The largest table (2^20 slots, 24 MiB).
pub const MAX_SLOTS: usize = 1 << 20;

/// The policy's answer for a (user, service) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// The policy allows the user to reach the service.
    Allow,
    /// The policy does not.
    Deny,
}

impl Access {
    /// Both, allow first.
    pub const ALL: [Access; 2] = [Access::Allow, Access::Deny];

    /// `"allow"` or `"deny"`, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Access::Allow => "allow",
            Access::Deny => "deny",
        }
    }

    const fn index(self) -> usize {
        match self {
            Access::Allow => 0,
            Access::Deny => 1,
        }
    }
}

/// Frames and bytes counted for one key (or for the overflow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames judged.
    pub frames: u64,
    /// Their bytes (whole frames, header included).
    pub bytes: u64,
}

impl Counts {
    /// Adds `other` (saturating: a counter never wraps).
    #[inline]
    pub fn add(&mut self, other: Counts) {
        self.frames = self.frames.saturating_add(other.frames);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// One (user, service, verdict) and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who asked.
    pub user: UserId,
    /// For what.
    pub service: ServiceId,
    /// The policy's answer.
    pub access: Access,
    /// How often, and how many bytes.
    pub counts: Counts,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    user: u32,
    service: u32,
    /// 0: empty; 1 + `Access::index`: taken.
    state: u8,
    counts: Counts,
}

/// Fixed-size counters of access decisions, owned by one worker.
#[derive(Debug, Clone)]
pub struct AuditTable {
    slots: Box<[Slot]>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
    /// Taken slots.
    len: usize,
    /// The most slots taken before new pairs overflow.
    max_len: usize,
    seed: u64,
    /// Frames of pairs that found no slot, by `Access::index`.
    overflow: [Counts; 2],
}

impl AuditTable {
    /// A table of `slots` slots (rounded up to a power of two, clamped to
    /// [`MIN_SLOTS`]..=[`MAX_SLOTS`]) keyed with `seed`. Allocates here,
    /// once; recording never does.
    pub fn new(slots: usize, seed: u64) -> AuditTable {
        let n = slots.clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two();
        AuditTable {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            mask: n - 1,
            len: 0,
            max_len: n / 4 * 3,
            seed,
            overflow: [Counts::default(); 2],
        }
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The most distinct keys it holds; beyond, frames go to
    /// [`AuditTable::overflow`].
    pub fn max_keys(&self) -> usize {
        self.max_len
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was recorded since the last [`AuditTable::clear`]
    /// (no key, no overflow).
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.overflow == [Counts::default(); 2]
    }

    /// Counts one frame of `len` bytes for (`user`, `service`, `access`).
    /// No allocation; at most [`MAX_PROBES`] slots visited.
    #[inline]
    pub fn record(&mut self, user: UserId, service: ServiceId, access: Access, len: usize) {
        let state = 1 + access.index() as u8;
        let key = (u64::from(user.0) << 32 | u64::from(service.0)) ^ self.seed;
        // Fibonacci hashing; the top bits spread consecutive ids.
        let mut i = (key.wrapping_mul(FIB) >> 32) as usize ^ usize::from(state);
        let add = Counts {
            frames: 1,
            bytes: len as u64,
        };
        for _ in 0..MAX_PROBES {
            i &= self.mask;
            let Some(slot) = self.slots.get_mut(i) else {
                break;
            };
            if slot.state == 0 {
                if self.len >= self.max_len {
                    break;
                }
                *slot = Slot {
                    user: user.0,
                    service: service.0,
                    state,
                    counts: add,
                };
                self.len += 1;
                return;
            }
            if slot.state == state && slot.user == user.0 && slot.service == service.0 {
                slot.counts.add(add);
                return;
            }
            i += 1;
        }
        if let Some(o) = self.overflow.get_mut(access.index()) {
            o.add(add);
        }
    }

    /// Frames of `access` that found no slot.
    pub fn overflow(&self, access: Access) -> Counts {
        self.overflow
            .get(access.index())
            .copied()
            .unwrap_or_default()
    }

    /// Every key held, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = AuditEntry> + '_ {
        self.slots.iter().filter_map(|s| {
            let access = match s.state {
                0 => return None,
                1 => Access::Allow,
                _ => Access::Deny,
            };
            Some(AuditEntry {
                user: UserId(s.user),
                service: ServiceId(s.service),
                access,
                counts: s.counts,
            })
        })
    }

    /// Forgets everything recorded; keeps the slots.
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(Slot::default());
        }
        self.len = 0;
        self.overflow = [Counts::default(); 2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(t: &AuditTable, user: u32, service: u32, access: Access) -> Option<Counts> {
        t.entries()
            .find(|e| {
                e.user == UserId(user) && e.service == ServiceId(service) && e.access == access
            })
            .map(|e| e.counts)
    }

    #[test]
    fn records_count_frames_and_bytes_per_key() {
        let mut t = AuditTable::new(64, 7);
        assert!(t.is_empty());
        t.record(UserId(1), ServiceId(2), Access::Allow, 100);
        t.record(UserId(1), ServiceId(2), Access::Allow, 50);
        t.record(UserId(1), ServiceId(2), Access::Deny, 10);
        t.record(UserId(2), ServiceId(1), Access::Allow, 1);
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert_eq!(
            count(&t, 1, 2, Access::Allow),
            Some(Counts {
                frames: 2,
                bytes: 150
            })
        );
        assert_eq!(
            count(&t, 1, 2, Access::Deny),
            Some(Counts {
                frames: 1,
                bytes: 10
            })
        );
        assert_eq!(count(&t, 2, 1, Access::Allow).map(|c| c.frames), Some(1));
        assert_eq!(count(&t, 2, 1, Access::Deny), None);
        assert_eq!(t.overflow(Access::Allow), Counts::default());
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.entries().count(), 0);
    }

    #[test]
    fn sizes_are_powers_of_two_within_bounds() {
        assert_eq!(AuditTable::new(0, 0).capacity(), MIN_SLOTS);
        assert_eq!(AuditTable::new(1000, 0).capacity(), 1024);
        assert_eq!(AuditTable::new(1000, 0).max_keys(), 768);
        assert_eq!(AuditTable::new(usize::MAX, 0).capacity(), MAX_SLOTS);
    }

    #[test]
    fn a_full_table_counts_new_pairs_as_overflow_and_keeps_counting_old_ones() {
        let mut t = AuditTable::new(64, 0x5eed);
        let max = t.max_keys();
        // Far more distinct denied pairs than fit.
        for s in 0..1000u32 {
            t.record(UserId(9), ServiceId(s), Access::Deny, 10);
        }
        assert!(t.len() <= max, "{} keys in a table of {max}", t.len());
        let held: u64 = t.entries().map(|e| e.counts.frames).sum();
        let over = t.overflow(Access::Deny);
        assert_eq!(held + over.frames, 1000, "every frame counted once");
        assert_eq!(over.bytes, over.frames * 10);
        assert!(over.frames >= 1000 - max as u64);
        assert_eq!(t.overflow(Access::Allow), Counts::default());
        // A pair already held still counts in its own slot.
        let (u, s) = t
            .entries()
            .map(|e| (e.user, e.service))
            .next()
            .expect("some pair held");
        let before = count(&t, u.0, s.0, Access::Deny).expect("held").frames;
        t.record(u, s, Access::Deny, 10);
        assert_eq!(
            count(&t, u.0, s.0, Access::Deny).expect("held").frames,
            before + 1
        );
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.overflow(Access::Deny), Counts::default());
        t.record(UserId(1), ServiceId(1), Access::Allow, 1);
        assert_eq!(t.len(), 1);
    }
}
