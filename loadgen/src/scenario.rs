//! What traffic a run offers: how many users and services, which
//! (user, service) flows, which frame sizes, and how many frames the policy
//! should refuse.
//!
//! Every scenario uses the synthetic policy of [`crate::world`]: users
//! `0..users`, services `0..services`, every service whose id is a multiple
//! of 4 denied to everyone.

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
}

impl Scenario {
    /// All scenarios, in the order runs are reported.
    pub const ALL: [Scenario; 5] = [
        Scenario::Bulk,
        Scenario::Small,
        Scenario::Imix,
        Scenario::ManyFlows,
        Scenario::DenyMix,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Small => "small",
            Scenario::Imix => "imix",
            Scenario::ManyFlows => "many-flows",
            Scenario::DenyMix => "deny-mix",
        }
    }

    /// The frame size a scenario uses unless `--size` says otherwise.
    pub fn default_size(self) -> usize {
        match self {
            Scenario::Bulk | Scenario::DenyMix => 1400,
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
                    "unknown scenario {s:?}; choose from bulk, small, imix, many-flows, deny-mix"
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
/// Flows per user in `deny-mix`; `deny_share` of them are denied.
const DENY_MIX_FLOWS_PER_USER: usize = 20;
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
}

/// Whether the synthetic policy allows `service` (to anyone).
pub fn allowed(service: ServiceId) -> bool {
    service.0 % 4 != 0
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
                    users: FEW_USERS,
                    services: max,
                    flows: (0..FEW_USERS)
                        .map(|u| {
                            allowed_services
                                .iter()
                                .chain(&denied_services)
                                .map(|&s| flow(u, s))
                                .collect()
                        })
                        .collect(),
                    sizes,
                }
            }
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
