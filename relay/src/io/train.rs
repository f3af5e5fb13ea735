//! Sending trains of equal-size datagrams from any UDP socket: the
//! sending half of a load generator or a test, not of the relay.
//!
//! A train is `buf` holding datagrams of `segment` bytes back to back (the
//! last may be shorter), all for one destination. [`TrainSender`] sends it
//! with as few `sendmmsg` calls as the kernel's limits allow, one message
//! per `UDP_SEGMENT` group, from a socket the caller owns (an [`Io`]'s, so
//! the same socket keeps receiving through it). When the kernel refuses
//! GSO the sender falls back to one datagram per message for good.
//!
//! [`Io`]: super::Io

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use super::error::IoError;
use super::stats::IoStats;
use super::tx::{Backpressure, SyncTx};

/// What one send of a train did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainSent {
    /// Datagrams from the front of the train that are done with: sent, or
    /// dropped because the kernel refused them for a reason other than a
    /// full socket (counted in [`TrainSender::stats`]). The caller resumes
    /// the train after these.
    pub consumed: usize,
    /// Of those, the datagrams the kernel accepted.
    pub sent: usize,
}

/// Sends trains of equal-size datagrams (see the module docs).
#[derive(Debug)]
pub struct TrainSender {
    tx: SyncTx,
    gso: bool,
    stats: IoStats,
}

impl TrainSender {
    /// A sender that groups datagrams with `UDP_SEGMENT` when `gso`.
    pub fn new(gso: bool) -> TrainSender {
        TrainSender {
            tx: SyncTx::new(64),
            gso,
            stats: IoStats::default(),
        }
    }

    /// Sends the whole train from `socket` to `dst` now, waiting for
    /// send-buffer space when the socket is full (up to 5 s per group).
    pub fn send(
        &mut self,
        socket: &impl AsFd,
        dst: SocketAddr,
        buf: &[u8],
        segment: usize,
    ) -> Result<TrainSent, IoError> {
        self.send_with(socket, dst, buf, segment, Backpressure::BLOCKING)
    }

    /// Like [`TrainSender::send`], but never waits: stops at the first
    /// group the socket has no room for, so the caller can do other work
    /// (drain its own receive side) and send the rest later.
    pub fn try_send(
        &mut self,
        socket: &impl AsFd,
        dst: SocketAddr,
        buf: &[u8],
        segment: usize,
    ) -> Result<TrainSent, IoError> {
        self.send_with(socket, dst, buf, segment, Backpressure::NONBLOCKING)
    }

    /// Counters of everything this sender sent or dropped.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn send_with(
        &mut self,
        socket: &impl AsFd,
        dst: SocketAddr,
        buf: &[u8],
        segment: usize,
        policy: Backpressure,
    ) -> Result<TrainSent, IoError> {
        let fd = socket.as_fd().as_raw_fd();
        let out = self
            .tx
            .send_train(fd, (dst, buf, segment), self.gso, policy, &mut self.stats)?;
        self.stats.send_calls += out.send_calls as u64;
        self.stats.syscalls += out.syscalls as u64;
        if out.gso_refused {
            self.gso = false;
        }
        Ok(TrainSent {
            consumed: out.datagrams + out.dropped,
            sent: out.datagrams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn a_train_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = Vec::new();
        for i in 0..100u8 {
            buf.extend_from_slice(&[i; 1200]);
        }
        buf.extend_from_slice(&[200; 500]);
        let mut sender = TrainSender::new(true);
        let sent = sender
            .send(&tx, rx.local_addr().unwrap(), &buf, 1200)
            .unwrap();
        assert_eq!(
            sent,
            TrainSent {
                consumed: 101,
                sent: 101
            }
        );
        let mut got = [0u8; 2048];
        for i in 0..100u8 {
            let n = rx.recv(&mut got).unwrap();
            assert_eq!((n, got[0], got[n - 1]), (1200, i, i));
        }
        assert_eq!(rx.recv(&mut got).unwrap(), 500);
        assert_eq!(sender.stats().datagrams_out, 101);
        assert!(sender.stats().send_calls < 101, "grouped with UDP_SEGMENT");
    }

    #[test]
    fn bad_segment_sizes_are_refused() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut sender = TrainSender::new(true);
        assert!(sender.send(&tx, dst, &[0u8; 100], 0).is_err());
        assert!(sender.try_send(&tx, dst, &[0u8; 100], 70_000).is_err());
    }
}
