//! Hop tag candidates: tag and verify of one 24-byte header.
//!
//! Ids are `hoptag/<candidate>/{tag,verify}`; `hoptag/chosen/...` is
//! `proto::hoptag::HopKey`, whatever candidate it wraps.
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use proto::hoptag::candidates::{Blake3Keyed, GmacAesGcm, HopMac, SipHash24, SipHash24Fixed};
use proto::hoptag::HopKey;
use proto::wire::TAGGED_LEN;

const KEY: [u8; 32] = [0x5c; 32];

/// A realistic header: version|kind, ttl, length, receiver, counter, ids.
fn header() -> [u8; TAGGED_LEN] {
    let mut h = [0u8; TAGGED_LEN];
    h[0] = 0x11;
    h[1] = 64;
    h[2..4].copy_from_slice(&1400u16.to_be_bytes());
    h[4..8].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    h[8..16].copy_from_slice(&123_456_789u64.to_be_bytes());
    h[16..20].copy_from_slice(&1_000_001u32.to_be_bytes());
    h[20..24].copy_from_slice(&99_999u32.to_be_bytes());
    h
}

fn candidate<M: HopMac>(c: &mut Criterion) {
    let mac = M::new(&KEY);
    let h = header();
    let tag = mac.tag(&h);
    let mut g = c.benchmark_group(format!("hoptag/{}", M::NAME));
    g.bench_function("tag", |b| b.iter(|| mac.tag(black_box(&h))));
    g.bench_function("verify", |b| {
        b.iter(|| mac.verify(black_box(&h), black_box(&tag)))
    });
    g.finish();
}

fn chosen(c: &mut Criterion) {
    let key = HopKey::new(&KEY);
    let h = header();
    let tag = key.tag(&h);
    let mut g = c.benchmark_group("hoptag/chosen");
    g.bench_function("tag", |b| b.iter(|| key.tag(black_box(&h))));
    g.bench_function("verify", |b| {
        b.iter(|| key.verify(black_box(&h), black_box(&tag)))
    });
    // A relay tags a whole batch: independent frames let the CPU overlap
    // consecutive hashes, so the per-frame cost is below the single-call one.
    let headers: Vec<[u8; TAGGED_LEN]> = (0..32u64)
        .map(|i| {
            let mut h = header();
            h[8..16].copy_from_slice(&(1000 + i).to_be_bytes());
            h
        })
        .collect();
    let mut tags = vec![[0u8; 8]; headers.len()];
    g.throughput(Throughput::Elements(headers.len() as u64));
    g.bench_function("tag-batch32", |b| {
        b.iter(|| {
            for (h, t) in black_box(&headers).iter().zip(tags.iter_mut()) {
                *t = key.tag(h);
            }
            black_box(&mut tags);
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    candidate::<SipHash24>(c);
    candidate::<SipHash24Fixed>(c);
    candidate::<GmacAesGcm>(c);
    #[cfg(feature = "ring")]
    candidate::<proto::hoptag::candidates::GmacRing>(c);
    candidate::<Blake3Keyed>(c);
    chosen(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
