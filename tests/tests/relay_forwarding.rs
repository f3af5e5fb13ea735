//! A real relay on loopback, real handshakes, real frames: what arrives,
//! what is dropped, and that the drops are counted.

use std::time::Duration;

use proto::datapath::DropReason;
use proto::wire::{Kind, HEADER_LEN};
use tests::{backends, ids, payload, Rig, ALLOWED, DENIED, USER};

#[test]
fn allowed_traffic_arrives_byte_exact_both_ways() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let sent: Vec<Vec<u8>> = (0..20u8)
            .map(|i| payload(28 + usize::from(i) * 70, i))
            .collect();
        for p in &sent {
            let f = rig.user_frame(ALLOWED, p);
            rig.send_from_user(&f);
        }
        let got = rig.connector_receive(sent.len(), Duration::from_secs(5));
        assert_eq!(got.len(), sent.len(), "{io}: frames lost");
        for (g, p) in got.iter().zip(&sent) {
            assert_eq!(ids(g), (USER, ALLOWED));
            assert_eq!(&g[HEADER_LEN..], &p[..], "{io}: payload changed");
        }

        // And back: the connector answers, the relay routes it to the user.
        let mut reply = vec![0u8; HEADER_LEN + 100];
        reply[HEADER_LEN..].copy_from_slice(&payload(100, 9));
        rig.connector
            .write_header(&mut reply, Kind::DataDown, USER, ALLOWED);
        rig.connector_socket
            .send_to(&reply, rig.world.relay_addr())
            .unwrap();
        let back = rig.user_receive(1, Duration::from_secs(5));
        assert_eq!(back.len(), 1, "{io}: reply lost");
        assert_eq!(&back[0][HEADER_LEN..], &payload(100, 9)[..]);
    }
}

#[test]
fn denied_pairs_are_dropped_and_counted() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        for _ in 0..10 {
            let f = rig.user_frame(DENIED, &payload(100, 1));
            rig.send_from_user(&f);
        }
        let marker = rig.user_frame(ALLOWED, &payload(64, 2));
        rig.send_from_user(&marker);
        let got = rig.connector_receive(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{io}");
        assert_eq!(
            ids(&got[0]),
            (USER, ALLOWED),
            "{io}: a denied frame got through"
        );
        // The counters are published between batches: wait for the
        // marker's forward too, then check nothing else was forwarded.
        let c = rig.await_counters("denied drops and the marker", |c| {
            c.dropped(DropReason::Denied) == 10 && c.forwarded >= 1
        });
        assert_eq!(c.forwarded, 1, "{io}: {c:?}");
    }
}

#[test]
fn bad_frames_are_dropped_by_reason_and_the_relay_keeps_serving() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let good = rig.user_frame(ALLOWED, &payload(200, 3));
        rig.send_from_user(&good);
        assert_eq!(
            rig.connector_receive(1, Duration::from_secs(5)).len(),
            1,
            "{io}"
        );

        // Replayed: the same bytes again.
        rig.send_from_user(&good);
        // Forged: one bit of the tag flipped.
        let mut forged = rig.user_frame(ALLOWED, &payload(200, 4));
        forged[30] ^= 0x01;
        rig.send_from_user(&forged);
        // Unknown session: a receiver index the relay never handed out.
        let mut unknown = rig.user_frame(ALLOWED, &payload(200, 5));
        unknown[4..8].copy_from_slice(&0x0fff_fff0u32.to_be_bytes());
        rig.send_from_user(&unknown);
        // ttl expired: ttl 1, correctly tagged.
        let mut dying = vec![0u8; HEADER_LEN + 64];
        rig.user
            .write_header(&mut dying, Kind::DataUp, USER, ALLOWED);
        dying[1] = 1;
        rig.user.retag(&mut dying);
        rig.send_from_user(&dying);
        // Truncated and random bytes.
        rig.send_from_user(&good[..20]);
        rig.send_from_user(&[0x11; 100]);
        rig.send_from_user(&[0xff; 7]);

        let marker = rig.user_frame(ALLOWED, &payload(64, 6));
        rig.send_from_user(&marker);
        let got = rig.connector_receive(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{io}: relay stopped serving");
        assert_eq!(
            &got[0][HEADER_LEN..],
            &payload(64, 6)[..],
            "{io}: a bad frame got through"
        );

        let c = rig.await_counters("all drops", |c| c.dropped_total() == 7);
        for (reason, n) in [
            (DropReason::Replay, 1),
            (DropReason::BadTag, 1),
            (DropReason::UnknownSession, 1),
            (DropReason::TtlExpired, 1),
            (DropReason::Malformed, 3),
        ] {
            assert_eq!(c.dropped(reason), n, "{io}: {reason:?} in {c:?}");
        }
        assert_eq!(c.forwarded, 2, "{io}: {c:?}");
    }
}

