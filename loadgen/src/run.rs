//! One measurement: send trains for a bounded time (as fast as possible, or
//! paced to a rate), receive and check what arrives, and report counts,
//! latency and the relay's own CPU time.
//!
//! Sending and receiving share one thread, alternating a train and a
//! non-blocking drain of the connector's socket: on a machine with one core
//! to spare for the load generator this keeps the two from competing for
//! it, and the receiver can never fall behind by more than one train.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::hw::{HwCounters, HwReading};
use hdrhistogram::Histogram;
use proto::datapath::Counters;
use relay::bare::Bare;
use relay::io::{Action, Io};
use relay::shared::WorkerStats;
use relay::Relay;

use crate::fleet::Fleet;
use crate::sink::{Sink, SinkCounts};

/// How one run sends.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    /// Measured time.
    pub secs: Duration,
    /// Time sent before measuring (sessions warm, queues in steady state).
    pub warmup: Duration,
    /// Frames per second to offer; `None`: as fast as the sender can.
    pub rate: Option<f64>,
    /// Frames per train at full rate (paced runs use smaller trains).
    pub train: usize,
    /// Full-rate runs: the most frames in flight (sent, due to arrive, not
    /// yet received). Keeps the relay saturated without flooding its
    /// socket, so the rate measured is what it forwards, not what the
    /// kernel drops in front of it. `None`: open loop.
    pub window: Option<u64>,
    /// Whether frames to denied pairs are due to arrive (`false` for a
    /// relay enforcing policy).
    pub denied_arrive: bool,
}

/// Trains per second a paced run aims for at most: small trains keep the
/// latency of the sample at the head of a train close to a frame's.
const PACED_TRAINS_PER_SEC: f64 = 50_000.0;
/// When the send buffer is full, wait this long for the connector's
/// socket before trying again.
const FULL_WAIT: Duration = Duration::from_micros(50);
/// With the in-flight window full, wait this long for arrivals...
const WINDOW_WAIT: Duration = Duration::from_micros(100);
/// ...and write the window off as lost after this long without any.
const WINDOW_STALL: Duration = Duration::from_millis(2);
/// After the send window, wait this long at most for frames in flight...
const DRAIN_MAX: Duration = Duration::from_millis(300);
/// ...and stop early once nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(30);

/// What a run returns when its caller asked it to stop.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A forwarder on a run's path whose worker statistics the run reports: a
/// relay, or the bare hop standing in for one.
pub trait Hop {
    /// Its workers' statistics as last published, added up.
    fn totals(&self) -> WorkerStats;
}

impl Hop for Relay {
    fn totals(&self) -> WorkerStats {
        Relay::totals(self)
    }
}

impl Hop for Bare {
    fn totals(&self) -> WorkerStats {
        Bare::totals(self)
    }
}

/// The relay's view of a run, from its published worker statistics (they
/// are refreshed every 100 ms, which bounds their precision).
#[derive(Debug, Clone, Default)]
pub struct RelaySide {
    /// Datapath counters accumulated during the run.
    pub counters: Counters,
    /// Worker CPU time during the run, where the OS reports it (busy
    /// polling's spinning included).
    pub cpu: Option<Duration>,
    /// Of that, time spent busy polling (spinning for datagrams).
    pub spin: Duration,
    /// The worker thread's instructions and cycles during the run, from
    /// the hardware counters (`None` where the machine has none, or the
    /// relay has more than one worker).
    pub hw: Option<HwReading>,
}

/// A relay worker's hardware counters, opened on its thread for one run.
type WorkerCounters = Result<(HwCounters, HwReading), String>;

/// Opens and reads the hardware counters of `relay`'s worker thread, or
/// says why not.
fn open_counters<H: Hop + ?Sized>(relay: &H) -> WorkerCounters {
    let thread = relay
        .totals()
        .thread
        .ok_or_else(|| "the relay has more than one worker".to_owned())?;
    let mut counters = HwCounters::open(thread).map_err(|e| e.to_string())?;
    let start = counters.read().map_err(|e| e.to_string())?;
    Ok((counters, start))
}

