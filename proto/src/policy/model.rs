//! The policy as written: the serde model of the TOML file.
//!
//! This is the operator's view (names, lists, references by name). It is
//! checked and turned into the lookup table by
//! [`super::compile`]; nothing on the packet path reads it.

use serde::{Deserialize, Serialize};

use super::error::PolicyError;
use crate::control::ConnectionMode;
use crate::ids::{GroupId, ServiceId, UserId};

/// Longest name accepted for any entry, in bytes. Names end up in logs and
/// metrics labels; a bound keeps a malformed file from bloating both.
pub const MAX_NAME_LEN: usize = 256;

/// The service name that, in a rule's `services`, means "every service".
pub const ALL_SERVICES: &str = "*";

/// A whole policy file.
///
/// Every table rejects unknown keys, so a misspelt key (`grups = [...]`) is an
/// error with a line number instead of a silently empty rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `[[users]]`: who may ask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// `[[groups]]`: named sets of users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// `[[connectors]]`: agents in the connector role that expose services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<Connector>,
    /// `[[services]]`: what may be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// `[[rules]]`: allow-only grants from users and groups to services.
    /// Anything not granted is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// `[[revoked]]`: certificates no longer trusted, whatever their
    /// expiry, named by the static key they certify (`relay ca revoke`
    /// adds entries). Relays refuse their handshakes and close their
    /// sessions; connectors refuse and close their end-to-end sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<Revoked>,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The certificate's static key, 64 hex digits (`relay ca show`
    /// prints it as "static key").
    pub key: String,
    /// Why, for the operator and the logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// One user, as named in their identity certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The id frames carry as their source.
    pub id: UserId,
    /// Unique name, used by rules and audit logs.
    pub name: String,
    /// Names of the groups this user belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The X25519 static keys of the user's certificates, 64 hex digits
    /// each (`relay ca show` prints them as "static key"), if pinned: one
    /// per device the user holds a certificate on. Relays then refuse hop
    /// handshakes from user certificates of this id that certify any other
    /// key, and close such sessions at the reload that drops their key
    /// from the list. Unset: any CA-signed certificate of this id is
    /// accepted. An empty list is an error (remove the user instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_keys: Option<Vec<String>>,
}

/// A named group of users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique name, used by users and rules.
    pub name: String,
    /// Stable id, for certificates that carry groups. Assigned at compile
    /// time when absent (the smallest ids no other group uses, in file order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<GroupId>,
    /// How the agents of its members run: `"off"`, `"on-demand"`,
    /// `"always-on"` or `"lockdown"`. A user in several groups gets the
    /// strictest its groups set, `"on-demand"` when none sets one
    /// ([`super::CompiledPolicy::connection_mode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ConnectionMode>,
}

/// An agent in the connector role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// The id of the connector's identity certificate.
    pub id: u32,
    /// Unique name, used by services.
    pub name: String,
    /// The connector's X25519 static key, 64 hex digits (`relay ca show`
    /// prints it as "static key"), if pinned: relays then refuse hop
    /// handshakes from connector certificates of this id that certify
    /// another key, and close such sessions at the reload that changes
    /// the pin. Unset: any CA-signed certificate of this id is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_key: Option<String>,
}

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A TCP stream.
    Tcp,
    /// UDP datagrams.
    Udp,
    /// Both, to the same target (`"tcp+udp"`): for applications that use
    /// one host for both, such as iperf3's UDP test or DNS.
    #[serde(rename = "tcp+udp")]
    TcpUdp,
}

impl Protocol {
    /// Whether TCP to the target is granted.
    pub fn tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::TcpUdp)
    }

    /// Whether UDP to the target is granted.
    pub fn udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::TcpUdp)
    }
}

/// One reachable service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The id frames carry as their destination.
    pub id: ServiceId,
    /// Unique name, used by rules.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// `"host:port"` the connector dials; IPv6 literals in brackets
    /// (`"[fd00::5]:53"`).
    pub target: String,
    /// Names of the connectors that can reach `target`; at least one.
    pub connectors: Vec<String>,
}

/// An allow rule: every listed user, and every member of every listed group,
/// may reach every listed service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Optional label, quoted in error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// User names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Service names, or `"*"` for every service in the file.
    #[serde(default)]
    pub services: Vec<String>,
}

impl PolicyFile {
    /// Parses a policy from TOML text. Only the shape is checked here; call
    /// [`super::compile`] (which validates) before trusting references.
    ///
    /// Syntax errors keep the `toml` crate's message, with line and column.
    pub fn from_toml_str(text: &str) -> Result<PolicyFile, PolicyError> {
        Ok(toml::from_str(text)?)
    }

    /// Renders the policy as TOML, for generated files. Parsing the result
    /// gives back an equal `PolicyFile`.
    pub fn to_toml_string(&self) -> String {
        // The model has only strings, integers, enums and arrays of tables,
        // all of which TOML can express, so serialization cannot fail; an
        // empty string is returned rather than panicking should that change.
        toml::to_string(self).unwrap_or_default()
    }

