//! Property: for random small policies, the compiled policy (every table
//! layout) decides every (user, service) pair, known ids and unknown ones,
//! as a naive evaluator written here from the policy's meaning:
//!
//! a user may reach a service iff some rule names the user, or one of the
//! user's groups, and names the service or `"*"`; anything else, and any
//! unknown user or service, is denied.
//!
//! The evaluator works on the generated structure (indices), not on
//! `PolicyFile`, so it shares no code with the compiler or with
//! `PolicyFile::evaluate`.

use proptest::prelude::*;
use proto::ids::{ServiceId, UserId};
use proto::policy::{
    CompiledPolicy, Connector, Group, Layout, PolicyFile, Protocol, Rule, Service, User,
};

/// Ids are drawn below this, and every id below it is probed.
const ID_SPACE: u32 = 24;

#[derive(Debug, Clone)]
struct GenRule {
    users: Vec<usize>,
    groups: Vec<usize>,
    services: Vec<usize>,
    all_services: bool,
}

#[derive(Debug, Clone)]
struct GenPolicy {
    user_ids: Vec<u32>,
    service_ids: Vec<u32>,
    groups: usize,
    /// Per user: indices of its groups.
    memberships: Vec<Vec<usize>>,
    rules: Vec<GenRule>,
}

/// Distinct ids below [`ID_SPACE`].
fn ids(max: usize) -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::btree_set(0..ID_SPACE, 0..=max)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<bool>(), n).prop_map(|bits| {
        bits.iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
            .collect()
    })
}

fn policy() -> impl Strategy<Value = GenPolicy> {
    (ids(8), ids(6), 0usize..5).prop_flat_map(|(user_ids, service_ids, groups)| {
        let users = user_ids.len();
        let services = service_ids.len();
        let rule = (
            subset(users),
            subset(groups),
            subset(services),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(users, groups, services, all_services)| GenRule {
                users,
                groups,
                services,
                all_services,
            });
        (
            proptest::collection::vec(subset(groups), users),
            proptest::collection::vec(rule, 0..8),
        )
            .prop_map(move |(memberships, rules)| GenPolicy {
                user_ids: user_ids.clone(),
                service_ids: service_ids.clone(),
                groups,
                memberships,
                // The validator refuses rules without subjects or services
                // (tested elsewhere); they are left out here.
                rules: rules
                    .into_iter()
                    .filter(|r| {
                        !(r.users.is_empty() && r.groups.is_empty())
                            && (r.all_services || !r.services.is_empty())
                    })
                    .collect(),
            })
    })
}

/// The policy's meaning, from the structure.
fn naive(p: &GenPolicy, user: u32, service: u32) -> bool {
    let Some(u) = p.user_ids.iter().position(|&id| id == user) else {
        return false;
    };
    let Some(s) = p.service_ids.iter().position(|&id| id == service) else {
        return false;
    };
    for r in &p.rules {
        let subject = r.users.contains(&u) || r.groups.iter().any(|g| p.memberships[u].contains(g));
        let object = r.all_services || r.services.contains(&s);
        if subject && object {
            return true;
        }
    }
    false
}

fn to_file(p: &GenPolicy) -> PolicyFile {
    PolicyFile {
        users: p
            .user_ids
            .iter()
            .zip(&p.memberships)
            .map(|(&id, gs)| User {
                id: UserId(id),
                name: format!("user-{id}"),
                groups: gs.iter().map(|g| format!("group-{g}")).collect(),
                static_keys: None,
            })
            .collect(),
        groups: (0..p.groups)
            .map(|g| Group {
                name: format!("group-{g}"),
                id: None,
                mode: None,
            })
            .collect(),
        connectors: vec![Connector {
            id: 1,
            name: "connector".into(),
            static_key: None,
        }],
        services: p
            .service_ids
            .iter()
            .map(|&id| Service {
                id: ServiceId(id),
                name: format!("service-{id}"),
                protocol: Protocol::Tcp,
                target: "10.0.0.1:80".into(),
                connectors: vec!["connector".into()],
            })
            .collect(),
        rules: p
            .rules
            .iter()
            .map(|r| Rule {
                name: None,
                users: r
                    .users
                    .iter()
                    .map(|&u| format!("user-{}", p.user_ids[u]))
                    .collect(),
                groups: r.groups.iter().map(|g| format!("group-{g}")).collect(),
                services: if r.all_services {
                    vec!["*".into()]
                } else {
                    r.services
                        .iter()
                        .map(|&s| format!("service-{}", p.service_ids[s]))
                        .collect()
                },
            })
            .collect(),
        revoked: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_policy_equals_naive_evaluator(p in policy()) {
        let file = to_file(&p);
        let compiled = [
            ("auto", CompiledPolicy::compile(&file)),
            ("flat", CompiledPolicy::compile_with_layout(&file, Layout::Flat)),
            ("by-group", CompiledPolicy::compile_with_layout(&file, Layout::ByGroup)),
        ];
        for (layout, c) in &compiled {
            let c = c.as_ref().map_err(|e| TestCaseError::fail(format!("{layout}: {e}")))?;
            for user in 0..=ID_SPACE {
                for service in 0..=ID_SPACE {
                    prop_assert_eq!(
                        c.allowed(UserId(user), ServiceId(service)),
                        naive(&p, user, service),
                        "{} layout, user {}, service {}", layout, user, service
                    );
                }
            }
            prop_assert!(!c.allowed(UserId(u32::MAX), ServiceId(0)));
        }
    }
}
