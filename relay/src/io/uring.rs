//! The `uring` backend: one multishot `RecvMsg` into a small provided-buffer
//! ring, one `SendMsg` per forward group, one submit per batch.
//!
//! Life of a receive buffer (`bid`):
//! 1. it sits in the provided-buffer ring; the kernel picks it (FIFO) for
//!    the next datagram or GRO run and posts a completion naming it;
//! 2. [`UringIo::poll`] parses it (`RecvMsgOut`: source address, `UDP_GRO`
//!    size, payload), hands each datagram to the callback, and turns the
//!    forwarded ones into groups; each group takes a send slot and a
//!    reference on the buffer;
//! 3. when the last send from it completes (or at once, when nothing was
//!    forwarded), the buffer goes back into the ring.
//!
//! Completions are told apart by `user_data`: [`RECV`], [`CANCEL`], or the
//! index of a send slot. Send slots hold the `msghdr`, `iovec`, destination
//! and `UDP_SEGMENT` control message the kernel reads until the send
//! completes; they live in one boxed slice that is never resized.
//!
//! The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel
//! allows (completions are then produced only while this thread waits in
//! `io_uring_enter`, so receives batch up naturally), else with fewer flags.

use std::mem::ManuallyDrop;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::cmsg::{self, CmsgBuf, CONTROL_LEN};
use super::config::IoConfig;
use super::dispatch::{dispatch_run, remaining, Action};
use super::error::{errno_of, IoError};
use super::group::Group;
use super::limits::MAX_GSO_SEGMENTS;
use super::outbound::Outbound;
use super::region::Region;
use super::sockaddr::{self, RawAddr, NAME_LEN};
use super::stats::IoStats;
use super::stats::PollStats;
use super::tx::Backpressure;

/// `user_data` of the multishot receive.
const RECV: u64 = u64::MAX;
/// `user_data` of cancellations (their completions are ignored).
const CANCEL: u64 = u64::MAX - 1;
/// `user_data` of the multishot receive on the second socket, if any.
const RECV_LINK: u64 = u64::MAX - 2;
/// The provided-buffer group id (one ring per `Io`).
const BGID: u16 = 0;
/// Submission queue entries: sends are pushed in a batch, submitting early
/// only when this fills.
const SQ_ENTRIES: u32 = 256;
/// Bytes in front of the payload in a provided buffer: the kernel's
/// `io_uring_recvmsg_out` header, then the name and control areas sized by
/// the receive `msghdr`.
const RECV_HEADROOM: usize = HEADER + NAME_LEN + CONTROL_LEN;
/// Size of `struct io_uring_recvmsg_out` (four `u32`s).
const HEADER: usize = 16;

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

/// The data of one in-flight `SendMsg`: everything its `msghdr` points at.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: RawAddr,
    cmsg: CmsgBuf,
    group: Group,
}

/// Why a ring could not be built: the error, and the socket back so the
/// caller can fall back to another backend.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: IoError,
    pub(crate) socket: UdpSocket,
    pub(crate) link: Option<UdpSocket>,
}

