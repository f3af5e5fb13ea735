//! The provided-buffer ring: the receive buffers, the ring of entries that
//! offers them to the kernel, and the reference counts that decide when a
//! buffer is offered again.
//!
//! Life of a receive buffer (`bid`):
//! 1. it sits in the ring; the kernel picks it (FIFO) for the next datagram
//!    or GRO run and posts a completion naming it ([`BufRing::take`]: one
//!    reference, held while it is handled);
//! 2. every send from it holds one more ([`BufRing::hold`]);
//! 3. when the last reference goes ([`BufRing::release`]), a new ring entry
//!    offers it again, visible to the kernel after [`BufRing::publish`].
//!
//! No system call here: registering the ring with the kernel is
//! `setup::register_buf_ring`'s job, so all of this is tested without one.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::io::error::IoError;
use crate::io::region::Region;

/// The provided-buffer group id (one ring per `Io`).
pub(crate) const BGID: u16 = 0;

/// One entry of the provided-buffer ring (`struct io_uring_buf`).
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0 this is the ring's tail, written by us, read by the kernel.
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RingEntry>() == 16);
/// Offset of the tail (`resv` of entry 0) in the ring.
const TAIL_OFFSET: usize = 14;

/// Receive buffers and the ring offering them to the kernel.
#[derive(Debug)]
pub(crate) struct BufRing {
    /// `nbufs` × `stride` bytes.
    buffers: Region,
    /// The ring shared with the kernel: a power of two of entries.
    ring: Region,
    stride: usize,
    nbufs: usize,
    entries: u16,
    /// Our tail: entries before it are the kernel's.
    tail: u16,
    /// Buffers in the ring (offered to the kernel, not yet completed into).
    in_ring: usize,
    /// Per buffer: sends in flight from it, plus one while it is handled.
    refs: Box<[u32]>,
    /// Buffers taken in this poll (their handling reference is dropped by
    /// [`BufRing::release_handled`]).
    handled: Vec<u32>,
}

impl BufRing {
    /// `nbufs` buffers of `stride` bytes, all offered in the ring (the
    /// tail already published).
    pub(crate) fn new(nbufs: usize, stride: usize) -> Result<Self, IoError> {
        let entries = nbufs.next_power_of_two();
        let entries = u16::try_from(entries)
            .ok()
            .filter(|_| nbufs > 0)
            .ok_or(IoError::Config(
                "a provided-buffer ring holds 1 to 32768 buffers",
            ))?;
        u32::try_from(stride).map_err(|_| IoError::Config("buffer_size too large"))?;
        let buffers = Region::new(
            stride
                .checked_mul(nbufs)
                .ok_or(IoError::Alloc { bytes: usize::MAX })?,
        )?;
        let ring = Region::new(usize::from(entries) * std::mem::size_of::<RingEntry>())?;
        let mut r = Self {
            buffers,
            ring,
            stride,
            nbufs,
            entries,
            tail: 0,
            in_ring: 0,
            refs: vec![0; nbufs].into_boxed_slice(),
            handled: Vec::with_capacity(nbufs),
        };
        for bid in 0..nbufs {
            r.offer(bid as u16);
        }
        r.publish();
        Ok(r)
    }

