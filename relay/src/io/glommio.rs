//! The `glommio` backend: the worker's socket I/O as tasks of a glommio
//! `LocalExecutor` on the worker's own thread (the design card's runtime),
//! kept as a measured comparison to `uring` and `mmsg`.
//!
//! What glommio 0.9 offers for UDP is `glommio::net::UdpSocket`:
//! `recv_from` and `send_to` of one contiguous buffer, no control messages.
//! Each first tries the call directly (nonblocking, one syscall per
//! datagram); only when the socket has nothing (or no room) does it submit
//! to its io_uring ring, into a buffer of its own that it then copies from.
//! This backend makes the best of that:
//!
//! - `UDP_GRO` is on (the socket comes from [`super::bind_socket`]), so one
//!   `recv_from` returns a whole coalesced run. Without the control message
//!   the segment size is unknown; the frames carry their own length
//!   ([`proto::wire::declared_len`]), so a run is split by its first
//!   frame's length when every frame in it declares exactly its share (all
//!   equal, the last as long as what is left). A read that does not split
//!   that way is handed over whole, as one datagram, and counted
//!   ([`super::IoStats::gro_unsplit`]): nothing is cut at a guessed place.
//! - A forwarded stretch of equal-size datagrams lying back to back (a GRO
//!   run forwarded whole is one) goes out with one `send_to` under the
//!   `UDP_SEGMENT` socket option (glommio passes no control message), which
//!   is set only when the size changes; a single datagram larger than the
//!   option is sent with the option cleared. glommio takes one buffer per
//!   send, so the stretches of one gathered send are sent one by one.
//! - One receive task: the reads of a poll are made one after the other
//!   into the backend's buffers (several concurrent `recv_from` tasks each
//!   wait through the ring and copy; DESIGN.md §3 measured 64 of them at
//!   0.16 Mpps).
//!
//! Each [`super::Io::poll`] is one `LocalExecutor::run`: the first read
//! waits up to the poll's timeout (glommio's read timeout, a linked timeout
//! on its ring); later reads wait [`PROBE`] at most, so a poll ends once the
//! socket runs dry. That costs, per poll, the task glommio allocates for
//! `run` and, when the socket runs dry, the ring submission (a `Source` and
//! a DMA buffer) of the read that finds it so: this backend allocates per
//! batch, which the default backends never do. Mesh link sockets are not
//! supported (a glommio read cannot wait on two sockets without a second
//! task whose cancelled read could lose a datagram).
//!
//! glommio needs locked memory for its rings (it refuses to start with
//! `RLIMIT_MEMLOCK` under 512 KiB); when it cannot start, [`GlommioIo::new`]
//! returns [`IoError::GlommioUnavailable`] with the socket.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use super::config::IoConfig;
use super::dispatch::{dispatch_run, remaining, Handler};
use super::error::{errno_of, IoError};
use super::limits::MAX_GSO_SEGMENTS;
use super::outbound::Outbound;
use super::region::Region;
use super::stats::{IoStats, PollStats};

/// The longest a read after the first of a poll waits: long enough for the
/// ring's linked timeout to be set up, short enough that a poll ends as
/// soon as the socket is empty.
pub(crate) const PROBE: Duration = Duration::from_micros(1);
/// How long a send waits for room in the socket buffer before the datagram
/// is dropped (as the other backends' forwarding does, ~2 ms).
const SEND_TIMEOUT: Duration = Duration::from_millis(2);
/// Locked memory glommio needs at least (it checks `RLIMIT_MEMLOCK`).
const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why a backend could not be built, with the socket back for another.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: IoError,
    pub(crate) socket: UdpSocket,
}

