//! Control messages for UDP GRO and GSO, encoded and decoded as bytes.
//!
//! Only two are needed: `UDP_GRO` on receive (an `int`: the size of every
//! segment of a coalesced run but the last) and `UDP_SEGMENT` on send (a
//! `u16`: the segment size the kernel splits the payload by). Both are read
//! and written here with plain byte operations on a `cmsghdr`-aligned
//! buffer, so no pointer casts are needed; the kernel only ever sees the
//! buffer through a `msghdr`.

use std::mem::{offset_of, size_of};

/// `SOL_UDP` control message carrying the GRO segment size (Linux uapi).
pub(crate) const UDP_GRO: i32 = 104;
/// `SOL_UDP` control message / socket option setting the GSO segment size.
pub(crate) const UDP_SEGMENT: i32 = 103;

/// Size of a `cmsghdr` (`CMSG_ALIGN(sizeof(struct cmsghdr))`).
const HDR: usize = size_of::<libc::cmsghdr>();
/// Width of the `cmsg_len` field as written here.
const LEN_FIELD: usize = size_of::<usize>();

// The byte layout below assumes the 64-bit Linux `cmsghdr`: a length as wide
// as a pointer, then level and type.
const _: () = assert!(HDR == 16);
const _: () = assert!(offset_of!(libc::cmsghdr, cmsg_level) == 8);
const _: () = assert!(offset_of!(libc::cmsghdr, cmsg_type) == 12);

/// `CMSG_ALIGN`: control messages are padded to the alignment of `size_t`.
const fn align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// `CMSG_SPACE`: bytes one control message with `data` payload bytes takes.
pub(crate) const fn space(data: usize) -> usize {
    HDR + align(data)
}

/// `CMSG_LEN`: the value of `cmsg_len` for `data` payload bytes.
const fn cmsg_len(data: usize) -> usize {
    HDR + data
}

/// Bytes of control buffer each receive and send slot carries: room for one
/// `UDP_GRO` or `UDP_SEGMENT` message, with headroom for one more that the
/// kernel might add (e.g. if someone enables timestamps on the socket).
pub(crate) const CONTROL_LEN: usize = 2 * space(size_of::<i32>());

/// A control buffer aligned like a `cmsghdr`, as `msg_control` must be.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmsgBuf(pub(crate) [u8; CONTROL_LEN]);

impl CmsgBuf {
    /// A zeroed buffer.
    pub(crate) const fn new() -> Self {
        Self([0; CONTROL_LEN])
    }

    /// Writes one `SOL_UDP`/`UDP_SEGMENT` message telling the kernel to
    /// split the payload into `segment`-byte datagrams; returns the
    /// `msg_controllen` to use.
    pub(crate) fn encode_segment(&mut self, segment: u16) -> usize {
        let b = &mut self.0;
        b.fill(0);
        b[..LEN_FIELD].copy_from_slice(&cmsg_len(size_of::<u16>()).to_ne_bytes());
        b[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        b[12..16].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
        b[HDR..HDR + 2].copy_from_slice(&segment.to_ne_bytes());
        space(size_of::<u16>())
    }
}

/// Finds the `UDP_GRO` segment size in received control bytes (the first
/// `msg_controllen` bytes of the buffer). `None` when absent: the datagram
/// was not coalesced. Malformed control data ends the search; it never
/// panics.
pub(crate) fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let mut off = 0usize;
    while let Some(hdr) = control.get(off..off.checked_add(HDR)?) {
        let mut len_bytes = [0u8; LEN_FIELD];
        len_bytes.copy_from_slice(&hdr[..LEN_FIELD]);
        let len = usize::from_ne_bytes(len_bytes);
        let level = i32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let kind = i32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        if len < HDR {
            return None;
        }
        let data = control.get(off + HDR..off.checked_add(len)?)?;
        if level == libc::SOL_UDP && kind == UDP_GRO {
            // The kernel writes an int; accept a u16 too, as some stacks do.
            let size = match *data {
                [a, b, c, d, ..] => i32::from_ne_bytes([a, b, c, d]),
                [a, b] => i32::from(u16::from_ne_bytes([a, b])),
                _ => return None,
            };
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        off = off.checked_add(align(len))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a `cmsghdr` + data the way the kernel would.
    fn put(buf: &mut Vec<u8>, level: i32, kind: i32, data: &[u8]) {
        let start = buf.len();
        buf.extend_from_slice(&cmsg_len(data.len()).to_ne_bytes());
        buf.extend_from_slice(&level.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(start + space(data.len()), 0);
    }

    #[test]
    fn space_matches_libc() {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on their argument.
        let (s2, l2, s4) = unsafe { (libc::CMSG_SPACE(2), libc::CMSG_LEN(2), libc::CMSG_SPACE(4)) };
        assert_eq!(space(2), s2 as usize);
        assert_eq!(cmsg_len(2), l2 as usize);
        assert_eq!(space(4), s4 as usize);
    }

    #[test]
    fn segment_encodes_like_the_kernel_expects() {
        let mut buf = CmsgBuf::new();
        let len = buf.encode_segment(1400);
        assert_eq!(len, 24);
        let mut expect = Vec::new();
        put(
            &mut expect,
            libc::SOL_UDP,
            UDP_SEGMENT,
            &1400u16.to_ne_bytes(),
        );
        assert_eq!(&buf.0[..len], &expect[..]);
    }

    #[test]
    fn gro_size_is_found() {
        let mut c = Vec::new();
        put(&mut c, libc::SOL_UDP, UDP_GRO, &1200i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&c), Some(1200));
    }

    #[test]
    fn gro_size_after_another_message() {
        let mut c = Vec::new();
        put(&mut c, libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7u8; 16]);
        put(&mut c, libc::SOL_UDP, UDP_GRO, &64i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&c), Some(64));
    }

    #[test]
    fn absent_or_malformed_gives_none() {
        assert_eq!(gro_segment_size(&[]), None);
        let mut other = Vec::new();
        put(&mut other, libc::SOL_UDP, UDP_SEGMENT, &9u16.to_ne_bytes());
        assert_eq!(gro_segment_size(&other), None);
        // Truncated header, truncated data, lengths that lie.
        let mut c = Vec::new();
        put(&mut c, libc::SOL_UDP, UDP_GRO, &1200i32.to_ne_bytes());
        for cut in 0..c.len() - 4 {
            let _ = gro_segment_size(&c[..cut]);
        }
        assert_eq!(gro_segment_size(&c[..HDR + 2]), None);
        let mut lying = c.clone();
        lying[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(gro_segment_size(&lying), None);
        let mut short = c.clone();
        short[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(gro_segment_size(&short), None);
        let mut zero = Vec::new();
        put(&mut zero, libc::SOL_UDP, UDP_GRO, &0i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&zero), None);
    }

    #[test]
    fn encoded_segment_is_not_mistaken_for_gro() {
        let mut buf = CmsgBuf::new();
        let len = buf.encode_segment(512);
        assert_eq!(gro_segment_size(&buf.0[..len]), None);
    }
}
