//! The `uring` backend: one multishot `RecvMsg` into a small provided-buffer
//! ring, one `SendMsg` per forward group, one submit per batch.
//!
//! Its seams, one file each: `token` (what a completion's `user_data`
//! names), `buf_ring` (the receive buffers and when they go back to the
//! kernel), `slots` (the memory of in-flight sends), `setup` (building the
//! ring, probing what the kernel supports). This file drives them:
//! [`UringIo::poll`] waits, takes each receive completion's buffer, parses
//! it (`RecvMsgOut`: source address, `UDP_GRO` size, payload), hands each
//! datagram to the callback, turns the forwarded ones into groups, and
//! submits one `SendMsg` per group from a send slot, holding a reference on
//! the buffer until the send completes.
//!
//! The memory invariant: the receive buffers, the buffer ring, the receive
//! `msghdr` template and the send slots are read or written by the kernel
//! while a receive is armed or a send is in flight. They are freed only
//! once `Drop` has seen every such operation complete (and unregistered the
//! buffer ring); if the kernel does not finish in time, all four are leaked
//! rather than freed under it. Hence `ManuallyDrop` on each.

mod buf_ring;
mod setup;
mod slots;
mod token;

use std::mem::ManuallyDrop;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use self::buf_ring::{BufRing, BGID};
use self::setup::Sizes;
use self::slots::SendSlots;
use self::token::Token;
use super::cmsg;
use super::config::IoConfig;
use super::dispatch::{dispatch_run, remaining, Handler};
use super::error::{errno_of, IoError};
use super::limits::MAX_GSO_SEGMENTS;
use super::outbound::Outbound;
use super::sockaddr;
use super::spin::Spin;
use super::stats::{IoStats, PollStats};
use super::tx::{Backpressure, One};

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
    // before anything else; `Drop` also cancels and reaps everything first.
    ring: IoUring,
    socket: UdpSocket,
    fd: RawFd,
    batch: usize,
    /// Spin this long looking for completions before waiting in the kernel.
    pub(super) busy_poll: Option<Duration>,
    /// Receive buffers and the ring offering them (kernel memory: see the
    /// module's invariant).
    bufs: ManuallyDrop<BufRing>,
    /// The receive `msghdr` template every armed receive points at (kernel
    /// memory).
    recv_hdr: ManuallyDrop<Box<libc::msghdr>>,
    /// The memory of in-flight sends (kernel memory).
    slots: ManuallyDrop<SendSlots>,
    armed: bool,
    /// A second socket, received from by a second multishot receive into
    /// the same buffers (a mesh relay's per-worker link port); sends
    /// always leave from `socket`.
    link: Option<UdpSocket>,
    link_armed: bool,
    /// A completion taken from the queue at start-up, handled first.
    pending: Option<cqueue::Entry>,
    outbound: Outbound,
    stats: IoStats,
    /// Ring setup flags that the kernel accepted, for the log.
    flags: &'static str,
    /// Tests: every send waits this long in the kernel before it starts (a
    /// linked timeout), so its completion comes late.
    #[cfg(test)]
    send_delay: Option<types::Timespec>,
    /// Tests: the ring refuses every send submission, as when
    /// `io_uring_enter` fails while making room for one.
    #[cfg(test)]
    refuse_sends: bool,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("fd", &self.fd)
            .field("flags", &self.flags)
            .field("buffers", &self.bufs.nbufs())
            .field("stride", &self.bufs.stride())
            .field("in_flight", &self.slots.in_flight())
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
        let sizes = Sizes::new(&cfg);
        let (ring, flags) = setup::make_ring(sizes.cq_entries)?;
        setup::require_ext_arg(&ring)?;
        let mut parts = Parts {
            ring,
            bufs: BufRing::new(cfg.buffers, sizes.stride)?,
            recv_hdr: setup::recv_template(),
            slots: SendSlots::new(sizes.slots),
            sizes,
            batch: cfg.batch,
            busy_poll: cfg.busy_poll,
            flags,
            outbound: Outbound::new(cfg.batch + MAX_GSO_SEGMENTS, 64, cfg.gso, cfg.grouping)?,
            pending: None,
        };
        // SAFETY: the buffer ring moves into the `UringIo` with the ring and
        // is freed only after it is unregistered (see `Drop`).
        unsafe { setup::register_buf_ring(&parts.ring, &parts.bufs) }?;
        // SAFETY: the template is boxed and moves into the `UringIo`, freed
        // only once no receive is armed (see `Drop`).
        parts.pending =
            unsafe { setup::probe_receive(&mut parts.ring, socket.as_raw_fd(), &*parts.recv_hdr) }?;
        if let Some(l) = link {
            // Submitted with the first poll's wait.
            let sqe = setup::recv_multi(l.as_raw_fd(), &*parts.recv_hdr, Token::RecvLink);
            // SAFETY: as for the probe.
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
        let sqe = setup::recv_multi(self.fd, &**self.recv_hdr, Token::Recv);
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
        let sqe = setup::recv_multi(fd, &**self.recv_hdr, Token::RecvLink);
        self.push(&sqe)?;
        self.link_armed = true;
        Ok(())
    }

    /// Pushes one entry, submitting first if the queue is full.
    fn push(&mut self, sqe: &squeue::Entry) -> Result<(), IoError> {
        loop {
            // SAFETY: every pointer in the entries we push (the receive
            // template, send slots, buffers) stays valid until its
            // completion is reaped: see the module's memory invariant.
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
        F: Handler,
    {
        // Empty unless the last poll failed part-way (`?` below): what it
        // gathered is dropped, never sent now nor joined by this poll's
        // datagrams, whose destination keys are the handler's for this
        // poll only (`Dest`).
        self.outbound.gather.clear();
        let deadline = Instant::now().checked_add(timeout);
        let mut ps = PollStats::default();
        let mut spin = Spin::new(self.busy_poll, timeout);
        loop {
            // Re-arm only with a buffer in the ring: armed without one, the
            // receive fails with ENOBUFS at once and this loop would spin
            // until a send completion frees a buffer.
            if !self.armed && self.bufs.in_ring() > 0 {
                self.arm()?;
            }
            if self.link.is_some() && !self.link_armed && self.bufs.in_ring() > 0 {
                self.arm_link()?;
            }
            let mut timed_out = false;
            if self.pending.is_none() && spin.active() && self.spin(&mut spin, &mut ps)? {
                // Completions are queued, or deferred work that makes
                // them is: taken below without waiting.
            } else if self.pending.is_none() {
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
            self.bufs.publish();
            if ps.received > 0 || timed_out || remaining(deadline).is_zero() {
                break;
            }
        }
        spin.record(&mut ps);
        if let Err(e) = self.queue_sends(&mut ps) {
            // What this poll received and handed over still counts.
            self.stats.add_poll(&ps);
            return Err(e);
        }
        self.bufs.release_handled();
        self.bufs.publish();
        if self.submit_queued()? {
            ps.syscalls += 1;
        }
        self.outbound.finish_poll(self.fd, &mut self.stats, &mut ps);
        Ok(ps)
    }

    /// Busy polling: looks for completions without entering the kernel
    /// while `spin` lasts. `true` once there is something to reap: entries
    /// in the completion queue, or deferred task work (receive completions
    /// the kernel produces only inside `io_uring_enter` on a
    /// `DEFER_TASKRUN` ring), which the ring flags with `IORING_SQ_TASKRUN`
    /// (set up with `TASKRUN_FLAG`) and which one non-waiting enter then
    /// runs. `false`: the budget ran out; the caller waits in the kernel.
    ///
    /// A look is two loads from the rings' shared memory; the only
    /// syscalls are a submit of what is queued first (a re-arm: without it
    /// there is nothing to wait for) and the enter that runs found work.
    fn spin(&mut self, spin: &mut Spin, ps: &mut PollStats) -> Result<bool, IoError> {
        if self.submit_queued()? {
            ps.syscalls += 1;
        }
        loop {
            let work = {
                let sq = self.ring.submission();
                sq.taskrun() || sq.cq_overflow()
            };
            if work {
                spin.found();
                // Not waiting: with the task-run (or overflow) flag up,
                // the submit enters with GETEVENTS and runs the deferred
                // work, which posts its completions.
                ps.syscalls += 1;
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(e) if matches!(errno_of(&e), libc::EINTR | libc::EBUSY) => {}
                    Err(source) => {
                        return Err(IoError::Sys {
                            op: "io_uring_enter",
                            source,
                        })
                    }
                }
                return Ok(true);
            }
            if !self.ring.completion().is_empty() {
                spin.found();
                return Ok(true);
            }
            if !spin.again() {
                return Ok(false);
            }
        }
    }

    /// Handles completions until the queue is empty or the batch is full.
    fn reap<F>(&mut self, handle: &mut F, ps: &mut PollStats)
    where
        F: Handler,
    {
        while ps.received < self.batch {
            let cqe = match self.pending.take() {
                Some(c) => c,
                None => match self.ring.completion().next() {
                    Some(c) => c,
                    None => break,
                },
            };
            match Token::decode(cqe.user_data()) {
                Some(t @ (Token::Recv | Token::RecvLink)) => self.on_recv(t, &cqe, handle, ps),
                Some(Token::Send(slot)) => self.on_send(slot, cqe.result()),
                Some(Token::Cancel) | None => {}
            }
        }
    }

    /// One completion of the multishot receive.
    fn on_recv<F>(&mut self, token: Token, cqe: &cqueue::Entry, handle: &mut F, ps: &mut PollStats)
    where
        F: Handler,
    {
        let flags = cqe.flags();
        if !cqueue::more(flags) {
            // The multishot ended (out of buffers, error, cancel): re-armed
            // by the next poll, after buffers went back into the ring.
            if token == Token::RecvLink {
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
        let Some(bid) = cqueue::buffer_select(flags).and_then(|b| self.bufs.take(b)) else {
            // No buffer, or not one of ours (never, with a well-behaved
            // kernel).
            self.stats.recv_errors += 1;
            return;
        };
        // SAFETY: the kernel filled buffer `bid` and handed it over with this
        // completion; `take` holds it out of the ring until every reference
        // is dropped, and this is the only slice of it.
        let buf = unsafe { self.bufs.buffer_mut(bid, res as usize) };
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
            &mut self.outbound.gather,
            ps,
        );
    }

    /// One send completed (or failed): its buffers lose a reference each.
    fn on_send(&mut self, slot: u32, res: i32) {
        let Some(sent) = self.slots.complete(slot) else {
            return;
        };
        let m = sent.message;
        if res < 0 {
            let errno = -res;
            // Counted as sent when submitted; take it back.
            self.stats.datagrams_out -= m.count as u64;
            self.stats.bytes_out -= m.len as u64;
            self.stats.send_errors.count(errno);
            if matches!(errno, libc::EIO | libc::EINVAL) && m.count > 1 {
                self.stats.gso_fallbacks += 1;
                tracing::warn!(
                    errno,
                    "the kernel refused a UDP GSO send; sending one datagram per call from now on"
                );
                self.outbound.gather.disable_gso();
                self.outbound.staging.disable_gso();
                // SAFETY: the send's buffers still hold its references
                // (dropped just below), so their bytes are intact and not in
                // the ring.
                let out = unsafe {
                    self.outbound.tx.send(
                        self.fd,
                        &sent,
                        false,
                        Backpressure::FORWARD,
                        &mut self.stats,
                    )
                };
                self.stats.send_calls += out.send_calls as u64;
                self.stats.syscalls += out.syscalls as u64;
            } else {
                self.stats.send_dropped += m.count as u64;
            }
        }
        sent.release(|b| self.bufs.release(b));
    }

    /// Turns this poll's gathered sends into `SendMsg` submissions, each
    /// holding a reference on every buffer it points into.
    fn queue_sends(&mut self, ps: &mut PollStats) -> Result<(), IoError> {
        for k in 0..self.outbound.gather.sends().len() {
            let (count, len) = {
                let s = &self.outbound.gather.sends()[k];
                (s.count, s.len)
            };
            let bufs = &mut self.bufs;
            let Some((slot, hdr)) = self
                .slots
                .prepare(&self.outbound.gather, k, |b| bufs.hold(b))
            else {
                // Every slot in flight (more sends than the sizing allows
                // for): send this one synchronously rather than wait.
                // SAFETY: its buffers hold their handling references until
                // `release_handled`, after this synchronous call.
                let out = unsafe {
                    self.outbound.tx.send(
                        self.fd,
                        &One(&self.outbound.gather, k),
                        self.outbound.gather.gso_enabled(),
                        Backpressure::FORWARD,
                        &mut self.stats,
                    )
                };
                self.outbound.account(ps, out);
                continue;
            };
            #[cfg(test)]
            if let Some(delay) = &self.send_delay {
                let wait = opcode::Timeout::new(delay)
                    .flags(types::TimeoutFlags::ETIME_SUCCESS)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(Token::Cancel.encode());
                self.push(&wait)?;
            }
            let sqe = opcode::SendMsg::new(types::Fd(self.fd), hdr)
                .build()
                .user_data(Token::Send(slot).encode());
            if let Err(e) = self.push_send(&sqe) {
                // Never handed to the kernel: the slot and the references
                // it took on its buffers go back now (no completion will
                // come for it), and this send and the ones not queued yet
                // are counted as dropped, not lost silently.
                let bufs = &mut self.bufs;
                if let Some(unsent) = self.slots.complete(slot) {
                    unsent.release(|b| bufs.release(b));
                }
                let unsent: usize = self.outbound.gather.sends()[k..]
                    .iter()
                    .map(|s| s.count)
                    .sum();
                self.stats.send_dropped += unsent as u64;
                self.outbound.gather.clear();
                return Err(e);
            }
            ps.send_calls += 1;
            // Counted when handed over, so the counters are current when the
            // poll returns; a failed completion takes them back.
            self.stats.datagrams_out += count as u64;
            self.stats.bytes_out += len as u64;
        }
        self.outbound.gather.clear();
        Ok(())
    }

    /// Queues a send submission ([`UringIo::push`]; tests may make it
    /// fail).
    fn push_send(&mut self, sqe: &squeue::Entry) -> Result<(), IoError> {
        #[cfg(test)]
        if self.refuse_sends {
            return Err(IoError::Sys {
                op: "io_uring_enter",
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        self.push(sqe)
    }

    /// The send side with what it needs: used by [`super::Io::send_to`]
    /// (the load generator's trains go through [`super::train`]).
    pub(crate) fn outbound(&mut self) -> (&mut Outbound, RawFd, &mut IoStats) {
        (&mut self.outbound, self.fd, &mut self.stats)
    }

    /// See [`super::Io::flush`].
    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.outbound.flush(self.fd, &mut self.stats);
        if self.submit_queued()? {
            self.stats.syscalls += 1;
        }
        Ok(())
    }

    /// Submits what the submission queue holds, if anything, without
    /// waiting; `true` when that took a syscall (the caller counts it where
    /// it counts its syscalls).
    fn submit_queued(&mut self) -> Result<bool, IoError> {
        if self.ring.submission().is_empty() {
            return Ok(false);
        }
        self.ring.submit().map_err(|source| IoError::Sys {
            op: "io_uring_enter",
            source,
        })?;
        Ok(true)
    }
}

impl UringIo {
    /// Notes what a completion seen while shutting down ended: a receive
    /// that will not fire again, or a send (its slot is free).
    fn on_shutdown_completion(&mut self, cqe: &cqueue::Entry) {
        let ended = !cqueue::more(cqe.flags());
        match Token::decode(cqe.user_data()) {
            Some(Token::Recv) if ended => self.armed = false,
            Some(Token::RecvLink) if ended => self.link_armed = false,
            Some(Token::Send(slot)) => {
                self.slots.complete(slot);
            }
            _ => {}
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // The kernel may still write into buffers (armed receive) or read
        // the receive template and send slots: cancel and reap before the
        // memory goes (the module's memory invariant).
        if let Some(cqe) = self.pending.take() {
            self.on_shutdown_completion(&cqe);
        }
        for (armed, token) in [
            (self.armed, Token::Recv),
            (self.link_armed, Token::RecvLink),
        ] {
            if armed {
                let sqe = opcode::AsyncCancel::new(token.encode())
                    .build()
                    .user_data(Token::Cancel.encode());
                let _ = self.push(&sqe);
            }
        }
        for _ in 0..200 {
            if !self.armed && !self.link_armed && self.slots.in_flight() == 0 {
                let _ = self.ring.submitter().unregister_buf_ring(BGID);
                // SAFETY: nothing is armed or in flight and the buffer ring
                // is unregistered: the kernel no longer touches the buffers,
                // the ring, the template or the slots. None is used after
                // this.
                unsafe {
                    ManuallyDrop::drop(&mut self.bufs);
                    ManuallyDrop::drop(&mut self.recv_hdr);
                    ManuallyDrop::drop(&mut self.slots);
                }
                return;
            }
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                self.on_shutdown_completion(&cqe);
            }
        }
        tracing::warn!(
            in_flight = self.slots.in_flight(),
            armed = self.armed,
            link_armed = self.link_armed,
            "io_uring operations still pending at shutdown; leaking their memory"
        );
        // Leaked: the buffers, the buffer ring, the receive template and the
        // send slots stay allocated (ManuallyDrop, never dropped), since the
        // kernel may still read or write them.
    }
}

/// The pieces built before the socket is moved in.
struct Parts {
    ring: IoUring,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: SendSlots,
    sizes: Sizes,
    batch: usize,
    busy_poll: Option<Duration>,
    flags: &'static str,
    outbound: Outbound,
    /// A completion seen while probing the receive, to handle first.
    pending: Option<cqueue::Entry>,
}

impl Parts {
    fn finish(self, socket: UdpSocket, link: Option<UdpSocket>) -> UringIo {
        let Parts {
            ring,
            bufs,
            recv_hdr,
            slots,
            sizes,
            batch,
            busy_poll,
            flags,
            outbound,
            pending,
        } = self;
        tracing::debug!(
            flags,
            buffers = bufs.nbufs(),
            stride = sizes.stride,
            slots = sizes.slots,
            "io_uring backend ready"
        );
        UringIo {
            fd: socket.as_raw_fd(),
            ring,
            socket,
            batch,
            busy_poll,
            bufs: ManuallyDrop::new(bufs),
            recv_hdr: ManuallyDrop::new(recv_hdr),
            slots: ManuallyDrop::new(slots),
            // `build` armed the receive.
            armed: true,
            link_armed: link.is_some(),
            link,
            pending,
            outbound,
            stats: IoStats::default(),
            flags,
            #[cfg(test)]
            send_delay: None,
            #[cfg(test)]
            refuse_sends: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::io::train::TrainSender;
    use crate::io::{bind_socket, Action, Dest, Dests};
    use std::net::SocketAddr;

    /// Datagrams per train, their size, trains.
    const SEG: usize = 300;
    const PER_TRAIN: usize = 16;
    const TRAINS: usize = 40;

    fn fill(d: &mut [u8], to: u8, seq: u32, drop: bool) {
        d[0] = u8::from(drop);
        d[1] = to;
        d[2..6].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in d.iter_mut().enumerate().skip(6) {
            *b = (seq as usize * 7 + i) as u8 ^ to;
        }
    }

    /// The backend on `sock`; `None` (the test is skipped, and says so)
    /// only where io_uring cannot start and `ZTNA_SKIP_URING=1` allows it.
    fn uring_or_skip(sock: UdpSocket, cfg: IoConfig) -> Option<UringIo> {
        match UringIo::new(sock, None, cfg) {
            Ok(io) => Some(io),
            Err(f) if std::env::var("ZTNA_SKIP_URING").as_deref() == Ok("1") => {
                eprintln!("skipping: {}", f.error);
                None
            }
            Err(f) => panic!(
                "io_uring cannot start here: {} (ZTNA_SKIP_URING=1 skips)",
                f.error
            ),
        }
    }

    /// Every send completes 20 ms late (a linked timeout in front of it)
    /// while the sender keeps the socket full and the ring has two buffers:
    /// a buffer given back while a gathered send still points into it
    /// would be received into again before that send reads it, and the
    /// receivers would see other datagrams' bytes.
    #[test]
    fn buffers_wait_for_every_slow_send_that_points_into_them() {
        let cfg = IoConfig {
            buffers: 2,
            batch: 64,
            ..IoConfig::default()
        };
        let sock = bind_socket("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
        let fwd_addr = sock.local_addr().unwrap();
        let Some(mut io) = uring_or_skip(sock, cfg) else {
            return;
        };
        io.send_delay = Some(types::Timespec::from(Duration::from_millis(20)));
        let rxs: Vec<UdpSocket> = (0..2)
            .map(|_| {
                // Socket buffers deep enough for everything, no GRO.
                let plain = IoConfig {
                    gro: false,
                    ..IoConfig::default()
                };
                let r = bind_socket("127.0.0.1:0".parse().unwrap(), &plain).unwrap();
                r.set_nonblocking(false).unwrap();
                r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                r
            })
            .collect();
        let dsts: Vec<SocketAddr> = rxs.iter().map(|r| r.local_addr().unwrap()).collect();

        // Two destinations interleaved, every fifth datagram dropped.
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut trains = TrainSender::new(true);
        let mut expect: Vec<Vec<u32>> = vec![Vec::new(); 2];
        let mut seq = 0u32;
        let mut buf = vec![0u8; SEG * PER_TRAIN];
        for _ in 0..TRAINS {
            for (k, d) in buf.chunks_mut(SEG).enumerate() {
                let to = (seq % 2) as u8;
                let drop = k % 5 == 4;
                fill(d, to, seq, drop);
                if !drop {
                    expect[usize::from(to)].push(seq);
                }
                seq += 1;
            }
            assert_eq!(
                trains.send(&tx, fwd_addr, &buf, SEG).unwrap().sent,
                PER_TRAIN
            );
        }

        let total = (TRAINS * PER_TRAIN) as u64;
        let mut handler = Dests::new(&dsts[..], |_: SocketAddr, d: &mut [u8]| match d.first() {
            Some(0) => Action::Forward(Dest(u32::from(d[1] & 1))),
            _ => Action::Consume,
        });
        let mut turns = 0;
        while (io.stats().datagrams_in < total || io.slots.in_flight() > 0) && turns < 2000 {
            io.poll(Duration::from_millis(5), &mut handler).unwrap();
            turns += 1;
        }
        assert_eq!(io.stats().datagrams_in, total, "not everything arrived");
        assert_eq!(io.slots.in_flight(), 0, "sends still in flight");
        assert!(
            io.stats().recv_no_buffers > 0,
            "the slow sends never held the ring empty: the test proves nothing ({:?})",
            io.stats()
        );

        let mut got = [0u8; 2048];
        for (to, rx) in rxs.iter().enumerate() {
            for &want in &expect[to] {
                let (n, _) = rx.recv_from(&mut got).expect("a forwarded datagram");
                let mut exact = vec![0u8; SEG];
                fill(&mut exact, to as u8, want, false);
                assert_eq!(n, SEG);
                assert!(
                    got[..n] == exact[..],
                    "destination {to}: expected datagram {want}, got bytes of {:?} (a buffer was reused under a pending send)",
                    u32::from_be_bytes([got[2], got[3], got[4], got[5]])
                );
            }
        }
    }

    /// A send the ring refuses (its submission cannot be queued) never
    /// completes: its slot and the references it took on receive buffers
    /// must come back at once, and its datagrams count as dropped. Without
    /// that, every refusal would leak a slot and pin buffers for good.
    #[test]
    fn a_send_the_ring_refuses_gives_back_its_slot_and_buffers() {
        let cfg = IoConfig {
            buffers: 4,
            ..IoConfig::default()
        };
        let sock = bind_socket("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
        let fwd_addr = sock.local_addr().unwrap();
        let Some(mut io) = uring_or_skip(sock, cfg) else {
            return;
        };
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dsts = [rx.local_addr().unwrap()];
        let mut handler = Dests::new(&dsts[..], |_: SocketAddr, _: &mut [u8]| {
            Action::Forward(Dest(0))
        });
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for seq in 0..3u8 {
            tx.send_to(&[seq; 100], fwd_addr).unwrap();
        }

        io.refuse_sends = true;
        let mut refused = false;
        for _ in 0..200 {
            if io.poll(Duration::from_millis(5), &mut handler).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the refused send never surfaced as an error");
        assert_eq!(io.slots.in_flight(), 0, "the refused send kept its slot");
        let received = io.stats().datagrams_in;
        assert!(received > 0);
        assert_eq!(io.stats().send_dropped, received, "{:?}", io.stats());
        assert_eq!(io.stats().datagrams_out, 0);

        // Sends work again, and every buffer is back once they completed.
        io.refuse_sends = false;
        tx.send_to(&[9; 100], fwd_addr).unwrap();
        let mut turns = 0;
        while (io.stats().datagrams_out == 0 || io.slots.in_flight() > 0) && turns < 200 {
            io.poll(Duration::from_millis(5), &mut handler).unwrap();
            turns += 1;
        }
        let mut got = [0u8; 200];
        let (n, _) = rx.recv_from(&mut got).expect("the datagram sent after");
        assert_eq!(&got[..n], &[9; 100][..]);
        io.poll(Duration::ZERO, &mut handler).unwrap();
        assert_eq!(io.slots.in_flight(), 0);
        assert_eq!(
            io.bufs.in_ring(),
            io.bufs.nbufs(),
            "buffers still held after every send completed"
        );
    }
}
