//! Instructions per frame of [`Rig::process_batch`](crate::rig::Rig::process_batch),
//! counted by callgrind: figures that do not drift with the machine's load,
//! so a change of a few instructions in the datapath shows, and the mode
//! differences (which live entirely in user space) are the policy's exact
//! cost in instructions.
//!
//! `scripts/instructions.sh` (which runs `frame_instructions measure`)
//! counts every [`Case`] and compares the counts with the committed
//! [`RECORDED_JSON`] (`bench/instructions.json`), or rewrites it with
//! `--write`. [`recorded`] gives the committed figures to `loadgen`.

use serde::{Deserialize, Serialize};

use crate::rig::Case;

/// `bench/instructions.json`, as committed when this crate was built.
pub const RECORDED_JSON: &str = include_str!("../instructions.json");

/// A set of counts and where they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// `git describe --always --dirty` of the counted code.
    pub commit: String,
    /// The day they were counted (YYYY-MM-DD).
    pub date: String,
    /// `rustc --version` of the build.
    pub rustc: String,
    /// `valgrind --version`.
    pub valgrind: String,
    /// How the per-frame figure was derived (the frame counts of the two
    /// runs per case).
    pub method: String,
    /// One figure per case.
    pub cases: Vec<Figure>,
}

/// The instructions per frame of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The case's label ([`Case::label`]): `ztna/64B`, `ztna-deny10/1400B`.
    pub case: String,
    /// Instructions per frame judged, setup excluded.
    pub instructions_per_frame: f64,
}

/// The committed figures could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FiguresError {
    /// Not JSON of the expected shape.
    #[error("bench/instructions.json is not a set of figures ({0}); regenerate it with scripts/instructions.sh --write")]
    Json(#[from] serde_json::Error),
    /// A case label that names no case.
    #[error("bench/instructions.json: {0}; regenerate it with scripts/instructions.sh --write")]
    Case(#[from] crate::rig::CaseError),
    /// A figure that is not a positive number.
    #[error("bench/instructions.json: {case} has {value} instructions per frame; regenerate it with scripts/instructions.sh --write")]
    Value {
        /// The case.
        case: String,
        /// Its figure.
        value: f64,
    },
}

impl Figures {
    /// Parses and checks a figures file: every case label names a case,
    /// every figure is a positive number.
    pub fn parse(json: &str) -> Result<Figures, FiguresError> {
        let figures: Figures = serde_json::from_str(json)?;
        for f in &figures.cases {
            f.case.parse::<Case>()?;
            if !(f.instructions_per_frame.is_finite() && f.instructions_per_frame > 0.0) {
                return Err(FiguresError::Value {
                    case: f.case.clone(),
                    value: f.instructions_per_frame,
                });
            }
        }
        Ok(figures)
    }

    /// The figure for `case`, if counted.
    pub fn get(&self, case: Case) -> Option<f64> {
        let label = case.label();
        self.cases
            .iter()
            .find(|f| f.case == label)
            .map(|f| f.instructions_per_frame)
    }
}

/// The committed figures (`bench/instructions.json` as built in).
pub fn recorded() -> Result<Figures, FiguresError> {
    Figures::parse(RECORDED_JSON)
}

/// One case compared with the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The case's label.
    pub case: String,
    /// Baseline instructions per frame (`None`: not in the baseline).
    pub before: Option<f64>,
    /// Counted now (`None`: in the baseline, not counted now).
    pub now: Option<f64>,
}

impl Change {
    /// The change in percent of the baseline, when both sides have it.
    pub fn percent(&self) -> Option<f64> {
        Some((self.now? - self.before?) / self.before? * 100.0)
    }
}

/// The counts of a run against a baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Every case of either side, in the order counted (baseline-only
    /// cases last).
    pub changes: Vec<Change>,
    /// The largest growth allowed, in percent.
    pub threshold: f64,
}

