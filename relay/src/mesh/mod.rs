//! The mesh's control plane: membership and service reachability in etcd.
//!
//! - [`registry`]: this relay's record and the services its connectors
//!   serve, under a lease it keeps alive (the key schema is documented
//!   there).
//! - [`view`]: a [`view::MeshView`] of every live relay and what it
//!   reaches, kept current by a prefix watch, resumed after outages.
//! - [`etcd`]: the small client both use.
//! - [`etcd_server`]: a throwaway etcd process for tests.
//! - [`paths`]: shortest paths over the links relays publish.
//!
//! The control thread (`control/links.rs`) holds the links and turns each
//! view into routes.
//!
//! # Why etcd's JSON gateway and not the `etcd-client` crate
//!
//! `etcd-client` is the maintained gRPC client, but its build script runs
//! `tonic_build` on etcd's `.proto` files, which needs the `protoc` binary
//! at build time (not in a fresh Rust toolchain, and not something
//! `scripts/setup.sh` should have to install for a relay that never uses
//! etcd), and it brings tokio, tonic, hyper, tower, h2 and prost (tens of
//! crates) into a relay whose control plane is plain synchronous threads.
//! The v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`, `/v3/watch`), served by
//! etcd >= 3.4 on its client URL, offers exactly the calls the mesh needs
//! over HTTP/1.1; [`etcd::Etcd`] speaks it in ~500 lines with `std`
//! sockets, `serde_json` and `base64`, both already in the dependency tree
//! (no new crate in `Cargo.lock`). Each of [`registry`] and [`view`] runs
//! on a thread of its own, blocking calls with timeouts: never on a
//! worker. What the gateway costs: JSON and base64 on every call, and one
//! TCP connection per unary call; at a keep-alive every TTL/3 and a write
//! per connector change that is noise. No TLS: a deployment with a remote
//! etcd puts a local TLS proxy (or etcd's own gRPC proxy) next to the
//! relay.

pub mod etcd;
pub mod etcd_server;
pub mod paths;
pub mod registry;
pub mod view;
