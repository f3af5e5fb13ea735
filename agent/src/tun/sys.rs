//! The ioctls that make and configure a TUN interface: the only unsafe
//! code of the TUN device. Reads and writes go through `std::fs::File`.

use std::ffi::c_char;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The clone device every TUN interface is made from.
pub const CLONE_DEVICE: &str = "/dev/net/tun";

/// Opens the clone device, nonblocking and close-on-exec.
pub fn open_clone_device() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(CLONE_DEVICE)
}

/// An `ifreq` naming `name` (at most `IFNAMSIZ - 1` bytes, checked by the
/// caller; longer names are cut), everything else zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a char array and a union of
    // integers, sockaddrs and a pointer); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes())
        .take(libc::IFNAMSIZ - 1)
    {
        *dst = src as c_char;
    }
    req
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Issues `request` with a pointer to `req`.
///
/// # Safety
///
/// `request` must be an ioctl that reads and/or writes at most one
/// `libc::ifreq` through its argument and keeps no pointer to it.
unsafe fn ioctl_ifreq(
    fd: &impl AsRawFd,
    request: libc::Ioctl,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: `req` is a live, exclusive ifreq for the duration of the
    // call; the caller guarantees the request touches nothing more.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETIFF`: turns the clone-device fd into interface `name` (empty:
/// the kernel picks `tunN`) with `flags` (`IFF_TUN | IFF_NO_PI`, …);
/// returns the interface's name.
pub fn set_iff(tun: &File, name: &str, flags: libc::c_int) -> io::Result<String> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes back one ifreq.
    unsafe { ioctl_ifreq(tun, libc::TUNSETIFF, &mut req) }?;
    Ok(name_of(&req))
}

/// `TUNSETOFFLOAD`: the offloads (`TUN_F_*`) this reader can take.
pub fn set_offload(tun: &File, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no
    // memory of ours.
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An `AF_INET` datagram socket: the handle for interface ioctls.
#[derive(Debug)]
pub struct ControlSocket(OwnedFd);

impl ControlSocket {
    /// Opens one in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by no
        // one else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `SIOCSIFMTU`.
    pub fn set_mtu(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        // SAFETY: SIOCSIFMTU reads one ifreq.
        unsafe { ioctl_ifreq(&self.0, libc::SIOCSIFMTU, &mut req) }
    }

    /// `SIOCSIFADDR`.
    pub fn set_address(&self, name: &str, addr: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        // SAFETY: SIOCSIFADDR reads one ifreq.
        unsafe { ioctl_ifreq(&self.0, libc::SIOCSIFADDR, &mut req) }
    }

    /// `SIOCSIFNETMASK`.
    pub fn set_netmask(&self, name: &str, mask: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        // SAFETY: SIOCSIFNETMASK reads one ifreq.
        unsafe { ioctl_ifreq(&self.0, libc::SIOCSIFNETMASK, &mut req) }
    }

    /// `SIOCGIFFLAGS` then `SIOCSIFFLAGS` with `IFF_UP | IFF_RUNNING` added.
    pub fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = ifreq(name);
        // SAFETY: SIOCGIFFLAGS writes one ifreq.
        unsafe { ioctl_ifreq(&self.0, libc::SIOCGIFFLAGS, &mut req) }?;
        // SAFETY: SIOCGIFFLAGS just stored the flags in this union member.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one ifreq.
        unsafe { ioctl_ifreq(&self.0, libc::SIOCSIFFLAGS, &mut req) }
    }
}

/// A `sockaddr_in` for `addr` (port 0) in `sockaddr` clothing, laid out by
/// hand: family, then port and address in `sa_data`.
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (dst, &src) in sa_data[2..6].iter_mut().zip(&addr.octets()) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_name_round_trip_and_cut() {
        assert_eq!(name_of(&ifreq("ztna0")), "ztna0");
        assert_eq!(name_of(&ifreq("")), "");
        assert_eq!(
            name_of(&ifreq("a-name-much-too-long")).len(),
            libc::IFNAMSIZ - 1
        );
    }

    #[test]
    fn sockaddr_layout_matches_sockaddr_in() {
        let sa = sockaddr_in(Ipv4Addr::new(100, 80, 0, 1));
        assert_eq!(
            std::mem::size_of::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>()
        );
        // SAFETY: both are 16-byte plain-old-data structs (checked above).
        let sin: libc::sockaddr_in = unsafe { std::mem::transmute(sa) };
        assert_eq!(i32::from(sin.sin_family), libc::AF_INET);
        assert_eq!(sin.sin_port, 0);
        assert_eq!(
            u32::from_be(sin.sin_addr.s_addr),
            u32::from(Ipv4Addr::new(100, 80, 0, 1))
        );
    }
}
