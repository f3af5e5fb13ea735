//! [`TunError`]: why the TUN device could not be opened, in words that
//! say what to change.

use std::io;
use std::net::Ipv4Addr;

/// Opening or configuring the TUN device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// The process may not open `/dev/net/tun` or create interfaces.
    #[error(
        "cannot open /dev/net/tun: permission denied; tun mode needs CAP_NET_ADMIN \
         (run as root, or use proxy mode)"
    )]
    PermissionDenied,
    /// No TUN driver or device node.
    #[error(
        "/dev/net/tun does not exist; load the driver (modprobe tun), create the node \
         (mknod /dev/net/tun c 10 200), or use proxy mode"
    )]
    NoTunDevice,
    /// Opening `/dev/net/tun` failed for another reason.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    /// The interface name is one the kernel refuses.
    #[error("invalid interface name {name:?}: {reason}; pick another name (or none)")]
    InvalidName {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The MTU is below IPv4's minimum.
    #[error("MTU {0} is too small; use at least 68 (1280 if IPv6 is carried)")]
    InvalidMtu(u16),
    /// The prefix length is not one of 1..=32.
    #[error("prefix length /{0} is out of range; use 1..=32 (e.g. 16 for 100.80.0.0/16)")]
    InvalidPrefixLen(u8),
    /// The address cannot be an interface's own.
    #[error("{0} cannot be the device's address; use a unicast address such as 100.80.0.1")]
    InvalidAddress(Ipv4Addr),
    /// Another process holds an interface of that name.
    #[error(
        "interface {0:?} is in use by another process (or is not a TUN device); \
         stop that process or pick another name"
    )]
    Busy(String),
    /// Creating the interface failed for another reason.
    #[error("cannot create TUN interface {name:?}: {source}")]
    Create {
        /// The name asked for.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A configuration step (MTU, address, netmask, link up) failed.
    #[error("cannot {step} on {name}: {source}; check that no other tool manages this interface")]
    Configure {
        /// The interface.
        name: String,
        /// What was being done, e.g. "set the MTU".
        step: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

impl TunError {
    /// Classifies an error from opening `/dev/net/tun`.
    pub(super) fn from_open(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied,
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => Self::NoTunDevice,
            _ => Self::Open(err),
        }
    }

    /// Classifies an error from `TUNSETIFF`.
    pub(super) fn from_create(name: &str, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied,
            Some(libc::EBUSY) => Self::Busy(name.to_owned()),
            _ => Self::Create {
                name: name.to_owned(),
                source: err,
            },
        }
    }

    /// Classifies an error from a configuration ioctl.
    pub(super) fn from_configure(name: &str, step: &'static str, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied,
            _ => Self::Configure {
                name: name.to_owned(),
                step,
                source: err,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn errors_say_what_to_do() {
        let denied = TunError::from_open(os(libc::EACCES)).to_string();
        assert!(
            denied.contains("CAP_NET_ADMIN") && denied.contains("proxy mode"),
            "{denied}"
        );
        let missing = TunError::from_open(os(libc::ENOENT)).to_string();
        assert!(missing.contains("modprobe tun"), "{missing}");
        assert!(matches!(
            TunError::from_create("ztna0", os(libc::EPERM)),
            TunError::PermissionDenied
        ));
        let busy = TunError::from_create("ztna0", os(libc::EBUSY)).to_string();
        assert!(
            busy.contains("\"ztna0\"") && busy.contains("pick another name"),
            "{busy}"
        );
        let step = TunError::from_configure("ztna0", "set the MTU", os(libc::EINVAL)).to_string();
        assert!(step.starts_with("cannot set the MTU on ztna0"), "{step}");
    }
}
