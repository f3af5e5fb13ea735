//! What traffic a run offers: how many users and services, which
//! (user, service) flows, which frame sizes, and how many frames the policy
//! should refuse.
//!
//! Every scenario uses the synthetic policy of [`crate::world`]: users
//! `0..users`, services `0..services`, every service whose id is a multiple
//! of 4 denied to everyone; `fan-out` spreads the services over several
//! connectors ([`connector_of`]).

use std::fmt;
use std::str::FromStr;

use proto::ids::{ServiceId, UserId};
use proto::wire::DATA_OVERHEAD;

/// The smallest frame a data packet can be: header, e2e header, e2e tag.
pub const MIN_FRAME: usize = DATA_OVERHEAD;
/// The largest frame the load generator sends (fits a 1500-byte MTU path).
pub const MAX_FRAME: usize = 1472;

/// A named traffic shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A few users, a few services, large frames.
    Bulk,
    /// Same flows, minimum-size frames.
    Small,
    /// Same flows, 64/576/1400-byte frames in the 7:4:1 "simple IMIX" mix.
    Imix,
    /// 10 000 users, each sending to one of 1 000 services: the datapath's
    /// session, policy and route lookups leave the cache.
    ManyFlows,
    /// Bulk flows with a share of frames to services the policy denies.
    DenyMix,
    /// Bulk flows, each user's spread over N services behind N connectors
    /// (one each), so every train goes round robin to N next hops: what a
    /// transit relay forwarding many users to many connectors sees.
    FanOut,
}

impl Scenario {
    /// All scenarios, in the order runs are reported.
    pub const ALL: [Scenario; 6] = [
        Scenario::Bulk,
        Scenario::Small,
        Scenario::Imix,
        Scenario::ManyFlows,
        Scenario::DenyMix,
        Scenario::FanOut,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Small => "small",
            Scenario::Imix => "imix",
            Scenario::ManyFlows => "many-flows",
            Scenario::DenyMix => "deny-mix",
            Scenario::FanOut => "fan-out",
        }
    }

    /// The frame size a scenario uses unless `--size` says otherwise.
    pub fn default_size(self) -> usize {
        match self {
            Scenario::Bulk | Scenario::DenyMix | Scenario::FanOut => 1400,
            Scenario::Small | Scenario::ManyFlows => 64,
            Scenario::Imix => IMIX_MEAN,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?}; choose from bulk, small, imix, many-flows, deny-mix, fan-out"
                )
            })
    }
}

/// The IMIX train sizes in the order trains cycle through them: 7 × 64,
/// 4 × 576, 1 × 1400, interleaved.
pub const IMIX_PATTERN: [usize; 12] = [64, 576, 64, 1400, 64, 576, 64, 576, 64, 64, 576, 64];
/// Mean frame size of [`IMIX_PATTERN`] (rounded down).
pub const IMIX_MEAN: usize = (7 * 64 + 4 * 576 + 1400) / 12;

/// Users in the policy of the few-flow scenarios.
const FEW_USERS: u32 = 4;
/// Services each user of a few-flow scenario sends to (all allowed).
const FEW_SERVICES_PER_USER: usize = 2;
/// Flows per user in `deny-mix`; `deny_share` of them are denied (in
/// steps of 1 %).
const DENY_MIX_FLOWS_PER_USER: usize = 100;
/// Connectors of `fan-out` unless said otherwise.
pub const DEFAULT_FAN_OUT: u32 = 8;
/// Most connectors `fan-out` spreads over.
pub const MAX_FAN_OUT: u32 = 256;
/// `many-flows` policy size.
const MANY_USERS: u32 = 10_000;
const MANY_SERVICES: u32 = 1_000;

/// One (user, service) pair traffic is sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    /// The sending user.
    pub user: UserId,
    /// The destination service.
    pub service: ServiceId,
    /// Whether the synthetic policy allows the pair.
    pub allowed: bool,
}

