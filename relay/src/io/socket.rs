//! Creating a worker's UDP socket.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::cmsg::UDP_GRO;
use super::config::IoConfig;
use super::error::IoError;

/// Socket buffer size asked for: deep enough to absorb a burst while a
/// worker handles the previous batch.
const SOCKET_BUFFER: usize = 8 << 20;
/// `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE` (asm-generic values; not exported by
/// the libc crate for glibc targets). They bypass `net.core.[rw]mem_max`
/// with `CAP_NET_ADMIN`.
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Binds a nonblocking UDP socket for one worker: `SO_REUSEPORT` so N
/// workers share the port, 8 MiB socket buffers (forced past the sysctl
/// limits when the process may), and `UDP_GRO` when `cfg.gro`. Logs the
/// effective buffer sizes.
pub fn bind_socket(addr: SocketAddr, cfg: &IoConfig) -> Result<UdpSocket, IoError> {
    let bind_err = |source| IoError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    socket
        .set_reuse_port(true)
        .map_err(|source| IoError::SocketOption {
            option: "SO_REUSEPORT",
            source,
        })?;
    let fd = socket.as_raw_fd();
    // Plain first (capped by the sysctl), then forced (needs CAP_NET_ADMIN):
    // whichever works last wins, and failures only leave a smaller buffer.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = set_int(
        fd,
        libc::SOL_SOCKET,
        SO_RCVBUFFORCE,
        SOCKET_BUFFER as libc::c_int,
    );
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = set_int(
        fd,
        libc::SOL_SOCKET,
        SO_SNDBUFFORCE,
        SOCKET_BUFFER as libc::c_int,
    );
    if cfg.gro {
        set_int(fd, libc::SOL_UDP, UDP_GRO, 1).map_err(|source| IoError::SocketOption {
            option: "UDP_GRO (needs Linux 5.0; or set gro = false)",
            source,
        })?;
    }
    set_nonblocking(&socket)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    let rcvbuf = socket.recv_buffer_size().unwrap_or(0);
    let sndbuf = socket.send_buffer_size().unwrap_or(0);
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    tracing::info!(?local, rcvbuf, sndbuf, gro = cfg.gro, "UDP socket bound");
    if rcvbuf < SOCKET_BUFFER {
        tracing::debug!(
            rcvbuf,
            "receive buffer below 8 MiB: raise net.core.rmem_max or grant CAP_NET_ADMIN"
        );
    }
    Ok(socket.into())
}

/// Puts a socket in non-blocking mode: every backend polls, none may block
/// in a receive or send.
pub(crate) fn set_nonblocking(socket: &impl AsFd) -> Result<(), IoError> {
    let socket = socket2::SockRef::from(socket);
    socket
        .set_nonblocking(true)
        .map_err(|source| IoError::SocketOption {
            option: "O_NONBLOCK",
            source,
        })
}

/// `setsockopt` with an `int` value.
pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live int and the length passed is its size; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_share_a_port_with_reuseport() {
        let cfg = IoConfig::default();
        let a = bind_socket("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
        let port = a.local_addr().unwrap();
        let b = bind_socket(port, &cfg).unwrap();
        assert_eq!(b.local_addr().unwrap(), port);
    }

    #[test]
    fn bind_error_names_the_address() {
        // An address not on this host.
        let addr: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let err = bind_socket(addr, &IoConfig::default()).unwrap_err();
        assert!(err.to_string().contains("192.0.2.1:9"), "{err}");
    }
}
