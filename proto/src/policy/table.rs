//! The two integer-keyed tables behind the O(1) policy lookup.
//!
//! Both are built once and never mutated, so they are plain arrays: no
//! tombstones, no resizing, no per-entry allocation. Keys are integers chosen
//! by the policy (not by the packet sender beyond picking which key to ask
//! about), so a multiplicative (Fibonacci) hash is enough: the set of keys is
//! fixed before any query and an attacker can only choose among them, which
//! cannot lengthen a probe sequence. SipHash would cost ~20 ns per lookup for
//! protection this structure does not need.

use crate::hash::FIB;

/// Smallest table, so `64 - bits` is always a valid shift.
const MIN_BITS: u32 = 3;

/// Open-addressing tables are sized for a load factor of at most 5/8: linear
/// probing then averages about 4 slots (half a cache line of u64s) for a
/// miss, which is the common case for random denied pairs.
fn bits_for(entries: usize) -> u32 {
    let want = entries.saturating_mul(8) / 5 + 1;
    want.next_power_of_two().trailing_zeros().max(MIN_BITS)
}

#[inline]
fn home(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(FIB) >> (64 - bits)) as usize
}

/// An immutable map from a `u32` id to a `u32` value (never `u32::MAX`).
///
/// Dense when the ids fill most of their range: then a lookup is one
/// subtraction and one array load. Otherwise an open-addressing table of
/// packed `(id << 32 | value)` slots, where one slot is one 8-byte load.
#[derive(Debug, Clone)]
pub(crate) enum IdMap {
    /// `values[id - base]`, `u32::MAX` where no id is.
    Dense { base: u32, values: Vec<u32> },
    /// Packed slots; `EMPTY` where no id is.
    Hashed { slots: Vec<u64>, bits: u32 },
}

const NONE: u32 = u32::MAX;
const EMPTY: u64 = u64::MAX;

impl IdMap {
    /// Builds the map. `entries` must have distinct ids and values below
    /// `u32::MAX` (the validator guarantees the first, the compiler the
    /// second; a violating entry is skipped, never a panic).
    pub(crate) fn build(entries: &[(u32, u32)]) -> IdMap {
        let (Some(min), Some(max)) = (
            entries.iter().map(|e| e.0).min(),
            entries.iter().map(|e| e.0).max(),
        ) else {
            return IdMap::Dense {
                base: 0,
                values: Vec::new(),
            };
        };
        let span = (max - min) as usize + 1;
        // Dense costs 4 bytes per id in range, hashed ~10 per entry: dense
        // wins in memory and in work while the range is at most twice the
        // count (plus slack so tiny sparse files stay dense).
        if span <= entries.len().saturating_mul(2).saturating_add(64) {
            let mut values = vec![NONE; span];
            for &(id, v) in entries {
                if let Some(slot) = values.get_mut((id - min) as usize) {
                    *slot = v;
                }
            }
            return IdMap::Dense { base: min, values };
        }
        let bits = bits_for(entries.len());
        let mask = (1usize << bits) - 1;
        let mut slots = vec![EMPTY; 1 << bits];
        for &(id, v) in entries {
            if v == NONE {
                continue;
            }
            let mut i = home(u64::from(id), bits);
            loop {
                let s = slots[i];
                if s == EMPTY {
                    slots[i] = u64::from(id) << 32 | u64::from(v);
                    break;
                }
                if (s >> 32) as u32 == id {
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        IdMap::Hashed { slots, bits }
    }

    /// The value for `id`.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<u32> {
        match self {
            IdMap::Dense { base, values } => {
                let v = *values.get(id.wrapping_sub(*base) as usize)?;
                (v != NONE).then_some(v)
            }
            IdMap::Hashed { slots, bits } => {
                let mask = slots.len() - 1;
                let mut i = home(u64::from(id), *bits);
                loop {
                    // `i` is masked, so in bounds; `get` keeps that a proof
                    // rather than an assumption.
                    let s = *slots.get(i)?;
                    if s == EMPTY {
                        return None;
                    }
                    if (s >> 32) as u32 == id {
                        return Some(s as u32);
                    }
                    i = (i + 1) & mask;
                }
            }
        }
    }

    /// Whether the dense layout was chosen.
    pub(crate) fn is_dense(&self) -> bool {
        matches!(self, IdMap::Dense { .. })
    }

    /// Bytes of heap the map holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            IdMap::Dense { values, .. } => values.capacity() * 4,
            IdMap::Hashed { slots, .. } => slots.capacity() * 8,
        }
    }
}

