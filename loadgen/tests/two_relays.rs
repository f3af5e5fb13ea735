//! The load generator's two-relay world: users attached to relay A, the
//! connector to relay B, every frame crossing both through their mesh
//! link. Checked from both relays' counters and the connector's end, so
//! that a path that skipped either relay fails.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::time::{Duration, Instant};

use loadgen::fleet::Fleet;
use loadgen::run::{run, RunSpec};
use loadgen::scenario::{Plan, Scenario};
use loadgen::world::{Topology, World, WorldConfig};
use proto::datapath::{Counters, DropReason, Mode};
use relay::io::Backend;
use relay::mesh::etcd_server;
use relay::Relay;

/// How long published relay counters may take to catch up (workers
/// publish every 100 ms).
const COUNTERS_WITHIN: Duration = Duration::from_secs(5);

fn counters(relay: &Relay) -> Counters {
    relay.totals().datapath
}

/// Polls both relays' published counters until `done` holds for them, or
/// fails with what they were.
fn await_counters(world: &World, what: &str, done: impl Fn(&Counters, &Counters) -> bool) {
    let start = Instant::now();
    loop {
        let (a, b) = (counters(&world.relay), counters(world.connector_relay()));
        if done(&a, &b) {
            return;
        }
        assert!(
            start.elapsed() < COUNTERS_WITHIN,
            "{what}: not within {COUNTERS_WITHIN:?}\nrelay A: {a:?}\nrelay B: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn frames_cross_both_relays_and_policy_drops_at_the_first() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    // Bulk flows with a share denied: the allowed ones must reach the
    // connector through A and B, the denied ones must stop at A.
    let plan = Plan::new(Scenario::DenyMix, 1400, 0.1);
    let world = World::start(&WorldConfig {
        users: plan.users,
        services: plan.services,
        mode: Mode::Ztna,
        io: Backend::Mmsg,
        topology: Topology::TwoRelays {
            etcd: etcd.endpoint(),
        },
        ..WorldConfig::default()
    })
    .unwrap();
    assert_eq!(world.relays().len(), 2);
    let (a, b) = (&world.relay, world.connector_relay());
    assert_ne!(a.local_addr(), b.local_addr());
    assert!(a
        .mesh_links()
        .iter()
        .any(|l| l.static_key == *b.public_key()));

    let mut fleet = Fleet::connect(&world, &plan, 1, Instant::now()).unwrap();
    // Paced and short: a bounded number of frames (about 4 000).
    let spec = RunSpec {
        secs: Duration::from_millis(200),
        warmup: Duration::from_millis(20),
        rate: Some(20_000.0),
        train: 8,
        window: None,
        denied_arrive: false,
    };
    let relays = world.relays();
    let m = run(&mut fleet, world.relay_addr(), &spec, &relays, &mut |_| {
        true
    })
    .unwrap();

    // The connector's end: frames arrived, every hop tag verified with the
    // session the connector holds with B (so B sent them), payloads intact,
    // nothing denied got through.
    assert!(m.received > 100, "too few frames arrived: {m:?}");
    assert_eq!(m.sink.bad_hop, 0, "{m:?}");
    assert_eq!(m.sink.corrupt, 0, "{m:?}");
    assert_eq!(m.sink.denied_delivered, 0, "{m:?}");
    assert!(m.sink.verified > 0, "nothing opened end to end: {m:?}");
    assert_eq!(m.relays.len(), 2, "one relay side per relay on the path");

    // Both relays forwarded at least every data frame the connector got
    // (plus the end-to-end handshakes); the denied frames were dropped at
    // A by policy and never reached B.
    //
    // Data frames only: each relay also judges its own peers' keepalives,
    // probes and handshakes, which differ between the two. A judges every
    // data frame B judges (B's come from A, or are the connector's
    // end-to-end handshake replies, which A forwards too) plus the denied
    // ones, so A's count ends above B's. Waited for, not read once: each
    // relay publishes every 100 ms on its own clock, and on a slow machine
    // B's fresher figures can run ahead of A's stale ones for a while.
    let data = |c: &Counters| c.frames - c.local - c.handshakes;
    let delivered = fleet.sink.lifetime_frames();
    assert!(delivered >= m.received);
    await_counters(
        &world,
        "every delivered frame forwarded by A and by B, A judging more data frames than B",
        |a, b| {
            a.forwarded >= delivered
                && b.forwarded >= delivered
                && a.dropped(DropReason::Denied) > 0
                && data(a) > data(b)
        },
    );
    let b = counters(world.connector_relay());
    assert_eq!(
        b.dropped(DropReason::Denied),
        0,
        "B saw denied frames: {b:?}"
    );
    assert_eq!(b.dropped_total(), 0, "B dropped frames: {b:?}");
    assert!(
        b.frames >= delivered,
        "B judged fewer frames than arrived: {b:?}, {delivered} delivered"
    );

    drop(fleet);
    let reports = world.stop();
    assert_eq!(reports.len(), 2);
}
