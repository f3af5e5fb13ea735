//! Key confirmation and initiation freshness against a real relay on
//! loopback (issue 13, "routing switches before key confirmation"):
//!
//! * an initiation with a valid certificate sent from another address (a
//!   victim's) gets a session, but no route: the connector's replies keep
//!   reaching the user's real socket, and nothing but the handshake
//!   response reaches the victim, also after a forged frame on the new
//!   session; a re-handshake that sends its keepalive does move the route;
//! * after a restart, a captured initiation made before the relay started
//!   (minus the allowed skew) is refused as stale and counted; one made
//!   within the skew is accepted but, never confirmed, routes nothing, and
//!   the real connector's re-handshake takes the service.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use loadgen::pki::Pki;
use loadgen::world::ScratchDir;
use proto::handshake::{frames, CookieJar, HandshakeFrame, HopInitiator, LocalIdentity, Trust};
use proto::hoptag::HopKey;
use proto::identity::{CaPublicKey, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::wire::{Kind, HEADER_LEN};
use relay::control::HandshakeReject;
use tests::{await_until, backends, payload, receive, Rig, ALLOWED, USER};

const WAIT: Duration = Duration::from_secs(5);

/// A `HandshakeInit` from `me` to the relay with static key `relay`, made
/// at `unix_nanos`.
fn initiation(
    me: &LocalIdentity,
    relay: &[u8; 32],
    ca: CaPublicKey,
    index: u32,
    unix_nanos: u64,
) -> (HopInitiator, Vec<u8>) {
    HopInitiator::new(
        me,
        relay,
        Trust::new(ca, &[Role::Relay]),
        ReceiverIndex(index),
        &CookieJar::new(relay),
        Instant::now(),
        unix_nanos,
    )
    .unwrap()
}

/// The next datagram at `socket` within `within`, if any.
fn next_datagram(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// The connector sends `n` replies to the user.
fn connector_replies(rig: &mut Rig, n: u8) {
    for i in 0..n {
        let mut reply = vec![0u8; HEADER_LEN + 64];
        reply[HEADER_LEN..].copy_from_slice(&payload(64, i));
        rig.connector
            .write_header(&mut reply, Kind::DataDown, USER, ALLOWED);
        rig.connector_socket
            .send_to(&reply, rig.world.relay_addr())
            .unwrap();
    }
}

/// The receiver index the relay's route to `USER` leads to (what the
/// user's link calls its local index).
fn routed_user_index(rig: &Rig) -> Option<ReceiverIndex> {
    let routes = rig.world.relay.shared().routes.load();
    let hop = routes.to_user(USER, ALLOWED)?;
    Some(routes.hop(hop)?.remote_index())
}

#[test]
fn a_spoofed_initiation_moves_no_route_until_a_frame_on_it_passes_the_tag() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let relay_key = *rig.world.relay.public_key();
        let ca = rig.world.pki.ca();
        let real = rig.user.local_index();
        assert_eq!(routed_user_index(&rig), Some(real), "{io}");

        // The user (any valid certificate of user 1) sends an initiation
        // "from" the victim's address: the victim's socket gets the
        // response; the attacker never sees it.
        let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
        victim
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let spoofer = rig.world.user_identity(USER.0).unwrap();
        let (_initiator, init) =
            initiation(&spoofer, &relay_key, ca, 0x51, relay::control::unix_nanos());
        victim.send_to(&init, rig.world.relay_addr()).unwrap();
        let response = next_datagram(&victim, WAIT).expect("the relay answers the victim");
        let Ok(HandshakeFrame::Response(r)) = frames::parse(&response) else {
            panic!("{io}: expected a handshake response");
        };
        let spoofed_index = r.sender;
        // Handled and published (the stats come after the routes in the
        // control loop): had the routes moved, they would have by now.
        await_until("the spoofed handshake", WAIT, || {
            rig.world.relay.shared().control_stats().handshakes_ok == 3
        });
        assert_eq!(routed_user_index(&rig), Some(real), "{io}: route moved");

        // A frame on the new session with a bad tag confirms nothing.
        let mut forged = vec![0u8; HEADER_LEN];
        proto::testkit::write_frame(
            &mut forged,
            Kind::Keepalive,
            spoofed_index,
            0,
            UserId(0),
            ServiceId(0),
            &HopKey::new(&[0x42; 32]),
        );
        victim.send_to(&forged, rig.world.relay_addr()).unwrap();
        rig.await_counters("the forged keepalive", |c| {
            c.dropped(proto::datapath::DropReason::BadTag) >= 1
        });

        // The connector's replies still reach the real user...
        connector_replies(&mut rig, 5);
        assert_eq!(rig.user_receive(5, WAIT).len(), 5, "{io}");
        // ...and nothing reaches the victim.
        assert_eq!(
            next_datagram(&victim, Duration::from_millis(300)),
            None,
            "{io}: the victim got traffic"
        );
        assert_eq!(routed_user_index(&rig), Some(real), "{io}");
        assert_eq!(
            rig.world.relay.shared().control_stats().sessions_confirmed,
            2,
            "{io}: only the rig's user and connector"
        );

        // A real re-handshake from the user's socket, which sends its
        // keepalive at once, takes the route.
        let me = rig.world.user_identity(USER.0).unwrap();
        let mut fresh = rig.world.connect(&rig.user_socket, &me).unwrap();
        rig.user_socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        await_until("the route to move to the confirmed session", WAIT, || {
            routed_user_index(&rig) == Some(fresh.local_index())
        });
        connector_replies(&mut rig, 3);
        assert_eq!(
            receive(&rig.user_socket, &mut fresh, 3, WAIT).len(),
            3,
            "{io}"
        );
    }
}

