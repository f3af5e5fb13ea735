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

/// The relay's largest control frames, the parts of a directory of
/// services with the longest names and of mixed lengths, are within the
/// bound a receiver holds control frames to ([`proto::wire::MAX_CONTROL_BODY`]):
/// an agent never refuses one as malformed.
#[test]
fn directory_parts_fit_the_control_frame_bound() {
    use proto::control::{ConnectionMode, MAX_NAME_LEN};
    use proto::policy::Protocol;
    use proto::wire::MAX_CONTROL_BODY;

    let (mut control, worker) = control();
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let now = Instant::now();
    let slot = control.establish(
        0,
        "127.0.0.1:4000".parse().unwrap(),
        HopSessionKeys {
            local_index: ReceiverIndex(5),
            remote_index: ReceiverIndex(9),
            send_key: [2; 32],
            recv_key: [3; 32],
            peer: certificate(&ca, 1, Role::User),
            established_at: now,
        },
        now,
        true,
    );
    assert!(matches!(worker.try_recv(), Ok(ToWorker::Install { .. })));
    let services = (0..400u32)
        .map(|i| ServiceEntry {
            id: ServiceId(i + 1),
            // Names of every length up to the longest a part carries.
            name: "n".repeat((i as usize * 7) % MAX_NAME_LEN + 1),
            protocol: Protocol::Tcp,
            port: 443,
            connector: 7,
            connector_key: [7; 32],
        })
        .collect();
    control.send_directory(slot, &Directory::new(ConnectionMode::Lockdown, services));
    let mut longest = 0;
    let mut parts = 0;
    while let Ok(msg) = worker.try_recv() {
        let ToWorker::Send { bytes, .. } = msg else {
            panic!("not a send: {msg:?}");
        };
        let frame = Frame::new_checked(&bytes[..]).expect("a frame an agent accepts");
        assert_eq!(frame.kind(), Kind::Control);
        longest = longest.max(frame.body().len());
        parts += 1;
    }
    assert_eq!(parts, control.stats.directory_parts_sent);
    assert!(parts > 10, "{parts} parts");
    assert!(longest <= MAX_CONTROL_BODY, "{longest}");
    // Parts are filled close to the split size: the test reaches the top.
    assert!(
        longest > DEFAULT_MAX_BODY - proto::control::MAX_ENTRY_LEN,
        "{longest}"
    );
}
