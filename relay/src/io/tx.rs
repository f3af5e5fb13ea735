//! Synchronous batched sending: `sendmmsg` with one message per group, each
//! with a `UDP_SEGMENT` control message when it carries several datagrams.
//!
//! The `mmsg` backend sends forwarded groups this way; both backends send
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
    /// `UIO_MAXIOV`).
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = capacity.clamp(1, 1024);
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
            iovs: vec![zero_iov; cap].into_boxed_slice(),
            names: vec![RawAddr::new(); cap].into_boxed_slice(),
            cmsgs: vec![CmsgBuf::new(); cap].into_boxed_slice(),
        }
    }

    /// Sends every group, in order, counting what was sent and what failed
    /// into `stats`. Failures drop the group (counted); they are not
    /// returned.
    ///
    /// # Safety
    ///
    /// For every group, `addr .. addr + len` must be initialised memory that
    /// stays valid and unwritten for the duration of the call, and `fd` must
    /// be an open UDP socket.
    pub(crate) unsafe fn send(
        &mut self,
        fd: RawFd,
        groups: &[Group],
        gso: bool,
        policy: Backpressure,
        stats: &mut IoStats,
    ) -> TxOutcome {
        let mut out = TxOutcome::default();
        let mut gso = gso;
        let mut i = 0;
        let mut waits = 0;
        while i < groups.len() {
            if !gso && groups[i].is_gso() {
                // GSO is off (refused earlier): resend this group datagram by
                // datagram. A group never holds more than MAX_GSO_SEGMENTS.
                let g = groups[i];
                let mut parts = [g; MAX_GSO_SEGMENTS];
                let mut n = 0;
                split_for_no_gso(&g, |p| {
                    if n < parts.len() {
                        parts[n] = p;
                        n += 1;
                    }
                });
                // SAFETY: the parts cover the same memory as `g`, valid per
                // this function's contract; none is a GSO group, so this
                // recursion is one level deep.
                let sub = unsafe { self.send(fd, &parts[..n], false, policy, stats) };
                out.send_calls += sub.send_calls;
                out.datagrams += sub.datagrams;
                out.dropped += sub.dropped;
                out.syscalls += sub.syscalls;
                i += 1;
                continue;
            }
            let mut end = groups.len().min(i + self.hdrs.len());
            if !gso {
                end = i + groups[i..end].iter().take_while(|g| !g.is_gso()).count();
            }
            let chunk = &groups[i..end];
            for (k, g) in chunk.iter().enumerate() {
                self.fill(k, g);
            }
            // SAFETY: the first `chunk.len()` headers point at iovecs, names
            // and control buffers owned by `self` (not moved or touched during
            // the call) and at group memory valid per this function's contract.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), chunk.len() as libc::c_uint, 0)
            };
            out.syscalls += 1;
            if n > 0 {
                for g in &chunk[..n as usize] {
                    out.send_calls += 1;
                    out.datagrams += g.count;
                    stats.datagrams_out += g.count as u64;
                    stats.bytes_out += g.len as u64;
                }
                i += n as usize;
                waits = 0;
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let g = &chunk[0];
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN if waits < policy.attempts => {
                    waits += 1;
                    out.syscalls += 1;
                    wait_writable(fd, policy.wait);
                    continue;
                }
                libc::EAGAIN if policy.stop_when_full => break,
                libc::EIO | libc::EINVAL if g.is_gso() => {
                    stats.send_errors.count(errno);
                    stats.gso_fallbacks += 1;
                    tracing::warn!(
                        errno,
                        "the kernel refused a UDP GSO send; sending one datagram per call from now on"
                    );
                    gso = false;
                    out.gso_refused = true;
                    // The next turn resends this group datagram by datagram.
                }
                _ => {
                    stats.send_errors.count(errno);
                    stats.send_dropped += g.count as u64;
                    out.dropped += g.count;
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
        let out = unsafe { self.send(fd, &scratch, gso, policy, stats) };
        self.scratch = scratch;
        Ok(out)
    }

    /// Fills message `k` for group `g`, with a `UDP_SEGMENT` control
    /// message when it carries several datagrams.
    fn fill(&mut self, k: usize, g: &Group) {
        let namelen = self.names[k].encode(g.dst);
        self.iovs[k] = libc::iovec {
            iov_base: g.addr as *mut libc::c_void,
            iov_len: g.len,
        };
        let hdr = &mut self.hdrs[k].msg_hdr;
        hdr.msg_name = self.names[k].as_mut_ptr();
        hdr.msg_namelen = namelen;
        hdr.msg_iov = &mut self.iovs[k];
        hdr.msg_iovlen = 1;
        hdr.msg_flags = 0;
        if g.is_gso() {
            let len = self.cmsgs[k].encode_segment(g.segment as u16);
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
