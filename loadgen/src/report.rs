//! Results: the JSON shape, the human table, and the regression check
//! against a stored baseline.
//!
//! Absolute rates drift between sittings on shared machines; ratios taken
//! within one invocation do not. So the table and the baseline check both
//! compare each relay run with the `direct` run (no relay) of the same
//! scenario and size from the same invocation, and with the other modes.
//! Runs through two relays are also compared with the same run through one
//! ([`per_hop`]): the rate ratio and what the added relay costs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::interval::Interval;
use crate::run::Measurement;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram in nanoseconds (all zero when empty).
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// One relay's share of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayFigures {
    /// Frames the relay judged.
    pub judged: u64,
    /// Frames it forwarded.
    pub forwarded: u64,
    /// Its worker CPU time per frame judged, ns, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_per_frame: Option<f64>,
    /// Its worker's share of the run on CPU, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
}

fn one() -> usize {
    1
}

/// One (mode, backend, scenario, size, load, relays) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `ztna`, `vpn`, `forward`, or `direct` (no relay).
    pub mode: String,
    /// The relay's I/O backend (`none` for direct runs).
    pub backend: String,
    /// Scenario name.
    pub scenario: String,
    /// Frame size in bytes (the mean for `imix`).
    pub size: usize,
    /// Measured seconds.
    pub secs: f64,
    /// Frames offered per second.
    pub sent_pps: f64,
    /// Frames delivered per second.
    pub recv_pps: f64,
    /// Delivered Gb/s (frame bytes, UDP payload).
    pub gbps: f64,
    /// Share of the frames that should have arrived and did not.
    pub loss: f64,
    /// One-way latency of the samples.
    pub lat_us: Latency,
    /// Offered load as a share of the measured maximum; absent for
    /// full-rate runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Which repetition (0-based) of the same run this is.
    #[serde(default)]
    pub repeat: usize,
    /// Relays each frame crossed (1, or 2 through a mesh link; 0 for
    /// direct runs written by this version).
    #[serde(default = "one")]
    pub relays: usize,
    /// Relay worker CPU time per frame judged, ns, when readable; through
    /// several relays, the sum of each relay's (the path's cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ns_per_frame: Option<f64>,
    /// Share of the run the relay worker was on CPU, when readable: near 1
    /// means the relay was the bound, well below 1 the load generator.
    /// Through several relays, the sum of their shares (they share one
    /// core when pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_busy: Option<f64>,
    /// Of `relay_busy`, the share spent busy polling (spinning for
    /// datagrams); absent when nothing spun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_spin: Option<f64>,
    /// Each relay's figures, users' side first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_relay: Vec<RelayFigures>,
    /// Frames the relay dropped by policy during the run.
    #[serde(default)]
    pub relay_denied: u64,
    /// Frames opened end to end and found intact.
    #[serde(default)]
    pub verified: u64,
    /// Frames that arrived altered, misaddressed or with a bad hop tag.
    #[serde(default)]
    pub corrupt: u64,
    /// Frames for denied pairs that arrived anyway.
    #[serde(default)]
    pub denied_delivered: u64,
    /// Relay worker instructions per frame judged, from the hardware
    /// counters on its thread, where the machine has them; through several
    /// relays, the sum of each relay's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_instructions_per_frame: Option<f64>,
    /// Relay worker cycles per frame judged, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_cycles_per_frame: Option<f64>,
    /// Each slice of an interleaved run, in round order (empty when the
    /// run was not sliced): what the paired ratios are computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceFigures>,
}

/// One slice of an interleaved run: slice `k` of every rig measured in the
/// same invocation ran in the same round, within a fraction of a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceFigures {
    /// Frames delivered per second in the slice.
    pub recv_pps: f64,
    /// Relay worker CPU time per frame judged in the slice, ns (all relays
    /// of the path added), when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ns: Option<f64>,
    /// Median one-way latency of the slice's samples, µs (0 without
    /// samples).
    #[serde(default)]
    pub p50_us: f64,
    /// 99th percentile of the slice's one-way latency samples, µs (0
    /// without samples).
    #[serde(default)]
    pub p99_us: f64,
}

/// What a `--json` file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Runs through the relay.
    pub results: Vec<RunResult>,
    /// Runs straight from sender to receiver: the machine's ceiling for the
    /// load generator.
    pub direct: Vec<RunResult>,
    /// Why the relay workers' hardware counters counted nothing, where
    /// they did not (no PMU in a VM, `perf_event_paranoid`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_counters_unavailable: Option<String>,
}

/// Labels of one run.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// Mode name.
    pub mode: &'a str,
    /// Backend name.
    pub backend: &'a str,
    /// Scenario name.
    pub scenario: &'a str,
    /// Frame size.
    pub size: usize,
    /// Offered load share, for paced runs.
    pub load: Option<f64>,
    /// Repetition.
    pub repeat: usize,
    /// Whether the relay enforces policy (frames to denied pairs are not
    /// expected to arrive).
    pub enforces_policy: bool,
    /// Relays on the path (0: a run without relay).
    pub relays: usize,
}

impl RunResult {
    /// A result from a measurement.
    pub fn new(labels: Labels<'_>, m: &Measurement) -> RunResult {
        let secs = m.secs.max(1e-9);
        let mean_size = if m.sink.frames == 0 {
            labels.size as f64
        } else {
            m.sink.bytes as f64 / m.sink.frames as f64
        };
        let recv_pps = m.received as f64 / secs;
        let expected = if labels.enforces_policy {
            m.sent_allowed
        } else {
            m.sent
        };
        let delivered = if labels.enforces_policy {
            m.sink.frames.saturating_sub(m.sink.denied_delivered)
        } else {
            m.sink.frames
        };
        let loss = if expected == 0 {
            0.0
        } else {
            (1.0 - delivered as f64 / expected as f64).clamp(0.0, 1.0)
        };
        let per_relay: Vec<RelayFigures> = m
            .relays
            .iter()
            .map(|r| RelayFigures {
                judged: r.counters.frames,
                forwarded: r.counters.forwarded,
                ns_per_frame: r
                    .cpu
                    .filter(|_| r.counters.frames > 0)
                    .map(|cpu| cpu.as_nanos() as f64 / r.counters.frames as f64),
                busy: r.cpu.map(|cpu| cpu.as_secs_f64() / secs),
            })
            .collect();
        let sum = |f: fn(&RelayFigures) -> Option<f64>| -> Option<f64> {
            if per_relay.is_empty() {
                return None;
            }
            per_relay.iter().map(f).sum()
        };
        RunResult {
            mode: labels.mode.to_owned(),
            backend: labels.backend.to_owned(),
            scenario: labels.scenario.to_owned(),
            size: labels.size,
            secs: m.secs,
            sent_pps: m.sent as f64 / secs,
            recv_pps,
            gbps: recv_pps * mean_size * 8.0 / 1e9,
            loss,
            lat_us: Latency::from_ns(&m.latency),
            load: labels.load,
            repeat: labels.repeat,
            relays: labels.relays,
            relay_ns_per_frame: sum(|r| r.ns_per_frame),
            relay_busy: sum(|r| r.busy),
            relay_spin: Some(m.relays.iter().map(|r| r.spin.as_secs_f64()).sum::<f64>() / secs)
                .filter(|s| *s > 0.0),
            relay_denied: m.relays.iter().fold(0, |n, r| {
                n + r.counters.dropped(proto::datapath::DropReason::Denied)
            }),
            per_relay,
            verified: m.sink.verified,
            corrupt: m.sink.corrupt + m.sink.bad_hop,
            denied_delivered: m.sink.denied_delivered,
            relay_instructions_per_frame: hw_per_frame(m, |h| h.instructions),
            relay_cycles_per_frame: hw_per_frame(m, |h| h.cycles),
            slices: Vec::new(),
        }
    }

