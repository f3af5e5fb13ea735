//! Transit scales with cores: between two relays there is one mesh link
//! per worker, each between the relays' per-worker link ports, and flows
//! spread over them by a hash of (user, service). Relay B, with two
//! workers, sits between A and C (A and C hold no link); frames of many
//! (user, service) pairs from users on A to a connector on C cross B, and
//! both of B's workers carry a share.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::net::UdpSocket;
use std::time::Duration;

use loadgen::pki::Pki;
use loadgen::world::{ScratchDir, CONNECTOR_ID};
use proto::identity::Role;
use proto::ids::{ServiceId, UserId};
use proto::link::HopLink;
use proto::wire::{Kind, HEADER_LEN};
use relay::mesh::etcd_server;
use relay::Relay;
use tests::{attach, await_until, payload, receive, MeshRelay};

const DEADLINE: Duration = Duration::from_secs(15);

/// Frames forwarded by each of `relay`'s workers.
fn forwarded(relay: &Relay) -> Vec<u64> {
    relay.stats().iter().map(|w| w.datapath.forwarded).collect()
}

#[test]
fn transit_between_two_relays_spreads_over_the_workers() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let dir = ScratchDir::new("mesh-transit").unwrap();
    let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
    let e = etcd.endpoint();
    let a = MeshRelay {
        workers: 2,
        peers: Some(&["relay-b"]),
        ..MeshRelay::new("relay-a", 1001)
    }
    .start(&pki, &dir, &e);
    let b = MeshRelay {
        workers: 2,
        ..MeshRelay::new("relay-b", 1002)
    }
    .start(&pki, &dir, &e);
    let c = MeshRelay {
        workers: 2,
        peers: Some(&["relay-b"]),
        ..MeshRelay::new("relay-c", 1003)
    }
    .start(&pki, &dir, &e);
    // Two links (one per worker) between A and B and between B and C.
    await_until("links up", DEADLINE, || {
        let sessions = |r: &Relay| -> Vec<(String, usize)> {
            r.mesh_links()
                .iter()
                .map(|l| (l.name.clone(), l.sessions))
                .collect()
        };
        sessions(&a) == [("relay-b".to_string(), 2)]
            && sessions(&c) == [("relay-b".to_string(), 2)]
            && sessions(&b) == [("relay-a".to_string(), 2), ("relay-c".to_string(), 2)]
    });

    let (_, connector_socket, mut connector) =
        attach(&pki, &c, (CONNECTOR_ID, "connector1", Role::Connector, &[]));
    // The synthetic policy's users 0..4, each allowed services 1, 2, 3, 5,
    // 6, 7: 24 flows.
    let mut users: Vec<(UserId, UdpSocket, HopLink)> = (0..4u32)
        .map(|u| {
            let name = format!("user{u}");
            let (_, socket, link) = attach(&pki, &a, (u, &name, Role::User, &["everyone"]));
            (UserId(u), socket, link)
        })
        .collect();
    let services: Vec<ServiceId> = [1, 2, 3, 5, 6, 7].map(ServiceId).to_vec();
    await_until("A routes every service through B", DEADLINE, || {
        let routes = a.shared().routes.load();
        services
            .iter()
            .all(|s| routes.to_service(*s, UserId(0)).is_some())
    });

    let before = forwarded(&b);
    let rounds = 20;
    for round in 0..rounds {
        for (user, socket, link) in users.iter_mut() {
            for s in &services {
                let body = payload(200, round as u8);
                let mut f = vec![0u8; HEADER_LEN + body.len()];
                f[HEADER_LEN..].copy_from_slice(&body);
                link.write_header(&mut f, Kind::DataUp, *user, *s);
                socket.send_to(&f, a.local_addr()).unwrap();
            }
        }
        // Each round arrives whole before the next is sent.
        let got = receive(&connector_socket, &mut connector, 24, DEADLINE);
        assert_eq!(got.len(), 24, "round {round}: frames lost");
    }
    let total = (rounds * 24) as u64;
    await_until("B's counters published", DEADLINE, || {
        let now = forwarded(&b);
        now.iter().sum::<u64>() - before.iter().sum::<u64>() >= total
    });
    let after = forwarded(&b);
    let share: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("transit frames per worker of B: {share:?} of {total}");
    for (k, n) in share.iter().enumerate() {
        assert!(
            *n >= total / 5,
            "worker {k} of B carried {n} of {total} transit frames: {share:?}"
        );
    }
    c.stop();
    b.stop();
    a.stop();
}
