//! The `mmsg` backend: `recvmmsg` into a few large buffers with `UDP_GRO`,
//! `sendmmsg` with one message per gathered send (`UDP_SEGMENT`, an iovec
//! per stretch).
//!
//! For hosts where io_uring is blocked. Each `recvmmsg` fills up to
//! `buffers` buffers, each with one datagram or one coalesced run; the
//! sends gathered from all of them are made before the buffers are
//! received into again, so every buffer is free at the next call.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::cmsg::{self, CmsgBuf, CONTROL_LEN};
use super::config::IoConfig;
use super::dispatch::{dispatch_run, remaining, Handler};
use super::error::{errno_of, IoError};
use super::limits::MAX_GSO_SEGMENTS;
use super::outbound::Outbound;
use super::region::Region;
use super::sockaddr::{self, RawAddr, NAME_LEN};
use super::spin::Spin;
use super::stats::IoStats;
use super::stats::PollStats;
use super::tx::Backpressure;

/// Most buffers one `recvmmsg` fills (`UIO_MAXIOV`).
const MAX_VLEN: usize = 1024;

/// The `recvmmsg`/`sendmmsg` backend of one worker.
pub(crate) struct MmsgIo {
    socket: UdpSocket,
    fd: RawFd,
    /// A second socket received from in turn with the first (a mesh
    /// relay's per-worker link port); sends always leave from `socket`.
    link: Option<UdpSocket>,
    batch: usize,
    /// Spin this long retrying the receive before waiting in `poll(2)`.
    pub(super) busy_poll: Option<Duration>,
    buffer_size: usize,
    stride: usize,
    mem: Region,
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[RawAddr]>,
    cmsgs: Box<[CmsgBuf]>,
    outbound: Outbound,
    stats: IoStats,
}

impl std::fmt::Debug for MmsgIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgIo")
            .field("fd", &self.fd)
            .field("buffers", &self.hdrs.len())
            .field("buffer_size", &self.buffer_size)
            .finish_non_exhaustive()
    }
}