    /// The result with the figures of each of its slices (a run measured in
    /// one piece keeps none: there is nothing to pair).
    pub fn with_slices(mut self, slices: &[Measurement]) -> RunResult {
        if slices.len() > 1 {
            self.slices = slices
                .iter()
                .map(|m| {
                    let one = RunResult::new(
                        Labels {
                            mode: &self.mode,
                            backend: &self.backend,
                            scenario: &self.scenario,
                            size: self.size,
                            load: self.load,
                            repeat: self.repeat,
                            enforces_policy: false,
                            relays: self.relays,
                        },
                        m,
                    );
                    SliceFigures {
                        recv_pps: one.recv_pps,
                        relay_ns: one.relay_ns_per_frame,
                        p50_us: one.lat_us.p50,
                        p99_us: one.lat_us.p99,
                    }
                })
                .collect();
        }
        self
    }

    /// The key runs are matched by across repeats and against a baseline.
    pub fn key(&self) -> RunKey {
        RunKey::new(
            &self.mode,
            &self.backend,
            &self.scenario,
            self.size,
            self.load,
        )
        .through(self.relays)
    }
}

/// A hardware count per frame judged, added up over the path's relays
/// (`None` unless every relay's counters counted and judged frames).
fn hw_per_frame(m: &Measurement, f: fn(&bench::hw::HwReading) -> u64) -> Option<f64> {
    if m.relays.is_empty() {
        return None;
    }
    m.relays
        .iter()
        .map(|r| {
            let hw = r.hw.as_ref()?;
            (r.counters.frames > 0).then(|| f(hw) as f64 / r.counters.frames as f64)
        })
        .sum()
}

/// Identifies a run up to repetition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    /// Mode.
    pub mode: String,
    /// Backend.
    pub backend: String,
    /// Scenario.
    pub scenario: String,
    /// Frame size.
    pub size: usize,
    /// Load in percent, for paced runs.
    pub load_pct: Option<u32>,
    /// Relays on the path (1 for runs without relay, whose key never
    /// depended on it).
    pub relays: usize,
}

impl RunKey {
    /// The key of a run through one relay; `load` as a share (0.5 is
    /// 50 %).
    pub fn new(
        mode: &str,
        backend: &str,
        scenario: &str,
        size: usize,
        load: Option<f64>,
    ) -> RunKey {
        RunKey {
            mode: mode.to_owned(),
            backend: backend.to_owned(),
            scenario: scenario.to_owned(),
            size,
            load_pct: load.map(|l| (l * 100.0).round() as u32),
            relays: 1,
        }
    }

    /// The same key through `relays` relays (direct runs, 0 relays, keep
    /// the key of 1 so earlier reports and baselines match).
    pub fn through(self, relays: usize) -> RunKey {
        RunKey {
            relays: relays.max(1),
            ..self
        }
    }
}

impl Labels<'_> {
    /// The key the run will be reported under.
    pub fn key(&self) -> RunKey {
        RunKey::new(self.mode, self.backend, self.scenario, self.size, self.load)
            .through(self.relays)
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}B",
            self.mode, self.backend, self.scenario, self.size
        )?;
        match self.load_pct {
            Some(p) => write!(f, " @{p}%")?,
            None => write!(f, " max")?,
        }
        // One relay is the key every earlier report used: no suffix.
        if self.relays > 1 {
            write!(f, " via {} relays", self.relays)?;
        }
        Ok(())
    }
}

/// Median, minimum and maximum of one figure over the repeats of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (`None` when empty).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Half the range relative to the median, in percent.
    pub fn pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median * 100.0
        }
    }
}

impl Report {
    /// All results (relay and direct) grouped by key, repeats together.
    pub fn grouped(&self) -> BTreeMap<RunKey, Vec<&RunResult>> {
        let mut map: BTreeMap<RunKey, Vec<&RunResult>> = BTreeMap::new();
        for r in self.results.iter().chain(&self.direct) {
            map.entry(r.key()).or_default().push(r);
        }
        map
    }

    /// Ratios that describe a report independently of the machine's speed
    /// that day: every relay run's median rate over the median rate of a
    /// reference run of the same invocation (for rigs that were
    /// interleaved, the median of the per-round ratios, [`paired`]). References: the `direct` run
    /// of the same scenario and size, the `forward` and `vpn` runs of the
    /// same backend, scenario, size, load and relays, and for a run through
    /// several relays, the same run through one.
    pub fn ratios(&self) -> BTreeMap<String, f64> {
        let groups = self.grouped();
        let median = |k: &RunKey| {
            groups
                .get(k)
                .and_then(|rs| Spread::of(rs.iter().map(|r| r.recv_pps)))
                .map(|s| s.median)
        };
        let paired_rates: BTreeMap<(RunKey, String), f64> = paired(self)
            .into_iter()
            .filter_map(|p| Some(((p.key, p.against), p.rate?.median)))
            .collect();
        let mut out = BTreeMap::new();
        for key in groups
            .keys()
            .filter(|k| k.mode != "direct" && k.load_pct.is_none())
        {
            let Some(pps) = median(key) else { continue };
            let mut refs = vec![(
                "direct",
                RunKey {
                    mode: "direct".into(),
                    backend: "none".into(),
                    relays: 1,
                    ..key.clone()
                },
            )];
            if key.relays > 1 {
                refs.push((
                    "1 relay",
                    RunKey {
                        relays: 1,
                        ..key.clone()
                    },
                ));
            }
            // Each mode over the cheaper ones only (forward/vpn is the
            // inverse of vpn/forward: one drift, two lines).
            let rank = |m: &str| COMPARED.iter().position(|c| *c == m);
            for m in ["forward", "vpn"] {
                if key.mode != m && rank(&key.mode) > rank(m) {
                    refs.push((
                        m,
                        RunKey {
                            mode: m.into(),
                            ..key.clone()
                        },
                    ));
                }
            }
            for (name, rk) in refs {
                // Interleaved rigs: the median of the per-round ratios,
                // which drift does not move; otherwise the ratio of the
                // medians.
                let paired = paired_rates
                    .get(&(key.clone(), name.to_owned()))
                    .copied()
                    .or_else(|| {
                        paired_rates
                            .get(&(rk.clone(), key.mode.clone()))
                            .map(|r| 1.0 / r)
                    });
                if let Some(r) = paired {
                    out.insert(format!("{key} / {name}"), r);
                } else if let Some(base) = median(&rk).filter(|b| *b > 0.0) {
                    out.insert(format!("{key} / {name}"), pps / base);
                }
            }
        }
        out
    }

