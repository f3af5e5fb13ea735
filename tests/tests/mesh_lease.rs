//! A relay cut off from etcd loses its lease, and with it its place in the
//! mesh: when the lease expires etcd deletes its record and its services,
//! and the other relays drop their routes to it. When it can reach etcd
//! again it registers anew and the routes come back. Its metrics say
//! whether it is registered and watching.
//!
//! The partition is real: relay C talks to etcd through a TCP pipe the
//! test cuts. Needs the `etcd` binary (`scripts/setup.sh`);
//! `ZTNA_SKIP_ETCD=1` skips.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::pki::Pki;
use loadgen::world::{ScratchDir, CONNECTOR_ID};
use proto::identity::Role;
use proto::ids::{ServiceId, UserId};
use relay::mesh::etcd_server;
use tests::{attach, await_until, start_mesh_relay, start_mesh_relay_at, TcpPipe};

const USER: UserId = UserId(1);
const ALLOWED: ServiceId = ServiceId(1);

#[test]
fn a_relay_whose_lease_expires_leaves_the_routes_and_comes_back() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let dir = ScratchDir::new("mesh-lease").unwrap();
    let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
    let etcd_addr: SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let pipe = TcpPipe::start(etcd_addr).unwrap();
    let a = start_mesh_relay(&pki, &dir, &etcd, 1001, "relay-a");
    let c = start_mesh_relay_at(&pki, &dir, &pipe.url(), 1002, "relay-c");

    // A connector on C: A routes the service to C.
    let (_, _socket, _connector) =
        attach(&pki, &c, (CONNECTOR_ID, "connector1", Role::Connector, &[]));
    let routed = || a.shared().routes.load().to_service(ALLOWED, USER).is_some();
    await_until("A routes to C's service", Duration::from_secs(10), routed);
    let metrics_of_c = || relay::metrics::render(c.shared());
    await_until("C says it is registered", Duration::from_secs(10), || {
        let m = metrics_of_c();
        m.contains("ztna_mesh_etcd_registered 1\n")
            && m.contains("ztna_mesh_etcd_watch_connected 1\n")
    });

    // Partition C from etcd: its lease (2 s TTL) runs out, etcd deletes
    // its keys, A's routes to it go.
    pipe.set_open(false);
    let gone = await_until("A drops C's service", Duration::from_secs(10), || !routed());
    println!(
        "C cut off from etcd: A dropped its routes after {} ms (lease TTL 2000 ms)",
        gone.as_millis()
    );
    assert!(
        gone >= Duration::from_millis(1000),
        "routes went before the lease could have expired ({gone:?})"
    );
    assert!(
        a.mesh_links().is_empty(),
        "A keeps no link to a relay not in etcd"
    );
    // C knows, and says so in its metrics.
    await_until(
        "C's metrics show the partition",
        Duration::from_secs(10),
        || {
            let m = metrics_of_c();
            m.contains("ztna_mesh_etcd_registered 0\n")
                && m.contains("ztna_mesh_etcd_watch_connected 0\n")
        },
    );

    // Heal: C registers again, the link and the routes come back.
    pipe.set_open(true);
    await_until("C back in A's routes", Duration::from_secs(15), routed);
    await_until(
        "C's metrics show it healed",
        Duration::from_secs(10),
        || {
            let m = metrics_of_c();
            m.contains("ztna_mesh_etcd_registered 1\n")
                && m.contains("ztna_mesh_etcd_watch_connected 1\n")
        },
    );
    assert_eq!(a.mesh_links().len(), 1);
    c.stop();
    a.stop();
}
