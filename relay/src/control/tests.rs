//! The control thread's session bookkeeping, driven by hand with a clock
//! passed in.

use std::time::Duration;

use proto::identity::{CaKeypair, CertificateBody};
use proto::policy::PolicyFile;

use super::health::{DEAD_AFTER, PROBE_EVERY};
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
    let (control, mut workers) = control_over(1);
    (control, workers.remove(0))
}

/// A control thread over `n` workers, whose inboxes the test reads.
pub(super) fn control_over(n: usize) -> (Control, Vec<Receiver<ToWorker>>) {
    let (control, workers, _inbox) = control_with_inbox(n);
    (control, workers)
}

/// The same, with the sender of the control thread's inbox, whose queue
/// length decides whether the relay is under load.
fn control_with_inbox(n: usize) -> (Control, Vec<Receiver<ToWorker>>, Sender<FromWorker>) {
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let shared = Arc::new(Shared::new(
        CompiledPolicy::compile(&PolicyFile::default()).unwrap(),
        1,
    ));
    let relay = node(1000, Role::Relay, 7);
    let responder = HopResponder::new(
        relay,
        proto::handshake::Trust::new(ca.public(), &[Role::User, Role::Connector, Role::Relay]),
        [1; 32],
        Instant::now(),
    );
    let (to_control, inbox) = crossbeam_channel::bounded(2 * UNDER_LOAD_QUEUE);
    let (to_workers, worker_inboxes) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
    let control = Control::new(
        shared,
        responder,
        inbox,
        to_workers,
        PolicySource::new(std::path::Path::new("/nonexistent/policy.toml")),
    );
    (control, worker_inboxes, to_control)
}

/// A node with the real key pair of `seed`, certified by the harness's CA
/// (valid now, by the wall clock).
pub(super) fn node(id: u32, role: Role, seed: u8) -> proto::handshake::LocalIdentity {
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let kp = proto::testkit::handshake::static_keypair(seed);
    let now = unix_nanos() / 1_000_000_000;
    let cert = ca
        .issue(CertificateBody {
            id,
            name: format!("node{id}"),
            role,
            groups: Vec::new(),
            static_key: kp.public,
            not_before: now - 60,
            not_after: now + 3600,
        })
        .unwrap();
    proto::handshake::LocalIdentity::new(kp.private, cert)
}

/// `node`'s hop initiation to the harness's relay (private key `[7; 32]`).
fn initiation(node: &proto::handshake::LocalIdentity) -> Vec<u8> {
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let relay_key = proto::testkit::handshake::static_keypair(7).public;
    let (_initiator, frame) = proto::handshake::HopInitiator::new(
        node,
        &relay_key,
        proto::handshake::Trust::new(ca.public(), &[Role::Relay]),
        ReceiverIndex(77),
        &proto::handshake::CookieJar::new(&relay_key),
        Instant::now(),
        unix_nanos(),
    )
    .unwrap();
    frame
}

/// Session keys for the peer `id` of `role`, received under `index`.
pub(super) fn keys(id: u32, role: Role, index: u32, now: Instant) -> HopSessionKeys {
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    HopSessionKeys {
        local_index: ReceiverIndex(index),
        remote_index: ReceiverIndex(index + 1000),
        send_key: [2; 32],
        recv_key: [3; 32],
        peer: certificate(&ca, id, role),
        established_at: now,
    }
}

/// User `user`'s hop session, received on `worker` under `index` at `at`,
/// established unconfirmed from [`from`]; its slot.
fn establish_user(
    control: &mut Control,
    worker: usize,
    user: u32,
    index: u32,
    at: Instant,
) -> usize {
    control.establish(worker, from(), keys(user, Role::User, index, at), at, false)
}

/// The indexes `worker` was told to remove, in order; installs are
/// skipped.
fn removed(worker: &Receiver<ToWorker>) -> Vec<u32> {
    worker
        .try_iter()
        .filter_map(|m| match m {
            ToWorker::Remove { index } => Some(index.0),
            _ => None,
        })
        .collect()
}

pub(super) fn from() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