    /// Whether any run saw corrupted frames or denied frames getting
    /// through a policy-enforcing relay.
    pub fn integrity_failures(&self) -> Vec<String> {
        self.results
            .iter()
            .chain(&self.direct)
            .filter(|r| r.corrupt > 0 || (r.mode == "ztna" && r.denied_delivered > 0))
            .map(|r| {
                format!(
                    "{} (repeat {}): {} corrupt frames, {} denied frames delivered",
                    r.key(),
                    r.repeat,
                    r.corrupt,
                    r.denied_delivered
                )
            })
            .collect()
    }
}

/// Modes in the order they are compared: each with every one before it
/// (`vpn` against `forward`, `ztna` against `vpn` and `forward`, and all
/// three against `bare`, the floor, when it ran).
pub const COMPARED: [&str; 4] = ["bare", "forward", "vpn", "ztna"];

/// One rig against another of the same invocation, round by round: the
/// same scenario, size, backend, load, path and repeat, in another mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// The run.
    pub key: RunKey,
    /// The mode it is compared with.
    pub against: String,
    /// Rounds paired (over all repeats).
    pub rounds: usize,
    /// Delivered rate over the other's, per round.
    pub rate: Option<Interval>,
    /// Relay CPU per frame over the other's, per round.
    pub relay_ns: Option<Interval>,
    /// Median latency minus the other's, µs, per round (paced runs).
    pub added_p50_us: Option<Interval>,
    /// 99th percentile latency minus the other's, µs, per round (paced
    /// runs): a tail that one rig shows and its twin in the same rounds
    /// does not is the rig's, not the machine's.
    pub added_p99_us: Option<Interval>,
}

impl Paired {
    /// Whether the rate interval resolves a difference (excludes 1.0).
    pub fn rate_resolved(&self) -> Option<bool> {
        self.rate.map(|i| !i.contains(1.0))
    }
}

/// Every paired comparison `report` allows: for each sliced run, each mode
/// before its own in [`COMPARED`] that ran beside it.
pub fn paired(report: &Report) -> Vec<Paired> {
    let mut pairs: BTreeMap<(RunKey, String), Vec<(&SliceFigures, &SliceFigures)>> =
        BTreeMap::new();
    for run in report.results.iter().filter(|r| !r.slices.is_empty()) {
        let Some(rank) = COMPARED.iter().position(|m| *m == run.mode) else {
            continue;
        };
        for &other_mode in &COMPARED[..rank] {
            let twin = RunKey {
                mode: other_mode.to_owned(),
                ..run.key()
            };
            let Some(other) = report
                .results
                .iter()
                .find(|o| o.repeat == run.repeat && o.key() == twin)
            else {
                continue;
            };
            if other.slices.len() != run.slices.len() {
                continue;
            }
            pairs
                .entry((run.key(), other_mode.to_owned()))
                .or_default()
                .extend(run.slices.iter().zip(&other.slices));
        }
    }
    pairs
        .into_iter()
        .map(|((key, against), rounds)| {
            let ratio = |f: fn(&SliceFigures) -> Option<f64>| {
                let v: Vec<f64> = rounds
                    .iter()
                    .filter_map(|(a, b)| Some(f(a)? / f(b).filter(|x| *x > 0.0)?))
                    .collect();
                Interval::of_median(&v)
            };
            let added = |f: fn(&SliceFigures) -> f64| {
                let v: Vec<f64> = rounds
                    .iter()
                    .filter(|(a, b)| f(a) > 0.0 && f(b) > 0.0)
                    .map(|(a, b)| f(a) - f(b))
                    .collect();
                key.load_pct.and(Interval::of_median(&v))
            };
            Paired {
                rounds: rounds.len(),
                rate: ratio(|s| Some(s.recv_pps)),
                relay_ns: ratio(|s| s.relay_ns),
                added_p50_us: added(|s| s.p50_us),
                added_p99_us: added(|s| s.p99_us),
                key,
                against,
            }
        })
        .collect()
}

/// An interval, marked `~` when it contains `neutral` (no difference
/// resolved).
fn interval_text(i: Option<Interval>, neutral: f64, signed: bool) -> String {
    match i {
        None => "-".to_owned(),
        Some(i) => {
            let mark = if i.contains(neutral) { " ~" } else { "" };
            if signed {
                format!("{:+.1} [{:+.1}, {:+.1}]{mark}", i.median, i.low, i.high)
            } else {
                format!("{i}{mark}")
            }
        }
    }
}

/// The comparisons shown at full rate, cheapest pair first: what each
/// step up costs (`forward` over the floor, the hop tag and replay window,
/// the policy), then each mode over the floor.
const SHOWN_AT_MAX: [(&str, &str); 5] = [
    ("forward", "bare"),
    ("vpn", "forward"),
    ("ztna", "vpn"),
    ("vpn", "bare"),
    ("ztna", "bare"),
];

