//! Page-aligned memory shared with the kernel.
//!
//! Receive buffers and the provided-buffer ring are written by the kernel
//! through raw addresses while Rust code works on other parts of the same
//! allocation. A `Vec` or `Box` would be borrowed by those raw addresses;
//! this region is a plain allocation addressed only through its base
//! pointer, and a slice of it is made only for a range the kernel has handed
//! back and not yet been given again.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use super::error::IoError;

/// Page size assumed for alignment: the buffer ring must be page aligned,
/// and page-aligned buffers start on fresh cache lines.
const PAGE: usize = 4096;

/// A zeroed, page-aligned allocation of fixed size.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

impl Region {
    /// Allocates `len` zeroed bytes, page aligned.
    pub(crate) fn new(len: usize) -> Result<Self, IoError> {
        let layout =
            Layout::from_size_align(len.max(1), PAGE).map_err(|_| IoError::Alloc { bytes: len })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or(IoError::Alloc { bytes: len })?;
        Ok(Self { base, layout })
    }

    /// The base address, for the kernel and for address arithmetic.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// A mutable view of `len` bytes at `offset`.
    ///
    /// Panics if the range is outside the region (a bug in the caller's
    /// arithmetic, never data-dependent: offsets come from buffer indices the
    /// backend checked).
    ///
    /// # Safety
    ///
    /// For the lifetime of the slice, nothing else may access the range:
    /// no other slice of it exists and the kernel does not own it (it is not
    /// in the provided-buffer ring, not the target of a pending receive and
    /// not the source of a pending send).
    pub(crate) unsafe fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let end = offset.checked_add(len).expect("region range overflows");
        assert!(
            end <= self.len(),
            "region range {offset}..{end} out of bounds"
        );
        // SAFETY: the range is inside the allocation (checked above), the
        // memory is initialised (allocated zeroed, written only as bytes) and
        // exclusively ours per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_sliceable() {
        let mut r = Region::new(3 * PAGE + 5).unwrap();
        assert_eq!(r.base() as usize % PAGE, 0);
        // SAFETY: no kernel involvement, one slice at a time.
        let s = unsafe { r.slice_mut(PAGE, 10) };
        assert!(s.iter().all(|&b| b == 0));
        s.copy_from_slice(b"0123456789");
        // SAFETY: as above.
        assert_eq!(unsafe { r.slice_mut(PAGE + 2, 3) }, b"234");
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_range_panics() {
        let mut r = Region::new(100).unwrap();
        // SAFETY: the call panics before any slice exists.
        let _ = unsafe { r.slice_mut(90, 20) };
    }
}
