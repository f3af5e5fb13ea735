//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`): small valid
//! inputs that put each target on its deep paths from the first run (a
//! real Noise initiation whose payload carries the agent's certificate, a
//! genuine cookie reply, a directory in parts, ...).
//!
//! `FUZZ_SEEDS_WRITE=1 cargo test -p proto --test fuzz_seeds` rewrites
//! them. Without it the test checks the committed files: deterministic
//! seeds must be byte-identical to what would be written (so a change to
//! the certificate encoding or the fixtures shows up here, not as a
//! silently shallow corpus); seeds holding a real handshake frame, whose
//! Noise ephemeral key is random, must still parse as that frame.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use proto::control::{ConnectionMode, ControlMessage, Directory, ServiceEntry};
use proto::handshake::{frames, CookieJar, HopInitiator, HopResponder, InitOutcome};
use proto::hoptag::HopKey;
use proto::identity::{CaKeypair, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::policy::Protocol;
use proto::testkit::handshake::{
    body, init_payload, issue, other_ca, response_payload, Nodes, NOW_NS, NOW_UNIX,
};
use proto::testkit::{user_index, user_key, write_frame};
use proto::wire::{Kind, HEADER_LEN, MAX_CONTROL_BODY};
use rand::SeedableRng;

/// How a committed seed is checked.
enum Check {
    /// Byte-identical to the generated one.
    Exact,
    /// After the mode byte, a hop handshake frame (of any content).
    HandshakeFrame,
}

struct Seed {
    target: &'static str,
    name: &'static str,
    bytes: Vec<u8>,
    check: Check,
}

fn exact(target: &'static str, name: &'static str, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name,
        bytes,
        check: Check::Exact,
    }
}

fn with_mode(mode: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = mode.to_vec();
    v.extend_from_slice(rest);
    v
}

fn cert_bytes(
    ca: &CaKeypair,
    nodes: &Nodes,
    f: impl FnOnce(&mut proto::identity::CertificateBody),
) -> Vec<u8> {
    let mut b = nodes.agent.certificate().body.clone();
    f(&mut b);
    issue(ca, b).to_bytes()
}

fn seeds() -> Vec<Seed> {
    let n = Nodes::new();
    let idx = ReceiverIndex(9);
    let agent_cert = n.agent.certificate().to_bytes();
    let payload = |cert: &[u8]| init_payload(NOW_NS, idx, cert);
    let mut out = vec![
        // handshake_responder: bit 2 deep, bit 0 under load, bit 3 a
        // stranger's key, bit 4 end to end (then the user byte: 2 = 42).
        exact(
            "handshake_responder",
            "deep_agent",
            with_mode(&[0x04], &payload(&agent_cert)),
        ),
        exact(
            "handshake_responder",
            "deep_agent_load",
            with_mode(&[0x05], &payload(&agent_cert)),
        ),
        exact(
            "handshake_responder",
            "deep_stranger",
            with_mode(&[0x0c], &payload(&agent_cert)),
        ),
        exact(
            "handshake_responder",
            "deep_other_ca",
            with_mode(&[0x04], &payload(&cert_bytes(&other_ca(), &n, |_| {}))),
        ),
        exact(
            "handshake_responder",
            "deep_expired",
            with_mode(
                &[0x04],
                &payload(&cert_bytes(&n.ca, &n, |b| b.not_after = NOW_UNIX - 1)),
            ),
        ),
        exact(
            "handshake_responder",
            "e2e_deep",
            with_mode(&[0x14, 2], &payload(&agent_cert)),
        ),
        exact(
            "handshake_responder",
            "e2e_deep_connector_cert",
            with_mode(&[0x14, 2], &payload(&n.connector.certificate().to_bytes())),
        ),
        // handshake_initiator: bit 0 deep, bit 3 end to end.
        exact(
            "handshake_initiator",
            "deep_relay",
            with_mode(
                &[0x01],
                &response_payload(ReceiverIndex(8), &n.relay.certificate().to_bytes()),
            ),
        ),
        exact(
            "handshake_initiator",
            "deep_user_cert",
            with_mode(&[0x01], &response_payload(ReceiverIndex(8), &agent_cert)),
        ),
        exact(
            "handshake_initiator",
            "e2e_deep_connector",
            with_mode(
                &[0x09],
                &response_payload(ReceiverIndex(8), &n.connector.certificate().to_bytes()),
            ),
        ),
        // cookie_reply: mode (bit 0 IPv6), 18 address bytes, XOR mask.
        exact("cookie_reply", "v4", with_mode(&[0], &v4_source())),
        exact(
            "cookie_reply",
            "v6",
            with_mode(
                &[1],
                &[
                    0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0x9c, 0x40,
                ],
            ),
        ),
        exact("cookie_reply", "v4_flip_sealed", {
            let mut v = with_mode(&[0], &v4_source());
            let mut mask = [0u8; 64];
            mask[50] = 0x80;
            v.extend_from_slice(&mask);
            v
        }),
        // certificate: mode bit 0 text.
        exact("certificate", "agent", with_mode(&[0], &agent_cert)),
        exact(
            "certificate",
            "relay_many_groups",
            with_mode(
                &[0],
                &issue(&n.ca, {
                    let mut b = body(1, "relay-1", Role::Relay, *n.relay.public_key());
                    b.groups = (0..16).map(|i| format!("group-{i}")).collect();
                    b
                })
                .to_bytes(),
            ),
        ),
        exact(
            "certificate",
            "agent_text",
            with_mode(&[1], n.agent.certificate().to_text().as_bytes()),
        ),
        exact(
            "certificate",
            "ca_pub_text",
            with_mode(&[1], n.ca.public().to_text().as_bytes()),
        ),
        exact("control_message", "ping_pong", {
            let mut v = Vec::new();
            for m in [
                ControlMessage::Ping { digest: 0 },
                ControlMessage::Pong {
                    digest: 0x0102_0304_0506_0708,
                },
            ] {
                push_body(&mut v, &m);
            }
            v
        }),
        exact("control_message", "directory_in_parts", {
            let dir = directory();
            let mut v = Vec::new();
            for part in dir.parts(160) {
                push_body(&mut v, &part);
            }
            v
        }),
    ];
    out.extend(tagged_frames());
    out.extend(random_frames(&n));
    out
}

