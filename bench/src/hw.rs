//! The CPU's own counters of retired instructions and cycles for one
//! thread, through `perf_event_open(2)`, user space only
//! (`exclude_kernel`, which `perf_event_paranoid` 2 allows an unprivileged
//! process). Bare metal exposes them; most virtual machines do not (this
//! project's 2-core VM answers `ENOENT`): then [`HwCounters::open`] says
//! why, and the figures come from callgrind ([`crate::instructions`]).
//!
//! The counters are read with `read(2)` on their file descriptors; each
//! reading carries the time the counter was enabled and running, and is
//! scaled when the kernel multiplexed it.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{FromRawFd as _, OwnedFd};

/// `perf_event_attr` up to `config1` (`PERF_ATTR_SIZE_VER0`, 64 bytes):
/// the kernel takes any size it knows and zero-extends the rest.
#[repr(C)]
#[derive(Debug, Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_ATTR_SIZE_VER0: u32 = 64;
const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER0 as usize);

/// `PERF_TYPE_HARDWARE`.
const TYPE_HARDWARE: u32 = 0;
/// `PERF_TYPE_SOFTWARE`.
const TYPE_SOFTWARE: u32 = 1;
/// `PERF_COUNT_HW_CPU_CYCLES`.
const HW_CPU_CYCLES: u64 = 0;
/// `PERF_COUNT_HW_INSTRUCTIONS`.
const HW_INSTRUCTIONS: u64 = 1;
/// `PERF_COUNT_SW_TASK_CLOCK` (ns the thread ran): a software event, for
/// testing the machinery where the hardware events are missing.
const SW_TASK_CLOCK: u64 = 1;
/// `PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING`.
const READ_FORMAT: u64 = 1 | 2;
/// `exclude_kernel` (bit 5) and `exclude_hv` (bit 6) of the flags.
const FLAGS_USER_ONLY: u64 = (1 << 5) | (1 << 6);
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Why the counters cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HwError {
    /// The kernel refused the counter (no PMU in a VM: `ENOENT` or
    /// `EOPNOTSUPP`; `perf_event_paranoid` above 2: `EACCES`).
    #[error("perf_event_open({event}): {source}")]
    Open {
        /// The event asked for.
        event: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// Reading an open counter failed.
    #[error("reading the {event} counter: {source}")]
    Read {
        /// The event.
        event: &'static str,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The counter was enabled but the kernel never ran it (every
    /// hardware counter taken by others).
    #[error("the {0} counter never ran (hardware counters busy)")]
    NeverRan(&'static str),
}

/// One open counter of one thread.
#[derive(Debug)]
struct Counter {
    event: &'static str,
    file: File,
}

impl Counter {
    /// Opens a user-space-only counter of `(type_, config)` for thread
    /// `tid` (0: the calling thread) on any CPU, counting from now.
    fn open(
        event: &'static str,
        type_: u32,
        config: u64,
        tid: libc::pid_t,
    ) -> Result<Counter, HwError> {
        let attr = PerfEventAttr {
            type_,
            size: PERF_ATTR_SIZE_VER0,
            config,
            read_format: READ_FORMAT,
            flags: FLAGS_USER_ONLY,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid `perf_event_attr` of the size its
        // `size` field gives, alive for the call, which only reads it; the
        // other arguments are plain integers (cpu -1: any CPU, group -1:
        // no group).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(HwError::Open {
                event,
                source: std::io::Error::last_os_error(),
            });
        }
        let fd = libc::c_int::try_from(fd).map_err(|_| HwError::Open {
            event,
            source: std::io::Error::other("the kernel returned no file descriptor"),
        })?;
        // SAFETY: the kernel just returned `fd`, a new file descriptor that
        // nothing else owns; `OwnedFd` closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Counter {
            event,
            file: File::from(fd),
        })
    }

    /// The count so far, scaled up when the kernel multiplexed the counter.
    fn read(&mut self) -> Result<u64, HwError> {
        let mut buf = [0u8; 24];
        self.file
            .read_exact(&mut buf)
            .map_err(|source| HwError::Read {
                event: self.event,
                source,
            })?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let (value, enabled, running) = (word(0), word(1), word(2));
        if running == 0 {
            return if enabled == 0 {
                Ok(0)
            } else {
                Err(HwError::NeverRan(self.event))
            };
        }
        if running >= enabled {
            return Ok(value);
        }
        Ok((u128::from(value) * u128::from(enabled) / u128::from(running)) as u64)
    }
}

/// Retired instructions and CPU cycles of one thread, user space only.
#[derive(Debug)]
pub struct HwCounters {
    instructions: Counter,
    cycles: Counter,
}

