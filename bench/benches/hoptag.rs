//! Hop tag: the candidate MACs on a data frame's tag input, and the chosen
//! one on whole frames as the datapath calls it.
//!
//! Ids are `hoptag/<candidate>/{tag,verify}`: the MAC of the 40-byte input
//! of a data frame (24 header bytes and the end-to-end AEAD tag:
//! `proto::hoptag`, "What the tag covers"), given in the two pieces
//! `HopMac::tag_parts` takes. `hoptag/chosen/...` is
//! `proto::hoptag::HopKey`, whatever candidate it wraps, on whole frames:
//! a 1400-byte data frame (`tag`, `verify`, `tag-batch32`, and
//! `tag-batch32-lanes` four frames at a time; the cost does not depend on
//! the payload's length), a control `Ping` (`control-ping`,
//! 9-byte body) and a control frame with a full 1200-byte body
//! (`control-1200`, what a relay pays for each forged control frame of
//! that size before it fails the tag).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use proto::hoptag::candidates::{Blake3Keyed, GmacAesGcm, HopMac, SipHash24, SipHash24Fixed};
use proto::hoptag::lanes::LANES;
use proto::hoptag::{DataLane, HopKey, DATA_BOUND_LEN};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::testkit::write_frame;
use proto::wire::{Frame, Kind, HEADER_LEN, TAGGED_LEN};

const KEY: [u8; 32] = [0x5c; 32];

/// A realistic header: version|kind, ttl, length, receiver, counter, ids.
fn header() -> [u8; TAGGED_LEN] {
    let mut h = [0u8; TAGGED_LEN];
    h[0] = Kind::DataUp.byte0();
    h[1] = 16;
    h[2..4].copy_from_slice(&1368u16.to_be_bytes());
    h[4..8].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    h[8..16].copy_from_slice(&123_456_789u64.to_be_bytes());
    h[16..20].copy_from_slice(&1_000_001u32.to_be_bytes());
    h[20..24].copy_from_slice(&99_999u32.to_be_bytes());
    h
}

/// The body bytes a data frame's tag covers: the end-to-end AEAD tag.
fn bound() -> [u8; DATA_BOUND_LEN] {
    core::array::from_fn(|i| (i as u8).wrapping_mul(37))
}

/// A frame of `kind` and `len` bytes from user 2, tagged under `KEY`.
fn frame(kind: Kind, len: usize, counter: u64) -> Vec<u8> {
    let mut buf = vec![0x5a; len];
    write_frame(
        &mut buf,
        kind,
        ReceiverIndex(0x0bad_cafe),
        counter,
        UserId(2),
        ServiceId(3),
        &HopKey::new(&KEY),
    );
    buf
}

fn candidate<M: HopMac>(c: &mut Criterion) {
    let mac = M::new(&KEY);
    let (h, rest) = (header(), bound());
    let tag = mac.tag_parts(&h, &rest);
    let mut g = c.benchmark_group(format!("hoptag/{}", M::NAME));
    g.bench_function("tag", |b| {
        b.iter(|| mac.tag_parts(black_box(&h), black_box(&rest)))
    });
    g.bench_function("verify", |b| {
        b.iter(|| mac.verify_parts(black_box(&h), black_box(&rest), black_box(&tag)))
    });
    g.finish();
}

fn chosen(c: &mut Criterion) {
    let key = HopKey::new(&KEY);
    let mut data = frame(Kind::DataUp, 1400, 1);
    let mut g = c.benchmark_group("hoptag/chosen");
    g.bench_function("tag", |b| {
        b.iter(|| key.tag_frame(&Frame::new_unchecked(black_box(&data[..]))))
    });
    g.bench_function("verify", |b| {
        b.iter(|| key.verify_frame(&Frame::new_unchecked(black_box(&data[..]))))
    });
    g.bench_function("seal", |b| {
        b.iter(|| key.seal_frame(&mut Frame::new_unchecked(black_box(&mut data[..]))))
    });
    let ping = frame(Kind::Control, HEADER_LEN + 9, 2);
    g.bench_function("control-ping/verify", |b| {
        b.iter(|| key.verify_frame(&Frame::new_unchecked(black_box(&ping[..]))))
    });
    let big = frame(Kind::Control, HEADER_LEN + 1200, 3);
    g.bench_function("control-1200/verify", |b| {
        b.iter(|| key.verify_frame(&Frame::new_unchecked(black_box(&big[..]))))
    });
    // A relay tags a whole batch: independent frames let the CPU overlap
    // consecutive hashes, so the per-frame cost is below the single-call one.
    let frames: Vec<Vec<u8>> = (0..32u64)
        .map(|i| frame(Kind::DataUp, 1400, 1000 + i))
        .collect();
    let mut tags = vec![[0u8; 8]; frames.len()];
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("tag-batch32", |b| {
        b.iter(|| {
            for (f, t) in black_box(&frames).iter().zip(tags.iter_mut()) {
                *t = key.tag_frame(&Frame::new_unchecked(&f[..]));
            }
            black_box(&mut tags);
        })
    });
    // The same 32 frames four at a time (`proto::hoptag::lanes`), as a
    // relay worker tags the segments of a coalesced receive.
    let lanes: Vec<[Option<DataLane<'_>>; LANES]> = frames
        .chunks(LANES)
        .map(|four| {
            core::array::from_fn(|i| DataLane::of(&key, Frame::new_unchecked(&four[i][..])))
        })
        .collect();
    g.bench_function("tag-batch32-lanes", |b| {
        b.iter(|| {
            for (four, t) in black_box(&lanes).iter().zip(tags.chunks_mut(LANES)) {
                t.copy_from_slice(&HopKey::tag_data_lanes(four));
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