/// frame_parse: frames that pass the hop tag at the target's fixture
/// (`Fixture::new(4, 8)`, user 0), so the fuzzer starts past
/// authentication: a data frame to an allowed service and a control ping;
/// then a control frame of the largest body its kind allows, and one of a
/// byte more, which the datapath refuses before the session look-up.
/// (The other seeds of the target, `*.bin`, carry made-up tags.)
fn tagged_frames() -> Vec<Seed> {
    let key = HopKey::new(&user_key(0));
    let mut data = vec![0u8; 80];
    data[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0x11u32.to_be_bytes());
    data[HEADER_LEN + 4..HEADER_LEN + 12].copy_from_slice(&1u64.to_be_bytes());
    let n = data.len();
    data[n - 16..].fill(0xee);
    write_frame(
        &mut data,
        Kind::DataUp,
        user_index(0),
        0,
        UserId(0),
        ServiceId(1),
        &key,
    );
    let mut body = Vec::new();
    ControlMessage::Ping { digest: 0 }.emit(&mut body);
    let mut ping = vec![0u8; HEADER_LEN];
    ping.extend_from_slice(&body);
    write_frame(
        &mut ping,
        Kind::Control,
        user_index(0),
        1,
        UserId(0),
        ServiceId(0),
        &key,
    );
    // A control frame as long as the kind allows, and one byte longer
    // (refused as malformed before the session look-up): the bound's two
    // sides.
    let control_of = |len: usize, counter: u64| {
        let mut f = vec![0x5a; HEADER_LEN + len];
        write_frame(
            &mut f,
            Kind::Control,
            user_index(0),
            counter,
            UserId(0),
            ServiceId(0),
            &key,
        );
        f
    };
    vec![
        exact("frame_parse", "data_up_tagged", data),
        exact("frame_parse", "control_ping_tagged", ping),
        exact(
            "frame_parse",
            "control_largest_tagged",
            control_of(MAX_CONTROL_BODY, 2),
        ),
        exact(
            "frame_parse",
            "control_oversized_tagged",
            control_of(MAX_CONTROL_BODY + 1, 3),
        ),
    ]
}

