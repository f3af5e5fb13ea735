//! Anti-replay window: `replay/in-order/update` (counters 1, 2, 3, ...),
//! `replay/reordered/update` (a stream shuffled within runs of 64 with
//! occasional late frames up to 2000 behind), `replay/in-order/check`.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use proto::replay::ReplayWindow;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Length of the precomputed reordered pattern; replayed with a growing
/// offset so every counter stays fresh.
const PATTERN: u64 = 1 << 16;

fn reordered_pattern() -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(6479);
    let mut v: Vec<u64> = (0..PATTERN).collect();
    for chunk in v.chunks_mut(64) {
        chunk.shuffle(&mut rng);
    }
    // One frame in 32 arrives up to 2000 places late.
    for i in (0..v.len()).step_by(32) {
        let j = (i + rng.gen_range(1..2000)).min(v.len() - 1);
        let late = v.remove(i);
        v.insert(j, late);
    }
    v
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay/in-order");
    let mut w = ReplayWindow::default();
    let mut counter = 0u64;
    g.bench_function("update", |b| {
        b.iter(|| {
            counter += 1;
            w.update(black_box(counter))
        })
    });
    let w = {
        let mut w = ReplayWindow::default();
        w.update(1_000_000);
        w
    };
    let mut counter = 1_000_000 - 5_000u64;
    g.bench_function("check", |b| {
        b.iter(|| {
            counter = if counter >= 1_000_000 {
                1_000_000 - 5_000
            } else {
                counter + 1
            };
            w.check(black_box(counter))
        })
    });
    g.finish();

    let pattern = reordered_pattern();
    let mut g = c.benchmark_group("replay/reordered");
    let mut w = ReplayWindow::default();
    let (mut i, mut base, mut accepted, mut total) = (0usize, 0u64, 0u64, 0u64);
    g.bench_function("update", |b| {
        b.iter(|| {
            if i == pattern.len() {
                i = 0;
                base += PATTERN;
            }
            let ok = w.update(black_box(base + pattern[i]));
            i += 1;
            accepted += u64::from(ok);
            total += 1;
            ok
        })
    });
    g.finish();
    // Every counter of the stream is fresh and late by less than the
    // window, so the bench measured the accept path throughout.
    assert_eq!(accepted, total);
}

criterion_group!(replay, benches);
criterion_main!(replay);