/// What the counters opened by [`open_counters`] counted since.
fn counted(counters: &mut WorkerCounters) -> Result<HwReading, String> {
    let (c, start) = counters.as_mut().map_err(|e| e.clone())?;
    Ok(c.read().map_err(|e| e.to_string())?.since(start))
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Length of the measured window.
    pub secs: f64,
    /// Frames sent in the window.
    pub sent: u64,
    /// Of those, frames the policy allows.
    pub sent_allowed: u64,
    /// Frames received in the window.
    pub received: u64,
    /// The sink's counts over the window and the drain after it.
    pub sink: SinkCounts,
    /// Latency of the samples, ns.
    pub latency: Histogram<u64>,
    /// Each relay's side, in path order (users' side first); empty for a
    /// run without relay.
    pub relays: Vec<RelaySide>,
    /// Why a relay worker's hardware counters gave nothing, if they did
    /// not (the first reason).
    pub hw_unavailable: Option<String>,
}

impl Measurement {
    /// Adds `other`, a later slice of the same run (same fleet, same
    /// relays), to this one: counts and times add, histograms merge.
    pub fn merge(&mut self, other: &Measurement) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.relays.len() == other.relays.len(),
            "cannot merge slices through {} and {} relays",
            self.relays.len(),
            other.relays.len()
        );
        self.secs += other.secs;
        self.sent += other.sent;
        self.sent_allowed += other.sent_allowed;
        self.received += other.received;
        self.sink.add(&other.sink);
        self.latency
            .add(&other.latency)
            .map_err(|e| anyhow::anyhow!("latency histograms do not merge: {e:?}"))?;
        for (mine, theirs) in self.relays.iter_mut().zip(&other.relays) {
            mine.counters.add(&theirs.counters);
            mine.spin += theirs.spin;
            mine.cpu = match (mine.cpu, theirs.cpu) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            mine.hw = match (mine.hw, theirs.hw) {
                (Some(a), Some(b)) => Some(HwReading {
                    instructions: a.instructions + b.instructions,
                    cycles: a.cycles + b.cycles,
                }),
                _ => None,
            };
        }
        if self.hw_unavailable.is_none() {
            self.hw_unavailable.clone_from(&other.hw_unavailable);
        }
        Ok(())
    }
}

fn relay_snapshot<H: Hop + ?Sized>(relay: &H) -> RelaySide {
    let t = relay.totals();
    RelaySide {
        counters: t.datapath,
        cpu: t.cpu,
        spin: Duration::from_nanos(t.io.busy_poll_time_ns),
        hw: None,
    }
}

fn relay_delta(before: &RelaySide, after: &RelaySide) -> RelaySide {
    RelaySide {
        counters: after.counters.since(&before.counters),
        cpu: after.cpu.zip(before.cpu).map(|(a, b)| a.saturating_sub(b)),
        spin: after.spin.saturating_sub(before.spin),
        hw: None,
    }
}

/// Drains whatever the connector's socket holds right now (`wait`: how
/// long to wait for the first datagram). Returns datagrams received.
fn drain(receiver: &mut Io, sink: &mut Sink, wait: Duration) -> anyhow::Result<u64> {
    let ps = receiver.poll(wait, &mut |_, frame: &mut [u8]| {
        sink.on_frame(frame);
        Action::Consume
    })?;
    Ok(ps.received as u64)
}

