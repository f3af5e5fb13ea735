//! Busy polling: how long a poll may spin looking for datagrams before it
//! blocks in the kernel, and what the spinning did.
//!
//! A blocking wait costs a sleep and a wake-up: the scheduler has to notice
//! the datagram, switch the thread in and return from the syscall, tens of
//! microseconds on a VM at low load. Spinning first (as poll-mode drivers
//! such as DPDK's do) takes a datagram that arrives within the budget
//! without any of that, at the price of the core. Each backend decides what
//! one look costs: `uring` reads the completion queue's tail and the ring's
//! task-run flag from shared memory (no syscall); `mmsg` tries a
//! non-blocking `recvmmsg`.
//!
//! The clock is read once per [`CLOCK_EVERY`] looks, not per look: a
//! budget overshoots by at most that many looks.

use std::time::{Duration, Instant};

use super::stats::{BusyPoll, PollStats};

/// Looks between two clock reads.
const CLOCK_EVERY: u32 = 32;

/// One poll's spin budget and what became of it.
#[derive(Debug)]
pub(crate) struct Spin {
    /// How long this poll may spin in all (zero: busy polling off, or a
    /// poll that must not wait at all).
    budget: Duration,
    /// When the first look was made; `None`: no spinning yet.
    start: Option<Instant>,
    /// Looks since the last clock read.
    looks: u32,
    /// The budget ran out: the poll went on to wait in the kernel.
    spent: bool,
    /// Time spun, as of the last clock read.
    time: Duration,
}

impl Spin {
    /// The spin of a poll that may wait `timeout`, with busy polling set
    /// to `busy_poll`: never longer than the poll may wait.
    #[inline]
    pub(crate) fn new(busy_poll: Option<Duration>, timeout: Duration) -> Spin {
        Spin {
            budget: busy_poll.unwrap_or(Duration::ZERO).min(timeout),
            start: None,
            looks: 0,
            spent: false,
            time: Duration::ZERO,
        }
    }

    /// Whether to look once more: `true` (after a CPU spin hint) while the
    /// budget lasts; `false` once it ran out, or when there is none.
    #[inline]
    pub(crate) fn again(&mut self) -> bool {
        if self.spent || self.budget.is_zero() {
            return false;
        }
        let start = *self.start.get_or_insert_with(Instant::now);
        self.looks += 1;
        if self.looks >= CLOCK_EVERY {
            self.looks = 0;
            self.time = start.elapsed();
            if self.time >= self.budget {
                self.spent = true;
                return false;
            }
        }
        std::hint::spin_loop();
        true
    }

    /// A look found something: the time spun so far is what counts (the
    /// poll may spin again from here if what it found was not a datagram).
    #[inline]
    pub(crate) fn found(&mut self) {
        if let (Some(start), false) = (self.start, self.spent) {
            self.time = start.elapsed();
        }
    }

    /// Whether this poll is still within its budget (it spun or may).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        !self.spent && !self.budget.is_zero()
    }

    /// Records in `ps` what the spinning did: served (datagrams arrived
    /// while spinning, no sleep) or missed (the budget ran out, or the poll
    /// returned empty), and for how long. Nothing when it never spun.
    #[inline]
    pub(crate) fn record(&self, ps: &mut PollStats) {
        if self.start.is_none() {
            return;
        }
        ps.busy_poll = if !self.spent && ps.received > 0 {
            BusyPoll::Served
        } else {
            BusyPoll::Missed
        };
        ps.spin_time = self.time;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_budget_never_spins_and_records_nothing() {
        for (busy, timeout) in [
            (None, Duration::from_secs(1)),
            (Some(Duration::from_millis(1)), Duration::ZERO),
        ] {
            let mut s = Spin::new(busy, timeout);
            assert!(!s.active());
            assert!(!s.again());
            let mut ps = PollStats {
                received: 3,
                ..PollStats::default()
            };
            s.record(&mut ps);
            assert_eq!(ps.busy_poll, BusyPoll::NoSpin);
            assert_eq!(ps.spin_time, Duration::ZERO);
        }
    }

    #[test]
    fn a_budget_runs_out_and_the_miss_is_recorded() {
        let budget = Duration::from_micros(200);
        let mut s = Spin::new(Some(budget), Duration::from_secs(1));
        let start = Instant::now();
        let mut looks = 0u64;
        while s.again() {
            looks += 1;
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "the spin does not end"
            );
        }
        assert!(looks > 0);
        assert!(start.elapsed() >= budget);
        assert!(!s.active());
        assert!(!s.again(), "a spent budget stays spent");
        let mut ps = PollStats::default();
        s.record(&mut ps);
        assert_eq!(ps.busy_poll, BusyPoll::Missed);
        assert!(ps.spin_time >= budget);
    }

    #[test]
    fn finding_datagrams_within_the_budget_is_served() {
        let mut s = Spin::new(Some(Duration::from_secs(5)), Duration::from_secs(5));
        for _ in 0..100 {
            assert!(s.again());
        }
        s.found();
        let mut ps = PollStats {
            received: 1,
            ..PollStats::default()
        };
        s.record(&mut ps);
        assert_eq!(ps.busy_poll, BusyPoll::Served);
        assert!(ps.spin_time > Duration::ZERO && ps.spin_time < Duration::from_secs(5));
        // Found only send completions, nothing received: a miss.
        let mut empty = PollStats::default();
        s.record(&mut empty);
        assert_eq!(empty.busy_poll, BusyPoll::Missed);
    }
}
