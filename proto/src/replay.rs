//! Anti-replay window over hop counters, after RFC 6479.
//!
//! A bitmap of [`BLOCKS`] 64-bit words used as a ring: bit `c % 64` of word
//! `(c / 64) % BLOCKS` records whether counter `c` was accepted. Moving the
//! window forward clears whole words instead of shifting the bitmap, so an
//! in-order frame costs one load, one test and one store, and a jump ahead
//! costs at most [`BLOCKS`] word stores. As in RFC 6479 one word is kept
//! spare, so the window proper is `(BLOCKS - 1) * 64` = [`WINDOW_SIZE`]
//! counters: frames reordered by up to that much are still accepted.
//!
//! # Semantics
//!
//! Let `top` be the highest counter accepted so far (0 while none was). A
//! counter `c` is accepted exactly when it was not accepted before and either
//! `c > top` or `top - c < WINDOW_SIZE`. Counter 0 is an ordinary counter.
//! The arithmetic never overflows, up to and including `u64::MAX`.
//!
//! # Contract: update only after the tag verifies
//!
//! **Call [`ReplayWindow::update`] only for a frame whose hop tag has already
//! verified.** Otherwise anyone can send one unauthenticated frame with a
//! counter far ahead, slide the window past every honest counter, and make
//! the session drop all real traffic. [`ReplayWindow::check`] does not mutate
//! and may be called before the tag check, as a cheap early reject (boringtun
//! orders its session code the same way).

use core::fmt;

/// Number of 64-bit words in the bitmap ring.
pub const BLOCKS: usize = 128;

// The design asks for thousands of counters of reordering tolerance, and
// `ring_index` relies on a power of two to stay a mask.
const _: () = assert!(BLOCKS.is_power_of_two() && (BLOCKS - 1) * 64 >= 4096);

/// Bits per bitmap word.
const BLOCK_BITS: u64 = u64::BITS as u64;

/// Number of counters below and including the highest accepted one that the
/// window tracks; anything older is rejected as too old.
pub const WINDOW_SIZE: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Replay state of one receiving hop session (1 KiB of bitmap).
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far; 0 while none was.
    top: u64,
    /// Ring of words; word `(c / 64) % BLOCKS` holds counter `c`.
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            top: 0,
            bitmap: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`update`](Self::update) would accept `counter`, without
    /// recording it. Safe to call before the tag is verified.
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.top {
            return true;
        }
        if self.top - counter >= WINDOW_SIZE {
            return false;
        }
        let (word, bit) = locate(counter);
        self.bitmap[word] & bit == 0
    }

    /// Accepts and records `counter`; false if it was seen before or is too
    /// old.
    ///
    /// **Only call this after the frame's hop tag verified** (see the module
    /// documentation): a forged counter would otherwise move the window.
    #[inline]
    pub fn update(&mut self, counter: u64) -> bool {
        if counter > self.top {
            self.advance(counter);
        } else if self.top - counter >= WINDOW_SIZE {
            return false;
        }
        let (word, bit) = locate(counter);
        let old = self.bitmap[word];
        self.bitmap[word] = old | bit;
        old & bit == 0
    }

    /// Forgets every counter, as for a new key.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The highest counter accepted so far (0 while none was).
    #[inline]
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Moves the window so that `counter` (> top) is its new top, clearing the
    /// words of the blocks it newly covers: none of their counters was seen.
    #[inline]
    fn advance(&mut self, counter: u64) {
        let old_block = self.top / BLOCK_BITS;
        let new_block = counter / BLOCK_BITS;
        let ahead = new_block - old_block;
        if ahead >= BLOCKS as u64 {
            self.bitmap = [0; BLOCKS];
        } else {
            for block in old_block + 1..=new_block {
                self.bitmap[ring_index(block)] = 0;
            }
        }
        self.top = counter;
    }
}

/// Word index and bit mask of a counter.
#[inline]
fn locate(counter: u64) -> (usize, u64) {
    (
        ring_index(counter / BLOCK_BITS),
        1 << (counter % BLOCK_BITS),
    )
}