/// A peer holds at most `MAX_SESSIONS_PER_PEER` sessions; the one evicted
/// for a new one is its oldest unconfirmed one (an initiation from a
/// spoofed address), not the older confirmed session carrying its routes,
/// and no other peer's session. A user's sessions count together across
/// workers.
#[test]
fn a_peer_past_its_session_limit_loses_its_oldest_unconfirmed_session_first() {
    assert_eq!(MAX_SESSIONS_PER_PEER, 3);
    let (mut control, workers) = control_over(2);
    let t = Instant::now();
    let ms = Duration::from_millis;
    // Another user's session, older than all: never counted for user 1.
    control.establish(0, from(), keys(2, Role::User, 50, t), t, true);
    control.establish(
        0,
        from(),
        keys(1, Role::User, 1, t + ms(1)),
        t + ms(1),
        true,
    );
    establish_user(&mut control, 1, 1, 2, t + ms(2));
    establish_user(&mut control, 0, 1, 3, t + ms(3));
    assert!(removed(&workers[0]).is_empty() && removed(&workers[1]).is_empty());
    // A fourth: the oldest unconfirmed one (index 2, on worker 1) goes.
    establish_user(&mut control, 0, 1, 4, t + ms(4));
    assert_eq!(removed(&workers[1]), [2]);
    assert!(removed(&workers[0]).is_empty());
    establish_user(&mut control, 1, 1, 5, t + ms(5));
    assert_eq!(removed(&workers[0]), [3]);
    // Only confirmed ones left to evict beside the new: the oldest goes.
    control.confirm(control.by_index[&(0, ReceiverIndex(4))]);
    control.confirm(control.by_index[&(1, ReceiverIndex(5))]);
    establish_user(&mut control, 1, 1, 6, t + ms(6));
    assert_eq!(removed(&workers[0]), [1]);
    assert!(removed(&workers[1]).is_empty());
    let live = control.sessions.iter().flatten().count();
    assert_eq!(live, 4, "user 2's session and three of user 1's");
    assert_eq!(control.stats.handshakes_ok, 7);
}

/// A peer relay holds one link per worker, so its sessions count per
/// worker: three on one worker evict none on another.
#[test]
fn a_peer_relays_session_limit_counts_per_worker() {
    let (mut control, workers) = control_over(2);
    let t = Instant::now();
    let ms = Duration::from_millis;
    for i in 0..3 {
        let at = t + ms(i.into());
        control.establish(0, from(), keys(9, Role::Relay, i + 1, at), at, true);
    }
    let at = t + ms(10);
    control.establish(1, from(), keys(9, Role::Relay, 10, at), at, true);
    assert!(removed(&workers[0]).is_empty(), "another worker's link");
    assert!(removed(&workers[1]).is_empty());
    let at = t + ms(11);
    control.establish(0, from(), keys(9, Role::Relay, 11, at), at, true);
    assert_eq!(removed(&workers[0]), [1], "the oldest on the same worker");
    assert!(removed(&workers[1]).is_empty());
}

/// A session the relay answered but no frame confirmed ends at
/// `CONFIRM_WITHIN`, not before; a confirmed one of the same age stays.
#[test]
fn unconfirmed_sessions_end_at_confirm_within_and_confirmed_ones_stay() {
    let (mut control, worker) = control();
    let now = Instant::now();
    control.establish(0, from(), keys(1, Role::User, 1, now), now, true);
    control.establish(0, from(), keys(2, Role::User, 2, now), now, false);
    control.expire(now + CONFIRM_WITHIN - Duration::from_millis(1));
    assert!(removed(&worker).is_empty(), "removed before its time");
    assert_eq!(control.stats.sessions_unconfirmed, 0);
    control.expire(now + CONFIRM_WITHIN);
    assert_eq!(removed(&worker), [2]);
    assert_eq!(control.stats.sessions_unconfirmed, 1);
    assert_eq!(control.stats.sessions_expired, 0);
    assert_eq!(control.sessions.iter().flatten().count(), 1);
}

/// Confirming a session moves its routes once; a user's session changes
/// no one's directory, a connector's does. The same for establishing and
/// removing.
#[test]
fn confirming_and_removing_sessions_marks_routes_and_only_connectors_mark_directories() {
    let (mut control, worker) = control();
    let now = Instant::now();
    let user = control.establish(0, from(), keys(1, Role::User, 1, now), now, false);
    assert!(!control.routes_dirty && !control.directories_dirty);
    control.confirm(user);
    assert_eq!(control.stats.sessions_confirmed, 1);
    assert!(control.routes_dirty);
    assert!(
        !control.directories_dirty,
        "a user's session is in no directory"
    );
    control.routes_dirty = false;
    control.confirm(user);
    assert_eq!(control.stats.sessions_confirmed, 1, "confirmed once");
    assert!(!control.routes_dirty);
    control.remove(user, "test");
    assert_eq!(removed(&worker), [1]);
    assert!(control.routes_dirty && !control.directories_dirty);
    control.routes_dirty = false;
    control.establish(0, from(), keys(3, Role::User, 3, now), now, true);
    assert!(control.routes_dirty && !control.directories_dirty);
    assert_eq!(control.stats.sessions_confirmed, 2);

    let connector = control.establish(0, from(), keys(2, Role::Connector, 2, now), now, false);
    assert!(!control.directories_dirty);
    control.confirm(connector);
    assert!(control.directories_dirty, "a connector's services came");
    control.directories_dirty = false;
    control.remove(connector, "test");
    assert!(control.directories_dirty, "a connector's services went");
    control.directories_dirty = false;
    control.establish(0, from(), keys(4, Role::Connector, 4, now), now, true);
    assert!(control.directories_dirty);
}

