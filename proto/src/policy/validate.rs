//! Checks a [`PolicyFile`] and resolves its names to dense indices.
//!
//! Validation and resolution are one pass because resolving a name is how an
//! unknown name is found; the result, [`Resolved`], is what the compiler
//! consumes, so nothing downstream looks a name up again or can meet a
//! dangling reference ("parse, don't validate").

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::error::{EntryKind, Location, PolicyError};
use super::model::{PolicyFile, ALL_SERVICES, MAX_NAME_LEN};
use crate::ids::GroupId;

/// A validated policy with every reference resolved to an index into the
/// file's own lists (`users[i]`, `groups[i]`, `services[i]`).
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Per user: indices of its groups, sorted, no duplicates.
    pub user_groups: Vec<Vec<u32>>,
    /// Per user: indices of services granted to it by name, sorted, no
    /// duplicates.
    pub user_services: Vec<Vec<u32>>,
    /// Per group: indices of services granted to its members, sorted, no
    /// duplicates.
    pub group_services: Vec<Vec<u32>>,
    /// Per group: its id, given or assigned.
    pub group_ids: Vec<GroupId>,
    /// Per service: the ids of its connectors, in file order.
    pub service_connectors: Vec<Vec<u32>>,
    /// Per service: the port of its target.
    pub service_ports: Vec<u16>,
}

/// Validates `file` and resolves its references. The first error found is
/// returned, in file order: entries before rules.
pub(crate) fn resolve(file: &PolicyFile) -> Result<Resolved, PolicyError> {
    let users = index_names(
        EntryKind::User,
        file.users.iter().map(|u| (u.name.as_str(), u.id.0)),
    )?;
    let groups = index_names(
        EntryKind::Group,
        file.groups
            .iter()
            .map(|g| (g.name.as_str(), g.id.map_or(0, |id| id.0))),
    )?;
    let connectors = index_names(
        EntryKind::Connector,
        file.connectors.iter().map(|c| (c.name.as_str(), c.id)),
    )?;
    let services = index_names(
        EntryKind::Service,
        file.services.iter().map(|s| (s.name.as_str(), s.id.0)),
    )?;
    check_unique_ids(
        EntryKind::User,
        file.users.iter().map(|u| (u.name.as_str(), u.id.0)),
    )?;
    check_unique_ids(
        EntryKind::Group,
        file.groups
            .iter()
            .filter_map(|g| g.id.map(|id| (g.name.as_str(), id.0))),
    )?;
    check_unique_ids(
        EntryKind::Connector,
        file.connectors.iter().map(|c| (c.name.as_str(), c.id)),
    )?;
    check_unique_ids(
        EntryKind::Service,
        file.services.iter().map(|s| (s.name.as_str(), s.id.0)),
    )?;
    for (i, s) in file.services.iter().enumerate() {
        if s.name == ALL_SERVICES {
            return Err(PolicyError::BadName {
                kind: EntryKind::Service,
                number: i + 1,
                name: s.name.clone(),
                reason: "\"*\" is reserved: in a rule it means every service",
            });
        }
    }

    let mut user_groups = Vec::with_capacity(file.users.len());
    for u in &file.users {
        let at = || Location::User(u.name.clone());
        let mut gs = resolve_names(&u.groups, &groups, EntryKind::Group, at)?;
        gs.sort_unstable();
        gs.dedup();
        user_groups.push(gs);
    }

    let mut service_connectors = Vec::with_capacity(file.services.len());
    let mut service_ports = Vec::with_capacity(file.services.len());
    for s in &file.services {
        if s.connectors.is_empty() {
            return Err(PolicyError::NoConnectors {
                service: s.name.clone(),
            });
        }
        let at = || Location::Service(s.name.clone());
        let idx = resolve_names(&s.connectors, &connectors, EntryKind::Connector, at)?;
        let mut ids: Vec<u32> = Vec::with_capacity(idx.len());
        for i in idx {
            let id = file.connectors.get(i as usize).map_or(0, |c| c.id);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        service_connectors.push(ids);
        let port = parse_target(&s.target).map_err(|reason| PolicyError::BadTarget {
            service: s.name.clone(),
            target: s.target.clone(),
            reason,
        })?;
        service_ports.push(port);
    }

    let mut user_services = vec![Vec::new(); file.users.len()];
    let mut group_services = vec![Vec::new(); file.groups.len()];
    let all_services: Vec<u32> = (0..file.services.len() as u32).collect();
    for (i, rule) in file.rules.iter().enumerate() {
        let at = || Location::Rule {
            number: i + 1,
            name: rule.name.clone(),
        };
        if rule.groups.is_empty() && rule.users.is_empty() {
            return Err(PolicyError::EmptyRule {
                at: at(),
                reason: "has no subjects",
            });
        }
        if rule.services.is_empty() {
            return Err(PolicyError::EmptyRule {
                at: at(),
                reason: "has no services",
            });
        }
        let gs = resolve_names(&rule.groups, &groups, EntryKind::Group, at)?;
        let us = resolve_names(&rule.users, &users, EntryKind::User, at)?;
        let ss = if rule.services.iter().any(|s| s == ALL_SERVICES) {
            all_services.clone()
        } else {
            resolve_names(&rule.services, &services, EntryKind::Service, at)?
        };
        for g in gs {
            if let Some(list) = group_services.get_mut(g as usize) {
                list.extend_from_slice(&ss);
            }
        }
        for u in us {
            if let Some(list) = user_services.get_mut(u as usize) {
                list.extend_from_slice(&ss);
            }
        }
    }
    for list in user_services.iter_mut().chain(group_services.iter_mut()) {
        list.sort_unstable();
        list.dedup();
    }

    Ok(Resolved {
        user_groups,
        user_services,
        group_services,
        group_ids: assign_group_ids(file),
        service_connectors,
        service_ports,
    })
}

/// Maps each name to its (position, id), rejecting bad and duplicate names.
fn index_names<'a>(
    kind: EntryKind,
    entries: impl Iterator<Item = (&'a str, u32)>,
) -> Result<HashMap<&'a str, (u32, u32)>, PolicyError> {
    let mut map: HashMap<&str, (u32, u32)> = HashMap::new();
    for (i, (name, id)) in entries.enumerate() {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(PolicyError::BadName {
                kind,
                number: i + 1,
                name: name.chars().take(MAX_NAME_LEN).collect(),
                reason: "names must be 1 to 256 bytes long",
            });
        }
        if let Some(&(first_pos, first_id)) = map.get(name) {
            let describe = |pos: u32, id: u32| match kind {
                // Groups may have no id; their position is what the
                // operator can find.
                EntryKind::Group => format!("[[groups]] entry #{}", pos as usize + 1),
                _ => format!("the one with id {id}"),
            };
            return Err(PolicyError::DuplicateName {
                kind,
                name: name.to_owned(),
                first: describe(first_pos, first_id),
                second: describe(i as u32, id),
            });
        }
        map.insert(name, (i as u32, id));
    }
    Ok(map)
}

