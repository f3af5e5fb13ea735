//! The `send_to` queue: copies of datagrams waiting for the next flush.
//!
//! Control replies and the load generator's sends are few or already
//! batched by the caller, so they are copied into one backend-owned buffer
//! and sent together (equal-size runs to one destination as one GSO send)
//! by a synchronous `sendmmsg`, after which the buffer is free again.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::error::IoError;
use super::group::Grouper;
use super::limits::MAX_UDP_PAYLOAD;
use super::region::Region;
use super::stats::IoStats;
use super::tx::{Backpressure, SyncTx, TxOutcome};

/// Bytes the queue holds before `send_to` flushes it by itself.
const CAPACITY: usize = 256 * 1024;
/// Datagrams the queue holds before `send_to` flushes it by itself.
const MAX_QUEUED: usize = 1024;
/// Group buffer id for staged datagrams (never a receive buffer).
pub(crate) const STAGING_BUF: u32 = u32::MAX;

/// Datagrams copied for sending.
#[derive(Debug)]
pub(crate) struct Staging {
    mem: Region,
    used: usize,
    queued: usize,
    grouper: Grouper,
}

impl Staging {
    /// An empty queue; `gso` as configured.
    pub(crate) fn new(gso: bool) -> Result<Self, IoError> {
        Ok(Self {
            mem: Region::new(CAPACITY)?,
            used: 0,
            queued: 0,
            grouper: Grouper::new(MAX_QUEUED, gso),
        })
    }

    /// Stops grouping (the kernel refused GSO).
    pub(crate) fn disable_gso(&mut self) {
        self.grouper.disable_gso();
    }

    /// Queues a copy of `bytes` for `dst`, flushing through `tx` first when
    /// full. Returns what a flush did, if one happened.
    pub(crate) fn push(
        &mut self,
        dst: SocketAddr,
        bytes: &[u8],
        tx: &mut SyncTx,
        fd: RawFd,
        stats: &mut IoStats,
    ) -> Result<TxOutcome, IoError> {
        if bytes.len() > MAX_UDP_PAYLOAD {
            return Err(IoError::TooLarge {
                len: bytes.len(),
                max: MAX_UDP_PAYLOAD,
            });
        }
        let mut out = TxOutcome::default();
        if self.used + bytes.len() > CAPACITY || self.queued == MAX_QUEUED {
            out = self.flush(tx, fd, stats);
        }
        // SAFETY: staged memory is only read by the kernel inside `flush`,
        // which is synchronous; between flushes it is ours alone.
        let slot = unsafe { self.mem.slice_mut(self.used, bytes.len()) };
        slot.copy_from_slice(bytes);
        let addr = slot.as_ptr() as usize;
        self.grouper.push(dst, STAGING_BUF, addr, bytes.len());
        self.used += bytes.len();
        self.queued += 1;
        Ok(out)
    }

    /// Sends everything queued, now.
    pub(crate) fn flush(&mut self, tx: &mut SyncTx, fd: RawFd, stats: &mut IoStats) -> TxOutcome {
        if self.queued == 0 {
            return TxOutcome::default();
        }
        let gso = self.grouper.gso_enabled();
        // SAFETY: every group points into `self.mem`, written before and not
        // touched again until this synchronous call returns.
        let out = unsafe {
            tx.send(
                fd,
                self.grouper.groups(),
                gso,
                Backpressure::BLOCKING,
                stats,
            )
        };
        if out.gso_refused {
            self.grouper.disable_gso();
        }
        self.grouper.clear();
        self.used = 0;
        self.queued = 0;
        out
    }
}