#[test]
fn revocation_stops_the_flow_within_one_batch() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let f = rig.user_frame(ALLOWED, &payload(100, 1));
        rig.send_from_user(&f);
        assert_eq!(rig.connector_receive(1, Duration::from_secs(5)).len(), 1);

        // Revoke: a policy in which USER has no grant at all.
        let mut revoked = rig.world.policy.clone();
        revoked.rules.clear();
        rig.world.write_policy(&revoked.to_toml_string()).unwrap();
        rig.world.relay.reload_policy();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rig
            .world
            .relay
            .shared()
            .policy
            .load()
            .allowed(USER, ALLOWED)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{io}: policy was not swapped"
            );
            std::thread::yield_now();
        }

        // Frames sent after the swap: at most the batch in flight may still
        // see the old policy; then every frame is denied.
        // Two handshakes, the keepalives that confirmed them and the first
        // data frame were judged before.
        let before = rig
            .await_counters("the first frame", |c| c.frames >= 5)
            .dropped(DropReason::Denied);
        let mut sent = 0;
        loop {
            let f = rig.user_frame(ALLOWED, &payload(100, 2));
            rig.send_from_user(&f);
            sent += 1;
            let c = rig.await_counters("a verdict", |c| c.frames >= 5 + sent as u64);
            if c.dropped(DropReason::Denied) > before {
                break;
            }
            assert!(
                sent < relay::io::IoConfig::default().batch,
                "{io}: flow not stopped within one batch"
            );
        }
        let leaked = rig.connector_receive(sent, Duration::from_millis(200));
        assert!(leaked.len() < sent, "{io}");
        for _ in 0..50 {
            let f = rig.user_frame(ALLOWED, &payload(100, 3));
            rig.send_from_user(&f);
        }
        let c = rig.await_counters("50 more denials", |c| {
            c.dropped(DropReason::Denied) >= before + 51
        });
        assert_eq!(c.dropped(DropReason::Denied), before + 51, "{io}: {c:?}");
        assert!(
            rig.connector_receive(1, Duration::from_millis(200))
                .is_empty(),
            "{io}: revoked flow still delivered"
        );
    }
}

#[test]
fn a_bad_policy_file_is_rejected_and_the_old_policy_stays() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let shared = std::sync::Arc::clone(rig.world.relay.shared());
        let before = std::sync::Arc::as_ptr(&shared.policy.load_full());
        // A rule naming a group that does not exist.
        let mut broken = rig.world.policy.clone();
        broken.rules[0].groups = vec!["nobody".into()];
        rig.world.write_policy(&broken.to_toml_string()).unwrap();
        rig.world.relay.reload_policy();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while shared
            .policy_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{io}: reload never ran"
            );
            std::thread::yield_now();
        }
        let after = std::sync::Arc::as_ptr(&shared.policy.load_full());
        assert_eq!(before, after, "{io}: a bad policy replaced the good one");
        let f = rig.user_frame(ALLOWED, &payload(100, 1));
        rig.send_from_user(&f);
        assert_eq!(
            rig.connector_receive(1, Duration::from_secs(5)).len(),
            1,
            "{io}: traffic stopped after a bad reload"
        );
    }
}

