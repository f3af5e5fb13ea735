//! Synchronous batched sending: `sendmmsg` with one message per group, each
//! with a `UDP_SEGMENT` control message when it carries several datagrams.
//! A message is a contiguous [`Group`] (one iovec) or a gathered [`GatherSend`]
//! (an iovec per stretch): both are [`Messages`].
//!
//! The `mmsg` backend sends forwarded (gathered) datagrams this way; both backends send
//! `send_to` queues this way, and [`super::train`] sends trains this way,
//! since those borrow or reuse memory the caller gets back as soon as the
//! call returns.
//!
//! When the kernel refuses GSO (`EIO` from devices without checksum offload,
//! `EINVAL` from kernels or paths without `UDP_SEGMENT`), the refused group
//! is resent one datagram per call and the caller is told to stop grouping.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use super::cmsg::CmsgBuf;
use super::error::IoError;
use super::gather::{Gather, GatherSend};
use super::group::Group;
use super::limits::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};
use super::sockaddr::RawAddr;
use super::stats::IoStats;

/// How long to wait for send-buffer space before dropping, per attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backpressure {
    /// Wait for `POLLOUT` this long when the kernel says `EAGAIN`.
    pub(crate) wait: Duration,
    /// Give up on a group after this many waits.
    pub(crate) attempts: u32,
    /// When the waits are used up: `true` returns what was sent so far
    /// (the caller keeps the rest), `false` drops the group and goes on.
    pub(crate) stop_when_full: bool,
}

impl Backpressure {
    /// For forwarding: a relay drops rather than stall every flow.
    pub(crate) const FORWARD: Self = Self {
        wait: Duration::from_millis(1),
        attempts: 2,
        stop_when_full: false,
    };
    /// For a sender that wants everything out (load generator, control).
    pub(crate) const BLOCKING: Self = Self {
        wait: Duration::from_millis(100),
        attempts: 50,
        stop_when_full: false,
    };
    /// For a sender with other work to do meanwhile: never wait, stop at
    /// the first group the socket has no room for.
    pub(crate) const NONBLOCKING: Self = Self {
        wait: Duration::ZERO,
        attempts: 0,
        stop_when_full: true,
    };
}

/// What one [`SyncTx::send`] did, for the caller's per-poll stats.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxOutcome {
    /// Messages the kernel accepted (groups).
    pub(crate) send_calls: usize,
    /// Datagrams the kernel accepted.
    pub(crate) datagrams: usize,
    /// Datagrams dropped: refused for a reason other than a full socket.
    pub(crate) dropped: usize,
    /// System calls made.
    pub(crate) syscalls: usize,
    /// The kernel refused GSO: stop making multi-datagram groups.
    pub(crate) gso_refused: bool,
}

/// What [`SyncTx::send`] sends: a list of messages, each one `sendmsg`'s
/// worth (one destination, equal-size datagrams but the last).
pub(crate) trait Messages {
    /// Messages in the list.
    fn len(&self) -> usize;
    /// Message `i` (`i < len()`).
    fn message(&self, i: usize) -> Message;
    /// Writes message `i`'s iovecs into `out` (room for
    /// `message(i).pieces`).
    fn iovecs(&self, i: usize, out: &mut [libc::iovec]);
    /// Calls `emit` with message `i` as contiguous groups, each of whole
    /// datagrams, in order: what resending it without GSO starts from.
    fn pieces(&self, i: usize, emit: impl FnMut(Group));
}

/// The shape of one message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message {
    pub(crate) dst: SocketAddr,
    pub(crate) segment: usize,
    pub(crate) count: usize,
    pub(crate) len: usize,
    /// iovecs.
    pub(crate) pieces: usize,
}

impl Message {
    fn is_gso(&self) -> bool {
        self.count > 1
    }
}

impl Messages for [Group] {
    fn len(&self) -> usize {
        <[Group]>::len(self)
    }

