//! The audit log of access decisions: per flow, never per frame.
//!
//! ```text
//! worker k: datapath -> AuditTable (fixed size, owned)  --swap every
//!   PUBLISH_EVERY, only into an empty hand-off slot-->  Shared::audit[k]
//! control thread: drains the slots every loop into an Auditor; every
//!   interval the Auditor writes the lines (tracing, target "audit")
//! ```
//!
//! Workers count every policy decision of the `ztna` datapath by (user,
//! service, verdict) in a preallocated [`AuditTable`]; a full table counts
//! further new pairs as overflow instead of allocating. Between batches a
//! worker swaps its table with its hand-off slot in
//! [`Shared`](crate::shared::Shared) when the slot is empty (a `try_lock`:
//! a worker never waits for the control thread, and a slot still full means
//! the worker keeps counting into its own table).
//!
//! The [`Auditor`] (control thread) adds the drained tables up and, once per
//! interval, writes one line per (user, service, verdict) active in it:
//! `audit="first"` the first time the relay reports the pair, then
//! `audit="aggregate"`. Both carry the interval's frames and bytes, so the
//! counts of a pair's lines add up to what the relay judged. Lines name the
//! relay, the user and the service (ids, and names where the policy has
//! them), the verdict and, for a deny, why the current policy denies it.
//!
//! **Rate bound.** At most [`AuditConfig::max_lines`] pair lines per
//! interval; the rest are counted in one `audit="summary"` line (pairs and
//! frames suppressed, frames of pairs no table or map had room for), so a
//! flood of distinct pairs writes at most `max_lines + 1` lines per
//! interval. Priority inside the bound: allowed pairs before denied ones
//! (which pairs are allowed is bounded by the policy; denied service ids are
//! the sender's choice), and within each verdict pairs not yet reported
//! before known ones. A new pair whose line was suppressed is not counted
//! as reported: it gets its `first` line in a later interval with room.
//!
//! **Bounded memory.** The pairs of one interval are kept per verdict up to
//! [`AuditConfig::remember`] each (the rest only counted). The pairs already
//! reported are remembered in two generations of `remember / 2` pairs: a
//! pair is known while in either; a known pair active again moves to the
//! current generation; when the current one fills up it becomes the
//! previous one and the oldest generation is forgotten. So an active pair is
//! never announced twice, and a pair idle for long enough (while at least
//! `remember / 2` other pairs were reported) gets a new `first` line when it
//! comes back.
//!
//! In steady state (the same pairs interval after interval) the control
//! side allocates nothing either: maps are cleared, not dropped.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::audit::{Access, AuditTable, Counts};
use proto::ids::{ServiceId, UserId};
use proto::policy::CompiledPolicy;

/// How the audit log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Whether decisions are counted and logged at all.
    pub enabled: bool,
    /// How often the aggregates are written.
    pub interval: Duration,
    /// Pair lines per interval at most (beyond: one summary line).
    pub max_lines: usize,
    /// Slots of each worker's table (see [`proto::audit`]).
    pub table_slots: usize,
    /// Pairs remembered: already reported ones (two generations of half),
    /// and active ones per verdict and interval.
    pub remember: usize,
}

/// The shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            max_lines: 1000,
            table_slots: proto::audit::DEFAULT_SLOTS,
            remember: 65_536,
        }
    }
}

/// Why an audit setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditConfigError {
    /// The interval is out of range.
    #[error("audit interval {0:?} must be between 10 ms and 1 h")]
    Interval(Duration),
    /// `max_lines` is 0.
    #[error("audit max_lines must be at least 1 (turn the audit off with enabled = false)")]
    MaxLines,
    /// `table_slots` is out of range.
    #[error("audit table_slots = {0} must be between {min} and {max}", min = proto::audit::MIN_SLOTS, max = proto::audit::MAX_SLOTS)]
    TableSlots(usize),
    /// `remember` is out of range.
    #[error("audit remember = {0} must be between 2 and 16777216")]
    Remember(usize),
}

