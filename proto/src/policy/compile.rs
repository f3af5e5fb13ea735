//! The compiled policy: an immutable table answering "may user U reach
//! service S?" in a few nanoseconds.
//!
//! # Design
//!
//! Users whose grants come from the same groups and the same direct rules
//! are indistinguishable to the policy, so they share an *access class*.
//! A lookup is then two steps:
//!
//! 1. user id → class: a dense `u32` array indexed by `id - min_id` when ids
//!    are dense (4 bytes per user, one load), else an open-addressing table
//!    of packed `(id, class)` u64 slots.
//! 2. class × service: one of two layouts, chosen at compile time from the
//!    sizes involved ([`Layout`]):
//!    * [`Layout::Flat`]: every class's reachable services expanded into one
//!      open-addressing set of `class << 32 | service` keys (classes with
//!      equal service sets merged). One probe: a lookup touches about two
//!      cache lines in all. Its size is the sum over classes of the number
//!      of services each reaches.
//!    * [`Layout::ByGroup`]: each class keeps its list of grant *units* (its
//!      groups, plus one unit for its direct grants) and the set holds
//!      `unit << 32 | service` keys. A lookup probes once per unit of the
//!      user's class. Its size is the number of grants as written.
//!
//! Flat is chosen unless it would be large (over [`FLAT_ALWAYS_ENTRIES`])
//! *and* more than twice the by-group size. Real directories have few
//! distinct group combinations (roles), so Flat is the usual result; the
//! worst case is every user in a unique combination of groups, where Flat
//! would need one entry per (user, reachable service) and by-group keeps
//! memory at `4 B × users` (class map) `+ 4 B × (classes + memberships)`
//! (unit lists) `+ ~13 B × grants` (the set, at its 5/8 maximum load).

use std::collections::HashMap;

use super::error::PolicyError;
use super::model::{PolicyFile, Protocol};
use super::table::{IdMap, PairSet};
use super::validate::{resolve, Resolved};
use crate::ids::{GroupId, ServiceId, UserId};

/// Below this many (class, service) entries (≤ 8 MiB of set) the flat
/// layout is used whatever the alternative costs: it is the fastest and
/// still cache-resident.
pub const FLAT_ALWAYS_ENTRIES: usize = 1 << 19;

/// How the class × service half of the table is laid out. See the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// One probe per lookup in a set of `(class, service)` pairs.
    Flat,
    /// One probe per grant unit of the user's class in a set of
    /// `(unit, service)` pairs.
    ByGroup,
}

/// What the relay needs to know about a service to forward to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its id.
    pub id: ServiceId,
    /// Its name, for logs.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// `"host:port"` as written in the policy.
    pub target: String,
    /// The port of `target`, already parsed.
    pub port: u16,
    /// Certificate ids of the connectors that serve it, in policy order.
    pub connectors: Vec<u32>,
}

/// Sizes of a compiled policy, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyStats {
    /// `[[users]]` entries.
    pub users: usize,
    /// `[[services]]` entries.
    pub services: usize,
    /// `[[groups]]` entries.
    pub groups: usize,
    /// Distinct access classes (see the module documentation).
    pub classes: usize,
    /// Entries in the grant set: (class, service) pairs for
    /// [`Layout::Flat`], (unit, service) pairs for [`Layout::ByGroup`].
    pub grant_entries: usize,
    /// The layout chosen.
    pub layout: Layout,
    /// Whether user ids were dense enough for a direct array.
    pub dense_user_ids: bool,
    /// Heap bytes of the structures [`CompiledPolicy::allowed`] reads.
    pub lookup_bytes: usize,
    /// Heap bytes of everything, names and service details included
    /// (approximate: string and vector capacities, not allocator overhead).
    pub heap_bytes: usize,
}

/// The class × service half of the table.
#[derive(Debug, Clone)]
enum Grants {
    Flat(PairSet),
    ByGroup {
        /// Class `c`'s units are `units[offsets[c]..offsets[c + 1]]`.
        offsets: Vec<u32>,
        units: Vec<u32>,
        set: PairSet,
    },
}

