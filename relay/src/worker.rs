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

use arc_swap::Guard;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use proto::audit::AuditTable;
use proto::datapath::{Counters, Datapath, Mode, Verdict};
use proto::hoptag::lanes::LANES;
use proto::ids::ReceiverIndex;
use proto::policy::CompiledPolicy;
use proto::route::RouteTable;
use proto::session::{Confirmations, HopId, RxSession, SessionTable, TxCounters, TxHop};
use proto::wire::{Frame, Kind, HEADER_LEN};

use crate::admission::Admission;
use crate::io::{Action, Dest, Handler, Io, GROUP};
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

/// What a worker keeps from batch to batch and judges frames with.
struct State {
    sessions: SessionTable,
    tx: TxCounters,
    counters: Counters,
    tally: Tally,
    confirmations: Confirmations,
    /// `None`: audit off.
    audit: Option<AuditTable>,
    admission: Admission,
}

/// The worker's [`Handler`] for one poll: judges each frame against the
/// snapshots it loads at the poll's first frame, and resolves the next
/// hops of the frames it forwarded against the same routing snapshot.
///
/// A verdict names its next hop by [`HopId`], which the I/O carries as a
/// [`Dest`] (a word, returned in a register) and resolves here once per
/// send, not per frame. The snapshot lives as long as this handler, one
/// poll, and the I/O resolves a key only within the poll that returned it:
/// a hop id is never looked up in a routing table other than the one it was
/// chosen from (where it may name no hop, or another peer).
struct Batch<'w> {
    id: usize,
    mode: Mode,
    initiates: bool,
    shared: &'w Shared,
    control: &'w Sender<FromWorker>,
    state: &'w mut State,
    snapshot: Option<Snapshot>,
}

/// The policy and routing snapshots one batch is judged against.
type Snapshot = (Guard<Arc<CompiledPolicy>>, Guard<Arc<RouteTable>>);

impl Batch<'_> {
    /// Runs `judge` with the datapath over this poll's snapshots (loaded
    /// at its first frame) and this worker's state.
    #[inline]
    fn with_datapath<R>(&mut self, judge: impl FnOnce(&mut Datapath<'_>) -> R) -> R {
        let shared = self.shared;
        let (policy, routes) = self
            .snapshot
            .get_or_insert_with(|| (shared.policy.load(), shared.routes.load()));
        let st = &mut *self.state;
        st.tx.ensure(routes.hop_slots());
        judge(&mut Datapath {
            mode: self.mode,
            initiates: self.initiates,
            policy,
            routes,
            sessions: &mut st.sessions,
            tx: &mut st.tx,
            counters: &mut st.counters,
            confirmations: &mut st.confirmations,
            audit: st.audit.as_mut(),
        })
    }

    /// What the I/O does with `frame` from `from`, judged `verdict`; hands
    /// what the control thread reads to it.
    #[inline]
    fn act(&mut self, from: SocketAddr, frame: &[u8], verdict: Verdict) -> Action {
        let st = &mut *self.state;
        match verdict {
            Verdict::Forward { hop } => Action::Forward(Dest(hop.0)),
            // Well-sized initiations, and in a mesh responses and cookie
            // replies (the datapath dropped them elsewhere): the control
            // thread parses them and drops what answers nothing it sent.
            Verdict::Handshake(_) => {
                // mac1, and under load mac2 and the source's fair share,
                // before anything is copied (crate::admission).
                let depth = self.control.len();
                if !st.admission.judge(frame, from, depth, Instant::now()) {
                    return Action::Consume;
                }
                let msg = FromWorker::Handshake {
                    worker: self.id,
                    from,
                    bytes: frame.to_vec(),
                };
                if let Err(TrySendError::Full(_)) = self.control.try_send(msg) {
                    st.tally.handshakes += 1;
                }
                Action::Consume
            }
            // In forward mode nothing was authenticated: the control
            // thread only ever hears frames whose tag verified.
            Verdict::Local
                if self.mode != Mode::Forward && frame.first() == Some(&Kind::Control.byte0()) =>
            {
                let msg = FromWorker::Control {
                    worker: self.id,
                    index: Frame::new_unchecked(frame).receiver(),
                    bytes: frame.get(HEADER_LEN..).unwrap_or_default().to_vec(),
                };
                st.tally.control_frames += 1;
                if let Err(TrySendError::Full(_)) = self.control.try_send(msg) {
                    st.tally.control += 1;
                }
                Action::Consume
            }
            Verdict::Local => {
                if frame.first() == Some(&Kind::Control.byte0()) {
                    st.tally.control_frames += 1;
                } else {
                    st.tally.keepalives += 1;
                }
                Action::Consume
            }
            Verdict::Drop(_) => Action::Consume,
        }
    }
}

