//! The in-memory batch datapath rig: one relay worker's state
//! ([`proto::testkit::Fixture`]: 16 users, 64 services, one connector) and
//! a batch of [`BATCH`] frames of one [`Case`], judged the way a relay
//! worker judges the segments of a coalesced receive
//! (`relay/src/worker.rs`): per group of [`GROUP`] frames, the worker's
//! counter cache is sized to the route table, a
//! [`proto::datapath::Datapath`] is made over the worker's state and
//! [`process_group`](proto::datapath::Datapath::process_group) judges the
//! frames, rewriting and re-tagging those it forwards for the next hop.
//!
//! Every measurement of the datapath's cost runs this rig, so they measure
//! the same code: the criterion bench (`benches/datapath.rs`, ns per
//! frame), the callgrind count (`src/bin/frame_instructions.rs`,
//! instructions per frame) and [`ns_per_frame`], the quick in-process
//! timing `loadgen` prints.
//!
//! A round is [`Rig::arm`] then [`Rig::process_batch`]. Arming writes the
//! case's next [`BATCH`] frames into the rig's buffers: fresh hop counters
//! and valid tags, since the replay window rightly drops a frame it has
//! seen (and forwarding rewrote the header anyway). Only
//! [`Rig::process_batch`] is measured; it is never inlined, so callgrind can
//! count exactly its instructions (`--toggle-collect`). Nothing in a round
//! allocates (`tests/rig.rs` checks).

use std::time::{Duration, Instant};

use proto::datapath::{Counters, DropReason, Mode, Verdict};
use proto::testkit::Fixture;

/// Frames per batch: what a worker judges per received batch at most.
pub const BATCH: usize = 64;
/// Frames per [`process_group`](proto::datapath::Datapath::process_group)
/// call: `relay::io::GROUP`, the segments a relay worker judges together.
pub const GROUP: usize = 4;
/// Users of the rig's fixture.
pub const USERS: u32 = 16;
/// Services of the rig's fixture (every fourth one denied to everyone).
pub const SERVICES: u32 = 64;

/// One thing to measure: a mode, a frame size and the share of frames to
/// denied services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Case {
    /// How much the datapath checks.
    pub mode: Mode,
    /// Frame size in bytes, hop header included.
    pub size: usize,
    /// Percent of frames to a service the policy denies, spread evenly
    /// (frame `i` is denied when `i * deny_percent mod 100 < deny_percent`).
    /// The datapath enforces the policy only in [`Mode::Ztna`]; in the
    /// other modes these frames are forwarded like the rest.
    pub deny_percent: u32,
}

impl Case {
    /// Allowed frames only.
    pub const fn allowed(mode: Mode, size: usize) -> Case {
        Case {
            mode,
            size,
            deny_percent: 0,
        }
    }

    /// Every case the recorded figures cover: the three modes at 64 and
    /// 1400 B, and `ztna` with 10 % of the frames denied at 1400 B (as
    /// `loadgen`'s `deny-mix-10`).
    pub const ALL: [Case; 7] = [
        Case::allowed(Mode::Forward, 64),
        Case::allowed(Mode::Vpn, 64),
        Case::allowed(Mode::Ztna, 64),
        Case::allowed(Mode::Forward, 1400),
        Case::allowed(Mode::Vpn, 1400),
        Case::allowed(Mode::Ztna, 1400),
        Case {
            mode: Mode::Ztna,
            size: 1400,
            deny_percent: 10,
        },
    ];

    /// The case's label: `ztna/64B`, `ztna-deny10/1400B`.
    pub fn label(&self) -> String {
        if self.deny_percent == 0 {
            format!("{}/{}B", self.mode, self.size)
        } else {
            format!("{}-deny{}/{}B", self.mode, self.deny_percent, self.size)
        }
    }

    /// Whether the case's frame `i` goes to a denied service.
    pub fn denies(&self, i: u64) -> bool {
        let p = u64::from(self.deny_percent);
        (i * p) % 100 < p
    }

    /// Frames of `frames` (a sequence from the start) the datapath
    /// forwards in this case.
    pub fn forwarded_of(&self, frames: u64) -> u64 {
        if self.mode != Mode::Ztna {
            return frames;
        }
        // `denies` repeats every 100 frames.
        let denied_in = |n: u64| (0..n).filter(|&i| self.denies(i)).count() as u64;
        frames - (frames / 100) * denied_in(100) - denied_in(frames % 100)
    }
}

impl std::str::FromStr for Case {
    type Err = CaseError;

