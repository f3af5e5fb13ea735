//! The relay: thread-per-core workers forwarding frames between hop
//! sessions, checking each against the policy, and a control thread for
//! handshakes and policy reloads. The per-frame logic is `proto`'s; this
//! crate moves bytes.

pub mod io;
