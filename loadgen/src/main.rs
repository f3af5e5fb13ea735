//! `loadgen`: measures the relay mode against mode on loopback.
//!
//! With no arguments it is the project's embedded default: an in-process
//! relay (one worker, pinned), synthetic users and a connector with real
//! certificates, hop and end-to-end sessions, and the three modes side by
//! side at 1400 and 64 bytes, plus the no-relay ceiling.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::report::{self, Report, RunResult};
use loadgen::scenario::Scenario;
use loadgen::suite::{run_suite, Observer, SuiteConfig};
use loadgen::world::Forwarder;
use relay::io::{Backend, Grouping, IoConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a baseline comparison finds a regression.
const EXIT_REGRESSION: u8 = 2;
/// Exit status when frames arrived corrupted or denied frames got through.
const EXIT_INTEGRITY: u8 = 3;
/// Exit status after SIGINT or SIGTERM (128 + SIGINT, as shells report).
const EXIT_INTERRUPTED: u8 = 130;

/// Load generator for the ZTNA relay: starts a relay on loopback with
/// synthetic users and a connector (real certificates, real hop and
/// end-to-end handshakes, real hop tags and ciphertext) and measures
/// delivered packets/s, Gb/s, loss and latency in each forwarding mode.
///
/// With no arguments: modes ztna, vpn and forward, and the bare hop (a
/// forwarder on the relay's core that only receives and sends: the floor),
/// on the uring backend, scenarios bulk (1400 B) and small (64 B), 3 s per
/// mode at full rate, then paced runs at 10/50/90 % of that rate for
/// latency, and one run without the relay as the machine's ceiling; then
/// the policy's cost in memory (ns/frame now, callgrind instructions/frame
/// as recorded with the build). Each mode has its own
/// relay, all up at once on one core, and the measurements take turns
/// across them in 200 ms slices: the ratios between modes are medians of
/// per-round ratios with 95 % bootstrap intervals (with --secs 12, about
/// ±2 % on the relay's CPU per frame on a 2-core VM; docs/perf.md).
///
/// With --relays 1,2: the same traffic also crosses two relays in a mesh,
/// interleaved with the one-relay runs, and the table adds what the second
/// relay costs (rate ratio, relay CPU per frame, latency).
///
/// Exit status: 0 done; 1 could not run; 2 a ratio regressed against
/// --baseline; 3 frames arrived corrupted or denied frames got through;
/// 130 interrupted (SIGINT or SIGTERM: the current run stops, then
/// everything loadgen started, etcd included; a second signal exits at
/// once).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Relay modes to compare (comma separated): ztna, vpn, forward; and
    /// bare: instead of a relay, the bare hop (relay::bare: the same I/O
    /// backend, settings and core, every datagram sent on unchanged, no
    /// datapath), the floor the relay's latency and cost are read against.
    #[arg(long, value_delimiter = ',', default_value = "ztna,vpn,forward,bare")]
    modes: Vec<Forwarder>,

    /// Relay I/O backend: uring, mmsg, glommio (needs a build with the
    /// `glommio` feature), both (uring and mmsg) or all (the three).
    #[arg(long, default_value = "uring")]
    io: IoChoice,

    /// Scenarios (comma separated): bulk (1400 B, few flows), small (64 B),
    /// imix (64/576/1400 B, 7:4:1), many-flows (10 000 users x 1 000
    /// services, 64 B), deny-mix (bulk with --deny-share of frames denied,
    /// spread evenly), fan-out (bulk, each train round robin over
    /// --fan-out connectors).
    #[arg(long = "scenario", value_delimiter = ',', default_value = "bulk,small")]
    scenarios: Vec<Scenario>,

    /// Frame size in bytes for every scenario but imix (60..=1472).
    #[arg(long)]
    size: Option<usize>,

    /// Seconds measured per full-rate run (per mode: the modes take turns
    /// in --slice-ms slices within it).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,

    /// Seconds measured per paced (latency) run.
    #[arg(long, default_value_t = 1.0)]
    latency_secs: f64,

    /// Length of one slice in milliseconds. Every mode (and path) has its
    /// own relay, all up at once on the same core; measurements take turns
    /// across them slice by slice (A B C, C B A, ...), and each ratio
    /// between modes is the median of the per-round ratios, with a 95 %
    /// bootstrap interval (100..=10000: the relays publish their counters
    /// every 100 ms, and a slice must see at least one publication).
    #[arg(long, default_value_t = 200)]
    slice_ms: u64,

    /// Seconds sent before measuring each run.
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,

    /// Paced runs, in percent of the full rate just measured (comma
    /// separated; "none" for no paced runs).
    #[arg(long, default_value = "10,50,90")]
    loads: String,

    /// Repeat the whole matrix this many times (results report the median
    /// and spread).
    #[arg(long, default_value_t = 1)]
    repeat: usize,

    /// Skip the run without a relay.
    #[arg(long)]
    no_direct: bool,

    /// Shares of frames to denied services in deny-mix (0..0.95, comma
    /// separated: deny-mix runs once per share, labelled deny-mix-PERCENT).
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    deny_share: Vec<f64>,

    /// Connectors fan-out spreads each train over (1..=256, comma
    /// separated: fan-out runs once per count, labelled fan-out-N).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    fan_out: Vec<u32>,

    /// How the relay groups forwarded frames into sends: gather (per
    /// destination across the batch), contiguous (runs back to back in one
    /// buffer, as before gathering) or compact (contiguous, closing gaps by
    /// copying). For measuring the choice.
    #[arg(long, default_value = "gather")]
    grouping: Grouping,

    /// Open one in N resent payloads end to end at the receiver, besides
    /// the timestamped sample leading every train (0: samples only).
    #[arg(long, default_value_t = 64)]
    verify_every: u64,

    /// Frames per GSO train at full rate (1..=64, fewer for large frames).
    #[arg(long, default_value_t = 64)]
    train: usize,

    /// Full-rate runs keep at most this many frames in flight, so the
    /// relay is saturated but not flooded (0: open loop, send as fast as
    /// the sender can and let the relay's socket drop the excess).
    #[arg(long, default_value_t = 2048)]
    window: u64,

    /// Core to pin the relay's worker to; the load generator pins itself
    /// to another core. "none" leaves both to the scheduler. Two relays
    /// share this one core, so a path of two has the relaying CPU of a
    /// path of one.
    #[arg(long, default_value = "0")]
    relay_core: String,

    /// Relays each frame crosses, one path per value (comma separated):
    /// 1, or 2: users attached to relay A, the connector to relay B, every
    /// frame forwarded A -> B over their mesh link and checked against
    /// the policy on both. "1,2" runs both paths with the same traffic,
    /// interleaved slice by slice, and reports the per-hop cost. 2 needs
    /// the etcd binary (Debian: etcd-server), started on loopback for the
    /// run unless --etcd names one.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    relays: Vec<usize>,

    /// With --relays 2: register the relays in this running etcd (client
    /// URL) instead of starting one. A scratch etcd only: the relays
    /// register under /ztna/v1/ like a real mesh's.
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,

    /// Datagrams a relay worker (and bare hop) handles per poll, at most:
    /// the batch limit (relay run --batch).
    #[arg(long, value_name = "N", default_value_t = IoConfig::default().batch)]
    batch: usize,

    /// Busy polling on the relays (and bare hops) and on the load
    /// generator's own receiver: spin this many microseconds for datagrams
    /// before sleeping (relay run --busy-poll; 0: off). Spinning shows in
    /// relay busy.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    busy_poll: u64,

    /// Write every result as JSON: {"results": [...], "direct": [...]}.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Compare ratios (not absolute rates) with this earlier --json file.
    #[arg(long)]
    baseline: Option<PathBuf>,

    /// With --baseline: fail when a ratio fell by more than this percent.
    #[arg(long, default_value_t = 5.0)]
    max_regression: f64,

    /// Seconds per case of the in-memory datapath timed after the runs,
    /// printed with the recorded callgrind instructions per frame and the
    /// hardware counters where there are some (0: skip).
    #[arg(long, default_value_t = 0.25)]
    cost_secs: f64,
}