/// A standalone relay with `identity`, the synthetic policy in `dir`.
fn start_relay(pki: &Pki, dir: &ScratchDir, identity: LocalIdentity) -> relay::Relay {
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, proto::testkit::policy_file(4, 8).to_toml_string()).unwrap();
    relay::Relay::start(relay::RelayOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        first_core: 0,
        pin: false,
        io: relay::io::Backend::Mmsg,
        io_config: relay::io::IoConfig::default(),
        mode: proto::datapath::Mode::Ztna,
        identity,
        renewal: None,
        audit: relay::audit::AuditConfig::default(),
        ca: pki.ca(),
        policy,
        mesh: None,
    })
    .unwrap()
}

#[test]
fn a_captured_connector_initiation_replayed_after_a_restart_takes_no_service() {
    let now_ns = relay::control::unix_nanos();
    let pki = Pki::new(now_ns / 1_000_000_000);
    let dir = ScratchDir::new("keyconf").unwrap();
    let relay_identity = pki.node(1000, "relay-1", Role::Relay, &[]).unwrap();
    let relay_key = *relay_identity.public_key();
    let connector = pki
        .node(
            loadgen::world::CONNECTOR_ID,
            "connector1",
            Role::Connector,
            &[],
        )
        .unwrap();
    let connector_socket = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Before the restart: the connector's initiation, captured on the way;
    // and one captured longer ago than the allowed clock skew.
    let first = start_relay(&pki, &dir, relay_identity.clone());
    let (_, captured) = initiation(&connector, &relay_key, pki.ca(), 7, now_ns);
    connector_socket
        .send_to(&captured, first.local_addr())
        .unwrap();
    await_until("the first relay to take it", WAIT, || {
        first.shared().control_stats().handshakes_ok == 1
    });
    let skew = proto::handshake::MAX_CLOCK_SKEW;
    let old = now_ns - (skew + Duration::from_secs(5)).as_nanos() as u64;
    let (_, captured_long_ago) = initiation(&connector, &relay_key, pki.ca(), 8, old);
    first.stop();

    // Restarted, with an empty replay table.
    let relay = start_relay(&pki, &dir, relay_identity);
    let metrics = relay.serve_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stats = || relay.shared().control_stats();

    // Made before the start minus the skew: refused before the
    // certificate is looked at, and no answer.
    attacker
        .send_to(&captured_long_ago, relay.local_addr())
        .unwrap();
    await_until("the stale initiation refused", WAIT, || {
        stats()
            .handshakes_rejected
            .get(HandshakeReject::StaleTimestamp)
            == 1
    });
    assert_eq!(stats().handshakes_ok, 0);
    assert_eq!(next_datagram(&attacker, Duration::from_millis(100)), None);
    let scrape = || relay::http::get(metrics, "/metrics").unwrap().body;
    await_until("the stale counter exported", WAIT, || {
        scrape().contains("ztna_handshakes_rejected_total{reason=\"stale_timestamp\"} 1\n")
    });

    // Made within the skew: accepted once (the relay cannot tell), but the
    // replayer cannot use the response, so the session is never confirmed
    // and the service gets no route to it.
    attacker.send_to(&captured, relay.local_addr()).unwrap();
    await_until("the replay answered", WAIT, || stats().handshakes_ok == 1);
    let routes = || relay.shared().routes.load();
    assert_eq!(routes().to_service(ALLOWED, USER), None);

    // The real connector re-handshakes (newer timestamp) and confirms: the
    // service routes to it, at its own address.
    let mut link = loadgen::link::handshake(
        &connector_socket,
        relay.local_addr(),
        &relay_key,
        &connector,
        pki.ca(),
        ReceiverIndex(9),
    )
    .unwrap();
    await_until("the service routed to the real connector", WAIT, || {
        let t = routes();
        t.to_service(ALLOWED, USER)
            .and_then(|h| t.hop(h).map(|h| h.endpoint()))
            == Some(connector_socket.local_addr().unwrap())
    });
    // Replayed again now: not newer than the real one's, refused.
    attacker.send_to(&captured, relay.local_addr()).unwrap();
    await_until("the replay refused", WAIT, || {
        stats().handshakes_rejected.get(HandshakeReject::Replay) == 1
    });
    assert_eq!(stats().sessions_confirmed, 1);
    assert_eq!(
        stats()
            .handshakes_rejected
            .get(HandshakeReject::StaleTimestamp),
        1
    );
    // The link works (a keepalive was its first frame).
    let _ = link.keepalive();
    relay.stop();
}
