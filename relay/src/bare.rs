//! The bare hop: the smallest forwarder the relay's I/O can make, as the
//! floor a relay's latency and cost are measured against.
//!
//! One thread, pinned like a relay worker, with the same [`Io`] backend,
//! [`IoConfig`] (batch, buffers, GRO/GSO, busy polling) and wait pattern
//! (a poll of [`worker::POLL_TIMEOUT`], then a look at the stop flag,
//! counters published every [`worker::PUBLISH_EVERY`]). Every datagram it
//! receives is sent on unchanged to one fixed destination: no parsing, no
//! session, no policy, no rewrite. What a relay adds on top of this hop
//! (the datapath, the control channel, the snapshots) is what
//! "relay minus bare" measures; what the kernel, loopback and the wake-ups
//! cost is in both.
//!
//! It publishes the same [`WorkerStats`] a relay worker does, so the load
//! generator reads both alike: every datagram counts as a frame judged
//! and forwarded (`datapath.frames`, `datapath.forwarded`, their bytes),
//! with the I/O counters (batch sizes, syscalls, busy polling) and the
//! thread's CPU time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::io::{Action, Backend, Dest, Dests, Io, IoConfig};
use crate::shared::WorkerStats;
use crate::worker::{self, thread_cpu_time};
use crate::StartError;

/// Where a bare hop listens, where it sends, and how its I/O is set up.
#[derive(Debug, Clone, Copy)]
pub struct BareOptions {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where every datagram received is sent.
    pub destination: SocketAddr,
    /// Pin the thread to this entry of [`crate::allowed_cores`] (modulo
    /// their number), as a relay's worker `k` is pinned to `first_core +
    /// k`; `None`: not pinned.
    pub core: Option<usize>,
    /// Preferred I/O backend (`uring` falls back to `mmsg`, saying so).
    pub io: Backend,
    /// The I/O settings, as a relay worker's.
    pub io_config: IoConfig,
}

/// A running bare hop. Stops (and joins its thread) on [`Bare::stop`] or
/// drop.
#[derive(Debug)]
pub struct Bare {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WorkerStats>>,
    thread: Option<JoinHandle<WorkerStats>>,
    local_addr: SocketAddr,
    destination: SocketAddr,
    backend: Backend,
}

impl Bare {
    /// Binds the socket, starts the thread (pinned, creating its I/O
    /// backend on itself) and returns once it is serving.
    pub fn start(opts: BareOptions) -> Result<Bare, StartError> {
        let io_error = |error| StartError::Io { worker: 0, error };
        let socket = crate::io::bind_socket(opts.listen, &opts.io_config).map_err(io_error)?;
        let local_addr = socket.local_addr().map_err(|source| {
            io_error(crate::io::IoError::Sys {
                op: "getsockname",
                source,
            })
        })?;
        let core = opts.core.and_then(|c| {
            let cores = crate::allowed_cores();
            cores.get(c % cores.len().max(1)).copied()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WorkerStats::default()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (thread_stop, thread_stats) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("relay-bare".into())
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(core = core.id, "could not pin the bare hop to its core");
                    }
                }
                // Created on the thread that polls it, as a worker's.
                match Io::start(opts.io, socket, opts.io_config) {
                    Ok(io) => {
                        // Before `start` returns: a reader's first snapshot
                        // has the CPU time later ones are measured from.
                        publish(&mut WorkerStats::default(), &io, &thread_stats);
                        let _ = ready_tx.send(Ok(io.backend()));
                        run(io, opts.destination, &thread_stop, &thread_stats)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        WorkerStats::default()
                    }
                }
            })
            .map_err(StartError::Spawn)?;
        let backend = match ready_rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(io_error(error));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Invalid(
                    "the bare hop's thread exited during start".into(),
                ));
            }
        };
        tracing::info!(%local_addr, destination = %opts.destination, io = %backend, "bare hop serving");
        Ok(Bare {
            stop,
            stats,
            thread: Some(thread),
            local_addr,
            destination: opts.destination,
            backend,
        })
    }

    /// The address it receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where it sends everything.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// The I/O backend it actually uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Its statistics as last published (every
    /// [`worker::PUBLISH_EVERY`]), in a relay worker's shape.
    pub fn totals(&self) -> WorkerStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the thread (it finishes its poll and flushes) and returns its
    /// final statistics.
    pub fn stop(mut self) -> WorkerStats {
        self.join()
    }

    fn join(&mut self) -> WorkerStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.join();
        }
    }
}

/// The loop: poll, forward everything to `destination`, publish now and
/// then; until `stop`.
fn run(
    mut io: Io,
    destination: SocketAddr,
    stop: &AtomicBool,
    slot: &Mutex<WorkerStats>,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let counters = &mut stats.datapath;
        // The one destination is key 0, resolved once per send, as a
        // worker's next hops are.
        let mut handler = Dests::new([destination], |_, datagram: &mut [u8]| {
            let len = datagram.len() as u64;
            counters.frames += 1;
            counters.bytes += len;
            counters.forwarded += 1;
            counters.forwarded_bytes += len;
            Action::Forward(Dest(0))
        });
        let result = io.poll(worker::POLL_TIMEOUT, &mut handler);
        if let Err(e) = result {
            tracing::error!(error = %e, "I/O failed; the bare hop stops");
            break;
        }
        if last_publish.elapsed() >= worker::PUBLISH_EVERY {
            last_publish = Instant::now();
            publish(&mut stats, &io, slot);
        }
    }
    let _ = io.flush();
    publish(&mut stats, &io, slot);
    stats
}

fn publish(stats: &mut WorkerStats, io: &Io, slot: &Mutex<WorkerStats>) {
    stats.io = *io.stats();
    stats.cpu = thread_cpu_time();
    stats.thread = Some(worker::thread_id());
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone_from(stats);
}