    /// Slow reference evaluation of a user's connection mode: the strictest
    /// mode the user's groups set, [`ConnectionMode::OnDemand`] when none
    /// does or the user is unknown. For tests; relays use
    /// [`super::CompiledPolicy::connection_mode`].
    pub fn evaluate_mode(&self, user: UserId) -> ConnectionMode {
        let Some(u) = self.users.iter().find(|u| u.id == user) else {
            return ConnectionMode::default();
        };
        self.groups
            .iter()
            .filter(|g| u.groups.contains(&g.name))
            .filter_map(|g| g.mode)
            .max()
            .unwrap_or_default()
    }

    /// Slow reference evaluation straight from the file: walks every rule.
    ///
    /// For tests, fuzzing and tools; the packet path uses
    /// [`super::CompiledPolicy::allowed`]. Meaningful only for a file that
    /// compiles; unknown users and services are denied.
    pub fn evaluate(&self, user: UserId, service: ServiceId) -> bool {
        let Some(u) = self.users.iter().find(|u| u.id == user) else {
            return false;
        };
        let Some(s) = self.services.iter().find(|s| s.id == service) else {
            return false;
        };
        self.rules.iter().any(|rule| {
            let subject =
                rule.users.contains(&u.name) || rule.groups.iter().any(|g| u.groups.contains(g));
            let object = rule
                .services
                .iter()
                .any(|n| *n == s.name || n == ALL_SERVICES);
            subject && object
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
        [[users]]
        id = 1
        name = "alice"
        groups = ["eng"]

        [[groups]]
        name = "eng"

        [[connectors]]
        id = 100
        name = "dc1"

        [[services]]
        id = 10
        name = "db"
        protocol = "tcp"
        target = "db.internal:5432"
        connectors = ["dc1"]

        [[rules]]
        groups = ["eng"]
        services = ["db"]
    "#;

    #[test]
    fn parses_and_round_trips() {
        let file = PolicyFile::from_toml_str(SMALL).unwrap();
        assert_eq!(file.users[0].id, UserId(1));
        assert_eq!(file.services[0].protocol, Protocol::Tcp);
        assert_eq!(file.rules[0].groups, ["eng"]);
        let text = file.to_toml_string();
        assert_eq!(PolicyFile::from_toml_str(&text).unwrap(), file);
    }

    #[test]
    fn tcp_and_udp_together() {
        let text = SMALL.replace("protocol = \"tcp\"", "protocol = \"tcp+udp\"");
        let file = PolicyFile::from_toml_str(&text).unwrap();
        let p = file.services[0].protocol;
        assert_eq!(p, Protocol::TcpUdp);
        assert!(p.tcp() && p.udp());
        assert!(Protocol::Tcp.tcp() && !Protocol::Tcp.udp());
        assert!(!Protocol::Udp.tcp() && Protocol::Udp.udp());
        assert_eq!(
            PolicyFile::from_toml_str(&file.to_toml_string()).unwrap(),
            file
        );
        let bad = SMALL.replace("protocol = \"tcp\"", "protocol = \"sctp\"");
        assert!(PolicyFile::from_toml_str(&bad).is_err());
    }

    #[test]
    fn unknown_key_is_a_syntax_error_with_position() {
        let text = SMALL.replace(
            "groups = [\"eng\"]\n        services",
            "grups = [\"eng\"]\n        services",
        );
        let err = PolicyFile::from_toml_str(&text).unwrap_err();
        let PolicyError::Syntax(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("grups"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn bad_protocol_is_rejected() {
        let text = SMALL.replace("\"tcp\"", "\"sctp\"");
        assert!(matches!(
            PolicyFile::from_toml_str(&text),
            Err(PolicyError::Syntax(_))
        ));
    }

    #[test]
    fn group_modes_parse_and_a_misspelt_one_is_an_error_with_position() {
        let text = SMALL.replace(
            "name = \"eng\"\n",
            "name = \"eng\"\n        mode = \"always-on\"\n",
        );
        let file = PolicyFile::from_toml_str(&text).unwrap();
        assert_eq!(file.groups[0].mode, Some(ConnectionMode::AlwaysOn));
        assert_eq!(
            PolicyFile::from_toml_str(&file.to_toml_string()).unwrap(),
            file
        );
        assert_eq!(
            PolicyFile::from_toml_str(SMALL).unwrap().groups[0].mode,
            None
        );

        let err = PolicyFile::from_toml_str(&text.replace("always-on", "always_on")).unwrap_err();
        let PolicyError::Syntax(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("always_on") && msg.contains("lockdown"),
            "{msg}"
        );
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn reference_evaluation() {
        let file = PolicyFile::from_toml_str(SMALL).unwrap();
        assert!(file.evaluate(UserId(1), ServiceId(10)));
        assert!(!file.evaluate(UserId(2), ServiceId(10)));
        assert!(!file.evaluate(UserId(1), ServiceId(11)));
    }
}