/// Position of a block in the ring.
#[inline]
fn ring_index(block: u64) -> usize {
    // BLOCKS is a power of two, so this is a mask; the result is < BLOCKS.
    (block % BLOCKS as u64) as usize
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bitmap is 1 KiB of noise in a log line; its population says
        // enough.
        let marked: u32 = self.bitmap.iter().map(|w| w.count_ones()).sum();
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .field("marked", &marked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..3 * WINDOW_SIZE {
            assert!(w.check(c), "{c}");
            assert!(w.update(c), "{c}");
            assert!(!w.check(c), "{c} again");
            assert!(!w.update(c), "{c} again");
        }
        assert_eq!(w.top(), 3 * WINDOW_SIZE - 1);
    }

    #[test]
    fn counter_zero_once() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(1));
        assert!(!w.update(0));
    }

    #[test]
    fn reordered_within_window() {
        let mut w = ReplayWindow::default();
        assert!(w.update(10_000));
        // Everything from top - WINDOW_SIZE + 1 up to top is still open.
        for c in (10_000 - WINDOW_SIZE + 1..10_000).rev() {
            assert!(w.update(c), "{c}");
        }
        for c in 10_000 - WINDOW_SIZE + 1..=10_000 {
            assert!(!w.update(c), "{c} replayed");
        }
    }

    #[test]
    fn too_old_is_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.update(WINDOW_SIZE + 500));
        assert!(!w.check(500));
        assert!(!w.update(500));
        assert!(!w.update(0));
        assert!(w.update(501), "oldest counter still inside the window");
    }

    #[test]
    fn jump_ahead_beyond_window_clears_old_bits() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            assert!(w.update(c));
        }
        // Jump by exactly a ring's worth of counters: every word aliases an
        // old one, so stale bits would show up as false duplicates.
        let jump = 199 + BLOCKS as u64 * 64;
        assert!(w.update(jump));
        for c in jump - WINDOW_SIZE + 1..jump {
            assert!(w.check(c), "{c} falsely marked");
        }
        // A huge jump too.
        assert!(w.update(1 << 40));
        assert!(w.check((1 << 40) - 1));
        assert!(!w.check(jump));
    }

    #[test]
    fn jump_ahead_within_window_keeps_old_bits() {
        let mut w = ReplayWindow::default();
        assert!(w.update(100));
        assert!(w.update(100 + WINDOW_SIZE - 1));
        assert!(!w.update(100), "still inside the window");
        assert!(w.update(101));
    }

    #[test]
    fn near_u64_max_does_not_overflow() {
        let mut w = ReplayWindow::default();
        assert!(w.update(u64::MAX - 3));
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 1));
        assert!(!w.update(u64::MAX - 3));
        assert!(w.check(u64::MAX - WINDOW_SIZE + 1));
        assert!(!w.check(u64::MAX - WINDOW_SIZE));
        assert!(!w.check(0));
    }

    #[test]
    fn reset_forgets() {
        let mut w = ReplayWindow::default();
        assert!(w.update(42));
        w.reset();
        assert!(w.update(42));
        assert_eq!(w.top(), 42);
    }

    #[test]
    fn debug_is_short() {
        let mut w = ReplayWindow::default();
        w.update(3);
        assert_eq!(format!("{w:?}"), "ReplayWindow { top: 3, marked: 1 }");
    }

    /// The documented semantics, stated directly over the set of accepted
    /// counters.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn accepts(&self, c: u64) -> bool {
            let top = self.seen.last().copied().unwrap_or(0);
            !self.seen.contains(&c) && (c > top || top - c < WINDOW_SIZE)
        }

        fn update(&mut self, c: u64) -> bool {
            let ok = self.accepts(c);
            if ok {
                self.seen.insert(c);
            }
            ok
        }
    }

    /// Counters that move mostly forward, with reordering, duplicates, stale
    /// frames, probes at the window's edge, jumps of about a ring's width
    /// (where a missed clear would leave stale bits) and big leaps.
    fn steps() -> impl Strategy<Value = Vec<(u8, u64)>> {
        prop::collection::vec((0u8..8, 0u64..3 * WINDOW_SIZE), 1..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_model(start in prop_oneof![Just(0u64), any::<u64>()], steps in steps()) {
            let mut w = ReplayWindow::default();
            let mut m = Model::default();
            let mut cursor = start;
            let ring = BLOCKS as u64 * BLOCK_BITS;
            for (kind, amount) in steps {
                let c = match kind {
                    0 | 1 => cursor.saturating_add(amount % 4),
                    2 => cursor.saturating_sub(amount % 128),
                    3 => cursor.saturating_sub(WINDOW_SIZE - 4).saturating_sub(amount % 8),
                    4 => cursor.saturating_add(ring - 64).saturating_add(amount % 128),
                    5 => cursor.saturating_sub(amount % (WINDOW_SIZE + 130)),
                    6 => cursor.saturating_add(amount),
                    _ => cursor.saturating_add(amount << 20),
                };
                prop_assert_eq!(w.check(c), m.accepts(c), "check {}", c);
                prop_assert_eq!(w.update(c), m.update(c), "update {}", c);
                prop_assert!(!w.check(c));
                cursor = cursor.max(c);
            }
        }
    }

    /// The design's reordering tolerance in absolute numbers (thousands of
    /// counters), not only relative to `WINDOW_SIZE`: a counter 8 000
    /// below the highest accepted one still passes, once. (Killed the
    /// mutant `WINDOW_SIZE = (BLOCKS - 1) + BLOCK_BITS`, a 191-counter
    /// window every other test accepted.)
    #[test]
    fn thousands_of_counters_of_reordering_are_tolerated() {
        assert_eq!(WINDOW_SIZE, 8128);
        let mut w = ReplayWindow::default();
        assert!(w.update(10_000));
        assert!(w.update(2_000));
        assert!(!w.update(2_000));
        assert!(w.update(10_000 - 8127));
        assert!(!w.check(10_000 - 8128));
    }
}