/// The paired tables (empty when nothing was interleaved): at full rate,
/// rate and relay CPU ratios of the steps in [`SHOWN_AT_MAX`]; paced, each
/// mode's median latency over the floor's (`bare` when it ran, else
/// `forward`).
fn paired_text(report: &Report) -> String {
    let all = paired(report);
    let mut out = String::new();
    if all.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\npaired comparisons: every rig interleaved slice by slice in this invocation; median of the\n\
         per-round ratios (or differences) [95 % bootstrap interval]; ~ = the interval holds 1\n\
         (or 0 us): no difference resolved"
    );
    let at_max: Vec<&Paired> = SHOWN_AT_MAX
        .iter()
        .flat_map(|(mode, against)| {
            all.iter().filter(move |p| {
                p.key.load_pct.is_none() && p.key.mode == *mode && p.against == *against
            })
        })
        .collect();
    if !at_max.is_empty() {
        let _ = writeln!(
            out,
            "{:<14} {:<34} {:<26} {:<26} {:>6}",
            "full rate", "run", "delivered rate", "relay ns/frame", "rounds"
        );
        for p in at_max {
            let _ = writeln!(
                out,
                "{:<14} {:<34} {:<26} {:<26} {:>6}",
                format!("{}/{}", p.key.mode, p.against),
                run_name(&p.key),
                interval_text(p.rate, 1.0, false),
                interval_text(p.relay_ns, 1.0, false),
                p.rounds
            );
        }
    }
    let floor = if all.iter().any(|p| p.against == "bare") {
        "bare"
    } else {
        "forward"
    };
    let paced: Vec<&Paired> = all
        .iter()
        .filter(|p| p.key.load_pct.is_some() && p.against == floor)
        .collect();
    if !paced.is_empty() {
        let _ = writeln!(
            out,
            "{:<14} {:<34} {:<26} {:<30} {:<26} {:>6}",
            "paced",
            "run",
            format!("p50 over {floor}, us"),
            format!("p99 over {floor}, us"),
            "relay ns/frame",
            "rounds"
        );
        for p in paced {
            let _ = writeln!(
                out,
                "{:<14} {:<34} {:<26} {:<30} {:<26} {:>6}",
                format!("{}/{}", p.key.mode, p.against),
                run_name(&p.key),
                interval_text(p.added_p50_us, 0.0, true),
                interval_text(p.added_p99_us, 0.0, true),
                interval_text(p.relay_ns, 1.0, false),
                p.rounds
            );
        }
    }
    out
}

/// A run's key without its mode (the pair column names it).
fn run_name(key: &RunKey) -> String {
    let mut name = format!("{} {} {}B", key.backend, key.scenario, key.size);
    match key.load_pct {
        Some(p) => {
            let _ = write!(name, " @{p}%");
        }
        None => name.push_str(" max"),
    }
    if key.relays > 1 {
        let _ = write!(name, " via {}", key.relays);
    }
    name
}

/// The policy's cost (`ztna` over `vpn`) in memory at one frame size, as
/// `(ztna, vpn)` pairs; [`policy_cost_text`] adds the whole relay's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyCost {
    /// Frame size.
    pub size: usize,
    /// In-memory ns per frame, ztna and vpn.
    pub ns: Option<(f64, f64)>,
    /// Callgrind instructions per frame as recorded, ztna and vpn.
    pub instructions: Option<(f64, f64)>,
}

/// The policy's cost three ways, one line per size of `costs`: in memory
/// (ns/frame measured now, callgrind instructions/frame as recorded) and
/// through the whole relay (the paired delivered-rate and relay CPU
/// ratios of `report`'s first full-rate `ztna`-over-`vpn` run at that size,
/// through one relay). Empty when `costs` is.
pub fn policy_cost_text(report: &Report, costs: &[PolicyCost]) -> String {
    let pairs = paired(report);
    let mut out = String::new();
    let rows: Vec<String> = costs
        .iter()
        .map(|c| {
            let relay = pairs.iter().find(|p| {
                p.key.mode == "ztna"
                    && p.against == "vpn"
                    && p.key.size == c.size
                    && p.key.load_pct.is_none()
                    && p.key.relays == 1
            });
            let diff = |v: Option<(f64, f64)>, decimals: usize| {
                v.map_or_else(
                    || "-".to_owned(),
                    |(z, b)| format!("{:+.decimals$} ({:+.1} %)", z - b, (z / b - 1.0) * 100.0),
                )
            };
            format!(
                "  {:>5}B  {:<20} {:<22} {:<24} {}",
                c.size,
                diff(c.ns, 1),
                diff(c.instructions, 0),
                interval_text(relay.and_then(|p| p.rate), 1.0, false),
                interval_text(relay.and_then(|p| p.relay_ns), 1.0, false),
            )
        })
        .collect();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "the policy's cost, ztna over vpn, three ways (in memory: ztna − vpn per frame; whole relay:\n\
         paired ratios at full rate [95 %], ~ = not resolved):\n  {:>6}  {:<20} {:<22} {:<24} relay ns/frame",
        "size", "ns/frame (memory)", "instructions/frame", "delivered rate"
    );
    for r in rows {
        let _ = writeln!(out, "{r}");
    }
    out
}

/// What the relays added to a path cost: a run through several relays
/// against the same run (mode, backend, scenario, size, load, repeat)
/// through one, from the same invocation. Differences are taken repeat by
/// repeat (the two runs of a repeat were interleaved), then summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct HopCost {
    /// The run through several relays.
    pub key: RunKey,
    /// Repeats with both runs.
    pub pairs: usize,
    /// Delivered rate through `key.relays` relays over the rate through
    /// one.
    pub rate_ratio: Spread,
    /// Relay CPU per frame that each added relay costs, ns: the path's
    /// (every relay's ns per frame, added up) minus the one-relay run's,
    /// over the relays added.
    pub ns_per_added_relay: Option<Spread>,
    /// The one-relay run's relay CPU per frame, ns (median).
    pub one_relay_ns: Option<f64>,
    /// Each relay's CPU per frame on the longer path, ns (medians), users'
    /// side first.
    pub each_relay_ns: Vec<Option<f64>>,
    /// Median one-way latency added, µs.
    pub added_p50_us: Spread,
    /// 99th percentile added, µs.
    pub added_p99_us: Spread,
}

