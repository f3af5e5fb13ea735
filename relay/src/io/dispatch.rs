//! What both backends do with a received run: hand each datagram to the
//! per-frame callback and group the forwarded ones for sending; and the
//! deadline arithmetic of their poll loops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::Grouping;
use super::gather::Gather;
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
/// forwarded ones in `gather`.
///
/// `run` is the payload of one receive: a single datagram, or with
/// `segment` (the `UDP_GRO` size) a coalesced run of `segment`-byte
/// datagrams, the last possibly shorter. `buf` names the receive buffer it
/// lies in, for the sends.
///
/// With [`Grouping::Compact`], a forwarded datagram for the same
/// destination as the forwarded one before it in this run is moved down
/// to follow it when a dropped datagram lay between (the one copy that
/// grouping costs).
pub(crate) fn dispatch_run<F>(
    run: &mut [u8],
    buf: u32,
    src: SocketAddr,
    segment: Option<usize>,
    handle: &mut F,
    gather: &mut Gather,
    ps: &mut PollStats,
) where
    F: FnMut(SocketAddr, &mut [u8]) -> Action,
{
    if run.is_empty() {
        // A zero-length datagram is still a datagram.
        ps.received += 1;
        if let Action::Forward(dst) = handle(src, run) {
            gather.push(dst, buf, run.as_ptr() as usize, 0);
            ps.forwarded += 1;
        }
        return;
    }
    let segment = segment.unwrap_or(run.len()).clamp(1, run.len());
    if segment < run.len() {
        ps.gro_runs += 1;
        ps.gro_segments += run.len().div_ceil(segment);
    }
    let compact = gather.grouping() == Grouping::Compact;
    // Compact: the destination of the last forwarded datagram of this run
    // and where it ends.
    let mut tail: Option<(SocketAddr, usize)> = None;
    let base = run.as_ptr() as usize;
    let mut off = 0;
    while off < run.len() {
        let end = run.len().min(off + segment);
        let len = end - off;
        ps.received += 1;
        ps.received_bytes += len;
        if let Action::Forward(dst) = handle(src, &mut run[off..end]) {
            let mut at = off;
            if compact {
                if let Some((d, t)) = tail {
                    if d == dst && t < off {
                        run.copy_within(off..end, t);
                        at = t;
                    }
                }
                tail = Some((dst, at + len));
            }
            gather.push(dst, buf, base + at, len);
            ps.forwarded += 1;
        }
        off = end;
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
        let mut gather = Gather::new(8, true, Grouping::Gather);
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
            &mut gather,
            &mut ps,
        );
        assert_eq!(seen, [100, 100, 50]);
        assert_eq!(
            (ps.received, ps.forwarded, ps.gro_runs, ps.gro_segments),
            (3, 2, 1, 3)
        );
        assert_eq!(gather.sends().len(), 1);
        assert_eq!(gather.sends()[0].count, 2);
        assert_eq!((run[0], run[100], run[200]), (0xff, 0xff, 0xff));
    }

    #[test]
    fn dispatch_without_gro_is_one_datagram() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut run = [1u8; 30];
        let mut gather = Gather::new(8, true, Grouping::Gather);
        let mut ps = PollStats::default();
        dispatch_run(
            &mut run,
            0,
            src,
            None,
            &mut |_, _: &mut [u8]| Action::Forward(src),
            &mut gather,
            &mut ps,
        );
        dispatch_run(
            &mut [],
            0,
            src,
            Some(5),
            &mut |_, _: &mut [u8]| Action::Forward(src),
            &mut gather,
            &mut ps,
        );
        assert_eq!((ps.received, ps.forwarded, ps.gro_runs), (2, 2, 0));
        assert_eq!(gather.sends().len(), 2);
    }

    #[test]
    fn compact_closes_the_gap_of_a_dropped_datagram() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:2".parse().unwrap();
        // Five datagrams of 10 bytes, each filled with its index; the
        // second is dropped.
        let mut run: Vec<u8> = (0..50u8).map(|i| i / 10).collect();
        let base = run.as_ptr() as usize;
        let mut gather = Gather::new(8, true, Grouping::Compact);
        let mut ps = PollStats::default();
        dispatch_run(
            &mut run,
            0,
            src,
            Some(10),
            &mut |_, d: &mut [u8]| {
                if d[0] == 1 {
                    Action::Consume
                } else {
                    Action::Forward(dst)
                }
            },
            &mut gather,
            &mut ps,
        );
        assert_eq!(gather.sends().len(), 1);
        let s = gather.sends()[0];
        assert_eq!((s.count, s.len, s.stretches), (4, 40, 1));
        let t = gather.stretches(&s).next().unwrap();
        assert_eq!(t.addr, base);
        let sent: Vec<u8> = run[..40].iter().step_by(10).copied().collect();
        assert_eq!(sent, [0, 2, 3, 4]);
    }
}
