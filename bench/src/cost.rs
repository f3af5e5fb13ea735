//! The policy's cost side by side, for `loadgen`'s report: per case of
//! [`crate::rig`], the in-memory ns per frame ([`crate::rig::ns_per_frame`],
//! measured now), the instructions per frame callgrind counted (recorded
//! with the build, [`crate::instructions::recorded`]) and, where the
//! machine has hardware counters ([`crate::hw`]), instructions and cycles
//! per frame counted now; then the differences `vpn` − `forward` (the hop
//! tag and replay window) and `ztna` − `vpn` (peer binding and policy).

use std::fmt;
use std::time::Duration;

use proto::datapath::Mode;

use crate::hw::{HwCounters, HwError, HwReading};
use crate::instructions::{self, Figures};
use crate::rig::{self, Case, Rig, RigError, BATCH};

/// Batches counted per case with hardware counters.
const LIVE_BATCHES: u64 = 2_000;

/// One case's cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseCost {
    /// The case.
    pub case: Case,
    /// Median ns per frame of [`Rig::process_batch`], measured now.
    pub ns_per_frame: f64,
    /// Instructions per frame callgrind counted, as recorded
    /// (`None`: not recorded, or the file did not parse).
    pub recorded: Option<f64>,
    /// Instructions and cycles per frame from the hardware counters,
    /// counted now (`None`: no counters), including a few instructions
    /// per batch of reading the counters.
    pub live: Option<(f64, f64)>,
}

/// Every case's cost and where the figures come from.
#[derive(Debug)]
pub struct Cost {
    /// One row per case of [`Case::ALL`].
    pub rows: Vec<CaseCost>,
    /// The recorded figures (commit and date in them), or why none.
    pub recorded: Result<Figures, String>,
    /// `Ok` when the hardware counters counted, or why they did not.
    pub hw: Result<(), String>,
}

/// Measures every case for about `per_case` of wall-clock time each, plus
/// a short count with the hardware counters where there are some.
pub fn measure(per_case: Duration) -> Result<Cost, RigError> {
    let recorded = instructions::recorded().map_err(|e| e.to_string());
    let mut hw = HwCounters::this_thread().map_err(|e| e.to_string());
    let mut rows = Vec::new();
    for case in Case::ALL {
        let timing = rig::ns_per_frame(case, per_case)?;
        let live = match &mut hw {
            Ok(counters) => match live_per_frame(case, counters)? {
                Ok(v) => Some(v),
                Err(e) => {
                    hw = Err(e.to_string());
                    None
                }
            },
            Err(_) => None,
        };
        rows.push(CaseCost {
            case,
            ns_per_frame: timing.ns_per_frame,
            recorded: recorded.as_ref().ok().and_then(|f| f.get(case)),
            live,
        });
    }
    Ok(Cost {
        rows,
        recorded,
        hw: hw.map(drop),
    })
}

/// Instructions and cycles per frame of [`Rig::process_batch`], read
/// around each batch.
fn live_per_frame(
    case: Case,
    counters: &mut HwCounters,
) -> Result<Result<(f64, f64), HwError>, RigError> {
    let mut rig = Rig::new(case);
    for _ in 0..64 {
        rig.round();
    }
    let mut total = HwReading::default();
    for _ in 0..LIVE_BATCHES {
        rig.arm();
        let before = match counters.read() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        std::hint::black_box(rig.process_batch());
        let after = match counters.read() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let d = after.since(&before);
        total.instructions += d.instructions;
        total.cycles += d.cycles;
    }
    rig.check()?;
    let frames = (LIVE_BATCHES * BATCH as u64) as f64;
    Ok(Ok((
        total.instructions as f64 / frames,
        total.cycles as f64 / frames,
    )))
}

impl Cost {
    /// The row of `mode` at `size` with every frame allowed.
    pub fn row(&self, mode: Mode, size: usize) -> Option<&CaseCost> {
        self.rows
            .iter()
            .find(|r| r.case == Case::allowed(mode, size))
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "The policy's cost in memory (bench::rig: batches of {BATCH} frames through the datapath as a relay worker judges them, no I/O)"
        )?;
        match &self.recorded {
            Ok(r) => writeln!(
                f,
                "  instructions/frame: callgrind, recorded {} at {} (bench/instructions.json, scripts/instructions.sh)",
                r.date, r.commit
            )?,
            Err(e) => writeln!(f, "  instructions/frame: none recorded ({e})")?,
        }
        match &self.hw {
            Ok(()) => writeln!(
                f,
                "  hardware counters: this thread's, user space, around each batch (live columns)"
            )?,
            Err(e) => writeln!(f, "  hardware counters: not available ({e})")?,
        }
        let live = self.hw.is_ok();
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        write!(
            f,
            "  {:<20} {:>9} {:>12}",
            "case", "ns/frame", "instr/frame"
        )?;
        if live {
            write!(f, " {:>12} {:>13}", "live instr", "live cycles")?;
        }
        writeln!(f)?;
        for r in &self.rows {
            write!(
                f,
                "  {:<20} {:>9.1} {:>12}",
                r.case.label(),
                r.ns_per_frame,
                opt(r.recorded)
            )?;
            if live {
                write!(
                    f,
                    " {:>12} {:>13}",
                    opt(r.live.map(|l| l.0)),
                    opt(r.live.map(|l| l.1))
                )?;
            }
            writeln!(f)?;
        }
        let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:+.1}", a - b),
            _ => "-".to_owned(),
        };
        for size in [64, 1400] {
            for (hi, lo) in [(Mode::Vpn, Mode::Forward), (Mode::Ztna, Mode::Vpn)] {
                let (Some(h), Some(l)) = (self.row(hi, size), self.row(lo, size)) else {
                    continue;
                };
                write!(
                    f,
                    "  {:<20} {:>9} {:>12}",
                    format!("{hi} − {lo} {size}B"),
                    format!("{:+.1}", h.ns_per_frame - l.ns_per_frame),
                    diff(h.recorded, l.recorded)
                )?;
                if live {
                    write!(
                        f,
                        " {:>12} {:>13}",
                        diff(h.live.map(|v| v.0), l.live.map(|v| v.0)),
                        diff(h.live.map(|v| v.1), l.live.map(|v| v.1))
                    )?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_measurement_has_every_case_and_the_recorded_figures() {
        let cost = measure(Duration::from_millis(20)).expect("the rig's verdicts");
        assert_eq!(cost.rows.len(), Case::ALL.len());
        for r in &cost.rows {
            assert!(r.ns_per_frame > 0.0, "{r:?}");
            assert!(r.recorded.is_some(), "{r:?}");
            assert_eq!(r.live.is_some(), cost.hw.is_ok(), "{r:?}");
        }
        let text = cost.to_string();
        for needle in [
            "ztna/64B",
            "ztna-deny10/1400B",
            "ztna − vpn 64B",
            "vpn − forward 1400B",
            "callgrind, recorded",
            "hardware counters:",
        ] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
        // The recorded differences are printed: ztna − vpn at 64 B.
        let recorded = instructions::recorded().unwrap();
        let d = recorded.get(Case::allowed(Mode::Ztna, 64)).unwrap()
            - recorded.get(Case::allowed(Mode::Vpn, 64)).unwrap();
        assert!(
            text.contains(&format!("{d:+.1}")),
            "{d:+.1} missing:\n{text}"
        );
    }
}