    fn message(&self, i: usize) -> Message {
        let g = &self[i];
        Message {
            dst: g.dst,
            segment: g.segment,
            count: g.count,
            len: g.len,
            pieces: 1,
        }
    }

    fn iovecs(&self, i: usize, out: &mut [libc::iovec]) {
        out[0] = iovec(self[i].addr, self[i].len);
    }

    fn pieces(&self, i: usize, mut emit: impl FnMut(Group)) {
        emit(self[i]);
    }
}

impl Messages for Gather {
    fn len(&self) -> usize {
        self.sends().len()
    }

    fn message(&self, i: usize) -> Message {
        let s = &self.sends()[i];
        Message {
            dst: s.dst,
            segment: s.segment,
            count: s.count,
            len: s.len,
            pieces: s.stretches,
        }
    }

    fn iovecs(&self, i: usize, out: &mut [libc::iovec]) {
        for (slot, t) in out.iter_mut().zip(self.stretches(&self.sends()[i])) {
            *slot = iovec(t.addr, t.len);
        }
    }

    fn pieces(&self, i: usize, mut emit: impl FnMut(Group)) {
        let s: &GatherSend = &self.sends()[i];
        for t in self.stretches(s) {
            emit(Group {
                dst: s.dst,
                buf: t.buf,
                addr: t.addr,
                len: t.len,
                segment: s.segment,
                count: t.len.div_ceil(s.segment.max(1)),
            });
        }
    }
}

/// Message `.1` of `.0` alone.
#[derive(Debug)]
pub(crate) struct One<'a, M: ?Sized>(pub(crate) &'a M, pub(crate) usize);

impl<M: Messages + ?Sized> Messages for One<'_, M> {
    fn len(&self) -> usize {
        usize::from(self.1 < self.0.len())
    }

    fn message(&self, _: usize) -> Message {
        self.0.message(self.1)
    }

    fn iovecs(&self, _: usize, out: &mut [libc::iovec]) {
        self.0.iovecs(self.1, out);
    }

    fn pieces(&self, _: usize, emit: impl FnMut(Group)) {
        self.0.pieces(self.1, emit);
    }
}

/// An iovec for `len` bytes at `addr`.
pub(crate) fn iovec(addr: usize, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    }
}

/// Preallocated `sendmmsg` vectors.
pub(crate) struct SyncTx {
    /// Groups of the train `send_train` is sending (reused).
    scratch: Vec<Group>,
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[RawAddr]>,
    cmsgs: Box<[CmsgBuf]>,
}