impl AuditConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), AuditConfigError> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(AuditConfigError::Interval(self.interval));
        }
        if self.max_lines == 0 {
            return Err(AuditConfigError::MaxLines);
        }
        if !(proto::audit::MIN_SLOTS..=proto::audit::MAX_SLOTS).contains(&self.table_slots) {
            return Err(AuditConfigError::TableSlots(self.table_slots));
        }
        if !(2..=1 << 24).contains(&self.remember) {
            return Err(AuditConfigError::Remember(self.remember));
        }
        Ok(())
    }
}

/// What kind of pair line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairLine {
    /// The first line about this (user, service, verdict) on this relay.
    First,
    /// A later interval's counts.
    Aggregate,
}

impl PairLine {
    /// `"first"` or `"aggregate"`.
    pub const fn name(self) -> &'static str {
        match self {
            PairLine::First => "first",
            PairLine::Aggregate => "aggregate",
        }
    }
}

/// One audit line, as the sink gets it.
#[derive(Debug, Clone, Copy)]
pub enum AuditLine<'a> {
    /// One (user, service, verdict) and its counts in the interval.
    Pair {
        /// First or aggregate.
        kind: PairLine,
        /// The user.
        user: UserId,
        /// Its name in the policy, if it has one.
        user_name: Option<&'a str>,
        /// The service.
        service: ServiceId,
        /// Its name in the policy, if it has one.
        service_name: Option<&'a str>,
        /// The verdict.
        access: Access,
        /// Why the policy denies it (deny only).
        reason: Option<&'static str>,
        /// Frames and bytes in the interval.
        counts: Counts,
    },
    /// What the bound left out of this interval.
    Summary {
        /// Pairs whose line was suppressed.
        suppressed_pairs: u64,
        /// Their frames and bytes.
        suppressed: Counts,
        /// Frames of pairs that found no room (a worker's full table, or
        /// the interval's full map), not attributed to any pair.
        overflow: Counts,
    },
}

/// Where audit lines go.
pub trait AuditSink {
    /// Writes one line. `relay` names this relay; `interval` is the length
    /// of the interval the counts cover and `seq` its number (1 for the
    /// first since the relay started): the lines of one interval share it.
    fn line(&mut self, relay: &RelayName, interval: Duration, seq: u64, line: &AuditLine<'_>);
}

/// This relay, as audit lines name it (its certificate's id and name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayName {
    /// Certificate id.
    pub id: u32,
    /// Certificate name.
    pub name: String,
}

/// Writes audit lines as `tracing` events with target `"audit"` at level
/// INFO (a filter such as `RUST_LOG=info,audit=off` silences them; the
/// JSON formatter makes one object per line of them).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn line(&mut self, relay: &RelayName, interval: Duration, seq: u64, line: &AuditLine<'_>) {
        let interval_ms = interval.as_millis() as u64;
        match *line {
            AuditLine::Pair {
                kind,
                user,
                user_name,
                service,
                service_name,
                access,
                reason,
                counts,
            } => tracing::info!(
                target: "audit",
                audit = kind.name(),
                relay_id = relay.id,
                relay = relay.name.as_str(),
                user_id = user.0,
                user = user_name,
                service_id = service.0,
                service = service_name,
                verdict = access.name(),
                reason,
                frames = counts.frames,
                bytes = counts.bytes,
                interval_ms,
                interval_seq = seq,
                "access {}", access.name()
            ),
            AuditLine::Summary {
                suppressed_pairs,
                suppressed,
                overflow,
            } => tracing::info!(
                target: "audit",
                audit = "summary",
                relay_id = relay.id,
                relay = relay.name.as_str(),
                suppressed_pairs,
                suppressed_frames = suppressed.frames,
                suppressed_bytes = suppressed.bytes,
                overflow_frames = overflow.frames,
                overflow_bytes = overflow.bytes,
                interval_ms,
                interval_seq = seq,
                "{suppressed_pairs} pairs suppressed by the audit line bound"
            ),
        }
    }
}

