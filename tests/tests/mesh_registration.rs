//! A relay in a mesh announces itself and the services of its connected
//! connectors in a real etcd, and withdraws them when it stops.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::world::{World, WorldConfig};
use proto::ids::{ServiceId, UserId};
use relay::io::Backend;
use relay::mesh::etcd_server;
use relay::mesh::registry::{ConnectorRecord, RelayId};
use relay::mesh::view::{MeshView, MeshWatch, WatchConfig};
use relay::MeshOptions;

fn await_view(watch: &MeshWatch, what: &str, want: impl Fn(&MeshView) -> bool) -> Arc<MeshView> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = watch.latest();
        if want(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 10 s; last view {view:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relay_announces_its_connectors_services_and_withdraws_on_stop() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let id = RelayId::new("relay-a").unwrap();
    let world = World::start(&WorldConfig {
        services: 8,
        io: Backend::Mmsg,
        mesh: Some(MeshOptions {
            etcd: etcd.endpoint(),
            relay_id: id.clone(),
            region: "test".into(),
            advertise: None,
            ttl: Duration::from_secs(2),
            peers: None,
        }),
        ..WorldConfig::default()
    })
    .unwrap();
    let watch = MeshWatch::start(WatchConfig::new(etcd.endpoint()), |_| {}).unwrap();

    // The relay's record, with its real address and key, and no services
    // while no connector is attached.
    let view = await_view(&watch, "relay record", |v| v.relay(&id).is_some());
    let record = view.relay(&id).unwrap();
    assert_eq!(record.address, world.relay_addr());
    let key = proto::identity::to_hex(world.relay.public_key());
    assert_eq!(record.public_key, key);
    assert_eq!(view.services_of(&id).count(), 0);

    // A connector attaches: every service it serves in the policy is
    // announced under this relay, with the connector's id.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connector = world.connector_identity().unwrap();
    world.connect(&socket, &connector).unwrap();
    let view = await_view(&watch, "services announced", |v| {
        v.services_of(&id).count() == 8
    });
    for (service, rec) in view.services_of(&id) {
        assert!(service.0 < 8);
        assert_eq!(
            rec.connectors,
            vec![ConnectorRecord::new(
                loadgen::world::CONNECTOR_ID,
                connector.public_key()
            )]
        );
    }

    // A user attaches: it is announced under this relay, and the services
    // stay announced (the routes are published again, and announcing the
    // same services again changes nothing in etcd).
    let user_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    world
        .connect(&user_socket, &world.user_identity(3).unwrap())
        .unwrap();
    await_view(&watch, "user announced, services kept", |v| {
        v.relay_of_user(UserId(3)) == Some(&id) && v.services_of(&id).count() == 8
    });
    assert_eq!(
        view.relays_for(ServiceId(3))
            .map(|(r, _)| r.clone())
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );

    // A clean stop revokes the lease: the relay and its services vanish at
    // once, not after the TTL.
    let World { relay, .. } = world;
    let stopped = Instant::now();
    relay.stop();
    await_view(&watch, "withdrawn", |v| {
        v.relay(&id).is_none()
            && v.relays_for(ServiceId(3)).count() == 0
            && v.relay_of_user(UserId(3)).is_none()
    });
    eprintln!("withdrawn {:?} after stop", stopped.elapsed());
}