#[test]
fn sessions_expire_at_reject_after_time_and_not_before() {
    let (mut control, worker) = control();
    let now = Instant::now();
    let index = ReceiverIndex(5);
    control.establish(
        0,
        "127.0.0.1:4000".parse().unwrap(),
        keys(1, Role::User, 5, now),
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
    let now = Instant::now();
    let slot = control.establish(
        0,
        "127.0.0.1:4000".parse().unwrap(),
        keys(1, Role::User, 5, now),
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

/// The relay is under load, and answers initiations without a cookie with
/// a cookie reply, only while more than `UNDER_LOAD_QUEUE` messages wait
/// in its inbox; at exactly that many it still does the handshake (here
/// refused by the policy, which lists no one).
#[test]
fn initiations_get_cookie_replies_only_past_the_under_load_queue() {
    let (mut control, workers, to_control) = control_with_inbox(1);
    let filler = || FromWorker::Confirmed {
        worker: 0,
        index: ReceiverIndex(1),
    };
    for _ in 0..UNDER_LOAD_QUEUE {
        to_control.send(filler()).unwrap();
    }
    control.handshake(0, from(), &initiation(&node(1, Role::User, 21)));
    assert_eq!(control.stats.cookie_replies, 0, "not under load yet");
    let rejects = control.stats.handshakes_rejected;
    assert_eq!(rejects.get(HandshakeReject::NotInPolicy), 1, "{rejects:?}");
    to_control.send(filler()).unwrap();
    control.handshake(0, from(), &initiation(&node(2, Role::User, 22)));
    assert_eq!(control.stats.cookie_replies, 1, "under load");
    assert_eq!(control.stats.handshakes_rejected.total(), 1);
    let sent = workers[0]
        .try_iter()
        .filter(|m| matches!(m, ToWorker::Send { .. }));
    assert_eq!(sent.count(), 1, "the cookie reply only");
}

/// A relay certificate completes no session with a relay outside a mesh
/// (no mesh view admits its key): no session, no response, counted.
#[test]
fn a_relay_certificate_gets_no_session_outside_a_mesh() {
    let (mut control, worker) = control();
    control.handshake(0, from(), &initiation(&node(2000, Role::Relay, 23)));
    assert_eq!(control.stats.relay_refused, 1);
    assert_eq!(control.stats.handshakes_ok, 0);
    assert!(control.sessions.iter().all(Option::is_none));
    assert!(worker.try_recv().is_err(), "no install, no response");
    assert_eq!(control.shared.relay_refused.load(Ordering::Relaxed), 1);
}

/// A session that reuses a removed session's slot (its `HopId`) is a new
/// transmit hop to the workers: their counter blocks reserved from the
/// old hop are not used for it (which would send counters of the block
/// that another worker, reserving from the new hop, sends too).
#[test]
fn a_session_in_a_reused_slot_takes_fresh_counter_blocks() {
    use proto::session::TxCounters;

    let (mut control, _worker) = control();
    let now = Instant::now();
    let old = control.establish(0, from(), keys(1, Role::User, 1, now), now, true);
    let mut counters = TxCounters::with_capacity(4);
    let hop = Arc::clone(&control.sessions[old].as_ref().unwrap().hop);
    assert_eq!(counters.next(HopId(old as u32), &hop), Some(0));
    assert_eq!(counters.next(HopId(old as u32), &hop), Some(1));
    control.remove(old, "test");
    let new = control.establish(0, from(), keys(1, Role::User, 2, now), now, true);
    assert_eq!(new, old, "the slot is reused");
    let hop = Arc::clone(&control.sessions[new].as_ref().unwrap().hop);
    assert_eq!(counters.next(HopId(new as u32), &hop), Some(0));
    assert!(hop.counters_used() > 0, "a block reserved from the new hop");
}

/// Control messages the relay cannot act on are counted as rejected and
/// answered with nothing: one for a session removed while it was queued,
/// one of a kind only relays send (a directory part), a malformed one.
#[test]
fn control_messages_for_no_session_of_another_kind_or_malformed_are_rejected() {
    use proto::control::{ConnectionMode, ControlMessage};

    let (mut control, worker) = control();
    let now = Instant::now();
    let mut ping = Vec::new();
    ControlMessage::Ping { digest: 1 }.emit(&mut ping);
    control.control(0, ReceiverIndex(1), &ping);
    assert_eq!(
        (
            control.stats.control_received,
            control.stats.control_rejected
        ),
        (1, 1),
        "no session under that index"
    );
    control.establish(0, from(), keys(1, Role::User, 1, now), now, true);
    let _ = worker.try_iter().count();
    let mut part = Vec::new();
    ControlMessage::DirectoryPart {
        digest: 1,
        part: 0,
        parts: 1,
        mode: ConnectionMode::Lockdown,
        services: Vec::new(),
    }
    .emit(&mut part);
    control.control(0, ReceiverIndex(1), &part);
    assert_eq!(control.stats.control_rejected, 2, "not for a relay");
    control.control(0, ReceiverIndex(1), &[0xff; 3]);
    assert_eq!(control.stats.control_rejected, 3, "malformed");
    assert_eq!(control.stats.control_received, 3);
    assert!(worker.try_recv().is_err(), "none answered");
}

/// A session's pings are answered up to `PING_BURST` at once, then at
/// `PING_RATE` a second: the rest are counted as rate limited and
/// answered with nothing. (The control thread reads the clock itself: a
/// burst may earn one ping more if the test thread stalls 100 ms.)
#[test]
fn pings_are_answered_up_to_the_burst_then_at_the_rate() {
    use proto::control::ControlMessage;

    let (mut control, worker) = control();
    let now = Instant::now();
    let slot = control.establish(0, from(), keys(2, Role::Connector, 1, now), now, true);
    let _ = worker.try_iter().count();
    let mut ping = Vec::new();
    ControlMessage::Ping { digest: 0 }.emit(&mut ping);
    let answers = |control: &mut Control| {
        for _ in 0..10 {
            control.control(0, ReceiverIndex(1), &ping);
        }
        worker.try_iter().count()
    };
    let burst = PING_BURST as usize;
    let mut answered = answers(&mut control);
    assert!((burst..=burst + 1).contains(&answered), "{answered}");
    // 0.3 s earns 3 pings back (the bucket is empty): fewer than the burst.
    let entry = control.sessions[slot].as_mut().unwrap();
    entry.ping_refilled -= Duration::from_secs_f64(0.3);
    let earned = (PING_RATE * 0.3) as usize;
    assert!(earned < burst);
    let n = answers(&mut control);
    assert!((earned..=earned + 1).contains(&n), "{n}");
    answered += n;
    // A long quiet time earns no more than the burst.
    let entry = control.sessions[slot].as_mut().unwrap();
    entry.ping_refilled -= Duration::from_secs(60);
    let n = answers(&mut control);
    assert!((burst..=burst + 1).contains(&n), "{n}");
    answered += n;
    assert_eq!(control.stats.pings_rate_limited, 30 - answered as u64);
}

/// Right after a restart a connector's session may be unconfirmed when a
/// user asks for its directory: the service is listed with that
/// connector and the key its certificate names, not dropped; a connector
/// that does not serve it, or none at all, gives no entry.
#[test]
fn a_directory_lists_a_service_whose_connector_is_not_confirmed_yet() {
    let (mut control, _worker) = control();
    let file = PolicyFile::from_toml_str(
        r#"
        [[users]]
        id = 1
        name = "a"
        groups = ["g"]
        [[groups]]
        name = "g"
        [[connectors]]
        id = 9
        name = "c"
        [[connectors]]
        id = 8
        name = "d"
        [[services]]
        id = 2
        name = "s"
        protocol = "udp"
        target = "[::1]:53"
        connectors = ["c"]
        [[rules]]
        groups = ["g"]
        services = ["*"]
        "#,
    )
    .unwrap();
    let policy = CompiledPolicy::compile(&file).unwrap();
    control
        .routing
        .set_connector_services(connector_services(&policy));
    control.shared.swap_policy(policy);
    let user = UserId(1);
    assert!(control.directory(user).services.is_empty(), "no connector");
    let now = Instant::now();
    // Connector 8, unconfirmed, serves nothing the user may reach.
    control.establish(0, from(), keys(8, Role::Connector, 1, now), now, false);
    assert!(
        control.directory(user).services.is_empty(),
        "not its service"
    );
    control.establish(0, from(), keys(9, Role::Connector, 2, now), now, false);
    let directory = control.directory(user);
    let entries: Vec<_> = directory
        .services
        .iter()
        .map(|s| (s.id, s.connector, s.connector_key))
        .collect();
    assert_eq!(entries, [(ServiceId(2), 9, [10; 32])]);
}

/// The slots of `control` that were probed, with how many probes the
/// workers were told to send; clears the marks.
fn probed(control: &mut Control, worker: &Receiver<ToWorker>) -> (Vec<usize>, usize) {
    let mut slots = Vec::new();
    for (slot, e) in control.sessions.iter_mut().enumerate() {
        if let Some(e) = e.as_mut() {
            if e.health.last_probe.take().is_some() {
                slots.push(slot);
            }
        }
    }
    let sent = worker
        .try_iter()
        .filter(|m| matches!(m, ToWorker::Send { .. }))
        .count();
    (slots, sent)
}

/// Only the newest pinged session of each connector is probed, never a
/// user's or a session that never pinged; a probe goes every
/// `PROBE_EVERY`, not sooner.
#[test]
fn the_newest_pinged_session_of_a_connector_is_probed_every_probe_every() {
    let (mut control, worker) = control();
    let t = Instant::now();
    let old = control.establish(0, from(), keys(2, Role::Connector, 1, t), t, true);
    let later = t + Duration::from_secs(1);
    let new = control.establish(0, from(), keys(2, Role::Connector, 2, later), later, true);
    let user = control.establish(0, from(), keys(3, Role::User, 3, t), t, true);
    let _ = worker.try_iter().count();
    control.probe(later);
    assert_eq!(probed(&mut control, &worker), (vec![], 0), "none pinged");
    for slot in [old, new, user] {
        control.sessions[slot].as_mut().unwrap().pinged = true;
    }
    control.probe(later);
    assert_eq!(probed(&mut control, &worker), (vec![new], 1));
    assert_eq!(control.stats.probes_sent, 1);
    control.sessions[new].as_mut().unwrap().health.last_probe = Some(later);
    control.probe(later + PROBE_EVERY - Duration::from_millis(1));
    assert_eq!(probed(&mut control, &worker), (vec![new], 0), "not yet");
    control.sessions[new].as_mut().unwrap().health.last_probe = Some(later);
    control.probe(later + PROBE_EVERY);
    assert_eq!(probed(&mut control, &worker), (vec![new], 1));
    assert_eq!(control.stats.probes_sent, 2);
}

/// A probed peer silent for `DEAD_AFTER` is taken out of the routes once
/// (not sooner, not again), and the first message heard from it puts it
/// back; hearing from it keeps it in.
#[test]
fn a_silent_peer_is_taken_out_at_dead_after_once_and_put_back_when_heard() {
    let (mut control, worker) = control();
    let t = Instant::now();
    let slot = control.establish(0, from(), keys(2, Role::Connector, 1, t), t, true);
    control.sessions[slot].as_mut().unwrap().pinged = true;
    let _ = worker.try_iter().count();
    control.routes_dirty = false;
    control.directories_dirty = false;
    let alive = |c: &Control| c.sessions[slot].as_ref().unwrap().health.alive;
    control.probe(t + DEAD_AFTER - Duration::from_millis(1));
    assert!(alive(&control));
    assert_eq!(control.stats.peers_lost, 0);
    assert!(!control.routes_dirty && !control.directories_dirty);
    control.probe(t + DEAD_AFTER);
    assert!(!alive(&control));
    assert_eq!(control.stats.peers_lost, 1);
    assert!(control.routes_dirty && control.directories_dirty);
    control.routes_dirty = false;
    control.directories_dirty = false;
    control.probe(t + 2 * DEAD_AFTER);
    assert_eq!(control.stats.peers_lost, 1, "taken out once");
    assert!(!control.routes_dirty);

    let back = t + 3 * DEAD_AFTER;
    control.heard(slot, back);
    assert!(alive(&control));
    assert!(control.routes_dirty && control.directories_dirty);
    control.routes_dirty = false;
    control.directories_dirty = false;
    // Heard at `back`: alive until `back + DEAD_AFTER`.
    control.probe(back + DEAD_AFTER - Duration::from_millis(1));
    assert!(alive(&control));
    control.heard(slot, back + DEAD_AFTER - Duration::from_millis(1));
    assert!(!control.routes_dirty, "already in the routes");
    control.probe(back + DEAD_AFTER);
    assert!(alive(&control), "heard since");
    assert_eq!(control.stats.peers_lost, 1);
}

/// A policy file `name` in a directory of its own, for `reload_policy`.
fn policy_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("control-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A certificate the policy revokes gets no session and no response,
/// even of an id it lists, and is counted (once per handshake).
#[test]
fn a_revoked_certificate_gets_no_session_and_is_counted() {
    let (mut control, worker) = control();
    let alice = node(1, Role::User, 21);
    let file = PolicyFile::from_toml_str(&format!(
        "[[users]]\nid = 1\nname = \"alice\"\n\n[[revoked]]\nkey = \"{}\"\n",
        proto::identity::to_hex(&alice.certificate().body.static_key)
    ))
    .unwrap();
    control
        .shared
        .swap_policy(CompiledPolicy::compile(&file).unwrap());
    control.handshake(0, from(), &initiation(&alice));
    assert_eq!(control.stats.revoked_refused, 1);
    control.handshake(0, from(), &initiation(&alice));
    assert_eq!(control.stats.revoked_refused, 2);
    assert_eq!(control.stats.handshakes_ok, 0);
    assert!(control.sessions.iter().all(Option::is_none));
    assert!(worker.try_recv().is_err(), "no install, no response");
}

/// Each reload of the policy file advances the epoch, each refused file
/// counts a rejection (the previous policy stays), in the stats and in
/// the shared counters the metrics read.
#[test]
fn reloads_count_epochs_and_rejected_files() {
    let (mut control, _worker) = control();
    let path = policy_file("reloads", "[[users]]\nid = 1\nname = \"alice\"\n");
    control.policy_source = PolicySource::new(&path);
    // The policy the relay started with is epoch 1.
    assert_eq!(control.stats.policy_epoch, 1);
    let counted = |control: &Control| {
        (
            control.stats.policy_epoch,
            control.stats.policy_rejected,
            control.shared.policy_epoch.load(Ordering::Relaxed),
            control.shared.policy_rejected.load(Ordering::Relaxed),
        )
    };
    control.reload_policy();
    assert_eq!(counted(&control), (2, 0, 2, 0));
    control.reload_policy();
    assert_eq!(counted(&control), (3, 0, 3, 0));
    std::fs::write(&path, "not a policy").unwrap();
    control.reload_policy();
    assert_eq!(counted(&control), (3, 1, 3, 1));
    control.reload_policy();
    assert_eq!(counted(&control), (3, 2, 3, 2));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// A reload closes the sessions the new policy would not admit, each
/// counted once under its reason: a revoked certificate's, an unlisted
/// user's (both of its sessions), a user's whose key is no longer pinned;
/// a listed user's and a connector's stay.
#[test]
fn a_reload_counts_each_closed_session_under_its_reason() {
    let (mut control, _worker) = control();
    let now = Instant::now();
    // `certificate` certifies the key `[id + 1; 32]`.
    let key = |id: u8| proto::identity::to_hex(&[id + 1; 32]);
    let mut slots = Vec::new();
    for (user, index) in [(1, 1), (2, 2), (2, 3), (3, 4), (4, 5)] {
        slots.push(establish_user(&mut control, 0, user, index, now));
    }
    control.establish(0, from(), keys(5, Role::Connector, 6, now), now, true);
    let path = policy_file(
        "closes",
        &format!(
            "[[users]]\nid = 1\nname = \"a\"\n\n[[users]]\nid = 3\nname = \"c\"\nstatic_keys = [\"{}\"]\n\n\
             [[users]]\nid = 4\nname = \"d\"\nstatic_keys = [\"{}\"]\n\n\
             [[connectors]]\nid = 5\nname = \"e\"\n\n[[revoked]]\nkey = \"{}\"\n",
            key(9),
            key(4),
            key(1),
        ),
    );
    control.policy_source = PolicySource::new(&path);
    control.reload_policy();
    let s = &control.stats;
    assert_eq!(
        (s.revoked_closed, s.unlisted_closed, s.pinned_closed),
        (1, 2, 1)
    );
    let open: Vec<usize> = (0..control.sessions.len())
        .filter(|&i| control.sessions[i].is_some())
        .collect();
    assert_eq!(
        open,
        [slots[4], slots[4] + 1],
        "user 4's and the connector's"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// The control messages `worker` was told to send, parsed from frames an
/// agent accepts; installs and removals are skipped.
fn sent_control(worker: &Receiver<ToWorker>) -> Vec<proto::control::ControlMessage> {
    worker
        .try_iter()
        .filter_map(|m| match m {
            ToWorker::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .map(|bytes| {
            let frame = Frame::new_checked(&bytes[..]).expect("a frame an agent accepts");
            assert_eq!(frame.kind(), Kind::Control);
            proto::control::ControlMessage::parse(frame.body()).expect("a control message")
        })
        .collect()
}

/// A pushed directory goes to the user's newest confirmed session that
/// has pinged, not to an older one, and only when it differs from the
/// last one sent there: a second push with nothing changed sends nothing.
#[test]
fn directories_are_pushed_to_the_newest_pinged_session_once_per_change() {
    use proto::control::ControlMessage;

    let (mut control, workers) = control_over(2);
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let older = control.establish(0, from(), keys(1, Role::User, 1, now), now, true);
    let newer = control.establish(1, from(), keys(1, Role::User, 2, later), later, true);
    for slot in [older, newer] {
        control.sessions[slot].as_mut().unwrap().pinged = true;
    }
    for w in &workers {
        let _ = w.try_iter().count();
    }
    control.push_directories();
    assert!(
        sent_control(&workers[0]).is_empty(),
        "not the older session"
    );
    let sent = sent_control(&workers[1]);
    assert!(
        matches!(
            sent[..],
            [ControlMessage::DirectoryPart {
                part: 0,
                parts: 1,
                ..
            }]
        ),
        "{sent:?}"
    );
    assert_eq!(control.stats.directories_pushed, 1);
    assert_eq!(control.stats.directories_sent, 1);
    control.push_directories();
    assert!(sent_control(&workers[1]).is_empty(), "nothing changed");
    assert_eq!(control.stats.directories_pushed, 1);
    // Sent again once the session's last directory is another one.
    control.sessions[newer].as_mut().unwrap().sent_digest = 1;
    control.push_directories();
    assert_eq!(sent_control(&workers[1]).len(), 1);
    assert!(sent_control(&workers[0]).is_empty());
    assert_eq!(control.stats.directories_pushed, 2);
}

/// A directory is sent with up to `MAX_SERVICES` services in up to
/// `MAX_PARTS` parts, each part counted; one service more, or one part
/// more, and it is not sent at all (an agent would drop it).
#[test]
fn directories_are_sent_up_to_max_services_and_max_parts_and_not_past_them() {
    use proto::control::{ConnectionMode, MAX_ENTRY_LEN, MAX_NAME_LEN, MAX_PARTS, MAX_SERVICES};
    use proto::policy::Protocol;

    let (mut control, worker) = control();
    let now = Instant::now();
    let slot = control.establish(0, from(), keys(1, Role::User, 1, now), now, true);
    let _ = worker.try_iter().count();
    let directory = |n: usize, name_len: usize| {
        let services = (0..n as u32)
            .map(|i| ServiceEntry {
                id: ServiceId(i + 1),
                name: "n".repeat(name_len),
                protocol: Protocol::Tcp,
                port: 443,
                connector: 7,
                connector_key: [7; 32],
            })
            .collect();
        Directory::new(ConnectionMode::OnDemand, services)
    };
    let sent = |control: &mut Control, d: &Directory| {
        control.send_directory(slot, d);
        worker
            .try_iter()
            .filter(|m| matches!(m, ToWorker::Send { .. }))
            .count()
    };
    // Short names: the service count is the limit that counts.
    let most = directory(MAX_SERVICES, 1);
    let parts = most.parts(DEFAULT_MAX_BODY).len();
    assert!(parts < usize::from(MAX_PARTS), "{parts}");
    assert_eq!(sent(&mut control, &most), parts);
    assert_eq!(control.stats.directories_sent, 1);
    assert_eq!(control.stats.directory_parts_sent, parts as u64);
    assert_eq!(sent(&mut control, &directory(MAX_SERVICES + 1, 1)), 0);
    // The longest names: the part count is the limit.
    let per_part = (DEFAULT_MAX_BODY - proto::control::PART_HEADER_LEN) / MAX_ENTRY_LEN;
    let n = usize::from(MAX_PARTS) * per_part;
    let most = directory(n, MAX_NAME_LEN);
    assert_eq!(most.parts(DEFAULT_MAX_BODY).len(), usize::from(MAX_PARTS));
    assert_eq!(sent(&mut control, &most), usize::from(MAX_PARTS));
    let too_many = directory(n + 1, MAX_NAME_LEN);
    assert_eq!(
        too_many.parts(DEFAULT_MAX_BODY).len(),
        usize::from(MAX_PARTS) + 1
    );
    assert_eq!(sent(&mut control, &too_many), 0);
    assert_eq!(control.stats.directories_sent, 2);
    assert_eq!(
        control.stats.directory_parts_sent,
        (parts + usize::from(MAX_PARTS)) as u64
    );
}

/// A connector's ping is answered with `Pong { digest: 0 }`, each counted.
#[test]
fn pongs_are_sent_and_counted() {
    use proto::control::ControlMessage;

    let (mut control, worker) = control();
    let now = Instant::now();
    control.establish(0, from(), keys(2, Role::Connector, 1, now), now, true);
    let _ = worker.try_iter().count();
    let mut ping = Vec::new();
    ControlMessage::Ping { digest: 0 }.emit(&mut ping);
    control.control(0, ReceiverIndex(1), &ping);
    control.control(0, ReceiverIndex(1), &ping);
    assert_eq!(
        sent_control(&worker),
        [
            ControlMessage::Pong { digest: 0 },
            ControlMessage::Pong { digest: 0 }
        ]
    );
    assert_eq!(control.stats.pongs_sent, 2);
}

/// The relay takes a renewed certificate of its own key from its files:
/// counted, with its end of validity, and presented by new handshakes; a
/// file it refuses is counted once, not at every poll.
#[test]
fn a_renewed_certificate_is_taken_and_a_refused_file_counted_once() {
    let (control, _worker) = control();
    let dir = std::env::temp_dir().join(format!("control-renew-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("relay.key"), dir.join("relay.cert"));
    let relay = node(1000, Role::Relay, 7);
    let private = proto::testkit::handshake::static_keypair(7).private;
    std::fs::write(&key, crate::keys::static_key_to_text(&private)).unwrap();
    std::fs::write(&cert, relay.certificate().to_text()).unwrap();
    let ca = CaKeypair::from_seed(&[0x42; 32]);
    let files = IdentityFiles::new(&key, &cert, ca.public(), &relay);
    let mut control = control.with_renewal(Some(files));
    control.renew();
    assert_eq!(control.stats.cert_renewals, 0, "unchanged");
    let not_after = unix_nanos() / 1_000_000_000 + 7200;
    let renewed = ca
        .issue(CertificateBody {
            not_after,
            ..relay.certificate().body.clone()
        })
        .unwrap();
    std::fs::write(&cert, renewed.to_text()).unwrap();
    control.renew();
    let s = &control.stats;
    assert_eq!((s.cert_renewals, s.cert_not_after), (1, not_after));
    assert_eq!(control.responder.certificate().body.not_after, not_after);
    std::fs::write(&cert, "not a certificate").unwrap();
    control.renew();
    control.renew();
    let s = &control.stats;
    assert_eq!((s.cert_renewals, s.cert_renewals_refused), (1, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The control thread takes the workers' audit decisions at every loop,
/// and writes the audit lines only once the interval is up, or at the
/// end (`last`).
#[test]
fn audit_lines_are_written_when_the_interval_is_up_or_at_the_end() {
    use crate::audit::{AuditConfig, Auditor, RelayName};
    use proto::audit::Access;

    let (mut control, _worker) = control();
    // With the workers' hand-off slots, which `control` has none of.
    let policy = CompiledPolicy::compile(&PolicyFile::default()).unwrap();
    control.shared = Arc::new(Shared::new(policy, 1).with_audit(64));
    let config = AuditConfig::default();
    let interval = config.interval;
    let relay = RelayName {
        id: 1000,
        name: "relay".into(),
    };
    let mut control = control.with_audit(Some(Auditor::new(config, relay)));
    let hand_off = |control: &Control, user: u32| {
        let mut table = control.shared.new_audit_table().unwrap();
        table.record(UserId(user), ServiceId(1), Access::Deny, 100);
        assert!(control.shared.hand_off_audit(0, &mut table));
    };
    let start = control.last_audit;
    hand_off(&control, 1);
    control.audit_tick(start, false);
    assert_eq!(control.stats.audit.decisions, 1, "taken");
    assert_eq!(
        control.stats.audit.lines(),
        0,
        "written before the interval"
    );
    control.audit_tick(start + interval, false);
    let written = control.stats.audit.lines();
    assert!(written > 0, "not written at the interval");
    hand_off(&control, 2);
    control.audit_tick(start + interval, true);
    assert_eq!(control.stats.audit.decisions, 2);
    assert!(
        control.stats.audit.lines() > written,
        "not written at the end"
    );
}

/// The peer relays this relay holds sessions with are published with how
/// many sessions each (one a worker), users are not, and a relay whose
/// sessions end is withdrawn.
#[test]
fn mesh_links_are_published_with_their_sessions_and_withdrawn() {
    let (mut control, _workers) = control_over(2);
    let now = Instant::now();
    let a = control.establish(0, from(), keys(2000, Role::Relay, 1, now), now, true);
    let b = control.establish(1, from(), keys(2000, Role::Relay, 2, now), now, true);
    control.establish(0, from(), keys(1, Role::User, 3, now), now, true);
    let key = control.sessions[a].as_ref().unwrap().static_key;
    control.publish_mesh_links();
    let links = control.shared.mesh_links.load();
    let links: Vec<_> = links
        .iter()
        .map(|l| (l.id, l.sessions, l.static_key))
        .collect();
    assert_eq!(links, [(2000, 2, key)]);
    assert_eq!(control.stats.relay_links, 1);
    control.remove(a, "test");
    control.remove(b, "test");
    control.publish_mesh_links();
    assert!(control.shared.mesh_links.load().is_empty());
    assert_eq!(control.stats.relay_links, 0);
}
