//! Policy lookup and compile on the design's sizing target: 1 M users,
//! 100 k services, 10 k groups (`SynthParams::large`).
//!
//! * `policy/lookup_random_1m`: `allowed()` over 64 Ki pre-generated
//!   (user, service) pairs, about half allowed, walked in order so every
//!   iteration asks a different, random pair (the table, not the pair
//!   array, is what misses cache).
//! * `policy/lookup_random_1m_unique`: the same with every user in its own
//!   random group set (`profiles = 0`), the worst case, which compiles to
//!   the by-group layout.
//! * `policy/compile_1m`: validation + compilation of the realistic file.
//!
//! Table sizes are printed to stderr before the measurements.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use proto::ids::{ServiceId, UserId};
use proto::policy::synth::{self, SynthParams};
use proto::policy::{compile, CompiledPolicy, PolicyFile};

const PAIRS: usize = 1 << 16;

fn report(label: &str, file: &PolicyFile, table: &CompiledPolicy, pairs: &[(UserId, ServiceId)]) {
    let s = table.stats();
    let allowed = pairs
        .iter()
        .filter(|&&(u, sv)| table.allowed(u, sv))
        .count();
    eprintln!(
        "{label}: {} users, {} services, {} groups, {} rules -> {} classes, {} grant entries, \
         layout {:?}, dense user ids {}, lookup tables {:.1} MiB, all heap {:.1} MiB; \
         {:.0}% of the sampled pairs allowed",
        s.users,
        s.services,
        s.groups,
        file.rules.len(),
        s.classes,
        s.grant_entries,
        s.layout,
        s.dense_user_ids,
        s.lookup_bytes as f64 / (1 << 20) as f64,
        s.heap_bytes as f64 / (1 << 20) as f64,
        100.0 * allowed as f64 / pairs.len() as f64,
    );
}

fn lookup_bench(c: &mut Criterion, name: &str, params: &SynthParams) {
    let file = synth::generate(params);
    let table = compile(&file).expect("synthetic policy compiles");
    let pairs = synth::sample_pairs(&file, PAIRS, 7);
    report(name, &file, &table, &pairs);
    drop(file);
    let mut group = c.benchmark_group("policy");
    group.bench_function(name, |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (u, s) = pairs[i % PAIRS];
            i = i.wrapping_add(1);
            table.allowed(black_box(u), black_box(s))
        })
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    lookup_bench(c, "lookup_random_1m", &SynthParams::large());
    lookup_bench(
        c,
        "lookup_random_1m_unique",
        &SynthParams {
            profiles: 0,
            ..SynthParams::large()
        },
    );
}

fn compile_1m(c: &mut Criterion) {
    let file = synth::generate(&SynthParams::large());
    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    group.bench_function("compile_1m", |b| {
        b.iter(|| compile(black_box(&file)).expect("compiles"))
    });
    group.finish();
}

criterion_group!(benches, lookup, compile_1m);
criterion_main!(benches);
