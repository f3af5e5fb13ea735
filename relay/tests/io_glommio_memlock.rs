//! The glommio backend where it cannot start: with the locked-memory limit
//! below what glommio needs, `Io::new` says what to fix and `Io::start`
//! falls back. Its own test binary (one process): it lowers
//! `RLIMIT_MEMLOCK` for the whole process.

use std::net::SocketAddr;

use relay::io::{bind_socket, Backend, Io, IoConfig, IoError};

#[test]
fn too_little_locked_memory_is_a_typed_error_and_start_falls_back() {
    let lim = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both point at live locals; lowering the soft limit is always
    // allowed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old), 0);
        let lim = libc::rlimit {
            rlim_max: old.rlim_max,
            ..lim
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim), 0);
    }
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = IoConfig::default();
    let err = Io::new(Backend::Glommio, bind_socket(addr, &cfg).unwrap(), cfg).unwrap_err();
    assert!(matches!(err, IoError::GlommioUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("RLIMIT_MEMLOCK") && msg.contains("ulimit -l"),
        "{msg}"
    );
    let io = Io::start(Backend::Glommio, bind_socket(addr, &cfg).unwrap(), cfg).unwrap();
    assert_ne!(io.backend(), Backend::Glommio, "fell back");
    // With the limit back, it starts.
    // SAFETY: as above; raising back to the old soft limit (within the
    // hard one) is allowed.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &old), 0);
    }
    let io = Io::new(Backend::Glommio, bind_socket(addr, &cfg).unwrap(), cfg).unwrap();
    assert_eq!(io.backend(), Backend::Glommio);
}
