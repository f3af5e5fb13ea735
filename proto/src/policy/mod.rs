//! The access policy: which users, directly or through groups, may reach
//! which services.
//!
//! * [`model`]: the TOML file as written ([`PolicyFile`]).
//! * [`compile()`]: validation (errors in [`PolicyError`] name the entry and
//!   the fix) and compilation into a [`CompiledPolicy`], the immutable table
//!   the datapath asks [`CompiledPolicy::allowed`] per packet, and the
//!   relay's control thread asks [`CompiledPolicy::connection_mode`] for
//!   each user's directory ([`crate::control`]).
//! * [`synth`]: deterministic synthetic policies for tests, benches and the
//!   load generator.
//!
//! Hot reload is: read the file, [`PolicyFile::from_toml_str`], [`compile()`],
//! then swap the pointer the workers read. Any error leaves the previous
//! policy in force. Nothing here panics on any input; the `policy_parse`
//! fuzz target checks that.

mod compile;
mod error;
pub mod model;
pub mod synth;
mod table;
mod validate;

pub use compile::{
    compile, CompiledPolicy, Layout, PeerVerdict, PolicyStats, ServiceInfo, FLAT_ALWAYS_ENTRIES,
};
pub use error::{EntryKind, Location, PolicyError};
pub use model::{Connector, Group, PolicyFile, Protocol, Revoked, Rule, Service, User};
