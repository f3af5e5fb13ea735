//! Send slots: the memory of in-flight `SendMsg`s.
//!
//! The kernel reads a `SendMsg`'s `msghdr`, and the iovecs, destination
//! and `UDP_SEGMENT` control message it points at, until the send
//! completes, so each lives in a slot of one boxed slice that is never
//! resized or moved: a slot's addresses hold from [`SendSlots::prepare`]
//! to [`SendSlots::complete`]. The bytes sent are not here: they stay in
//! the receive buffers they arrived in. A gathered send points into
//! several; the slot remembers each piece's buffer, `prepare` holds a
//! reference on it for every piece, and [`InFlight::release`] drops them
//! once the send completed.

use std::net::SocketAddr;

use crate::io::cmsg::CmsgBuf;
use crate::io::group::Group;
use crate::io::limits::MAX_GSO_SEGMENTS;
use crate::io::sockaddr::RawAddr;
use crate::io::tx::{iovec, Message, Messages};

/// The data of one `SendMsg`: everything its `msghdr` points at.
struct SendSlot {
    hdr: libc::msghdr,
    iovs: [libc::iovec; MAX_GSO_SEGMENTS],
    /// The receive buffer of each iovec.
    bufs: [u32; MAX_GSO_SEGMENTS],
    name: RawAddr,
    cmsg: CmsgBuf,
    message: Message,
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

/// A send that completed: what it sent, from where. Borrowed from its
/// (now free) slot until the next [`SendSlots::prepare`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight<'a> {
    /// Destination, sizes and piece count.
    pub(crate) message: Message,
    iovs: &'a [libc::iovec],
    bufs: &'a [u32],
}

impl InFlight<'_> {
    /// Drops the reference the send held on each piece's buffer.
    pub(crate) fn release(&self, mut release: impl FnMut(u32)) {
        for &b in self.bufs {
            release(b);
        }
    }

    /// The receive buffers it pointed into, one per piece.
    #[cfg(test)]
    pub(crate) fn bufs(&self) -> &[u32] {
        self.bufs
    }
}

impl Messages for InFlight<'_> {
    fn len(&self) -> usize {
        1
    }

    fn message(&self, _: usize) -> Message {
        self.message
    }

    fn iovecs(&self, _: usize, out: &mut [libc::iovec]) {
        for (o, v) in out.iter_mut().zip(self.iovs) {
            *o = *v;
        }
    }

    fn pieces(&self, _: usize, mut emit: impl FnMut(Group)) {
        let m = self.message;
        for (v, &buf) in self.iovs.iter().zip(self.bufs) {
            emit(Group {
                dst: m.dst,
                buf,
                addr: v.iov_base as usize,
                len: v.iov_len,
                segment: m.segment,
                count: v.iov_len.div_ceil(m.segment.max(1)),
            });
        }
    }
}

