//! Who may hold a hop session, per the policy in force (issue 13, "a
//! stolen certificate wins by id"; docs/security.md §3, §7b, §11):
//!
//! * a `[[connectors]]` entry's `static_key` pins the connector's key: a
//!   reload that pins another key closes the connector's sessions; a
//!   CA-signed certificate for the same id but another key (a stolen or
//!   second certificate) gets no session and moves no route; the pinned
//!   connector's rekey keeps the service's routes on its own id and key;
//! * the hop responder consults the policy: a valid user or connector
//!   certificate whose id the policy does not list gets no session (no
//!   slot held), counted as `not_in_policy`; once listed, it connects;
//! * a `[[users]]` entry's `static_keys` pins the user's keys (one per
//!   device): another certificate for the id is refused, and a reload
//!   that drops a key closes that device's sessions.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use proto::handshake::{CookieJar, HopInitiator, LocalIdentity, Trust};
use proto::identity::{to_hex, CaPublicKey, Role};
use proto::ids::ReceiverIndex;
use proto::link::HopLink;
use relay::control::HandshakeReject;
use relay::io::Backend;
use tests::{await_until, payload, receive, Rig, ALLOWED, USER};

const WAIT: Duration = Duration::from_secs(5);

fn initiation(me: &LocalIdentity, relay: &[u8; 32], ca: CaPublicKey, index: u32) -> Vec<u8> {
    HopInitiator::new(
        me,
        relay,
        Trust::new(ca, &[Role::Relay]),
        ReceiverIndex(index),
        &CookieJar::new(relay),
        Instant::now(),
        relay::control::unix_nanos(),
    )
    .unwrap()
    .1
}

fn rejected(rig: &Rig, reason: HandshakeReject) -> u64 {
    rig.world
        .relay
        .shared()
        .control_stats()
        .handshakes_rejected
        .get(reason)
}

/// Writes `policy` and waits until the relay runs it.
fn reload(rig: &Rig, policy: &proto::policy::PolicyFile) {
    let epoch = rig.world.relay.shared().control_stats().policy_epoch;
    rig.world.write_policy(&policy.to_toml_string()).unwrap();
    rig.world.relay.reload_policy();
    await_until("the reload", WAIT, || {
        rig.world.relay.shared().control_stats().policy_epoch > epoch
    });
}

/// The static key and remote index of the session the relay routes
/// `ALLOWED` (for `USER`) to.
fn service_route(rig: &Rig) -> Option<ReceiverIndex> {
    let routes = rig.world.relay.shared().routes.load();
    let hop = routes.to_service(ALLOWED, USER)?;
    Some(routes.hop(hop)?.remote_index())
}

/// `thief`, holding a CA-signed certificate whose key the policy does not
/// pin for its id, initiates from a socket of its own: the relay refuses it
/// as `PinnedKey` (the first such refusal) and answers nothing. Returns the
/// socket.
fn refused_for_its_key(
    rig: &Rig,
    thief: &LocalIdentity,
    relay_key: &[u8; 32],
    ca: CaPublicKey,
) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
        .send_to(
            &initiation(thief, relay_key, ca, 0x7e),
            rig.world.relay_addr(),
        )
        .unwrap();
    await_until("the thief's refusal", WAIT, || {
        rejected(rig, HandshakeReject::PinnedKey) == 1
    });
    let mut buf = [0u8; 2048];
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "the relay answered a certificate whose key the policy does not pin"
    );
    socket
}

/// The user sends a frame to `ALLOWED`; true if `link` at `socket` got it.
fn reaches(rig: &mut Rig, socket: &UdpSocket, link: &mut HopLink, seed: u8) -> bool {
    let f = rig.user_frame(ALLOWED, &payload(64, seed));
    rig.send_from_user(&f);
    receive(socket, link, 1, Duration::from_millis(500)).len() == 1
}

