//! What a worker's I/O is built from: the backend and the sizes.

use std::fmt;
use std::str::FromStr;

use super::error::IoError;

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
    pub(crate) fn validate(&self) -> Result<(), IoError> {
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
