//! Results: the JSON shape, the human table, and the regression check
//! against a stored baseline.
//!
//! Absolute rates drift between sittings on shared machines; ratios taken
//! within one invocation do not. So the table and the baseline check both
//! compare each relay run with the `direct` run (no relay) of the same
//! scenario and size from the same invocation, and with the other modes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

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

/// One (mode, backend, scenario, size, load) run.
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
    /// Relay worker CPU time per frame it judged, ns, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ns_per_frame: Option<f64>,
    /// Share of the run the relay worker was on CPU, when readable: near 1
    /// means the relay was the bound, well below 1 the load generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_busy: Option<f64>,
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
}

/// What a `--json` file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Runs through the relay.
    pub results: Vec<RunResult>,
    /// Runs straight from sender to receiver: the machine's ceiling for the
    /// load generator.
    pub direct: Vec<RunResult>,
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
        let relay = m.relay.as_ref();
        let judged = relay.map_or(0, |r| r.counters.frames);
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
            relay_ns_per_frame: relay
                .and_then(|r| r.cpu)
                .filter(|_| judged > 0)
                .map(|cpu| cpu.as_nanos() as f64 / judged as f64),
            relay_busy: relay
                .and_then(|r| r.cpu)
                .map(|cpu| cpu.as_secs_f64() / secs),
            relay_denied: relay.map_or(0, |r| {
                r.counters.dropped(proto::datapath::DropReason::Denied)
            }),
            verified: m.sink.verified,
            corrupt: m.sink.corrupt + m.sink.bad_hop,
            denied_delivered: m.sink.denied_delivered,
        }
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
    }
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
}

impl RunKey {
    /// The key of a run; `load` as a share (0.5 is 50 %).
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
        }
    }
}

impl Labels<'_> {
    /// The key the run will be reported under.
    pub fn key(&self) -> RunKey {
        RunKey::new(self.mode, self.backend, self.scenario, self.size, self.load)
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
            Some(p) => write!(f, " @{p}%"),
            None => write!(f, " max"),
        }
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
    /// reference run of the same invocation. References: the `direct` run
    /// of the same scenario and size, and the `forward` and `vpn` runs of
    /// the same backend, scenario, size and load.
    pub fn ratios(&self) -> BTreeMap<String, f64> {
        let groups = self.grouped();
        let median = |k: &RunKey| {
            groups
                .get(k)
                .and_then(|rs| Spread::of(rs.iter().map(|r| r.recv_pps)))
                .map(|s| s.median)
        };
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
                    ..key.clone()
                },
            )];
            for m in ["forward", "vpn"] {
                if key.mode != m {
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
                if let Some(base) = median(&rk).filter(|b| *b > 0.0) {
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

/// Compares the ratios of `current` with those of `baseline`: any ratio
/// present in both that fell by more than `max_regression_pct` percent is
/// a regression. Returns the readable diff of every shared ratio and
/// whether any regressed.
pub fn compare(baseline: &Report, current: &Report, max_regression_pct: f64) -> (String, bool) {
    let base = baseline.ratios();
    let cur = current.ratios();
    let mut out = String::new();
    let mut regressed = false;
    let mut shared = 0;
    let _ = writeln!(
        out,
        "{:<52} {:>9} {:>9} {:>8}",
        "ratio (median delivered rate)", "baseline", "now", "change"
    );
    for (name, b) in &base {
        let Some(c) = cur.get(name) else { continue };
        shared += 1;
        let change = (c / b - 1.0) * 100.0;
        let bad = change < -max_regression_pct;
        regressed |= bad;
        let _ = writeln!(
            out,
            "{:<52} {:>9.3} {:>9.3} {:>+7.1}%{}",
            name,
            b,
            c,
            change,
            if bad { "  REGRESSED" } else { "" }
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
        "{:<8} {:<6} {:<10} {:>5} {:>5}  {:>10} {:>14} {:>6} {:>6}  {:>8} {:>8} {:>9}  {:>8} {:>5}",
        "mode",
        "io",
        "scenario",
        "size",
        "load",
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
            "{:<8} {:<6} {:<10} {:>5} {:>5}  {:>10.3} {:>14} {:>6.1} {:>5.1}%  {:>8.1} {:>8.1} {:>9.1}  {:>8} {:>5}",
            key.mode,
            key.backend,
            key.scenario,
            key.size,
            load,
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
            relay_ns_per_frame: None,
            relay_busy: None,
            relay_denied: 0,
            verified: 0,
            corrupt: 0,
            denied_delivered: 0,
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
}
