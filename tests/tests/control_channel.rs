//! The control channel against a real relay on loopback: agents ping on
//! their hop session; the relay answers a connector with a pong and a user
//! with its directory (the services it may reach that have a connector now,
//! each with that connector's real static key, and its connection mode),
//! answers a current digest with a pong, and pushes a new directory,
//! unprompted, when the policy or the connectors change.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loadgen::world::{World, WorldConfig, CONNECTOR_ID};
use proto::control::{ConnectionMode, ControlMessage, Directory, ServiceEntry};
use proto::datapath::DropReason;
use proto::ids::ServiceId;
use proto::policy::{PolicyFile, Protocol};
use proto::wire::{Frame, Kind};
use tests::{
    await_until, backends, payload, receive_control, receive_directory, send_control, Rig, USER,
};

const WAIT: Duration = Duration::from_secs(5);

/// What the synthetic policy's directory for any user is when every grant
/// in `policy`'s rule has a route through the one connector (key `key`).
fn expected(policy: &PolicyFile, mode: ConnectionMode, key: [u8; 32]) -> Directory {
    let granted = &policy.rules[0].services;
    let services = policy
        .services
        .iter()
        .filter(|s| granted.contains(&s.name))
        .map(|s| ServiceEntry {
            id: s.id,
            name: s.name.clone(),
            protocol: Protocol::Udp,
            port: 10_000 + s.id.0 as u16,
            connector: CONNECTOR_ID,
            connector_key: key,
        })
        .collect();
    Directory::new(mode, services)
}

/// Writes `policy`, asks for a reload and waits until it is in force.
fn reload(world: &World, policy: &PolicyFile) {
    let shared = world.relay.shared();
    let epoch = shared.policy_epoch.load(Ordering::Relaxed);
    world.write_policy(&policy.to_toml_string()).unwrap();
    world.relay.reload_policy();
    let deadline = Instant::now() + WAIT;
    while shared.policy_epoch.load(Ordering::Relaxed) == epoch {
        assert!(Instant::now() < deadline, "policy was not reloaded");
        std::thread::yield_now();
    }
}

/// Sends `msg` from the rig's connector to its relay.
fn from_connector(rig: &mut Rig, msg: &ControlMessage) {
    let relay = rig.world.relay_addr();
    send_control(
        &rig.connector_socket,
        &mut rig.connector,
        relay,
        CONNECTOR_ID,
        msg,
    );
}

/// Answers the keepalive probes queued for the rig's connector, as a real
/// connector does, so the relay keeps it in the routes however slowly the
/// test runs (it takes silent connectors out after 1.5 s).
fn answer_probes(rig: &mut Rig) {
    let got = receive_control(
        &rig.connector_socket,
        &mut rig.connector,
        16,
        Duration::from_millis(1),
    );
    for m in got {
        assert_eq!(m, ControlMessage::Ping { digest: 0 }, "a probe");
        let pong = ControlMessage::Pong { digest: 0 };
        from_connector(rig, &pong);
    }
}