#[derive(Debug, Clone, Copy)]
enum IoChoice {
    One(Backend),
    /// uring and mmsg.
    Both,
    /// uring, mmsg and glommio.
    All,
}

impl std::str::FromStr for IoChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "both" => Ok(IoChoice::Both),
            "all" => Ok(IoChoice::All),
            other => other.parse::<Backend>().map(IoChoice::One).map_err(|_| {
                format!("unknown backend {other:?}: use uring, mmsg, glommio, both or all")
            }),
        }
    }
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && (0.0..=600.0).contains(&v),
        "--{name} must be between 0 and 600 seconds, not {v}"
    );
    Ok(Duration::from_secs_f64(v))
}

fn parse_loads(s: &str) -> anyhow::Result<Vec<f64>> {
    if s.trim() == "none" || s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| {
            let pct: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("--loads: {p:?} is not a percentage"))?;
            anyhow::ensure!(
                pct > 0.0 && pct <= 100.0,
                "--loads: {pct} is not in (0, 100]"
            );
            Ok(pct / 100.0)
        })
        .collect()
}

impl Cli {
    fn suite(&self) -> anyhow::Result<SuiteConfig> {
        anyhow::ensure!(!self.modes.is_empty(), "--modes names no mode");
        anyhow::ensure!(!self.scenarios.is_empty(), "--scenario names no scenario");
        anyhow::ensure!(self.repeat >= 1, "--repeat must be at least 1");
        anyhow::ensure!(
            (1..=64).contains(&self.train),
            "--train must be between 1 and 64"
        );
        if let Some(size) = self.size {
            anyhow::ensure!(
                (loadgen::scenario::MIN_FRAME..=loadgen::scenario::MAX_FRAME).contains(&size),
                "--size must be between {} and {} bytes",
                loadgen::scenario::MIN_FRAME,
                loadgen::scenario::MAX_FRAME
            );
        }
        anyhow::ensure!(!self.deny_share.is_empty(), "--deny-share names no share");
        for &share in &self.deny_share {
            anyhow::ensure!(
                (0.0..=0.95).contains(&share),
                "--deny-share: {share} is not between 0 and 0.95"
            );
        }
        anyhow::ensure!(!self.fan_out.is_empty(), "--fan-out names no count");
        for &n in &self.fan_out {
            anyhow::ensure!(
                (1..=loadgen::scenario::MAX_FAN_OUT).contains(&n),
                "--fan-out: {n} is not between 1 and {}",
                loadgen::scenario::MAX_FAN_OUT
            );
        }
        anyhow::ensure!(
            (100..=10_000).contains(&self.slice_ms),
            "--slice-ms must be between 100 and 10000, not {} (the relays publish their \
             counters every 100 ms: a shorter slice can miss them all)",
            self.slice_ms
        );
        anyhow::ensure!(!self.relays.is_empty(), "--relays names no path");
        for (k, &n) in self.relays.iter().enumerate() {
            anyhow::ensure!(
                n == 1 || n == 2,
                "--relays: {n} is not a path loadgen can build; use 1 or 2"
            );
            anyhow::ensure!(!self.relays[..k].contains(&n), "--relays names {n} twice");
        }
        anyhow::ensure!(
            self.etcd.is_none() || self.relays.contains(&2),
            "--etcd is only used with --relays 2"
        );
        anyhow::ensure!(
            (1..=relay::config::MAX_BATCH).contains(&self.batch),
            "--batch must be between 1 and {}",
            relay::config::MAX_BATCH
        );
        let busy_poll = (self.busy_poll > 0).then(|| Duration::from_micros(self.busy_poll));
        IoConfig::check_busy_poll(busy_poll).context("--busy-poll")?;
        let relay_core = match self.relay_core.as_str() {
            "none" => None,
            n => Some(n.parse::<usize>().with_context(|| {
                format!("--relay-core: {n:?} is not a core number or \"none\"")
            })?),
        };
        Ok(SuiteConfig {
            modes: self.modes.clone(),
            backends: match self.io {
                IoChoice::One(b) => vec![b],
                IoChoice::Both => vec![Backend::Uring, Backend::Mmsg],
                IoChoice::All => vec![Backend::Uring, Backend::Mmsg, Backend::Glommio],
            },
            scenarios: self.scenarios.clone(),
            size: self.size,
            secs: seconds("secs", self.secs)?,
            latency_secs: seconds("latency-secs", self.latency_secs)?,
            warmup: seconds("warmup", self.warmup)?,
            loads: parse_loads(&self.loads)?,
            repeat: self.repeat,
            direct: !self.no_direct,
            deny_shares: self.deny_share.clone(),
            fan_outs: self.fan_out.clone(),
            grouping: self.grouping,
            verify_every: self.verify_every,
            train: self.train,
            window: (self.window > 0).then_some(self.window),
            relay_core,
            relays: self.relays.clone(),
            etcd: self.etcd.clone(),
            slice: Duration::from_millis(self.slice_ms),
            batch: self.batch,
            busy_poll,
        })
    }
}

