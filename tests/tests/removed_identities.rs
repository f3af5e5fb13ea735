//! A policy reload that removes an identity closes the sessions it holds
//! (docs/security.md §8, §11 item 1): a user or connector no longer in
//! `[[users]]` / `[[connectors]]` loses its hop sessions at the reload,
//! counted in `unlisted_closed` (`ztna_unlisted_closed_total`); its next
//! frames are for an unknown session, and everyone else's sessions carry
//! on.

use std::net::UdpSocket;
use std::time::Duration;

use loadgen::world::WorldConfig;
use proto::datapath::DropReason;
use proto::ids::{ServiceId, UserId};
use proto::link::HopLink;
use proto::policy::PolicyFile;
use proto::wire::{Kind, HEADER_LEN};
use relay::control::HandshakeReject;
use relay::io::Backend;
use tests::{await_until, payload, receive, Rig, ALLOWED, USER};

const WAIT: Duration = Duration::from_secs(5);

/// Writes `policy` and waits until the relay runs it.
fn reload(rig: &Rig, policy: &PolicyFile) {
    let epoch = rig.world.relay.shared().control_stats().policy_epoch;
    rig.world.write_policy(&policy.to_toml_string()).unwrap();
    rig.world.relay.reload_policy();
    await_until("the reload", WAIT, || {
        rig.world.relay.shared().control_stats().policy_epoch > epoch
    });
}

fn unlisted_closed(rig: &Rig) -> u64 {
    rig.world.relay.shared().control_stats().unlisted_closed
}

/// Sends a `kind` frame for (`user`, `service`) on `link` from `socket`.
fn send(rig: &Rig, socket: &UdpSocket, link: &mut HopLink, kind: Kind, ids: (UserId, ServiceId)) {
    let mut f = vec![0u8; HEADER_LEN + 40];
    f[HEADER_LEN..].copy_from_slice(&payload(40, 7));
    link.write_header(&mut f, kind, ids.0, ids.1);
    socket.send_to(&f, rig.world.relay_addr()).unwrap();
}

/// The user sends a frame to `service`; true if the connector at
/// `socket`/`link` got it.
fn reaches(rig: &mut Rig, service: ServiceId, socket: &UdpSocket, link: &mut HopLink) -> bool {
    let f = rig.user_frame(service, &payload(64, 1));
    rig.send_from_user(&f);
    receive(socket, link, 1, Duration::from_millis(500)).len() == 1
}

#[test]
fn a_reload_that_removes_a_user_closes_its_sessions_and_no_one_elses() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let relay_sessions = |rig: &Rig| rig.world.relay.totals().sessions;
    // User 2 holds two sessions (a laptop and a phone), each forwarding.
    const GONE: UserId = UserId(2);
    let mut devices: Vec<(UdpSocket, HopLink)> = (0..2)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let me = rig.world.user_identity(GONE.0).unwrap();
            let link = rig.world.connect(&socket, &me).unwrap();
            (socket, link)
        })
        .collect();
    for (socket, link) in &mut devices {
        send(&rig, socket, link, Kind::DataUp, (GONE, ALLOWED));
        assert_eq!(rig.connector_receive(1, WAIT).len(), 1);
    }
    // User 1, the connector and user 2's two (as the worker publishes
    // them, every 100 ms).
    await_until("four sessions counted", WAIT, || relay_sessions(&rig) == 4);
    let unknown = rig.counters().dropped(DropReason::UnknownSession);

    // The policy no longer lists user 2.
    let mut policy = rig.world.policy.clone();
    policy.users.retain(|u| u.id != GONE);
    reload(&rig, &policy);
    assert_eq!(unlisted_closed(&rig), 2, "user 2's sessions stayed");
    let stats = rig.world.relay.shared().control_stats();
    assert_eq!((stats.revoked_closed, stats.pinned_closed), (0, 0));
    // The workers apply the removals between batches.
    await_until("user 2's sessions removed", WAIT, || {
        relay_sessions(&rig) == 2
    });
    // Its next frames are for an unknown session.
    for (socket, link) in &mut devices {
        send(&rig, socket, link, Kind::DataUp, (GONE, ALLOWED));
    }
    rig.await_counters("user 2's frames dropped", |c| {
        c.dropped(DropReason::UnknownSession) == unknown + 2
    });
    assert!(rig
        .connector_receive(1, Duration::from_millis(200))
        .is_empty());

    // User 1 and the connector carry on, on the sessions they had.
    for i in 0..3u8 {
        let f = rig.user_frame(ALLOWED, &payload(64, i));
        rig.send_from_user(&f);
        assert_eq!(rig.connector_receive(1, WAIT).len(), 1, "frame {i}");
    }
    assert_eq!(unlisted_closed(&rig), 2);

    // And user 2 cannot come back with a new handshake.
    let refused = || {
        rig.world
            .relay
            .shared()
            .control_stats()
            .handshakes_rejected
            .get(HandshakeReject::NotInPolicy)
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = rig.world.user_identity(GONE.0).unwrap();
    assert!(rig.world.connect(&socket, &me).is_err());
    assert!(refused() >= 1);
}

#[test]
fn a_reload_that_removes_a_connector_closes_its_sessions_and_moves_its_services() {
    // Two connectors: service 1 behind connector 1, service 2 behind
    // connector 2.
    let mut rig = Rig::start_with(&WorldConfig {
        io: Backend::Mmsg,
        connectors: 2,
        ..WorldConfig::default()
    })
    .unwrap();
    const SECOND: ServiceId = ServiceId(2);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut link = rig
        .world
        .connect(&socket, &rig.world.nth_connector_identity(2).unwrap())
        .unwrap();
    rig.world.await_routes(SECOND, &[USER]).unwrap();
    assert!(reaches(&mut rig, SECOND, &socket, &mut link));
    // User 1 and the two connectors (as the worker publishes them, every
    // 100 ms).
    let sessions = || rig.world.relay.totals().sessions;
    await_until("three sessions counted", WAIT, || sessions() == 3);
    let unknown = rig.counters().dropped(DropReason::UnknownSession);

    // Connector 2 leaves the policy; connector 1 takes its services.
    let mut policy = rig.world.policy.clone();
    policy.connectors.retain(|c| c.id != 2);
    for s in &mut policy.services {
        s.connectors = vec!["connector1".into()];
    }
    reload(&rig, &policy);
    assert_eq!(unlisted_closed(&rig), 1, "connector 2's session stayed");
    await_until("connector 2's session removed", WAIT, || sessions() == 2);
    // Its replies are for an unknown session now.
    send(&rig, &socket, &mut link, Kind::DataDown, (USER, SECOND));
    rig.await_counters("connector 2's frame dropped", |c| {
        c.dropped(DropReason::UnknownSession) == unknown + 1
    });
    // Service 2 is reached through connector 1; service 1 as before.
    rig.world.await_routes(SECOND, &[USER]).unwrap();
    let f = rig.user_frame(SECOND, &payload(64, 2));
    rig.send_from_user(&f);
    assert_eq!(rig.connector_receive(1, WAIT).len(), 1);
    let f = rig.user_frame(ALLOWED, &payload(64, 3));
    rig.send_from_user(&f);
    assert_eq!(rig.connector_receive(1, WAIT).len(), 1);
    assert_eq!(unlisted_closed(&rig), 1);
}
