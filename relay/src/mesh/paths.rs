//! Paths through the mesh: which neighbour leads to which relay.
//!
//! Every relay publishes in its etcd record the relays it holds a live link
//! with ([`super::registry::RelayRecord::links`]). A link counts as an edge
//! of the mesh graph only when both ends list each other, so a link that is
//! half up, or a record that lies about a link, routes nothing. A relay's
//! own edges come from its live sessions, not from its record (which lags).
//!
//! [`first_hops`] runs a breadth-first search from this relay: for every
//! relay it can reach, the neighbour on a shortest path and the number of
//! links to cross. Ties go to the neighbour with the lowest id, so every
//! relay that sees the same records derives the same shortest-path tree
//! and frames follow it without loops. While views differ (a watch lags) a
//! loop is possible for as long as they differ; the frame's `ttl`, which
//! every relay decrements, bounds it.
//!
//! Pure functions over plain maps: no etcd, no sessions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::registry::RelayId;

/// The way from one relay to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The neighbour to send to.
    pub first: RelayId,
    /// Links to cross (1: the destination is a neighbour).
    pub hops: u32,
}

/// Shortest paths from `me` to every relay reachable over the mesh's
/// links. `mine`: the relays `me` holds a live link with. `declared`: each
/// other relay's published links (from its etcd record). An edge between
/// two other relays needs both to list it; an edge between `me` and
/// another needs a live link here and `me` in the other's list.
pub fn first_hops(
    me: &RelayId,
    mine: &BTreeSet<RelayId>,
    declared: &BTreeMap<RelayId, BTreeSet<RelayId>>,
) -> BTreeMap<RelayId, Path> {
    let lists = |r: &RelayId, other: &RelayId| -> bool {
        if r == me {
            mine.contains(other)
        } else {
            declared.get(r).is_some_and(|l| l.contains(other))
        }
    };
    let neighbours = |r: &RelayId| -> Vec<RelayId> {
        let listed: Box<dyn Iterator<Item = &RelayId>> = if r == me {
            Box::new(mine.iter())
        } else {
            Box::new(declared.get(r).into_iter().flatten())
        };
        // Sorted (both sources are ordered sets): ties break by id.
        listed.filter(|n| *n != r && lists(n, r)).cloned().collect()
    };
    let mut paths: BTreeMap<RelayId, Path> = BTreeMap::new();
    let mut queue: VecDeque<RelayId> = VecDeque::new();
    for n in neighbours(me) {
        paths.insert(
            n.clone(),
            Path {
                first: n.clone(),
                hops: 1,
            },
        );
        queue.push_back(n);
    }
    while let Some(r) = queue.pop_front() {
        let Some(via) = paths.get(&r).cloned() else {
            continue;
        };
        for n in neighbours(&r) {
            if n == *me || paths.contains_key(&n) {
                continue;
            }
            paths.insert(
                n.clone(),
                Path {
                    first: via.first.clone(),
                    hops: via.hops + 1,
                },
            );
            queue.push_back(n);
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RelayId {
        RelayId::new(s).unwrap()
    }

    fn set(ids: &[&str]) -> BTreeSet<RelayId> {
        ids.iter().map(|s| id(s)).collect()
    }

    fn declared(edges: &[(&str, &[&str])]) -> BTreeMap<RelayId, BTreeSet<RelayId>> {
        edges.iter().map(|(r, l)| (id(r), set(l))).collect()
    }

    fn first(paths: &BTreeMap<RelayId, Path>, to: &str) -> Option<(String, u32)> {
        paths
            .get(&id(to))
            .map(|p| (p.first.as_str().to_owned(), p.hops))
    }

    #[test]
    fn a_chain_routes_through_the_middle() {
        // a - b - c; a has no link to c.
        let d = declared(&[("b", &["a", "c"]), ("c", &["b"])]);
        let p = first_hops(&id("a"), &set(&["b"]), &d);
        assert_eq!(first(&p, "b"), Some(("b".into(), 1)));
        assert_eq!(first(&p, "c"), Some(("b".into(), 2)));
        assert_eq!(p.len(), 2);
        // From the middle both ends are neighbours.
        let d = declared(&[("a", &["b"]), ("c", &["b"])]);
        let p = first_hops(&id("b"), &set(&["a", "c"]), &d);
        assert_eq!(first(&p, "a"), Some(("a".into(), 1)));
        assert_eq!(first(&p, "c"), Some(("c".into(), 1)));
    }

    #[test]
    fn an_edge_needs_both_ends() {
        // c claims a link to b that b does not confirm.
        let d = declared(&[("b", &["a"]), ("c", &["b"])]);
        let p = first_hops(&id("a"), &set(&["b"]), &d);
        assert_eq!(first(&p, "c"), None);
        // b lists a, but a holds no live link to b: no edge.
        let p = first_hops(&id("a"), &set(&[]), &d);
        assert!(p.is_empty());
        // a holds a live link to b that b does not list yet: no edge
        // either (b would not route back).
        let d = declared(&[("b", &[])]);
        assert!(first_hops(&id("a"), &set(&["b"]), &d).is_empty());
    }

    #[test]
    fn the_shortest_path_wins_and_ties_go_to_the_lowest_id() {
        // a - b - d, a - c - d, a - e - f - d (longer).
        let d = declared(&[
            ("b", &["a", "d"]),
            ("c", &["a", "d"]),
            ("d", &["b", "c", "f"]),
            ("e", &["a", "f"]),
            ("f", &["e", "d"]),
        ]);
        let p = first_hops(&id("a"), &set(&["b", "c", "e"]), &d);
        assert_eq!(first(&p, "d"), Some(("b".into(), 2)));
        assert_eq!(first(&p, "f"), Some(("e".into(), 2)));
    }

    #[test]
    fn paths_are_loop_free_when_views_agree() {
        // A ring of 6 plus a chord; from every relay, following first hops
        // towards every destination reaches it in `hops` steps.
        let names = ["a", "b", "c", "d", "e", "f"];
        let mut edges: BTreeMap<RelayId, BTreeSet<RelayId>> = BTreeMap::new();
        let mut link = |x: &str, y: &str| {
            edges.entry(id(x)).or_default().insert(id(y));
            edges.entry(id(y)).or_default().insert(id(x));
        };
        for i in 0..names.len() {
            link(names[i], names[(i + 1) % names.len()]);
        }
        link("a", "d");
        let all: BTreeMap<RelayId, BTreeMap<RelayId, Path>> = names
            .iter()
            .map(|n| {
                let me = id(n);
                (me.clone(), first_hops(&me, &edges[&me], &edges))
            })
            .collect();
        for from in names {
            for to in names.iter().filter(|t| **t != from) {
                let mut at = id(from);
                let expected = all[&at][&id(to)].hops;
                let mut steps = 0u32;
                while at != id(to) {
                    at = all[&at][&id(to)].first.clone();
                    steps += 1;
                    assert!(steps as usize <= names.len(), "loop from {from} to {to}");
                }
                assert_eq!(steps, expected, "{from} -> {to}");
            }
        }
    }
}
