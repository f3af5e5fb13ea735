//! I/O backends: they move datagrams between a UDP socket and the per-frame
//! logic, and nothing else.
//!
//! A worker thread owns one [`Io`]: one `SO_REUSEPORT` socket and one
//! backend. [`Io::poll`] receives a batch, hands every datagram (each
//! `UDP_GRO` segment separately) to a callback that may rewrite it in place
//! and answers with an [`Action`], then sends the forwarded datagrams straight
//! from the buffers they arrived in, one send per run of equal-size datagrams
//! to the same destination (`UDP_SEGMENT`).
//!
//! Two backends (see DESIGN.md §3):
//! - [`Backend::Uring`]: io_uring with a multishot `RecvMsg` into a small
//!   provided-buffer ring, `SendMsg` per group, one submit per batch.
//! - [`Backend::Mmsg`]: `recvmmsg`/`sendmmsg`, where io_uring is blocked
//!   (seccomp profiles of container runtimes often block it).
//!
//! [`Io::start`] prefers the first and falls back to the second, saying so
//! once. Linux only. All buffers are allocated at construction: the steady
//! state allocates nothing.
//!
//! An `Io` must be created on the thread that polls it (the io_uring ring is
//! set up `SINGLE_ISSUER`); it is deliberately not `Send`.

mod cmsg;
mod group;
mod mmsg;
mod outbound;
mod region;
mod sockaddr;
mod socket;
mod staging;
mod stats;
mod tx;
mod uring;

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

pub use socket::bind_socket;
pub use stats::{ErrnoCounts, IoStats, PollStats, BATCH_BUCKETS};

/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP): the cap on one
/// datagram and on the total of one GSO send.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Most segments the kernel accepts in one `UDP_SEGMENT` send
/// (`UDP_MAX_SEGMENTS` was 64 before Linux 6.10; 64 works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Which I/O backend drives a worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring: multishot receive into a provided-buffer ring, batched sends.
    Uring,
    /// `recvmmsg`/`sendmmsg` with GRO/GSO.
    Mmsg,
}

impl Backend {
    /// The name used on the command line and in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Mmsg => "mmsg",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = IoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" => Ok(Self::Uring),
            "mmsg" => Ok(Self::Mmsg),
            other => Err(IoError::UnknownBackend(other.to_owned())),
        }
    }
}

/// Sizes and switches of one worker's I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoConfig {
    /// Datagrams (GRO segments counted one by one) handled per poll, at most;
    /// a soft cap: the receive buffer being handled when it is reached is
    /// finished.
    pub batch: usize,
    /// Receive buffers: the provided-buffer ring's size for `uring`, the
    /// `recvmmsg` vector length for `mmsg`. Keep it small so buffer memory
    /// stays in cache (DESIGN.md §3: 64 beat 256 by 40 %).
    pub buffers: usize,
    /// Payload capacity of each receive buffer. 65536 holds any GRO run
    /// (the kernel caps one at 64 KiB), so nothing is ever truncated.
    pub buffer_size: usize,
    /// Ask the kernel to coalesce received runs (`UDP_GRO`).
    pub gro: bool,
    /// Send equal-size runs with one `UDP_SEGMENT` call.
    pub gso: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            batch: 1024,
            buffers: 64,
            buffer_size: 65_536,
            gro: true,
            gso: true,
        }
    }
}

impl IoConfig {
    /// Checks the sizes; both backends call it.
    fn validate(&self) -> Result<(), IoError> {
        if self.batch == 0 {
            return Err(IoError::Config("batch must be at least 1"));
        }
        if self.buffers == 0 || self.buffers > 32_768 {
            return Err(IoError::Config("buffers must be between 1 and 32768"));
        }
        if self.buffer_size < 2048 || self.buffer_size > 1 << 20 {
            return Err(IoError::Config(
                "buffer_size must be between 2048 and 1 MiB (65536 holds any GRO run)",
            ));
        }
        Ok(())
    }
}

/// What the per-frame logic decided about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram (as the callback left it, same length) there.
    Forward(SocketAddr),
    /// Nothing to send (dropped, or answered by other means).
    Consume,
}

