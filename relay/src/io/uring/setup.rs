//! Building the ring and finding out what the kernel supports.
//!
//! The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel
//! allows (completions are then produced only while this thread waits in
//! `io_uring_enter`, so receives batch up naturally), else with fewer
//! flags. `TASKRUN_FLAG` goes with either task-run mode: the kernel then
//! raises `IORING_SQ_TASKRUN` in the ring's shared memory when work for
//! this thread is pending, which busy polling reads instead of entering
//! the kernel to find out. Every refusal becomes an [`IoError`] that says what is missing
//! and on which kernel it appeared, so `Io::start` can fall back to `mmsg`
//! and say why.

use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, types, IoUring};

use super::buf_ring::{BufRing, BGID};
use super::token::Token;
use crate::io::cmsg::CONTROL_LEN;
use crate::io::config::IoConfig;
use crate::io::error::{errno_of, IoError};
use crate::io::limits::MAX_GSO_SEGMENTS;
use crate::io::sockaddr::NAME_LEN;

/// Submission queue entries: sends are pushed in a batch, submitting early
/// only when this fills.
const SQ_ENTRIES: u32 = 256;
/// Size of `struct io_uring_recvmsg_out` (four `u32`s).
const HEADER: usize = 16;
/// Bytes in front of the payload in a provided buffer: the kernel's
/// `io_uring_recvmsg_out` header, then the name and control areas sized by
/// the receive `msghdr`.
const RECV_HEADROOM: usize = HEADER + NAME_LEN + CONTROL_LEN;

/// What a backend of a given configuration allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Bytes per receive buffer: headroom plus `buffer_size`, in whole
    /// cache lines.
    pub(crate) stride: usize,
    /// Send slots: one per group a poll can make from every buffer at
    /// once (a group per datagram at worst).
    pub(crate) slots: usize,
    /// Completion queue entries: every slot and buffer, and some room.
    pub(crate) cq_entries: u32,
}

impl Sizes {
    /// The sizes for `cfg`.
    pub(crate) fn new(cfg: &IoConfig) -> Self {
        let stride = (cfg.buffer_size + RECV_HEADROOM).next_multiple_of(64);
        let per_buffer = if cfg.gro { MAX_GSO_SEGMENTS } else { 1 };
        let slots = cfg.buffers * per_buffer;
        let cq_entries = (slots + cfg.buffers + 64)
            .next_power_of_two()
            .clamp(1024, 65_536) as u32;
        Self {
            stride,
            slots,
            cq_entries,
        }
    }
}

/// The receive `msghdr` template: only its name and control lengths
/// matter to the kernel, which lays out every provided buffer by them.
pub(crate) fn recv_template() -> Box<libc::msghdr> {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    hdr.msg_controllen = CONTROL_LEN as _;
    hdr
}

/// Sets some ring setup flags on a builder.
type SetFlags = fn(&mut io_uring::Builder);

