//! What a worker's I/O is built from: the backend and the sizes.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use super::error::IoError;

/// Which I/O backend drives a worker's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring: multishot receive into a provided-buffer ring, batched sends.
    Uring,
    /// `recvmmsg`/`sendmmsg` with GRO/GSO.
    Mmsg,
    /// A glommio executor on the worker's thread, its `UdpSocket` reading
    /// GRO runs and sending `UDP_SEGMENT` stretches: a comparison backend,
    /// built with the relay's `glommio` feature.
    Glommio,
}

impl Backend {
    /// The name used on the command line and in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Mmsg => "mmsg",
            Self::Glommio => "glommio",
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
            "glommio" => Ok(Self::Glommio),
            other => Err(IoError::UnknownBackend(other.to_owned())),
        }
    }
}

/// How forwarded datagrams are grouped into `UDP_SEGMENT` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Grouping {
    /// Per destination across the whole batch, wherever the datagrams lie
    /// in the receive buffers: one `sendmsg` with an iovec per stretch of
    /// back-to-back datagrams. Drops and interleaved destinations do not
    /// split sends; nothing is copied.
    #[default]
    Gather,
    /// Only consecutive forwarded datagrams lying back to back in one
    /// receive buffer share a send (the grouping before gathering; kept to
    /// measure against).
    Contiguous,
    /// Like `Contiguous`, but a forwarded datagram for the same destination
    /// as the forwarded one before it in its receive buffer is moved down
    /// over the gap a dropped one left (one copy per such datagram; kept
    /// to measure against).
    Compact,
}

impl Grouping {
    /// The name used on command lines.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gather => "gather",
            Self::Contiguous => "contiguous",
            Self::Compact => "compact",
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Grouping {
    type Err = IoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Gather, Self::Contiguous, Self::Compact]
            .into_iter()
            .find(|g| g.name() == s)
            .ok_or(IoError::Config(
                "unknown grouping: use \"gather\", \"contiguous\" or \"compact\"",
            ))
    }
}

/// The receive-buffer counts a worker accepts: [`IoConfig::buffers`], and
/// `buffers` in the relay's config file (both checked by
/// [`IoConfig::check_buffers`]). At least 2: with one, the multishot receive
/// stops every time that buffer is being handled or sent from. At most
/// 4096: buffer memory and send slots (64 per buffer with GRO) grow with
/// the count, and small rings are the fast ones (DESIGN.md §3).
pub const BUFFERS: RangeInclusive<usize> = 2..=4096;

/// The longest busy-poll budget a worker accepts ([`IoConfig::busy_poll`]):
/// past a few hundred microseconds spinning buys no latency that sleeping
/// costs, only CPU; 10 ms is a generous bound that still catches a value
/// given in the wrong unit.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Sizes and switches of one worker's I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoConfig {
    /// Datagrams (GRO segments counted one by one) handled per poll, at most;
    /// a soft cap: the receive buffer being handled when it is reached is
    /// finished.
    pub batch: usize,
    /// Receive buffers: the provided-buffer ring's size for `uring`, the
    /// `recvmmsg` vector length for `mmsg`. Keep it small so buffer memory
    /// stays in cache (DESIGN.md §3: 64 beat 256 by 40 %). In [`BUFFERS`].
    pub buffers: usize,
    /// Payload capacity of each receive buffer. 65536 holds any GRO run
    /// (the kernel caps one at 64 KiB), so nothing is ever truncated.
    pub buffer_size: usize,
    /// Ask the kernel to coalesce received runs (`UDP_GRO`).
    pub gro: bool,
    /// Send equal-size runs with one `UDP_SEGMENT` call.
    pub gso: bool,
    /// How forwarded datagrams are grouped into sends.
    pub grouping: Grouping,
    /// Busy polling: before a poll blocks in the kernel waiting for
    /// datagrams, spin for up to this long looking for them (as poll-mode
    /// drivers do), so a datagram arriving meanwhile is taken without a
    /// sleep and a wake-up. `None` (the default): wait in the kernel at
    /// once. Spinning burns the core: the thread's CPU time counts it, and
    /// [`super::IoStats::busy_poll_time_ns`] says how much of it was
    /// spinning. At most [`MAX_BUSY_POLL`].
    pub busy_poll: Option<Duration>,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            batch: 1024,
            buffers: 64,
            buffer_size: 65_536,
            gro: true,
            gso: true,
            grouping: Grouping::Gather,
            busy_poll: None,
        }
    }
}

impl IoConfig {
    /// Checks a receive-buffer count against [`BUFFERS`]; the relay's
    /// config file is checked with this too.
    pub fn check_buffers(count: usize) -> Result<(), IoError> {
        if BUFFERS.contains(&count) {
            Ok(())
        } else {
            Err(IoError::BufferCount {
                count,
                min: *BUFFERS.start(),
                max: *BUFFERS.end(),
            })
        }
    }

    /// Checks a busy-poll budget against [`MAX_BUSY_POLL`]; the relay's
    /// config file is checked with this too.
    pub fn check_busy_poll(budget: Option<Duration>) -> Result<(), IoError> {
        match budget {
            Some(b) if b > MAX_BUSY_POLL => Err(IoError::BusyPoll {
                micros: b.as_micros(),
                max: MAX_BUSY_POLL.as_micros(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks the sizes; both backends call it.
    pub(crate) fn validate(&self) -> Result<(), IoError> {
        if self.batch == 0 {
            return Err(IoError::Config("batch must be at least 1"));
        }
        Self::check_buffers(self.buffers)?;
        if self.buffer_size < 2048 || self.buffer_size > 1 << 20 {
            return Err(IoError::Config(
                "buffer_size must be between 2048 and 1 MiB (65536 holds any GRO run)",
            ));
        }
        Self::check_busy_poll(self.busy_poll)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Uring, Backend::Mmsg, Backend::Glommio] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        let err = "epoll".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("uring"), "{err}");
        assert!(err.to_string().contains("glommio"), "{err}");
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

    #[test]
    fn buffer_count_range_is_enforced_at_both_ends() {
        for (count, ok) in [
            (1, false),
            (2, true),
            (64, true),
            (4096, true),
            (4097, false),
        ] {
            let cfg = IoConfig {
                buffers: count,
                ..IoConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "buffers = {count}");
            assert_eq!(
                IoConfig::check_buffers(count).is_ok(),
                ok,
                "buffers = {count}"
            );
        }
        let err = IoConfig::check_buffers(1).unwrap_err().to_string();
        assert_eq!(err, "buffers = 1 must be between 2 and 4096");
    }

    #[test]
    fn busy_poll_budget_is_bounded() {
        for (budget, ok) in [
            (None, true),
            (Some(Duration::ZERO), true),
            (Some(Duration::from_micros(50)), true),
            (Some(MAX_BUSY_POLL), true),
            (Some(MAX_BUSY_POLL + Duration::from_nanos(1)), false),
            (Some(Duration::from_secs(1)), false),
        ] {
            let cfg = IoConfig {
                busy_poll: budget,
                ..IoConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "busy_poll = {budget:?}");
        }
        let err = IoConfig::check_busy_poll(Some(Duration::from_secs(1)))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "busy poll of 1000000 us is more than 10000 us: the budget is in microseconds"
        );
    }
}