/// Progress on stderr: a bar per run where stderr is a terminal, a line per
/// finished run always.
struct Console {
    bar: Option<ProgressBar>,
    done: usize,
    total: usize,
    /// Set by the first SIGINT or SIGTERM (a second one kills at once).
    stop: Arc<AtomicBool>,
}

impl Observer for Console {
    fn start(&mut self, what: &str) {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("[{}/{}]", self.done + 1, self.total));
        bar.set_message(what.to_owned());
        self.bar = Some(bar);
    }

    fn progress(&mut self, done: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position((done.clamp(0.0, 1.0) * 1000.0) as u64);
        }
    }

    fn finish(&mut self, r: &RunResult) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.done += 1;
        eprintln!(
            "[{}/{}] {}: {:.3} Mpps delivered, {:.2} Gb/s, loss {:.2} %, p99 {:.1} us{}{}",
            self.done,
            self.total,
            r.key(),
            r.recv_pps / 1e6,
            r.gbps,
            r.loss * 100.0,
            r.lat_us.p99,
            r.relay_busy
                .map_or_else(String::new, |b| format!(", relay busy {:.0} %", b * 100.0)),
            r.relay_spin
                .map_or_else(String::new, |s| format!(" (spinning {:.0} %)", s * 100.0)),
        );
    }

    fn note(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The first SIGINT or SIGTERM sets the returned flag: the suite stops at
/// the end of the current run or slice and tears down what it started (the
/// etcd of a two-relay run is a child process that would outlive us). A
/// second one exits at once.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
    }
    Ok(stop)
}