#[test]
fn users_get_their_directory_pongs_when_current_and_pushes_after_a_reload() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let relay = rig.world.relay_addr();
        let mut policy = rig.world.policy.clone();
        policy.groups[0].mode = Some(ConnectionMode::AlwaysOn);
        reload(&rig.world, &policy);

        // A connector's ping gets a pong, and nothing else.
        let ping0 = ControlMessage::Ping { digest: 0 };
        from_connector(&mut rig, &ping0);
        assert_eq!(
            receive_control(&rig.connector_socket, &mut rig.connector, 1, WAIT),
            [ControlMessage::Pong { digest: 0 }],
            "{io}: connector ping"
        );

        // A user without a directory gets it: exactly its allowed services
        // (1, 2, 3, 5, 6, 7 of 0..8), the connector's real key, its mode.
        send_control(&rig.user_socket, &mut rig.user, relay, USER.0, &ping0);
        let directory = receive_directory(&rig.user_socket, &mut rig.user, WAIT)
            .unwrap_or_else(|| panic!("{io}: no directory"));
        let want = expected(&policy, ConnectionMode::AlwaysOn, rig.connector_key);
        let ids: Vec<u32> = directory.services.iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [1, 2, 3, 5, 6, 7], "{io}");
        assert_eq!(directory, want, "{io}");
        assert!(directory.services.iter().all(|s| rig
            .world
            .relay
            .shared()
            .policy
            .load()
            .allowed(USER, s.id)));

        // The same digest again: nothing changed, a pong.
        let current = ControlMessage::Ping {
            digest: directory.digest,
        };
        send_control(&rig.user_socket, &mut rig.user, relay, USER.0, &current);
        assert_eq!(
            receive_control(&rig.user_socket, &mut rig.user, 1, WAIT),
            [ControlMessage::Pong {
                digest: directory.digest
            }],
            "{io}: ping with the current digest"
        );

        // Revoke service 1: the new directory arrives without a ping.
        answer_probes(&mut rig);
        policy.rules[0].services.retain(|s| s != "service1");
        reload(&rig.world, &policy);
        let pushed =
            receive_directory(&rig.user_socket, &mut rig.user, WAIT).unwrap_or_else(|| {
                panic!(
                    "{io}: no directory pushed after the reload; relay: {:?}",
                    rig.world.relay.shared().control_stats()
                )
            });
        assert!(pushed.service(ServiceId(1)).is_none(), "{io}: {pushed:?}");
        assert_eq!(
            pushed,
            expected(&policy, ConnectionMode::AlwaysOn, rig.connector_key),
            "{io}"
        );
        assert_ne!(pushed.digest, directory.digest);

        // A stale digest is answered with the current directory.
        answer_probes(&mut rig);
        send_control(&rig.user_socket, &mut rig.user, relay, USER.0, &current);
        assert_eq!(
            receive_directory(&rig.user_socket, &mut rig.user, WAIT),
            Some(pushed),
            "{io}: ping with a stale digest"
        );
        // Connectors are never pushed to: all they get after their ping is
        // keepalive probes.
        let got = receive_control(
            &rig.connector_socket,
            &mut rig.connector,
            4,
            Duration::from_millis(200),
        );
        assert!(
            got.iter().all(|m| *m == ControlMessage::Ping { digest: 0 }),
            "{io}: the connector got {got:?}"
        );
    }
}

#[test]
fn a_connector_that_connects_appears_and_sessions_that_never_pinged_hear_nothing() {
    let world = World::start(&WorldConfig {
        io: relay::io::Backend::Mmsg,
        ..WorldConfig::default()
    })
    .unwrap();
    let relay = world.relay_addr();
    let timeout = Some(Duration::from_millis(50));
    let pinger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut pinging = world
        .connect(&pinger, &world.user_identity(USER.0).unwrap())
        .unwrap();
    pinger.set_read_timeout(timeout).unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut quiet = world
        .connect(&silent, &world.user_identity(2).unwrap())
        .unwrap();
    silent.set_read_timeout(timeout).unwrap();

    // No connector yet: an empty directory, in the default mode.
    send_control(
        &pinger,
        &mut pinging,
        relay,
        USER.0,
        &ControlMessage::Ping { digest: 0 },
    );
    let empty = receive_directory(&pinger, &mut pinging, WAIT).expect("a directory");
    assert_eq!(empty, Directory::new(ConnectionMode::OnDemand, Vec::new()));

    // The connector connects: its services appear, unprompted.
    let connector_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connector = world.connector_identity().unwrap();
    let _link = world.connect(&connector_socket, &connector).unwrap();
    let pushed = receive_directory(&pinger, &mut pinging, WAIT).expect("a pushed directory");
    assert_eq!(
        pushed,
        expected(
            &world.policy,
            ConnectionMode::OnDemand,
            *connector.public_key()
        )
    );

    // The user that never pinged got nothing: the relay does not send on a
    // session before the peer proved it holds the keys.
    assert!(
        receive_control(&silent, &mut quiet, 1, Duration::from_millis(200)).is_empty(),
        "a session that never pinged was sent to"
    );
    let report = world.relay.stop();
    assert_eq!(report.control.directories_sent, 2, "{:?}", report.control);
    assert_eq!(report.control.directories_pushed, 1, "{:?}", report.control);
    assert_eq!(report.control.control_received, 1, "{:?}", report.control);
}