// A group of the I/O fills whole groups of the datapath's tag lanes.
const _: () = assert!(GROUP % LANES == 0);

impl Handler for Batch<'_> {
    #[inline]
    fn handle(&mut self, from: SocketAddr, frame: &mut [u8]) -> Action {
        let verdict = self.with_datapath(|dp| dp.process(frame));
        self.act(from, frame, verdict)
    }

    /// The frames through [`Datapath::process_group`], which computes
    /// their hop tags together.
    #[inline]
    fn handle_group(&mut self, from: SocketAddr, frames: &mut [&mut [u8]], actions: &mut [Action]) {
        let mut verdicts = [Verdict::Local; GROUP];
        let n = frames.len().min(GROUP);
        let verdicts = &mut verdicts[..n];
        self.with_datapath(|dp| dp.process_group(&mut frames[..n], verdicts));
        for ((frame, verdict), action) in frames.iter().zip(verdicts.iter()).zip(actions) {
            *action = self.act(from, frame, *verdict);
        }
    }

    /// The endpoint of next hop `dest` in this poll's routing snapshot,
    /// which holds it: the datapath tagged the frame with its key there.
    #[inline]
    fn resolve(&mut self, dest: Dest) -> Option<SocketAddr> {
        let (_, routes) = self.snapshot.as_ref()?;
        routes.hop(HopId(dest.0)).map(TxHop::endpoint)
    }
}

