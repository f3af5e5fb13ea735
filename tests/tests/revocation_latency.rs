//! Revocation. Of a grant: the policy file rewritten without a user's
//! grant → the first frame of that user's running flow the relay drops
//! (the relay notices the file by itself, no SIGHUP; printed, and held to
//! a bound far above the goal so a loaded machine does not fail it; the
//! figures are in docs/perf.md). Of a certificate: its static key listed
//! in `[[revoked]]` ends its session at the reload and refuses its
//! handshakes, whatever its expiry.

use std::time::{Duration, Instant};

use proto::datapath::DropReason;
use proto::ids::UserId;
use proto::policy::Revoked;
use proto::wire::{Kind, HEADER_LEN};
use tests::{payload, Rig, ALLOWED};

#[test]
fn a_revoked_grant_stops_a_running_flow_promptly() {
    let mut rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let mut policy = rig.world.policy.clone();
    // The flow runs: every frame arrives.
    for i in 0..20u8 {
        let f = rig.user_frame(ALLOWED, &payload(100, i));
        rig.send_from_user(&f);
        assert_eq!(rig.connector_receive(1, Duration::from_secs(2)).len(), 1);
    }
    // Revoke the user's grant to service 1 by rewriting the file.
    policy.rules[0].services.retain(|s| s != "service1");
    let written = Instant::now();
    rig.world.write_policy(&policy.to_toml_string()).unwrap();
    // Keep sending, a frame at a time; the first that does not arrive
    // (loopback delivers in microseconds; 5 ms is generous) was dropped.
    let mut seed = 0u8;
    let latency = loop {
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "the revocation never took effect"
        );
        seed = seed.wrapping_add(1);
        let sent_at = Instant::now();
        let f = rig.user_frame(ALLOWED, &payload(100, seed));
        rig.send_from_user(&f);
        if rig
            .connector_receive(1, Duration::from_millis(5))
            .is_empty()
        {
            break sent_at.duration_since(written);
        }
    };
    // It was the policy that dropped it.
    rig.await_counters("the denied drop", |c| c.dropped(DropReason::Denied) >= 1);
    println!(
        "revocation latency: {} ms (policy file written -> first frame denied)",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
}

#[test]
fn a_revoked_certificate_loses_its_session_and_cannot_handshake_again() {
    let rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let relay = rig.world.relay_addr();
    // User 2 with a certificate of its own, on a session of its own.
    let me = rig.world.user_identity(2).unwrap();
    let other = rig.world.user_identity(3).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut link = rig.world.connect(&socket, &me).unwrap();
    let send = |link: &mut proto::link::HopLink| {
        let mut f = vec![0u8; HEADER_LEN + 40];
        link.write_header(&mut f, Kind::DataUp, UserId(2), ALLOWED);
        socket.send_to(&f, relay).unwrap();
    };
    send(&mut link);
    rig.await_counters("its frame forwarded", |c| c.forwarded == 1);

    // Revoke that certificate (not the user: another certificate of user
    // 3 keeps working).
    let mut policy = rig.world.policy.clone();
    policy.revoked.push(Revoked {
        key: proto::identity::to_hex(me.public_key()),
        reason: "laptop stolen".into(),
    });
    let epoch = rig
        .world
        .relay
        .shared()
        .policy_epoch
        .load(std::sync::atomic::Ordering::Relaxed);
    rig.world.write_policy(&policy.to_toml_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig
        .world
        .relay
        .shared()
        .policy_epoch
        .load(std::sync::atomic::Ordering::Relaxed)
        == epoch
    {
        assert!(Instant::now() < deadline, "the policy was not reloaded");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its session is gone (the worker applies the removal between
    // batches): the next frame is for an unknown session.
    while rig.world.relay.totals().sessions != 2 {
        assert!(Instant::now() < deadline, "the revoked session stayed");
        std::thread::sleep(Duration::from_millis(5));
    }
    send(&mut link);
    rig.await_counters("the revoked session's frame dropped", |c| {
        c.dropped(DropReason::UnknownSession) == 1
    });
    // A new handshake with it gets no answer.
    let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(
        rig.world.connect(&fresh, &me).is_err(),
        "a revoked certificate completed a handshake"
    );
    // Another certificate is unaffected.
    let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rig.world.connect(&fresh, &other).unwrap();
}
