//! The in-memory batch datapath: batches of 64 frames of every
//! [`bench::rig::Case`] (the three modes at 64 B and 1400 B, `ztna` with
//! 10 % denied at 1400 B), judged by [`bench::rig::Rig`] as a relay worker
//! judges them. Frames are re-armed (fresh counters, valid tags) in the
//! untimed part of every iteration, since the replay window rightly
//! rejects a frame seen before; only [`Rig::process_batch`] is timed
//! (`iter_custom`): the function `scripts/instructions.sh` counts the
//! instructions of under callgrind. Each case's `…/framewise` id times
//! [`Rig::process_batch_framewise`], the same frames one at a time, so the
//! gain of computing hop tags four frames at a time is a ratio within one
//! run.

use std::time::{Duration, Instant};

use bench::rig::{Case, Rig, BATCH};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn datapath(c: &mut Criterion) {
    for size in [64usize, 1400] {
        let mut group = c.benchmark_group(format!("datapath/batch64/{size}B"));
        group.throughput(Throughput::Elements(BATCH as u64));
        for case in Case::ALL.into_iter().filter(|c| c.size == size) {
            let mut rig = Rig::new(case);
            let id = match case.deny_percent {
                0 => case.mode.name().to_owned(),
                pct => format!("{}-deny{pct}", case.mode),
            };
            group.bench_function(id.clone(), |b| {
                b.iter_custom(|iters| timed(&mut rig, iters, Rig::process_batch));
            });
            group.bench_function(format!("{id}/framewise"), |b| {
                b.iter_custom(|iters| timed(&mut rig, iters, Rig::process_batch_framewise));
            });
            if let Err(e) = rig.check() {
                panic!("{e}");
            }
        }
        group.finish();
    }
}

/// Time spent in `judge` over `iters` freshly armed batches.
fn timed(rig: &mut Rig, iters: u64, judge: fn(&mut Rig) -> usize) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        rig.arm();
        let start = Instant::now();
        black_box(judge(rig));
        spent += start.elapsed();
    }
    spent
}

criterion_group!(benches, datapath);
criterion_main!(benches);
