//! Counters of one worker's I/O, for the metrics endpoint and for tests.

use std::ops::AddAssign;
use std::time::Duration;

/// Buckets of the batch-size histogram: bucket `i` counts polls that
/// received `2^i ..= 2^(i+1) - 1` datagrams; the last also takes larger ones.
pub const BATCH_BUCKETS: usize = 16;

/// What busy polling ([`super::IoConfig::busy_poll`]) did in one poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BusyPoll {
    /// The poll did not spin: busy polling is off, the poll was not
    /// allowed to wait, or datagrams were there at the first look.
    #[default]
    NoSpin,
    /// Datagrams arrived while the poll spun: it never slept.
    Served,
    /// The spin budget ran out with nothing received: the poll then waited
    /// in the kernel (or returned empty at its deadline).
    Missed,
}

/// What one [`super::Io::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Datagrams handed to the callback (GRO segments one by one).
    pub received: usize,
    /// Bytes of those datagrams.
    pub received_bytes: usize,
    /// Datagrams the callback forwarded, now handed to the kernel.
    pub forwarded: usize,
    /// Datagrams the callback forwarded to a destination key it then did
    /// not resolve ([`super::Handler::resolve`]): not sent.
    pub unresolved: usize,
    /// Sends issued for them (a GSO group counts once).
    pub send_calls: usize,
    /// Receive buffers that held a coalesced run of more than one datagram.
    pub gro_runs: usize,
    /// Datagrams that arrived inside such runs.
    pub gro_segments: usize,
    /// System calls made (`io_uring_enter`, `recvmmsg`, `sendmmsg`, `poll`).
    pub syscalls: usize,
    /// What busy polling did.
    pub busy_poll: BusyPoll,
    /// Time spent spinning before datagrams were found or the budget ran
    /// out (zero without busy polling).
    pub spin_time: Duration,
}

/// Send errors, by `errno`. Counted, never fatal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrnoCounts {
    /// `ENOBUFS`: the kernel had no memory for the datagram.
    pub enobufs: u64,
    /// `EAGAIN`: the socket send buffer stayed full.
    pub eagain: u64,
    /// `ECONNREFUSED`: an ICMP port unreachable came back.
    pub econnrefused: u64,
    /// `EIO`/`EINVAL` on a GSO send: the device or kernel refused GSO.
    pub gso_refused: u64,
    /// Anything else.
    pub other: u64,
    /// The last `errno` counted under `other`.
    pub last_other: i32,
}

impl ErrnoCounts {
    /// Counts one failure with `errno`.
    pub(crate) fn count(&mut self, errno: i32) {
        match errno {
            libc::ENOBUFS => self.enobufs += 1,
            libc::EAGAIN => self.eagain += 1,
            libc::ECONNREFUSED => self.econnrefused += 1,
            libc::EIO | libc::EINVAL => self.gso_refused += 1,
            e => {
                self.other += 1;
                self.last_other = e;
            }
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.enobufs + self.eagain + self.econnrefused + self.gso_refused + self.other
    }
}

/// Counters since the [`super::Io`] was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams received (GRO segments one by one).
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams the kernel accepted for sending.
    pub datagrams_out: u64,
    /// Bytes the kernel accepted for sending.
    pub bytes_out: u64,
    /// Sends issued (one per group, GSO or not).
    pub send_calls: u64,
    /// System calls made.
    pub syscalls: u64,
    /// Receive buffers holding a coalesced run of more than one datagram.
    pub gro_runs: u64,
    /// Datagrams that arrived inside such runs.
    pub gro_segments: u64,
    /// Reads longer than the frame they start with that did not split into
    /// frames of equal declared length, handed over whole (the glommio
    /// backend, which cannot see the GRO segment size; always 0 elsewhere).
    pub gro_unsplit: u64,
    /// Polls by datagrams received, in power-of-two buckets.
    pub batch_hist: [u64; BATCH_BUCKETS],
    /// Polls that received nothing.
    pub empty_polls: u64,
    /// Datagrams lost to failed sends.
    pub send_dropped: u64,
    /// Datagrams forwarded to a destination key the handler did not
    /// resolve ([`super::Handler::resolve`]), so not sent: a handler that
    /// only consumes forwarded one, or a relay worker's next hop was
    /// missing from the routes it was judged with (never, by
    /// construction).
    pub unresolved: u64,
    /// Failed sends by `errno`.
    pub send_errors: ErrnoCounts,
    /// Times GSO was refused and groups were resent one datagram per call;
    /// after the first, GSO stays off for this `Io`.
    pub gso_fallbacks: u64,
    /// The receive side ran out of buffers (`ENOBUFS` on the multishot
    /// receive): the handler is too slow for the traffic; frames were dropped
    /// by the kernel.
    pub recv_no_buffers: u64,
    /// Received datagrams cut short by a too-small buffer (dropped).
    pub recv_truncated: u64,
    /// Receive completions that failed otherwise (or had no usable source).
    pub recv_errors: u64,
    /// Busy polling: polls served by spinning (datagrams arrived within
    /// the spin budget, no sleep in the kernel).
    pub busy_poll_served: u64,
    /// Busy polling: polls whose spin budget ran out with nothing
    /// received, which then waited in the kernel.
    pub busy_poll_missed: u64,
    /// Busy polling: nanoseconds spent spinning, in all. The thread's CPU
    /// time includes them (a spinning core is busy); this says how much of
    /// it was spinning rather than work.
    pub busy_poll_time_ns: u64,
}