/// The io_uring backend of one worker.
pub(crate) struct UringIo {
    // Declared first so it is dropped (and the kernel done with our memory)
    // before the buffers; `Drop` also cancels and reaps everything first.
    ring: IoUring,
    socket: UdpSocket,
    fd: RawFd,
    batch: usize,
    /// Receive buffers: `nbufs` × `stride` bytes. Freed by `Drop` only once
    /// the kernel is done with them.
    buffers: ManuallyDrop<Region>,
    stride: usize,
    nbufs: usize,
    /// The provided-buffer ring shared with the kernel (freed like `buffers`).
    ring_mem: ManuallyDrop<Region>,
    ring_mask: u16,
    /// Our tail: entries before it are the kernel's.
    ring_tail: u16,
    /// Buffers in the ring (given to the kernel, not yet completed into).
    in_ring: usize,
    /// Per buffer: sends in flight from it, plus one while it is handled.
    refs: Box<[u32]>,
    /// Buffers handled in this poll (their handling reference is dropped
    /// once their sends are queued).
    handled: Vec<u32>,
    /// The receive `msghdr` template (only its name and control lengths
    /// matter to the kernel).
    recv_hdr: Box<libc::msghdr>,
    armed: bool,
    /// A second socket, received from by a second multishot receive into
    /// the same buffers (a mesh relay's per-worker link port); sends
    /// always leave from `socket`.
    link: Option<UdpSocket>,
    link_armed: bool,
    /// A completion taken from the queue at start-up, handled first.
    pending: Option<cqueue::Entry>,
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    in_flight: usize,
    outbound: Outbound,
    stats: IoStats,
    /// Ring setup flags that the kernel accepted, for the log.
    flags: &'static str,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("fd", &self.fd)
            .field("flags", &self.flags)
            .field("buffers", &self.nbufs)
            .field("stride", &self.stride)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl UringIo {
    /// Sets up the ring, registers the buffer ring and arms the receive.
    pub(crate) fn new(
        socket: UdpSocket,
        link: Option<UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Self, Failed> {
        match Self::build(&socket, link.as_ref(), cfg) {
            Ok(parts) => Ok(parts.finish(socket, link)),
            Err(error) => Err(Failed {
                error,
                socket,
                link,
            }),
        }
    }

    fn build(
        socket: &UdpSocket,
        link: Option<&UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Parts, IoError> {
        super::socket::set_nonblocking(socket)?;
        if let Some(l) = link {
            super::socket::set_nonblocking(l)?;
        }
        let nbufs = cfg.buffers;
        let stride = (cfg.buffer_size + RECV_HEADROOM).next_multiple_of(64);
        let stride_u32 =
            u32::try_from(stride).map_err(|_| IoError::Config("buffer_size too large"))?;
        // Groups from one buffer: at most one per datagram in it.
        let per_buffer = if cfg.gro { MAX_GSO_SEGMENTS } else { 1 };
        let nslots = nbufs * per_buffer;
        let cq_entries = (nslots + nbufs + 64)
            .next_power_of_two()
            .clamp(1024, 65_536) as u32;
        let (ring, flags) = make_ring(cq_entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(IoError::UringFeature {
                feature: "IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }

        let buffers = Region::new(
            stride
                .checked_mul(nbufs)
                .ok_or(IoError::Alloc { bytes: usize::MAX })?,
        )?;
        let entries = nbufs.next_power_of_two();
        let ring_mem = Region::new(entries * std::mem::size_of::<RingEntry>())?;
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = CONTROL_LEN as _;
        let mut parts = Parts {
            ring,
            buffers,
            stride,
            nbufs,
            ring_mem,
            ring_mask: (entries - 1) as u16,
            cfg,
            nslots,
            flags,
            recv_hdr,
            outbound: Outbound::new(cfg.batch + MAX_GSO_SEGMENTS, 64, cfg.gso)?,
            pending: None,
        };
        let mut tail = 0u16;
        for bid in 0..nbufs {
            parts.write_entry(tail, bid as u16, stride_u32);
            tail = tail.wrapping_add(1);
        }
        parts.publish_tail(tail);
        // SAFETY: `ring_mem` is page aligned, holds `entries` entries, and
        // lives in the `UringIo` as long as the ring (dropped after it).
        unsafe {
            parts.ring.submitter().register_buf_ring_with_flags(
                parts.ring_mem.base() as u64,
                entries as u16,
                BGID,
                0,
            )
        }
        .map_err(|source| IoError::UringFeature {
            feature: "provided buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19)",
            source,
        })?;
        parts.probe_receive(socket.as_raw_fd())?;
        if let Some(l) = link {
            // Submitted with the first poll's wait.
            let sqe = opcode::RecvMsgMulti::new(types::Fd(l.as_raw_fd()), &*parts.recv_hdr, BGID)
                .build()
                .user_data(RECV_LINK);
            // SAFETY: as in `probe_receive`.
            unsafe { parts.ring.submission().push(&sqe) }.map_err(|_| IoError::Sys {
                op: "io_uring submission",
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            })?;
        }
        Ok(parts)
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Counters since construction.
    pub(crate) fn stats(&self) -> &IoStats {
        &self.stats
    }

    /// The second socket, if any.
    pub(crate) fn link(&self) -> Option<&UdpSocket> {
        self.link.as_ref()
    }

    /// Pushes the multishot receive.
    fn arm(&mut self) -> Result<(), IoError> {
        let sqe = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.recv_hdr, BGID)
            .build()
            .user_data(RECV);
        self.push(&sqe)?;
        self.armed = true;
        Ok(())
    }

    /// Pushes the multishot receive of the second socket (same buffers,
    /// same template).
    fn arm_link(&mut self) -> Result<(), IoError> {
        let Some(fd) = self.link.as_ref().map(AsRawFd::as_raw_fd) else {
            return Ok(());
        };
        let sqe = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr, BGID)
            .build()
            .user_data(RECV_LINK);
        self.push(&sqe)?;
        self.link_armed = true;
        Ok(())
    }

    /// Pushes one entry, submitting first if the queue is full.
    fn push(&mut self, sqe: &squeue::Entry) -> Result<(), IoError> {
        loop {
            // SAFETY: every pointer in the entries we push (the receive
            // template, send slots, buffers) stays valid until its
            // completion is reaped: see the struct's invariants.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit().map_err(|source| IoError::Sys {
                op: "io_uring_enter",
                source,
            })?;
            self.stats.syscalls += 1;
        }
    }

    /// See [`super::Io::poll`].
    pub(crate) fn poll<F>(
        &mut self,
        timeout: Duration,
        handle: &mut F,
    ) -> Result<PollStats, IoError>
    where
        F: FnMut(SocketAddr, &mut [u8]) -> Action,
    {
        let deadline = Instant::now().checked_add(timeout);
        let mut ps = PollStats::default();
        loop {
            // Re-arm only with a buffer in the ring: armed without one, the
            // receive fails with ENOBUFS at once and this loop would spin
            // until a send completion frees a buffer.
            if !self.armed && self.in_ring > 0 {
                self.arm()?;
            }
            if self.link.is_some() && !self.link_armed && self.in_ring > 0 {
                self.arm_link()?;
            }
            let mut timed_out = false;
            if self.pending.is_none() {
                let ts = types::Timespec::from(remaining(deadline));
                let args = types::SubmitArgs::new().timespec(&ts);
                ps.syscalls += 1;
                match self.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) => match errno_of(&e) {
                        libc::ETIME => timed_out = true,
                        // EBUSY: completions overflowed; reaping makes room.
                        libc::EINTR | libc::EBUSY => {}
                        _ => {
                            return Err(IoError::Sys {
                                op: "io_uring_enter",
                                source: e,
                            })
                        }
                    },
                }
            }
            self.reap(handle, &mut ps);
            // Buffers freed by send completions go back before re-arming.
            self.publish();
            if ps.received > 0 || timed_out || remaining(deadline).is_zero() {
                break;
            }
        }
        self.queue_sends(&mut ps)?;
        self.release_handled();
        self.publish();
        if !self.ring.submission().is_empty() {
            ps.syscalls += 1;
            self.ring.submit().map_err(|source| IoError::Sys {
                op: "io_uring_enter",
                source,
            })?;
        }
        self.outbound.finish_poll(self.fd, &mut self.stats, &mut ps);
        Ok(ps)
    }

    /// Handles completions until the queue is empty or the batch is full.
    fn reap<F>(&mut self, handle: &mut F, ps: &mut PollStats)
    where
        F: FnMut(SocketAddr, &mut [u8]) -> Action,
    {
        while ps.received < self.batch {
            let cqe = match self.pending.take() {
                Some(c) => c,
                None => match self.ring.completion().next() {
                    Some(c) => c,
                    None => break,
                },
            };
            match cqe.user_data() {
                RECV | RECV_LINK => self.on_recv(&cqe, handle, ps),
                CANCEL => {}
                slot if (slot as usize) < self.slots.len() => {
                    self.on_send(slot as u32, cqe.result())
                }
                _ => {}
            }
        }
    }

    /// One completion of the multishot receive.
    fn on_recv<F>(&mut self, cqe: &cqueue::Entry, handle: &mut F, ps: &mut PollStats)
    where
        F: FnMut(SocketAddr, &mut [u8]) -> Action,
    {
        let flags = cqe.flags();
        if !cqueue::more(flags) {
            // The multishot ended (out of buffers, error, cancel): re-armed
            // by the next poll, after buffers went back into the ring.
            if cqe.user_data() == RECV_LINK {
                self.link_armed = false;
            } else {
                self.armed = false;
            }
        }
        let res = cqe.result();
        if res < 0 {
            match -res {
                libc::ENOBUFS => self.stats.recv_no_buffers += 1,
                libc::ECANCELED => {}
                errno => {
                    self.stats.recv_errors += 1;
                    tracing::debug!(errno, "io_uring receive failed");
                }
            }
            return;
        }
        let Some(bid) = cqueue::buffer_select(flags).map(usize::from) else {
            self.stats.recv_errors += 1;
            return;
        };
        if bid >= self.nbufs {
            // Not one of ours; never happens with a well-behaved kernel.
            self.stats.recv_errors += 1;
            return;
        }
        self.in_ring -= 1;
        self.refs[bid] = 1;
        self.handled.push(bid as u32);
        let len = (res as usize).min(self.stride);
        // SAFETY: the kernel filled buffer `bid` and handed it over with this
        // completion; it is not in the ring again until every reference is
        // dropped, and this is the only slice of it.
        let buf = unsafe { self.buffers.slice_mut(bid * self.stride, len) };
        let Ok(out) = types::RecvMsgOut::parse(buf, &self.recv_hdr) else {
            self.stats.recv_errors += 1;
            return;
        };
        if out.is_payload_truncated() {
            self.stats.recv_truncated += 1;
            return;
        }
        let src = sockaddr::decode(out.name_data());
        let segment = cmsg::gro_segment_size(out.control_data());
        let start = out.payload_data().as_ptr() as usize - buf.as_ptr() as usize;
        let end = start + out.payload_data().len();
        let Some(src) = src else {
            self.stats.recv_errors += 1;
            return;
        };
        let run = &mut buf[start..end];
        dispatch_run(
            run,
            bid as u32,
            src,
            segment,
            handle,
            &mut self.outbound.grouper,
            ps,
        );
    }

    /// One send completed (or failed).
    fn on_send(&mut self, slot: u32, res: i32) {
        let g = self.slots[slot as usize].group;
        self.in_flight -= 1;
        if res < 0 {
            let errno = -res;
            // Counted as sent when submitted; take it back.
            self.stats.datagrams_out -= g.count as u64;
            self.stats.bytes_out -= g.len as u64;
            self.stats.send_errors.count(errno);
            if matches!(errno, libc::EIO | libc::EINVAL) && g.is_gso() {
                self.stats.gso_fallbacks += 1;
                tracing::warn!(
                    errno,
                    "the kernel refused a UDP GSO send; sending one datagram per call from now on"
                );
                self.outbound.grouper.disable_gso();
                self.outbound.staging.disable_gso();
                // SAFETY: the group's buffer still holds our reference
                // (dropped just below), so its bytes are intact and not in
                // the ring.
                let out = unsafe {
                    self.outbound.tx.send(
                        self.fd,
                        &[g],
                        false,
                        Backpressure::FORWARD,
                        &mut self.stats,
                    )
                };
                self.stats.send_calls += out.send_calls as u64;
                self.stats.syscalls += out.syscalls as u64;
            } else {
                self.stats.send_dropped += g.count as u64;
            }
        }
        self.free.push(slot);
        self.release(g.buf);
    }

    /// Turns this poll's groups into `SendMsg` submissions.
    fn queue_sends(&mut self, ps: &mut PollStats) -> Result<(), IoError> {
        for k in 0..self.outbound.grouper.groups().len() {
            let g = self.outbound.grouper.groups()[k];
            let Some(slot) = self.free.pop() else {
                // Every slot in flight (more groups than the sizing allows
                // for): send this one synchronously rather than wait.
                // SAFETY: the buffer holds its handling reference until
                // `release_handled`, after this synchronous call.
                let out = unsafe {
                    self.outbound.tx.send(
                        self.fd,
                        &[g],
                        self.outbound.grouper.gso_enabled(),
                        Backpressure::FORWARD,
                        &mut self.stats,
                    )
                };
                self.outbound.account(ps, out);
                continue;
            };
            let s = &mut self.slots[slot as usize];
            s.group = g;
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
            let sqe = opcode::SendMsg::new(types::Fd(self.fd), &s.hdr)
                .build()
                .user_data(u64::from(slot));
            self.push(&sqe)?;
            self.refs[g.buf as usize] += 1;
            self.in_flight += 1;
            ps.send_calls += 1;
            // Counted when handed over, so the counters are current when the
            // poll returns; a failed completion takes them back.
            self.stats.datagrams_out += g.count as u64;
            self.stats.bytes_out += g.len as u64;
        }
        self.outbound.grouper.clear();
        Ok(())
    }

    /// Drops the handling reference of every buffer handled this poll.
    fn release_handled(&mut self) {
        while let Some(bid) = self.handled.pop() {
            self.release(bid);
        }
    }

    /// Drops one reference on buffer `bid`; at zero it goes back to the
    /// kernel (visible after [`UringIo::publish`]).
    fn release(&mut self, bid: u32) {
        let Some(r) = self.refs.get_mut(bid as usize) else {
            return;
        };
        *r -= 1;
        if *r == 0 {
            let stride = self.stride as u32;
            write_entry(
                &self.ring_mem,
                self.buffers.base(),
                self.ring_mask,
                self.ring_tail,
                bid as u16,
                self.stride,
                stride,
            );
            self.ring_tail = self.ring_tail.wrapping_add(1);
            self.in_ring += 1;
        }
    }

    /// Makes returned buffers visible to the kernel.
    fn publish(&self) {
        publish_tail(&self.ring_mem, self.ring_tail);
    }

    /// The send side with what it needs: used by [`super::Io::send_to`]
    /// and [`super::Io::send_gso`].
    pub(crate) fn outbound(&mut self) -> (&mut Outbound, RawFd, &mut IoStats) {
        (&mut self.outbound, self.fd, &mut self.stats)
    }

    /// See [`super::Io::flush`].
    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.outbound.flush(self.fd, &mut self.stats);
        if !self.ring.submission().is_empty() {
            self.stats.syscalls += 1;
            self.ring.submit().map_err(|source| IoError::Sys {
                op: "io_uring_enter",
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // The kernel may still write into buffers (armed receive) or read
        // send slots: cancel and reap before the memory goes.
        if self.armed {
            let sqe = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
            let _ = self.push(&sqe);
        }
        if self.link_armed {
            let sqe = opcode::AsyncCancel::new(RECV_LINK)
                .build()
                .user_data(CANCEL);
            let _ = self.push(&sqe);
        }
        for _ in 0..200 {
            if !self.armed && !self.link_armed && self.in_flight == 0 {
                let _ = self.ring.submitter().unregister_buf_ring(BGID);
                // SAFETY: nothing is armed or in flight and the buffer ring
                // is unregistered: the kernel no longer touches either
                // region. Neither is used after this.
                unsafe {
                    ManuallyDrop::drop(&mut self.buffers);
                    ManuallyDrop::drop(&mut self.ring_mem);
                }
                return;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            while let Some(cqe) = self.ring.completion().next() {
                match cqe.user_data() {
                    RECV if !cqueue::more(cqe.flags()) => self.armed = false,
                    RECV_LINK if !cqueue::more(cqe.flags()) => self.link_armed = false,
                    slot if (slot as usize) < self.slots.len() => self.in_flight -= 1,
                    _ => {}
                }
            }
        }
        tracing::warn!(
            in_flight = self.in_flight,
            armed = self.armed,
            link_armed = self.link_armed,
            "io_uring operations still pending at shutdown; leaking their buffers"
        );
        // Leak (ManuallyDrop) rather than free memory the kernel may still touch.
    }
}

/// The pieces built before the socket is moved in.
struct Parts {
    ring: IoUring,
    buffers: Region,
    stride: usize,
    nbufs: usize,
    ring_mem: Region,
    ring_mask: u16,
    cfg: IoConfig,
    nslots: usize,
    flags: &'static str,
    recv_hdr: Box<libc::msghdr>,
    outbound: Outbound,
    /// A completion seen while probing the receive, to handle first.
    pending: Option<cqueue::Entry>,
}

impl Parts {
    fn write_entry(&mut self, tail: u16, bid: u16, len: u32) {
        write_entry(
            &self.ring_mem,
            self.buffers.base(),
            self.ring_mask,
            tail,
            bid,
            self.stride,
            len,
        );
    }

    fn publish_tail(&self, tail: u16) {
        publish_tail(&self.ring_mem, tail);
    }

    /// Arms the multishot receive and checks the kernel took it: kernels
    /// before 6.0 fail multishot `RecvMsg` with `EINVAL` right away. Any
    /// real completion already there is kept for the first poll.
    fn probe_receive(&mut self, fd: RawFd) -> Result<(), IoError> {
        let sqe = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr, BGID)
            .build()
            .user_data(RECV);
        // SAFETY: the template msghdr is boxed and lives in the backend for
        // the ring's lifetime; the buffers it receives into are registered.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| IoError::Sys {
            op: "io_uring submission",
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })?;
        let ts = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(errno_of(&e), libc::ETIME | libc::EINTR) => {}
            Err(source) => {
                return Err(IoError::Sys {
                    op: "io_uring_enter",
                    source,
                })
            }
        }
        if let Some(cqe) = self.ring.completion().next() {
            let res = cqe.result();
            if res < 0 && !cqueue::more(cqe.flags()) && res != -libc::ENOBUFS {
                return Err(IoError::UringFeature {
                    feature: "multishot RecvMsg with provided buffers (Linux 6.0)",
                    source: std::io::Error::from_raw_os_error(-res),
                });
            }
            self.pending = Some(cqe);
        }
        Ok(())
    }