/// The cost of the added relays for every run through more than one that
/// has a one-relay twin in `report`.
pub fn per_hop(report: &Report) -> Vec<HopCost> {
    let mut twins: BTreeMap<RunKey, Vec<(&RunResult, &RunResult)>> = BTreeMap::new();
    for long in report.results.iter().filter(|r| r.relays > 1) {
        let one = long.key().through(1);
        if let Some(short) = report
            .results
            .iter()
            .find(|r| r.relays == 1 && r.repeat == long.repeat && r.key() == one)
        {
            twins.entry(long.key()).or_default().push((long, short));
        }
    }
    twins
        .into_iter()
        .filter_map(|(key, pairs)| {
            let added = key.relays.saturating_sub(1).max(1) as f64;
            let diff =
                |f: fn(&RunResult) -> f64| Spread::of(pairs.iter().map(|(l, s)| f(l) - f(s)));
            let median = |v: &mut dyn Iterator<Item = f64>| Spread::of(v).map(|s| s.median);
            let each_relay_ns = (0..key.relays)
                .map(|k| {
                    median(
                        &mut pairs
                            .iter()
                            .filter_map(|(l, _)| l.per_relay.get(k).and_then(|r| r.ns_per_frame)),
                    )
                })
                .collect();
            Some(HopCost {
                pairs: pairs.len(),
                rate_ratio: Spread::of(
                    pairs
                        .iter()
                        .filter(|(_, s)| s.recv_pps > 0.0)
                        .map(|(l, s)| l.recv_pps / s.recv_pps),
                )?,
                ns_per_added_relay: Spread::of(pairs.iter().filter_map(|(l, s)| {
                    Some((l.relay_ns_per_frame? - s.relay_ns_per_frame?) / added)
                })),
                one_relay_ns: median(&mut pairs.iter().filter_map(|(_, s)| s.relay_ns_per_frame)),
                each_relay_ns,
                added_p50_us: diff(|r| r.lat_us.p50)?,
                added_p99_us: diff(|r| r.lat_us.p99)?,
                key,
            })
        })
        .collect()
}

/// `median`, or `median (min..max)` when the values differ.
fn spread_text(s: Spread, decimals: usize, signed: bool) -> String {
    let v = |x: f64| {
        if signed {
            format!("{x:+.decimals$}")
        } else {
            format!("{x:.decimals$}")
        }
    };
    if s.min == s.max {
        v(s.median)
    } else {
        format!("{} ({}..{})", v(s.median), v(s.min), v(s.max))
    }
}

/// The per-hop lines of the table (empty when no run went through more
/// than one relay).
fn per_hop_text(report: &Report) -> String {
    let costs = per_hop(report);
    let mut out = String::new();
    if costs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nper-hop cost: each run through several relays against the same run through one\n(same invocation, slices interleaved; median (min..max) over repeats):"
    );
    for c in costs {
        let ns = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
        let each: Vec<String> = c.each_relay_ns.iter().map(|x| ns(*x)).collect();
        let _ = writeln!(
            out,
            "  {}: rate x{}; relay ns/frame {} -> {} ({} per added relay); p50 {} us, p99 {} us; {} repeat{}",
            c.key,
            spread_text(c.rate_ratio, 3, false),
            ns(c.one_relay_ns),
            each.join(" + "),
            c.ns_per_added_relay
                .map_or_else(|| "-".to_owned(), |s| spread_text(s, 0, true)),
            spread_text(c.added_p50_us, 1, true),
            spread_text(c.added_p99_us, 1, true),
            c.pairs,
            if c.pairs == 1 { "" } else { "s" },
        );
    }
    out
}

/// Compares the ratios of `current` with those of `baseline`: any ratio
/// present in both that fell by more than `max_regression_pct` percent is
/// a regression; where `current` has a paired interval for it, only when
/// the whole interval lies beyond that limit. The paired relay CPU ratios
/// are compared the same way (a rise is the regression). Returns the
/// readable diff of every shared ratio and whether any regressed.
pub fn compare(baseline: &Report, current: &Report, max_regression_pct: f64) -> (String, bool) {
    let base = baseline.ratios();
    let cur = current.ratios();
    let limit = max_regression_pct / 100.0;
    // Paired intervals of this run, by ratio name: a drop counts only when
    // the whole interval lies beyond the limit, so noise that a wide
    // interval admits is not a regression.
    let paired_now = paired(current);
    let rate_now: BTreeMap<String, Interval> = paired_now
        .iter()
        .filter_map(|p| Some((format!("{} / {}", p.key, p.against), p.rate?)))
        .collect();
    let ns_name = |p: &Paired| format!("{} / {} (relay ns/frame)", p.key, p.against);
    let ns_base: BTreeMap<String, f64> = paired(baseline)
        .iter()
        .filter_map(|p| Some((ns_name(p), p.relay_ns?.median)))
        .collect();
    let mut out = String::new();
    let mut regressed = false;
    let mut shared = 0;
    let _ = writeln!(
        out,
        "{:<64} {:>9} {:>26} {:>8}",
        "ratio (delivered rate; higher is better)", "baseline", "now [95 %]", "change"
    );
    for (name, b) in &base {
        let Some(c) = cur.get(name) else { continue };
        shared += 1;
        let change = (c / b - 1.0) * 100.0;
        let now = rate_now.get(name);
        let bad = match now {
            Some(i) => i.high < b * (1.0 - limit),
            None => change < -max_regression_pct,
        };
        regressed |= bad;
        let _ = writeln!(
            out,
            "{:<64} {:>9.3} {:>26} {:>+7.1}%{}",
            name,
            b,
            now.map_or_else(|| format!("{c:.3}"), |i| i.to_string()),
            change,
            if bad { "  REGRESSED" } else { "" }
        );
    }
    let mut ns_lines = String::new();
    for p in &paired_now {
        let name = ns_name(p);
        let (Some(b), Some(i)) = (ns_base.get(&name), p.relay_ns) else {
            continue;
        };
        shared += 1;
        let change = (i.median / b - 1.0) * 100.0;
        let bad = i.low > b * (1.0 + limit);
        regressed |= bad;
        let _ = writeln!(
            ns_lines,
            "{:<64} {:>9.3} {:>26} {:>+7.1}%{}",
            name,
            b,
            i.to_string(),
            change,
            if bad { "  REGRESSED" } else { "" }
        );
    }
    if !ns_lines.is_empty() {
        let _ = writeln!(
            out,
            "{:<64} {:>9} {:>26} {:>8}\n{ns_lines}",
            "ratio (relay CPU per frame; lower is better)", "baseline", "now [95 %]", "change"
        );
    }
    if shared == 0 {
        let _ = writeln!(
            out,
            "no ratio in common with the baseline: run the same scenarios, sizes and backends"
        );
        regressed = true;
    }
    (out, regressed)
}

