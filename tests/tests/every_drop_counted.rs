//! Every frame a relay receives is accounted for on `/metrics`: a mix of
//! allowed, denied, forged, replayed, spoofed, malformed, expired,
//! keepalive, control and handshake frames, and per worker
//!
//! ```text
//! frames = forwarded + local + handshake frames + sum(drops by reason)
//! local  = keepalives + control frames
//! received datagrams = frames
//! ```
//!
//! and the handshake frames handed to the control thread come out as
//! sessions, rejections by reason or sheds. Also: the endpoint answers
//! promptly while idle and half-open connections hang on to it.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use loadgen::world::WorldConfig;
use proto::control::ControlMessage;
use proto::datapath::DropReason;
use proto::handshake::{CookieJar, HopInitiator, Trust};
use proto::identity::Role;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::wire::{Kind, HEADER_LEN};
use relay::control::HandshakeReject;
use relay::io::Backend;
use tests::{await_until, metric_sum, payload, scrape, Rig, ALLOWED, DENIED, USER};

/// What the test expects one scrape to differ from the baseline by.
#[derive(Debug, Default)]
struct Sent {
    frames: u64,
    forwarded: u64,
    keepalives: u64,
    control: u64,
    /// Handshake frames the datapath hands to the control thread.
    handshakes: u64,
    drops: [u64; DropReason::COUNT],
}

fn drop_line(reason: DropReason) -> String {
    format!("reason=\"{}\"", reason.name())
}

/// A counter's increase between two scrapes.
fn delta(before: &str, after: &str, name: &str, with: &str) -> u64 {
    metric_sum(after, name, with) - metric_sum(before, name, with)
}

/// The per-worker identities, on the whole scrape.
fn check_conservation(text: &str, workers: usize) {
    for w in 0..workers {
        let worker = format!("worker=\"{w}\"");
        let m = |name: &str| metric_sum(text, name, &worker);
        let frames = m("ztna_frames_total");
        let accounted = m("ztna_forwarded_frames_total")
            + m("ztna_local_frames_total")
            + m("ztna_handshake_frames_total")
            + m("ztna_dropped_frames_total");
        assert_eq!(frames, accounted, "worker {w}: frames unaccounted:\n{text}");
        assert_eq!(
            m("ztna_local_frames_total"),
            m("ztna_keepalive_frames_total") + m("ztna_control_frames_total"),
            "worker {w}: local frames by kind:\n{text}"
        );
        assert_eq!(
            m("ztna_io_received_datagrams_total"),
            frames + m("ztna_io_recv_truncated_total"),
            "worker {w}: datagrams received but not judged:\n{text}"
        );
    }
    // Every handshake frame the datapath accepted was kept out of the
    // queue by the worker's gate (by reason), or was handed over and
    // became a session, a rejection (by reason), a cookie reply or a
    // refusal, or was shed.
    let handled = metric_sum(text, "ztna_handshakes_gated_total", "")
        + metric_sum(text, "ztna_handshakes_total", "")
        + metric_sum(text, "ztna_cookie_replies_total", "")
        + metric_sum(text, "ztna_revoked_refused_total", "")
        + metric_sum(text, "ztna_relay_handshakes_refused_total", "")
        + metric_sum(text, "ztna_handshakes_shed_total", "");
    assert_eq!(
        metric_sum(text, "ztna_handshake_frames_total", ""),
        handled,
        "handshake frames unaccounted:\n{text}"
    );
    assert_eq!(
        metric_sum(text, "ztna_handshakes_rejected_total", ""),
        metric_sum(text, "ztna_handshakes_total", "result=\"failed\""),
        "rejections by reason do not add up:\n{text}"
    );
}

/// One initiation from `me` to a relay whose static key we think is
/// `relay_key`.
fn initiation(
    me: &proto::handshake::LocalIdentity,
    relay_key: &[u8; 32],
    ca: proto::identity::CaPublicKey,
) -> Vec<u8> {
    let jar = CookieJar::new(relay_key);
    HopInitiator::new(
        me,
        relay_key,
        Trust::new(ca, &[Role::Relay]),
        ReceiverIndex(77),
        &jar,
        Instant::now(),
        relay::control::unix_nanos(),
    )
    .unwrap()
    .1
}