impl std::fmt::Debug for SyncTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTx")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl SyncTx {
    /// Room for `capacity` messages per `sendmmsg` (at least 1, at most
    /// `UIO_MAXIOV`), and for four iovecs per message (a gathered message
    /// takes one per stretch: a `sendmmsg` carries fewer messages when they
    /// take more).
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = capacity.clamp(1, 1024);
        let iov_cap = (cap * 4).max(MAX_GSO_SEGMENTS);
        // SAFETY: mmsghdr and iovec are plain C structs for which all-zero
        // (null pointers, zero lengths) is a valid value.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            scratch: Vec::with_capacity(64),
            hdrs: vec![zero_hdr; cap].into_boxed_slice(),
            iovs: vec![zero_iov; iov_cap].into_boxed_slice(),
            names: vec![RawAddr::new(); cap].into_boxed_slice(),
            cmsgs: vec![CmsgBuf::new(); cap].into_boxed_slice(),
        }
    }

    /// Sends every message, in order, counting what was sent and what
    /// failed into `stats`. Failures drop the message (counted); they are
    /// not returned.
    ///
    /// # Safety
    ///
    /// For every message, the memory its iovecs name must be initialised
    /// and stay valid and unwritten for the duration of the call, and `fd`
    /// must be an open UDP socket.
    pub(crate) unsafe fn send<M: Messages + ?Sized>(
        &mut self,
        fd: RawFd,
        msgs: &M,
        gso: bool,
        policy: Backpressure,
        stats: &mut IoStats,
    ) -> TxOutcome {
        let mut out = TxOutcome::default();
        let mut gso = gso;
        let mut i = 0;
        let mut waits = 0;
        while i < msgs.len() {
            if !gso && msgs.message(i).is_gso() {
                // GSO is off (refused earlier): resend this message datagram
                // by datagram. A message never holds more than
                // MAX_GSO_SEGMENTS.
                let mut parts = [Group::EMPTY; MAX_GSO_SEGMENTS];
                let mut n = 0;
                msgs.pieces(i, |piece| {
                    split_for_no_gso(&piece, |p| {
                        if n < parts.len() {
                            parts[n] = p;
                            n += 1;
                        }
                    });
                });
                // SAFETY: the parts cover the same memory as message `i`,
                // valid per this function's contract; none is a GSO group,
                // so this recursion is one level deep.
                let sub = unsafe { self.send(fd, &parts[..n], false, policy, stats) };
                out.send_calls += sub.send_calls;
                out.datagrams += sub.datagrams;
                out.dropped += sub.dropped;
                out.syscalls += sub.syscalls;
                i += 1;
                continue;
            }
            // As many messages as the headers and iovecs hold (at least one:
            // a message has at most MAX_GSO_SEGMENTS iovecs).
            let mut n = 0;
            let mut iov_at = 0;
            while i + n < msgs.len() && n < self.hdrs.len() {
                let m = msgs.message(i + n);
                if (!gso && m.is_gso()) || iov_at + m.pieces > self.iovs.len() {
                    break;
                }
                self.fill(n, &m);
                msgs.iovecs(i + n, &mut self.iovs[iov_at..iov_at + m.pieces]);
                iov_at += m.pieces;
                n += 1;
            }
            // Point the headers at their iovecs only now: `iovs` is not
            // touched again until the call.
            let mut at = 0;
            for k in 0..n {
                let pieces = msgs.message(i + k).pieces;
                self.hdrs[k].msg_hdr.msg_iov = self.iovs[at..].as_mut_ptr();
                at += pieces;
            }
            // SAFETY: the first `n` headers point at iovecs, names and
            // control buffers owned by `self` (not moved or touched during
            // the call) and at message memory valid per this function's
            // contract.
            let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
            out.syscalls += 1;
            if sent > 0 {
                for k in i..i + sent as usize {
                    let m = msgs.message(k);
                    out.send_calls += 1;
                    out.datagrams += m.count;
                    stats.datagrams_out += m.count as u64;
                    stats.bytes_out += m.len as u64;
                }
                i += sent as usize;
                waits = 0;
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let m = msgs.message(i);
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN if waits < policy.attempts => {
                    waits += 1;
                    out.syscalls += 1;
                    wait_writable(fd, policy.wait);
                    continue;
                }
                libc::EAGAIN if policy.stop_when_full => break,
                libc::EIO | libc::EINVAL if m.is_gso() => {
                    stats.send_errors.count(errno);
                    stats.gso_fallbacks += 1;
                    tracing::warn!(
                        errno,
                        "the kernel refused a UDP GSO send; sending one datagram per call from now on"
                    );
                    gso = false;
                    out.gso_refused = true;
                    // The next turn resends this message datagram by datagram.
                }
                _ => {
                    stats.send_errors.count(errno);
                    stats.send_dropped += m.count as u64;
                    out.dropped += m.count;
                    i += 1;
                    waits = 0;
                }
            }
        }
        out
    }

    /// Sends `buf`, datagrams of `segment` bytes back to back (the last may
    /// be shorter), to `dst` now, as `policy` says to when the socket is
    /// full.
    pub(crate) fn send_train(
        &mut self,
        fd: RawFd,
        (dst, buf, segment): (SocketAddr, &[u8], usize),
        gso: bool,
        policy: Backpressure,
        stats: &mut IoStats,
    ) -> Result<TxOutcome, IoError> {
        if segment == 0 || segment > MAX_UDP_PAYLOAD {
            return Err(IoError::Gso(
                "segment size must be between 1 and 65507 bytes",
            ));
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        train_groups(dst, buf, segment, gso, |g| scratch.push(g));
        // SAFETY: every group points into `buf`, borrowed (so unwritten) for
        // the whole call.
        let out = unsafe { self.send(fd, &scratch[..], gso, policy, stats) };
        self.scratch = scratch;
        Ok(out)
    }

    /// Fills header `k` for message `m` (its iovecs are pointed at by the
    /// caller once all are written), with a `UDP_SEGMENT` control message
    /// when it carries several datagrams.
    fn fill(&mut self, k: usize, m: &Message) {
        let namelen = self.names[k].encode(m.dst);
        let hdr = &mut self.hdrs[k].msg_hdr;
        hdr.msg_name = self.names[k].as_mut_ptr();
        hdr.msg_namelen = namelen;
        hdr.msg_iov = std::ptr::null_mut();
        hdr.msg_iovlen = m.pieces as _;
        hdr.msg_flags = 0;
        if m.is_gso() {
            let len = self.cmsgs[k].encode_segment(m.segment as u16);
            hdr.msg_control = self.cmsgs[k].0.as_mut_ptr().cast();
            hdr.msg_controllen = len as _;
        } else {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        }
        self.hdrs[k].msg_len = 0;
    }
}