impl Comparison {
    /// Compares `now` with `base`: a case regresses when its figure grew by
    /// more than `threshold` percent.
    pub fn new(base: &Figures, now: &Figures, threshold: f64) -> Comparison {
        let before = |case: &str| {
            base.cases
                .iter()
                .find(|f| f.case == case)
                .map(|f| f.instructions_per_frame)
        };
        let mut changes: Vec<Change> = now
            .cases
            .iter()
            .map(|f| Change {
                case: f.case.clone(),
                before: before(&f.case),
                now: Some(f.instructions_per_frame),
            })
            .collect();
        for f in &base.cases {
            if !now.cases.iter().any(|n| n.case == f.case) {
                changes.push(Change {
                    case: f.case.clone(),
                    before: Some(f.instructions_per_frame),
                    now: None,
                });
            }
        }
        Comparison { changes, threshold }
    }

    /// The cases whose figure grew by more than the threshold.
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.percent().is_some_and(|p| p > self.threshold))
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20} {:>12} {:>12} {:>9}",
            "case", "baseline", "now", "change"
        )?;
        for c in &self.changes {
            let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            let (pct, note) = match c.percent() {
                Some(p) if p > self.threshold => (
                    format!("{p:+.2} %"),
                    format!("  REGRESSED (more than +{} %)", self.threshold),
                ),
                Some(p) if p < -self.threshold => (
                    format!("{p:+.2} %"),
                    "  faster: record it with --write".to_owned(),
                ),
                Some(p) => (format!("{p:+.2} %"), String::new()),
                None if c.now.is_none() => ("-".to_owned(), "  not counted now".to_owned()),
                None => ("-".to_owned(), "  not in the baseline".to_owned()),
            };
            writeln!(
                f,
                "{:<20} {:>12} {:>12} {:>9}{note}",
                c.case,
                num(c.before),
                num(c.now),
                pct
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(cases: &[(&str, f64)]) -> Figures {
        Figures {
            commit: "abc".into(),
            date: "2026-12-02".into(),
            rustc: "rustc".into(),
            valgrind: "valgrind".into(),
            method: "test".into(),
            cases: cases
                .iter()
                .map(|&(case, v)| Figure {
                    case: case.into(),
                    instructions_per_frame: v,
                })
                .collect(),
        }
    }

    #[test]
    fn the_committed_figures_parse_and_cover_every_case() {
        let recorded = recorded().expect("bench/instructions.json parses");
        for case in Case::ALL {
            assert!(
                recorded.get(case).is_some(),
                "{} not recorded",
                case.label()
            );
        }
    }

    #[test]
    fn a_bad_file_is_an_error_not_a_panic() {
        assert!(matches!(Figures::parse("{"), Err(FiguresError::Json(_))));
        let mut bad = figures(&[("ztna/64B", 100.0)]);
        bad.cases[0].case = "warp/64B".into();
        let json = serde_json::to_string(&bad).unwrap();
        assert!(matches!(Figures::parse(&json), Err(FiguresError::Case(_))));
        let json = serde_json::to_string(&figures(&[("ztna/64B", -1.0)])).unwrap();
        assert!(matches!(
            Figures::parse(&json),
            Err(FiguresError::Value { .. })
        ));
        let json = serde_json::to_string(&figures(&[("ztna/64B", 100.0)])).unwrap();
        assert_eq!(Figures::parse(&json).unwrap().cases.len(), 1);
    }

    #[test]
    fn growth_beyond_the_threshold_regresses() {
        let base = figures(&[
            ("forward/64B", 100.0),
            ("ztna/64B", 200.0),
            ("vpn/64B", 150.0),
        ]);
        let now = figures(&[
            ("forward/64B", 101.9),
            ("ztna/64B", 204.2),
            ("ztna/1400B", 1.0),
        ]);
        let cmp = Comparison::new(&base, &now, 2.0);
        let regressed: Vec<&str> = cmp.regressions().map(|c| c.case.as_str()).collect();
        assert_eq!(regressed, ["ztna/64B"]);
        let text = cmp.to_string();
        assert!(
            text.contains("ztna/64B") && text.contains("+2.10 %") && text.contains("REGRESSED"),
            "{text}"
        );
        assert!(
            text.contains("not in the baseline") && text.contains("not counted now"),
            "{text}"
        );
        // Shrinking never regresses.
        let cmp = Comparison::new(&now, &base, 2.0);
        assert_eq!(cmp.regressions().count(), 0, "{cmp}");
    }
}
