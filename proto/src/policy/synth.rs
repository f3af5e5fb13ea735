//! Deterministic synthetic policies for tests, benchmarks and the load
//! generator.
//!
//! The same [`SynthParams`] always give the same file, on every platform
//! and every version of `rand`: the generator is a local SplitMix64.
//!
//! Real directories grant access through roles: many users share the same
//! combination of groups. [`SynthParams::profiles`] models that (users draw
//! their group set from that many predefined sets); `profiles = 0` gives
//! every user an independent random set, the compiled table's worst case.

use std::collections::HashMap;

use super::model::{Connector, Group, PolicyFile, Protocol, Rule, Service, User, ALL_SERVICES};
use crate::ids::{ServiceId, UserId};

/// Shape of a synthetic policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthParams {
    /// Users, with ids `1..=users`, named `user-{i}`.
    pub users: u32,
    /// Services, with ids `1..=services`, named `svc-{i}`.
    pub services: u32,
    /// Groups, named `grp-{i}`; each gets one rule.
    pub groups: u32,
    /// Groups each user belongs to (fewer if there are fewer groups).
    pub groups_per_user: u32,
    /// Services each group's rule grants (fewer if there are fewer services).
    pub services_per_group: u32,
    /// Distinct group sets users draw from; 0: every user draws its own.
    pub profiles: u32,
    /// Extra rules granting one random user one random service directly.
    pub direct_grants: u32,
    /// Connectors, named `conn-{i}`; services are spread over them.
    pub connectors: u32,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for SynthParams {
    /// A small policy: 100 users, 50 services, 10 groups.
    fn default() -> Self {
        SynthParams {
            users: 100,
            services: 50,
            groups: 10,
            groups_per_user: 2,
            services_per_group: 5,
            profiles: 0,
            direct_grants: 5,
            connectors: 4,
            seed: 1,
        }
    }
}

impl SynthParams {
    /// The design's sizing target: 1 M users, 100 k services, 10 k groups,
    /// 3 groups per user out of 5 000 role profiles, 10 services per group.
    pub fn large() -> Self {
        SynthParams {
            users: 1_000_000,
            services: 100_000,
            groups: 10_000,
            groups_per_user: 3,
            services_per_group: 10,
            profiles: 5_000,
            direct_grants: 1_000,
            connectors: 64,
            seed: 1,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and fully specified, so
/// the output never changes under us.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(crate::hash::FIB);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-shift.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// `k` distinct values from `0..n` (all of them if `k >= n`), sorted.
    fn distinct(&mut self, k: u32, n: u32) -> Vec<u32> {
        if k >= n {
            return (0..n).collect();
        }
        let mut out = Vec::with_capacity(k as usize);
        while out.len() < k as usize {
            let v = self.below(n);
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out.sort_unstable();
        out
    }
}

/// Generates the policy described by `p`. It always compiles.
pub fn generate(p: &SynthParams) -> PolicyFile {
    let mut rng = SplitMix64::new(p.seed);
    let connectors: Vec<Connector> = (0..p.connectors.max(1))
        .map(|i| Connector {
            id: i + 1,
            name: format!("conn-{i}"),
            static_key: None,
        })
        .collect();
    let services = (0..p.services)
        .map(|i| Service {
            id: ServiceId(i + 1),
            name: format!("svc-{i}"),
            protocol: if i % 4 == 3 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            target: format!("svc-{i}.internal:{}", 1024 + i % 60_000),
            connectors: vec![connectors[(i as usize) % connectors.len()].name.clone()],
        })
        .collect();
    let groups = (0..p.groups)
        .map(|i| Group {
            name: format!("grp-{i}"),
            id: None,
            mode: None,
        })
        .collect();
    let profiles: Vec<Vec<u32>> = (0..p.profiles)
        .map(|_| rng.distinct(p.groups_per_user, p.groups))
        .collect();
    let users = (0..p.users)
        .map(|i| {
            let set = if profiles.is_empty() {
                rng.distinct(p.groups_per_user, p.groups)
            } else {
                profiles[rng.below(p.profiles) as usize].clone()
            };
            User {
                id: UserId(i + 1),
                name: format!("user-{i}"),
                groups: set.iter().map(|g| format!("grp-{g}")).collect(),
                static_keys: None,
            }
        })
        .collect();
    let mut rules: Vec<Rule> = Vec::new();
    if p.services > 0 {
        for g in 0..p.groups {
            rules.push(Rule {
                name: None,
                groups: vec![format!("grp-{g}")],
                users: Vec::new(),
                services: rng
                    .distinct(p.services_per_group, p.services)
                    .iter()
                    .map(|s| format!("svc-{s}"))
                    .collect(),
            });
        }
        if p.users > 0 {
            for _ in 0..p.direct_grants {
                rules.push(Rule {
                    name: None,
                    groups: Vec::new(),
                    users: vec![format!("user-{}", rng.below(p.users))],
                    services: vec![format!("svc-{}", rng.below(p.services))],
                });
            }
        }
    }
    PolicyFile {
        users,
        groups,
        connectors,
        services,
        rules,
        revoked: Vec::new(),
    }
}

/// `count` (user, service) query pairs for `file`, about half of them
/// allowed (drawn from the user's grants) and half random (almost all
/// denied in a sparse policy). Works on any file, synthetic or not; the
/// ids are those of defined users and services.
pub fn sample_pairs(file: &PolicyFile, count: usize, seed: u64) -> Vec<(UserId, ServiceId)> {
    let mut rng = SplitMix64::new(seed);
    let n_users = file.users.len() as u32;
    let n_services = file.services.len() as u32;
    if n_users == 0 || n_services == 0 {
        return Vec::new();
    }
    let by_name: HashMap<&str, ServiceId> = file
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.id))
        .collect();
    let all: Vec<ServiceId> = file.services.iter().map(|s| s.id).collect();
    let ids = |names: &[String]| -> Vec<ServiceId> {
        if names.iter().any(|n| n == ALL_SERVICES) {
            return all.clone();
        }
        names
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect()
    };
    let mut by_group: HashMap<&str, Vec<ServiceId>> = HashMap::new();
    let mut by_user: HashMap<&str, Vec<ServiceId>> = HashMap::new();
    for rule in &file.rules {
        let services = ids(&rule.services);
        for g in &rule.groups {
            by_group.entry(g).or_default().extend(&services);
        }
        for u in &rule.users {
            by_user.entry(u).or_default().extend(&services);
        }
    }
    let mut out = Vec::with_capacity(count);
    let mut grants = Vec::new();
    for i in 0..count {
        let user = &file.users[rng.below(n_users) as usize];
        let random = all[rng.below(n_services) as usize];
        if i % 2 == 1 {
            out.push((user.id, random));
            continue;
        }
        grants.clear();
        for g in &user.groups {
            grants.extend(by_group.get(g.as_str()).into_iter().flatten());
        }
        grants.extend(by_user.get(user.name.as_str()).into_iter().flatten());
        let service = if grants.is_empty() {
            random
        } else {
            grants[rng.below(grants.len() as u32) as usize]
        };
        out.push((user.id, service));
    }
    out
}

/// A pair `file` allows and a pair of a defined user and a defined service
/// that it denies, found by the reference evaluation; `None` when the file
/// has no such pair. For smoke tests of the datapath and the load generator.
pub fn known_pairs(file: &PolicyFile) -> Option<KnownPairs> {
    let candidates = sample_pairs(file, 64, 0x5EED);
    let allowed = candidates
        .iter()
        .copied()
        .find(|&(u, s)| file.evaluate(u, s))?;
    let denied = file.users.iter().take(64).find_map(|u| {
        file.services
            .iter()
            .take(256)
            .find(|s| !file.evaluate(u.id, s.id))
            .map(|s| (u.id, s.id))
    })?;
    Some(KnownPairs { allowed, denied })
}

/// See [`known_pairs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownPairs {
    /// A (user, service) pair the policy allows.
    pub allowed: (UserId, ServiceId),
    /// A (user, service) pair of defined ids the policy denies.
    pub denied: (UserId, ServiceId),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile;

