//! Handshake and identity costs: the full hop IK exchange with both
//! certificate verifications, certificate verification alone, and the two
//! cheap paths a flooded responder relies on (dropping a bad mac1, answering
//! with a cookie reply).
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use proto::handshake::{
    CookieJar, HopInitiator, HopResponder, InitOutcome, LocalIdentity, StaticKeypair, Trust,
};
use proto::identity::{CaKeypair, CertificateBody, Role};
use proto::ids::ReceiverIndex;
use rand::SeedableRng;

// `--features mimalloc` runs the same benches on the allocator the binaries
// use, to check it is no worse than the system's where the relay does
// allocate (handshakes, the control plane).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_UNIX: u64 = 1_800_000_000;
const NOW_NS: u64 = NOW_UNIX * 1_000_000_000;

fn identity(ca: &CaKeypair, id: u32, name: &str, role: Role) -> LocalIdentity {
    let kp = StaticKeypair::generate().expect("snow resolves X25519");
    let cert = ca
        .issue(CertificateBody {
            id,
            name: name.into(),
            role,
            groups: vec!["eng".into(), "oncall".into()],
            static_key: kp.public,
            not_before: NOW_UNIX - 60,
            not_after: NOW_UNIX + 86_400,
        })
        .expect("fields within caps");
    LocalIdentity::new(kp.private, cert)
}

fn handshake(c: &mut Criterion) {
    let ca = CaKeypair::from_seed(&[1; 32]);
    let agent = identity(&ca, 42, "alice", Role::User);
    let relay = identity(&ca, 1, "relay-1", Role::Relay);
    let now = Instant::now();
    let src: SocketAddr = "198.51.100.7:40000".parse().expect("literal");
    let mut responder = HopResponder::new(
        relay.clone(),
        Trust::new(ca.public(), &[Role::User]),
        [7; 32],
        now,
    );
    let to_relay = Trust::new(ca.public(), &[Role::Relay]);
    let jar = CookieJar::new(relay.public_key());
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Each initiation needs a newer timestamp than the last (replay rule).
    let mut ts = NOW_NS;

    c.bench_function("handshake/ik_full_with_cert_verify", |b| {
        b.iter(|| {
            ts += 1;
            let (mut init, frame) = HopInitiator::new(
                &agent,
                relay.public_key(),
                to_relay.clone(),
                ReceiverIndex(1),
                &jar,
                now,
                ts,
            )
            .expect("initiation");
            let out = responder
                .handle_init(&frame, src, false, ReceiverIndex(2), now, NOW_NS, &mut rng)
                .expect("response");
            let InitOutcome::Established { response, .. } = out else {
                panic!("not under load: no cookie reply expected")
            };
            black_box(init.handle_response(&response, now, NOW_NS).expect("keys"))
        })
    });

    // The same IK exchange through snow alone (no certificates, framing,
    // macs or replay table): what the protocol around Noise costs.
    let params: snow::params::NoiseParams = proto::handshake::NOISE_PARAMS
        .parse()
        .expect("valid params");
    let (a_kp, r_kp) = (
        StaticKeypair::generate().expect("key"),
        StaticKeypair::generate().expect("key"),
    );
    c.bench_function("handshake/ik_bare_snow", |b| {
        let mut m1 = [0u8; 256];
        let mut m2 = [0u8; 256];
        let mut p = [0u8; 256];
        b.iter(|| {
            let mut i = snow::Builder::new(params.clone())
                .local_private_key(&a_kp.private)
                .and_then(|b| b.remote_public_key(&r_kp.public))
                .and_then(|b| b.build_initiator())
                .expect("initiator");
            let mut r = snow::Builder::new(params.clone())
                .local_private_key(&r_kp.private)
                .and_then(|b| b.build_responder())
                .expect("responder");
            let n1 = i.write_message(&[], &mut m1).expect("m1");
            r.read_message(&m1[..n1], &mut p).expect("read m1");
            let n2 = r.write_message(&[], &mut m2).expect("m2");
            i.read_message(&m2[..n2], &mut p).expect("read m2");
            black_box((i.is_handshake_finished(), r.is_handshake_finished()))
        })
    });

    let (_, frame) = HopInitiator::new(
        &agent,
        relay.public_key(),
        to_relay.clone(),
        ReceiverIndex(1),
        &jar,
        now,
        u64::MAX,
    )
    .expect("initiation");
    let mut bad_mac1 = frame.clone();
    let n = bad_mac1.len();
    bad_mac1[n - 32] ^= 1;
    c.bench_function("handshake/drop_bad_mac1", |b| {
        b.iter(|| {
            black_box(responder.handle_init(
                black_box(&bad_mac1),
                src,
                false,
                ReceiverIndex(2),
                now,
                NOW_NS,
                &mut rng,
            ))
        })
    });
    c.bench_function("handshake/cookie_reply_under_load", |b| {
        b.iter(|| {
            black_box(responder.handle_init(
                black_box(&frame),
                src,
                true,
                ReceiverIndex(2),
                now,
                NOW_NS,
                &mut rng,
            ))
        })
    });

    let cert = agent.certificate().clone();
    let ca_pub = ca.public();
    c.bench_function("identity/cert_verify", |b| {
        b.iter(|| black_box(&cert).verify(&ca_pub, NOW_UNIX))
    });
    let bytes = cert.to_bytes();
    c.bench_function("identity/cert_from_bytes", |b| {
        b.iter(|| proto::identity::Certificate::from_bytes(black_box(&bytes)))
    });
}

criterion_group!(benches, handshake);
criterion_main!(benches);
