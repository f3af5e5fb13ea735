//! Authenticated peers that misbehave, through a real relay: each test
//! here fails when the check it names is taken out of the relay (see
//! docs/security.md, "Tests that bite").

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proto::control::ControlMessage;
use proto::datapath::DropReason;
use proto::handshake::{CookieJar, HopInitiator, Trust};
use proto::identity::Role;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::wire::{Kind, HEADER_LEN};
use relay::control::HandshakeReject;
use relay::io::Backend;
use tests::{await_until, ids, payload, receive_directory, Rig, ALLOWED, DENIED, USER};

/// Sends an allowed frame from the user and waits until the connector has
/// it: every frame the user sent before has been judged by then.
fn marker_up(rig: &mut Rig, seed: u8) {
    let f = rig.user_frame(ALLOWED, &payload(64, seed));
    rig.send_from_user(&f);
    let got = rig.connector_receive(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the marker was not delivered");
    assert_eq!(&got[0][HEADER_LEN..], &payload(64, seed)[..], "{got:?}");
}

/// The same from the connector to the user.
fn marker_down(rig: &mut Rig, seed: u8) {
    let mut f = vec![0u8; HEADER_LEN + 64];
    f[HEADER_LEN..].copy_from_slice(&payload(64, seed));
    rig.connector
        .write_header(&mut f, Kind::DataDown, USER, ALLOWED);
    rig.connector_socket
        .send_to(&f, rig.world.relay_addr())
        .unwrap();
    let got = rig.user_receive(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the marker was not delivered");
    assert_eq!(&got[0][HEADER_LEN..], &payload(64, seed)[..], "{got:?}");
}

#[test]
fn a_connector_cannot_answer_for_a_denied_pair() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    // The connector serves DENIED too; only the policy stops it.
    for _ in 0..3 {
        let mut f = vec![0u8; HEADER_LEN + 64];
        rig.connector
            .write_header(&mut f, Kind::DataDown, USER, DENIED);
        rig.connector_socket
            .send_to(&f, rig.world.relay_addr())
            .unwrap();
    }
    marker_down(&mut rig, 1);
    let c = rig.await_counters("the denied replies", |c| c.forwarded >= 1);
    assert_eq!(c.dropped(DropReason::Denied), 3, "{c:?}");
    assert_eq!(c.forwarded, 1, "a denied reply was forwarded: {c:?}");
}

#[test]
fn a_user_cannot_send_as_another_user_nor_downstream() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    // User 2 exists and may reach ALLOWED: only the session's identity,
    // which the control thread handed the worker, tells them apart.
    let mut as_other = vec![0u8; HEADER_LEN + 64];
    rig.user
        .write_header(&mut as_other, Kind::DataUp, UserId(2), ALLOWED);
    rig.send_from_user(&as_other);
    let mut downstream = vec![0u8; HEADER_LEN + 64];
    rig.user
        .write_header(&mut downstream, Kind::DataDown, USER, ALLOWED);
    rig.send_from_user(&downstream);
    marker_up(&mut rig, 2);
    let c = rig.await_counters("the spoofed frames", |c| {
        c.dropped(DropReason::Spoofed) >= 2
    });
    assert_eq!(c.dropped(DropReason::Spoofed), 2, "{c:?}");
    assert_eq!(c.forwarded, 1, "a spoofed frame was forwarded: {c:?}");
    assert!(
        rig.user_receive(1, Duration::from_millis(100)).is_empty(),
        "the downstream frame reached the user"
    );
}

