//! Why the I/O layer could not start or run.

use std::net::SocketAddr;

/// Why the I/O layer could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// `--io` named something else.
    #[error("unknown I/O backend {0:?}: use \"uring\", \"mmsg\" or \"glommio\"")]
    UnknownBackend(String),
    /// A size in [`IoConfig`](super::IoConfig) is out of range.
    #[error("invalid I/O configuration: {0}")]
    Config(&'static str),
    /// [`IoConfig::buffers`](super::IoConfig::buffers) is outside
    /// [`BUFFERS`](super::BUFFERS).
    #[error("buffers = {count} must be between {min} and {max}")]
    BufferCount {
        /// The count given.
        count: usize,
        /// The fewest allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
    /// [`IoConfig::busy_poll`](super::IoConfig::busy_poll) is above
    /// [`MAX_BUSY_POLL`](super::MAX_BUSY_POLL).
    #[error("busy poll of {micros} us is more than {max} us: the budget is in microseconds")]
    BusyPoll {
        /// The budget given, in microseconds.
        micros: u128,
        /// The most allowed, in microseconds.
        max: u128,
    },
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
    /// The glommio backend cannot start here.
    #[error("the glommio backend cannot start: {reason} ({hint}); or use --io uring or mmsg")]
    GlommioUnavailable {
        /// What glommio or the kernel said.
        reason: String,
        /// What to fix.
        hint: &'static str,
    },
    /// This build has no glommio backend.
    #[error("this build has no glommio backend: build with the relay crate's `glommio` feature (cargo build --features glommio), or use --io uring or mmsg")]
    GlommioNotBuilt,
    /// The backend cannot receive from a second socket (a mesh link port).
    #[error("the {0} backend takes one socket: a mesh relay's link ports need --io uring or mmsg")]
    NoLinkSocket(&'static str),
    /// Buffer memory could not be allocated.
    #[error("cannot allocate {bytes} bytes of I/O buffers; lower buffers or buffer_size")]
    Alloc {
        /// The size asked for.
        bytes: usize,
    },
    /// `send_to` or a train send got more than one UDP datagram can carry.
    #[error(
        "datagram of {len} bytes is larger than a UDP datagram or the send buffer ({max} bytes)"
    )]
    TooLarge {
        /// The length given.
        len: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A train send got a segment size or buffer it cannot send.
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

/// The `errno` of an I/O error, 0 when there is none.
pub(crate) fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}
