//! Paired ratios with a confidence interval.
//!
//! When several relays are measured in interleaved slices, round `k` of one
//! and round `k` of another ran within a fraction of a second of each other,
//! so the VM's drift (other tenants, frequency, the host's scheduler) falls
//! on both alike. The ratio of the two within each round cancels that drift;
//! the median of those per-round ratios is the estimate, and a percentile
//! bootstrap of the median gives its 95 % interval. An interval that
//! contains 1.0 means the run did not resolve a difference.
//!
//! The bootstrap uses a fixed-seed generator: the same samples always give
//! the same interval, so a report can be recomputed from its JSON.

use serde::{Deserialize, Serialize};

/// Resamples drawn for each interval. The percentiles of 2000 medians are
/// stable to well under the interval's own width.
pub const RESAMPLES: usize = 2000;

/// A median and its 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Median of the samples.
    pub median: f64,
    /// 2.5th percentile of the bootstrap medians.
    pub low: f64,
    /// 97.5th percentile of the bootstrap medians.
    pub high: f64,
    /// Samples the interval was drawn from.
    pub samples: usize,
}

impl Interval {
    /// The interval of the median of `samples` (non-finite values are left
    /// out); `None` with fewer than 3 finite samples, where a bootstrap
    /// says nothing.
    pub fn of_median(samples: &[f64]) -> Option<Interval> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.len() < 3 {
            return None;
        }
        let median = median_of(&mut v);
        let mut rng = SplitMix64(0x5eed_1a7e_u64 ^ v.len() as u64);
        let mut draw = vec![0.0; v.len()];
        let mut medians: Vec<f64> = (0..RESAMPLES)
            .map(|_| {
                for d in draw.iter_mut() {
                    *d = v[rng.below(v.len())];
                }
                median_of(&mut draw)
            })
            .collect();
        medians.sort_by(f64::total_cmp);
        let at =
            |q: f64| medians[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
        Some(Interval {
            median,
            low: at(0.025),
            high: at(0.975),
            samples: v.len(),
        })
    }

    /// Whether the interval contains `x` (for a ratio: 1.0, no difference
    /// resolved).
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// Half the interval's width relative to its median, in percent: the
    /// smallest difference this run can resolve.
    pub fn half_width_pct(&self) -> f64 {
        if self.median == 0.0 {
            return f64::INFINITY;
        }
        (self.high - self.low) / 2.0 / self.median.abs() * 100.0
    }
}

impl std::fmt::Display for Interval {
    /// `0.973 [0.961, 0.985]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}, {:.3}]", self.median, self.low, self.high)
    }
}

/// Median of `v` (sorts it); `v` must not be empty.
fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// SplitMix64: small, fast, and good enough to pick resample indices.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is below 2^-40 for the
    /// sample counts used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_samples_give_no_interval() {
        assert_eq!(Interval::of_median(&[]), None);
        assert_eq!(Interval::of_median(&[1.0, 2.0]), None);
        assert_eq!(Interval::of_median(&[1.0, f64::NAN, 2.0]), None);
    }

    #[test]
    fn the_interval_brackets_the_median_and_lies_within_the_samples() {
        let s = [0.97, 0.99, 1.02, 0.95, 1.00, 0.98, 1.01, 0.96, 0.99, 1.03];
        let i = Interval::of_median(&s).unwrap();
        assert!((i.median - 0.99).abs() < 1e-12, "{i}");
        assert!(i.low <= i.median && i.median <= i.high, "{i}");
        assert!(i.low >= 0.95 && i.high <= 1.03, "{i}");
        assert!(i.low < i.high, "{i}");
        assert_eq!(i.samples, 10);
        assert!(i.contains(1.0), "these samples straddle 1.0: {i}");
    }

    #[test]
    fn a_clear_difference_is_resolved_and_none_is_not() {
        // Ratios around 0.9 with ±2 % scatter: 1.0 is far outside.
        let slower: Vec<f64> = (0..20)
            .map(|k| 0.9 + 0.002 * f64::from(k % 10) - 0.009)
            .collect();
        let i = Interval::of_median(&slower).unwrap();
        assert!(!i.contains(1.0), "{i}");
        assert!(i.high < 0.92, "{i}");
        // Identical samples: a zero-width interval at the value.
        let same = Interval::of_median(&[1.0; 12]).unwrap();
        assert_eq!((same.low, same.median, same.high), (1.0, 1.0, 1.0));
        assert!(same.contains(1.0));
        assert_eq!(same.half_width_pct(), 0.0);
    }

    #[test]
    fn the_interval_narrows_with_more_samples() {
        // The same spread, four times the rounds: about half the width.
        let pattern = [0.96, 1.04, 0.98, 1.02, 1.0];
        let few: Vec<f64> = pattern.iter().cycle().take(10).copied().collect();
        let many: Vec<f64> = pattern.iter().cycle().take(40).copied().collect();
        let (a, b) = (
            Interval::of_median(&few).unwrap(),
            Interval::of_median(&many).unwrap(),
        );
        assert!(b.high - b.low < a.high - a.low, "{a} vs {b}");
    }

    #[test]
    fn the_same_samples_give_the_same_interval() {
        let s: Vec<f64> = (0..15)
            .map(|k| 1.0 + f64::from(k * 7 % 11) / 100.0)
            .collect();
        assert_eq!(Interval::of_median(&s), Interval::of_median(&s));
    }
}