/// Runs `spec` from `fleet` to `target` (the users' relay, or the fleet's
/// own receiver for a run without relay), calling `progress` with the share
/// of the run done now and then; when it answers `false` the run stops
/// there with [`Interrupted`]. `relays`: the relays (or bare hops) on the
/// path, whose statistics the measurement reports.
pub fn run<H: Hop + ?Sized>(
    fleet: &mut Fleet,
    target: SocketAddr,
    spec: &RunSpec,
    relays: &[&H],
    progress: &mut dyn FnMut(f64) -> bool,
) -> anyhow::Result<Measurement> {
    let train = match spec.rate {
        Some(rate) => ((rate / PACED_TRAINS_PER_SEC).ceil() as usize).clamp(1, spec.train),
        None => spec.train,
    };
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.secs;
    let total = (end - start).as_secs_f64();
    let mut measuring = false;
    let mut before: Vec<RelaySide> = Vec::new();
    let mut counters: Vec<WorkerCounters> = Vec::new();
    let (mut sent, mut sent_allowed) = (0u64, 0u64);
    let mut next_due = start;
    let mut last_progress = start;
    let mut window_start = measure_from;
    // In-flight accounting over the whole run (never reset).
    let mut due_total = 0u64;
    let arrived_before = fleet.sink.lifetime_frames();
    let mut written_off = 0u64;
    let mut stalled_since: Option<Instant> = None;
    fleet.sink.reset();
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            window_start = now;
            fleet.sink.reset();
            sent = 0;
            sent_allowed = 0;
            before = relays.iter().map(|r| relay_snapshot(*r)).collect();
            counters = relays.iter().map(|r| open_counters(*r)).collect();
        }
        if now >= end {
            break;
        }
        if now.duration_since(last_progress) >= Duration::from_millis(100) {
            last_progress = now;
            if !progress(now.duration_since(start).as_secs_f64() / total) {
                return Err(Interrupted.into());
            }
        }
        if let Some(rate) = spec.rate {
            if now < next_due {
                drain(
                    &mut fleet.receiver,
                    &mut fleet.sink,
                    (next_due - now).min(Duration::from_millis(1)),
                )?;
                continue;
            }
            next_due += Duration::from_secs_f64(train as f64 / rate.max(1.0));
            // After a stall, do not burst to catch up.
            if next_due + Duration::from_millis(10) < now {
                next_due = now;
            }
        }
        if let (Some(window), None) = (spec.window, spec.rate) {
            let arrived = fleet.sink.lifetime_frames() - arrived_before + written_off;
            let in_flight = due_total.saturating_sub(arrived);
            if in_flight >= window {
                if drain(&mut fleet.receiver, &mut fleet.sink, WINDOW_WAIT)? > 0 {
                    stalled_since = None;
                } else if now.duration_since(*stalled_since.get_or_insert(now)) >= WINDOW_STALL {
                    // Nothing arrives: what is in flight was lost.
                    written_off += in_flight;
                    stalled_since = None;
                }
                continue;
            }
            stalled_since = None;
        }
        let Fleet {
            sender,
            trains,
            receiver,
            traffic,
            sink,
            ..
        } = &mut *fleet;
        let ready = traffic.next_train(train);
        // Never block on a full send buffer: the relay may be waiting for
        // this same thread to drain the connector's socket.
        let mut offset = 0;
        while offset < ready.bytes.len() && Instant::now() < end {
            // Resume after what is done with, sent or dropped (a group the
            // kernel refused is counted in the sender's stats, not resent).
            let n = trains.try_send(sender, target, &ready.bytes[offset..], ready.size)?;
            offset += n.consumed * ready.size;
            if offset < ready.bytes.len() {
                drain(receiver, sink, FULL_WAIT)?;
            }
        }
        let done = (offset.min(ready.bytes.len()) / ready.size) as u64;
        let allowed = if done == ready.segments as u64 {
            ready.allowed as u64
        } else {
            done.min(ready.allowed as u64)
        };
        sent += done;
        sent_allowed += allowed;
        due_total += if spec.denied_arrive { done } else { allowed };
        drain(receiver, sink, Duration::ZERO)?;
    }
    let window = window_start.elapsed();
    let received = fleet.sink.counts().frames;
    let latency = fleet.sink.latency().clone();
    // Frames still in flight arrive now; they count toward loss, not rate.
    let drain_end = Instant::now() + DRAIN_MAX;
    let mut quiet_since = Instant::now();
    while Instant::now() < drain_end && quiet_since.elapsed() < DRAIN_QUIET {
        if drain(
            &mut fleet.receiver,
            &mut fleet.sink,
            Duration::from_millis(5),
        )? > 0
        {
            quiet_since = Instant::now();
        }
    }
    let after = relays.iter().map(|r| relay_snapshot(*r));
    let mut hw_unavailable = None;
    let hw: Vec<Option<HwReading>> = counters
        .iter_mut()
        .map(|c| match counted(c) {
            Ok(reading) => Some(reading),
            Err(why) => {
                hw_unavailable.get_or_insert(why);
                None
            }
        })
        .collect();
    let _ = progress(1.0);
    Ok(Measurement {
        secs: window.as_secs_f64(),
        sent,
        sent_allowed,
        received,
        sink: fleet.sink.counts(),
        latency,
        relays: after
            .zip(&before)
            .zip(hw)
            .map(|((a, b), hw)| RelaySide {
                hw,
                ..relay_delta(b, &a)
            })
            .collect(),
        hw_unavailable,
    })
}
