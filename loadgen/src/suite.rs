//! A whole invocation: for every repeat, scenario, backend and mode, start a
//! relay, connect a fleet, measure the full rate, then the paced latency
//! runs; plus one run without a relay per scenario and repeat.

use std::time::{Duration, Instant};

use proto::datapath::Mode;
use relay::io::Backend;

use crate::fleet::Fleet;
use crate::report::{Labels, Report, RunResult};
use crate::run::{run, Measurement, RunSpec};
use crate::scenario::{Plan, Scenario};
use crate::world::{Topology, World, WorldConfig};

/// Everything an invocation measures.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Relay modes, in run order.
    pub modes: Vec<Mode>,
    /// Relay backends.
    pub backends: Vec<Backend>,
    /// Scenarios.
    pub scenarios: Vec<Scenario>,
    /// Frame size override (all but `imix`).
    pub size: Option<usize>,
    /// Measured time of full-rate runs.
    pub secs: Duration,
    /// Measured time of paced runs.
    pub latency_secs: Duration,
    /// Warm-up before each run.
    pub warmup: Duration,
    /// Paced runs, as shares of the full rate measured just before.
    pub loads: Vec<f64>,
    /// Repetitions of the whole matrix.
    pub repeat: usize,
    /// Whether to measure the no-relay ceiling.
    pub direct: bool,
    /// Share of denied flows in `deny-mix`.
    pub deny_share: f64,
    /// Open one in this many pool records end to end (0: samples only).
    pub verify_every: u64,
    /// Frames per GSO train at full rate.
    pub train: usize,
    /// Most frames in flight in full-rate runs (`None`: open loop).
    pub window: Option<u64>,
    /// Core of the relay's worker (the load generator keeps off it).
    pub relay_core: Option<usize>,
}

impl SuiteConfig {
    /// Runs in the whole invocation (for progress).
    pub fn runs(&self) -> usize {
        let per_world = 1 + self.loads.len();
        let relay_runs = self.modes.len() * self.backends.len() * per_world;
        self.repeat * self.scenarios.len() * (relay_runs + usize::from(self.direct))
    }
}

/// What the suite tells its caller as it goes.
pub trait Observer {
    /// A run is starting; `progress` will be called with its share done.
    fn start(&mut self, what: &str);
    /// Share of the current run done.
    fn progress(&mut self, done: f64);
    /// A run finished.
    fn finish(&mut self, result: &RunResult);
    /// Something worth saying (setup steps, fallbacks).
    fn note(&mut self, text: &str);
}

/// Runs the suite and returns every result.
pub fn run_suite(cfg: &SuiteConfig, obs: &mut dyn Observer) -> anyhow::Result<Report> {
    let epoch = Instant::now();
    let mut report = Report::default();
    for repeat in 0..cfg.repeat {
        for &scenario in &cfg.scenarios {
            let plan = Plan::new(
                scenario,
                cfg.size.unwrap_or(scenario.default_size()),
                cfg.deny_share,
            );
            let size = plan.mean_size();
            let mut direct_done = !cfg.direct;
            for &backend in &cfg.backends {
                for &mode in &cfg.modes {
                    let setup = Instant::now();
                    obs.note(&format!(
                        "{mode} {backend} {scenario}: starting a relay, {} users, {} services",
                        plan.users, plan.services
                    ));
                    let world = World::start(&WorldConfig {
                        users: plan.users,
                        services: plan.services,
                        mode,
                        io: backend,
                        workers: 1,
                        relay_core: cfg.relay_core,
                        mesh: None,
                        topology: Topology::OneRelay,
                    })?;
                    let actual = world.relay.backend();
                    if actual != backend {
                        obs.note(&format!(
                            "the relay could not use {backend} and runs on {actual}; results are labelled {actual}"
                        ));
                    }
                    let mut fleet = Fleet::connect(&world, &plan, cfg.verify_every, epoch)?;
                    obs.note(&format!(
                        "{} hop and end-to-end sessions up in {:.2} s",
                        plan.flows.len(),
                        setup.elapsed().as_secs_f64()
                    ));
                    let full = RunSpec {
                        secs: cfg.secs,
                        warmup: cfg.warmup,
                        rate: None,
                        train: cfg.train,
                        window: cfg.window,
                        denied_arrive: mode != Mode::Ztna,
                    };
                    if !direct_done {
                        direct_done = true;
                        let labels = Labels {
                            mode: "direct",
                            backend: "none",
                            scenario: scenario.name(),
                            size,
                            load: None,
                            repeat,
                            enforces_policy: false,
                            relays: 0,
                        };
                        fleet.sink.set_hop_check(false);
                        let target = fleet.receiver_addr;
                        // Without a relay every frame arrives.
                        let spec = RunSpec {
                            denied_arrive: true,
                            ..full
                        };
                        let m = measure(obs, &labels, |p| run(&mut fleet, target, &spec, &[], p))?;
                        fleet.sink.set_hop_check(true);
                        let r = RunResult::new(labels, &m);
                        obs.finish(&r);
                        report.direct.push(r);
                    }
                    let mode_name = mode.to_string();
                    let backend_name = actual.to_string();
                    let labels = Labels {
                        mode: &mode_name,
                        backend: &backend_name,
                        scenario: scenario.name(),
                        size,
                        load: None,
                        repeat,
                        enforces_policy: mode == Mode::Ztna,
                        relays: 1,
                    };
                    let relay_addr = world.relay_addr();
                    let m = measure(obs, &labels, |p| {
                        run(&mut fleet, relay_addr, &full, &[&world.relay], p)
                    })?;
                    let max = RunResult::new(labels, &m);
                    obs.finish(&max);
                    // Paced runs offer a share of what the relay delivered at most
                    // (scaled back up by the frames policy drops).
                    let delivered_share = if mode == Mode::Ztna {
                        (1.0 - plan.denied_share()).max(0.05)
                    } else {
                        1.0
                    };
                    let max_pps = max.sent_pps.min(max.recv_pps / delivered_share);
                    report.results.push(max);
                    for &load in &cfg.loads {
                        let paced = RunSpec {
                            secs: cfg.latency_secs,
                            warmup: cfg.warmup,
                            rate: Some((max_pps * load).max(1000.0)),
                            train: cfg.train,
                            window: None,
                            denied_arrive: mode != Mode::Ztna,
                        };
                        let labels = Labels {
                            load: Some(load),
                            ..labels
                        };
                        let m = measure(obs, &labels, |p| {
                            run(&mut fleet, relay_addr, &paced, &[&world.relay], p)
                        })?;
                        let r = RunResult::new(labels, &m);
                        obs.finish(&r);
                        report.results.push(r);
                    }
                    drop(fleet);
                    let relay_report = world.relay.stop();
                    for (k, w) in relay_report.workers.iter().enumerate() {
                        let io = &w.io;
                        tracing::debug!(
                            worker = k,
                            datagrams_in = io.datagrams_in,
                            gro_runs = io.gro_runs,
                            datagrams_out = io.datagrams_out,
                            send_calls = io.send_calls,
                            syscalls = io.syscalls,
                            empty_polls = io.empty_polls,
                            recv_no_buffers = io.recv_no_buffers,
                            send_dropped = io.send_dropped,
                            "relay worker I/O"
                        );
                    }
                }
            }
        }
    }
    Ok(report)
}

fn measure(
    obs: &mut dyn Observer,
    labels: &Labels<'_>,
    f: impl FnOnce(&mut dyn FnMut(f64)) -> anyhow::Result<Measurement>,
) -> anyhow::Result<Measurement> {
    obs.start(&labels.key().to_string());
    f(&mut |p| obs.progress(p))
}