impl SendSlots {
    /// `n` free slots.
    pub(crate) fn new(n: usize) -> Self {
        let zero_iov = iovec(0, 0);
        let slots = (0..n)
            .map(|_| SendSlot {
                // SAFETY: all-zero is a valid msghdr (null pointers, zero
                // lengths).
                hdr: unsafe { std::mem::zeroed() },
                iovs: [zero_iov; MAX_GSO_SEGMENTS],
                bufs: [0; MAX_GSO_SEGMENTS],
                name: RawAddr::new(),
                cmsg: CmsgBuf::new(),
                message: Message {
                    dst: SocketAddr::from(([0, 0, 0, 0], 0)),
                    segment: 0,
                    count: 0,
                    len: 0,
                    pieces: 0,
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

    /// Takes a free slot for message `i` of `msgs` and fills its `msghdr`
    /// (an iovec per piece; a `UDP_SEGMENT` control message when it carries
    /// several datagrams), calling `hold` with each piece's buffer. Returns
    /// the slot and the `msghdr` to submit, valid until
    /// [`SendSlots::complete`] of that slot; `None` (nothing held) when
    /// every slot is in flight or the message has more pieces than a slot
    /// holds.
    pub(crate) fn prepare<M: Messages + ?Sized>(
        &mut self,
        msgs: &M,
        i: usize,
        mut hold: impl FnMut(u32),
    ) -> Option<(u32, *const libc::msghdr)> {
        let m = msgs.message(i);
        if m.pieces > MAX_GSO_SEGMENTS {
            return None;
        }
        let slot = self.free.pop()?;
        let s = &mut self.slots[slot as usize];
        s.message = m;
        s.busy = true;
        let mut n = 0;
        msgs.pieces(i, |g| {
            if n < MAX_GSO_SEGMENTS {
                s.iovs[n] = iovec(g.addr, g.len);
                s.bufs[n] = g.buf;
                n += 1;
            }
        });
        s.message.pieces = n;
        for &b in &s.bufs[..n] {
            hold(b);
        }
        s.hdr.msg_namelen = s.name.encode(m.dst);
        s.hdr.msg_name = s.name.as_mut_ptr();
        s.hdr.msg_iov = s.iovs.as_mut_ptr();
        s.hdr.msg_iovlen = n as _;
        s.hdr.msg_flags = 0;
        if m.count > 1 {
            s.hdr.msg_controllen = s.cmsg.encode_segment(m.segment as u16) as _;
            s.hdr.msg_control = s.cmsg.0.as_mut_ptr().cast();
        } else {
            s.hdr.msg_controllen = 0;
            s.hdr.msg_control = std::ptr::null_mut();
        }
        self.in_flight += 1;
        Some((slot, &s.hdr))
    }

    /// The send of `slot` completed: the slot is free again. Returns what
    /// it sent, whose buffers the caller releases; `None` (and nothing
    /// changes) for a slot that is not in flight.
    pub(crate) fn complete(&mut self, slot: u32) -> Option<InFlight<'_>> {
        let s = self.slots.get_mut(slot as usize).filter(|s| s.busy)?;
        s.busy = false;
        self.free.push(slot);
        self.in_flight -= 1;
        let n = s.message.pieces.min(MAX_GSO_SEGMENTS);
        Some(InFlight {
            message: s.message,
            iovs: &s.iovs[..n],
            bufs: &s.bufs[..n],
        })
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
        let (slot, hdr) = slots.prepare(&[g][..], 0, |_| {}).unwrap();
        let s = &slots.slots[slot as usize];
        assert!(std::ptr::eq(hdr, &s.hdr));
        assert!(std::ptr::eq(s.hdr.msg_iov, s.iovs.as_ptr()));
        assert_eq!(s.hdr.msg_iovlen, 1);
        assert_eq!(
            (s.iovs[0].iov_base as usize, s.iovs[0].iov_len),
            (g.addr, 250)
        );
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
        let (other, _) = slots.prepare(&[single][..], 0, |_| {}).unwrap();
        let s = &slots.slots[other as usize];
        assert_eq!(s.hdr.msg_controllen as usize, 0);
        assert!(s.hdr.msg_control.is_null());
    }

    #[test]
    fn slots_run_out_and_come_back_once() {
        let dst: SocketAddr = "[::1]:9".parse().unwrap();
        let bytes = [0u8; 10];
        let g = group(dst, &bytes, 10);
        let g = [g];
        let mut slots = SendSlots::new(2);
        let mut held = Vec::new();
        let (a, _) = slots.prepare(&g[..], 0, |b| held.push(b)).unwrap();
        let (b, _) = slots.prepare(&g[..], 0, |b| held.push(b)).unwrap();
        assert_ne!(a, b);
        assert!(slots.prepare(&g[..], 0, |b| held.push(b)).is_none());
        assert_eq!(held, [1, 1], "nothing held for a send without a slot");
        assert_eq!(slots.in_flight(), 2);
        let done = slots.complete(a).unwrap();
        assert_eq!(
            (done.message.len, done.message.count, done.bufs()),
            (10, 1, &[1][..])
        );
        assert!(slots.complete(a).is_none(), "completed twice");
        assert!(slots.complete(99).is_none(), "not a slot");
        assert_eq!(slots.in_flight(), 1);
        assert!(slots.prepare(&g[..], 0, |_| {}).is_some());
    }

    /// With a kernel: the prepared header is a valid GSO send.
    #[test]
    fn a_prepared_header_sends_a_gso_train() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bytes: Vec<u8> = (0..250u32).map(|i| (i / 100) as u8).collect();
        let mut slots = SendSlots::new(1);
        let (_, hdr) = slots
            .prepare(
                &[group(rx.local_addr().unwrap(), &bytes, 100)][..],
                0,
                |_| {},
            )
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

    /// With a kernel: a gathered send from three places (two buffers, a
    /// gap between) arrives as its datagrams, in order.
    #[test]
    fn a_gathered_header_sends_pieces_from_several_buffers() {
        use crate::io::config::Grouping;
        use crate::io::dispatch::Dest;
        use crate::io::gather::Gather;

        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = rx.local_addr().unwrap();
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // Two "buffers" of four 100-byte datagrams, datagram k filled with k.
        let b0: Vec<u8> = (0..400u32).map(|i| (i / 100) as u8).collect();
        let b1: Vec<u8> = (0..400u32).map(|i| (4 + i / 100) as u8).collect();
        let at = |b: &Vec<u8>, k: usize| b.as_ptr() as usize + k * 100;
        let mut gather = Gather::new(16, true, Grouping::Gather);
        let (to_dst, to_other) = (Dest(0), Dest(1));
        let resolve = |d: Dest| Some([dst, other][d.0 as usize]);
        let mut push = |d, buf, addr, len| assert!(gather.push(d, buf, addr, len, resolve));
        push(to_dst, 0, at(&b0, 0), 100);
        push(to_dst, 0, at(&b0, 1), 100);
        // 2 dropped, 3 elsewhere.
        push(to_other, 0, at(&b0, 3), 100);
        push(to_dst, 1, at(&b1, 0), 100);
        push(to_other, 1, at(&b1, 1), 100);
        push(to_dst, 1, at(&b1, 2), 100);
        push(to_dst, 1, at(&b1, 3), 50);
        assert_eq!(gather.sends().len(), 2);
        let mut slots = SendSlots::new(1);
        let mut held = Vec::new();
        let (slot, hdr) = slots.prepare(&gather, 0, |b| held.push(b)).unwrap();
        assert_eq!(held, [0, 1, 1], "one reference per piece");
        // SAFETY: `hdr` and everything it points at (the slot, `b0`, `b1`)
        // live across the call; `tx` is an open UDP socket.
        let n = unsafe { libc::sendmsg(tx.as_raw_fd(), hdr, 0) };
        assert_eq!(n, 450, "{}", std::io::Error::last_os_error());
        let mut buf = [0u8; 300];
        for (want_fill, want_len) in [(0, 100), (1, 100), (4, 100), (6, 100), (7, 50)] {
            let (len, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(len, want_len);
            assert!(buf[..len].iter().all(|&b| b == want_fill), "{want_fill}");
        }
        let done = slots.complete(slot).unwrap();
        let mut released = Vec::new();
        done.release(|b| released.push(b));
        assert_eq!(released, held);
    }
}
