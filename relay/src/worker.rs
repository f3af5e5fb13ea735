//! One worker: one core, one socket, one I/O backend, its own sessions.
//!
//! The loop: take control messages (new sessions, replies to send), wait
//! for a batch, judge every frame with `proto`'s datapath against the
//! snapshots loaded once for that batch, and let the backend send the
//! forwarded frames grouped by next hop. Hop handshakes the datapath
//! accepted and the worker's gate admitted ([`crate::admission`]: mac1,
//! under load mac2 and a fair share per source) and authenticated control
//! frames are copied to the control thread; those are the only
//! per-frame copies, and they are off the data path. After each batch the
//! worker tells the control thread which sessions it saw confirmed (their
//! first frame passed the tag), from a preallocated queue.
//!
//! With the audit on, the datapath counts its policy decisions in the
//! worker's own fixed-size audit table; the worker hands the table to the
//! control thread when it publishes its counters, by swapping it with an
//! empty one ([`Shared::hand_off_audit`]): nothing per frame but a counter.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use proto::datapath::{Counters, Datapath, Mode, Verdict};
use proto::ids::ReceiverIndex;
use proto::session::{Confirmations, RxSession, SessionTable, TxCounters};
use proto::wire::{Frame, Kind, HEADER_LEN};

use crate::admission::Admission;
use crate::io::{Action, Io};
use crate::shared::{Shared, WorkerStats};

