//! Send slots: the memory of in-flight `SendMsg`s.
//!
//! The kernel reads a `SendMsg`'s `msghdr`, and the `iovec`, destination
//! and `UDP_SEGMENT` control message it points at, until the send
//! completes, so each lives in a slot of one boxed slice that is never
//! resized or moved: a slot's addresses hold from [`SendSlots::prepare`]
//! to [`SendSlots::complete`]. The bytes sent are not here: they stay in
//! the receive buffer they arrived in, held by the buffer ring.

use std::net::SocketAddr;

use crate::io::cmsg::CmsgBuf;
use crate::io::group::Group;
use crate::io::sockaddr::RawAddr;

/// The data of one `SendMsg`: everything its `msghdr` points at.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: RawAddr,
    cmsg: CmsgBuf,
    group: Group,
    busy: bool,
}

/// A fixed set of send slots and the free ones.
pub(crate) struct SendSlots {
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    in_flight: usize,
}

impl std::fmt::Debug for SendSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendSlots")
            .field("slots", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl SendSlots {
    /// `n` free slots.
    pub(crate) fn new(n: usize) -> Self {
        let slots = (0..n)
            .map(|_| SendSlot {
                // SAFETY: all-zero is a valid msghdr (null pointers, zero
                // lengths).
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                name: RawAddr::new(),
                cmsg: CmsgBuf::new(),
                group: Group {
                    dst: SocketAddr::from(([0, 0, 0, 0], 0)),
                    buf: 0,
                    addr: 0,
                    len: 0,
                    segment: 0,
                    count: 0,
                },
                busy: false,
            })
            .collect();
        Self {
            slots,
            free: (0..n as u32).rev().collect(),
            in_flight: 0,
        }
    }

    /// Sends prepared and not yet completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Takes a free slot for group `g` and fills its `msghdr` (with a
    /// `UDP_SEGMENT` control message when the group carries several
    /// datagrams). Returns the slot and the `msghdr` to submit, valid
    /// until [`SendSlots::complete`] of that slot; `None` when every slot
    /// is in flight.
    pub(crate) fn prepare(&mut self, g: &Group) -> Option<(u32, *const libc::msghdr)> {
        let slot = self.free.pop()?;
        let s = &mut self.slots[slot as usize];
        s.group = *g;
        s.busy = true;
        s.iov = libc::iovec {
            iov_base: g.addr as *mut libc::c_void,
            iov_len: g.len,
        };
        s.hdr.msg_namelen = s.name.encode(g.dst);
        s.hdr.msg_name = s.name.as_mut_ptr();
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_flags = 0;
        if g.is_gso() {
            s.hdr.msg_controllen = s.cmsg.encode_segment(g.segment as u16) as _;
            s.hdr.msg_control = s.cmsg.0.as_mut_ptr().cast();
        } else {
            s.hdr.msg_controllen = 0;
            s.hdr.msg_control = std::ptr::null_mut();
        }
        self.in_flight += 1;
        Some((slot, &s.hdr))
    }

    /// The send of `slot` completed: the slot is free again. Returns the
    /// group it sent; `None` (and nothing changes) for a slot that is not
    /// in flight.
    pub(crate) fn complete(&mut self, slot: u32) -> Option<Group> {
        let s = self.slots.get_mut(slot as usize).filter(|s| s.busy)?;
        s.busy = false;
        self.free.push(slot);
        self.in_flight -= 1;
        Some(s.group)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::io::sockaddr;

    fn group(dst: SocketAddr, bytes: &[u8], segment: usize) -> Group {
        Group {
            dst,
            buf: 1,
            addr: bytes.as_ptr() as usize,
            len: bytes.len(),
            segment,
            count: bytes.len().div_ceil(segment),
        }
    }

    // `msg_controllen` is `size_t` on glibc, `socklen_t` on musl.
    #[allow(clippy::unnecessary_cast)]
    #[test]
    fn prepare_points_the_header_into_its_own_slot() {
        let dst: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let bytes = [7u8; 250];
        let mut slots = SendSlots::new(2);
        let g = group(dst, &bytes, 100);
        let (slot, hdr) = slots.prepare(&g).unwrap();
        let s = &slots.slots[slot as usize];
        assert!(std::ptr::eq(hdr, &s.hdr));
        assert!(std::ptr::eq(s.hdr.msg_iov, &s.iov));
        assert_eq!((s.iov.iov_base as usize, s.iov.iov_len), (g.addr, 250));
        let name = s.hdr.msg_name.cast::<u8>().cast_const();
        assert!(std::ptr::eq(name, s.name.bytes().as_ptr()));
        let namelen = s.hdr.msg_namelen as usize;
        assert_eq!(sockaddr::decode(&s.name.bytes()[..namelen]), Some(dst));
        let mut expect = CmsgBuf::new();
        let len = expect.encode_segment(100);
        assert_eq!(s.hdr.msg_controllen as usize, len);
        assert!(std::ptr::eq(
            s.hdr.msg_control.cast::<u8>(),
            s.cmsg.0.as_ptr()
        ));
        assert_eq!(&s.cmsg.0[..len], &expect.0[..len]);

        let single = group(dst, &bytes[..60], 60);
        let (other, _) = slots.prepare(&single).unwrap();
        let s = &slots.slots[other as usize];
        assert_eq!(s.hdr.msg_controllen as usize, 0);
        assert!(s.hdr.msg_control.is_null());
    }

    #[test]
    fn slots_run_out_and_come_back_once() {
        let dst: SocketAddr = "[::1]:9".parse().unwrap();
        let bytes = [0u8; 10];
        let g = group(dst, &bytes, 10);
        let mut slots = SendSlots::new(2);
        let (a, _) = slots.prepare(&g).unwrap();
        let (b, _) = slots.prepare(&g).unwrap();
        assert_ne!(a, b);
        assert!(slots.prepare(&g).is_none());
        assert_eq!(slots.in_flight(), 2);
        assert_eq!(slots.complete(a), Some(g));
        assert_eq!(slots.complete(a), None, "completed twice");
        assert_eq!(slots.complete(99), None, "not a slot");
        assert_eq!(slots.in_flight(), 1);
        assert!(slots.prepare(&g).is_some());
    }

    /// With a kernel: the prepared header is a valid GSO send.
    #[test]
    fn a_prepared_header_sends_a_gso_train() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bytes: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8).collect();
        let mut slots = SendSlots::new(1);
        let (_, hdr) = slots
            .prepare(&group(rx.local_addr().unwrap(), &bytes, 100))
            .unwrap();
        // SAFETY: `hdr` and everything it points at (the slot, `bytes`)
        // live across the call; `tx` is an open UDP socket.
        let n = unsafe { libc::sendmsg(tx.as_raw_fd(), hdr, 0) };
        assert_eq!(n, 250, "{}", std::io::Error::last_os_error());
        let mut buf = [0u8; 300];
        for (i, want) in [100, 100, 50].into_iter().enumerate() {
            let (len, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(len, want);
            assert!(buf[..len].iter().all(|&b| b == i as u8));
        }
    }
}
