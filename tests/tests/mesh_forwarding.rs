//! A user on relay A reaches a service whose connector is attached to relay
//! C, through the A–C mesh link: the directory A gives the user names C's
//! connector and its key (from etcd), frames cross A and C with their ids
//! intact, replies come back, and a denied pair is dropped at A. etcd
//! restarting while frames flow both ways loses none of them.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use loadgen::pki::Pki;
use loadgen::world::{ScratchDir, CONNECTOR_ID};
use proto::control::ControlMessage;
use proto::datapath::DropReason;
use proto::handshake::{E2eInitiator, Trust};
use proto::identity::Role;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::link::HopLink;
use proto::wire::{Frame, Kind, HEADER_LEN};
use relay::mesh::etcd_server;
use relay::Relay;
use tests::{attach, payload, receive, receive_directory, send_control};

const DEADLINE: Duration = Duration::from_secs(10);
const USER: UserId = UserId(1);
const ALLOWED: ServiceId = ServiceId(1);
/// Ids divisible by 4 are denied by the test policy.
const DENIED: ServiceId = ServiceId(4);

use tests::{await_until, start_mesh_relay as start_relay};

fn counters(relay: &Relay) -> proto::datapath::Counters {
    relay.totals().datapath
}

/// A frame of `kind` for (USER, `service`) with `body`, tagged on `link`.
fn frame(link: &mut HopLink, kind: Kind, user: UserId, service: ServiceId, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN + body.len()];
    f[HEADER_LEN..].copy_from_slice(body);
    link.write_header(&mut f, kind, user, service);
    f
}

fn parts(f: &[u8]) -> (Kind, UserId, ServiceId, Vec<u8>) {
    let f = Frame::new_checked(f).expect("well-formed frame");
    (f.kind(), f.user(), f.service(), f.body().to_vec())
}