#[test]
fn a_pinned_connector_keeps_its_service_against_a_second_certificate_for_its_id() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let relay_key = *rig.world.relay.public_key();
    let ca = rig.world.pki.ca();

    // The operator pins a connector key: not the key of the connector up
    // now, whose sessions end with the reload.
    let pinned = rig.world.connector_identity().unwrap();
    let mut policy = rig.world.policy.clone();
    policy.connectors[0].static_key = Some(to_hex(pinned.public_key()));
    reload(&rig, &policy);
    assert_eq!(
        rig.world.relay.shared().control_stats().pinned_closed,
        1,
        "the unpinned connector's session was not closed"
    );
    await_until("the old connector's route gone", WAIT, || {
        service_route(&rig).is_none()
    });

    // The pinned connector connects and gets the service.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut link = rig.world.connect(&socket, &pinned).unwrap();
    let first = link.local_index();
    await_until("the pinned connector's route", WAIT, || {
        service_route(&rig) == Some(first)
    });
    assert!(reaches(&mut rig, &socket, &mut link, 1));

    // A CA-signed certificate for the same connector id, another key:
    // refused before any response, counted, and it moves nothing.
    let thief = rig.world.connector_identity().unwrap();
    assert_eq!(thief.certificate().body.id, pinned.certificate().body.id);
    refused_for_its_key(&rig, &thief, &relay_key, ca);
    let ok = rig.world.relay.shared().control_stats().handshakes_ok;
    assert_eq!(service_route(&rig), Some(first));
    assert!(reaches(&mut rig, &socket, &mut link, 2));

    // The pinned connector rekeys: the routes follow it to the new session,
    // of the same certificate id and key.
    let mut rekeyed = rig.world.connect(&socket, &pinned).unwrap();
    let second = rekeyed.local_index();
    assert_ne!(first, second);
    await_until("the rekeyed route", WAIT, || {
        service_route(&rig) == Some(second)
    });
    assert_eq!(
        rig.world.relay.shared().control_stats().handshakes_ok,
        ok + 1
    );
    let routes = rig.world.relay.shared().routes.load();
    let hop = routes.to_service(ALLOWED, USER).unwrap();
    assert_eq!(routes.hop(hop).unwrap().remote_index(), second);
    drop(routes);
    assert!(reaches(&mut rig, &socket, &mut rekeyed, 3));
}

#[test]
fn identities_the_policy_does_not_list_get_no_session_until_listed() {
    let rig = Rig::start(Backend::Mmsg).unwrap();
    let relay_key = *rig.world.relay.public_key();
    let ca = rig.world.pki.ca();
    let sessions = || rig.world.relay.shared().control_stats().handshakes_ok;
    let before = sessions();

    // Valid certificates, ids the policy does not list.
    let stranger = rig.world.user_identity(50).unwrap();
    let other_connector = rig
        .world
        .pki
        .node(77, "connector77", Role::Connector, &[])
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for (n, me) in [&stranger, &other_connector].into_iter().enumerate() {
        socket
            .send_to(
                &initiation(me, &relay_key, ca, 0x100 + n as u32),
                rig.world.relay_addr(),
            )
            .unwrap();
    }
    await_until("two refusals", WAIT, || {
        rejected(&rig, HandshakeReject::NotInPolicy) == 2
    });
    let mut buf = [0u8; 2048];
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "a stranger got an answer"
    );
    assert_eq!(sessions(), before, "a stranger holds a session");

    // Listed now: the same certificate connects.
    let mut policy = rig.world.policy.clone();
    policy.users.push(proto::policy::User {
        id: proto::ids::UserId(50),
        name: "user50".into(),
        groups: vec!["everyone".into()],
        static_keys: None,
    });
    reload(&rig, &policy);
    rig.world.connect(&socket, &stranger).unwrap();
    assert_eq!(sessions(), before + 1);
    assert_eq!(rejected(&rig, HandshakeReject::NotInPolicy), 2);
}

/// A connector that rekeys answers on its new session at once (its first
/// frame there confirms it): its replies must reach the user, not be
/// dropped as `spoofed` while the relay's routes still name the previous
/// session; the routes then follow it, to the same certificate id and key.
#[test]
fn a_connector_answers_on_its_new_session_right_after_a_rekey() {
    let mut rig = Rig::start(Backend::Mmsg).unwrap();
    let mut policy = rig.world.policy.clone();
    let connector = rig.world.connector_identity().unwrap();
    policy.connectors[0].static_key = Some(to_hex(connector.public_key()));
    reload(&rig, &policy);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let first = rig.world.connect(&socket, &connector).unwrap();
    await_until("the connector's route", WAIT, || {
        service_route(&rig) == Some(first.local_index())
    });
    for round in 0..5u8 {
        let mut link = rig.world.connect(&socket, &connector).unwrap();
        // Replies at once, on the new session.
        for i in 0..8u8 {
            let mut reply = vec![0u8; proto::wire::HEADER_LEN + 64];
            reply[proto::wire::HEADER_LEN..].copy_from_slice(&payload(64, i));
            link.write_header(&mut reply, proto::wire::Kind::DataDown, USER, ALLOWED);
            socket.send_to(&reply, rig.world.relay_addr()).unwrap();
        }
        let got = rig.user_receive(8, WAIT).len();
        let spoofed = rig.counters().dropped(proto::datapath::DropReason::Spoofed);
        assert_eq!((got, spoofed), (8, 0), "round {round}");
        await_until("the rekeyed route", WAIT, || {
            service_route(&rig) == Some(link.local_index())
        });
    }
}