/// Renders the human table: every run key with the median over repeats
/// and, with repeats, the spread.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<6} {:<10} {:>5} {:>5} {:>6}  {:>10} {:>14} {:>6} {:>6}  {:>8} {:>8} {:>9}  {:>8} {:>5}",
        "mode",
        "io",
        "scenario",
        "size",
        "load",
        "relays",
        "sent Mpps",
        "recv Mpps",
        "Gb/s",
        "loss",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "relay ns",
        "busy"
    );
    for (key, runs) in report.grouped() {
        let recv = Spread::of(runs.iter().map(|r| r.recv_pps / 1e6));
        let sent = Spread::of(runs.iter().map(|r| r.sent_pps / 1e6));
        let gbps = Spread::of(runs.iter().map(|r| r.gbps));
        let loss = Spread::of(runs.iter().map(|r| r.loss));
        let p50 = Spread::of(runs.iter().map(|r| r.lat_us.p50));
        let p99 = Spread::of(runs.iter().map(|r| r.lat_us.p99));
        let p999 = Spread::of(runs.iter().map(|r| r.lat_us.p999));
        let ns = Spread::of(runs.iter().filter_map(|r| r.relay_ns_per_frame));
        let busy = Spread::of(runs.iter().filter_map(|r| r.relay_busy));
        let m = |s: Option<Spread>| s.map_or(0.0, |s| s.median);
        let recv_cell = match recv {
            Some(s) if runs.len() > 1 => format!("{:.3} ±{:.0}%", s.median, s.pct()),
            Some(s) => format!("{:.3}", s.median),
            None => "-".into(),
        };
        let load = key
            .load_pct
            .map_or_else(|| "max".to_owned(), |p| format!("{p}%"));
        let _ = writeln!(
            out,
            "{:<8} {:<6} {:<10} {:>5} {:>5} {:>6}  {:>10.3} {:>14} {:>6.1} {:>5.1}%  {:>8.1} {:>8.1} {:>9.1}  {:>8} {:>5}",
            key.mode,
            key.backend,
            key.scenario,
            key.size,
            load,
            if key.mode == "direct" { 0 } else { key.relays },
            m(sent),
            recv_cell,
            m(gbps),
            m(loss) * 100.0,
            m(p50),
            m(p99),
            m(p999),
            ns.map_or_else(|| "-".into(), |s| format!("{:.0}", s.median)),
            busy.map_or_else(|| "-".into(), |s| format!("{:.0}%", s.median * 100.0)),
        );
    }
    let ratios = report.ratios();
    if !ratios.is_empty() {
        let _ = writeln!(out, "\nratios of median delivered rates (same invocation):");
        for (name, r) in ratios {
            let _ = writeln!(out, "  {name:<52} {r:>6.3}");
        }
    }
    out.push_str(&paired_text(report));
    out.push_str(&per_hop_text(report));
    out.push_str(&counters_text(report));
    out
}