/// An immutable, compiled policy. Built once per (re)load by the control
/// thread; workers share it read-only (it is `Send + Sync`) behind an
/// atomically swapped pointer.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    user_class: IdMap,
    grants: Grants,
    classes: usize,
    service_index: IdMap,
    services: Vec<ServiceInfo>,
    /// User ids ascending, and `names[name_starts[i]..name_starts[i + 1]]`
    /// is the name of `user_ids[i]`: one string instead of a million.
    user_ids: Vec<u32>,
    name_starts: Vec<usize>,
    names: String,
    group_ids: Vec<(String, GroupId)>,
}

/// Validates and compiles `file`, choosing the layout automatically.
pub fn compile(file: &PolicyFile) -> Result<CompiledPolicy, PolicyError> {
    CompiledPolicy::compile(file)
}

impl CompiledPolicy {
    /// Validates and compiles `file`, choosing the layout automatically.
    pub fn compile(file: &PolicyFile) -> Result<CompiledPolicy, PolicyError> {
        Self::build(file, None)
    }

    /// Validates and compiles `file` with the given layout, for tests and
    /// benchmarks that compare the two.
    pub fn compile_with_layout(
        file: &PolicyFile,
        layout: Layout,
    ) -> Result<CompiledPolicy, PolicyError> {
        Self::build(file, Some(layout))
    }

    fn build(file: &PolicyFile, layout: Option<Layout>) -> Result<CompiledPolicy, PolicyError> {
        let resolved = resolve(file)?;
        let service_ids: Vec<u32> = file.services.iter().map(|s| s.id.0).collect();
        let classes = Classes::of(&resolved);

        let flat_estimate = classes.flat_estimate(&resolved);
        let by_group_size = classes.by_group_size(&resolved);
        let layout = layout.unwrap_or(
            if flat_estimate <= FLAT_ALWAYS_ENTRIES || flat_estimate <= 2 * by_group_size {
                Layout::Flat
            } else {
                Layout::ByGroup
            },
        );

        let (class_of_user, class_count, grants) = match layout {
            Layout::Flat => build_flat(&classes, &resolved, &service_ids),
            Layout::ByGroup => build_by_group(&classes, &resolved, &service_ids),
        };

        let user_entries: Vec<(u32, u32)> = file
            .users
            .iter()
            .zip(&class_of_user)
            .map(|(u, &c)| (u.id.0, c))
            .collect();
        let user_class = IdMap::build(&user_entries);

        let mut order: Vec<usize> = (0..file.users.len()).collect();
        order.sort_unstable_by_key(|&i| file.users[i].id);
        let mut user_ids = Vec::with_capacity(order.len());
        let mut name_starts = Vec::with_capacity(order.len() + 1);
        let mut names = String::new();
        for i in order {
            let u = &file.users[i];
            user_ids.push(u.id.0);
            name_starts.push(names.len());
            names.push_str(&u.name);
        }
        name_starts.push(names.len());

        let services: Vec<ServiceInfo> = file
            .services
            .iter()
            .zip(resolved.service_connectors)
            .zip(resolved.service_ports)
            .map(|((s, connectors), port)| ServiceInfo {
                id: s.id,
                name: s.name.clone(),
                protocol: s.protocol,
                target: s.target.clone(),
                port,
                connectors,
            })
            .collect();
        let service_entries: Vec<(u32, u32)> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.0, i as u32))
            .collect();

        Ok(CompiledPolicy {
            user_class,
            grants,
            classes: class_count,
            service_index: IdMap::build(&service_entries),
            services,
            user_ids,
            name_starts,
            names,
            group_ids: file
                .groups
                .iter()
                .zip(resolved.group_ids)
                .map(|(g, id)| (g.name.clone(), id))
                .collect(),
        })
    }

    /// Whether `user` may reach `service`. Unknown users and services are
    /// denied. O(1): no allocation, no hashing beyond one multiply, about
    /// two cache lines touched with [`Layout::Flat`].
    #[inline]
    pub fn allowed(&self, user: UserId, service: ServiceId) -> bool {
        let Some(class) = self.user_class.get(user.0) else {
            return false;
        };
        match &self.grants {
            Grants::Flat(set) => set.contains(class, service.0),
            Grants::ByGroup {
                offsets,
                units,
                set,
            } => {
                let c = class as usize;
                let (Some(&lo), Some(&hi)) = (offsets.get(c), offsets.get(c + 1)) else {
                    return false;
                };
                units
                    .get(lo as usize..hi as usize)
                    .is_some_and(|us| us.iter().any(|&u| set.contains(u, service.0)))
            }
        }
    }

    /// Forwarding details of `id`, if the policy defines it.
    #[inline]
    pub fn service(&self, id: ServiceId) -> Option<&ServiceInfo> {
        let i = self.service_index.get(id.0)?;
        self.services.get(i as usize)
    }

    /// The name of user `id`, for audit logs. A binary search: not for the
    /// per-packet path.
    pub fn user_name(&self, id: UserId) -> Option<&str> {
        let i = self.user_ids.binary_search(&id.0).ok()?;
        let start = *self.name_starts.get(i)?;
        let end = *self.name_starts.get(i + 1)?;
        self.names.get(start..end)
    }

    /// The id of the group named `name` (given in the file or assigned).
    pub fn group_id(&self, name: &str) -> Option<GroupId> {
        self.group_ids
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    /// Sizes and memory of the table.
    pub fn stats(&self) -> PolicyStats {
        let (layout, grant_entries, grants_bytes) = match &self.grants {
            Grants::Flat(set) => (Layout::Flat, set.len(), set.heap_bytes()),
            Grants::ByGroup {
                offsets,
                units,
                set,
            } => (
                Layout::ByGroup,
                set.len(),
                set.heap_bytes() + offsets.capacity() * 4 + units.capacity() * 4,
            ),
        };
        let lookup_bytes = self.user_class.heap_bytes() + grants_bytes;
        let services_bytes: usize = self
            .services
            .iter()
            .map(|s| {
                core::mem::size_of::<ServiceInfo>()
                    + s.name.capacity()
                    + s.target.capacity()
                    + s.connectors.capacity() * 4
            })
            .sum();
        let heap_bytes = lookup_bytes
            + self.service_index.heap_bytes()
            + services_bytes
            + self.user_ids.capacity() * 4
            + self.name_starts.capacity() * core::mem::size_of::<usize>()
            + self.names.capacity()
            + self
                .group_ids
                .iter()
                .map(|(n, _)| n.capacity() + core::mem::size_of::<(String, GroupId)>())
                .sum::<usize>();
        PolicyStats {
            users: self.user_ids.len(),
            services: self.services.len(),
            groups: self.group_ids.len(),
            classes: self.classes,
            grant_entries,
            layout,
            dense_user_ids: self.user_class.is_dense(),
            lookup_bytes,
            heap_bytes,
        }
    }
}

