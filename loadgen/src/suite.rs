//! A whole invocation: for every repeat, scenario and backend, start one
//! rig per mode and path (a relay, or two in a mesh, each with its own
//! fleet of users and connectors, every relay worker on the same core),
//! measure the full rate, then the paced latency runs; plus one run
//! without a relay per scenario and repeat.
//!
//! The rigs are all up at once and each measurement alternates between
//! them in slices of [`SLICE`] by default (A B C, then C B A, and so on), so
//! that the VM's drift over a run falls on every rig alike. Each rig's
//! slices add up to its result, and are also kept one by one: round `k` of
//! two rigs ran within a fraction of a second of each other, and the
//! per-round ratios give the paired comparisons of [`crate::report`].

use std::time::{Duration, Instant};

use anyhow::Context as _;

use relay::io::{Backend, Grouping, IoConfig};

use crate::fleet::Fleet;
use crate::mesh;
use crate::report::{Labels, Report, RunResult};
use crate::run::{run, Hop, Interrupted, Measurement, RunSpec};
use crate::scenario::{Plan, Scenario};
use crate::world::{Forwarder, Topology, World, WorldConfig};

/// Default length of one slice when rigs are interleaved: short against
/// the VM's drift, so that the rigs of one round see the same machine, and
/// twice the relay's 100 ms statistics period (each slice's relay figures
/// come from two snapshots of it, taken together, so CPU per frame stays
/// consistent).
pub const SLICE: Duration = Duration::from_millis(200);
/// Warm-up of every slice after a rig's first: enough to refill the
/// in-flight window, the sessions and caches are already warm.
const SLICE_WARMUP: Duration = Duration::from_millis(30);

/// Everything an invocation measures.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Relay modes (or the bare hop), in run order.
    pub modes: Vec<Forwarder>,
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
    /// Shares of denied flows in `deny-mix`: one run of it per share.
    pub deny_shares: Vec<f64>,
    /// Connectors of `fan-out`: one run of it per count.
    pub fan_outs: Vec<u32>,
    /// How the relays group forwarded frames into sends.
    pub grouping: Grouping,
    /// Open one in this many pool records end to end (0: samples only).
    pub verify_every: u64,
    /// Frames per GSO train at full rate.
    pub train: usize,
    /// Most frames in flight in full-rate runs (`None`: open loop).
    pub window: Option<u64>,
    /// Core of the relay's worker (the load generator keeps off it); with
    /// two relays, both workers share it.
    pub relay_core: Option<usize>,
    /// Paths compared, as relays each frame crosses (1, or 2 through a
    /// mesh link), in run order.
    pub relays: Vec<usize>,
    /// etcd for two-relay paths (client URL); `None`: start one.
    pub etcd: Option<String>,
    /// Length of one slice when rigs take turns.
    pub slice: Duration,
    /// Datagrams a relay worker (or bare hop) handles per poll, at most.
    pub batch: usize,
    /// The relays' (and bare hops') busy polling ([`IoConfig::busy_poll`]).
    pub busy_poll: Option<Duration>,
}

impl SuiteConfig {
    /// Runs in the whole invocation (for progress).
    pub fn runs(&self) -> usize {
        let per_world = 1 + self.loads.len();
        let relay_runs = self.modes.len() * self.backends.len() * per_world * self.relays.len();
        self.repeat * self.plans().len() * (relay_runs + usize::from(self.direct))
    }