/// Pins this thread to a core other than the relay's, when there is one.
fn pin_self(relay_core: Option<usize>) -> Option<usize> {
    // Before pinning: the relays started later pin their workers from the
    // process's full set of cores, which this call records.
    let cores = relay::allowed_cores();
    let relay = cores.get(relay_core? % cores.len().max(1))?;
    let mine = cores.iter().rev().find(|c| c.id != relay.id)?;
    core_affinity::set_for_current(*mine).then_some(mine.id)
}

fn main() -> ExitCode {
    if let Err(e) = proto::hoptag::lanes::check_cpu() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let cfg = cli.suite()?;
    let cost_secs = seconds("cost-secs", cli.cost_secs)?;
    // Read the baseline first: a typo should not cost a whole run.
    let baseline: Option<Report> = match &cli.baseline {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read baseline {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!("baseline {} is not a loadgen --json file", path.display())
            })?)
        }
        None => None,
    };
    match pin_self(cfg.relay_core) {
        Some(core) => eprintln!(
            "relay {} on core {}, load generator on core {core}",
            if cfg.relays.contains(&2) {
                "workers (all relays)"
            } else {
                "worker"
            },
            cfg.relay_core.unwrap_or(0)
        ),
        None => eprintln!("not pinned: relay and load generator may share cores"),
    }
    let mut console = Console {
        bar: None,
        done: 0,
        total: cfg.runs(),
        stop: stop_on_signals()?,
    };
    let report = match run_suite(&cfg, &mut console) {
        Ok(report) => report,
        Err(e) if e.is::<loadgen::run::Interrupted>() => {
            eprintln!("loadgen: interrupted; the relays (and etcd) it started are stopped");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(e) => return Err(e),
    };
    println!("{}", report::table(&report));
    if !cost_secs.is_zero() {
        let cost = bench::cost::measure(cost_secs)?;
        println!("{cost}");
        let three_ways: Vec<report::PolicyCost> = [64, 1400]
            .into_iter()
            .map(|size| {
                let pair = |f: fn(&bench::cost::CaseCost) -> Option<f64>| {
                    let z = cost.row(proto::datapath::Mode::Ztna, size).and_then(f)?;
                    let v = cost.row(proto::datapath::Mode::Vpn, size).and_then(f)?;
                    Some((z, v))
                };
                report::PolicyCost {
                    size,
                    ns: pair(|r| Some(r.ns_per_frame)),
                    instructions: pair(|r| r.recorded),
                }
            })
            .collect();
        print!("{}", report::policy_cost_text(&report, &three_ways));
    }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    let failures = report.integrity_failures();
    if !failures.is_empty() {
        eprintln!("loadgen: integrity check FAILED:");
        for f in failures {
            eprintln!("  {f}");
        }
        return Ok(ExitCode::from(EXIT_INTEGRITY));
    }
    if let Some(base) = baseline {
        let (diff, regressed) = report::compare(&base, &report, cli.max_regression);
        println!(
            "against the baseline (max regression {} %):\n{diff}",
            cli.max_regression
        );
        if regressed {
            eprintln!(
                "loadgen: a ratio regressed by more than {} %",
                cli.max_regression
            );
            return Ok(ExitCode::from(EXIT_REGRESSION));
        }
    }
    Ok(ExitCode::SUCCESS)
}