/// Users grouped by identical grant sources.
struct Classes {
    /// Per user: its class.
    of_user: Vec<u32>,
    /// Per class: the groups that grant anything (sorted), then the user
    /// index whose direct grants it shares (`None` when it has none).
    members: Vec<(Vec<u32>, Option<u32>)>,
}

impl Classes {
    fn of(r: &Resolved) -> Classes {
        let mut index: HashMap<(Vec<u32>, &[u32]), u32> = HashMap::new();
        let mut members = Vec::new();
        let mut of_user = Vec::with_capacity(r.user_groups.len());
        for (u, groups) in r.user_groups.iter().enumerate() {
            // Groups that grant nothing cannot change a decision; leaving
            // them out lets more users share a class.
            let granting: Vec<u32> = groups
                .iter()
                .copied()
                .filter(|&g| {
                    r.group_services
                        .get(g as usize)
                        .is_some_and(|s| !s.is_empty())
                })
                .collect();
            let direct: &[u32] = r.user_services.get(u).map_or(&[], |d| d.as_slice());
            let next = members.len() as u32;
            let class = *index.entry((granting.clone(), direct)).or_insert_with(|| {
                members.push((granting, (!direct.is_empty()).then_some(u as u32)));
                next
            });
            of_user.push(class);
        }
        Classes { of_user, members }
    }