impl IoStats {
    /// Adds one poll's counts and records its batch size.
    pub(crate) fn add_poll(&mut self, p: &PollStats) {
        *self += p;
        self.record_poll(p.received);
    }

    /// Records one poll's batch size.
    pub(crate) fn record_poll(&mut self, received: usize) {
        if received == 0 {
            self.empty_polls += 1;
        } else {
            let bucket = (usize::BITS - 1 - received.leading_zeros()) as usize;
            self.batch_hist[bucket.min(BATCH_BUCKETS - 1)] += 1;
        }
    }
}

impl AddAssign<&PollStats> for IoStats {
    fn add_assign(&mut self, p: &PollStats) {
        self.datagrams_in += p.received as u64;
        self.bytes_in += p.received_bytes as u64;
        self.send_calls += p.send_calls as u64;
        self.syscalls += p.syscalls as u64;
        self.gro_runs += p.gro_runs as u64;
        self.gro_segments += p.gro_segments as u64;
        self.unresolved += p.unresolved as u64;
        match p.busy_poll {
            BusyPoll::NoSpin => {}
            BusyPoll::Served => self.busy_poll_served += 1,
            BusyPoll::Missed => self.busy_poll_missed += 1,
        }
        self.busy_poll_time_ns += u64::try_from(p.spin_time.as_nanos()).unwrap_or(u64::MAX);
    }
}

impl AddAssign<&ErrnoCounts> for ErrnoCounts {
    /// Adds another set of counts (another worker's); `last_other` becomes
    /// the other's when it counted any.
    fn add_assign(&mut self, o: &ErrnoCounts) {
        self.enobufs += o.enobufs;
        self.eagain += o.eagain;
        self.econnrefused += o.econnrefused;
        self.gso_refused += o.gso_refused;
        self.other += o.other;
        if o.other > 0 {
            self.last_other = o.last_other;
        }
    }
}

