//! The in-memory batch datapath: batches of 64 frames of every
//! [`bench::rig::Case`] (the three modes at 64 B and 1400 B, `ztna` with
//! 10 % denied at 1400 B), judged by [`bench::rig::Rig`] as a relay worker
//! judges them. Frames are re-armed (fresh counters, valid tags) in the
//! untimed part of every iteration, since the replay window rightly
//! rejects a frame seen before; only [`Rig::process_batch`] is timed
//! (`iter_custom`): the function `scripts/instructions.sh` counts the
//! instructions of under callgrind.

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
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        rig.arm();
                        let start = Instant::now();
                        black_box(rig.process_batch());
                        spent += start.elapsed();
                    }
                    spent
                });
            });
            if let Err(e) = rig.check() {
                panic!("{e}");
            }
        }
        group.finish();
    }
}

criterion_group!(benches, datapath);
criterion_main!(benches);
