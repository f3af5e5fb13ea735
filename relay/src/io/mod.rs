//! I/O backends: they move datagrams between a UDP socket and the per-frame
//! logic, and nothing else.
//!
//! A worker thread owns one [`Io`]: one `SO_REUSEPORT` socket and one
//! backend. [`Io::poll`] receives a batch, hands every datagram (each
//! `UDP_GRO` segment separately) to a [`Handler`] that may rewrite it in
//! place and answers with an [`Action`], naming where a forwarded one goes by
//! a word-sized key ([`Dest`]), then sends the forwarded datagrams straight
//! from the buffers they arrived in, gathered per key across the batch: one
//! `UDP_SEGMENT` send of equal-size datagrams, an iovec per stretch of them,
//! wherever they lie (`gather`). The handler resolves a key to its address
//! once per send ([`Handler::resolve`]), not per datagram.
//!
//! Three backends (see DESIGN.md §3):
//! - [`Backend::Uring`]: io_uring with a multishot `RecvMsg` into a small
//!   provided-buffer ring, `SendMsg` per group, one submit per batch.
//! - [`Backend::Mmsg`]: `recvmmsg`/`sendmmsg`, where io_uring is blocked
//!   (seccomp profiles of container runtimes often block it).
//! - [`Backend::Glommio`] (with the crate's `glommio` feature): a glommio
//!   executor on the worker's thread, reading GRO runs with its `UdpSocket`
//!   and splitting them by the frames' own lengths, sending `UDP_SEGMENT`
//!   stretches; a measured comparison (`glommio`'s module docs say what it
//!   cannot do).
//!
//! [`Io::start`] prefers the one asked for and falls back (glommio to
//! uring, uring to mmsg), saying so once. Linux only. All buffers are
//! allocated at construction: the steady state of `uring` and `mmsg`
//! allocates nothing (glommio allocates per batch inside its executor).
//!
//! An `Io` must be created on the thread that polls it (the io_uring ring is
//! set up `SINGLE_ISSUER`); it is deliberately not `Send`.
//!
//! Where things are: this file is the entry point ([`Io`] and what it
//! re-exports); `config` ([`Backend`], [`IoConfig`]), `error` ([`IoError`]),
//! `limits` (the kernel's UDP send limits), `dispatch` (what every
//! backend does with a received run) and `spin` (busy polling's budget)
//! are its vocabulary; `uring`, `mmsg` and `glommio` are the backends;
//! `gather`, `group`, `tx`, `staging` and `outbound` the send side
//! they share; `cmsg`, `sockaddr`, `region` and `socket` the kernel-facing
//! pieces. No module below this one imports from it: siblings use each
//! other by their own paths.

mod cmsg;
mod config;
mod dispatch;
mod error;
mod gather;
#[cfg(feature = "glommio")]
mod glommio;
mod group;
mod limits;
mod mmsg;
mod outbound;
mod region;
mod sockaddr;
mod socket;
mod spin;
mod staging;
mod stats;
pub mod train;
mod tx;
mod uring;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub use config::{Backend, Grouping, IoConfig, BUFFERS, MAX_BUSY_POLL};
pub use dispatch::{Action, Dest, Dests, Handler, GROUP};
pub use error::IoError;
pub use limits::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};
pub use socket::bind_socket;
pub use stats::{BusyPoll, ErrnoCounts, IoStats, PollStats, BATCH_BUCKETS};

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
    #[cfg(feature = "glommio")]
    Glommio(Box<self::glommio::GlommioIo>),
}

impl std::os::fd::AsFd for Io {
    /// The socket everything is sent from (for a [`train::TrainSender`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.inner {
            Inner::Uring(u) => u.socket().as_fd(),
            Inner::Mmsg(m) => m.socket().as_fd(),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.socket().as_fd(),
        }
    }
}