#[test]
fn ids_changed_under_a_correct_tag_fail_the_tag() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    // Correctly tagged for (USER, ALLOWED), then the user id (bytes
    // 16..20) or the service id (20..24) changed to ones the policy also
    // allows: only the tag notices.
    for (byte, to) in [(19, 2u8), (23, 2u8)] {
        let mut f = rig.user_frame(ALLOWED, &payload(64, 3));
        f[byte] = to;
        assert_ne!(ids(&f), (USER, ALLOWED));
        rig.send_from_user(&f);
    }
    marker_up(&mut rig, 4);
    let c = rig.await_counters("the altered frames", |c| c.dropped(DropReason::BadTag) >= 2);
    assert_eq!(c.dropped(DropReason::BadTag), 2, "{c:?}");
    assert_eq!(c.forwarded, 1, "an altered frame was forwarded: {c:?}");
}

/// An on-path attacker without keys captures a fresh frame and races its
/// header, ahead of it, with an older end-to-end record of the same pair
/// and length (an end-to-end replay). The hop tag covers the record's
/// header and AEAD tag, so the relay drops the raced frame as `bad_tag`
/// without marking the hop counter, and the real frame, same header,
/// passes after it.
#[test]
fn a_captured_header_raced_with_an_older_record_is_bad_tag_and_the_real_frame_passes() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let old = rig.user_frame(ALLOWED, &payload(64, 10));
    rig.send_from_user(&old);
    let got = rig.connector_receive(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the old frame was not delivered");
    let real = rig.user_frame(ALLOWED, &payload(64, 11));
    let mut raced = real.clone();
    raced[HEADER_LEN..].copy_from_slice(&old[HEADER_LEN..]);
    rig.send_from_user(&raced);
    rig.send_from_user(&real);
    let got = rig.connector_receive(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the real frame was not delivered");
    assert_eq!(
        &got[0][HEADER_LEN..],
        &real[HEADER_LEN..],
        "the older record was delivered in its place"
    );
    let c = rig.await_counters("the raced frame", |c| {
        c.dropped(DropReason::BadTag) >= 1 && c.forwarded >= 2
    });
    assert_eq!(c.dropped(DropReason::BadTag), 1, "{c:?}");
    assert_eq!(c.dropped(DropReason::Replay), 0, "{c:?}");
    assert_eq!(c.forwarded, 2, "the raced frame was forwarded: {c:?}");
}

/// A control body is authenticated in full: a correctly tagged `Ping`
/// with any one byte of its body changed is `bad_tag` (the relay answers
/// none of them), and none burns the hop counter: the real frame, sent
/// last with the same header, gets its answer.
#[test]
fn a_control_body_changed_under_a_correct_tag_fails_the_tag() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let mut body = Vec::new();
    ControlMessage::Ping { digest: 0 }.emit(&mut body);
    let mut real = vec![0u8; HEADER_LEN + body.len()];
    real[HEADER_LEN..].copy_from_slice(&body);
    rig.user
        .write_header(&mut real, Kind::Control, USER, ServiceId(0));
    for i in HEADER_LEN..real.len() {
        let mut f = real.clone();
        f[i] ^= 0x01;
        rig.send_from_user(&f);
    }
    rig.send_from_user(&real);
    let directory = receive_directory(&rig.user_socket, &mut rig.user, Duration::from_secs(5));
    assert!(directory.is_some(), "the real ping got no answer");
    let c = rig.await_counters("the altered control frames", |c| {
        c.dropped(DropReason::BadTag) >= body.len() as u64
    });
    assert_eq!(c.dropped(DropReason::BadTag), body.len() as u64, "{c:?}");
    assert_eq!(c.dropped(DropReason::Replay), 0, "{c:?}");
}

#[test]
fn a_frame_with_ttl_zero_is_not_forwarded() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let mut f = rig.user_frame(ALLOWED, &payload(64, 5));
    f[1] = 0;
    rig.user.retag(&mut f);
    rig.send_from_user(&f);
    marker_up(&mut rig, 6);
    // The marker is sent after the expired frame on the same socket: once
    // it is forwarded, the frame before it was judged.
    let c = rig.await_counters("the expired frame", |c| {
        c.forwarded >= 1 && c.dropped(DropReason::TtlExpired) + c.forwarded >= 2
    });
    assert_eq!(c.dropped(DropReason::TtlExpired), 1, "{c:?}");
    assert_eq!(c.forwarded, 1, "{c:?}");
}