    /// Parses a [`Case::label`].
    fn from_str(s: &str) -> Result<Case, CaseError> {
        let bad = || CaseError(s.to_owned());
        let (head, size) = s.split_once('/').ok_or_else(bad)?;
        let size: usize = size
            .strip_suffix('B')
            .unwrap_or(size)
            .parse()
            .map_err(|_| bad())?;
        let (mode, deny_percent) = match head.split_once("-deny") {
            Some((mode, pct)) => (mode, pct.parse().map_err(|_| bad())?),
            None => (head, 0),
        };
        let case = Case {
            mode: mode.parse().map_err(|_| bad())?,
            size,
            deny_percent,
        };
        if !(proto::wire::DATA_OVERHEAD..=u16::MAX as usize).contains(&size) || deny_percent > 100 {
            return Err(bad());
        }
        Ok(case)
    }
}

/// A string that names no [`Case`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no case: expected MODE/SIZE or ztna-denyPCT/SIZE, e.g. vpn/64B, ztna-deny10/1400B (SIZE at least the data overhead, at most 65535)")]
pub struct CaseError(String);

/// One worker's datapath state and a batch of frames of one [`Case`].
#[derive(Debug)]
pub struct Rig {
    case: Case,
    fx: Fixture,
    bufs: Vec<Vec<u8>>,
    verdicts: [Verdict; BATCH],
    /// Frames armed so far: the sequence number of the next one.
    next: u64,
    /// Of the frames armed so far, those the case forwards.
    armed_forwards: u64,
    /// Of the frames armed last, those the case forwards.
    last_forwards: u64,
}

impl Rig {
    /// A rig for `case`, its buffers allocated; [`arm`](Rig::arm) them
    /// before each [`process_batch`](Rig::process_batch).
    pub fn new(case: Case) -> Rig {
        Rig {
            case,
            fx: Fixture::new(USERS, SERVICES),
            bufs: vec![vec![0u8; case.size]; BATCH],
            verdicts: [Verdict::Local; BATCH],
            next: 0,
            armed_forwards: 0,
            last_forwards: 0,
        }
    }

    /// The rig's case.
    pub fn case(&self) -> Case {
        self.case
    }

    /// Writes the case's next [`BATCH`] frames into the buffers: frame `i`
    /// is from user `i mod 16` to service `i mod 64`, made odd (allowed)
    /// or rounded down to a multiple of 4 (denied, [`Case::denies`]), with
    /// that user's next hop counter and a valid tag. Not measured.
    pub fn arm(&mut self) {
        let first = self.next;
        for buf in self.bufs.iter_mut() {
            let i = self.next;
            self.next += 1;
            let user = (i % u64::from(USERS)) as u32;
            let service = (i % u64::from(SERVICES)) as u32;
            let service = if self.case.denies(i) {
                service & !3
            } else {
                service | 1
            };
            let len = buf.len();
            self.fx.upstream(user, service, buf, len);
        }
        self.last_forwards = self.case.forwarded_of(self.next) - self.case.forwarded_of(first);
        self.armed_forwards += self.last_forwards;
    }

    /// Judges the armed batch as a relay worker judges the segments of a
    /// coalesced receive (`relay::io::GROUP` at a time through
    /// [`process_group`](proto::datapath::Datapath::process_group), which
    /// computes their hop tags together) and returns how many frames were
    /// forwarded. The measured part; never inlined, so callgrind finds it
    /// by name (`bench::rig::Rig::process_batch`).
    #[inline(never)]
    pub fn process_batch(&mut self) -> usize {
        let mode = self.case.mode;
        let fx = &mut self.fx;
        for (bufs, verdicts) in self
            .bufs
            .chunks_mut(GROUP)
            .zip(self.verdicts.chunks_mut(GROUP))
        {
            let mut group: [&mut [u8]; GROUP] = Default::default();
            let n = bufs.len();
            for (g, buf) in group.iter_mut().zip(bufs) {
                *g = buf;
            }
            // relay/src/worker.rs, per group.
            fx.tx.ensure(fx.routes.hop_slots());
            fx.datapath(mode).process_group(&mut group[..n], verdicts);
        }
        self.forwarded()
    }

    /// [`process_batch`](Rig::process_batch) one frame at a time through
    /// [`process`](proto::datapath::Datapath::process), as a worker judges
    /// a datagram that arrived alone: the same verdicts, each frame's two
    /// tags computed on their own.
    #[inline(never)]
    pub fn process_batch_framewise(&mut self) -> usize {
        let mode = self.case.mode;
        let fx = &mut self.fx;
        for (verdict, buf) in self.verdicts.iter_mut().zip(self.bufs.iter_mut()) {
            // relay/src/worker.rs, per received frame.
            fx.tx.ensure(fx.routes.hop_slots());
            *verdict = fx.datapath(mode).process(buf);
        }
        self.forwarded()
    }