impl Io {
    /// Builds exactly the `backend` asked for on `socket` (from
    /// [`bind_socket`]). `Uring` fails with [`IoError::UringUnavailable`] or
    /// [`IoError::UringFeature`] where io_uring cannot do the job;
    /// `Glommio` with [`IoError::GlommioUnavailable`] (e.g. too little
    /// locked memory) or, in a build without the `glommio` feature,
    /// [`IoError::GlommioNotBuilt`].
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
            Backend::Glommio => Self::glommio(socket, link, cfg).map_err(|(error, _, _)| error)?,
        };
        Ok(Self { inner })
    }

    /// The glommio backend, or why not with the sockets back.
    #[allow(clippy::type_complexity)]
    fn glommio(
        socket: UdpSocket,
        link: Option<UdpSocket>,
        cfg: IoConfig,
    ) -> Result<Inner, (IoError, UdpSocket, Option<UdpSocket>)> {
        if link.is_some() {
            return Err((IoError::NoLinkSocket("glommio"), socket, link));
        }
        #[cfg(feature = "glommio")]
        {
            self::glommio::GlommioIo::new(socket, cfg)
                .map(|g| Inner::Glommio(Box::new(g)))
                .map_err(|f| (f.error, f.socket, None))
        }
        #[cfg(not(feature = "glommio"))]
        {
            let _ = cfg;
            Err((IoError::GlommioNotBuilt, socket, None))
        }
    }

    /// Like [`Io::new`], but when `Uring` cannot start, logs one warning
    /// saying why and uses `Mmsg` instead; when `Glommio` cannot start,
    /// logs one warning saying why and does the same as for `Uring`.
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
        let (socket, link) = match backend {
            Backend::Glommio => match Self::glommio(socket, link, cfg) {
                Ok(inner) => return Ok(Self { inner }),
                Err((error, socket, link)) => {
                    tracing::warn!(
                        "glommio backend cannot start ({error}); falling back to the uring backend"
                    );
                    (socket, link)
                }
            },
            _ => (socket, link),
        };
        match backend {
            Backend::Mmsg => Self::new_with_link(Backend::Mmsg, socket, link, cfg),
            Backend::Uring | Backend::Glommio => match uring::UringIo::new(socket, link, cfg) {
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
            #[cfg(feature = "glommio")]
            Inner::Glommio(_) => Backend::Glommio,
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        let socket = match &self.inner {
            Inner::Uring(u) => u.socket(),
            Inner::Mmsg(m) => m.socket(),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.socket(),
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
            #[cfg(feature = "glommio")]
            Inner::Glommio(_) => None,
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
            #[cfg(feature = "glommio")]
            Inner::Glommio(_) => None,
        };
        link.is_some_and(|l| l.send_to(bytes, dst).is_ok())
    }

    /// Waits up to `timeout` for datagrams, hands every one of them (each GRO
    /// segment separately, as exactly its bytes, with its source) to
    /// `handle` in arrival order, then sends those that got
    /// [`Action::Forward`] from the buffers they arrived in, gathering the
    /// batch's equal-length datagrams for one destination key, in order,
    /// into `UDP_SEGMENT` sends (as [`IoConfig::grouping`] says) to the
    /// address [`Handler::resolve`] gave for the key. Everything gathered is
    /// handed to the kernel (or dropped, on an error) before `poll`
    /// returns: the keys `handle` returned mean nothing to the next poll. Datagrams queued with [`Io::send_to`] go out too.
    ///
    /// Returns early once datagrams arrived; returns with nothing received
    /// when the timeout passes. With [`IoConfig::busy_poll`], the wait
    /// spins for up to that long (never longer than `timeout`) before it
    /// blocks in the kernel. Per-datagram send errors are counted in
    /// [`IoStats`], never returned.
    pub fn poll<F>(&mut self, timeout: Duration, handle: &mut F) -> Result<PollStats, IoError>
    where
        F: Handler,
    {
        match &mut self.inner {
            Inner::Uring(u) => u.poll(timeout, handle),
            Inner::Mmsg(m) => m.poll(timeout, handle),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.poll(timeout, handle),
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

    /// Sends everything queued by [`Io::send_to`] and pushes pending
    /// submissions to the kernel.
    pub fn flush(&mut self) -> Result<(), IoError> {
        match &mut self.inner {
            Inner::Uring(u) => u.flush(),
            Inner::Mmsg(m) => m.flush(),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.flush(),
        }
    }

    fn outbound(&mut self) -> (&mut outbound::Outbound, std::os::fd::RawFd, &mut IoStats) {
        match &mut self.inner {
            Inner::Uring(u) => u.outbound(),
            Inner::Mmsg(m) => m.outbound(),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.outbound(),
        }
    }

    /// Changes the busy-poll budget ([`IoConfig::busy_poll`]) from the next
    /// poll on: for a receiver whose caller decides late how it waits (the
    /// load generator's, measuring with the relays' wait strategy). The
    /// glommio backend does not busy poll and ignores it.
    pub fn set_busy_poll(&mut self, budget: Option<Duration>) -> Result<(), IoError> {
        IoConfig::check_busy_poll(budget)?;
        match &mut self.inner {
            Inner::Uring(u) => u.busy_poll = budget,
            Inner::Mmsg(m) => m.busy_poll = budget,
            // glommio's executor decides how it waits: no busy polling.
            #[cfg(feature = "glommio")]
            Inner::Glommio(_) => {}
        }
        Ok(())
    }

    /// Counters since construction.
    pub fn stats(&self) -> &IoStats {
        match &self.inner {
            Inner::Uring(u) => u.stats(),
            Inner::Mmsg(m) => m.stats(),
            #[cfg(feature = "glommio")]
            Inner::Glommio(g) => g.stats(),
        }
    }
}