#[test]
fn metrics_endpoint_exports_counters_by_reason() {
    let mut rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let addr = rig
        .world
        .relay
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let f = rig.user_frame(ALLOWED, &payload(100, 1));
    rig.send_from_user(&f);
    rig.send_from_user(&f);
    rig.await_counters("one forward, one replay", |c| {
        c.forwarded == 1 && c.dropped(DropReason::Replay) == 1
    });
    let scrape = || relay::http::get(addr, "/metrics").unwrap();
    let page = scrape();
    assert_eq!(page.code, 200, "{page:?}");
    assert!(
        page.head.contains("application/openmetrics-text"),
        "{page:?}"
    );
    let body = page.body;
    assert!(
        body.contains("ztna_forwarded_frames_total{worker=\"0\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("ztna_dropped_frames_total{worker=\"0\",reason=\"replay\"} 1\n"),
        "{body}"
    );
    assert!(body.contains("ztna_policy_epoch 1\n"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // The control thread's counters too: the rig's user and connector
    // handshakes (published once per control loop).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut body = scrape().body;
    while !body.contains("ztna_handshakes_total{result=\"ok\"} 2\n") {
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(20));
        body = scrape().body;
    }
    assert!(
        body.contains("ztna_handshakes_total{result=\"failed\"} 0\n"),
        "{body}"
    );
}

#[test]
fn one_identity_cannot_pile_up_sessions() {
    let rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let me = rig.world.user_identity(USER.0).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut last = None;
    for _ in 0..6 {
        last = Some(rig.world.connect(&socket, &me).unwrap());
    }
    let limit = relay::control::MAX_SESSIONS_PER_PEER;
    // The connector's session plus at most `limit` of the user's.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let sessions = rig.world.relay.totals().sessions;
        if sessions == 1 + limit {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sessions} sessions installed"
        );
        std::thread::yield_now();
    }
    // The newest session works.
    let mut link = last.unwrap();
    let mut f = vec![0u8; HEADER_LEN + 40];
    link.write_header(&mut f, Kind::DataUp, USER, ALLOWED);
    socket.send_to(&f, rig.world.relay_addr()).unwrap();
    rig.await_counters("the newest session's frame", |c| c.forwarded == 1);
}

#[test]
fn handshake_frames_are_judged_by_kind_and_length() {
    use proto::handshake::frames::{COOKIE_REPLY_LEN, NOISE_RESPONSE_MIN_LEN, RESPONSE_MIN_LEN};
    for io in backends() {
        let rig = Rig::start(io).unwrap();
        // An initiation too short to hold a Noise message.
        rig.send_from_user(&[Kind::HandshakeInit.byte0(); 120]);
        // A well-formed response and cookie reply: this relay is in no
        // mesh, so it sent no initiation they could answer.
        let mut response = vec![0u8; RESPONSE_MIN_LEN];
        response[0] = Kind::HandshakeResponse.byte0();
        response[12..14].copy_from_slice(&(NOISE_RESPONSE_MIN_LEN as u16).to_be_bytes());
        rig.send_from_user(&response);
        let mut cookie = vec![0u8; COOKIE_REPLY_LEN];
        cookie[0] = Kind::CookieReply.byte0();
        rig.send_from_user(&cookie);
        let c = rig.await_counters("handshake drops", |c| c.dropped_total() == 3);
        assert_eq!(c.dropped(DropReason::BadHandshake), 1, "{io}: {c:?}");
        // Dropped, hence not handed to the control thread.
        assert_eq!(
            c.dropped(DropReason::UnsolicitedHandshake),
            2,
            "{io}: {c:?}"
        );
    }
}