/// A user may pin its certificates' keys (`[[users]] static_keys`, one per
/// device): a CA-signed certificate for the user's id that certifies
/// another key is refused at the handshake (`pinned_key`) and holds no
/// session; each pinned key connects; the reload that drops a key from the
/// list closes that device's sessions (`pinned_closed`) and only those.
#[test]
fn a_pinned_user_connects_with_its_own_keys_only_and_unpinning_closes() {
    use proto::datapath::DropReason;
    use proto::ids::UserId;
    use proto::wire::{Kind, HEADER_LEN};

    const PINNED: UserId = UserId(2);
    let rig = Rig::start(Backend::Mmsg).unwrap();
    let relay_key = *rig.world.relay.public_key();
    let ca = rig.world.pki.ca();
    let laptop = rig.world.user_identity(PINNED.0).unwrap();
    let phone = rig.world.user_identity(PINNED.0).unwrap();
    let thief = rig.world.user_identity(PINNED.0).unwrap();
    let pin = |keys: &[&LocalIdentity]| {
        let mut policy = rig.world.policy.clone();
        let user = policy.users.iter_mut().find(|u| u.id == PINNED).unwrap();
        user.static_keys = Some(keys.iter().map(|k| to_hex(k.public_key())).collect());
        policy
    };
    reload(&rig, &pin(&[&laptop, &phone]));
    assert_eq!(rig.world.relay.shared().control_stats().pinned_closed, 0);

    // Another certificate of the same user: no answer, no session.
    let ok = rig.world.relay.shared().control_stats().handshakes_ok;
    let thief_socket = refused_for_its_key(&rig, &thief, &relay_key, ca);
    assert_eq!(rig.world.relay.shared().control_stats().handshakes_ok, ok);

    // Both pinned devices connect, and their frames are forwarded.
    let mut devices: Vec<(UdpSocket, HopLink)> = [&laptop, &phone]
        .into_iter()
        .map(|me| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let link = rig.world.connect(&socket, me).unwrap();
            (socket, link)
        })
        .collect();
    let send = |socket: &UdpSocket, link: &mut HopLink| {
        let mut f = vec![0u8; HEADER_LEN + 40];
        link.write_header(&mut f, Kind::DataUp, PINNED, ALLOWED);
        socket.send_to(&f, rig.world.relay_addr()).unwrap();
    };
    let forwarded = rig.counters().forwarded;
    for (socket, link) in &mut devices {
        send(socket, link);
    }
    rig.await_counters("both devices' frames forwarded", |c| {
        c.forwarded == forwarded + 2
    });

    // The phone is unpinned: its session closes, the laptop's stays.
    // User 1, the connector and the two devices (as the worker publishes
    // them, every 100 ms).
    let sessions = || rig.world.relay.totals().sessions;
    await_until("four sessions counted", WAIT, || sessions() == 4);
    let unknown = rig.counters().dropped(DropReason::UnknownSession);
    reload(&rig, &pin(&[&laptop]));
    let stats = rig.world.relay.shared().control_stats();
    assert_eq!((stats.pinned_closed, stats.unlisted_closed), (1, 0));
    await_until("the phone's session removed", WAIT, || sessions() == 3);
    let forwarded = rig.counters().forwarded;
    for (socket, link) in &mut devices {
        send(socket, link);
    }
    rig.await_counters("the laptop forwarded, the phone unknown", |c| {
        c.forwarded == forwarded + 1 && c.dropped(DropReason::UnknownSession) == unknown + 1
    });

    // Unpinned altogether: any certificate of the user connects again.
    let mut policy = rig.world.policy.clone();
    policy
        .users
        .iter_mut()
        .find(|u| u.id == PINNED)
        .unwrap()
        .static_keys = None;
    reload(&rig, &policy);
    rig.world.connect(&thief_socket, &thief).unwrap();
    assert_eq!(rig.world.relay.shared().control_stats().pinned_closed, 1);
}
