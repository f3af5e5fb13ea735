//! The client's `tun` mode: a Linux TUN interface that the agent reads IP
//! packets from and writes them into.
//!
//! [`TunDevice::open`] makes and configures the interface with ioctls (no
//! `ip` command); reads and writes are nonblocking and batched through a
//! [`PacketBatch`]. With [`TunConfig::offload`], the device is opened with
//! `IFF_VNET_HDR` and TSO/checksum offload, as wireguard-go does: the
//! kernel then hands over TCP super-packets of up to 64 KiB, one system
//! call for up to ~45 segments, cut into MTU-sized packets in user space
//! ([`offload`], no I/O, tested without a kernel).
//!
//! Files: `config` (what to open), `error`, `device` (the I/O), `sys` (the
//! ioctls, the only unsafe code), `batch`, `vnet` (the virtio header),
//! `offload` (segmentation), `checksum`.

mod batch;
pub mod checksum;
mod config;
mod device;
mod error;
pub mod gro;
pub mod offload;
mod sys;
#[cfg(test)]
mod test_packets;
pub mod vnet;

pub use batch::{Iter, PacketBatch, PushError};
pub use config::{TunConfig, MIN_MTU};
pub use device::{TunDevice, TunStats};
pub use error::TunError;
