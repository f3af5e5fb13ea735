//! End-to-end AES-256-GCM: seal and open in place at 64 and 1400 bytes,
//! for each backend (`aead/<backend>/{seal,open}/<bytes>`) and for
//! `proto::aead::E2eKey` (`aead/e2e/...`, the default backend plus the
//! nonce and AAD encoding).
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use proto::aead::backend::{Aes256GcmBackend, RustCrypto};
use proto::aead::{nonce, Aad, E2eKey};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::testkit::{open_with_counter, seal_with_counter};

const KEY: [u8; 32] = [0x6b; 32];
const SIZES: [usize; 2] = [64, 1400];

fn aad() -> Aad {
    Aad {
        user: UserId(1_000_001),
        service: ServiceId(99_999),
        receiver: ReceiverIndex(0x0bad_cafe),
        kind: 0x11,
    }
}

fn backend<B: Aes256GcmBackend>(c: &mut Criterion) {
    let key = B::new(&KEY);
    let n = nonce(123_456_789);
    let a = aad().to_bytes();
    let mut g = c.benchmark_group(format!("aead/{}", B::NAME));
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];
        // Sealing the same buffer again and again re-encrypts ciphertext;
        // the cost does not depend on the bytes.
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| key.seal_raw(black_box(&n), black_box(&a), black_box(&mut buf)))
        });
        let mut sealed = vec![0xa5u8; size];
        let tag = key.seal_raw(&n, &a, &mut sealed);
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    key.open_raw(black_box(&n), black_box(&a), black_box(buf), &tag)
                        .expect("opens")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn e2e(c: &mut Criterion) {
    let key = E2eKey::new(&KEY);
    let a = aad();
    let mut g = c.benchmark_group("aead/e2e");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                seal_with_counter(&key, counter, black_box(&a), black_box(&mut buf))
            })
        });
        let mut sealed = vec![0xa5u8; size];
        let tag = seal_with_counter(&key, 7, &a, &mut sealed);
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    open_with_counter(&key, 7, black_box(&a), black_box(buf), &tag).expect("opens")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    #[cfg(feature = "ring")]
    backend::<proto::aead::backend::Ring>(c);
    backend::<RustCrypto>(c);
    e2e(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