/// Runs worker `id` until `shared.stop` is set. Returns its final stats.
pub fn run(
    id: usize,
    mut io: Io,
    mode: Mode,
    shared: Arc<Shared>,
    inbox: Receiver<ToWorker>,
    control: Sender<FromWorker>,
    admission: Admission,
) -> WorkerStats {
    let mut st = State {
        sessions: SessionTable::new(),
        tx: TxCounters::default(),
        counters: Counters::default(),
        tally: Tally::default(),
        confirmations: Confirmations::new(),
        audit: shared.new_audit_table(),
        admission,
    };
    let mut last_publish = Instant::now();
    // A relay in a mesh initiates hop handshakes with other relays, from
    // each worker's link port: only then may responses and cookie replies
    // reach the control thread.
    let initiates = io.link_addr().is_some();

    while !shared.stop.load(Ordering::Relaxed) {
        for msg in inbox.try_iter() {
            match msg {
                ToWorker::Install { index, session } => st.sessions.install(index, *session),
                ToWorker::Remove { index } => {
                    st.sessions.remove(index);
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
        let mut batch = Batch {
            id,
            mode,
            initiates,
            shared: &shared,
            control: &control,
            state: &mut st,
            snapshot: None,
        };
        let result = io.poll(POLL_TIMEOUT, &mut batch);
        if let Err(e) = result {
            tracing::error!(worker = id, error = %e, "I/O failed; worker stops");
            break;
        }
        st.admission.send_cookie_replies(id, &mut io);
        deliver_confirmations(id, &mut st.confirmations, &control);
        if last_publish.elapsed() >= PUBLISH_EVERY {
            last_publish = Instant::now();
            shared.publish(id, stats(&st, &io));
            if let Some(table) = st.audit.as_mut() {
                shared.hand_off_audit(id, table);
            }
        }
    }
    if let Some(table) = st.audit.as_mut() {
        shared.hand_off_audit(id, table);
    }
    let _ = io.flush();
    let last = stats(&st, &io);
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

fn stats(st: &State, io: &Io) -> WorkerStats {
    WorkerStats {
        datapath: st.counters.clone(),
        io: *io.stats(),
        handshakes_shed: st.tally.handshakes,
        control_shed: st.tally.control,
        handshakes_gated: st.admission.counts(),
        keepalives: st.tally.keepalives,
        control_frames: st.tally.control_frames,
        sessions: st.sessions.len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::handshake::{CookieChecker, GateLimits, HandshakeGate};
    use proto::session::TxHop;
    use proto::testkit::{Fixture, CONNECTOR_HOP};

    /// The fixture's routes, with the connector's hop (id 0) at `endpoint`.
    fn routes_to(endpoint: &str) -> RouteTable {
        let mut routes = std::mem::take(&mut Fixture::new(2, 8).routes);
        let hop = TxHop::new(
            endpoint.parse().unwrap(),
            proto::ids::ReceiverIndex(0xc0),
            &[0xcc; 32],
            0,
        );
        routes.set_hop(CONNECTOR_HOP, Arc::new(hop));
        routes
    }

    /// A worker's handler resolves a hop id in the routing snapshot the
    /// frame was judged with, for the whole poll, even after the control
    /// thread swapped the table: in the new one the id could name another
    /// peer (here: another endpoint). A poll that judged nothing has no
    /// snapshot and resolves nothing.
    #[test]
    fn a_hop_resolves_in_the_snapshot_its_frame_was_judged_with() {
        let mut fx = Fixture::new(2, 8);
        let policy = CompiledPolicy::compile(&proto::testkit::policy_file(2, 8)).unwrap();
        let shared = Shared::new(policy, 1);
        shared.routes.store(Arc::new(routes_to("127.0.0.1:9")));
        let now = Instant::now();
        let cookies = CookieChecker::new(&[1; 32], [2; 32], now);
        let mut st = State {
            sessions: std::mem::take(&mut fx.sessions),
            tx: TxCounters::default(),
            counters: Counters::default(),
            tally: Tally::default(),
            confirmations: Confirmations::new(),
            audit: None,
            admission: Admission::new(HandshakeGate::new(cookies, GateLimits::default(), now)),
        };
        let (control, _inbox) = crossbeam_channel::bounded(4);
        let from: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let mut poll = |st: &mut State, frames: usize, swap_to: &str| {
            let mut batch = Batch {
                id: 0,
                mode: Mode::Ztna,
                initiates: false,
                shared: &shared,
                control: &control,
                state: st,
                snapshot: None,
            };
            let before = batch.resolve(Dest(CONNECTOR_HOP.0));
            let mut actions = Vec::new();
            for _ in 0..frames {
                let mut buf = vec![0; 200];
                fx.upstream(1, 1, &mut buf, 200);
                actions.push(batch.handle(from, &mut buf));
            }
            shared.routes.store(Arc::new(routes_to(swap_to)));
            let after = batch.resolve(Dest(CONNECTOR_HOP.0));
            (before, actions, after)
        };
        let (before, actions, after) = poll(&mut st, 2, "127.0.0.1:4444");
        assert_eq!(
            before, None,
            "nothing judged yet: no snapshot to resolve in"
        );
        assert_eq!(actions, [Action::Forward(Dest(CONNECTOR_HOP.0)); 2]);
        assert_eq!(
            after,
            Some("127.0.0.1:9".parse().unwrap()),
            "resolved in the poll's snapshot, not the table swapped in since"
        );
        // The next poll judges against the new table, and resolves there.
        let (before, actions, after) = poll(&mut st, 1, "127.0.0.1:9");
        assert_eq!(before, None);
        assert_eq!(actions, [Action::Forward(Dest(CONNECTOR_HOP.0))]);
        assert_eq!(after, Some("127.0.0.1:4444".parse().unwrap()));
        assert_eq!(st.counters.forwarded, 3);
    }
}