    fn finish(self, socket: UdpSocket, link: Option<UdpSocket>) -> UringIo {
        let Parts {
            ring,
            buffers,
            stride,
            nbufs,
            ring_mem,
            ring_mask,
            cfg,
            nslots,
            flags,
            recv_hdr,
            outbound,
            pending,
        } = self;
        let slots = (0..nslots)
            .map(|_| SendSlot {
                // SAFETY: as above.
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
            })
            .collect();
        tracing::debug!(
            flags,
            buffers = nbufs,
            stride,
            slots = nslots,
            "io_uring backend ready"
        );
        UringIo {
            fd: socket.as_raw_fd(),
            ring,
            socket,
            batch: cfg.batch,
            buffers: ManuallyDrop::new(buffers),
            stride,
            nbufs,
            ring_mem: ManuallyDrop::new(ring_mem),
            ring_mask,
            ring_tail: nbufs as u16,
            in_ring: nbufs,
            refs: vec![0; nbufs].into_boxed_slice(),
            handled: Vec::with_capacity(nbufs),
            recv_hdr,
            // `build` armed the receive.
            armed: true,
            link_armed: link.is_some(),
            link,
            pending,
            slots,
            free: (0..nslots as u32).rev().collect(),
            in_flight: 0,
            outbound,
            stats: IoStats::default(),
            flags,
        }
    }
}