#[test]
fn a_user_on_one_relay_reaches_a_connector_on_another() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let dir = ScratchDir::new("mesh-forwarding").unwrap();
    let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
    let a = start_relay(&pki, &dir, &etcd, 1001, "relay-a");
    let c = start_relay(&pki, &dir, &etcd, 1002, "relay-c");
    await_until("A and C linked", DEADLINE, || {
        a.mesh_links().len() == 1 && c.mesh_links().len() == 1
    });

    // The connector attaches to C, the user to A.
    let (connector_id, connector_socket, mut connector) =
        attach(&pki, &c, (CONNECTOR_ID, "connector1", Role::Connector, &[]));
    let (user_id, user_socket, mut user) =
        attach(&pki, &a, (USER.0, "user1", Role::User, &["everyone"]));
    for s in [&user_socket, &connector_socket] {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }

    // A routes the service over the link (C announced it), C routes the
    // user over the link (A announced it).
    await_until("routes across the mesh", DEADLINE, || {
        a.shared().routes.load().to_service(ALLOWED, USER).is_some()
            && c.shared().routes.load().to_user(USER, ALLOWED).is_some()
    });

    // The user's directory from A lists the service with C's connector and
    // its key, as announced in etcd.
    send_control(
        &user_socket,
        &mut user,
        a.local_addr(),
        USER.0,
        &ControlMessage::Ping { digest: 0 },
    );
    let directory = receive_directory(&user_socket, &mut user, DEADLINE).expect("a directory");
    let entry = directory
        .services
        .iter()
        .find(|s| s.id == ALLOWED)
        .expect("the remote service is in the directory");
    assert_eq!(entry.connector, CONNECTOR_ID);
    assert_eq!(entry.connector_key, *connector_id.public_key());
    assert!(directory.services.iter().all(|s| s.id.0 % 4 != 0));

    // An end-to-end handshake initiation crosses A and C untouched.
    let (_initiator, init) = E2eInitiator::new(
        &user_id,
        &entry.connector_key,
        Trust::new(pki.ca(), &[Role::Connector]),
        USER,
        ALLOWED,
        ReceiverIndex(1),
        relay::control::unix_nanos(),
    )
    .unwrap();
    let f = frame(&mut user, Kind::E2eHandshakeUp, USER, ALLOWED, &init);
    user_socket.send_to(&f, a.local_addr()).unwrap();
    let got = receive(&connector_socket, &mut connector, 1, DEADLINE);
    assert_eq!(
        got.len(),
        1,
        "the e2e initiation did not reach the connector"
    );
    assert_eq!(parts(&got[0]), (Kind::E2eHandshakeUp, USER, ALLOWED, init));

    // Data up, and the connector's answer down, ids and bodies intact.
    let up = payload(200, 1);
    let f = frame(&mut user, Kind::DataUp, USER, ALLOWED, &up);
    user_socket.send_to(&f, a.local_addr()).unwrap();
    let got = receive(&connector_socket, &mut connector, 1, DEADLINE);
    assert_eq!(got.len(), 1, "the data frame did not reach the connector");
    assert_eq!(parts(&got[0]), (Kind::DataUp, USER, ALLOWED, up));
    let down = payload(300, 2);
    let f = frame(&mut connector, Kind::DataDown, USER, ALLOWED, &down);
    connector_socket.send_to(&f, c.local_addr()).unwrap();
    let got = receive(&user_socket, &mut user, 1, DEADLINE);
    assert_eq!(got.len(), 1, "the reply did not reach the user");
    assert_eq!(parts(&got[0]), (Kind::DataDown, USER, ALLOWED, down));

    // A denied pair is dropped at A: it never reaches C.
    let denied_before = counters(&a).dropped(DropReason::Denied);
    let f = frame(&mut user, Kind::DataUp, USER, DENIED, &payload(100, 3));
    user_socket.send_to(&f, a.local_addr()).unwrap();
    await_until("denied at A", DEADLINE, || {
        counters(&a).dropped(DropReason::Denied) == denied_before + 1
    });
    assert!(receive(
        &connector_socket,
        &mut connector,
        1,
        Duration::from_millis(200)
    )
    .is_empty());

    // etcd dies and comes back while frames flow both ways: the relays
    // forward on the last view they had, and not one frame is lost.
    // (The user may also get its directory pushed as the views change.)
    let data = |socket: &UdpSocket, link: &mut HopLink| {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            for f in receive(socket, link, 1, DEADLINE) {
                if parts(&f).0 != Kind::Control {
                    return Some(f);
                }
            }
        }
        None
    };
    let round_trip = |user: &mut HopLink, connector: &mut HopLink, i: u64| {
        let up = payload(120, i as u8);
        let f = frame(user, Kind::DataUp, USER, ALLOWED, &up);
        user_socket.send_to(&f, a.local_addr()).unwrap();
        let got = data(&connector_socket, connector).unwrap_or_else(|| panic!("frame {i} up lost"));
        assert_eq!(parts(&got).3, up);
        let down = payload(130, (i >> 8) as u8 ^ i as u8);
        let f = frame(connector, Kind::DataDown, USER, ALLOWED, &down);
        connector_socket.send_to(&f, c.local_addr()).unwrap();
        let got = data(&user_socket, user).unwrap_or_else(|| panic!("frame {i} down lost"));
        assert_eq!(parts(&got).3, down);
    };
    let (drops_a, drops_c) = (counters(&a).dropped_total(), counters(&c).dropped_total());
    let mut etcd = etcd;
    etcd.kill();
    let restarting = std::thread::spawn(move || {
        etcd.restart().expect("etcd restarts");
        etcd
    });
    let mut i = 1000;
    while !restarting.is_finished() {
        round_trip(&mut user, &mut connector, i);
        i += 1;
    }
    let etcd = restarting.join().unwrap();
    // And for a while after, as the watches resync and the registries
    // renew their leases.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(2) {
        round_trip(&mut user, &mut connector, i);
        i += 1;
    }
    assert!(i > 1100, "only {} round trips across the restart", i - 1000);
    assert_eq!(counters(&a).dropped_total(), drops_a, "A dropped frames");
    assert_eq!(counters(&c).dropped_total(), drops_c, "C dropped frames");

    drop(etcd);
    drop(user_socket);
    c.stop();
    a.stop();
}
