//! What both backends do with a received run: hand each datagram to the
//! per-frame callback and group the forwarded ones for sending; and the
//! deadline arithmetic of their poll loops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::group::Grouper;
use super::stats::PollStats;

/// What the per-frame logic decided about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram (as the callback left it, same length) there.
    Forward(SocketAddr),
    /// Nothing to send (dropped, or answered by other means).
    Consume,
}

/// Hands each datagram of one received run to `handle` and records the
/// forwarded ones in `grouper`.
///
/// `run` is the payload of one receive: a single datagram, or with
/// `segment` (the `UDP_GRO` size) a coalesced run of `segment`-byte
/// datagrams, the last possibly shorter. `buf` names the receive buffer it
/// lies in, for the groups.
pub(crate) fn dispatch_run<F>(
    run: &mut [u8],
    buf: u32,
    src: SocketAddr,
    segment: Option<usize>,
    handle: &mut F,
    grouper: &mut Grouper,
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

/// Time left until `deadline` (`None`: wait without end, capped at a day so
/// it fits every kernel timeout type).
pub(crate) fn remaining(deadline: Option<Instant>) -> Duration {
    const FOREVER: Duration = Duration::from_secs(86_400);
    deadline.map_or(FOREVER, |d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_splits_runs_and_groups_forwards() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut run: Vec<u8> = (0..250u8).collect();
        let mut grouper = Grouper::new(8, true);
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
        let mut grouper = Grouper::new(8, true);
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
}
