//! Socket addresses as the kernel lays them out (`sockaddr_in`,
//! `sockaddr_in6`), written and read as bytes.
//!
//! Send slots keep their destination inline in this form so a `msghdr` can
//! point at it; received source addresses come back in it. Parsing is plain
//! byte work and never panics on what the kernel (or a test) hands over.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for a `sockaddr_in6` (28 bytes) rounded up, so what follows a name
/// in a receive buffer stays 16-byte aligned.
pub(crate) const NAME_LEN: usize = 32;

const _: () = assert!(size_of::<libc::sockaddr_in6>() <= NAME_LEN);
const _: () = assert!(size_of::<libc::sockaddr_in>() == 16);

/// A socket address in kernel layout, aligned for `sockaddr_in6`.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawAddr {
    bytes: [u8; NAME_LEN],
}

impl RawAddr {
    /// An all-zero (unspecified family) address.
    pub(crate) const fn new() -> Self {
        Self {
            bytes: [0; NAME_LEN],
        }
    }

    /// Writes `addr` in kernel layout; returns the `msg_namelen` to use.
    pub(crate) fn encode(&mut self, addr: SocketAddr) -> u32 {
        let b = &mut self.bytes;
        b.fill(0);
        match addr {
            SocketAddr::V4(a) => {
                b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.ip().octets());
                size_of::<libc::sockaddr_in>() as u32
            }
            SocketAddr::V6(a) => {
                b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                // std keeps flowinfo as the raw `sin6_flowinfo` field value.
                b[4..8].copy_from_slice(&a.flowinfo().to_ne_bytes());
                b[8..24].copy_from_slice(&a.ip().octets());
                b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                size_of::<libc::sockaddr_in6>() as u32
            }
        }
    }

    /// The bytes, for the kernel to write into or for [`decode`].
    pub(crate) fn bytes(&self) -> &[u8; NAME_LEN] {
        &self.bytes
    }

    /// Pointer for `msg_name`.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.bytes.as_mut_ptr().cast()
    }
}

/// Reads a socket address from the first `len` bytes of `name` (as the
/// kernel returned them). `None` for anything but a complete IPv4 or IPv6
/// address.
pub(crate) fn decode(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if i32::from(family) == libc::AF_INET6 {
        let flow: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
        let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            u32::from_ne_bytes(flow),
            u32::from_ne_bytes(scope),
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        let addrs: [SocketAddr; 3] = [
            "127.0.0.1:4433".parse().unwrap(),
            "[::1]:9".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                65535,
                0x12345,
                7,
            )),
        ];
        for a in addrs {
            let mut raw = RawAddr::new();
            let len = raw.encode(a) as usize;
            assert_eq!(decode(&raw.bytes()[..len]), Some(a));
        }
    }

    #[test]
    fn matches_std_layout_via_socket2() {
        let a: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut raw = RawAddr::new();
        let len = raw.encode(a) as usize;
        let s2 = socket2::SockAddr::from(a);
        assert_eq!(len, s2.len() as usize);
        // SAFETY: `as_ptr` points at `len()` initialised bytes of storage.
        let theirs = unsafe { std::slice::from_raw_parts(s2.as_ptr().cast::<u8>(), len) };
        assert_eq!(&raw.bytes()[..len], theirs);
    }

    #[test]
    fn rejects_short_or_unknown() {
        let mut raw = RawAddr::new();
        let len = raw.encode("[::1]:1".parse().unwrap()) as usize;
        for cut in 0..len {
            assert_eq!(decode(&raw.bytes()[..cut]), None, "cut at {cut}");
        }
        let mut unix = [0u8; 16];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode(&unix), None);
    }
}