/// A session flooding pings is answered at most a burst's worth at once:
/// each answer may cost a directory, so the relay cuts a flood to its
/// per-session rate.
#[test]
fn a_ping_flood_is_cut_to_the_burst() {
    let mut rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let relay = rig.world.relay_addr();
    let ping = ControlMessage::Ping { digest: 0 };
    send_control(&rig.user_socket, &mut rig.user, relay, USER.0, &ping);
    let directory = receive_directory(&rig.user_socket, &mut rig.user, WAIT)
        .unwrap_or_else(|| panic!("no directory"));
    // Let the bucket refill completely (PING_BURST / PING_RATE s).
    std::thread::sleep(Duration::from_secs_f64(
        relay::control::PING_BURST / relay::control::PING_RATE + 0.1,
    )); // the refill itself is what is waited for, not another thread
    let current = ControlMessage::Ping {
        digest: directory.digest,
    };
    for _ in 0..50 {
        send_control(&rig.user_socket, &mut rig.user, relay, USER.0, &current);
    }
    let answers = receive_control(
        &rig.user_socket,
        &mut rig.user,
        50,
        Duration::from_millis(500),
    );
    let burst = relay::control::PING_BURST as usize;
    assert!(
        (burst..=burst + 2).contains(&answers.len()),
        "{} answers to 50 pings (burst {burst})",
        answers.len()
    );
    assert!(answers.iter().all(|a| *a
        == ControlMessage::Pong {
            digest: directory.digest
        }));
}

/// Whether a data frame reaches the rig's connector within `within`
/// (the relay's probes, which arrive there too, are passed over).
fn data_arrives(rig: &mut Rig, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let got = rig.connector_receive(1, left);
        if got
            .iter()
            .any(|f| Frame::new_checked(&f[..]).is_ok_and(|f| f.kind() == Kind::DataUp))
        {
            return true;
        }
    }
    false
}

#[test]
fn a_connector_that_stops_answering_probes_leaves_the_routes_and_its_answer_brings_it_back() {
    let mut rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let service = ServiceId(2);
    // Its first ping makes the relay probe it from now on.
    let ping0 = ControlMessage::Ping { digest: 0 };
    from_connector(&mut rig, &ping0);
    let last_heard = Instant::now();
    assert_eq!(
        receive_control(&rig.connector_socket, &mut rig.connector, 1, WAIT),
        [ControlMessage::Pong { digest: 0 }]
    );
    let f = rig.user_frame(service, &payload(64, 1));
    rig.send_from_user(&f);
    assert!(data_arrives(&mut rig, WAIT), "routed");

    // Silent from now on: the relay's probes go unanswered, and after
    // DEAD_AFTER its frames find no route.
    let took = await_until("the silent connector out of the routes", WAIT, || {
        let f = rig.user_frame(service, &payload(64, 2));
        rig.send_from_user(&f);
        rig.counters().dropped(DropReason::NoRoute) > 0
    });
    let out_after = last_heard.elapsed();
    assert!(
        out_after >= relay::control::DEAD_AFTER,
        "taken out {out_after:?} after it was last heard ({took:?} of sending)"
    );
    // Queued at the connector meanwhile: the frames sent before it was
    // taken out, and the probes it left unanswered.
    let queued = rig.connector_receive(usize::MAX, Duration::from_millis(1));
    let probes = queued
        .iter()
        .filter(|f| Frame::new_checked(&f[..]).is_ok_and(|f| f.kind() == Kind::Control))
        .count();
    assert!(probes >= 2, "probes unanswered: {probes}");

    // One answer and it carries traffic again.
    from_connector(&mut rig, &ping0);
    await_until("the connector back in the routes", WAIT, || {
        let f = rig.user_frame(service, &payload(64, 3));
        rig.send_from_user(&f);
        data_arrives(&mut rig, Duration::from_millis(20))
    });
}
