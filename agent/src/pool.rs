//! Packet buffers, recycled: the packet path allocates nothing per packet
//! once the pool has warmed up.
//!
//! Every buffer is [`BUF_LEN`] bytes long (a whole UDP datagram), so a
//! receive never truncates and a frame can be built in place around an IP
//! packet: [`HEADROOM`] bytes before it for the hop header and the
//! end-to-end record header, [`TAILROOM`] after it for the AEAD tag. The
//! memory comes from the allocator zeroed and untouched, so the pages of a
//! buffer are only backed as far as packets actually reach into it.

use std::cell::RefCell;
use std::rc::Rc;

use proto::wire::{E2E_HEADER_LEN, E2E_TAG_LEN, HEADER_LEN};

/// Length of every buffer: the largest UDP payload.
pub const BUF_LEN: usize = 65_536;
/// Bytes before the IP packet in a frame.
pub const HEADROOM: usize = HEADER_LEN + E2E_HEADER_LEN;
/// Bytes after the IP packet in a frame.
pub const TAILROOM: usize = E2E_TAG_LEN;
/// Buffers kept for reuse at most; more are freed.
pub const MAX_POOLED: usize = 4096;

/// A shared free list of buffers (single-threaded).
#[derive(Debug, Clone, Default)]
pub struct Pool(Rc<RefCell<Vec<Vec<u8>>>>);

impl Pool {
    /// An empty pool. The free list has room for [`MAX_POOLED`] buffers
    /// from the start (a few tens of KiB), so putting a buffer back never
    /// reallocates it on the packet path.
    pub fn new() -> Pool {
        Pool(Rc::new(RefCell::new(Vec::with_capacity(MAX_POOLED))))
    }

    /// A buffer of [`BUF_LEN`] bytes (contents unspecified).
    pub fn get(&self) -> Vec<u8> {
        self.0
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN])
    }

    /// Returns a buffer for reuse.
    pub fn put(&self, buf: Vec<u8>) {
        let mut free = self.0.borrow_mut();
        if buf.len() == BUF_LEN && free.len() < MAX_POOLED {
            free.push(buf);
        }
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.0.borrow().len()
    }
}

/// A packet inside a pooled buffer: `buf[start..end]`.
#[derive(Debug)]
pub struct Packet {
    /// The whole buffer.
    pub buf: Vec<u8>,
    /// First byte of the packet.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

impl Packet {
    /// The packet's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let pool = Pool::new();
        let a = pool.get();
        assert_eq!(a.len(), BUF_LEN);
        let ptr = a.as_ptr();
        pool.put(a);
        assert_eq!(pool.idle(), 1);
        let b = pool.get();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer comes back");
        // A buffer of the wrong size is not kept.
        pool.put(vec![0; 10]);
        assert_eq!(pool.idle(), 0);
        pool.put(b);
        for _ in 0..MAX_POOLED + 10 {
            pool.put(vec![0; BUF_LEN]);
        }
        assert_eq!(pool.idle(), MAX_POOLED);
    }
}
