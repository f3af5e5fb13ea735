//! The mesh's control plane against a real etcd (started by the test on
//! free loopback ports): registration, service changes, lease loss, and an
//! etcd restart. Every wait polls the view with a deadline.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ids::ServiceId;
use relay::mesh::etcd_server::{self, EtcdServer};
use relay::mesh::registry::{ConnectorRecord, Registry, RegistryConfig, RelayId, RelayRecord};
use relay::mesh::view::{MeshView, MeshWatch, WatchConfig};

fn etcd() -> Option<EtcdServer> {
    etcd_server::for_test()
}

fn record(port: u16) -> RelayRecord {
    RelayRecord {
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        region: "test".into(),
        load: 0.0,
        public_key: "ab".repeat(32),
        started: 1,
        links: Vec::new(),
        link_ports: Vec::new(),
    }
}

fn register(etcd: &EtcdServer, id: &str, ttl: Duration) -> Registry {
    let mut config = RegistryConfig::new(etcd.endpoint(), RelayId::new(id).unwrap(), record(4500));
    config.ttl = ttl;
    Registry::start(config).unwrap()
}

/// Waits (bounded) until `want` holds for the watcher's latest view.
fn await_view(
    watch: &MeshWatch,
    what: &str,
    within: Duration,
    want: impl Fn(&MeshView) -> bool,
) -> Arc<MeshView> {
    let start = Instant::now();
    loop {
        let view = watch.latest();
        if want(&view) {
            eprintln!("{what}: after {:?}", start.elapsed());
            return view;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}; last view {view:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Relay -> (service -> connectors), for compact assertions.
fn reach(view: &MeshView, relay: &str) -> Option<Vec<(u32, Vec<ConnectorRecord>)>> {
    let id = RelayId::new(relay).unwrap();
    view.relay(&id)?;
    Some(
        view.services_of(&id)
            .map(|(s, r)| (s.0, r.connectors.clone()))
            .collect(),
    )
}

/// Connector records with made-up keys (the id repeated).
fn c(ids: &[u32]) -> Vec<ConnectorRecord> {
    ids.iter()
        .map(|id| ConnectorRecord::new(*id, &[*id as u8; 32]))
        .collect()
}

#[test]
fn relays_and_services_appear_change_and_vanish() {
    let Some(etcd) = etcd() else { return };
    let (tx, rx) = crossbeam_channel::unbounded();
    let watch = MeshWatch::start(WatchConfig::new(etcd.endpoint()), move |v| {
        let _ = tx.send(v);
    })
    .unwrap();
    let a = register(&etcd, "relay-a", Duration::from_secs(2));
    let b = register(&etcd, "relay-b", Duration::from_secs(30));
    a.set_service(ServiceId(1), c(&[1]));
    a.set_service(ServiceId(2), c(&[2, 3]));
    b.set_service(ServiceId(2), c(&[4]));

    let both = await_view(
        &watch,
        "both relays with their services",
        Duration::from_secs(10),
        |v| {
            reach(v, "relay-a") == Some(vec![(1, c(&[1])), (2, c(&[2, 3]))])
                && reach(v, "relay-b") == Some(vec![(2, c(&[4]))])
        },
    );
    assert_eq!(both.relays_for(ServiceId(2)).count(), 2);
    assert!(watch.connected());
    assert!(rx.try_iter().count() >= 1, "updates reach the callback");

    a.remove_service(ServiceId(1));
    a.set_service(ServiceId(3), c(&[5]));
    await_view(
        &watch,
        "A's services changed",
        Duration::from_secs(10),
        |v| reach(v, "relay-a") == Some(vec![(2, c(&[2, 3])), (3, c(&[5]))]),
    );

    // A crashes: nobody renews its lease; it vanishes within the TTL
    // (2 s; etcd checks expiry every 500 ms).
    a.abandon();
    let gone = await_view(
        &watch,
        "A gone after its TTL",
        Duration::from_secs(10),
        |v| reach(v, "relay-a").is_none(),
    );
    assert_eq!(gone.relays_for(ServiceId(3)).count(), 0);
    assert_eq!(reach(&gone, "relay-b"), Some(vec![(2, c(&[4]))]));

    // B leaves cleanly: its lease is revoked at once.
    b.stop();
    await_view(&watch, "B gone after revoke", Duration::from_secs(5), |v| {
        v.relays().is_empty()
    });
    assert_eq!(
        watch
            .stats()
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn the_view_survives_an_etcd_restart_and_catches_up() {
    let Some(mut etcd) = etcd() else { return };
    let watch = MeshWatch::start(WatchConfig::new(etcd.endpoint()), |_| {}).unwrap();
    let a = register(&etcd, "relay-a", Duration::from_secs(10));
    let b = register(&etcd, "relay-b", Duration::from_secs(10));
    a.set_service(ServiceId(1), c(&[1]));
    b.set_service(ServiceId(2), c(&[2]));
    let before = await_view(&watch, "both registered", Duration::from_secs(10), |v| {
        reach(v, "relay-a") == Some(vec![(1, c(&[1]))])
            && reach(v, "relay-b") == Some(vec![(2, c(&[2]))])
    });

    etcd.kill();
    let start = Instant::now();
    while watch.connected() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the watch did not notice etcd died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("disconnect noticed after {:?}", start.elapsed());
    assert_eq!(
        watch
            .stats()
            .disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // While down: the last view stays, and changes are queued.
    a.set_service(ServiceId(3), c(&[3]));
    assert_eq!(
        *watch.latest(),
        *before,
        "the view is kept while etcd is down"
    );

    etcd.restart().unwrap();
    let after = await_view(
        &watch,
        "caught up after restart",
        Duration::from_secs(15),
        |v| reach(v, "relay-a") == Some(vec![(1, c(&[1])), (3, c(&[3]))]),
    );
    assert!(watch.connected());
    assert_eq!(reach(&after, "relay-b"), Some(vec![(2, c(&[2]))]));
    // A change made after the restart appears too.
    b.set_service(ServiceId(4), c(&[4]));
    await_view(
        &watch,
        "change after restart",
        Duration::from_secs(10),
        |v| reach(v, "relay-b") == Some(vec![(2, c(&[2])), (4, c(&[4]))]),
    );
    assert!(a.connected() && b.connected());
}

#[test]
fn malformed_records_are_skipped_and_counted() {
    let Some(etcd) = etcd() else { return };
    let client = relay::mesh::etcd::Etcd::new(&etcd.endpoint()).unwrap();
    client
        .put("/ztna/v1/relays/bad", b"{not json", None)
        .unwrap();
    let watch = MeshWatch::start(WatchConfig::new(etcd.endpoint()), |_| {}).unwrap();
    client
        .put("/ztna/v1/services/x/relay-a", b"{}", None)
        .unwrap();
    client
        .put("/ztna/v1/services/5/bad", b"[1,2]", None)
        .unwrap();
    let a = register(&etcd, "relay-a", Duration::from_secs(10));
    await_view(
        &watch,
        "good relay despite bad records",
        Duration::from_secs(10),
        |v| v.relays().len() == 1 && reach(v, "relay-a").is_some(),
    );
    let start = Instant::now();
    while watch
        .stats()
        .malformed
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "malformed records not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(a);
}