/// The audit's counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Decisions (frames) taken from the workers' tables, overflow
    /// included.
    pub decisions: u64,
    /// `first` lines written.
    pub first_lines: u64,
    /// `aggregate` lines written.
    pub aggregate_lines: u64,
    /// `summary` lines written.
    pub summary_lines: u64,
    /// Pair lines suppressed by the bound.
    pub suppressed_pairs: u64,
    /// Frames no table or map had room for (reported only in summaries).
    pub overflow_frames: u64,
}

impl AuditStats {
    /// All lines written.
    pub fn lines(&self) -> u64 {
        self.first_lines + self.aggregate_lines + self.summary_lines
    }
}

type Pair = (UserId, ServiceId);

/// Pairs already reported: two generations (see the module documentation).
#[derive(Debug)]
struct Reported {
    current: HashSet<(Pair, Access)>,
    previous: HashSet<(Pair, Access)>,
    generation: usize,
}

impl Reported {
    fn new(remember: usize) -> Reported {
        Reported {
            current: HashSet::new(),
            previous: HashSet::new(),
            generation: (remember / 2).max(1),
        }
    }

    fn contains(&self, key: &(Pair, Access)) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }

    /// Marks `key` reported now (moving it to the current generation).
    fn mark(&mut self, key: (Pair, Access)) {
        if self.current.contains(&key) {
            return;
        }
        if self.current.len() >= self.generation {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key);
    }
}

/// The control thread's side of the audit: adds the workers' tables up and
/// writes the lines once per interval, within the bound.
#[derive(Debug)]
pub struct Auditor {
    config: AuditConfig,
    relay: RelayName,
    /// This interval's pairs, per verdict (allow, deny).
    active: [HashMap<Pair, Counts>; 2],
    /// Frames that found no room: in a worker's table, or in `active`.
    overflow: Counts,
    reported: Reported,
    /// Reused each interval: the lines in the order they are written.
    order: Vec<(Access, bool, Pair, Counts)>,
    /// Intervals flushed so far.
    seq: u64,
    stats: AuditStats,
}