/// A scenario made concrete: the policy size, the flows grouped by user
/// (each GSO train comes from one user and cycles through that user's
/// flows), and the train sizes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Users in the policy.
    pub users: u32,
    /// Services in the policy.
    pub services: u32,
    /// For each sending user (in send order), their flows, allowed first.
    pub flows: Vec<Vec<FlowSpec>>,
    /// Frame sizes that trains cycle through.
    pub sizes: Vec<usize>,
    /// Connectors the services are spread over ([`connector_of`]); 1: all
    /// behind one.
    pub connectors: u32,
    /// What the run is labelled: the scenario's name, with the deny share
    /// (`deny-mix-10`: 10 %) or the connector count (`fan-out-8`).
    pub label: String,
}

/// Whether the synthetic policy allows `service` (to anyone).
pub fn allowed(service: ServiceId) -> bool {
    service.0 % 4 != 0
}

/// The connector (certificate id, 1-based) serving `service` when the
/// services are spread over `connectors`: the allowed services in id order
/// go to connectors 1, 2, ..., `connectors`, 1, ... (denied ones to 1).
pub fn connector_of(service: ServiceId, connectors: u32) -> u32 {
    if !allowed(service) || connectors <= 1 {
        return 1;
    }
    // Rank of `service` among the allowed ids 1, 2, 3, 5, 6, 7, 9, ...
    let rank = service.0 / 4 * 3 + service.0 % 4 - 1;
    1 + rank % connectors
}

impl Plan {
    /// The plan for `scenario`, with frames of `size` bytes (ignored by
    /// `imix`) and, for `deny-mix`, `deny_share` of each user's flows denied.
    pub fn new(scenario: Scenario, size: usize, deny_share: f64) -> Plan {
        let size = size.clamp(MIN_FRAME, MAX_FRAME);
        let sizes = match scenario {
            Scenario::Imix => IMIX_PATTERN.to_vec(),
            _ => vec![size],
        };
        let flow = |u: u32, s: u32| FlowSpec {
            user: UserId(u),
            service: ServiceId(s),
            allowed: allowed(ServiceId(s)),
        };
        match scenario {
            Scenario::Bulk | Scenario::Small | Scenario::Imix => {
                let services: Vec<u32> = allowed_ids()
                    .take(FEW_USERS as usize * FEW_SERVICES_PER_USER)
                    .collect();
                Plan {
                    scenario,
                    connectors: 1,
                    label: scenario.name().to_owned(),
                    users: FEW_USERS,
                    services: services.iter().max().map_or(1, |m| m + 1),
                    flows: (0..FEW_USERS)
                        .map(|u| {
                            services
                                .iter()
                                .skip(u as usize * FEW_SERVICES_PER_USER)
                                .take(FEW_SERVICES_PER_USER)
                                .map(|&s| flow(u, s))
                                .collect()
                        })
                        .collect(),
                    sizes,
                }
            }
            Scenario::ManyFlows => Plan {
                scenario,
                connectors: 1,
                label: scenario.name().to_owned(),
                users: MANY_USERS,
                services: MANY_SERVICES,
                // User u sends to an allowed service spread over the whole
                // range, so consecutive trains touch distant table entries.
                flows: (0..MANY_USERS)
                    .map(|u| {
                        let mut s = (u.wrapping_mul(7919)) % MANY_SERVICES;
                        if !allowed(ServiceId(s)) {
                            s = (s + 1) % MANY_SERVICES;
                        }
                        vec![flow(u, s)]
                    })
                    .collect(),
                sizes,
            },
            Scenario::DenyMix => {
                let share = if deny_share.is_finite() {
                    deny_share.clamp(0.0, 0.95)
                } else {
                    0.0
                };
                let denied = ((share * DENY_MIX_FLOWS_PER_USER as f64).round() as usize)
                    .min(DENY_MIX_FLOWS_PER_USER - 1);
                let allowed_n = DENY_MIX_FLOWS_PER_USER - denied;
                let allowed_services: Vec<u32> = allowed_ids().take(allowed_n).collect();
                let denied_services: Vec<u32> = (0..).map(|k| 4 * k).take(denied).collect();
                let max = allowed_services
                    .iter()
                    .chain(&denied_services)
                    .max()
                    .map_or(1, |m| m + 1);
                Plan {
                    scenario,
                    connectors: 1,
                    label: format!("{}-{}", scenario.name(), (share * 100.0).round()),
                    users: FEW_USERS,
                    services: max,
                    flows: (0..FEW_USERS)
                        .map(|u| {
                            spread(&allowed_services, &denied_services)
                                .into_iter()
                                .map(|s| flow(u, s))
                                .collect()
                        })
                        .collect(),
                    sizes,
                }
            }
            Scenario::FanOut => Plan::fan_out(size, DEFAULT_FAN_OUT),
        }
    }