#[test]
fn every_frame_received_is_forwarded_local_handed_over_or_dropped_by_reason() {
    const WORKERS: usize = 2;
    let mut rig = Rig::start_with(&WorldConfig {
        io: Backend::Mmsg,
        workers: WORKERS,
        ..WorldConfig::default()
    })
    .unwrap();
    let metrics = rig
        .world
        .relay
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let relay_addr = rig.world.relay_addr();
    // The rig's two handshakes and the keepalives that confirm them,
    // published by the workers and the control thread.
    let mut before = String::new();
    await_until(
        "the rig's handshakes on /metrics",
        Duration::from_secs(5),
        || {
            before = scrape(metrics);
            metric_sum(&before, "ztna_frames_total", "") == 4
                && metric_sum(&before, "ztna_keepalive_frames_total", "") == 2
                && metric_sum(&before, "ztna_handshakes_total", "result=\"ok\"") == 2
        },
    );
    let mut sent = Sent::default();
    let dropped = |sent: &mut Sent, reason: DropReason| {
        sent.frames += 1;
        sent.drops[reason as usize] += 1;
    };

    // Allowed, up and down.
    let first = rig.user_frame(ALLOWED, &payload(200, 1));
    rig.send_from_user(&first);
    for i in 0..9u8 {
        let f = rig.user_frame(ALLOWED, &payload(64 + usize::from(i), i));
        rig.send_from_user(&f);
    }
    sent.frames += 10;
    sent.forwarded += 10;
    assert_eq!(rig.connector_receive(10, Duration::from_secs(5)).len(), 10);
    let mut reply = vec![0u8; HEADER_LEN + 64];
    rig.connector
        .write_header(&mut reply, Kind::DataDown, USER, ALLOWED);
    rig.connector_socket.send_to(&reply, relay_addr).unwrap();
    sent.frames += 1;
    sent.forwarded += 1;
    assert_eq!(rig.user_receive(1, Duration::from_secs(5)).len(), 1);

    // Denied, both ways.
    for _ in 0..5 {
        let f = rig.user_frame(DENIED, &payload(64, 2));
        rig.send_from_user(&f);
        dropped(&mut sent, DropReason::Denied);
    }
    let mut down = vec![0u8; HEADER_LEN + 64];
    rig.connector
        .write_header(&mut down, Kind::DataDown, USER, DENIED);
    rig.connector_socket.send_to(&down, relay_addr).unwrap();
    dropped(&mut sent, DropReason::Denied);
    // Forged tags, and ids changed under a correct tag.
    for byte in [24, 31, 17, 21] {
        let mut f = rig.user_frame(ALLOWED, &payload(64, 3));
        f[byte] ^= 0x40;
        rig.send_from_user(&f);
        dropped(&mut sent, DropReason::BadTag);
    }
    // Replayed.
    for _ in 0..3 {
        rig.send_from_user(&first);
        dropped(&mut sent, DropReason::Replay);
    }
    // Another user's id on this user's session.
    let mut spoofed = vec![0u8; HEADER_LEN + 64];
    rig.user
        .write_header(&mut spoofed, Kind::DataUp, UserId(2), ALLOWED);
    rig.send_from_user(&spoofed);
    dropped(&mut sent, DropReason::Spoofed);
    // ttl 1 and ttl 0, correctly tagged.
    for ttl in [1, 0] {
        let mut f = rig.user_frame(ALLOWED, &payload(64, 4));
        f[1] = ttl;
        rig.user.retag(&mut f);
        rig.send_from_user(&f);
        dropped(&mut sent, DropReason::TtlExpired);
    }
    // Unknown session, malformed.
    let mut unknown = rig.user_frame(ALLOWED, &payload(64, 5));
    unknown[4..8].copy_from_slice(&0x0fff_fff0u32.to_be_bytes());
    rig.send_from_user(&unknown);
    dropped(&mut sent, DropReason::UnknownSession);
    for junk in [&first[..20], &[0x11; 100][..], &[0xff; 7][..]] {
        rig.send_from_user(junk);
        dropped(&mut sent, DropReason::Malformed);
    }
    // Keepalives and a control message.
    for _ in 0..4 {
        let mut ka = vec![0u8; HEADER_LEN];
        rig.user
            .write_header(&mut ka, Kind::Keepalive, USER, ServiceId(0));
        rig.send_from_user(&ka);
        sent.frames += 1;
        sent.keepalives += 1;
    }
    tests::send_control(
        &rig.user_socket,
        &mut rig.user,
        relay_addr,
        USER.0,
        &ControlMessage::Ping { digest: 0 },
    );
    sent.frames += 1;
    sent.control += 1;
    // Handshake frames the datapath drops by kind and length.
    rig.send_from_user(&[Kind::HandshakeInit.byte0(); 120]);
    dropped(&mut sent, DropReason::BadHandshake);
    let mut cookie = vec![0u8; proto::handshake::frames::COOKIE_REPLY_LEN];
    cookie[0] = Kind::CookieReply.byte0();
    rig.send_from_user(&cookie);
    dropped(&mut sent, DropReason::UnsolicitedHandshake);
    // Handshakes for the control thread, from a socket of their own: one
    // for another relay's key (mac1), one from a relay certificate (role),
    // and a user's that succeeds.
    let hs = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pki = &rig.world.pki;
    let other_relay = pki.node(3000, "other-relay", Role::Relay, &[]).unwrap();
    let user2 = rig.world.user_identity(2).unwrap();
    hs.send_to(
        &initiation(&user2, other_relay.public_key(), pki.ca()),
        relay_addr,
    )
    .unwrap();
    hs.send_to(
        &initiation(&other_relay, rig.world.relay.public_key(), pki.ca()),
        relay_addr,
    )
    .unwrap();
    sent.frames += 2;
    sent.handshakes += 2;
    // The initiation, then the keepalive that confirms the session.
    rig.world.connect(&hs, &user2).unwrap();
    sent.frames += 2;
    sent.handshakes += 1;
    sent.keepalives += 1;

    let mut after = String::new();
    await_until("every frame on /metrics", Duration::from_secs(5), || {
        after = scrape(metrics);
        delta(&before, &after, "ztna_frames_total", "") == sent.frames
            // The initiation for another relay's key never reaches the
            // control thread: the worker's gate drops it (mac1).
            && delta(&before, &after, "ztna_handshakes_total", "")
                + delta(&before, &after, "ztna_handshakes_gated_total", "")
                == sent.handshakes
    });
    check_conservation(&after, WORKERS);
    let d = |name: &str, with: &str| delta(&before, &after, name, with);
    assert_eq!(
        d("ztna_io_received_datagrams_total", ""),
        sent.frames,
        "{after}"
    );
    assert_eq!(
        d("ztna_forwarded_frames_total", ""),
        sent.forwarded,
        "{after}"
    );
    assert_eq!(
        d("ztna_keepalive_frames_total", ""),
        sent.keepalives,
        "{after}"
    );
    assert_eq!(d("ztna_control_frames_total", ""), sent.control, "{after}");
    assert_eq!(
        d("ztna_handshake_frames_total", ""),
        sent.handshakes,
        "{after}"
    );
    for reason in DropReason::ALL {
        assert_eq!(
            d("ztna_dropped_frames_total", &drop_line(reason)),
            sent.drops[reason as usize],
            "{reason:?}:\n{after}"
        );
    }
    assert_eq!(
        d("ztna_handshakes_gated_total", "reason=\"bad_mac1\""),
        1,
        "{after}"
    );
    assert_eq!(d("ztna_handshakes_gated_total", ""), 1, "{after}");
    for (reason, n) in [
        (HandshakeReject::BadMac1, 0),
        (HandshakeReject::Role, 1),
        (HandshakeReject::Certificate, 0),
    ] {
        assert_eq!(
            d(
                "ztna_handshakes_rejected_total",
                &format!("reason=\"{}\"", reason.name())
            ),
            n,
            "{reason:?}:\n{after}"
        );
    }
    assert_eq!(d("ztna_handshakes_total", "result=\"ok\""), 1, "{after}");
    assert_eq!(d("ztna_relay_handshakes_refused_total", ""), 0, "{after}");
    assert_eq!(d("ztna_control_received_total", ""), 1, "{after}");
}

#[test]
fn idle_and_half_open_connections_do_not_delay_a_scrape() {
    let rig = Rig::start(Backend::Mmsg).unwrap();
    let metrics: SocketAddr = rig
        .world
        .relay
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    // Connections that never send, and connections stuck mid-request.
    let mut hogs: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    for _ in 0..4 {
        let mut s = TcpStream::connect(metrics).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metr").unwrap();
        hogs.push(s);
    }
    for _ in 0..3 {
        let started = Instant::now();
        let text = scrape(metrics);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a scrape took {took:?} behind {} idle connections",
            hogs.len()
        );
        assert!(text.contains("ztna_frames_total"), "{text}");
    }
    drop(hogs);
}