    /// The plans, in run order: one per scenario, `deny-mix` once per deny
    /// share and `fan-out` once per connector count.
    pub fn plans(&self) -> Vec<Plan> {
        let mut plans = Vec::new();
        for &scenario in &self.scenarios {
            let size = self.size.unwrap_or(scenario.default_size());
            match scenario {
                Scenario::DenyMix => plans.extend(
                    self.deny_shares
                        .iter()
                        .map(|&share| Plan::new(scenario, size, share)),
                ),
                Scenario::FanOut => {
                    plans.extend(self.fan_outs.iter().map(|&n| Plan::fan_out(size, n)))
                }
                _ => plans.push(Plan::new(scenario, size, 0.0)),
            }
        }
        plans
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
    /// Whether the user asked to stop (checked during runs and between
    /// them; the suite then returns [`Interrupted`] after tearing down what
    /// it started, etcd among it).
    fn interrupted(&self) -> bool {
        false
    }
}

/// One path under test: its relays and the fleet attached to them.
struct PathRig {
    mode: Forwarder,
    world: World,
    fleet: Fleet,
    relays: usize,
    backend: String,
}

/// Runs the suite and returns every result.
pub fn run_suite(cfg: &SuiteConfig, obs: &mut dyn Observer) -> anyhow::Result<Report> {
    let epoch = Instant::now();
    // One etcd for the whole invocation; dropping it stops it.
    let mut _etcd_server = None;
    let mut etcd = cfg.etcd.clone();
    if cfg.relays.iter().any(|&n| n > 1) && etcd.is_none() {
        obs.note("starting etcd on loopback for the two-relay mesh");
        let server = mesh::start_etcd()?;
        etcd = Some(server.endpoint());
        _etcd_server = Some(server);
    }
    let topologies = cfg
        .relays
        .iter()
        .map(|&n| match (n, &etcd) {
            (1, _) => Ok(Topology::OneRelay),
            (2, Some(etcd)) => Ok(Topology::TwoRelays { etcd: etcd.clone() }),
            (n, _) => Err(anyhow::anyhow!(
                "paths of {n} relays are not supported: 1 or 2"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut report = Report::default();
    let plans = cfg.plans();
    for repeat in 0..cfg.repeat {
        for plan in &plans {
            let scenario = plan.label.as_str();
            let size = plan.mean_size();
            let mut direct_done = !cfg.direct;
            for &backend in &cfg.backends {
                // Every (mode, path) of this plan and backend is up at once,
                // each with its own fleet, all relays on the same core; the
                // measurements take turns slice by slice.
                let mut rigs = Vec::with_capacity(cfg.modes.len() * topologies.len());
                for &mode in &cfg.modes {
                    for topology in &topologies {
                        if obs.interrupted() {
                            return Err(Interrupted.into());
                        }
                        rigs.push(start_path(cfg, obs, plan, topology, mode, backend, epoch)?);
                    }
                }
                let full = |mode: Forwarder| RunSpec {
                    secs: cfg.secs,
                    warmup: cfg.warmup,
                    rate: None,
                    train: cfg.train,
                    window: cfg.window,
                    denied_arrive: !mode.enforces_policy(),
                };
                if !direct_done {
                    direct_done = true;
                    let labels = Labels {
                        mode: "direct",
                        backend: "none",
                        scenario,
                        size,
                        load: None,
                        repeat,
                        enforces_policy: false,
                        relays: 0,
                    };
                    let fleet = &mut rigs[0].fleet;
                    let hop_check = fleet.sink.hop_check();
                    fleet.sink.set_hop_check(false);
                    let target = fleet.receiver_addr;
                    // Without a relay every frame arrives.
                    let spec = RunSpec {
                        denied_arrive: true,
                        ..full(Forwarder::Bare)
                    };
                    let m = measure(obs, &labels, |p| {
                        run::<dyn Hop>(fleet, target, &spec, &[], p)
                    })?;
                    fleet.sink.set_hop_check(hop_check);
                    let r = RunResult::new(labels, &m);
                    obs.finish(&r);
                    report.direct.push(r);
                }
                // Labels of each rig, owned: the runs borrow the rigs
                // mutably.
                let names: Vec<(Forwarder, String, usize)> = rigs
                    .iter()
                    .map(|p| (p.mode, p.backend.clone(), p.relays))
                    .collect();
                let mode_names: Vec<String> = names.iter().map(|(m, ..)| m.to_string()).collect();
                let labels = |load: Option<f64>| -> Vec<Labels<'_>> {
                    names
                        .iter()
                        .zip(&mode_names)
                        .map(|((mode, backend, relays), mode_name)| Labels {
                            mode: mode_name,
                            backend,
                            scenario,
                            size,
                            load,
                            repeat,
                            enforces_policy: mode.enforces_policy(),
                            relays: *relays,
                        })
                        .collect()
                };
                let all_labels = labels(None);
                let specs: Vec<RunSpec> = names.iter().map(|(m, ..)| full(*m)).collect();
                let ms = interleaved(obs, cfg.slice, &mut rigs, &specs, &all_labels)?;
                // Paced runs offer every rig the same rate, so that their
                // latencies compare like for like: a share of the slowest
                // rig's maximum (scaled back up by the frames policy
                // drops, for ztna).
                let mut max_pps = f64::INFINITY;
                for ((l, m), (mode, ..)) in all_labels.iter().zip(&ms).zip(&names) {
                    let delivered_share = if mode.enforces_policy() {
                        (1.0 - plan.denied_share()).max(0.05)
                    } else {
                        1.0
                    };
                    if report.relay_counters_unavailable.is_none() {
                        report
                            .relay_counters_unavailable
                            .clone_from(&m.total.hw_unavailable);
                    }
                    let max = RunResult::new(*l, &m.total).with_slices(&m.slices);
                    obs.finish(&max);
                    max_pps = max_pps.min(max.sent_pps.min(max.recv_pps / delivered_share));
                    report.results.push(max);
                }
                for &load in &cfg.loads {
                    let specs: Vec<RunSpec> = names
                        .iter()
                        .map(|(mode, ..)| RunSpec {
                            secs: cfg.latency_secs,
                            warmup: cfg.warmup,
                            rate: Some((max_pps * load).max(1000.0)),
                            train: cfg.train,
                            window: None,
                            denied_arrive: !mode.enforces_policy(),
                        })
                        .collect();
                    let all_labels = labels(Some(load));
                    let ms = interleaved(obs, cfg.slice, &mut rigs, &specs, &all_labels)?;
                    for (l, m) in all_labels.iter().zip(&ms) {
                        let r = RunResult::new(*l, &m.total).with_slices(&m.slices);
                        obs.finish(&r);
                        report.results.push(r);
                    }
                }
                for rig in rigs {
                    drop(rig.fleet);
                    for (r, relay_report) in rig.world.stop().iter().enumerate() {
                        // A relay thread that panicked makes every figure
                        // of this run suspect: say so, fail the run.
                        if let Some(failure) = relay_report.failures.first() {
                            anyhow::bail!(
                                "relay {r} of the {} rig: {failure}; the figures of this run are not valid",
                                rig.mode
                            );
                        }
                        for (k, w) in relay_report.workers.iter().enumerate() {
                            let io = &w.io;
                            tracing::debug!(
                                relay = r,
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
    }
    Ok(report)
}

/// Starts the relays of one path and connects a fleet to them.
fn start_path(
    cfg: &SuiteConfig,
    obs: &mut dyn Observer,
    plan: &Plan,
    topology: &Topology,
    mode: Forwarder,
    backend: Backend,
    epoch: Instant,
) -> anyhow::Result<PathRig> {
    let setup = Instant::now();
    let relays = topology.relays();
    obs.note(&format!(
        "{mode} {backend} {}: starting {}, {} users, {} services{}",
        plan.label,
        match relays {
            1 => "a relay".to_owned(),
            n => format!("{n} relays in a mesh (users on the first, the connector on the last)"),
        },
        plan.users,
        plan.services,
        if plan.connectors > 1 {
            format!(", {} connectors", plan.connectors)
        } else {
            String::new()
        }
    ));
    let mut world = World::start(&WorldConfig {
        users: plan.users,
        services: plan.services,
        mode: mode.relay_mode(),
        io: backend,
        workers: 1,
        relay_core: cfg.relay_core,
        mesh: None,
        topology: topology.clone(),
        // The relay as deployed: the audit counts every ztna decision.
        audit: relay::audit::AuditConfig::default(),
        connectors: plan.connectors,
        io_config: IoConfig {
            grouping: cfg.grouping,
            batch: cfg.batch,
            busy_poll: cfg.busy_poll,
            ..IoConfig::default()
        },
    })?;
    let actual = world.relay.backend();
    if world.relays().iter().any(|r| r.backend() != backend) {
        obs.note(&format!(
            "the relay could not use {backend} and runs on {actual}; results are labelled {actual}"
        ));
    }
    let mut fleet = Fleet::connect(&world, plan, cfg.verify_every, epoch)?;
    // The receiver waits the way the relays do: with busy polling, a
    // sample's latency holds no wake-up of the load generator's core
    // either (it spins on a core of its own).
    fleet
        .receiver
        .set_busy_poll(cfg.busy_poll)
        .context("--busy-poll")?;
    if mode == Forwarder::Bare {
        // The relays did the handshakes; the bare hops carry the traffic,
        // unchanged: the frames keep the users' hop header and tag. The
        // connector checks those with the users' links reversed, so that
        // it does the same work per frame as behind a relay (without the
        // check the load generator's core did ≈ 30 ns less per frame in
        // `bare` runs, and at 64 B it is a bound: docs/perf.md).
        world.start_bare(fleet.receiver_addr)?;
        let links = fleet.traffic.reversed_links();
        fleet.sink.set_links(links);
    }
    obs.note(&format!(
        "{} hop and end-to-end sessions up in {:.2} s",
        plan.flows.len(),
        setup.elapsed().as_secs_f64()
    ));
    let labelled = world.backend().to_string();
    Ok(PathRig {
        mode,
        world,
        fleet,
        relays,
        backend: labelled,
    })
}

/// What one rig measured in an interleaved run: the whole, and each
/// slice on its own (for the paired ratios).
struct Interleaved {
    /// Every slice merged.
    total: Measurement,
    /// Each slice, in round order.
    slices: Vec<Measurement>,
}

/// Runs `specs[i]` on `rigs[i]` for every rig, one result each. With one
/// rig, one run. With several, each run's measured time is cut into
/// slices of about `slice`, and the rigs take turns slice by slice, the
/// order reversed every other round (A B C, C B A, A B C, ...), so that
/// whatever drifts over a round falls on every rig alike.
fn interleaved(
    obs: &mut dyn Observer,
    slice: Duration,
    rigs: &mut [PathRig],
    specs: &[RunSpec],
    labels: &[Labels<'_>],
) -> anyhow::Result<Vec<Interleaved>> {
    let n = rigs.len().min(specs.len());
    let secs = specs.iter().map(|s| s.secs).max().unwrap_or_default();
    let slices: u32 = if n > 1 {
        ((secs.as_secs_f64() / slice.as_secs_f64().max(1e-3)).round() as u32).max(1)
    } else {
        1
    };
    let title: Vec<String> = labels.iter().map(|l| l.key().to_string()).collect();
    obs.start(&title.join(" | "));
    let total = f64::from(slices) * n as f64;
    let mut out: Vec<Vec<Measurement>> = (0..n).map(|_| Vec::new()).collect();
    for k in 0..slices {
        if obs.interrupted() {
            return Err(Interrupted.into());
        }
        let order: Vec<usize> = if k % 2 == 0 {
            (0..n).collect()
        } else {
            (0..n).rev().collect()
        };
        for (j, &i) in order.iter().enumerate() {
            let spec = RunSpec {
                secs: specs[i].secs / slices,
                warmup: if k == 0 {
                    specs[i].warmup
                } else {
                    specs[i].warmup.min(SLICE_WARMUP)
                },
                ..specs[i]
            };
            let done = f64::from(k) * n as f64 + j as f64;
            let PathRig { world, fleet, .. } = &mut rigs[i];
            let relays = world.hops();
            let m = run(fleet, world.target(), &spec, &relays, &mut |p| {
                obs.progress((done + p) / total);
                !obs.interrupted()
            })?;
            out[i].push(m);
        }
    }
    out.into_iter()
        .map(|slices| {
            let mut it = slices.iter();
            let mut total = it
                .next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("an interleaved run measured no slice"))?;
            for m in it {
                total.merge(m)?;
            }
            Ok(Interleaved { total, slices })
        })
        .collect()
}

fn measure(
    obs: &mut dyn Observer,
    labels: &Labels<'_>,
    f: impl FnOnce(&mut dyn FnMut(f64) -> bool) -> anyhow::Result<Measurement>,
) -> anyhow::Result<Measurement> {
    obs.start(&labels.key().to_string());
    f(&mut |p| {
        obs.progress(p);
        !obs.interrupted()
    })
}
