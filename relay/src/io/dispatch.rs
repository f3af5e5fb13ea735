//! What every backend does with a received run: hand each datagram to the
//! per-frame [`Handler`] and gather the forwarded ones for sending; and the
//! deadline arithmetic of their poll loops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::Grouping;
use super::gather::Gather;
use super::stats::PollStats;

/// Where a forwarded datagram goes, as the handler names it: a word-sized
/// key (a relay worker's next-hop id), resolved to an address by
/// [`Handler::resolve`] once per send, not per datagram.
///
/// A key names one destination for the duration of one [`super::Io::poll`]
/// only: the backends send (and forget) everything gathered in a poll
/// before it returns, so a key is never resolved, nor joined to a send, in
/// a poll other than the one whose handler returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dest(pub u32);

/// What the per-frame logic decided about one datagram.
///
/// A word (the tag and a [`Dest`]): returned in a register, per datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram (as the handler left it, same length) to the
    /// destination this key resolves to.
    Forward(Dest),
    /// Nothing to send (dropped, or answered by other means).
    Consume,
}

const _: () = assert!(std::mem::size_of::<Action>() <= 8);

/// The per-frame logic an [`super::Io::poll`] runs: judge each datagram,
/// and say where a forwarded one's key leads.
///
/// `resolve` is called when the gather opens a send for a key: once per
/// key and gathered batch (a `uring` or `glommio` poll, one `recvmmsg` of
/// `mmsg`) while the key's newest send is known (a send that is full or
/// closed passes its address on to the next one for the same key), and at
/// most once per send otherwise. Always within the poll in which `handle`
/// returned the key, after that `handle` call. Datagrams for different keys
/// never share a send, even when the keys resolve to one address; order is
/// kept per key.
///
/// A closure `FnMut(SocketAddr, &mut [u8]) -> Action` is a handler that
/// resolves nothing: for receivers that only consume (a datagram it
/// forwards is dropped and counted in [`super::IoStats::unresolved`]). A
/// handler with fixed destinations is a [`Dests`].
pub trait Handler {
    /// Judges one datagram from `from`, possibly rewriting it in place.
    fn handle(&mut self, from: SocketAddr, datagram: &mut [u8]) -> Action;

    /// Judges `datagrams` (at most [`GROUP`], consecutive segments of one
    /// received run, all from `from`) in order, as `handle` on each in turn
    /// would, writing `actions[i]` for `datagrams[i]`. A handler that
    /// gains from seeing several frames at once (a relay worker computes
    /// their hop tags together) overrides it.
    #[inline]
    fn handle_group(
        &mut self,
        from: SocketAddr,
        datagrams: &mut [&mut [u8]],
        actions: &mut [Action],
    ) {
        for (datagram, action) in datagrams.iter_mut().zip(actions) {
            *action = self.handle(from, datagram);
        }
    }

    /// The address `dest` (returned by `handle` in this poll) stands for;
    /// `None` drops the datagrams of the send being opened (counted in
    /// [`super::IoStats::unresolved`]).
    fn resolve(&mut self, dest: Dest) -> Option<SocketAddr>;
}

impl<F> Handler for F
where
    F: FnMut(SocketAddr, &mut [u8]) -> Action,
{
    #[inline]
    fn handle(&mut self, from: SocketAddr, datagram: &mut [u8]) -> Action {
        self(from, datagram)
    }

    #[inline]
    fn resolve(&mut self, _: Dest) -> Option<SocketAddr> {
        None
    }
}

/// A handler whose destinations are a fixed list: `Dest(i)` is the `i`th
/// address of `addrs` (a bare hop's single destination, a test's
/// receivers), held as any `AsRef<[SocketAddr]>` (an array, a `Vec`, a
/// slice).
#[derive(Debug)]
pub struct Dests<A, F> {
    addrs: A,
    handle: F,
}

impl<A, F> Dests<A, F>
where
    A: AsRef<[SocketAddr]>,
    F: FnMut(SocketAddr, &mut [u8]) -> Action,
{
    /// `handle` judges the datagrams; the keys it returns index `addrs`.
    pub fn new(addrs: A, handle: F) -> Self {
        Self { addrs, handle }
    }
}