    #[test]
    fn deterministic_and_compiles() {
        let p = SynthParams::default();
        let a = generate(&p);
        assert_eq!(a, generate(&p));
        assert_ne!(
            a,
            generate(&SynthParams {
                seed: 2,
                ..p.clone()
            })
        );
        let table = compile(&a).unwrap();
        assert_eq!(table.stats().users, 100);
        assert_eq!(table.stats().services, 50);
        // Pin the generator: a change here changes every benchmark input.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn known_pairs_are_what_they_say() {
        let file = generate(&SynthParams::default());
        let table = compile(&file).unwrap();
        let k = known_pairs(&file).unwrap();
        assert!(table.allowed(k.allowed.0, k.allowed.1));
        assert!(!table.allowed(k.denied.0, k.denied.1));
    }

    #[test]
    fn sample_pairs_mix_allowed_and_denied() {
        let file = generate(&SynthParams::default());
        let table = compile(&file).unwrap();
        let pairs = sample_pairs(&file, 1000, 9);
        let allowed = pairs.iter().filter(|&&(u, s)| table.allowed(u, s)).count();
        assert!((400..800).contains(&allowed), "{allowed} of 1000 allowed");
    }

    #[test]
    fn profiles_bound_the_classes() {
        let p = SynthParams {
            users: 2000,
            profiles: 20,
            direct_grants: 0,
            ..SynthParams::default()
        };
        let stats = compile(&generate(&p)).unwrap().stats();
        assert!(stats.classes <= 20, "{stats:?}");
    }

    #[test]
    fn degenerate_params_do_not_panic() {
        for p in [
            SynthParams {
                users: 0,
                ..SynthParams::default()
            },
            SynthParams {
                services: 0,
                ..SynthParams::default()
            },
            SynthParams {
                groups: 0,
                ..SynthParams::default()
            },
            SynthParams {
                groups_per_user: 50,
                services_per_group: 500,
                profiles: 3,
                ..SynthParams::default()
            },
        ] {
            let file = generate(&p);
            compile(&file).unwrap();
            let _ = sample_pairs(&file, 10, 1);
        }
    }
}