/// Builds the ring with the best flags the kernel accepts; returns them by
/// name, for the log.
pub(crate) fn make_ring(cq_entries: u32) -> Result<(IoUring, &'static str), IoError> {
    let attempts: [(&'static str, SetFlags); 3] = [
        ("SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        }),
        ("COOP_TASKRUN|TASKRUN_FLAG", |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("none", |_| {}),
    ];
    let mut first_err = None;
    for (name, set) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries);
        set(&mut b);
        match b.build(SQ_ENTRIES) {
            Ok(ring) => {
                if let Some(e) = &first_err {
                    tracing::warn!(
                        flags = name,
                        "io_uring refused SINGLE_ISSUER|DEFER_TASKRUN ({e}); running with fewer flags (slower)"
                    );
                }
                return Ok((ring, name));
            }
            Err(e) => {
                // Refusals that no flag combination fixes.
                if matches!(
                    errno_of(&e),
                    libc::EPERM | libc::ENOSYS | libc::EACCES | libc::ENOMEM
                ) {
                    return Err(unavailable(e));
                }
                first_err.get_or_insert(e);
            }
        }
    }
    Err(unavailable(first_err.unwrap_or_else(|| {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

/// Timed waits (`IORING_FEAT_EXT_ARG`) are what `poll` waits with.
pub(crate) fn require_ext_arg(ring: &IoUring) -> Result<(), IoError> {
    if ring.params().is_feature_ext_arg() {
        Ok(())
    } else {
        Err(IoError::UringFeature {
            feature: "IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })
    }
}

/// Registers `bufs` as provided-buffer group [`BGID`].
///
/// # Safety
///
/// `bufs` must stay allocated until the kernel is done with it: the ring
/// is unregistered or dropped, and no receive is armed.
pub(crate) unsafe fn register_buf_ring(ring: &IoUring, bufs: &BufRing) -> Result<(), IoError> {
    // SAFETY: the ring memory is page aligned and holds `entries` entries
    // (`BufRing::new`); it outlives the registration per this function's
    // contract.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), bufs.entries(), BGID, 0)
    }
    .map_err(|source| IoError::UringFeature {
        feature: "provided buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19)",
        source,
    })
}

/// The multishot receive on `fd` into the provided buffers, tagged `token`.
pub(crate) fn recv_multi(
    fd: RawFd,
    template: *const libc::msghdr,
    token: Token,
) -> io_uring::squeue::Entry {
    opcode::RecvMsgMulti::new(types::Fd(fd), template, BGID)
        .build()
        .user_data(token.encode())
}

/// Arms the multishot receive on `fd` and checks the kernel took it:
/// kernels before 6.0 fail multishot `RecvMsg` with `EINVAL` right away.
/// Returns any real completion already there, to be handled first.
///
/// # Safety
///
/// `template` and the registered buffers must stay valid until the
/// receive's last completion is reaped.
pub(crate) unsafe fn probe_receive(
    ring: &mut IoUring,
    fd: RawFd,
    template: *const libc::msghdr,
) -> Result<Option<cqueue::Entry>, IoError> {
    let sqe = recv_multi(fd, template, Token::Recv);
    // SAFETY: the entry points at `template` and the registered buffers,
    // valid per this function's contract.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| IoError::Sys {
        op: "io_uring submission",
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    })?;
    let ts = types::Timespec::new();
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if matches!(errno_of(&e), libc::ETIME | libc::EINTR) => {}
        Err(source) => {
            return Err(IoError::Sys {
                op: "io_uring_enter",
                source,
            })
        }
    }
    let Some(cqe) = ring.completion().next() else {
        return Ok(None);
    };
    let res = cqe.result();
    if res < 0 && !cqueue::more(cqe.flags()) && res != -libc::ENOBUFS {
        return Err(IoError::UringFeature {
            feature: "multishot RecvMsg with provided buffers (Linux 6.0)",
            source: std::io::Error::from_raw_os_error(-res),
        });
    }
    Ok(Some(cqe))
}

/// The error for a ring the kernel will not build, with the likely cause.
fn unavailable(source: std::io::Error) -> IoError {
    let hint = match errno_of(&source) {
        libc::EPERM | libc::EACCES => {
            "blocked by a seccomp profile (containers) or the kernel.io_uring_disabled sysctl"
        }
        libc::ENOSYS => "kernel built without io_uring, or a seccomp filter hides it",
        libc::ENOMEM => "locked-memory limit too low (raise RLIMIT_MEMLOCK / LimitMEMLOCK)",
        _ => "kernel too old for the ring setup flags used",
    };
    IoError::UringUnavailable { source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_config() {
        let cfg = IoConfig::default();
        let s = Sizes::new(&cfg);
        assert_eq!(s.stride % 64, 0);
        assert!(s.stride >= cfg.buffer_size + RECV_HEADROOM);
        assert!(s.stride < cfg.buffer_size + RECV_HEADROOM + 64);
        assert_eq!(s.slots, cfg.buffers * MAX_GSO_SEGMENTS);
        assert!(s.cq_entries.is_power_of_two());
        assert!(s.cq_entries as usize >= s.slots + cfg.buffers);

        let no_gro = IoConfig {
            gro: false,
            buffers: 2,
            ..cfg
        };
        let s = Sizes::new(&no_gro);
        assert_eq!((s.slots, s.cq_entries), (2, 1024));
    }

    // `msg_controllen` is `size_t` on glibc, `socklen_t` on musl.
    #[allow(clippy::unnecessary_cast)]
    #[test]
    fn template_sizes_the_name_and_control_areas() {
        let t = recv_template();
        assert_eq!(t.msg_namelen as usize, NAME_LEN);
        assert_eq!(t.msg_controllen as usize, CONTROL_LEN);
        assert!(t.msg_name.is_null() && t.msg_control.is_null());
    }

    #[test]
    fn refusals_say_what_to_fix() {
        for (errno, hint) in [
            (libc::EPERM, "seccomp"),
            (libc::EACCES, "io_uring_disabled"),
            (libc::ENOSYS, "without io_uring"),
            (libc::ENOMEM, "RLIMIT_MEMLOCK"),
            (libc::EINVAL, "too old"),
        ] {
            let e = unavailable(std::io::Error::from_raw_os_error(errno));
            let text = e.to_string();
            assert!(text.contains(hint), "{errno}: {text}");
            assert!(text.contains("--io mmsg"), "{text}");
        }
    }

    /// With a kernel: a ring is built (or refused with a reason), and a
    /// buffer ring registers on it.
    #[test]
    fn ring_builds_and_takes_a_buffer_ring() {
        let (ring, flags) = match make_ring(1024) {
            Ok(r) => r,
            Err(e) if std::env::var("ZTNA_SKIP_URING").as_deref() == Ok("1") => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("{e}\n(set ZTNA_SKIP_URING=1 on hosts that block io_uring)"),
        };
        assert!(!flags.is_empty());
        let bufs = BufRing::new(4, 4096).unwrap();
        // SAFETY: no receive is ever armed, and the buffer ring is
        // unregistered just below, before `bufs` is dropped.
        unsafe { register_buf_ring(&ring, &bufs) }.unwrap();
        ring.submitter().unregister_buf_ring(BGID).unwrap();
    }
}