impl AddAssign<&IoStats> for IoStats {
    /// Adds another `Io`'s counters (another worker's), field by field.
    fn add_assign(&mut self, o: &IoStats) {
        let IoStats {
            datagrams_in,
            bytes_in,
            datagrams_out,
            bytes_out,
            send_calls,
            syscalls,
            gro_runs,
            gro_segments,
            gro_unsplit,
            batch_hist,
            empty_polls,
            send_dropped,
            unresolved,
            send_errors,
            gso_fallbacks,
            recv_no_buffers,
            recv_truncated,
            recv_errors,
            busy_poll_served,
            busy_poll_missed,
            busy_poll_time_ns,
        } = o;
        self.datagrams_in += datagrams_in;
        self.bytes_in += bytes_in;
        self.datagrams_out += datagrams_out;
        self.bytes_out += bytes_out;
        self.send_calls += send_calls;
        self.syscalls += syscalls;
        self.gro_runs += gro_runs;
        self.gro_segments += gro_segments;
        self.gro_unsplit += gro_unsplit;
        for (mine, theirs) in self.batch_hist.iter_mut().zip(batch_hist) {
            *mine += theirs;
        }
        self.empty_polls += empty_polls;
        self.send_dropped += send_dropped;
        self.unresolved += unresolved;
        self.send_errors += send_errors;
        self.gso_fallbacks += gso_fallbacks;
        self.recv_no_buffers += recv_no_buffers;
        self.recv_truncated += recv_truncated;
        self.recv_errors += recv_errors;
        self.busy_poll_served += busy_poll_served;
        self.busy_poll_missed += busy_poll_missed;
        self.busy_poll_time_ns += busy_poll_time_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        let mut s = IoStats::default();
        for n in [0, 1, 2, 3, 4, 7, 8, 1024, usize::MAX] {
            s.record_poll(n);
        }
        assert_eq!(s.empty_polls, 1);
        assert_eq!(s.batch_hist[0], 1);
        assert_eq!(s.batch_hist[1], 2);
        assert_eq!(s.batch_hist[2], 2);
        assert_eq!(s.batch_hist[3], 1);
        assert_eq!(s.batch_hist[10], 1);
        assert_eq!(s.batch_hist[BATCH_BUCKETS - 1], 1);
    }

    #[test]
    fn polls_add_their_busy_poll_outcome() {
        let mut s = IoStats::default();
        for (outcome, us) in [
            (BusyPoll::NoSpin, 0),
            (BusyPoll::Served, 3),
            (BusyPoll::Missed, 50),
            (BusyPoll::Served, 1),
        ] {
            s += &PollStats {
                busy_poll: outcome,
                spin_time: Duration::from_micros(us),
                ..PollStats::default()
            };
        }
        assert_eq!((s.busy_poll_served, s.busy_poll_missed), (2, 1));
        assert_eq!(s.busy_poll_time_ns, 54_000);
    }

    #[test]
    fn errno_counts_by_kind() {
        let mut e = ErrnoCounts::default();
        e.count(libc::ENOBUFS);
        e.count(libc::EAGAIN);
        e.count(libc::EIO);
        e.count(libc::EPERM);
        assert_eq!((e.enobufs, e.eagain, e.gso_refused, e.other), (1, 1, 1, 1));
        assert_eq!(e.last_other, libc::EPERM);
        assert_eq!(e.total(), 4);
    }

    #[test]
    fn adding_stats_adds_every_field() {
        let mut a = IoStats {
            datagrams_in: 1,
            recv_errors: 2,
            ..IoStats::default()
        };
        a.batch_hist[3] = 4;
        a.send_errors.count(libc::EPERM);
        let mut b = IoStats {
            datagrams_in: 10,
            send_dropped: 5,
            unresolved: 12,
            recv_no_buffers: 6,
            recv_truncated: 7,
            recv_errors: 8,
            busy_poll_served: 9,
            busy_poll_missed: 10,
            busy_poll_time_ns: 11,
            ..IoStats::default()
        };
        b.batch_hist[3] = 40;
        b.send_errors.count(libc::EACCES);
        b.send_errors.count(libc::EAGAIN);
        a += &b;
        assert_eq!(a.datagrams_in, 11);
        assert_eq!(a.unresolved, 12);
        assert_eq!(
            (
                a.send_dropped,
                a.recv_no_buffers,
                a.recv_truncated,
                a.recv_errors
            ),
            (5, 6, 7, 10)
        );
        assert_eq!(a.batch_hist[3], 44);
        assert_eq!(
            (a.busy_poll_served, a.busy_poll_missed, a.busy_poll_time_ns),
            (9, 10, 11)
        );
        assert_eq!((a.send_errors.other, a.send_errors.eagain), (2, 1));
        assert_eq!(a.send_errors.last_other, libc::EACCES);
    }
}