#[test]
fn a_standalone_relay_refuses_relay_certificates_by_role() {
    let rig = Rig::start(Backend::Mmsg).unwrap();
    let relay = &rig.world.relay;
    let rogue = rig
        .world
        .pki
        .node(3000, "leaked-relay", Role::Relay, &[])
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let jar = CookieJar::new(relay.public_key());
    let (_, init) = HopInitiator::new(
        &rogue,
        relay.public_key(),
        Trust::new(rig.world.pki.ca(), &[Role::Relay]),
        ReceiverIndex(9),
        &jar,
        Instant::now(),
        relay::control::unix_nanos(),
    )
    .unwrap();
    socket.send_to(&init, relay.local_addr()).unwrap();
    // Refused by the handshake's trust (the role), not later: a relay
    // certificate must never complete a handshake here.
    await_until("the role rejection", Duration::from_secs(5), || {
        relay
            .shared()
            .control_stats()
            .handshakes_rejected
            .get(HandshakeReject::Role)
            == 1
    });
    let c = relay.shared().control_stats();
    assert_eq!(
        (c.handshakes_ok, c.relay_refused),
        (2, 0),
        "the rig's two sessions only: {c:?}"
    );
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(socket.recv_from(&mut buf).is_err(), "the relay answered");
}

#[test]
fn a_reload_rebuilds_which_connector_serves_what() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    marker_down(&mut rig, 7);
    // ALLOWED moves to connector 2 (not attached): connector 1 no longer
    // serves it.
    let mut moved = rig.world.policy.clone();
    moved.connectors.push(proto::policy::Connector {
        id: 2,
        name: "connector2".into(),
        static_key: None,
    });
    let service = moved.services.iter_mut().find(|s| s.id == ALLOWED).unwrap();
    service.connectors = vec!["connector2".into()];
    rig.world.write_policy(&moved.to_toml_string()).unwrap();
    rig.world.relay.reload_policy();
    let shared = std::sync::Arc::clone(rig.world.relay.shared());
    // The control thread publishes its counters after the routes.
    await_until("the reload", Duration::from_secs(5), || {
        shared.control_stats().policy_epoch == 2
    });
    assert_eq!(shared.policy_epoch.load(Ordering::Relaxed), 2);
    // The first marker's forward is published (workers publish every
    // 100 ms): the baseline.
    let before = rig.await_counters("the first marker", |c| c.forwarded == 1);
    let mut down = vec![0u8; HEADER_LEN + 64];
    rig.connector
        .write_header(&mut down, Kind::DataDown, USER, ALLOWED);
    rig.connector_socket
        .send_to(&down, rig.world.relay_addr())
        .unwrap();
    let up = rig.user_frame(ALLOWED, &payload(64, 8));
    rig.send_from_user(&up);
    // Another service connector 1 still serves, as the marker.
    let other = ServiceId(2);
    let f = rig.user_frame(other, &payload(64, 9));
    rig.send_from_user(&f);
    assert_eq!(
        rig.connector_receive(1, Duration::from_secs(5))
            .iter()
            .map(|f| ids(f))
            .collect::<Vec<_>>(),
        vec![(USER, other)],
        "only the marker reaches connector 1"
    );
    let c = rig.await_counters("the three frames", |c| c.frames >= before.frames + 3);
    let d = c.since(&before);
    assert_eq!(
        d.dropped(DropReason::Spoofed),
        1,
        "connector 1's reply: {d:?}"
    );
    assert_eq!(d.dropped(DropReason::NoRoute), 1, "the user's frame: {d:?}");
    assert_eq!(d.forwarded, 1, "{d:?}");
    assert!(rig.user_receive(1, Duration::from_millis(100)).is_empty());
}
