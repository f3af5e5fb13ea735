//! Frame parsing: the checked view and reading every header field.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use proto::hoptag::HopKey;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::testkit::write_frame;
use proto::wire::{Frame, HeaderRepr, Kind};

fn parse(c: &mut Criterion) {
    let mut buf = vec![0u8; 1400];
    write_frame(
        &mut buf,
        Kind::DataUp,
        ReceiverIndex(1),
        7,
        UserId(2),
        ServiceId(3),
        &HopKey::new(&[1; 32]),
    );
    c.bench_function("wire/parse_checked_header", |b| {
        b.iter(|| {
            let f = Frame::new_checked(black_box(&buf[..])).expect("valid frame");
            black_box(HeaderRepr::parse(&f))
        })
    });
    // Version 2, kind DataUp, then a length field that does not match.
    let garbage = vec![0x21u8; 1400];
    c.bench_function("wire/reject_bad_length", |b| {
        b.iter(|| Frame::new_checked(black_box(&garbage[..])).is_err())
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