impl MmsgIo {
    /// Allocates everything the backend will ever use.
    pub(crate) fn new(
        socket: UdpSocket,
        link: Option<UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Self, IoError> {
        super::socket::set_nonblocking(&socket)?;
        if let Some(l) = &link {
            super::socket::set_nonblocking(l)?;
        }
        let n = cfg.buffers.min(MAX_VLEN);
        let stride = cfg.buffer_size.next_multiple_of(64);
        let bytes = stride
            .checked_mul(n)
            .ok_or(IoError::Alloc { bytes: usize::MAX })?;
        let mem = Region::new(bytes)?;
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // Datagrams per receive (so sends and stretches, at most one each
        // per datagram).
        let max_datagrams = if cfg.gro { n * MAX_GSO_SEGMENTS } else { n };
        Ok(Self {
            fd: socket.as_raw_fd(),
            socket,
            link,
            batch: cfg.batch,
            busy_poll: cfg.busy_poll,
            buffer_size: cfg.buffer_size,
            stride,
            mem,
            hdrs: vec![zero_hdr; n].into_boxed_slice(),
            iovs: vec![zero_iov; n].into_boxed_slice(),
            names: vec![RawAddr::new(); n].into_boxed_slice(),
            cmsgs: vec![CmsgBuf::new(); n].into_boxed_slice(),
            outbound: Outbound::new(
                max_datagrams,
                max_datagrams.min(1024),
                cfg.gso,
                cfg.grouping,
            )?,
            stats: IoStats::default(),
        })
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The second socket, if any.
    pub(crate) fn link(&self) -> Option<&UdpSocket> {
        self.link.as_ref()
    }

    /// Counters since construction.
    pub(crate) fn stats(&self) -> &IoStats {
        &self.stats
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
        let deadline = Instant::now().checked_add(timeout);
        let mut ps = PollStats::default();
        let mut spin = Spin::new(self.busy_poll, timeout);
        let result = self.receive_loop(deadline, &mut spin, handle, &mut ps);
        spin.record(&mut ps);
        self.outbound.finish_poll(self.fd, &mut self.stats, &mut ps);
        result.map(|()| ps)
    }

    fn receive_loop<F>(
        &mut self,
        deadline: Option<Instant>,
        spin: &mut Spin,
        handle: &mut F,
        ps: &mut PollStats,
    ) -> Result<(), IoError>
    where
        F: Handler,
    {
        let vlen = self.hdrs.len();
        let fds = [self.fd, self.link.as_ref().map_or(-1, AsRawFd::as_raw_fd)];
        let nfds = if fds[1] < 0 { 1 } else { 2 };
        // Sockets with nothing more to read in this poll; with two, they
        // take turns, one `recvmmsg` each.
        let mut drained = [false, nfds < 2];
        let mut turn = 0;
        loop {
            if drained[turn] {
                turn = (turn + 1) % nfds;
            }
            if drained[turn] {
                // Both empty.
                let left = remaining(deadline);
                if ps.received > 0 || left.is_zero() {
                    return Ok(());
                }
                // Busy polling: try the (non-blocking) receives again
                // rather than sleep, while the budget lasts.
                if spin.again() {
                    drained = [false, nfds < 2];
                    continue;
                }
                ps.syscalls += 1;
                if !wait_readable_any(&fds[..nfds], left)? {
                    return Ok(());
                }
                drained = [false, nfds < 2];
                continue;
            }
            let fd = fds[turn];
            self.arm();
            // SAFETY: every header points at an iovec, name and control
            // buffer owned by `self` and at a `buffer_size` range of `mem`
            // that no slice refers to during the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    vlen as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            ps.syscalls += 1;
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match errno_of(&err) {
                    libc::EINTR => continue,
                    libc::EAGAIN => {
                        drained[turn] = true;
                        continue;
                    }
                    _ => {
                        return Err(IoError::Sys {
                            op: "recvmmsg",
                            source: err,
                        })
                    }
                }
            }
            let n = n as usize;
            if n > 0 {
                spin.found();
            }
            for i in 0..n {
                self.dispatch(i, handle, ps);
            }
            // SAFETY: the sends point into buffers received above; no slice
            // of them is alive and they are not received into until this
            // synchronous send returns.
            let out = unsafe {
                self.outbound.tx.send(
                    self.fd,
                    &self.outbound.gather,
                    self.outbound.gather.gso_enabled(),
                    Backpressure::FORWARD,
                    &mut self.stats,
                )
            };
            self.outbound.gather.clear();
            self.outbound.account(ps, out);
            if ps.received >= self.batch {
                return Ok(());
            }
            if n < vlen {
                drained[turn] = true;
                if drained.iter().all(|d| *d) {
                    return Ok(());
                }
            }
            turn = (turn + 1) % nfds;
        }
    }

    /// Points every header at its buffer, name and control space again (the
    /// kernel overwrote the lengths).
    fn arm(&mut self) {
        let base = self.mem.base();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            self.iovs[i] = libc::iovec {
                // In bounds: i < buffers and the region is buffers * stride.
                iov_base: base.wrapping_add(i * self.stride).cast(),
                iov_len: self.buffer_size,
            };
            let m = &mut h.msg_hdr;
            m.msg_name = self.names[i].as_mut_ptr();
            m.msg_namelen = NAME_LEN as libc::socklen_t;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            m.msg_controllen = CONTROL_LEN as _;
            m.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Hands the datagrams received into buffer `i` to `handle`.
    fn dispatch<F>(&mut self, i: usize, handle: &mut F, ps: &mut PollStats)
    where
        F: Handler,
    {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.buffer_size);
        let namelen = (h.msg_hdr.msg_namelen as usize).min(NAME_LEN);
        // `msg_controllen` is `size_t` on glibc, `socklen_t` on musl.
        #[allow(clippy::unnecessary_cast)]
        let controllen = (h.msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            self.stats.recv_truncated += 1;
            return;
        }
        let Some(src) = sockaddr::decode(&self.names[i].bytes()[..namelen]) else {
            self.stats.recv_errors += 1;
            return;
        };
        let segment = cmsg::gro_segment_size(&self.cmsgs[i].0[..controllen]);
        // SAFETY: the kernel finished writing buffer `i` when recvmmsg
        // returned; it is not received into again before the sends made
        // from it are done, and this is the only slice of it.
        let run = unsafe { self.mem.slice_mut(i * self.stride, len) };
        dispatch_run(
            run,
            i as u32,
            src,
            segment,
            handle,
            &mut self.outbound.gather,
            ps,
        );
    }

    /// The send side with what it needs: used by [`super::Io::send_to`]
    /// (the load generator's trains go through [`super::train`]).
    pub(crate) fn outbound(&mut self) -> (&mut Outbound, RawFd, &mut IoStats) {
        (&mut self.outbound, self.fd, &mut self.stats)
    }

    /// See [`super::Io::flush`].
    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.outbound.flush(self.fd, &mut self.stats);
        Ok(())
    }
}

/// Waits until one of `fds` (one or two) is readable or `wait` passes;
/// `false` on timeout.
pub(crate) fn wait_readable_any(fds: &[RawFd], wait: Duration) -> Result<bool, IoError> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    let n = fds.len().min(2);
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = *fd;
    }
    // `ppoll`, not `poll`: `poll`'s whole milliseconds would turn every
    // shorter wait (a paced sender waiting for its next train's time, say)
    // into a full millisecond when nothing arrives.
    let ts = libc::timespec {
        tv_sec: wait.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `n` valid pollfds and a valid timespec, for the duration of
    // the call; a null signal mask leaves the thread's as it is.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if errno_of(&err) == libc::EINTR {
            return Ok(true);
        }
        return Err(IoError::Sys {
            op: "poll",
            source: err,
        });
    }
    Ok(rc > 0)
}
