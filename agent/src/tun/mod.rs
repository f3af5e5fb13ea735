//! The client's `tun` mode: a Linux TUN interface that the agent reads IP
//! packets from and writes them into.
//!
//! This part holds no I/O: the [`PacketBatch`] that reads fill, the
//! `virtio_net_hdr` ([`vnet`]), and the cutting of TCP super-packets into
//! MTU-sized segments ([`offload`]) with its [`checksum`] math.

mod batch;
pub mod checksum;
pub mod offload;
pub mod vnet;

pub use batch::{Iter, PacketBatch, PushError};
