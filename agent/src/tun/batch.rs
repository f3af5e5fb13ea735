//! [`PacketBatch`]: a reusable buffer of IP packets.
//!
//! One allocation holds the bytes of every packet back to back and a second
//! one their `(offset, len)` ranges; both are sized once by
//! [`PacketBatch::new`] and reused after [`PacketBatch::clear`], so filling
//! and draining a batch allocates nothing per packet.

use std::fmt;

/// A batch of packets, each at most [`PacketBatch::max_packet_len`] bytes,
/// at most [`PacketBatch::capacity`] of them.
pub struct PacketBatch {
    /// `capacity * max_packet_len` bytes; packets are packed from the front.
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    used: usize,
    /// `(offset, len)` of each packet in `buf`, in arrival order.
    ranges: Vec<(usize, usize)>,
    capacity: usize,
    max_packet_len: usize,
}

/// Returned by [`PacketBatch::push`] when a packet does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The batch already holds [`PacketBatch::capacity`] packets.
    #[error("the packet batch is full; drain it and call clear() before pushing more")]
    Full,
    /// The packet is longer than [`PacketBatch::max_packet_len`].
    #[error("packet of {len} bytes is longer than the batch's {max} byte limit (the MTU)")]
    TooLong {
        /// The packet's length.
        len: usize,
        /// The batch's per-packet limit.
        max: usize,
    },
}

impl PacketBatch {
    /// A batch for `capacity` packets of up to `max_packet_len` bytes each
    /// (at least one packet of one byte).
    pub fn new(capacity: usize, max_packet_len: usize) -> Self {
        let capacity = capacity.max(1);
        let max_packet_len = max_packet_len.max(1);
        Self {
            buf: vec![0; capacity.saturating_mul(max_packet_len)],
            used: 0,
            ranges: Vec::with_capacity(capacity),
            capacity,
            max_packet_len,
        }
    }

    /// A batch with room for nothing (every push fails), which allocates
    /// nothing: a stand-in while the real batch is lent out.
    pub const fn empty() -> Self {
        Self {
            buf: Vec::new(),
            used: 0,
            ranges: Vec::new(),
            capacity: 0,
            max_packet_len: 0,
        }
    }

    /// Forgets every packet, keeping the memory.
    #[inline]
    pub fn clear(&mut self) {
        self.used = 0;
        self.ranges.clear();
    }

    /// Packets held.
    #[inline]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no packet is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether another packet of `max_packet_len` bytes no longer fits.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.ranges.len() >= self.capacity || self.buf.len() - self.used < self.max_packet_len
    }

    /// The most packets the batch holds.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The longest packet the batch holds.
    #[inline]
    pub fn max_packet_len(&self) -> usize {
        self.max_packet_len
    }

    /// The `i`-th packet.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(off, len) = self.ranges.get(i)?;
        self.buf.get(off..off + len)
    }

    /// The packets, in the order they were pushed.
    #[inline]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            buf: &self.buf,
            ranges: self.ranges.iter(),
        }
    }

    /// Appends a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) -> Result<(), PushError> {
        if packet.len() > self.max_packet_len {
            return Err(PushError::TooLong {
                len: packet.len(),
                max: self.max_packet_len,
            });
        }
        let slot = self.spare().ok_or(PushError::Full)?;
        slot[..packet.len()].copy_from_slice(packet);
        self.commit(packet.len());
        Ok(())
    }

    /// The room for the next packet (`max_packet_len` bytes), or `None`
    /// when the batch is full. Fill a prefix and [`commit`](Self::commit) it.
    #[inline]
    pub(crate) fn spare(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let end = self.used + self.max_packet_len;
        self.buf.get_mut(self.used..end)
    }

    /// Records the first `len` bytes of [`spare`](Self::spare) as a packet.
    /// Ignored when the batch is full; `len` is clamped to the slot.
    #[inline]
    pub(crate) fn commit(&mut self, len: usize) {
        if self.is_full() {
            return;
        }
        let len = len.min(self.max_packet_len);
        self.ranges.push((self.used, len));
        self.used += len;
    }
}

impl fmt::Debug for PacketBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketBatch")
            .field("len", &self.len())
            .field("bytes", &self.used)
            .field("capacity", &self.capacity)
            .field("max_packet_len", &self.max_packet_len)
            .finish()
    }
}

impl<'a> IntoIterator for &'a PacketBatch {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a [`PacketBatch`]'s packets.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    buf: &'a [u8],
    ranges: std::slice::Iter<'a, (usize, usize)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];
    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let &(off, len) = self.ranges.next()?;
        self.buf.get(off..off + len)
    }
    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ranges.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_iter_clear_reuse() {
        let mut b = PacketBatch::new(3, 4);
        assert!(b.is_empty());
        b.push(&[1, 2]).unwrap();
        b.push(&[3, 4, 5, 6]).unwrap();
        b.push(&[]).unwrap();
        assert!(b.is_full());
        assert_eq!(b.push(&[7]), Err(PushError::Full));
        let got: Vec<&[u8]> = b.iter().collect();
        assert_eq!(got, vec![&[1, 2][..], &[3, 4, 5, 6][..], &[][..]]);
        assert_eq!(b.get(1), Some(&[3, 4, 5, 6][..]));
        assert_eq!(b.get(3), None);

        let ptr = b.buf.as_ptr();
        b.clear();
        assert!(b.is_empty());
        b.push(&[9]).unwrap();
        assert_eq!(b.iter().next(), Some(&[9][..]));
        assert_eq!(b.buf.as_ptr(), ptr, "clear keeps the allocation");
    }

    #[test]
    fn too_long_is_refused() {
        let mut b = PacketBatch::new(2, 4);
        assert_eq!(b.push(&[0; 5]), Err(PushError::TooLong { len: 5, max: 4 }));
        assert!(b.is_empty());
    }

    #[test]
    fn the_empty_stand_in_holds_nothing() {
        let mut b = PacketBatch::empty();
        assert_eq!(b.push(&[]), Err(PushError::Full));
        assert!(b.push(&[0; 1]).is_err());
        assert!(b.spare().is_none());
        assert!(b.is_empty());
    }

    #[test]
    fn spare_and_commit() {
        let mut b = PacketBatch::new(1, 8);
        let s = b.spare().unwrap();
        assert_eq!(s.len(), 8);
        s[..3].copy_from_slice(b"abc");
        b.commit(3);
        assert!(b.spare().is_none());
        b.commit(1); // ignored: full
        assert_eq!(b.len(), 1);
        assert_eq!(b.get(0), Some(&b"abc"[..]));
    }
}