/// Writes ring entry `tail` to offer buffer `bid`.
fn write_entry(
    ring: &Region,
    buffers: *mut u8,
    mask: u16,
    tail: u16,
    bid: u16,
    stride: usize,
    len: u32,
) {
    let idx = usize::from(tail & mask);
    assert!((idx + 1) * std::mem::size_of::<RingEntry>() <= ring.len());
    let entry = ring.base().cast::<RingEntry>().wrapping_add(idx);
    let addr = buffers.wrapping_add(usize::from(bid) * stride) as u64;
    // SAFETY: `entry` is in bounds (asserted) and aligned (page-aligned base,
    // 16-byte entries). The entry at `tail` is not visible to the kernel
    // until the tail is published past it; writing the three fields leaves
    // `resv` (the tail, in entry 0) alone.
    unsafe {
        std::ptr::addr_of_mut!((*entry).addr).write(addr);
        std::ptr::addr_of_mut!((*entry).len).write(len);
        std::ptr::addr_of_mut!((*entry).bid).write(bid);
    }
}

/// Publishes `tail` to the kernel (release: entries written before it are
/// visible first).
fn publish_tail(ring: &Region, tail: u16) {
    // SAFETY: the tail lies in entry 0, inside the region, 2-byte aligned;
    // the kernel only reads it (with acquire), we are its only writer, and
    // every access from our side goes through this atomic.
    let t = unsafe { &*ring.base().add(TAIL_OFFSET).cast::<AtomicU16>() };
    t.store(tail, Ordering::Release);
}

