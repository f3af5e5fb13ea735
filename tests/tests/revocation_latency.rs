//! Revocation latency: the policy file rewritten without a user's grant →
//! the first frame of that user's running flow the relay drops. The relay
//! notices the file by itself (no SIGHUP). Printed, and held to a bound
//! far above the goal so a loaded machine does not fail it; the figures
//! are in docs/perf.md.

use std::time::{Duration, Instant};

use proto::datapath::DropReason;
use tests::{payload, Rig, ALLOWED};

#[test]
fn a_revoked_grant_stops_a_running_flow_promptly() {
    let mut rig = Rig::start(relay::io::Backend::Mmsg).unwrap();
    let mut policy = rig.world.policy.clone();
    // The flow runs: every frame arrives.
    for i in 0..20u8 {
        let f = rig.user_frame(ALLOWED, &payload(100, i));
        rig.send_from_user(&f);
        assert_eq!(rig.connector_receive(1, Duration::from_secs(2)).len(), 1);
    }
    // Revoke the user's grant to service 1 by rewriting the file.
    policy.rules[0].services.retain(|s| s != "service1");
    let written = Instant::now();
    rig.world.write_policy(&policy.to_toml_string()).unwrap();
    // Keep sending, a frame at a time; the first that does not arrive
    // (loopback delivers in microseconds; 5 ms is generous) was dropped.
    let mut seed = 0u8;
    let latency = loop {
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "the revocation never took effect"
        );
        seed = seed.wrapping_add(1);
        let sent_at = Instant::now();
        let f = rig.user_frame(ALLOWED, &payload(100, seed));
        rig.send_from_user(&f);
        if rig
            .connector_receive(1, Duration::from_millis(5))
            .is_empty()
        {
            break sent_at.duration_since(written);
        }
    };
    // It was the policy that dropped it.
    rig.await_counters("the denied drop", |c| c.dropped(DropReason::Denied) >= 1);
    println!(
        "revocation latency: {} ms (policy file written -> first frame denied)",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
}