    /// The `fan-out` plan over `connectors` connectors (1 to
    /// [`MAX_FAN_OUT`]): each of a few users sends to as many allowed
    /// services, one behind each connector, in connector order, so trains
    /// (which cycle through a user's flows) go round robin over them.
    pub fn fan_out(size: usize, connectors: u32) -> Plan {
        let size = size.clamp(MIN_FRAME, MAX_FRAME);
        let n = connectors.clamp(1, MAX_FAN_OUT);
        let services: Vec<u32> = allowed_ids().take(n as usize).collect();
        Plan {
            scenario: Scenario::FanOut,
            connectors: n,
            label: format!("{}-{n}", Scenario::FanOut.name()),
            users: FEW_USERS,
            services: services.iter().max().map_or(1, |m| m + 1),
            flows: (0..FEW_USERS)
                .map(|u| {
                    services
                        .iter()
                        .map(|&s| FlowSpec {
                            user: UserId(u),
                            service: ServiceId(s),
                            allowed: true,
                        })
                        .collect()
                })
                .collect(),
            sizes: vec![size],
        }
    }

    /// The mean frame size over the size cycle.
    pub fn mean_size(&self) -> usize {
        self.sizes.iter().sum::<usize>() / self.sizes.len().max(1)
    }

    /// Share of frames the policy denies (trains cycle through each user's
    /// flows, so this is the share of denied flows per user).
    pub fn denied_share(&self) -> f64 {
        let (all, denied) = self
            .flows
            .iter()
            .flatten()
            .fold((0usize, 0usize), |(a, d), f| {
                (a + 1, d + usize::from(!f.allowed))
            });
        if all == 0 {
            0.0
        } else {
            denied as f64 / all as f64
        }
    }
}

/// `allowed` with the `denied` spread evenly among them, an allowed one
/// first: every train crosses denied frames at the same spacing.
fn spread(allowed: &[u32], denied: &[u32]) -> Vec<u32> {
    let n = allowed.len() + denied.len();
    let dn = denied.len();
    let (mut a, mut d) = (allowed.iter().copied(), denied.iter().copied());
    // Denied flow j goes to position (j + 1/2) * n / dn.
    let mut j = 0;
    (0..n)
        .filter_map(|i| {
            if j < dn && i >= (2 * j + 1) * n / (2 * dn) {
                j += 1;
                return d.next();
            }
            a.next().or_else(|| d.next())
        })
        .collect()
}