impl<A, F> Handler for Dests<A, F>
where
    A: AsRef<[SocketAddr]>,
    F: FnMut(SocketAddr, &mut [u8]) -> Action,
{
    #[inline]
    fn handle(&mut self, from: SocketAddr, datagram: &mut [u8]) -> Action {
        (self.handle)(from, datagram)
    }

    #[inline]
    fn resolve(&mut self, dest: Dest) -> Option<SocketAddr> {
        self.addrs.as_ref().get(dest.0 as usize).copied()
    }
}

/// Most datagrams the dispatch of a received run hands to
/// [`Handler::handle_group`] at once: a relay worker's datapath computes hop
/// tags four frames at a time (`proto::hoptag::lanes::LANES`).
pub const GROUP: usize = 4;

/// Hands the datagrams of one received run to `handler` (up to [`GROUP`]
/// at a time when the run holds several) and records the forwarded ones
/// in `gather`.
///
/// `run` is the payload of one receive: a single datagram, or with
/// `segment` (the `UDP_GRO` size) a coalesced run of `segment`-byte
/// datagrams, the last possibly shorter. `buf` names the receive buffer it
/// lies in, for the sends.
///
/// With [`Grouping::Compact`], a forwarded datagram for the same
/// destination key as the forwarded one before it in this run is moved
/// down to follow it when a dropped datagram lay between (the one copy that
/// grouping costs).
pub(crate) fn dispatch_run<H>(
    run: &mut [u8],
    buf: u32,
    src: SocketAddr,
    segment: Option<usize>,
    handler: &mut H,
    gather: &mut Gather,
    ps: &mut PollStats,
) where
    H: Handler + ?Sized,
{
    if run.is_empty() {
        // A zero-length datagram is still a datagram.
        ps.received += 1;
        if let Action::Forward(dest) = handler.handle(src, run) {
            gather_forwarded(gather, handler, ps, dest, buf, run.as_ptr() as usize, 0);
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
    let mut tail: Option<(Dest, usize)> = None;
    let base = run.as_ptr() as usize;
    let mut off = 0;
    while off < run.len() {
        // The next group: up to GROUP whole segments (the last of the run
        // possibly shorter), judged before any is gathered.
        let mut lens = [0usize; GROUP];
        let mut actions = [Action::Consume; GROUP];
        let mut datagrams: [&mut [u8]; GROUP] = Default::default();
        let mut n = 0;
        for ((slot, len), datagram) in datagrams
            .iter_mut()
            .zip(&mut lens)
            .zip(run[off..].chunks_mut(segment))
        {
            *len = datagram.len();
            *slot = datagram;
            n += 1;
        }
        if n == 1 {
            actions[0] = handler.handle(src, datagrams[0]);
        } else {
            handler.handle_group(src, &mut datagrams[..n], &mut actions[..n]);
        }
        for (&len, &action) in lens[..n].iter().zip(&actions[..n]) {
            let end = off + len;
            ps.received += 1;
            ps.received_bytes += len;
            if let Action::Forward(dest) = action {
                let mut at = off;
                if compact {
                    if let Some((d, t)) = tail {
                        if d == dest && t < off {
                            run.copy_within(off..end, t);
                            at = t;
                        }
                    }
                }
                if gather_forwarded(gather, handler, ps, dest, buf, base + at, len) && compact {
                    tail = Some((dest, at + len));
                }
            }
            off = end;
        }
    }
}

/// Adds one forwarded datagram to `gather` and counts it: `forwarded`, or
/// `unresolved` (and `false`) when its key resolves to no address.
#[inline]
fn gather_forwarded<H: Handler + ?Sized>(
    gather: &mut Gather,
    handler: &mut H,
    ps: &mut PollStats,
    dest: Dest,
    buf: u32,
    addr: usize,
    len: usize,
) -> bool {
    let added = gather.push(dest, buf, addr, len, |d| handler.resolve(d));
    if added {
        ps.forwarded += 1;
    } else {
        ps.unresolved += 1;
    }
    added
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
    use crate::io::limits::MAX_GSO_SEGMENTS;

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
            &mut Dests::new([dst], |from, d: &mut [u8]| {
                assert_eq!(from, src);
                seen.push(d.len());
                d[0] = 0xff;
                if d.len() == 100 {
                    Action::Forward(Dest(0))
                } else {
                    Action::Consume
                }
            }),
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
        assert_eq!(gather.sends()[0].dst, dst);
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
            &mut Dests::new([src], |_, _: &mut [u8]| Action::Forward(Dest(0))),
            &mut gather,
            &mut ps,
        );
        dispatch_run(
            &mut [],
            0,
            src,
            Some(5),
            &mut Dests::new([src], |_, _: &mut [u8]| Action::Forward(Dest(0))),
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
            &mut Dests::new([dst], |_, d: &mut [u8]| {
                if d[0] == 1 {
                    Action::Consume
                } else {
                    Action::Forward(Dest(0))
                }
            }),
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

    /// Takes datagrams in groups and records them: datagram `i` (its first
    /// byte `i`) is consumed when `i % 3 == 1`, else forwarded to key
    /// `i % 2`; each one it judges gets `0xee` in its second byte.
    #[derive(Default)]
    struct Grouped {
        groups: Vec<Vec<u8>>,
        singles: Vec<u8>,
    }

    fn judged(d: &mut [u8]) -> Action {
        d[1] = 0xee;
        if d[0] % 3 == 1 {
            Action::Consume
        } else {
            Action::Forward(Dest(u32::from(d[0] % 2)))
        }
    }

    impl Handler for Grouped {
        fn handle(&mut self, _: SocketAddr, d: &mut [u8]) -> Action {
            self.singles.push(d[0]);
            judged(d)
        }

        fn handle_group(&mut self, _: SocketAddr, ds: &mut [&mut [u8]], actions: &mut [Action]) {
            self.groups.push(ds.iter().map(|d| d[0]).collect());
            for (d, a) in ds.iter_mut().zip(actions) {
                *a = judged(d);
            }
        }

        fn resolve(&mut self, dest: Dest) -> Option<SocketAddr> {
            Some(SocketAddr::from(([127, 0, 0, 1], 7 + dest.0 as u16)))
        }
    }

    #[test]
    fn a_run_goes_to_the_handler_in_groups_and_each_action_counts_for_its_own_datagram() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for grouping in [Grouping::Gather, Grouping::Compact] {
            // Eleven datagrams, the last 5 bytes long; then one alone.
            let mut run = indexed(11);
            run.truncate(105);
            let mut single = [11u8; 10];
            let mut handler = Grouped::default();
            let mut gather = Gather::new(64, true, grouping);
            let mut ps = PollStats::default();
            dispatch_run(
                &mut run,
                0,
                src,
                Some(10),
                &mut handler,
                &mut gather,
                &mut ps,
            );
            dispatch_run(
                &mut single,
                1,
                src,
                Some(10),
                &mut handler,
                &mut gather,
                &mut ps,
            );
            assert_eq!(
                handler.groups,
                [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10]],
                "whole segments, in order, at most GROUP at a time"
            );
            assert_eq!(handler.singles, [11], "a datagram alone is handled alone");
            assert_eq!((ps.received, ps.forwarded, ps.received_bytes), (12, 8, 115));
            // Per key, the forwarded datagrams in order, each as judged.
            for key in 0..2u8 {
                let mut got = Vec::new();
                for s in gather.sends().iter().filter(|s| s.dest == Dest(key.into())) {
                    for t in gather.stretches(s) {
                        let bytes: &[u8] = if t.buf == 0 { &run } else { &single };
                        let off = t.addr - bytes.as_ptr() as usize;
                        for d in bytes[off..off + t.len].chunks(10) {
                            assert_eq!(d[1], 0xee, "judged before sent");
                            got.push(d[0]);
                        }
                    }
                }
                let want: Vec<u8> = (0..12u8).filter(|i| i % 3 != 1 && i % 2 == key).collect();
                assert_eq!(got, want, "key {key}, {grouping:?}");
            }
        }
    }

    /// Forwards datagram `i` (a byte holding its index) to key `i % 3`;
    /// keys 0 and 1 resolve to one address, key 2 to another. Counts the
    /// resolves.
    struct Counting {
        addrs: [SocketAddr; 3],
        resolved: Vec<Dest>,
    }

    impl Handler for Counting {
        fn handle(&mut self, _: SocketAddr, d: &mut [u8]) -> Action {
            Action::Forward(Dest(u32::from(d[0]) % 3))
        }

        fn resolve(&mut self, dest: Dest) -> Option<SocketAddr> {
            self.resolved.push(dest);
            self.addrs.get(dest.0 as usize).copied()
        }
    }

    /// `count` datagrams of 10 bytes, datagram `i` filled with `i`.
    fn indexed(count: u8) -> Vec<u8> {
        (0..count).flat_map(|i| [i; 10]).collect()
    }

    #[test]
    fn keys_resolve_once_per_batch_not_per_datagram_and_never_merge() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (x, y): (SocketAddr, SocketAddr) = (
            "127.0.0.1:7".parse().unwrap(),
            "127.0.0.1:8".parse().unwrap(),
        );
        let mut handler = Counting {
            addrs: [x, x, y],
            resolved: Vec::new(),
        };
        // 240 datagrams in two runs: 80 per key, more than one send holds.
        let mut runs = [indexed(120), indexed(120)];
        let mut gather = Gather::new(256, true, Grouping::Gather);
        let mut ps = PollStats::default();
        for (buf, run) in runs.iter_mut().enumerate() {
            dispatch_run(
                run,
                buf as u32,
                src,
                Some(10),
                &mut handler,
                &mut gather,
                &mut ps,
            );
        }
        assert_eq!((ps.received, ps.forwarded, ps.unresolved), (240, 240, 0));
        assert_eq!(
            handler.resolved,
            [Dest(0), Dest(1), Dest(2)],
            "one resolve per key for the whole batch"
        );
        let sends: Vec<(Dest, SocketAddr, usize)> = gather
            .sends()
            .iter()
            .map(|s| (s.dest, s.dst, s.count))
            .collect();
        // Per key: a full send, then the rest, with the address passed on.
        assert_eq!(
            sends,
            [
                (Dest(0), x, MAX_GSO_SEGMENTS),
                (Dest(1), x, MAX_GSO_SEGMENTS),
                (Dest(2), y, MAX_GSO_SEGMENTS),
                (Dest(0), x, 80 - MAX_GSO_SEGMENTS),
                (Dest(1), x, 80 - MAX_GSO_SEGMENTS),
                (Dest(2), y, 80 - MAX_GSO_SEGMENTS),
            ],
            "keys 0 and 1 share an address, never a send"
        );
        // Each key's datagrams in arrival order: (buffer, first byte).
        for key in 0..3u8 {
            let mut got = Vec::new();
            for s in gather.sends().iter().filter(|s| s.dest == Dest(key.into())) {
                for t in gather.stretches(s) {
                    let bytes = &runs[t.buf as usize];
                    let off = t.addr - bytes.as_ptr() as usize;
                    got.extend(
                        bytes[off..off + t.len]
                            .iter()
                            .step_by(10)
                            .map(|&b| (t.buf, b)),
                    );
                }
            }
            let want: Vec<(u32, u8)> = (0..2u32)
                .flat_map(|buf| (0..120u8).filter(|i| i % 3 == key).map(move |i| (buf, i)))
                .collect();
            assert_eq!(got, want, "key {key}");
        }
    }

    #[test]
    fn without_the_table_keys_resolve_at_most_once_per_send() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let x: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let mut handler = Counting {
            addrs: [x; 3],
            resolved: Vec::new(),
        };
        let mut run = indexed(9);
        let mut gather = Gather::new(16, true, Grouping::Contiguous);
        let mut ps = PollStats::default();
        dispatch_run(
            &mut run,
            0,
            src,
            Some(10),
            &mut handler,
            &mut gather,
            &mut ps,
        );
        // Keys 0 1 2 0 1 2 0 1 2: every datagram opens a send.
        assert_eq!(gather.sends().len(), 9);
        assert_eq!(handler.resolved.len(), 9);
    }

    #[test]
    fn an_unresolved_key_is_counted_not_sent() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut run = [0u8; 30];
        let mut gather = Gather::new(8, true, Grouping::Compact);
        let mut ps = PollStats::default();
        // A closure resolves nothing.
        let mut consume_only = |_: SocketAddr, _: &mut [u8]| Action::Forward(Dest(0));
        dispatch_run(
            &mut run,
            0,
            src,
            Some(10),
            &mut consume_only,
            &mut gather,
            &mut ps,
        );
        // Nor does a list without the key.
        let mut short = Dests::new([src], |_, _: &mut [u8]| Action::Forward(Dest(1)));
        dispatch_run(&mut [], 0, src, None, &mut short, &mut gather, &mut ps);
        assert_eq!((ps.received, ps.forwarded, ps.unresolved), (4, 0, 4));
        assert!(gather.sends().is_empty());
    }
}
