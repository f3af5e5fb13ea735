//! The relay's own threads, watched: one that ends before the relay is
//! stopped is noticed, and each is joined with how it ended.
//!
//! A relay with a dead thread is worse than a stopped one. A dead worker's
//! socket keeps receiving its share of the `SO_REUSEPORT` flows, which
//! nobody reads any more; with a dead control thread no handshake
//! completes, no policy reload applies and no session expires. So a thread
//! that ends early (a panic, or a worker whose I/O failed) must not go
//! unnoticed: [`crate::Relay::ended_early`] names it (the `relay` binary
//! then stops the whole relay and exits with an error, for its supervisor
//! to restart it), and [`crate::RelayReport::failures`] lists every thread
//! that panicked, with its message.

use std::any::Any;
use std::fmt;
use std::thread::JoinHandle;

/// A relay thread that panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadFailure {
    /// The thread's name (`relay-worker-<k>`, `relay-control`).
    pub thread: String,
    /// The panic's message, or a placeholder when it was not a string.
    pub message: String,
}

impl fmt::Display for ThreadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {} panicked: {}", self.thread, self.message)
    }
}

/// A spawned thread and its name, for [`Watched::join`]'s report.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    name: String,
    handle: JoinHandle<T>,
}

impl<T: Default> Watched<T> {
    /// Watches `handle`; its name is the thread's own (`unnamed` if none).
    pub(crate) fn new(handle: JoinHandle<T>) -> Self {
        let name = handle.thread().name().unwrap_or("unnamed").to_owned();
        Watched { name, handle }
    }

    /// The thread's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the thread has ended (returned or panicked).
    pub(crate) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread: what it returned, or its failure (then the
    /// caller counts `T::default()` for it).
    pub(crate) fn join(self) -> Result<T, ThreadFailure> {
        self.handle.join().map_err(|payload| ThreadFailure {
            thread: self.name,
            message: panic_message(payload.as_ref()),
        })
    }
}

/// Joins watched threads one after another and keeps the failures.
#[derive(Debug, Default)]
pub(crate) struct Joiner {
    /// The threads that panicked, in the order they were joined.
    pub(crate) failures: Vec<ThreadFailure>,
}

impl Joiner {
    /// What the thread returned, or `T::default()` for one that panicked
    /// (logged, and kept in [`failures`](Self::failures)).
    pub(crate) fn join<T: Default>(&mut self, thread: Watched<T>) -> T {
        thread.join().unwrap_or_else(|failure| {
            tracing::error!(thread = %failure.thread, message = %failure.message, "relay thread panicked");
            self.failures.push(failure);
            T::default()
        })
    }
}

/// The message of a panic payload: `panic!` with a literal gives a
/// `&str`, with format arguments a `String`; anything else (`panic_any`)
/// has no text.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn spawn<T: Default + Send + 'static>(
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Watched<T> {
        Watched::new(
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .unwrap(),
        )
    }

    #[test]
    fn a_thread_that_returns_gives_its_value() {
        let t = spawn("relay-worker-3", || 7u64);
        assert_eq!(t.name(), "relay-worker-3");
        assert_eq!(t.join(), Ok(7));
    }

    #[test]
    fn a_panic_becomes_a_failure_with_the_thread_and_its_message() {
        let literal = spawn("relay-worker-0", || -> u64 { panic!("ring gone") });
        assert_eq!(
            literal.join(),
            Err(ThreadFailure {
                thread: "relay-worker-0".into(),
                message: "ring gone".into()
            })
        );
        let formatted = spawn("relay-control", || -> u64 { panic!("slot {}", 12) });
        let failure = formatted.join().unwrap_err();
        assert_eq!(failure.message, "slot 12");
        assert_eq!(
            failure.to_string(),
            "thread relay-control panicked: slot 12"
        );
        let other = spawn("relay-worker-1", || -> u64 { std::panic::panic_any(5u8) });
        assert_eq!(
            other.join().unwrap_err().message,
            "(a panic payload that is not a string)"
        );
    }

    #[test]
    fn the_joiner_keeps_every_failure_and_zeroes_its_figures() {
        let mut joiner = Joiner::default();
        let threads = vec![
            spawn("relay-worker-0", || 10u64),
            spawn("relay-worker-1", || -> u64 { panic!("boom") }),
            spawn("relay-worker-2", || 30u64),
        ];
        let figures: Vec<u64> = threads.into_iter().map(|t| joiner.join(t)).collect();
        assert_eq!(figures, [10, 0, 30]);
        assert_eq!(
            joiner.failures,
            [ThreadFailure {
                thread: "relay-worker-1".into(),
                message: "boom".into()
            }]
        );
    }

    #[test]
    fn is_finished_tells_a_running_thread_from_an_ended_one() {
        let (go, wait) = mpsc::channel::<()>();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let t = spawn("relay-worker-2", move || {
            wait.recv().unwrap();
            drop(ended_tx);
        });
        assert!(!t.is_finished(), "still waiting for its signal");
        go.send(()).unwrap();
        // The thread drops its sender as it returns: wait for that, then
        // for the handle to say so (it does once the closure returned).
        assert!(ended.recv().is_err());
        while !t.is_finished() {
            std::thread::yield_now();
        }
        assert_eq!(t.join(), Ok(()));
    }
}