/// Counts read from [`HwCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HwReading {
    /// Retired instructions.
    pub instructions: u64,
    /// CPU cycles.
    pub cycles: u64,
}

impl HwReading {
    /// What was counted since `earlier` (saturating).
    pub fn since(&self, earlier: &HwReading) -> HwReading {
        HwReading {
            instructions: self.instructions.saturating_sub(earlier.instructions),
            cycles: self.cycles.saturating_sub(earlier.cycles),
        }
    }
}

impl HwCounters {
    /// Counters of thread `tid` (a Linux thread id, `gettid(2)`), or of
    /// the calling thread when `tid` is 0, counting from now.
    pub fn open(tid: libc::pid_t) -> Result<HwCounters, HwError> {
        Ok(HwCounters {
            instructions: Counter::open("instructions", TYPE_HARDWARE, HW_INSTRUCTIONS, tid)?,
            cycles: Counter::open("cycles", TYPE_HARDWARE, HW_CPU_CYCLES, tid)?,
        })
    }

    /// Counters of the calling thread.
    pub fn this_thread() -> Result<HwCounters, HwError> {
        HwCounters::open(0)
    }

    /// The counts so far.
    pub fn read(&mut self) -> Result<HwReading, HwError> {
        Ok(HwReading {
            instructions: self.instructions.read()?,
            cycles: self.cycles.read()?,
        })
    }
}

/// Whether this machine gives the calling thread hardware counters: `Ok`,
/// or the kernel's reason why not.
pub fn available() -> Result<(), HwError> {
    HwCounters::this_thread().map(drop)
}

/// Nanoseconds the calling thread ran, from the software task clock: the
/// same `perf_event_open` and `read` path as [`HwCounters`], on an event
/// every Linux has, so the tests exercise it on a machine without a PMU.
#[derive(Debug)]
pub struct TaskClock(Counter);

impl TaskClock {
    /// The calling thread's task clock, counting from now.
    pub fn this_thread() -> Result<TaskClock, HwError> {
        Counter::open("task-clock", TYPE_SOFTWARE, SW_TASK_CLOCK, 0).map(TaskClock)
    }

    /// Nanoseconds counted so far.
    pub fn read(&mut self) -> Result<u64, HwError> {
        self.0.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins about `n` iterations the optimiser cannot remove.
    fn spin(n: u64) -> u64 {
        let mut x = 0u64;
        for i in 0..n {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        x
    }

    #[test]
    fn the_task_clock_counts_this_threads_time() {
        // The open/read/scale path, on an event every kernel has (unless
        // perf_event_paranoid is 3 or more, or seccomp forbids the call:
        // then this fails, naming the reason).
        let mut clock = TaskClock::this_thread().expect("perf_event_open(task-clock)");
        let a = clock.read().unwrap();
        spin(5_000_000);
        let b = clock.read().unwrap();
        assert!(b > a, "task clock went from {a} to {b} ns");
    }

    #[test]
    fn hardware_counters_count_or_say_why_not() {
        // BENCH_HW_COUNTERS=present (bare metal) or absent (a VM without a
        // PMU, like this project's) makes the expectation explicit; unset,
        // either outcome is checked for what it must be.
        let expect = std::env::var("BENCH_HW_COUNTERS").ok();
        match HwCounters::this_thread() {
            Ok(mut c) => {
                assert_ne!(expect.as_deref(), Some("absent"), "counters opened");
                let a = c.read().unwrap();
                spin(1_000_000);
                let d = c.read().unwrap().since(&a);
                assert!(d.instructions >= 1_000_000, "{d:?}");
                assert!(d.cycles > 0, "{d:?}");
                eprintln!("hardware counters: {d:?} over 1 M iterations");
            }
            Err(e) => {
                assert_ne!(expect.as_deref(), Some("present"), "{e}");
                let text = e.to_string();
                assert!(
                    text.starts_with("perf_event_open(instructions): ")
                        && text.contains("os error"),
                    "{text}"
                );
                eprintln!("hardware counters: not available ({text})");
            }
        }
    }

    #[test]
    fn a_thread_that_does_not_exist_is_an_error() {
        // A pid beyond pid_max (at most 2^22), on the software event that
        // opens for this thread (the test above): the kernel's ESRCH.
        let e = Counter::open("task-clock", TYPE_SOFTWARE, SW_TASK_CLOCK, 1 << 30).unwrap_err();
        match e {
            HwError::Open { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ESRCH), "{source}")
            }
            other => panic!("{other}"),
        }
    }
}