fn check_unique_ids<'a>(
    kind: EntryKind,
    entries: impl Iterator<Item = (&'a str, u32)>,
) -> Result<(), PolicyError> {
    let mut seen: HashMap<u32, &str> = HashMap::new();
    for (name, id) in entries {
        if let Some(first) = seen.insert(id, name) {
            return Err(PolicyError::DuplicateId {
                kind,
                id,
                first: first.to_owned(),
                second: name.to_owned(),
            });
        }
    }
    Ok(())
}

fn resolve_names(
    names: &[String],
    index: &HashMap<&str, (u32, u32)>,
    kind: EntryKind,
    at: impl Fn() -> Location,
) -> Result<Vec<u32>, PolicyError> {
    names
        .iter()
        .map(|n| {
            index
                .get(n.as_str())
                .map(|&(pos, _)| pos)
                .ok_or_else(|| PolicyError::Unknown {
                    at: at(),
                    kind,
                    name: n.clone(),
                })
        })
        .collect()
}

/// Groups without an id get the smallest ids no group names explicitly, in
/// file order, so adding an id-less group never renumbers the others.
fn assign_group_ids(file: &PolicyFile) -> Vec<GroupId> {
    let taken: std::collections::HashSet<u32> = file
        .groups
        .iter()
        .filter_map(|g| g.id.map(|id| id.0))
        .collect();
    let mut next = 0u32;
    file.groups
        .iter()
        .map(|g| match g.id {
            Some(id) => id,
            None => {
                while taken.contains(&next) {
                    next = next.wrapping_add(1);
                }
                let id = GroupId(next);
                next = next.wrapping_add(1);
                id
            }
        })
        .collect()
}

/// Checks `"host:port"` and returns the port.
///
/// The host is not resolved (the connector does that, in its own network);
/// it must look like a DNS name or be an IP literal.
pub(crate) fn parse_target(target: &str) -> Result<u16, &'static str> {
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err("it has no \":port\"");
    };
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err("the port must be a number from 1 to 65535"),
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Err("a '[' before an IPv6 address needs a matching ']'");
        };
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(port),
            Err(_) => Err("the text in brackets is not an IPv6 address"),
        };
    }
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, like \"[fd00::1]:443\"");
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(port);
    }
    let dns_like = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if dns_like {
        Ok(port)
    } else {
        Err("the host must be a DNS name (letters, digits, '-', '.') or an IP address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("db.internal:5432"), Ok(5432));
        assert_eq!(parse_target("10.0.0.1:53"), Ok(53));
        assert_eq!(parse_target("[fd00::1]:443"), Ok(443));
        assert_eq!(parse_target("localhost:22"), Ok(22));
        for bad in [
            "db.internal",
            "db.internal:0",
            "db.internal:70000",
            ":80",
            "fd00::1:443",
            "[fd00::1:443",
            "[zz]:443",
            "bad host:80",
            "a..b:80",
            "-a:80",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_one_to_max_name_len_bytes() {
        let longest = "n".repeat(MAX_NAME_LEN);
        let names = index_names(EntryKind::User, [(longest.as_str(), 1)].into_iter()).unwrap();
        assert_eq!(names.get(longest.as_str()), Some(&(0, 1)));
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        for (bad, number) in [(too_long.as_str(), 2), ("", 2)] {
            let e = index_names(EntryKind::User, [("a", 1), (bad, 2)].into_iter()).unwrap_err();
            assert!(
                matches!(&e, PolicyError::BadName { number: n, name, .. }
                    if *n == number && name.len() == bad.len().min(MAX_NAME_LEN)),
                "{e}"
            );
        }
    }

    #[test]
    fn group_ids_fill_gaps_around_explicit_ones() {
        let text = r#"
            [[groups]]
            name = "a"
            [[groups]]
            name = "b"
            id = 1
            [[groups]]
            name = "c"
        "#;
        let file = PolicyFile::from_toml_str(text).unwrap();
        let ids = assign_group_ids(&file);
        assert_eq!(ids, [GroupId(0), GroupId(1), GroupId(2)]);
    }
}
