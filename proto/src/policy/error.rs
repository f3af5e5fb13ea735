//! Why a policy file was rejected.
//!
//! Every variant names the entry at fault (by name, id or rule position) and
//! says what to change, because the reader is an operator whose hot reload was
//! just refused and who wants to fix the file, not read the source.

use core::fmt;

/// Where in the file a bad reference was found.
///
/// Rules have no mandatory name, so they are named by their position: the
/// first `[[rules]]` entry is rule #1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A `[[users]]` entry, by name.
    User(String),
    /// A `[[services]]` entry, by name.
    Service(String),
    /// A `[[rules]]` entry: its 1-based position and its optional name.
    Rule {
        /// 1-based position among the `[[rules]]` entries.
        number: usize,
        /// The rule's `name`, when it has one.
        name: Option<String>,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::User(name) => write!(f, "user {name:?}"),
            Location::Service(name) => write!(f, "service {name:?}"),
            Location::Rule { number, name: None } => write!(f, "rule #{number}"),
            Location::Rule {
                number,
                name: Some(name),
            } => write!(f, "rule #{number} ({name:?})"),
        }
    }
}

/// The kind of entry a duplicate or unknown reference is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// `[[users]]`
    User,
    /// `[[groups]]`
    Group,
    /// `[[connectors]]`
    Connector,
    /// `[[services]]`
    Service,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::User => "user",
            EntryKind::Group => "group",
            EntryKind::Connector => "connector",
            EntryKind::Service => "service",
        })
    }
}

/// A policy file that cannot be loaded. The last good policy stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is not valid TOML, or does not have the policy's shape (a
    /// misspelt key, a string where a number belongs). The message is the
    /// `toml` crate's, with line and column.
    #[error("policy file could not be parsed: {0}")]
    Syntax(String),

    /// Two entries of one kind share an id. Ids are what frames carry, so
    /// each must name exactly one entry.
    #[error(
        "{kind} id {id} is used by both {first:?} and {second:?}: give one of them another id"
    )]
    DuplicateId {
        /// Which kind of entry.
        kind: EntryKind,
        /// The shared id.
        id: u32,
        /// Name of the entry that came first in the file.
        first: String,
        /// Name of the entry that came second.
        second: String,
    },

    /// Two entries of one kind share a name. Rules refer to entries by name,
    /// so a shared name would be ambiguous.
    #[error(
        "{kind} name {name:?} is used by two entries ({first} and {second}): rename one of them"
    )]
    DuplicateName {
        /// Which kind of entry.
        kind: EntryKind,
        /// The shared name.
        name: String,
        /// The first entry, described by its id (or position for groups).
        first: String,
        /// The second entry.
        second: String,
    },

    /// A name that no entry of the expected kind has.
    #[error("{at} refers to {kind} {name:?}, which is not defined: add a [[{kind}s]] entry named {name:?} or fix the spelling")]
    Unknown {
        /// Where the reference is.
        at: Location,
        /// What kind of entry was expected.
        kind: EntryKind,
        /// The name that matched nothing.
        name: String,
    },

    /// A service nobody can serve: frames to it could never be delivered.
    #[error("service {service:?} lists no connectors: add at least one connector name to its `connectors`")]
    NoConnectors {
        /// The service's name.
        service: String,
    },

    /// A service target that is not `host:port`.
    #[error("service {service:?} has target {target:?}, which is not a valid \"host:port\" address: {reason}")]
    BadTarget {
        /// The service's name.
        service: String,
        /// The target as written.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A rule that would grant nothing: it needs a subject and a service.
    #[error("{at} {reason}: every rule needs at least one entry in `groups` or `users`, and at least one in `services`")]
    EmptyRule {
        /// The rule.
        at: Location,
        /// What is missing, as a phrase ("has no subjects", "has no services").
        reason: &'static str,
    },

    /// The compiled table indexes its arrays with `u32`; this policy needs
    /// more entries than that.
    #[error("the policy is too large to compile: {what} exceed 2^32 - 2 entries; reduce group memberships per user or split the policy")]
    TooLarge {
        /// Which table overflowed.
        what: &'static str,
    },

    /// A `[[revoked]]` entry whose key is not 64 hex digits.
    #[error("[[revoked]] entry #{number} has key {key:?}, which is not a static key: give the 64 hex digits `relay ca show` prints as \"static key\"")]
    BadRevokedKey {
        /// 1-based position among the `[[revoked]]` entries.
        number: usize,
        /// The key as written.
        key: String,
    },

    /// A `[[connectors]]` entry whose `static_key` is not 64 hex digits.
    #[error("[[connectors]] entry #{number} ({name:?}) has static_key {key:?}, which is not a static key: give the 64 hex digits `relay ca show` prints as \"static key\" for the connector's certificate, or leave static_key out")]
    BadConnectorKey {
        /// 1-based position among the `[[connectors]]` entries.
        number: usize,
        /// The connector's name.
        name: String,
        /// The key as written.
        key: String,
    },

    /// A `[[users]]` entry with a `static_keys` entry that is not 64 hex
    /// digits.
    #[error("[[users]] entry #{number} ({name:?}) has {key:?} in static_keys, which is not a static key: give the 64 hex digits `relay ca show` prints as \"static key\" for each of the user's certificates, or leave static_keys out")]
    BadUserKey {
        /// 1-based position among the `[[users]]` entries.
        number: usize,
        /// The user's name.
        name: String,
        /// The key as written.
        key: String,
    },

    /// A `[[users]]` entry with `static_keys = []`: pinned to no key, it
    /// could never connect.
    #[error("[[users]] entry #{number} ({name:?}) has an empty static_keys list, which no certificate could satisfy: list the static key of each of the user's certificates, leave static_keys out to accept any certificate of the user's id, or remove the user to lock it out")]
    EmptyUserKeys {
        /// 1-based position among the `[[users]]` entries.
        number: usize,
        /// The user's name.
        name: String,
    },

    /// A name that cannot be used as a label.
    #[error("{kind} entry #{number} has name {name:?}, which is not allowed: {reason}")]
    BadName {
        /// Which kind of entry.
        kind: EntryKind,
        /// 1-based position among the entries of that kind.
        number: usize,
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl From<toml::de::Error> for PolicyError {
    fn from(e: toml::de::Error) -> Self {
        // Keep the toml crate's rendering: it quotes the line and points at
        // the column, which is what an operator needs.
        PolicyError::Syntax(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_entry_and_the_fix() {
        let e = PolicyError::Unknown {
            at: Location::Rule {
                number: 3,
                name: Some("db".into()),
            },
            kind: EntryKind::Group,
            name: "engneering".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("rule #3 (\"db\")"), "{msg}");
        assert!(msg.contains("\"engneering\""), "{msg}");
        assert!(msg.contains("[[groups]]"), "{msg}");

        let e = PolicyError::DuplicateId {
            kind: EntryKind::User,
            id: 7,
            first: "alice".into(),
            second: "bob".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("alice") && msg.contains("bob") && msg.contains("7"),
            "{msg}"
        );
    }
}