    fn forwarded(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Forward { .. }))
            .count()
    }

    /// One round: [`arm`](Rig::arm), then
    /// [`process_batch`](Rig::process_batch).
    pub fn round(&mut self) -> usize {
        self.arm();
        self.process_batch()
    }

    /// The batch's frames: as armed, or as judged (forwarded ones
    /// rewritten and tagged for the next hop).
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs.iter().map(Vec::as_slice)
    }

    /// The verdicts of the last batch.
    pub fn verdicts(&self) -> &[Verdict; BATCH] {
        &self.verdicts
    }

    /// The datapath's counters over every batch so far.
    pub fn counters(&self) -> &Counters {
        &self.fx.counters
    }

    /// Checks that every batch armed was judged once (the last one may be
    /// armed and not judged yet) and every frame got the verdict its case
    /// implies: forwarded, or in `ztna` dropped as denied when it went to a
    /// denied service; nothing else dropped. A measurement of frames that
    /// the replay window or the tag dropped would measure a shortcut.
    pub fn check(&self) -> Result<(), RigError> {
        let c = &self.fx.counters;
        let denied = c.dropped(DropReason::Denied);
        let expected_forwarded = if c.frames == self.next {
            self.armed_forwards
        } else {
            self.armed_forwards - self.last_forwards
        };
        let judged_once = c.frames == self.next || c.frames + BATCH as u64 == self.next;
        if !judged_once || c.forwarded != expected_forwarded || c.forwarded + denied != c.frames {
            return Err(RigError {
                case: self.case.label(),
                counters: Box::new(c.clone()),
                armed: self.next,
                expected_forwarded,
            });
        }
        Ok(())
    }
}

/// The rig's frames did not get the verdicts their case implies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{case}: of {armed} frames armed, every batch judged once, {expected_forwarded} forwarded and the rest denied expected; the datapath counted {counters:?}")]
pub struct RigError {
    case: String,
    counters: Box<Counters>,
    armed: u64,
    expected_forwarded: u64,
}

/// The datapath's wall-clock cost of one case, in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// The case.
    pub case: Case,
    /// Median over the slices of the ns per frame of [`Rig::process_batch`].
    pub ns_per_frame: f64,
    /// Slices measured (each about 10 ms of wall-clock time).
    pub slices: usize,
    /// Frames judged in the measured batches.
    pub frames: u64,
}

/// Wall-clock time of one slice.
const SLICE: Duration = Duration::from_millis(10);

/// Times [`Rig::process_batch`] for `case` over about `budget` of wall-clock
/// time (arming included, not measured) and returns the median ns per frame
/// over 10 ms slices: a quick figure for `loadgen`, which cannot run
/// criterion. A few hundred ms per case give a median within a few percent
/// on a quiet machine; criterion (`cargo bench -p bench --bench datapath`)
/// times the same rig more carefully.
pub fn ns_per_frame(case: Case, budget: Duration) -> Result<Timing, RigError> {
    let mut rig = Rig::new(case);
    // Warm the caches and the branch predictors.
    for _ in 0..64 {
        rig.round();
    }
    let mut per_slice = Vec::with_capacity(budget.as_millis() as usize / 10 + 1);
    let mut frames = 0;
    let start = Instant::now();
    loop {
        let slice_start = Instant::now();
        let (mut spent, mut n) = (Duration::ZERO, 0u64);
        while slice_start.elapsed() < SLICE {
            rig.arm();
            let t = Instant::now();
            std::hint::black_box(rig.process_batch());
            spent += t.elapsed();
            n += BATCH as u64;
        }
        per_slice.push(spent.as_nanos() as f64 / n as f64);
        frames += n;
        if start.elapsed() >= budget {
            break;
        }
    }
    rig.check()?;
    per_slice.sort_by(f64::total_cmp);
    Ok(Timing {
        case,
        ns_per_frame: per_slice[per_slice.len() / 2],
        slices: per_slice.len(),
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_back() {
        for case in Case::ALL {
            assert_eq!(case.label().parse::<Case>(), Ok(case));
        }
        assert_eq!("vpn/64".parse::<Case>(), Ok(Case::allowed(Mode::Vpn, 64)));
        for bad in [
            "",
            "ztna",
            "ztna/",
            "ztna/1B",
            "fast/64B",
            "ztna-deny/64B",
            "ztna-deny101/64B",
            "ztna/70000B",
        ] {
            assert!(bad.parse::<Case>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deny_share_is_spread_evenly() {
        let case = Case {
            mode: Mode::Ztna,
            size: 64,
            deny_percent: 10,
        };
        let denied: Vec<u64> = (0..30).filter(|&i| case.denies(i)).collect();
        assert_eq!(denied, [0, 10, 20]);
        assert_eq!(case.forwarded_of(1000), 900);
        assert!(!Case::allowed(Mode::Ztna, 64).denies(0));
    }
}