/// Everything but the executor: what one `run` works on.
struct Parts {
    /// The socket (the same one glommio reads: a second descriptor of it),
    /// for the address, `send_to`'s staging and trains.
    socket: UdpSocket,
    fd: RawFd,
    glommio: glommio::net::UdpSocket,
    batch: usize,
    buffers: usize,
    buffer_size: usize,
    stride: usize,
    /// Split reads by the frames' declared lengths (`UDP_GRO` is on).
    split: bool,
    mem: Region,
    outbound: Outbound,
    stats: IoStats,
    /// The `UDP_SEGMENT` socket option as last set (0: off).
    gso_size: u16,
}

/// The glommio backend of one worker.
pub(crate) struct GlommioIo {
    // Dropped before the executor: the socket refers to its reactor.
    parts: Parts,
    executor: glommio::LocalExecutor,
}

impl std::fmt::Debug for GlommioIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioIo")
            .field("fd", &self.parts.fd)
            .field("buffers", &self.parts.buffers)
            .field("buffer_size", &self.parts.buffer_size)
            .finish_non_exhaustive()
    }
}

/// glommio refuses to start under [`MIN_MEMLOCK`] of locked memory but
/// only says "too low": checked here first so the error names the limit.
fn check_memlock() -> Result<(), IoError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit`, a live local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc == 0 && lim.rlim_cur < MIN_MEMLOCK {
        return Err(IoError::GlommioUnavailable {
            reason: format!(
                "RLIMIT_MEMLOCK is {} bytes, glommio needs at least {MIN_MEMLOCK}",
                lim.rlim_cur
            ),
            hint: MEMLOCK_HINT,
        });
    }
    Ok(())
}

/// What to do about too little locked memory.
const MEMLOCK_HINT: &str = "raise the locked-memory limit to at least 512 KiB: ulimit -l, LimitMEMLOCK= in a systemd unit, --ulimit memlock in a container";

/// Why glommio cannot start, as an [`IoError`] saying what to fix.
fn unavailable(error: glommio::GlommioError<()>) -> IoError {
    let hint = match &error {
        glommio::GlommioError::ReactorError(glommio::ReactorErrorKind::MemLockLimit(..)) => {
            MEMLOCK_HINT
        }
        _ => "glommio needs io_uring (Linux 5.8+, not blocked by seccomp) and locked memory",
    };
    IoError::GlommioUnavailable {
        reason: error.to_string(),
        hint,
    }
}

impl GlommioIo {
    /// Builds the executor on this thread and hands it the socket; on
    /// failure the socket comes back untouched.
    pub(crate) fn new(socket: UdpSocket, cfg: IoConfig) -> Result<Self, Failed> {
        let fail = |error, socket| Failed { error, socket };
        let n = cfg.buffers;
        let stride = cfg.buffer_size.next_multiple_of(64);
        let max_datagrams = if cfg.gro { n * MAX_GSO_SEGMENTS } else { n };
        let memory = (|| {
            super::socket::set_nonblocking(&socket)?;
            let bytes = stride
                .checked_mul(n)
                .ok_or(IoError::Alloc { bytes: usize::MAX })?;
            let outbound = Outbound::new(
                max_datagrams,
                max_datagrams.min(1024),
                cfg.gso,
                cfg.grouping,
            )?;
            Ok((Region::new(bytes)?, outbound))
        })();
        let (mem, outbound) = match memory {
            Ok(m) => m,
            Err(error) => return Err(fail(error, socket)),
        };
        if let Err(error) = check_memlock() {
            return Err(fail(error, socket));
        }
        let executor = match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("relay-io")
            // glommio's own buffers: a read that waits on the ring lands in
            // one of `buffer_size` before it is copied to ours.
            .io_memory((4 * cfg.buffer_size).max(1 << 16))
            .ring_depth(64)
            .make()
        {
            Ok(ex) => ex,
            Err(e) => return Err(fail(unavailable(e), socket)),
        };
        let dup = match socket.try_clone() {
            Ok(dup) => dup,
            Err(source) => return Err(fail(IoError::Sys { op: "dup", source }, socket)),
        };
        // The socket has to be made inside the executor (it registers with
        // its reactor). Sends wait for room through glommio's ring when the
        // socket is full, for `SEND_TIMEOUT`; the read timeout is set per
        // read.
        let fd = dup.into_raw_fd();
        let glommio = executor.run(async move {
            // SAFETY: `fd` is a descriptor of our own (just duplicated and
            // released by `into_raw_fd`), handed to exactly one owner.
            let g = unsafe { glommio::net::UdpSocket::from_raw_fd(fd) };
            // Non-zero, so never refused.
            let _ = g.set_write_timeout(Some(SEND_TIMEOUT));
            g
        });
        Ok(Self {
            parts: Parts {
                fd: socket.as_raw_fd(),
                socket,
                glommio,
                batch: cfg.batch,
                buffers: n,
                buffer_size: cfg.buffer_size,
                stride,
                split: cfg.gro,
                mem,
                outbound,
                stats: IoStats::default(),
                gso_size: 0,
            },
            executor,
        })
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.parts.socket
    }

    /// Counters since construction.
    pub(crate) fn stats(&self) -> &IoStats {
        &self.parts.stats
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
        let parts = &mut self.parts;
        let result = self
            .executor
            .run(parts.receive_and_send(deadline, handle, &mut ps));
        let p = &mut self.parts;
        p.clear_gso();
        p.outbound.finish_poll(p.fd, &mut p.stats, &mut ps);
        result.map(|()| ps)
    }

    /// The send side, for [`super::Io::send_to`]: its sends carry their own
    /// `UDP_SEGMENT` message, and a single datagram must not be split by
    /// the socket option, so that is cleared first.
    pub(crate) fn outbound(&mut self) -> (&mut Outbound, RawFd, &mut IoStats) {
        let p = &mut self.parts;
        p.clear_gso();
        (&mut p.outbound, p.fd, &mut p.stats)
    }

    /// See [`super::Io::flush`].
    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        let p = &mut self.parts;
        p.clear_gso();
        p.outbound.flush(p.fd, &mut p.stats);
        Ok(())
    }
}

/// How a read splits into datagrams: `Some(segment)` for a run of
/// `segment`-byte frames (the last possibly shorter) that each declare
/// exactly their length; `None` to hand it over whole, with `true` when it
/// was longer than its first frame says (a run that did not split).
pub(crate) fn split_run(run: &[u8]) -> (Option<usize>, bool) {
    let n = run.len();
    let first = match proto::wire::declared_len(run) {
        Some(s) if s > 0 && s < n => s,
        // One datagram (or one that is not a frame, or a truncated one):
        // whole, as the other backends would hand it over.
        _ => return (None, false),
    };
    let mut off = 0;
    while off < n {
        let end = n.min(off + first);
        if proto::wire::declared_len(&run[off..end]) != Some(end - off) {
            return (None, true);
        }
        off = end;
    }
    (Some(first), false)
}

impl Parts {
    /// One poll's work on the executor: reads until the socket is empty, the
    /// buffers are full or the batch is reached (the first read waiting up
    /// to `deadline`), then sends what was forwarded.
    async fn receive_and_send<F>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut F,
        ps: &mut PollStats,
    ) -> Result<(), IoError>
    where
        F: Handler,
    {
        let mut used = 0;
        let mut result = Ok(());
        while used < self.buffers && ps.received < self.batch {
            let wait = if used == 0 {
                remaining(deadline).max(PROBE)
            } else {
                PROBE
            };
            // Non-zero, so never refused.
            let _ = self.glommio.set_read_timeout(Some(wait));
            // SAFETY: buffer `used` is not the source of any pending send
            // (sends of this poll are made below, after the reads, and
            // complete before `run` returns) and no other slice of it lives.
            let buf = unsafe { self.mem.slice_mut(used * self.stride, self.buffer_size) };
            ps.syscalls += 1;
            match self.glommio.recv_from(buf).await {
                Ok((len, src)) => {
                    let run = &mut buf[..len.min(self.buffer_size)];
                    let segment = if self.split {
                        let (segment, unsplit) = split_run(run);
                        self.stats.gro_unsplit += u64::from(unsplit);
                        segment
                    } else {
                        None
                    };
                    dispatch_run(
                        run,
                        used as u32,
                        src,
                        segment,
                        handle,
                        &mut self.outbound.gather,
                        ps,
                    );
                    used += 1;
                }
                Err(e) => {
                    let err = std::io::Error::from(e);
                    match errno_of(&err) {
                        libc::ETIMEDOUT | libc::EAGAIN => break,
                        libc::EINTR => continue,
                        _ => {
                            result = Err(IoError::Sys {
                                op: "recvmsg",
                                source: err,
                            });
                            break;
                        }
                    }
                }
            }
        }
        self.send_gathered(ps).await;
        result
    }

    /// Sends every stretch gathered this poll, in order: one `send_to` each,
    /// under `UDP_SEGMENT` when it holds several datagrams.
    async fn send_gathered(&mut self, ps: &mut PollStats) {
        let base = self.mem.base() as usize;
        let mut tx = Sender {
            glommio: &self.glommio,
            fd: self.fd,
            stats: &mut self.stats,
            gso_size: &mut self.gso_size,
            gso_refused: false,
        };
        let gather = &self.outbound.gather;
        for s in gather.sends() {
            for t in gather.stretches(s) {
                let off = t.addr - base;
                // SAFETY: the stretch lies in a buffer received into this
                // poll (its address came from a slice of it); no other
                // slice of it is alive now and it is not received into
                // again before this poll ends.
                let bytes: &[u8] = unsafe { self.mem.slice_mut(off, t.len) };
                tx.send_stretch(s.dst, s.segment, bytes, ps).await;
            }
        }
        if tx.gso_refused {
            self.outbound.gather.disable_gso();
            self.outbound.staging.disable_gso();
        }
        self.outbound.gather.clear();
    }

    /// Clears `UDP_SEGMENT` (before sends made outside glommio, whose single
    /// datagrams it would split).
    fn clear_gso(&mut self) {
        clear_gso(self.fd, &mut self.gso_size, &mut self.stats);
    }
}

/// The sending half of a poll.
struct Sender<'a> {
    glommio: &'a glommio::net::UdpSocket,
    fd: RawFd,
    stats: &'a mut IoStats,
    /// The `UDP_SEGMENT` socket option as last set (0: off).
    gso_size: &'a mut u16,
    /// The kernel refused a GSO send: make no more.
    gso_refused: bool,
}

impl Sender<'_> {
    /// Sends `bytes` (datagrams of `segment` bytes, the last possibly
    /// shorter) to `dst`.
    async fn send_stretch(
        &mut self,
        dst: SocketAddr,
        segment: usize,
        bytes: &[u8],
        ps: &mut PollStats,
    ) {
        let segment = segment.max(1);
        let count = bytes.len().div_ceil(segment).max(1);
        if count == 1 {
            // Not split by the option: cleared if set below its length.
            if *self.gso_size != 0 && usize::from(*self.gso_size) < bytes.len() {
                clear_gso(self.fd, self.gso_size, self.stats);
            }
            self.send_one(dst, bytes, 1, ps).await;
            return;
        }
        if !self.gso_refused && self.set_gso(segment) {
            if self.send_one(dst, bytes, count, ps).await {
                return;
            }
            // Refused as GSO: counted once, then every datagram on its own.
            self.stats.gso_fallbacks += 1;
        }
        self.gso_refused = true;
        clear_gso(self.fd, self.gso_size, self.stats);
        for d in bytes.chunks(segment) {
            self.send_one(dst, d, 1, ps).await;
        }
    }

    /// One `send_to` of `count` datagrams; `false` when it failed as a GSO
    /// send the kernel refuses (`EIO`, `EINVAL`: to be resent singly),
    /// `true` otherwise (sent, or counted as dropped).
    async fn send_one(
        &mut self,
        dst: SocketAddr,
        bytes: &[u8],
        count: usize,
        ps: &mut PollStats,
    ) -> bool {
        ps.syscalls += 1;
        match self.glommio.send_to(bytes, dst).await {
            Ok(n) => {
                ps.send_calls += 1;
                self.stats.datagrams_out += count as u64;
                self.stats.bytes_out += n as u64;
                true
            }
            Err(e) => {
                let err = std::io::Error::from(e);
                // glommio's write timeout: the socket stayed full.
                let errno = match errno_of(&err) {
                    libc::ETIMEDOUT => libc::EAGAIN,
                    e => e,
                };
                self.stats.send_errors.count(errno);
                if count > 1 && matches!(errno, libc::EIO | libc::EINVAL) {
                    return false;
                }
                self.stats.send_dropped += count as u64;
                true
            }
        }
    }

    /// Sets `UDP_SEGMENT` to `segment` unless it is already; `false` when
    /// it cannot be (too large, or refused by the kernel: no GSO here).
    /// Sets `UDP_SEGMENT` to `segment` unless it is already; `false` when
    /// the kernel refuses it (no GSO here).
    fn set_gso(&mut self, segment: usize) -> bool {
        let Ok(size) = u16::try_from(segment) else {
            return false;
        };
        if *self.gso_size == size {
            return true;
        }
        self.stats.syscalls += 1;
        let set = super::socket::set_int(
            self.fd,
            libc::SOL_UDP,
            super::cmsg::UDP_SEGMENT,
            libc::c_int::from(size),
        );
        if set.is_ok() {
            *self.gso_size = size;
        }
        set.is_ok()
    }
}

/// Clears `UDP_SEGMENT` on `fd` unless it is off already.
fn clear_gso(fd: RawFd, gso_size: &mut u16, stats: &mut IoStats) {
    if *gso_size == 0 {
        return;
    }
    stats.syscalls += 1;
    if super::socket::set_int(fd, libc::SOL_UDP, super::cmsg::UDP_SEGMENT, 0).is_ok() {
        *gso_size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data frame of `len` bytes (hop header with its length field) whose
    /// bytes after the header are `fill`.
    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[0] = proto::wire::Kind::DataUp.byte0();
        f[2..4].copy_from_slice(&((len - proto::wire::HEADER_LEN) as u16).to_be_bytes());
        f
    }

    #[test]
    fn a_run_of_equal_frames_splits_by_their_length() {
        let mut run = Vec::new();
        for i in 0..5 {
            run.extend(frame(100, i));
        }
        assert_eq!(split_run(&run), (Some(100), false));
        // The last shorter, as GRO leaves it.
        run.extend(frame(40, 9));
        assert_eq!(split_run(&run), (Some(100), false));
    }

    #[test]
    fn one_datagram_is_whole_and_not_counted() {
        assert_eq!(split_run(&frame(100, 0)), (None, false));
        // Not a frame, empty, declared longer than read (truncated).
        assert_eq!(split_run(&[0xff; 300]), (None, false));
        assert_eq!(split_run(&[]), (None, false));
        assert_eq!(split_run(&frame(100, 0)[..60]), (None, false));
    }

    #[test]
    fn a_run_that_does_not_parse_is_handed_over_whole() {
        let good: Vec<u8> = (0..4).flat_map(|i| frame(100, i)).collect();
        // A middle frame declaring another length.
        let mut bad = good.clone();
        bad[202..204].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(split_run(&bad), (None, true));
        // A middle frame that is no frame at all.
        let mut bad = good.clone();
        bad[300] = 0x77;
        assert_eq!(split_run(&bad), (None, true));
        // A last piece longer than the first frame (unequal sizes).
        let mut bad = good.clone();
        bad.extend(frame(150, 7));
        assert_eq!(split_run(&bad), (None, true));
        // A last piece shorter than it declares (cut off).
        let mut cut = good.clone();
        cut.extend(&frame(80, 7)[..50]);
        assert_eq!(split_run(&cut), (None, true));
    }
}