/// Why the I/O layer could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// `--io` named something else.
    #[error("unknown I/O backend {0:?}: use \"uring\" or \"mmsg\"")]
    UnknownBackend(String),
    /// A size in [`IoConfig`] is out of range.
    #[error("invalid I/O configuration: {0}")]
    Config(&'static str),
    /// The socket could not be created or bound.
    #[error("cannot bind a UDP socket to {addr}: {source} (is the address local and the port free of non-SO_REUSEPORT users?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A socket option the backend needs was refused.
    #[error("cannot set socket option {option}: {source}")]
    SocketOption {
        /// The option, e.g. `UDP_GRO`.
        option: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// io_uring itself cannot start here.
    #[error("io_uring is unavailable: {source} ({hint}); use the mmsg backend (--io mmsg)")]
    UringUnavailable {
        /// What the kernel said.
        source: std::io::Error,
        /// The likely cause for this error.
        hint: &'static str,
    },
    /// io_uring starts but lacks a feature the backend needs.
    #[error("io_uring lacks {feature}: {source}; upgrade the kernel or use the mmsg backend (--io mmsg)")]
    UringFeature {
        /// The missing feature and the kernel that has it.
        feature: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// Buffer memory could not be allocated.
    #[error("cannot allocate {bytes} bytes of I/O buffers; lower buffers or buffer_size")]
    Alloc {
        /// The size asked for.
        bytes: usize,
    },
    /// `send_to`/`send_gso` got more than one UDP datagram can carry.
    #[error(
        "datagram of {len} bytes is larger than a UDP datagram or the send buffer ({max} bytes)"
    )]
    TooLarge {
        /// The length given.
        len: usize,
        /// The largest allowed.
        max: usize,
    },
    /// `send_gso` got a segment size or buffer it cannot send.
    #[error("invalid GSO train: {0}")]
    Gso(&'static str),
    /// Receiving or waiting failed in a way that is not a per-datagram error.
    #[error("{op} failed: {source}")]
    Sys {
        /// The call that failed.
        op: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// One worker's I/O: a socket and the backend driving it.
///
/// The backend is chosen once; `poll` matches on it once per call and runs a
/// backend loop monomorphised over the callback, so there is no dynamic
/// dispatch per datagram.
#[derive(Debug)]
pub struct Io {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Uring(Box<uring::UringIo>),
    Mmsg(Box<mmsg::MmsgIo>),
}

impl Io {
    /// Builds exactly the `backend` asked for on `socket` (from
    /// [`bind_socket`]). `Uring` fails with [`IoError::UringUnavailable`] or
    /// [`IoError::UringFeature`] where io_uring cannot do the job.
    pub fn new(backend: Backend, socket: UdpSocket, cfg: IoConfig) -> Result<Self, IoError> {
        Self::new_with_link(backend, socket, None, cfg)
    }

    /// Like [`Io::new`], also receiving from `link` (when given): a second
    /// socket whose datagrams reach the same callback, in turn with the
    /// first's (a mesh relay's per-worker link port). Everything is sent
    /// from `socket`.
    pub fn new_with_link(
        backend: Backend,
        socket: UdpSocket,
        link: Option<UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Self, IoError> {
        cfg.validate()?;
        let inner = match backend {
            Backend::Uring => Inner::Uring(Box::new(
                uring::UringIo::new(socket, link, cfg).map_err(|f| f.error)?,
            )),
            Backend::Mmsg => Inner::Mmsg(Box::new(mmsg::MmsgIo::new(socket, link, cfg)?)),
        };
        Ok(Self { inner })
    }

    /// Like [`Io::new`], but when `Uring` cannot start, logs one warning
    /// saying why and uses `Mmsg` instead.
    pub fn start(backend: Backend, socket: UdpSocket, cfg: IoConfig) -> Result<Self, IoError> {
        Self::start_with_link(backend, socket, None, cfg)
    }

    /// [`Io::start`] with a second socket, as [`Io::new_with_link`].
    pub fn start_with_link(
        backend: Backend,
        socket: UdpSocket,
        link: Option<UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Self, IoError> {
        cfg.validate()?;
        match backend {
            Backend::Mmsg => Self::new_with_link(Backend::Mmsg, socket, link, cfg),
            Backend::Uring => match uring::UringIo::new(socket, link, cfg) {
                Ok(u) => Ok(Self {
                    inner: Inner::Uring(Box::new(u)),
                }),
                Err(failed) => {
                    tracing::warn!(
                        "io_uring backend cannot start ({}); falling back to the mmsg backend",
                        failed.error
                    );
                    Self::new_with_link(Backend::Mmsg, failed.socket, failed.link, cfg)
                }
            },
        }
    }

    /// The backend in use (after any fallback).
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Uring(_) => Backend::Uring,
            Inner::Mmsg(_) => Backend::Mmsg,
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        let socket = match &self.inner {
            Inner::Uring(u) => u.socket(),
            Inner::Mmsg(m) => m.socket(),
        };
        socket.local_addr().map_err(|source| IoError::Sys {
            op: "getsockname",
            source,
        })
    }

    /// The second socket's local address, if there is one.
    pub fn link_addr(&self) -> Option<SocketAddr> {
        let link = match &self.inner {
            Inner::Uring(u) => u.link(),
            Inner::Mmsg(m) => m.link(),
        };
        link.and_then(|l| l.local_addr().ok())
    }

    /// Sends one datagram from the second socket now (a mesh handshake,
    /// whose source port the peer answers to). `false` if there is no
    /// second socket or the send failed.
    pub fn send_from_link(&mut self, dst: SocketAddr, bytes: &[u8]) -> bool {
        let link = match &self.inner {
            Inner::Uring(u) => u.link(),
            Inner::Mmsg(m) => m.link(),
        };
        link.is_some_and(|l| l.send_to(bytes, dst).is_ok())
    }

    /// Waits up to `timeout` for datagrams, hands every one of them (each GRO
    /// segment separately, as exactly its bytes, with its source) to
    /// `handle` in arrival order, then sends those that got
    /// [`Action::Forward`] from the buffer they arrived in, grouping
    /// consecutive same-destination same-length datagrams of one receive
    /// buffer into one `UDP_SEGMENT` send. Datagrams queued with
    /// [`Io::send_to`] go out too.
    ///
    /// Returns early once datagrams arrived; returns with nothing received
    /// when the timeout passes. Per-datagram send errors are counted in
    /// [`IoStats`], never returned.
    pub fn poll<F>(&mut self, timeout: Duration, handle: &mut F) -> Result<PollStats, IoError>
    where
        F: FnMut(SocketAddr, &mut [u8]) -> Action,
    {
        match &mut self.inner {
            Inner::Uring(u) => u.poll(timeout, handle),
            Inner::Mmsg(m) => m.poll(timeout, handle),
        }
    }

    /// Queues a copy of `bytes` for `dst`; it is sent by the next
    /// [`Io::flush`] or [`Io::poll`] (or now, if the queue is full).
    /// Consecutive equal-size datagrams to one destination go out as one GSO
    /// send.
    pub fn send_to(&mut self, dst: SocketAddr, bytes: &[u8]) -> Result<(), IoError> {
        let (outbound, fd, stats) = self.outbound();
        outbound.send_to(fd, stats, dst, bytes)
    }

    /// Sends the equal-size datagrams laid out back to back in `buf`
    /// (`seg` bytes each, the last may be shorter) to `dst`, with as few
    /// `UDP_SEGMENT` calls as the kernel's limits allow, now. Waits for
    /// socket space when the send buffer is full. Returns the datagrams sent.
    pub fn send_gso(&mut self, dst: SocketAddr, buf: &[u8], seg: usize) -> Result<usize, IoError> {
        let (outbound, fd, stats) = self.outbound();
        outbound.send_gso(fd, stats, dst, buf, seg, tx::Backpressure::BLOCKING)
    }

    /// Like [`Io::send_gso`], but never waits: stops at the first
    /// `UDP_SEGMENT` group the socket has no room for and returns the
    /// datagrams sent until then (whole groups, in order), so the caller
    /// can do other work (drain its own receive side) and send the rest
    /// later.
    pub fn try_send_gso(
        &mut self,
        dst: SocketAddr,
        buf: &[u8],
        seg: usize,
    ) -> Result<usize, IoError> {
        let (outbound, fd, stats) = self.outbound();
        outbound.send_gso(fd, stats, dst, buf, seg, tx::Backpressure::NONBLOCKING)
    }

    /// Sends everything queued by [`Io::send_to`] and pushes pending
    /// submissions to the kernel.
    pub fn flush(&mut self) -> Result<(), IoError> {
        match &mut self.inner {
            Inner::Uring(u) => u.flush(),
            Inner::Mmsg(m) => m.flush(),
        }
    }

    fn outbound(&mut self) -> (&mut outbound::Outbound, std::os::fd::RawFd, &mut IoStats) {
        match &mut self.inner {
            Inner::Uring(u) => u.outbound(),
            Inner::Mmsg(m) => m.outbound(),
        }
    }

    /// Counters since construction.
    pub fn stats(&self) -> &IoStats {
        match &self.inner {
            Inner::Uring(u) => u.stats(),
            Inner::Mmsg(m) => m.stats(),
        }
    }
}

/// Hands each datagram of one received run to `handle` and records the
/// forwarded ones in `grouper`.
///
/// `run` is the payload of one receive: a single datagram, or with
/// `segment` (the `UDP_GRO` size) a coalesced run of `segment`-byte
/// datagrams, the last possibly shorter. `buf` names the receive buffer it
/// lies in, for the groups.
fn dispatch_run<F>(
    run: &mut [u8],
    buf: u32,
    src: SocketAddr,
    segment: Option<usize>,
    handle: &mut F,
    grouper: &mut group::Grouper,
    ps: &mut PollStats,
) where
    F: FnMut(SocketAddr, &mut [u8]) -> Action,
{
    if run.is_empty() {
        // A zero-length datagram is still a datagram.
        ps.received += 1;
        if let Action::Forward(dst) = handle(src, run) {
            grouper.push(dst, buf, run.as_ptr() as usize, 0);
            ps.forwarded += 1;
        }
        return;
    }
    let segment = segment.unwrap_or(run.len()).clamp(1, run.len());
    if segment < run.len() {
        ps.gro_runs += 1;
        ps.gro_segments += run.len().div_ceil(segment);
    }
    for datagram in run.chunks_mut(segment) {
        let len = datagram.len();
        ps.received += 1;
        ps.received_bytes += len;
        if let Action::Forward(dst) = handle(src, datagram) {
            grouper.push(dst, buf, datagram.as_ptr() as usize, len);
            ps.forwarded += 1;
        }
    }
}

/// The `errno` of an I/O error, 0 when there is none.
fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Time left until `deadline` (`None`: wait without end, capped at a day so
/// it fits every kernel timeout type).
fn remaining(deadline: Option<std::time::Instant>) -> Duration {
    const FOREVER: Duration = Duration::from_secs(86_400);
    deadline.map_or(FOREVER, |d| {
        d.saturating_duration_since(std::time::Instant::now())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Uring, Backend::Mmsg] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        let err = "epoll".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("uring"), "{err}");
    }

    #[test]
    fn dispatch_splits_runs_and_groups_forwards() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut run: Vec<u8> = (0..250u8).collect();
        let mut grouper = group::Grouper::new(8, true);
        let mut ps = PollStats::default();
        let mut seen = Vec::new();
        dispatch_run(
            &mut run,
            7,
            src,
            Some(100),
            &mut |from, d: &mut [u8]| {
                assert_eq!(from, src);
                seen.push(d.len());
                d[0] = 0xff;
                if d.len() == 100 {
                    Action::Forward(dst)
                } else {
                    Action::Consume
                }
            },
            &mut grouper,
            &mut ps,
        );
        assert_eq!(seen, [100, 100, 50]);
        assert_eq!(
            (ps.received, ps.forwarded, ps.gro_runs, ps.gro_segments),
            (3, 2, 1, 3)
        );
        assert_eq!(grouper.groups().len(), 1);
        assert_eq!(grouper.groups()[0].count, 2);
        assert_eq!((run[0], run[100], run[200]), (0xff, 0xff, 0xff));
    }

    #[test]
    fn dispatch_without_gro_is_one_datagram() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut run = [1u8; 30];
        let mut grouper = group::Grouper::new(8, true);
        let mut ps = PollStats::default();
        dispatch_run(
            &mut run,
            0,
            src,
            None,
            &mut |_, _: &mut [u8]| Action::Forward(src),
            &mut grouper,
            &mut ps,
        );
        dispatch_run(
            &mut [],
            0,
            src,
            Some(5),
            &mut |_, _: &mut [u8]| Action::Forward(src),
            &mut grouper,
            &mut ps,
        );
        assert_eq!((ps.received, ps.forwarded, ps.gro_runs), (2, 2, 0));
        assert_eq!(grouper.groups().len(), 2);
    }

    #[test]
    fn config_validation_rejects_nonsense() {
        assert!(IoConfig::default().validate().is_ok());
        let zero = IoConfig {
            buffers: 0,
            ..IoConfig::default()
        };
        assert!(zero.validate().is_err());
        let tiny = IoConfig {
            buffer_size: 100,
            ..IoConfig::default()
        };
        assert!(tiny.validate().is_err());
        let no_batch = IoConfig {
            batch: 0,
            ..IoConfig::default()
        };
        assert!(no_batch.validate().is_err());
    }
}