/// Waits until `fd` is writable or `wait` passes.
pub(crate) fn wait_writable(fd: RawFd, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Splits `buf` (datagrams of `segment` bytes back to back, the last maybe
/// shorter) into groups the kernel accepts, calling `emit` for each.
pub(crate) fn train_groups(
    dst: SocketAddr,
    buf: &[u8],
    segment: usize,
    gso: bool,
    mut emit: impl FnMut(Group),
) {
    let per_group = if gso {
        (MAX_UDP_PAYLOAD / segment).clamp(1, MAX_GSO_SEGMENTS)
    } else {
        1
    };
    let step = per_group * segment;
    let base = buf.as_ptr() as usize;
    let mut off = 0;
    while off < buf.len() {
        let len = step.min(buf.len() - off);
        emit(Group {
            dst,
            buf: 0,
            addr: base + off,
            len,
            segment,
            count: len.div_ceil(segment),
        });
        off += len;
    }
}

/// The groups of a group split one datagram each, for resending after the
/// kernel refused GSO.
pub(crate) fn split_for_no_gso(g: &Group, mut emit: impl FnMut(Group)) {
    let mut off = 0;
    while off < g.len {
        let len = g.segment.min(g.len - off);
        emit(Group {
            addr: g.addr + off,
            len,
            segment: len,
            count: 1,
            ..*g
        });
        off += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn train_is_split_within_limits() {
        let buf = vec![0u8; 1400 * 100 + 300];
        let mut groups = Vec::new();
        train_groups(dst(), &buf, 1400, true, |g| groups.push(g));
        assert_eq!(groups.iter().map(|g| g.len).sum::<usize>(), buf.len());
        assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), 101);
        assert!(groups.iter().all(|g| g.len <= MAX_UDP_PAYLOAD));
        assert_eq!(groups[0].count, 46);
        assert_eq!(groups.last().unwrap().len, 1400 * 8 + 300);

        let mut singles = Vec::new();
        train_groups(dst(), &buf[..3000], 1400, false, |g| singles.push(g));
        assert_eq!(
            singles.iter().map(|g| g.len).collect::<Vec<_>>(),
            [1400, 1400, 200]
        );
    }

    #[test]
    fn split_keeps_bytes_in_order() {
        let g = Group {
            dst: dst(),
            buf: 3,
            addr: 1000,
            len: 250,
            segment: 100,
            count: 3,
        };
        let mut parts = Vec::new();
        split_for_no_gso(&g, |p| parts.push(p));
        assert_eq!(
            parts
                .iter()
                .map(|p| (p.addr, p.len, p.buf))
                .collect::<Vec<_>>(),
            [(1000, 100, 3), (1100, 100, 3), (1200, 50, 3)]
        );
    }
}