fn v4_source() -> [u8; 18] {
    let mut a = [0u8; 18];
    a[..4].copy_from_slice(&[198, 51, 100, 7]);
    a[16..].copy_from_slice(&40000u16.to_be_bytes());
    a
}

fn push_body(v: &mut Vec<u8>, m: &ControlMessage) {
    let mut body = Vec::new();
    m.emit(&mut body);
    let len = u16::try_from(body.len()).unwrap();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&body);
}

fn directory() -> Directory {
    let services = (1..=4u32)
        .map(|i| ServiceEntry {
            id: ServiceId(i),
            name: format!("service-{i}"),
            protocol: if i % 2 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            port: 8000 + u16::try_from(i).unwrap(),
            connector: 7,
            connector_key: [i as u8; 32],
        })
        .collect();
    Directory::new(ConnectionMode::AlwaysOn, services)
}

/// Seeds holding whole handshake frames (random Noise ephemeral keys).
fn random_frames(n: &Nodes) -> Vec<Seed> {
    let now = Instant::now();
    let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let jar = CookieJar::new(n.relay.public_key());
    let (_, init) = HopInitiator::new(
        &n.agent,
        n.relay.public_key(),
        n.agent_trust(),
        ReceiverIndex(0x0a0b_0c0d),
        &jar,
        now,
        NOW_NS,
    )
    .unwrap();
    let mut responder = HopResponder::new(n.relay.clone(), n.relay_trust(), [3; 32], now);
    let Ok(InitOutcome::CookieReply(cookie)) =
        responder.handle_init(&init, src, true, ReceiverIndex(1), now, NOW_NS, &mut rng)
    else {
        panic!("no cookie reply");
    };
    let Ok(InitOutcome::Established { response, .. }) =
        responder.handle_init(&init, src, false, ReceiverIndex(1), now, NOW_NS, &mut rng)
    else {
        panic!("not established");
    };
    let frame = |target, name, mode: u8, f: &[u8]| Seed {
        target,
        name,
        bytes: with_mode(&[mode], f),
        check: Check::HandshakeFrame,
    };
    vec![
        frame("handshake_responder", "raw_init", 0x00, &init),
        frame("handshake_responder", "raw_init_load", 0x01, &init),
        frame("handshake_initiator", "raw_response", 0x00, &response),
        frame("handshake_initiator", "raw_cookie_reply", 0x10, &cookie),
    ]
}

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

#[test]
fn fuzz_seeds_are_current() {
    let write = std::env::var_os("FUZZ_SEEDS_WRITE").is_some();
    let mut problems = Vec::new();
    for s in seeds() {
        let path = seed_dir().join(s.target).join(s.name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &s.bytes).unwrap();
            continue;
        }
        let Ok(have) = std::fs::read(&path) else {
            problems.push(format!("{}: missing", path.display()));
            continue;
        };
        let ok = match s.check {
            Check::Exact => have == s.bytes,
            Check::HandshakeFrame => {
                have.len() > 1
                    && frames::parse(&have[1..]).map(|f| f.kind()).ok()
                        == frames::parse(&s.bytes[1..]).map(|f| f.kind()).ok()
            }
        };
        if !ok {
            problems.push(format!(
                "{}: differs from what is generated",
                path.display()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "fuzz seeds out of date (rewrite them with FUZZ_SEEDS_WRITE=1 cargo test -p proto --test fuzz_seeds):\n{}",
        problems.join("\n")
    );
}

/// The tagged frame_parse seeds get past authentication at the target's
/// fixture, in order (their hop counters are 0 to 2), as the fuzzer's
/// first inputs would; the oversized control frame is malformed.
#[test]
fn tagged_frame_seeds_pass_the_fixture() {
    use proto::datapath::{DropReason, Mode, Verdict};
    let mut fx = proto::testkit::Fixture::new(4, 8);
    let mut verdicts = Vec::new();
    for s in tagged_frames() {
        let mut buf = s.bytes.clone();
        verdicts.push(fx.datapath(Mode::Ztna).process(&mut buf));
    }
    assert!(
        matches!(
            verdicts[..],
            [
                Verdict::Forward { .. },
                Verdict::Local,
                Verdict::Local,
                Verdict::Drop(DropReason::Malformed)
            ]
        ),
        "{verdicts:?}"
    );
}