/// Sets some ring setup flags on a builder.
type SetFlags = fn(&mut io_uring::Builder);

/// Builds the ring with the best flags the kernel accepts.
fn make_ring(cq_entries: u32) -> Result<(IoUring, &'static str), IoError> {
    let attempts: [(&'static str, SetFlags); 3] = [
        ("SINGLE_ISSUER|DEFER_TASKRUN", |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        ("COOP_TASKRUN", |b| {
            b.setup_coop_taskrun();
        }),
        ("none", |_| {}),
    ];
    let mut first_err = None;
    for (name, set) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries);
        set(&mut b);
        match b.build(SQ_ENTRIES) {
            Ok(ring) => {
                if let Some(e) = &first_err {
                    tracing::warn!(
                        flags = name,
                        "io_uring refused SINGLE_ISSUER|DEFER_TASKRUN ({e}); running with fewer flags (slower)"
                    );
                }
                return Ok((ring, name));
            }
            Err(e) => {
                let errno = errno_of(&e);
                // Refusals that no flag combination fixes.
                if matches!(
                    errno,
                    libc::EPERM | libc::ENOSYS | libc::EACCES | libc::ENOMEM
                ) {
                    return Err(unavailable(e));
                }
                first_err.get_or_insert(e);
            }
        }
    }
    Err(unavailable(first_err.unwrap_or_else(|| {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

fn unavailable(source: std::io::Error) -> IoError {
    let hint = match errno_of(&source) {
        libc::EPERM | libc::EACCES => {
            "blocked by a seccomp profile (containers) or the kernel.io_uring_disabled sysctl"
        }
        libc::ENOSYS => "kernel built without io_uring, or a seccomp filter hides it",
        libc::ENOMEM => "locked-memory limit too low (raise RLIMIT_MEMLOCK / LimitMEMLOCK)",
        _ => "kernel too old for the ring setup flags used",
    };
    IoError::UringUnavailable { source, hint }
}