/// How long a poll waits for frames before the worker looks at its control
/// channel and the stop flag again.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How often a worker publishes its counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the control thread tells a worker. Applied between batches.
#[derive(Debug)]
pub enum ToWorker {
    /// Install a receive session under an index the control thread chose.
    Install {
        /// The index peers put in their frames.
        index: ReceiverIndex,
        /// The session.
        session: Box<RxSession>,
    },
    /// Remove the session under `index`.
    Remove {
        /// The index.
        index: ReceiverIndex,
    },
    /// Send these bytes from this worker's socket (handshake replies,
    /// control messages).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Send these bytes from this worker's mesh link socket (an initiation
    /// of a mesh link: the peer answers, and later sends the link's frames,
    /// to that port, so they reach this worker).
    SendFromLink {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
}

/// What a worker tells the control thread.
#[derive(Debug)]
pub enum FromWorker {
    /// A hop handshake frame arrived.
    Handshake {
        /// The worker it arrived at (the one that owns the peer's flow).
        worker: usize,
        /// Its source address.
        from: SocketAddr,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// The first frame on a hop session passed its tag (key confirmation):
    /// the control thread may route to the session now.
    Confirmed {
        /// The worker holding the session.
        worker: usize,
        /// The session's receiver index on that worker.
        index: ReceiverIndex,
    },
    /// A control frame arrived on a hop session and authenticated (tag and
    /// replay window checked by the datapath).
    Control {
        /// The worker it arrived at (the one holding the session).
        worker: usize,
        /// The session's receiver index on that worker.
        index: ReceiverIndex,
        /// The frame's body: the control message.
        bytes: Vec<u8>,
    },
}

/// Runs worker `id` until `shared.stop` is set. Returns its final stats.
pub fn run(
    id: usize,
    mut io: Io,
    mode: Mode,
    shared: Arc<Shared>,
    inbox: Receiver<ToWorker>,
    control: Sender<FromWorker>,
    mut admission: Admission,
) -> WorkerStats {
    let mut sessions = SessionTable::new();
    let mut tx = TxCounters::default();
    let mut counters = Counters::default();
    let mut tally = Tally::default();
    let mut confirmations = Confirmations::new();
    let mut last_publish = Instant::now();
    let mut audit = shared.new_audit_table();
    // A relay in a mesh initiates hop handshakes with other relays, from
    // each worker's link port: only then may responses and cookie replies
    // reach the control thread.
    let initiates = io.link_addr().is_some();

    while !shared.stop.load(Ordering::Relaxed) {
        for msg in inbox.try_iter() {
            match msg {
                ToWorker::Install { index, session } => sessions.install(index, *session),
                ToWorker::Remove { index } => {
                    sessions.remove(index);
                }
                ToWorker::Send { to, bytes } => {
                    if let Err(e) = io.send_to(to, &bytes) {
                        tracing::debug!(worker = id, %to, error = %e, "control reply not sent");
                    }
                }
                ToWorker::SendFromLink { to, bytes } => {
                    if !io.send_from_link(to, &bytes) {
                        tracing::debug!(worker = id, %to, "mesh initiation not sent from the link socket");
                    }
                }
            }
        }

        // The snapshots are loaded when the first frame of a batch is
        // judged, i.e. after the wait: a policy swapped while this worker
        // slept already applies to the next batch.
        let mut snapshot = None;
        let result = io.poll(POLL_TIMEOUT, &mut |from, frame| {
            let (policy, routes) =
                snapshot.get_or_insert_with(|| (shared.policy.load(), shared.routes.load()));
            tx.ensure(routes.hop_slots());
            let verdict = Datapath {
                mode,
                initiates,
                policy,
                routes,
                sessions: &mut sessions,
                tx: &mut tx,
                counters: &mut counters,
                confirmations: &mut confirmations,
                audit: audit.as_mut(),
            }
            .process(frame);
            match verdict {
                Verdict::Forward { to, .. } => Action::Forward(to),
                // Well-sized initiations, and in a mesh responses and
                // cookie replies (the datapath dropped them elsewhere): the
                // control thread parses them and drops what answers
                // nothing it sent.
                Verdict::Handshake(_) => {
                    // mac1, and under load mac2 and the source's fair
                    // share, before anything is copied (crate::admission).
                    if !admission.judge(frame, from, control.len(), Instant::now()) {
                        return Action::Consume;
                    }
                    let msg = FromWorker::Handshake {
                        worker: id,
                        from,
                        bytes: frame.to_vec(),
                    };
                    if let Err(TrySendError::Full(_)) = control.try_send(msg) {
                        tally.handshakes += 1;
                    }
                    Action::Consume
                }
                // In forward mode nothing was authenticated: the control
                // thread only ever hears frames whose tag verified.
                Verdict::Local
                    if mode != Mode::Forward && frame.first() == Some(&Kind::Control.byte0()) =>
                {
                    let msg = FromWorker::Control {
                        worker: id,
                        index: Frame::new_unchecked(&*frame).receiver(),
                        bytes: frame.get(HEADER_LEN..).unwrap_or_default().to_vec(),
                    };
                    tally.control_frames += 1;
                    if let Err(TrySendError::Full(_)) = control.try_send(msg) {
                        tally.control += 1;
                    }
                    Action::Consume
                }
                Verdict::Local => {
                    if frame.first() == Some(&Kind::Control.byte0()) {
                        tally.control_frames += 1;
                    } else {
                        tally.keepalives += 1;
                    }
                    Action::Consume
                }
                Verdict::Drop(_) => Action::Consume,
            }
        });
        if let Err(e) = result {
            tracing::error!(worker = id, error = %e, "I/O failed; worker stops");
            break;
        }
        admission.send_cookie_replies(id, &mut io);
        deliver_confirmations(id, &mut confirmations, &control);
        if last_publish.elapsed() >= PUBLISH_EVERY {
            last_publish = Instant::now();
            shared.publish(id, stats(&counters, &io, tally, &sessions, &admission));
            if let Some(table) = audit.as_mut() {
                shared.hand_off_audit(id, table);
            }
        }
    }
    if let Some(table) = audit.as_mut() {
        shared.hand_off_audit(id, table);
    }
    let _ = io.flush();
    let last = stats(&counters, &io, tally, &sessions, &admission);
    shared.publish(id, last.clone());
    last
}

/// Tells the control thread which sessions this worker saw confirmed. A
/// confirmation the full queue does not take stays for the next round (a
/// lost one would leave its session without routes); nothing allocates.
fn deliver_confirmations(
    worker: usize,
    confirmations: &mut Confirmations,
    control: &Sender<FromWorker>,
) {
    while let Some(index) = confirmations.pop() {
        match control.try_send(FromWorker::Confirmed { worker, index }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                confirmations.unpop(index);
                return;
            }
            // The control thread is gone: the relay is stopping.
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// What the worker counts beside the datapath: frames for the control
/// thread shed because its queue was full, and the local frames by kind.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Handshake frames shed.
    handshakes: u64,
    /// Control frames shed.
    control: u64,
    /// Authenticated keepalives.
    keepalives: u64,
    /// Authenticated control frames (shed or not).
    control_frames: u64,
}

fn stats(
    counters: &Counters,
    io: &Io,
    tally: Tally,
    sessions: &SessionTable,
    admission: &Admission,
) -> WorkerStats {
    WorkerStats {
        datapath: counters.clone(),
        io: *io.stats(),
        handshakes_shed: tally.handshakes,
        control_shed: tally.control,
        handshakes_gated: admission.counts(),
        keepalives: tally.keepalives,
        control_frames: tally.control_frames,
        sessions: sessions.len(),
        cpu: thread_cpu_time(),
        thread: Some(thread_id()),
    }
}

/// The calling thread's Linux thread id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid(2) takes nothing, cannot fail and touches no memory.
    unsafe { libc::gettid() }
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}