    /// The ring's address, for registering it.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.base() as u64
    }

    /// Entries in the ring (a power of two), for registering it.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Bytes per buffer.
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// Buffers in all.
    pub(crate) fn nbufs(&self) -> usize {
        self.nbufs
    }

    /// Buffers the kernel may receive into now.
    pub(crate) fn in_ring(&self) -> usize {
        self.in_ring
    }

    /// The kernel completed a receive into buffer `bid`: it is out of the
    /// ring, held once while it is handled. `None` (and nothing changes)
    /// when `bid` is not one of ours.
    pub(crate) fn take(&mut self, bid: u16) -> Option<usize> {
        let bid = usize::from(bid);
        if bid >= self.nbufs {
            return None;
        }
        self.in_ring -= 1;
        self.refs[bid] = 1;
        self.handled.push(bid as u32);
        Some(bid)
    }

    /// The first `len` bytes (at most a stride) of buffer `bid`.
    ///
    /// # Safety
    ///
    /// The buffer must be one [`BufRing::take`] returned and still
    /// referenced (so not in the ring), and no other slice of it may be
    /// alive.
    pub(crate) unsafe fn buffer_mut(&mut self, bid: usize, len: usize) -> &mut [u8] {
        let len = len.min(self.stride);
        // SAFETY: per this function's contract the kernel does not own the
        // buffer and nothing else refers to it; `slice_mut` checks bounds.
        unsafe { self.buffers.slice_mut(bid * self.stride, len) }
    }

    /// A send from buffer `bid` is in flight.
    pub(crate) fn hold(&mut self, bid: u32) {
        if let Some(r) = self.refs.get_mut(bid as usize) {
            *r += 1;
        }
    }

    /// Drops one reference on buffer `bid`; at zero it is offered again
    /// (visible after [`BufRing::publish`]).
    pub(crate) fn release(&mut self, bid: u32) {
        let Some(r) = self.refs.get_mut(bid as usize) else {
            return;
        };
        *r -= 1;
        if *r == 0 {
            self.offer(bid as u16);
        }
    }

    /// Drops the handling reference of every buffer taken this poll.
    pub(crate) fn release_handled(&mut self) {
        while let Some(bid) = self.handled.pop() {
            self.release(bid);
        }
    }

    /// Makes the buffers offered since the last call visible to the kernel
    /// (release: the entries are written before the tail moves past them).
    pub(crate) fn publish(&self) {
        // SAFETY: the tail lies in entry 0, inside the region, 2-byte
        // aligned; the kernel only reads it (with acquire), we are its only
        // writer, and every access from our side goes through this atomic.
        let t = unsafe { &*self.ring.base().add(TAIL_OFFSET).cast::<AtomicU16>() };
        t.store(self.tail, Ordering::Release);
    }

    /// Writes the entry at the tail to offer buffer `bid`, and moves our
    /// tail past it.
    fn offer(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        assert!((idx + 1) * std::mem::size_of::<RingEntry>() <= self.ring.len());
        let entry = self.ring.base().cast::<RingEntry>().wrapping_add(idx);
        let addr = self
            .buffers
            .base()
            .wrapping_add(usize::from(bid) * self.stride) as u64;
        // SAFETY: `entry` is in bounds (asserted) and aligned (page-aligned
        // base, 16-byte entries). The entry at the tail is not visible to the
        // kernel until the tail is published past it; writing the three
        // fields leaves `resv` (the tail, in entry 0) alone.
        unsafe {
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(self.stride as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_ring += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry `idx` as (buffer offset from the base, len, bid).
    fn entry(r: &BufRing, idx: usize) -> (usize, u32, u16) {
        assert!(idx < usize::from(r.entries));
        let e = r.ring.base().cast::<RingEntry>().wrapping_add(idx);
        // SAFETY: in bounds (asserted), aligned, and no kernel shares this
        // ring (it was never registered).
        let (addr, len, bid) = unsafe {
            (
                std::ptr::addr_of!((*e).addr).read(),
                std::ptr::addr_of!((*e).len).read(),
                std::ptr::addr_of!((*e).bid).read(),
            )
        };
        (addr as usize - r.buffers.base() as usize, len, bid)
    }

    /// The tail as the kernel would read it.
    fn published(r: &BufRing) -> u16 {
        // SAFETY: as in `publish`.
        let t = unsafe { &*r.ring.base().add(TAIL_OFFSET).cast::<AtomicU16>() };
        t.load(Ordering::Acquire)
    }

    #[test]
    fn every_buffer_starts_offered_and_published() {
        let r = BufRing::new(5, 4096).unwrap();
        assert_eq!((r.entries(), r.in_ring(), published(&r)), (8, 5, 5));
        assert_eq!(r.ring_addr() % 4096, 0, "the kernel wants it page aligned");
        for bid in 0..5 {
            assert_eq!(entry(&r, bid), (bid * 4096, 4096, bid as u16));
        }
    }

    #[test]
    fn a_buffer_returns_only_after_its_last_reference() {
        let mut r = BufRing::new(4, 2048).unwrap();
        assert_eq!(r.take(2), Some(2));
        assert_eq!(r.in_ring(), 3);
        r.hold(2);
        r.hold(2);
        r.release_handled();
        r.release(2);
        assert_eq!(r.in_ring(), 3, "one send still reads it");
        r.release(2);
        assert_eq!(r.in_ring(), 4);
        assert_eq!(published(&r), 4, "not visible before publish");
        r.publish();
        assert_eq!(published(&r), 5);
        assert_eq!(entry(&r, 0), (2 * 2048, 2048, 2), "entry 4 & mask");
    }

    #[test]
    fn foreign_buffer_ids_are_refused() {
        let mut r = BufRing::new(3, 2048).unwrap();
        assert_eq!(r.take(3), None);
        assert_eq!(r.take(u16::MAX), None);
        assert_eq!(r.in_ring(), 3);
        r.hold(7);
        r.release(7);
        assert_eq!(r.in_ring(), 3);
    }

    #[test]
    fn the_tail_wraps_around_u16() {
        let mut r = BufRing::new(3, 2048).unwrap();
        for i in 0..70_000u32 {
            let bid = (i % 3) as u16;
            assert_eq!(r.take(bid), Some(usize::from(bid)));
            r.release_handled();
        }
        r.publish();
        let tail = (3 + 70_000u32) as u16;
        assert_eq!(published(&r), tail);
        // The last buffer offered sits just before the tail.
        let last = ((70_000 - 1) % 3) as u16;
        let idx = usize::from(tail.wrapping_sub(1) & 3);
        assert_eq!(entry(&r, idx).2, last);
        assert_eq!(r.in_ring(), 3);
    }

    #[test]
    fn sizes_out_of_range_are_errors() {
        assert!(BufRing::new(0, 2048).is_err());
        assert!(BufRing::new(40_000, 64).is_err());
    }
}