/// The relay workers' hardware counters per frame, run by run, or why
/// there are none (empty for a report without relay runs).
fn counters_text(report: &Report) -> String {
    let mut out = String::new();
    let counted: Vec<&RunResult> = report
        .results
        .iter()
        .filter(|r| r.relay_instructions_per_frame.is_some())
        .collect();
    if counted.is_empty() {
        if let Some(why) = &report.relay_counters_unavailable {
            let _ = writeln!(
                out,
                "\nrelay worker hardware counters: not available ({why})"
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "\nrelay worker hardware counters (perf_event_open on the worker's thread, user space):\n  {:<44} {:>12} {:>12}",
        "run", "instr/frame", "cycles/frame"
    );
    for r in counted {
        let v = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
        let _ = writeln!(
            out,
            "  {:<44} {:>12} {:>12}",
            format!("{} (repeat {})", r.key(), r.repeat),
            v(r.relay_instructions_per_frame),
            v(r.relay_cycles_per_frame)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(mode: &str, backend: &str, pps: f64) -> RunResult {
        RunResult {
            mode: mode.into(),
            backend: backend.into(),
            scenario: "bulk".into(),
            size: 1400,
            secs: 1.0,
            sent_pps: pps,
            recv_pps: pps,
            gbps: 0.0,
            loss: 0.0,
            lat_us: Latency::default(),
            load: None,
            repeat: 0,
            relays: 1,
            relay_ns_per_frame: None,
            relay_busy: None,
            relay_spin: None,
            per_relay: Vec::new(),
            relay_denied: 0,
            verified: 0,
            corrupt: 0,
            denied_delivered: 0,
            relay_instructions_per_frame: None,
            relay_cycles_per_frame: None,
            slices: Vec::new(),
        }
    }

    fn report(ztna: f64) -> Report {
        Report {
            results: vec![
                result("ztna", "uring", ztna),
                result("vpn", "uring", 100.0),
                result("forward", "uring", 110.0),
            ],
            direct: vec![result("direct", "none", 200.0)],
            relay_counters_unavailable: None,
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(report(90.0)).unwrap();
        let r = &v["results"][0];
        for field in [
            "mode", "backend", "scenario", "size", "secs", "sent_pps", "recv_pps", "gbps", "loss",
        ] {
            assert!(r.get(field).is_some(), "missing {field}");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["lat_us"].get(p).is_some(), "missing lat_us.{p}");
        }
        assert_eq!(v["direct"][0]["mode"], "direct");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, report(90.0));
    }

    #[test]
    fn ratios_compare_within_one_report() {
        let r = report(90.0).ratios();
        assert!((r["ztna uring bulk 1400B max / vpn"] - 0.9).abs() < 1e-9);
        assert!((r["ztna uring bulk 1400B max / direct"] - 0.45).abs() < 1e-9);
        assert!((r["vpn uring bulk 1400B max / forward"] - 100.0 / 110.0).abs() < 1e-9);
    }

    #[test]
    fn a_faster_machine_is_not_a_regression_but_a_worse_ratio_is() {
        // Everything twice as fast: ratios unchanged.
        let mut fast = report(90.0);
        for r in fast.results.iter_mut().chain(&mut fast.direct) {
            r.recv_pps *= 2.0;
        }
        let (_, regressed) = compare(&report(90.0), &fast, 5.0);
        assert!(!regressed);
        let (diff, regressed) = compare(&report(90.0), &report(80.0), 5.0);
        assert!(regressed);
        assert!(diff.contains("REGRESSED"), "{diff}");
        assert!(diff.contains("ztna uring bulk 1400B max / vpn"), "{diff}");
        let (_, regressed) = compare(&report(90.0), &report(87.0), 5.0);
        assert!(!regressed, "a 3.3 % drop is within 5 %");
    }

    #[test]
    fn nothing_in_common_is_reported_not_passed() {
        let (diff, regressed) = compare(&report(90.0), &Report::default(), 5.0);
        assert!(regressed);
        assert!(diff.contains("no ratio in common"));
    }

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.pct() - 50.0).abs() < 1e-9);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn integrity_failures_name_the_run() {
        let mut r = report(90.0);
        r.results[0].corrupt = 2;
        let f = r.integrity_failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("ztna uring bulk"), "{f:?}");
    }

    /// A ztna run through `relays` relays, repeat `repeat`, each relay
    /// spending `ns` per frame.
    fn through(relays: usize, repeat: usize, pps: f64, ns: f64, p50: f64) -> RunResult {
        let mut r = result("ztna", "uring", pps);
        r.relays = relays;
        r.repeat = repeat;
        r.per_relay = (0..relays)
            .map(|_| RelayFigures {
                judged: 1000,
                forwarded: 1000,
                ns_per_frame: Some(ns),
                busy: Some(0.5),
            })
            .collect();
        r.relay_ns_per_frame = Some(ns * relays as f64);
        r.lat_us.p50 = p50;
        r.lat_us.p99 = 2.0 * p50;
        r
    }

    #[test]
    fn one_relay_keys_are_those_of_earlier_reports() {
        // A result written before `relays` existed reads as one relay, and
        // its key (and so every ratio name a baseline holds) is unchanged.
        let mut v = serde_json::to_value(result("ztna", "uring", 1.0)).unwrap();
        v.as_object_mut().unwrap().remove("relays");
        let old: RunResult = serde_json::from_value(v).unwrap();
        assert_eq!(old.relays, 1);
        assert_eq!(old.key().to_string(), "ztna uring bulk 1400B max");
        let two = through(2, 0, 1.0, 1.0, 1.0);
        assert_eq!(
            two.key().to_string(),
            "ztna uring bulk 1400B max via 2 relays"
        );
        assert_ne!(two.key(), old.key());
        assert_eq!(two.key().through(1), old.key());
    }

    #[test]
    fn per_hop_pairs_runs_by_repeat() {
        let report = Report {
            results: vec![
                through(1, 0, 100.0, 400.0, 50.0),
                through(2, 0, 50.0, 420.0, 60.0),
                through(1, 1, 120.0, 380.0, 40.0),
                through(2, 1, 48.0, 400.0, 70.0),
            ],
            direct: vec![result("direct", "none", 200.0)],
            relay_counters_unavailable: None,
        };
        let costs = per_hop(&report);
        assert_eq!(costs.len(), 1);
        let c = &costs[0];
        assert_eq!(c.key.relays, 2);
        assert_eq!(c.pairs, 2);
        // Ratios 0.5 and 0.4 (not 49 / 110, the ratio of the medians).
        assert!((c.rate_ratio.min - 0.4).abs() < 1e-9, "{c:?}");
        assert!((c.rate_ratio.max - 0.5).abs() < 1e-9, "{c:?}");
        // 840 - 400 and 800 - 380 ns for the one added relay.
        let added = c.ns_per_added_relay.unwrap();
        assert_eq!((added.min, added.max), (420.0, 440.0));
        assert_eq!(c.each_relay_ns, vec![Some(410.0), Some(410.0)]);
        assert_eq!((c.added_p50_us.min, c.added_p50_us.max), (10.0, 30.0));
        let text = table(&report);
        assert!(text.contains("per-hop cost"), "{text}");
        assert!(
            text.contains("ztna uring bulk 1400B max via 2 relays / 1 relay"),
            "{text}"
        );
        // Without a two-relay run, no per-hop lines.
        assert!(!table(&self::report(90.0)).contains("per-hop"));
    }

    /// A run sliced into rounds with these delivered rates and relay ns.
    fn sliced(mode: &str, rates: &[f64], ns: f64) -> RunResult {
        let mut r = result(
            mode,
            "uring",
            rates.iter().sum::<f64>() / rates.len() as f64,
        );
        r.slices = rates
            .iter()
            .map(|&recv_pps| SliceFigures {
                recv_pps,
                relay_ns: Some(ns),
                p50_us: 0.0,
                p99_us: 0.0,
            })
            .collect();
        r
    }

    #[test]
    fn paired_ratios_are_medians_of_per_round_ratios() {
        // The machine slows down 30 % over the run; ztna is 2 % slower
        // than vpn in every round, forward 0.1 % faster.
        let drift: Vec<f64> = (0..15)
            .map(|k| 100.0 * (1.0 - 0.02 * f64::from(k)))
            .collect();
        let vpn_rates: Vec<f64> = drift.clone();
        let ztna_rates: Vec<f64> = drift.iter().map(|r| r * 0.98).collect();
        let fwd_rates: Vec<f64> = drift.iter().map(|r| r * 1.001).collect();
        let report = Report {
            results: vec![
                sliced("ztna", &ztna_rates, 420.0),
                sliced("vpn", &vpn_rates, 400.0),
                sliced("forward", &fwd_rates, 380.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let all = paired(&report);
        let find = |mode: &str, against: &str| {
            all.iter()
                .find(|p| p.key.mode == mode && p.against == against)
                .unwrap_or_else(|| panic!("no {mode} vs {against} in {all:?}"))
        };
        let zv = find("ztna", "vpn");
        assert_eq!(zv.rounds, 15);
        let rate = zv.rate.unwrap();
        assert!((rate.median - 0.98).abs() < 1e-9, "{rate}");
        assert!(
            !rate.contains(1.0),
            "a 2 % difference every round is resolved: {rate}"
        );
        assert_eq!(zv.rate_resolved(), Some(true));
        assert!((zv.relay_ns.unwrap().median - 1.05).abs() < 1e-9);
        // 0.1 % in every round is still resolved (no scatter at all) ...
        let fv = find("vpn", "forward");
        assert!((fv.rate.unwrap().median - 1.0 / 1.001).abs() < 1e-9);
        // ... and the ratios the baseline check uses are the paired ones.
        let ratios = report.ratios();
        assert!((ratios["ztna uring bulk 1400B max / vpn"] - 0.98).abs() < 1e-9);
        // Only over the cheaper mode: forward/vpn would repeat vpn/forward.
        assert!(!ratios.contains_key("forward uring bulk 1400B max / vpn"));
        let text = table(&report);
        let line = text
            .lines()
            .find(|l| l.starts_with("ztna/vpn "))
            .unwrap_or_else(|| panic!("no ztna/vpn line:\n{text}"));
        assert!(line.contains("uring bulk 1400B max"), "{line}");
        assert!(line.contains("0.980 [0.980, 0.980] "), "{line}");
        assert!(line.contains("1.050 [1.050, 1.050] "), "{line}");
        assert!(!line.contains('~'), "{line}");
    }

    #[test]
    fn an_unresolved_difference_is_marked() {
        // vpn over forward scatters ±3 % around 1.0.
        let fwd: Vec<f64> = vec![100.0; 12];
        let vpn: Vec<f64> = (0..12)
            .map(|k| if k % 2 == 0 { 103.0 } else { 97.0 })
            .collect();
        let report = Report {
            results: vec![sliced("vpn", &vpn, 400.0), sliced("forward", &fwd, 400.0)],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let p = &paired(&report)[0];
        assert_eq!(p.rate_resolved(), Some(false), "{p:?}");
        let text = table(&report);
        let line = text
            .lines()
            .find(|l| l.starts_with("vpn/forward "))
            .unwrap_or_else(|| panic!("no vpn/forward line:\n{text}"));
        assert!(line.contains("1.000 [0.970, 1.030] ~"), "{line}");
        // Relay CPU per frame identical every round: a zero-width
        // interval at 1.0, unresolved too.
        assert!(line.contains("1.000 [1.000, 1.000] ~"), "{line}");
    }

    #[test]
    fn runs_without_slices_or_with_other_round_counts_are_not_paired() {
        let mut short = sliced("vpn", &[1.0, 1.0, 1.0], 1.0);
        let report = Report {
            results: vec![sliced("ztna", &[1.0; 4], 1.0), short.clone()],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        assert!(paired(&report).is_empty());
        short.slices.clear();
        assert!(paired(&Report {
            results: vec![short.clone(), short],
            ..Report::default()
        })
        .is_empty());
        assert!(!table(&report).contains("paired comparisons"));
    }

    #[test]
    fn paced_runs_pair_their_median_and_tail_latency() {
        let mut ztna = sliced("ztna", &[100.0; 5], 1.0);
        let mut bare = sliced("bare", &[100.0; 5], 1.0);
        for (k, (z, b)) in ztna.slices.iter_mut().zip(&mut bare.slices).enumerate() {
            b.p50_us = 20.0 + k as f64;
            z.p50_us = b.p50_us + 4.0;
            // Tails that swing by milliseconds from round to round, the
            // relay's 300 µs above the bare hop's in every round.
            b.p99_us = 100.0 + 1000.0 * (k % 2) as f64;
            z.p99_us = b.p99_us + 300.0;
        }
        ztna.load = Some(0.1);
        bare.load = Some(0.1);
        let report = Report {
            results: vec![ztna, bare],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let p = &paired(&report)[0];
        assert_eq!(p.against, "bare");
        assert!((p.added_p50_us.unwrap().median - 4.0).abs() < 1e-9, "{p:?}");
        let tail = p.added_p99_us.unwrap();
        assert!((tail.median - 300.0).abs() < 1e-9, "{p:?}");
        assert!(!tail.contains(0.0), "{p:?}");
        let text = table(&report);
        assert!(text.contains("p99 over bare, us"), "{text}");
        assert!(text.contains("+300.0 [+300.0, +300.0]"), "{text}");
    }

    #[test]
    fn the_policy_cost_is_shown_three_ways() {
        let report = Report {
            results: vec![
                sliced("ztna", &[98.0, 97.0, 99.0, 98.0], 420.0),
                sliced("vpn", &[100.0; 4], 400.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let costs = [
            PolicyCost {
                size: 1400,
                ns: Some((170.0, 160.0)),
                instructions: Some((1100.0, 1000.0)),
            },
            PolicyCost {
                size: 64,
                ns: None,
                instructions: None,
            },
        ];
        let text = policy_cost_text(&report, &costs);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("1400B"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("+10.0 (+6.2 %)"), "{line}");
        assert!(line.contains("+100 (+10.0 %)"), "{line}");
        assert!(line.contains("0.980 ["), "{line}");
        assert!(line.contains("1.050 [1.050, 1.050]"), "{line}");
        // Nothing measured at 64 B: dashes, not zeros.
        let small = text
            .lines()
            .find(|l| l.trim_start().starts_with("64B"))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            small.split_whitespace().filter(|w| *w == "-").count(),
            4,
            "{small}"
        );
        assert!(policy_cost_text(&report, &[]).is_empty());
    }

    #[test]
    fn a_drop_counts_only_when_the_whole_interval_is_beyond_the_limit() {
        let base = Report {
            results: vec![
                sliced("ztna", &[98.0; 8], 420.0),
                sliced("vpn", &[100.0; 8], 400.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        // The median fell 5.6 %, but the rounds scatter from 0.70 to 1.04:
        // the interval reaches above the limit (0.98 × 0.95), no verdict.
        let noisy = [70.0, 104.0, 72.0, 103.0, 80.0, 101.0, 86.0, 99.0];
        let now = Report {
            results: vec![
                sliced("ztna", &noisy, 420.0),
                sliced("vpn", &[100.0; 8], 400.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let (diff, regressed) = compare(&base, &now, 5.0);
        assert!(!regressed, "{diff}");
        assert!(diff.contains("ztna uring bulk 1400B max / vpn"), "{diff}");
        // Every round 10 % slower: regressed.
        let slower = Report {
            results: vec![
                sliced("ztna", &[88.0; 8], 420.0),
                sliced("vpn", &[100.0; 8], 400.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let (diff, regressed) = compare(&base, &slower, 5.0);
        assert!(regressed && diff.contains("REGRESSED"), "{diff}");
        // Same rate, but the relay spends 10 % more CPU per frame than vpn's
        // (1.155 against 1.05): regressed, on the CPU line.
        let costlier = Report {
            results: vec![
                sliced("ztna", &[98.0; 8], 462.0),
                sliced("vpn", &[100.0; 8], 400.0),
            ],
            direct: Vec::new(),
            relay_counters_unavailable: None,
        };
        let (diff, regressed) = compare(&base, &costlier, 5.0);
        assert!(regressed, "{diff}");
        let line = diff
            .lines()
            .find(|l| l.contains("(relay ns/frame)") && l.contains("REGRESSED"))
            .unwrap_or_else(|| panic!("{diff}"));
        assert!(line.contains("/ vpn"), "{line}");
    }

    #[test]
    fn relay_counters_show_per_run_or_say_why_not() {
        let mut counted = result("ztna", "uring", 100.0);
        counted.relay_instructions_per_frame = Some(1234.4);
        counted.relay_cycles_per_frame = Some(987.6);
        let text = table(&Report {
            results: vec![counted],
            ..Report::default()
        });
        let line = text
            .lines()
            .find(|l| l.contains("ztna uring bulk 1400B max (repeat 0)"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("1234") && line.contains("988"), "{line}");
        let text = table(&Report {
            results: vec![result("ztna", "uring", 100.0)],
            relay_counters_unavailable: Some("perf_event_open(instructions): ENOENT".into()),
            ..Report::default()
        });
        assert!(
            text.contains(
                "relay worker hardware counters: not available (perf_event_open(instructions): ENOENT)"
            ),
            "{text}"
        );
    }
}
