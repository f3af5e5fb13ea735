//! The in-memory batch datapath: batches of 64 frames at 64 B and 1400 B in
//! each mode. Frames are rebuilt (fresh counters, valid tags) in the untimed
//! part of every iteration, since the replay window rightly rejects a frame
//! seen before; only the datapath over the batch is timed (`iter_custom`).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use proto::datapath::{Mode, Verdict};
use proto::testkit::Fixture;

const BATCH: usize = 64;
const USERS: u32 = 16;
const SERVICES: u32 = 64;

fn datapath(c: &mut Criterion) {
    for size in [64usize, 1400] {
        let mut group = c.benchmark_group(format!("datapath/batch64/{size}B"));
        group.throughput(Throughput::Elements(BATCH as u64));
        for mode in Mode::ALL {
            let mut fx = Fixture::new(USERS, SERVICES);
            let mut bufs = vec![vec![0u8; size]; BATCH];
            let mut verdicts = [Verdict::Local; BATCH];
            let mut i = 0u32;
            group.bench_function(mode.name(), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        for buf in bufs.iter_mut() {
                            // Allowed pairs only: odd services.
                            fx.upstream(i % USERS, (i % SERVICES) | 1, buf, size);
                            i = i.wrapping_add(1);
                        }
                        let start = Instant::now();
                        let mut dp = fx.datapath(mode);
                        for (v, buf) in verdicts.iter_mut().zip(bufs.iter_mut()) {
                            *v = dp.process(buf);
                        }
                        spent += start.elapsed();
                        black_box(&verdicts);
                    }
                    spent
                });
            });
            assert_eq!(
                fx.counters.dropped_total(),
                0,
                "{mode:?}: {:?}",
                fx.counters
            );
        }
        group.finish();
    }
}

criterion_group!(benches, datapath);
criterion_main!(benches);
