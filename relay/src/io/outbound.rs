//! The synchronous send side both backends share: the gather that turns
//! forwarded datagrams into GSO sends, the `sendmmsg` sender, and the
//! staging area for `send_to` copies. Each backend owns one and hands it its
//! socket and counters.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::config::Grouping;
use super::error::IoError;
use super::gather::Gather;
use super::staging::Staging;
use super::stats::{IoStats, PollStats};
use super::tx::{SyncTx, TxOutcome};

/// Gather, sender and staging of one backend.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) gather: Gather,
    pub(crate) tx: SyncTx,
    pub(crate) staging: Staging,
}

impl Outbound {
    /// A send side gathering up to `max_datagrams` forwarded datagrams per
    /// batch as `grouping` says, with a `sendmmsg` vector of `tx_capacity`.
    pub(crate) fn new(
        max_datagrams: usize,
        tx_capacity: usize,
        gso: bool,
        grouping: Grouping,
    ) -> Result<Self, IoError> {
        Ok(Outbound {
            gather: Gather::new(max_datagrams, gso, grouping),
            tx: SyncTx::new(tx_capacity),
            staging: Staging::new(gso)?,
        })
    }

    /// Adds a send's outcome to the poll's counters; turns GSO off for good
    /// when the kernel refused it.
    pub(crate) fn account(&mut self, ps: &mut PollStats, out: TxOutcome) {
        ps.send_calls += out.send_calls;
        ps.syscalls += out.syscalls;
        if out.gso_refused {
            self.gather.disable_gso();
            self.staging.disable_gso();
        }
    }

    /// The same for a send made outside `poll`: straight into `stats`.
    pub(crate) fn account_outside_poll(&mut self, stats: &mut IoStats, out: TxOutcome) {
        let mut ps = PollStats::default();
        self.account(&mut ps, out);
        stats.send_calls += ps.send_calls as u64;
        stats.syscalls += ps.syscalls as u64;
    }

    /// Sends what `send_to` staged; returns the outcome for the caller to
    /// account.
    pub(crate) fn flush_staged(&mut self, fd: RawFd, stats: &mut IoStats) -> TxOutcome {
        self.staging.flush(&mut self.tx, fd, stats)
    }

    /// Ends a backend's `poll`: sends what was staged during it, then adds
    /// the poll's counters (and its batch size) to `stats`.
    pub(crate) fn finish_poll(&mut self, fd: RawFd, stats: &mut IoStats, ps: &mut PollStats) {
        let out = self.flush_staged(fd, stats);
        self.account(ps, out);
        stats.add_poll(ps);
    }

    /// See [`super::Io::send_to`].
    pub(crate) fn send_to(
        &mut self,
        fd: RawFd,
        stats: &mut IoStats,
        dst: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), IoError> {
        let out = self.staging.push(dst, bytes, &mut self.tx, fd, stats)?;
        self.account_outside_poll(stats, out);
        Ok(())
    }

    /// See [`super::Io::flush`]: sends what is staged.
    pub(crate) fn flush(&mut self, fd: RawFd, stats: &mut IoStats) {
        let out = self.flush_staged(fd, stats);
        self.account_outside_poll(stats, out);
    }
}