/// An immutable set of `(hi, lo)` u32 pairs, stored as `hi << 32 | lo` u64
/// keys with linear probing. `hi` is never `u32::MAX`, so `u64::MAX` marks
/// an empty slot.
#[derive(Debug, Clone)]
pub(crate) struct PairSet {
    slots: Vec<u64>,
    bits: u32,
    len: usize,
}

impl PairSet {
    /// Builds the set; `len_hint` sizes it (the exact count is best).
    /// Pairs with `hi == u32::MAX` are skipped.
    pub(crate) fn build(len_hint: usize, pairs: impl Iterator<Item = (u32, u32)>) -> PairSet {
        let bits = bits_for(len_hint);
        let mut set = PairSet {
            slots: vec![EMPTY; 1 << bits],
            bits,
            len: 0,
        };
        for (hi, lo) in pairs {
            if hi == u32::MAX {
                continue;
            }
            if set.len + 1 > set.slots.len() * 5 / 8 {
                set.grow();
            }
            set.insert(pair(hi, lo));
        }
        set
    }

    fn insert(&mut self, key: u64) {
        let mask = self.slots.len() - 1;
        let mut i = home(key, self.bits);
        loop {
            let s = self.slots[i];
            if s == key {
                return;
            }
            if s == EMPTY {
                self.slots[i] = key;
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table; only reached when `len_hint` was too small.
    fn grow(&mut self) {
        let old = core::mem::take(&mut self.slots);
        self.bits += 1;
        self.slots = vec![EMPTY; 1 << self.bits];
        self.len = 0;
        for key in old.into_iter().filter(|&k| k != EMPTY) {
            self.insert(key);
        }
    }

    /// Whether `(hi, lo)` is in the set.
    #[inline]
    pub(crate) fn contains(&self, hi: u32, lo: u32) -> bool {
        let key = pair(hi, lo);
        let mask = self.slots.len() - 1;
        let mut i = home(key, self.bits);
        loop {
            let Some(&s) = self.slots.get(i) else {
                return false;
            };
            if s == key {
                return true;
            }
            if s == EMPTY {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    /// Number of pairs.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of heap the set holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 8
    }
}

#[inline]
fn pair(hi: u32, lo: u32) -> u64 {
    u64::from(hi) << 32 | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_hashed_maps_agree() {
        let dense: Vec<(u32, u32)> = (10..1000).map(|i| (i, i * 3)).collect();
        let sparse: Vec<(u32, u32)> = (0..1000).map(|i| (i * 7919 + u32::MAX / 2, i)).collect();
        let d = IdMap::build(&dense);
        let h = IdMap::build(&sparse);
        assert!(d.is_dense());
        assert!(!h.is_dense());
        for &(k, v) in &dense {
            assert_eq!(d.get(k), Some(v));
        }
        for &(k, v) in &sparse {
            assert_eq!(h.get(k), Some(v));
        }
        for k in [0, 9, 1000, u32::MAX, u32::MAX / 2 + 1] {
            assert_eq!(d.get(k), None);
            assert_eq!(h.get(k), None);
        }
        assert_eq!(IdMap::build(&[]).get(0), None);
        // u32::MAX is a valid id.
        let m = IdMap::build(&[(u32::MAX, 1), (0, 2)]);
        assert_eq!(m.get(u32::MAX), Some(1));
        assert_eq!(m.get(0), Some(2));
    }

    #[test]
    fn pair_set_membership_and_growth() {
        // A too-small hint forces growth.
        let set = PairSet::build(1, (0..5000u32).map(|i| (i % 97, i)));
        assert_eq!(set.len(), 5000);
        for i in 0..5000u32 {
            assert!(set.contains(i % 97, i));
            assert!(!set.contains(i % 97 + 1, i));
        }
        assert!(!set.contains(0, u32::MAX));
        let empty = PairSet::build(0, core::iter::empty());
        assert!(!empty.contains(0, 0));
        // Duplicates count once; a u32::MAX high half is skipped.
        let set = PairSet::build(4, [(1, 1), (1, 1), (u32::MAX, 3)].into_iter());
        assert_eq!(set.len(), 1);
        assert!(!set.contains(u32::MAX, 3));
    }

    /// Open-addressing tables are at most 5/8 full and, past the smallest
    /// size, more than 5/16 full: 1.6 to 3.2 slots per entry, as the
    /// compiler's module documentation counts the grant set. (Kills run 8's
    /// `/ 5` -> `* 5` in `bits_for`, which made every table 12 to 50 times
    /// larger than it needs.)
    #[test]
    fn tables_hold_1_6_to_3_2_slots_per_entry() {
        for n in 0..=5_000usize {
            let slots = 1usize << bits_for(n);
            assert!(8 * n <= 5 * slots, "{n} entries in {slots} slots");
            assert!(
                slots == 8 || 5 * slots <= 16 * n + 5,
                "{n} entries in {slots} slots"
            );
        }
        // The tables are built at that size: 1000 entries, 2048 slots.
        assert_eq!(bits_for(1000), 11);
        let sparse: Vec<(u32, u32)> = (0..1000).map(|i| (i * 7919 + (1 << 31), i)).collect();
        assert_eq!(IdMap::build(&sparse).heap_bytes(), 2048 * 8);
        let set = PairSet::build(1000, (0..1000).map(|i| (i, i)));
        assert_eq!(set.heap_bytes(), 2048 * 8);
    }

    /// `heap_bytes` is what the map holds: 4 bytes per id in the dense
    /// range, 8 per hashed slot. (Kills run 8's `IdMap::heap_bytes -> 0`,
    /// `-> 1`, and `* 4`, `* 8` -> `+`, `/`: the compiler's stats tests only
    /// compared sizes, or asked for more than zero.)
    #[test]
    fn maps_count_the_heap_they_hold() {
        let dense: Vec<(u32, u32)> = (10..1000).map(|i| (i, i)).collect();
        let d = IdMap::build(&dense);
        assert!(d.is_dense());
        assert_eq!(d.heap_bytes(), 990 * 4);
        // Six ids spread over a range of 10^6: hashed in 16 slots.
        let sparse: Vec<(u32, u32)> = (0..6).map(|i| (i * 200_000, i)).collect();
        let h = IdMap::build(&sparse);
        assert!(!h.is_dense());
        assert_eq!(h.heap_bytes(), 16 * 8);
        assert_eq!(IdMap::build(&[]).heap_bytes(), 0);
    }

    /// Id 0 is a valid id, also where another id already holds its slot.
    /// (Kills run 8's `s >> 32` -> `s << 32` in `IdMap::build`'s
    /// duplicate check, which read every occupied slot as holding id 0
    /// and so dropped id 0 whenever its slot was taken.)
    #[test]
    fn a_hashed_map_keeps_id_zero_when_its_slot_is_taken() {
        // Two entries: 8 slots; `home(0)` is slot 0.
        assert_eq!((bits_for(2), home(0, 3)), (3, 0));
        let taker = (1_000..).find(|&id| home(u64::from(id), 3) == 0).unwrap();
        let m = IdMap::build(&[(taker, 1), (0, 2)]);
        assert!(!m.is_dense());
        assert_eq!((m.get(taker), m.get(0)), (Some(1), Some(2)));
    }

    /// A set grows when the next pair would make it more than 5/8 full,
    /// and not before: 5 pairs fit 8 slots, the sixth doubles them.
    /// (Kills run 8's `>` -> `==` and `>=`, which grew one pair early,
    /// `len + 1` -> `len * 1`, one pair late, and `slots * 5 / 8` ->
    /// `slots + 5 / 8` (only when full) and `slots / 5 / 8` (at every
    /// pair): each answered right, in a table of the wrong size.)
    #[test]
    fn a_set_grows_only_past_five_eighths_full() {
        for n in 0..=700u32 {
            let mut slots = 8;
            while n as usize > slots * 5 / 8 {
                slots *= 2;
            }
            let set = PairSet::build(0, (0..n).map(|i| (i, i)));
            assert_eq!(set.len(), n as usize);
            assert_eq!(set.heap_bytes(), slots * 8, "{n} pairs");
        }
        assert_eq!(PairSet::build(0, (0..5).map(|i| (i, i))).heap_bytes(), 64);
        assert_eq!(PairSet::build(0, (0..6).map(|i| (i, i))).heap_bytes(), 128);
    }
}
