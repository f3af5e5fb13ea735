//! [`TunConfig`]: what the TUN device is asked to be, checked before any
//! system call so mistakes get a precise message.

use super::TunError;
use std::net::Ipv4Addr;

/// The smallest MTU IPv4 allows (RFC 791).
pub const MIN_MTU: u16 = 68;

/// How to open the client's TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name, e.g. `ztna0`; empty lets the kernel pick (`tunN`).
    pub name: String,
    /// The interface MTU: the longest IP packet read or written.
    pub mtu: u16,
    /// The device's own address, e.g. 100.80.0.1.
    pub address: Ipv4Addr,
    /// The prefix routed into the device, e.g. 16 for 100.80.0.0/16.
    pub prefix_len: u8,
    /// Try `IFF_VNET_HDR` with TSO and checksum offload; falls back to plain
    /// reads when the kernel refuses (see `TunDevice::offload_enabled`).
    pub offload: bool,
}

impl Default for TunConfig {
    /// `ztna0`, MTU 1400, 100.80.0.1/16, offload on.
    fn default() -> Self {
        Self {
            name: "ztna0".into(),
            mtu: 1400,
            address: Ipv4Addr::new(100, 80, 0, 1),
            prefix_len: 16,
            offload: true,
        }
    }
}

impl TunConfig {
    /// Checks every field; the error says which and how to fix it.
    pub fn validate(&self) -> Result<(), TunError> {
        validate_name(&self.name)?;
        if self.mtu < MIN_MTU {
            return Err(TunError::InvalidMtu(self.mtu));
        }
        if !(1..=32).contains(&self.prefix_len) {
            return Err(TunError::InvalidPrefixLen(self.prefix_len));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
            return Err(TunError::InvalidAddress(a));
        }
        Ok(())
    }

    /// The netmask for [`prefix_len`](Self::prefix_len) (which
    /// [`validate`](Self::validate) keeps in 1..=32).
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
    }
}

/// The kernel's `dev_valid_name`: at most 15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace. Empty is allowed here (the kernel picks).
fn validate_name(name: &str) -> Result<(), TunError> {
    let invalid = |reason: &'static str| TunError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("`.` and `..` are not interface names"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(invalid("contains `/`, `:`, NUL or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        TunConfig::default().validate().unwrap();
        assert_eq!(
            TunConfig::default().netmask(),
            Ipv4Addr::new(255, 255, 0, 0)
        );
    }

    #[test]
    fn netmasks() {
        let mut c = TunConfig::default();
        for (len, mask) in [
            (1, [128, 0, 0, 0]),
            (24, [255, 255, 255, 0]),
            (32, [255; 4]),
        ] {
            c.prefix_len = len;
            assert_eq!(c.netmask(), Ipv4Addr::from(mask));
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let ok = TunConfig::default();
        let cases = [
            TunConfig {
                name: "much-too-long-name".into(),
                ..ok.clone()
            },
            TunConfig {
                name: "a b".into(),
                ..ok.clone()
            },
            TunConfig {
                name: "..".into(),
                ..ok.clone()
            },
            TunConfig {
                mtu: 67,
                ..ok.clone()
            },
            TunConfig {
                prefix_len: 0,
                ..ok.clone()
            },
            TunConfig {
                prefix_len: 33,
                ..ok.clone()
            },
            TunConfig {
                address: Ipv4Addr::UNSPECIFIED,
                ..ok.clone()
            },
            TunConfig {
                address: Ipv4Addr::new(224, 0, 0, 1),
                ..ok.clone()
            },
        ];
        for c in cases {
            let err = c.validate().expect_err("invalid");
            let msg = err.to_string();
            assert!(msg.contains("use") || msg.contains("pick"), "{msg}");
        }
        TunConfig {
            name: String::new(),
            ..ok
        }
        .validate()
        .unwrap();
    }
}