fn allowed_ids() -> impl Iterator<Item = u32> {
    (1u32..).filter(|s| allowed(ServiceId(*s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for sc in Scenario::ALL {
            assert_eq!(sc.name().parse::<Scenario>(), Ok(sc));
        }
        assert!("nope".parse::<Scenario>().unwrap_err().contains("bulk"));
    }

    #[test]
    fn few_flow_plans_are_all_allowed() {
        for sc in [Scenario::Bulk, Scenario::Small, Scenario::Imix] {
            let p = Plan::new(sc, sc.default_size(), 0.0);
            assert_eq!(p.flows.len(), FEW_USERS as usize);
            assert!(p.flows.iter().flatten().all(|f| f.allowed));
            assert!(p.flows.iter().flatten().all(|f| f.service.0 < p.services));
            assert_eq!(p.denied_share(), 0.0);
        }
    }

    #[test]
    fn deny_mix_has_the_share_asked_for() {
        let p = Plan::new(Scenario::DenyMix, 1400, 0.1);
        assert!((p.denied_share() - 0.1).abs() < 1e-9);
        for user in &p.flows {
            assert!(user[0].allowed, "trains start with an allowed flow");
            assert!(user.iter().all(|f| f.service.0 < p.services));
        }
    }

    #[test]
    fn denied_flows_are_spread_evenly() {
        let p = Plan::new(Scenario::DenyMix, 1400, 0.1);
        let denied: Vec<usize> = p.flows[0]
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.allowed)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(denied, [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]);
        for share in [0.01, 0.1, 0.5, 0.95] {
            let p = Plan::new(Scenario::DenyMix, 1400, share);
            let mut services: Vec<u32> = p.flows[0].iter().map(|f| f.service.0).collect();
            services.sort_unstable();
            services.dedup();
            assert_eq!(services.len(), 100, "every flow once at {share}");
        }
    }

    #[test]
    fn deny_mix_is_labelled_with_its_share() {
        for (share, label) in [
            (0.01, "deny-mix-1"),
            (0.1, "deny-mix-10"),
            (0.5, "deny-mix-50"),
        ] {
            assert_eq!(Plan::new(Scenario::DenyMix, 1400, share).label, label);
        }
        assert_eq!(
            Plan::new(Scenario::DenyMix, 1400, 0.01).denied_share(),
            0.01
        );
        assert_eq!(Plan::new(Scenario::DenyMix, 1400, 0.5).denied_share(), 0.5);
    }

    #[test]
    fn fan_out_sends_each_train_round_robin_over_its_connectors() {
        for n in [1u32, 2, 8, 64] {
            let p = Plan::fan_out(1400, n);
            assert_eq!((p.connectors, p.label.clone()), (n, format!("fan-out-{n}")));
            for user in &p.flows {
                assert_eq!(user.len(), n as usize);
                let owners: Vec<u32> = user.iter().map(|f| connector_of(f.service, n)).collect();
                assert_eq!(owners, (1..=n).collect::<Vec<_>>());
                assert!(user.iter().all(|f| f.allowed && f.service.0 < p.services));
            }
        }
        assert_eq!(
            Plan::new(Scenario::FanOut, 1400, 0.0).connectors,
            DEFAULT_FAN_OUT
        );
        assert_eq!(
            connector_of(ServiceId(4), 8),
            1,
            "denied services: connector 1"
        );
    }

    #[test]
    fn many_flows_spans_the_policy() {
        let p = Plan::new(Scenario::ManyFlows, 64, 0.0);
        assert_eq!(p.flows.len(), 10_000);
        assert!(p.flows.iter().flatten().all(|f| f.allowed));
        let distinct: std::collections::BTreeSet<u32> =
            p.flows.iter().flatten().map(|f| f.service.0).collect();
        assert!(distinct.len() > 500, "{} services used", distinct.len());
    }

    #[test]
    fn sizes_are_clamped_to_what_a_frame_can_be() {
        assert_eq!(Plan::new(Scenario::Small, 1, 0.0).sizes, vec![MIN_FRAME]);
        assert_eq!(Plan::new(Scenario::Bulk, 9000, 0.0).sizes, vec![MAX_FRAME]);
        assert_eq!(Plan::new(Scenario::Imix, 64, 0.0).mean_size(), IMIX_MEAN);
    }
}