impl Auditor {
    /// An auditor for the relay `relay`.
    pub fn new(config: AuditConfig, relay: RelayName) -> Auditor {
        Auditor {
            reported: Reported::new(config.remember),
            config,
            relay,
            active: [HashMap::new(), HashMap::new()],
            overflow: Counts::default(),
            order: Vec::new(),
            seq: 0,
            stats: AuditStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> AuditStats {
        self.stats
    }

    /// Adds a worker's drained table to the interval.
    pub fn absorb(&mut self, table: &AuditTable) {
        let cap = self.config.remember;
        for e in table.entries() {
            self.stats.decisions = self.stats.decisions.saturating_add(e.counts.frames);
            let map = &mut self.active[usize::from(e.access == Access::Deny)];
            let pair = (e.user, e.service);
            let room = map.len() < cap;
            match map.get_mut(&pair) {
                Some(c) => c.add(e.counts),
                None if room => {
                    map.insert(pair, e.counts);
                }
                None => self.overflow.add(e.counts),
            }
        }
        for access in Access::ALL {
            let o = table.overflow(access);
            self.stats.decisions = self.stats.decisions.saturating_add(o.frames);
            self.overflow.add(o);
        }
    }

    /// Writes the interval's lines to `sink` (names and deny reasons from
    /// `policy`) and starts the next interval.
    pub fn flush(&mut self, policy: &CompiledPolicy, sink: &mut impl AuditSink) {
        let Auditor {
            config,
            relay,
            active,
            overflow,
            reported,
            order,
            seq,
            stats,
        } = self;
        *seq += 1;
        let seq = *seq;
        order.clear();
        for (access, map) in Access::ALL.into_iter().zip(active.iter_mut()) {
            for (&pair, &counts) in map.iter() {
                let known = reported.contains(&(pair, access));
                order.push((access, known, pair, counts));
            }
            map.clear();
        }
        // Allowed before denied; within each, new pairs before known ones;
        // then by ids, so the output does not depend on hashing.
        order.sort_unstable_by_key(|&(access, known, pair, _)| (access, known, pair));
        let mut suppressed_pairs = 0u64;
        let mut suppressed = Counts::default();
        let mut written = 0usize;
        for &(access, known, (user, service), counts) in order.iter() {
            if written >= config.max_lines {
                suppressed_pairs += 1;
                suppressed.add(counts);
                continue;
            }
            written += 1;
            reported.mark(((user, service), access));
            let kind = if known {
                stats.aggregate_lines += 1;
                PairLine::Aggregate
            } else {
                stats.first_lines += 1;
                PairLine::First
            };
            let reason = (access == Access::Deny).then(|| deny_reason(policy, user, service));
            sink.line(
                relay,
                config.interval,
                seq,
                &AuditLine::Pair {
                    kind,
                    user,
                    user_name: policy.user_name(user),
                    service,
                    service_name: policy.service(service).map(|s| s.name.as_str()),
                    access,
                    reason,
                    counts,
                },
            );
        }
        if suppressed_pairs > 0 || *overflow != Counts::default() {
            stats.summary_lines += 1;
            stats.suppressed_pairs += suppressed_pairs;
            stats.overflow_frames = stats.overflow_frames.saturating_add(overflow.frames);
            sink.line(
                relay,
                config.interval,
                seq,
                &AuditLine::Summary {
                    suppressed_pairs,
                    suppressed,
                    overflow: *overflow,
                },
            );
        }
        *overflow = Counts::default();
    }
}

/// Why `policy` denies `user` access to `service`, as a stable word.
pub fn deny_reason(policy: &CompiledPolicy, user: UserId, service: ServiceId) -> &'static str {
    if policy.user_name(user).is_none() {
        "unknown_user"
    } else if policy.service(service).is_none() {
        "unknown_service"
    } else if policy.allowed(user, service) {
        // Denied by the policy in force then; a reload since allows it.
        "denied_by_earlier_policy"
    } else {
        "not_granted"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink keeping owned copies of the lines.
    #[derive(Debug, Default)]
    struct Lines(Vec<Line>);

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Line {
        Pair {
            kind: PairLine,
            user: u32,
            user_name: Option<String>,
            service: u32,
            service_name: Option<String>,
            access: Access,
            reason: Option<&'static str>,
            frames: u64,
            bytes: u64,
        },
        Summary {
            pairs: u64,
            frames: u64,
            overflow: u64,
        },
    }

    impl AuditSink for Lines {
        fn line(&mut self, relay: &RelayName, _: Duration, _: u64, line: &AuditLine<'_>) {
            assert_eq!(relay.name, "relay-test");
            self.0.push(match *line {
                AuditLine::Pair {
                    kind,
                    user,
                    user_name,
                    service,
                    service_name,
                    access,
                    reason,
                    counts,
                } => Line::Pair {
                    kind,
                    user: user.0,
                    user_name: user_name.map(str::to_owned),
                    service: service.0,
                    service_name: service_name.map(str::to_owned),
                    access,
                    reason,
                    frames: counts.frames,
                    bytes: counts.bytes,
                },
                AuditLine::Summary {
                    suppressed_pairs,
                    suppressed,
                    overflow,
                } => Line::Summary {
                    pairs: suppressed_pairs,
                    frames: suppressed.frames,
                    overflow: overflow.frames,
                },
            });
        }
    }

    impl Lines {
        fn take(&mut self) -> Vec<Line> {
            std::mem::take(&mut self.0)
        }
    }

    fn policy() -> CompiledPolicy {
        // 4 users, 8 services; ids divisible by 4 denied.
        CompiledPolicy::compile(&proto::testkit::policy_file(4, 8)).expect("valid policy")
    }

    fn auditor(max_lines: usize) -> Auditor {
        Auditor::new(
            AuditConfig {
                max_lines,
                ..AuditConfig::default()
            },
            RelayName {
                id: 1000,
                name: "relay-test".into(),
            },
        )
    }

    fn table(records: &[(u32, u32, Access, u64)]) -> AuditTable {
        let mut t = AuditTable::new(64, 3);
        for &(u, s, access, n) in records {
            for _ in 0..n {
                t.record(UserId(u), ServiceId(s), access, 100);
            }
        }
        t
    }

    fn kinds(lines: &[Line]) -> Vec<(PairLine, u32, u32, Access, u64)> {
        lines
            .iter()
            .filter_map(|l| match l {
                Line::Pair {
                    kind,
                    user,
                    service,
                    access,
                    frames,
                    ..
                } => Some((*kind, *user, *service, *access, *frames)),
                Line::Summary { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_pair_gets_one_first_line_then_aggregates() {
        let policy = policy();
        let mut a = auditor(100);
        let mut out = Lines::default();
        // Two workers' tables in the same interval add up.
        a.absorb(&table(&[(1, 1, Access::Allow, 3), (1, 4, Access::Deny, 2)]));
        a.absorb(&table(&[(1, 1, Access::Allow, 2)]));
        a.flush(&policy, &mut out);
        let first = out.take();
        assert_eq!(
            kinds(&first),
            [
                (PairLine::First, 1, 1, Access::Allow, 5),
                (PairLine::First, 1, 4, Access::Deny, 2),
            ]
        );
        let Line::Pair {
            user_name,
            service_name,
            reason,
            bytes,
            ..
        } = &first[1]
        else {
            panic!("a pair line: {first:?}");
        };
        assert_eq!(user_name.as_deref(), Some("user1"));
        assert!(service_name.is_some(), "service 4 is in the policy");
        assert_eq!(*reason, Some("not_granted"));
        assert_eq!(*bytes, 200);

        // Nothing active: nothing written.
        a.flush(&policy, &mut out);
        assert!(out.take().is_empty());

        // The same pairs again: aggregates only, with this interval's counts.
        a.absorb(&table(&[(1, 1, Access::Allow, 7), (1, 4, Access::Deny, 1)]));
        // The same pair allowed after a reload is a new key.
        a.absorb(&table(&[(1, 4, Access::Allow, 1)]));
        a.flush(&policy, &mut out);
        assert_eq!(
            kinds(&out.take()),
            [
                (PairLine::First, 1, 4, Access::Allow, 1),
                (PairLine::Aggregate, 1, 1, Access::Allow, 7),
                (PairLine::Aggregate, 1, 4, Access::Deny, 1),
            ]
        );
        let s = a.stats();
        assert_eq!(
            (s.first_lines, s.aggregate_lines, s.summary_lines),
            (3, 2, 0)
        );
        assert_eq!(s.decisions, 5 + 2 + 7 + 1 + 1);
    }

    #[test]
    fn deny_reasons_name_what_the_policy_lacks() {
        let policy = policy();
        assert_eq!(
            deny_reason(&policy, UserId(99), ServiceId(1)),
            "unknown_user"
        );
        assert_eq!(
            deny_reason(&policy, UserId(1), ServiceId(999)),
            "unknown_service"
        );
        assert_eq!(deny_reason(&policy, UserId(1), ServiceId(4)), "not_granted");
        assert_eq!(
            deny_reason(&policy, UserId(1), ServiceId(1)),
            "denied_by_earlier_policy"
        );
    }

    #[test]
    fn a_flood_of_distinct_pairs_writes_at_most_the_bound_and_a_summary() {
        let policy = policy();
        let bound = 50;
        let mut a = auditor(bound);
        let mut out = Lines::default();
        // A legitimate pair and 5000 distinct denied pairs of one user,
        // spread over several worker tables (each table takes 48 pairs,
        // and counts the rest as overflow).
        let mut sent = 0u64;
        a.absorb(&table(&[(1, 1, Access::Allow, 4)]));
        sent += 4;
        for chunk in (100..5100u32).collect::<Vec<_>>().chunks(40) {
            let records: Vec<_> = chunk.iter().map(|&s| (2, s, Access::Deny, 1)).collect();
            a.absorb(&table(&records));
            sent += chunk.len() as u64;
        }
        for interval in 0..3 {
            a.flush(&policy, &mut out);
            let lines = out.take();
            if interval > 0 {
                assert!(lines.is_empty(), "nothing active: {lines:?}");
                continue;
            }
            assert_eq!(lines.len(), bound + 1, "the bound and one summary line");
            assert_eq!(
                kinds(&lines)[0],
                (PairLine::First, 1, 1, Access::Allow, 4),
                "allowed pairs come first"
            );
            let Some(Line::Summary {
                pairs,
                frames,
                overflow,
            }) = lines.last()
            else {
                panic!("no summary: {lines:?}");
            };
            assert_eq!(*pairs, 5000 - (bound as u64 - 1));
            let listed: u64 = kinds(&lines).iter().map(|k| k.4).sum();
            assert_eq!(
                listed + frames + overflow,
                sent,
                "every frame accounted for"
            );
        }
        // The flood goes on: still at most the bound per interval, and the
        // pairs suppressed before get their first lines now.
        for chunk in (100..5100u32).collect::<Vec<_>>().chunks(40) {
            let records: Vec<_> = chunk.iter().map(|&s| (2, s, Access::Deny, 1)).collect();
            a.absorb(&table(&records));
        }
        a.flush(&policy, &mut out);
        let lines = out.take();
        assert_eq!(lines.len(), bound + 1);
        assert!(
            kinds(&lines)
                .iter()
                .all(|k| k.0 == PairLine::First && k.3 == Access::Deny),
            "new denied pairs before known ones: {lines:?}"
        );
        let s = a.stats();
        assert_eq!(s.lines(), 2 * (bound as u64 + 1));
        assert_eq!(s.summary_lines, 2);
    }

    #[test]
    fn remembered_pairs_are_bounded_and_active_ones_are_kept() {
        let policy = policy();
        let mut a = Auditor::new(
            AuditConfig {
                remember: 8,
                ..AuditConfig::default()
            },
            RelayName {
                id: 1000,
                name: "relay-test".into(),
            },
        );
        let mut out = Lines::default();
        // Pair (1, 1) stays active while 40 others come and go.
        for s in 100..140u32 {
            a.absorb(&table(&[(1, 1, Access::Allow, 1), (2, s, Access::Deny, 1)]));
            a.flush(&policy, &mut out);
        }
        let lines = out.take();
        let firsts_of_1_1 = kinds(&lines)
            .iter()
            .filter(|k| k.0 == PairLine::First && (k.1, k.2) == (1, 1))
            .count();
        assert_eq!(firsts_of_1_1, 1, "an active pair is announced once");
        assert!(
            a.reported.current.len() + a.reported.previous.len() <= 8,
            "memory bounded"
        );
        // Pair (2, 100) was forgotten long ago: reported afresh.
        a.absorb(&table(&[(2, 100, Access::Deny, 1)]));
        a.flush(&policy, &mut out);
        assert_eq!(
            kinds(&out.take()),
            [(PairLine::First, 2, 100, Access::Deny, 1)]
        );
    }

    #[test]
    fn overflowed_frames_are_reported_in_a_summary() {
        let policy = policy();
        let mut a = auditor(1000);
        let mut out = Lines::default();
        let mut t = AuditTable::new(16, 0);
        for s in 0..100u32 {
            t.record(UserId(3), ServiceId(1000 + s), Access::Deny, 10);
        }
        let over = t.overflow(Access::Deny).frames;
        assert!(over > 0);
        a.absorb(&t);
        a.flush(&policy, &mut out);
        let lines = out.take();
        assert_eq!(lines.len(), t.len() + 1);
        assert_eq!(
            lines.last(),
            Some(&Line::Summary {
                pairs: 0,
                frames: 0,
                overflow: over
            })
        );
        assert_eq!(a.stats().overflow_frames, over);
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(AuditConfig::default().validate(), Ok(()));
        for (bad, err) in [
            (
                AuditConfig {
                    interval: Duration::from_millis(1),
                    ..AuditConfig::default()
                },
                "audit interval 1ms must be between 10 ms and 1 h",
            ),
            (
                AuditConfig {
                    max_lines: 0,
                    ..AuditConfig::default()
                },
                "audit max_lines must be at least 1 (turn the audit off with enabled = false)",
            ),
        ] {
            assert_eq!(bad.validate().map_err(|e| e.to_string()), Err(err.into()));
        }
    }
}
