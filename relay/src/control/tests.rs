//! The control thread's session bookkeeping, driven by hand with a clock
//! passed in.

use std::time::Duration;

use proto::identity::{CaKeypair, CertificateBody};
use proto::policy::PolicyFile;

use super::*;

fn certificate(ca: &CaKeypair, id: u32, role: Role) -> proto::identity::Certificate {
    let now = unix_nanos() / 1_000_000_000;
    ca.issue(CertificateBody {
        id,
        name: format!("node{id}"),
        role,
        groups: Vec::new(),
        static_key: [id as u8 + 1; 32],
        not_before: now - 60,
        not_after: now + 3600,
    })
    .unwrap()
}

/// A control thread over one worker, whose inbox the test reads.
fn control() -> (Control, Receiver<ToWorker>) {
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let shared = Arc::new(Shared::new(
        CompiledPolicy::compile(&PolicyFile::default()).unwrap(),
        1,
    ));
    let relay = proto::handshake::LocalIdentity::new([7; 32], certificate(&ca, 1000, Role::Relay));
    let responder = HopResponder::new(
        relay,
        proto::handshake::Trust::new(ca.public(), &[Role::User]),
        [1; 32],
        Instant::now(),
    );
    let (_to_control, inbox) = crossbeam_channel::bounded(1);
    let (to_worker, worker_inbox) = crossbeam_channel::unbounded();
    let control = Control::new(
        shared,
        responder,
        inbox,
        vec![to_worker],
        PolicySource::new(std::path::Path::new("/nonexistent/policy.toml")),
    );
    (control, worker_inbox)
}

#[test]
fn sessions_expire_at_reject_after_time_and_not_before() {
    let (mut control, worker) = control();
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let now = Instant::now();
    let index = ReceiverIndex(5);
    control.establish(
        0,
        "127.0.0.1:4000".parse().unwrap(),
        HopSessionKeys {
            local_index: index,
            remote_index: ReceiverIndex(9),
            send_key: [2; 32],
            recv_key: [3; 32],
            peer: certificate(&ca, 1, Role::User),
            established_at: now,
        },
        now,
        true,
    );
    assert!(matches!(
        worker.try_recv(),
        Ok(ToWorker::Install { index: i, .. }) if i == index
    ));
    control.expire(now + REJECT_AFTER_TIME - Duration::from_millis(1));
    assert!(worker.try_recv().is_err(), "removed before its time");
    assert_eq!(control.stats.sessions_expired, 0);
    control.expire(now + REJECT_AFTER_TIME);
    assert!(
        matches!(worker.try_recv(), Ok(ToWorker::Remove { index: i }) if i == index),
        "a session past REJECT_AFTER_TIME stays installed"
    );
    assert_eq!(control.stats.sessions_expired, 1);
    assert!(control.sessions.iter().all(Option::is_none));
}