    fn direct<'r>(r: &'r Resolved, user: Option<u32>) -> &'r [u32] {
        user.and_then(|u| r.user_services.get(u as usize))
            .map_or(&[], |d| d.as_slice())
    }

    /// Upper bound on the flat set's size (overlaps counted twice).
    fn flat_estimate(&self, r: &Resolved) -> usize {
        self.members
            .iter()
            .map(|(groups, user)| {
                groups
                    .iter()
                    .map(|&g| r.group_services.get(g as usize).map_or(0, Vec::len))
                    .sum::<usize>()
                    + Self::direct(r, *user).len()
            })
            .sum()
    }

    /// Size of the by-group layout in set-entry equivalents (a unit
    /// reference costs half an entry).
    fn by_group_size(&self, r: &Resolved) -> usize {
        let grants: usize = r.group_services.iter().map(Vec::len).sum();
        let (direct, refs) = self.members.iter().fold((0, 0), |(d, n), (groups, user)| {
            let own = Self::direct(r, *user).len();
            (d + own, n + groups.len() + usize::from(own > 0))
        });
        grants + direct + refs / 2
    }
}

/// Expands each class to its service set, merges classes with equal sets
/// and builds the (class, service) set. Returns the class of each user.
fn build_flat(classes: &Classes, r: &Resolved, service_ids: &[u32]) -> (Vec<u32>, usize, Grants) {
    let mut by_set: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut sets: Vec<Vec<u32>> = Vec::new();
    let mut remap = Vec::with_capacity(classes.members.len());
    let mut scratch = Vec::new();
    for (groups, user) in &classes.members {
        scratch.clear();
        for &g in groups {
            if let Some(s) = r.group_services.get(g as usize) {
                scratch.extend_from_slice(s);
            }
        }
        scratch.extend_from_slice(Classes::direct(r, *user));
        scratch.sort_unstable();
        scratch.dedup();
        let next = sets.len() as u32;
        let id = *by_set.entry(scratch.clone()).or_insert_with(|| {
            sets.push(scratch.clone());
            next
        });
        remap.push(id);
    }
    let entries: usize = sets.iter().map(Vec::len).sum();
    let pairs = sets.iter().enumerate().flat_map(|(c, services)| {
        services
            .iter()
            .filter_map(move |&s| service_ids.get(s as usize).map(|&id| (c as u32, id)))
    });
    let set = PairSet::build(entries, pairs);
    let of_user = classes
        .of_user
        .iter()
        .map(|&c| remap.get(c as usize).copied().unwrap_or(u32::MAX))
        .collect();
    (of_user, sets.len(), Grants::Flat(set))
}

/// Keeps grants per unit (group, or a class's direct grants) and a unit list
/// per class.
fn build_by_group(
    classes: &Classes,
    r: &Resolved,
    service_ids: &[u32],
) -> (Vec<u32>, usize, Grants) {
    let n_groups = r.group_services.len() as u32;
    let mut offsets = Vec::with_capacity(classes.members.len() + 1);
    let mut units = Vec::new();
    // Direct-grant units, deduplicated by their service set.
    let mut direct_units: HashMap<&[u32], u32> = HashMap::new();
    let mut direct_sets: Vec<&[u32]> = Vec::new();
    for (groups, user) in &classes.members {
        offsets.push(units.len() as u32);
        units.extend_from_slice(groups);
        let direct = Classes::direct(r, *user);
        if !direct.is_empty() {
            let next = n_groups + direct_sets.len() as u32;
            let unit = *direct_units.entry(direct).or_insert_with(|| {
                direct_sets.push(direct);
                next
            });
            units.push(unit);
        }
    }
    offsets.push(units.len() as u32);
    let entries = r.group_services.iter().map(Vec::len).sum::<usize>()
        + direct_sets.iter().map(|d| d.len()).sum::<usize>();
    let per_unit = r
        .group_services
        .iter()
        .map(Vec::as_slice)
        .chain(direct_sets.iter().copied());
    let pairs = per_unit.enumerate().flat_map(|(unit, services)| {
        services
            .iter()
            .filter_map(move |&s| service_ids.get(s as usize).map(|&id| (unit as u32, id)))
    });
    let set = PairSet::build(entries, pairs);
    (
        classes.of_user.clone(),
        classes.members.len(),
        Grants::ByGroup {
            offsets,
            units,
            set,
        },
    )
}
