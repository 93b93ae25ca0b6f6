//! Replica placement decisions, as pure functions of the range descriptors: the initial layout,
//! which replicas a joining node takes over, which replica an over-replicated range drops, and
//! whether a move may happen. (Where a leaving or lost node's replicas go, zone-aware, is the
//! planner's: `planner::plan_decommission_in`.) Sans-IO, so they are tested
//! exhaustively here; the node carries the moves out one at a time through the ranges' leaders.

use std::collections::{BTreeMap, BTreeSet};

use pleiades_proto::v1::{self, RangeDescriptor};

use super::META_RANGE_ID;
use crate::raft::NodeId;

/// Replace `remove` by `add` in one range's voters (`remove == 0`: only add; `add == 0`: only
/// remove, from a range above its factor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub range_id: u64,
    pub add: NodeId,
    pub remove: NodeId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("node {0} holds no replica and is not a member")]
    UnknownNode(NodeId),
    #[error(
        "range {range_id} has its replicas on nodes {replicas:?} and no other living node can take node {node}'s: \
         add a node (or bring a dead one back), or scale down less"
    )]
    NoTarget { range_id: u64, node: NodeId, replicas: Vec<NodeId> },
}

fn load(ranges: &[RangeDescriptor], nodes: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for range in ranges {
        for replica in &range.replicas {
            *load.entry(*replica).or_default() += 1;
        }
    }
    load
}

/// Moves that give `new_node` its fair share of replicas, each taken from the most loaded
/// replica of a range it does not hold yet.
pub fn plan_join(ranges: &[RangeDescriptor], nodes: &[NodeId], new_node: NodeId) -> Vec<Move> {
    let mut all: Vec<NodeId> = nodes.to_vec();
    all.push(new_node);
    let mut load = load(ranges, &all);
    let total: usize = ranges.iter().map(|r| r.replicas.len()).sum();
    let fair = total / load.len().max(1);
    let mut moves = Vec::new();
    let mut candidates: Vec<&RangeDescriptor> = ranges.iter().filter(|r| !r.replicas.contains(&new_node)).collect();
    while load.get(&new_node).copied().unwrap_or(0) < fair {
        // The range whose busiest replica is the busiest node overall.
        let best = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, range)| {
                let busiest = range.replicas.iter().max_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))?;
                Some((i, *busiest, load.get(busiest).copied().unwrap_or(0)))
            })
            .max_by_key(|(i, node, count)| (*count, *node, std::cmp::Reverse(*i)));
        let Some((index, busiest, count)) = best else { break };
        // Moving from a node no busier than the new one would not even out anything.
        if count <= load.get(&new_node).copied().unwrap_or(0) + 1 {
            break;
        }
        let range = candidates.remove(index);
        moves.push(Move { range_id: range.range_id, add: new_node, remove: busiest });
        *load.entry(busiest).or_default() -= 1;
        *load.entry(new_node).or_default() += 1;
    }
    moves
}

/// Removals that bring every range above `replication_factor` back down to it (two joins that
/// raced, or a move interrupted half-way, can leave one). A replica on a node gossip does not
/// know as living goes first, then the one on the most loaded node.
pub fn plan_down_replicate(ranges: &[RangeDescriptor], living: &[NodeId], replication_factor: u32) -> Vec<Move> {
    let want = (replication_factor as usize).max(1);
    let mut load = load(ranges, living);
    let mut moves = Vec::new();
    for range in ranges {
        let mut holders = range.replicas.clone();
        while holders.len() > want {
            let Some(victim) = holders
                .iter()
                .copied()
                .max_by_key(|node| (!living.contains(node), load.get(node).copied().unwrap_or(0), *node))
            else {
                break;
            };
            holders.retain(|node| *node != victim);
            if let Some(count) = load.get_mut(&victim) {
                *count = count.saturating_sub(1);
            }
            moves.push(Move { range_id: range.range_id, add: 0, remove: victim });
        }
    }
    moves
}

/// The voters `step` leaves a range with, given the voters it has now, or why it may not
/// happen. The range's leader applies moves one at a time through this, so moves planned from
/// the same (soon stale) view — two nodes joining together — cannot both take effect and push
/// the range above its factor. A move already carried out changes nothing, so retries are safe.
pub fn voters_after(
    voters: &BTreeSet<NodeId>,
    step: &Move,
    replication_factor: usize,
) -> Result<BTreeSet<NodeId>, String> {
    let range_id = step.range_id;
    let (has_add, has_remove) = (voters.contains(&step.add), voters.contains(&step.remove));
    let mut after = voters.clone();
    match (step.add, step.remove) {
        (0, 0) => return Err("a move must add or remove a replica".into()),
        (0, remove) => {
            if has_remove && voters.len() <= replication_factor {
                return Err(format!(
                    "range {range_id} has {} replicas; removing node {remove}'s would leave it under-replicated",
                    voters.len()
                ));
            }
            after.remove(&remove);
        }
        (add, 0) => {
            if !has_add && voters.len() >= replication_factor {
                return Err(format!("range {range_id} already has {} replicas", voters.len()));
            }
            after.insert(add);
        }
        (add, remove) => {
            if !has_remove && !has_add {
                return Err(format!("node {remove} holds no replica of range {range_id} any more"));
            }
            after.remove(&remove);
            after.insert(add);
        }
    }
    if after.is_empty() {
        return Err(format!("the move would leave range {range_id} without a voter"));
    }
    Ok(after)
}

/// Cuts the keyspace for a new constellation: the meta range plus `data_ranges` spans whose
/// split points are spread over the printable ASCII bytes '0'..'z' (so textual keys spread
/// out until load-based splitting exists), each replicated on `replication_factor` founders
/// (all of them when there are fewer), rotated so replicas and leaders spread evenly.
pub fn initial_layout(founders: &[NodeId], data_ranges: u32, replication_factor: u32) -> Vec<v1::RangeDescriptor> {
    let mut nodes: Vec<NodeId> = founders.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return Vec::new();
    }
    let replicas_per_range = (replication_factor as usize).min(nodes.len());
    let replicas_of =
        |index: usize| -> Vec<NodeId> { (0..replicas_per_range).map(|k| nodes[(index + k) % nodes.len()]).collect() };
    let (low, high) = (u32::from(b'0'), u32::from(b'z') + 1);
    let split = |j: u32| vec![(low + j * (high - low) / data_ranges) as u8];
    let mut layout = vec![v1::RangeDescriptor {
        range_id: META_RANGE_ID,
        replicas: replicas_of(0),
        generation: 1,
        meta: true,
        ..Default::default()
    }];
    for j in 0..data_ranges {
        layout.push(v1::RangeDescriptor {
            range_id: META_RANGE_ID + 1 + u64::from(j),
            start_key: if j == 0 { Vec::new() } else { split(j) },
            end_key: if j + 1 == data_ranges { Vec::new() } else { split(j + 1) },
            replicas: replicas_of(j as usize + 1),
            generation: 1,
            // The layout asked for at bootstrap stays: merges never undo it.
            sticky: j > 0,
            ..Default::default()
        });
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::planner::{plan_decommission_in, plan_up_replicate_in, MemberInfo, PlannerSettings, View};
    use crate::range::table::descriptor_contains;

    fn members(nodes: &[NodeId], leaving: NodeId) -> Vec<MemberInfo> {
        nodes
            .iter()
            .map(|id| MemberInfo {
                node_id: *id,
                alive: *id != leaving,
                zone: String::new(),
                region: String::new(),
                coordinate: None,
            })
            .collect()
    }

    /// The repairs' placement (the planner's, without zones) over `nodes`.
    fn plan_decommission(
        ranges: &[RangeDescriptor],
        nodes: &[NodeId],
        leaving: NodeId,
        factor: u32,
    ) -> Result<Vec<Move>, PlanError> {
        let settings = PlannerSettings { replication_factor: factor, ..PlannerSettings::default() };
        let (members, load) = (members(nodes, leaving), BTreeMap::new());
        plan_decommission_in(View { descriptors: ranges, load: &load, members: &members, settings: &settings }, leaving)
    }

    fn plan_up_replicate(ranges: &[RangeDescriptor], living: &[NodeId], factor: u32) -> Vec<Move> {
        let settings = PlannerSettings { replication_factor: factor, ..PlannerSettings::default() };
        let (members, load) = (members(living, 0), BTreeMap::new());
        plan_up_replicate_in(View { descriptors: ranges, load: &load, members: &members, settings: &settings })
    }

    fn apply(ranges: &mut [RangeDescriptor], moves: &[Move]) {
        for m in moves {
            let range = ranges.iter_mut().find(|r| r.range_id == m.range_id).unwrap();
            range.replicas.retain(|n| m.remove == 0 || *n != m.remove);
            if m.add != 0 {
                assert!(!range.replicas.contains(&m.add), "a range never holds two replicas on one node");
                range.replicas.push(m.add);
            }
        }
    }

    #[test]
    fn a_fourth_node_takes_a_fair_share_without_changing_replica_counts() {
        let mut ranges = initial_layout(&[1, 2, 3], 4, 3);
        let moves = plan_join(&ranges, &[1, 2, 3], 4);
        assert!(!moves.is_empty());
        apply(&mut ranges, &moves);
        let load = load(&ranges, &[1, 2, 3, 4]);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3));
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "balanced: {load:?}");
        assert_eq!(plan_join(&ranges, &[1, 2, 3, 4], 4), vec![], "a balanced node takes nothing more");
    }

    #[test]
    fn decommission_moves_every_replica_off_or_refuses() {
        let mut ranges = initial_layout(&[1, 2, 3, 4], 4, 3);
        let moves = plan_decommission(&ranges, &[1, 2, 3, 4], 2, 3).unwrap();
        apply(&mut ranges, &moves);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3 && !r.replicas.contains(&2)));
        let three = initial_layout(&[1, 2, 3], 4, 3);
        assert!(matches!(plan_decommission(&three, &[1, 2, 3], 3, 3), Err(PlanError::NoTarget { .. })));
        assert_eq!(plan_decommission(&three, &[1, 2, 3], 9, 3), Err(PlanError::UnknownNode(9)));
    }

    #[test]
    fn ranges_founded_by_one_node_fill_up_to_the_factor_as_nodes_join() {
        let mut ranges = initial_layout(&[1], 4, 3);
        assert!(plan_up_replicate(&ranges, &[1], 3).is_empty(), "one node: nothing to add");
        let moves = plan_up_replicate(&ranges, &[1, 2], 3);
        assert!(moves.iter().all(|m| m.add == 2 && m.remove == 0));
        apply(&mut ranges, &moves);
        let moves = plan_up_replicate(&ranges, &[1, 2, 3, 4, 5], 3);
        apply(&mut ranges, &moves);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3), "{ranges:?}");
        let load = load(&ranges, &[1, 2, 3, 4, 5]);
        assert!(load[&3] > 0 && load[&4] > 0 && load[&5] > 0, "new replicas spread: {load:?}");
        assert!(plan_up_replicate(&ranges, &[1, 2, 3, 4, 5], 3).is_empty(), "full ranges take nothing");
        assert!(
            plan_up_replicate(&ranges, &[1, 2, 3, 4], 3).iter().all(|m| m.add != 5),
            "a dead node never receives a replica"
        );
    }

    /// Two nodes that joined together each took a replica of the meta range from node 3.
    fn over_replicated_meta() -> Vec<RangeDescriptor> {
        let mut ranges = initial_layout(&[1, 2, 3], 4, 3);
        let meta = ranges.iter_mut().find(|r| r.meta).unwrap();
        meta.replicas = vec![1, 2, 3, 4];
        ranges
    }

    #[test]
    fn decommission_only_removes_a_replica_the_range_can_spare() {
        // 5 -> 3: node 4 leaves with the others full; the meta range keeps three replicas.
        let mut ranges = over_replicated_meta();
        let moves = plan_decommission(&ranges, &[1, 2, 3, 4], 4, 3).unwrap();
        assert_eq!(moves, vec![Move { range_id: ranges.iter().find(|r| r.meta).unwrap().range_id, add: 0, remove: 4 }]);
        apply(&mut ranges, &moves);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3 && !r.replicas.contains(&4)), "{ranges:?}");
    }

    #[test]
    fn an_over_replicated_range_is_trimmed_to_its_factor_dead_holders_first() {
        let mut ranges = over_replicated_meta();
        let moves = plan_down_replicate(&ranges, &[1, 2, 3, 4], 3);
        assert_eq!(moves.len(), 1, "{moves:?}");
        apply(&mut ranges, &moves);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3), "{ranges:?}");
        assert!(plan_down_replicate(&ranges, &[1, 2, 3, 4], 3).is_empty(), "ranges at their factor keep all");
        // Node 2 is dead: its replica is the one to drop, however loaded the others are.
        let ranges = over_replicated_meta();
        let moves = plan_down_replicate(&ranges, &[1, 3, 4], 3);
        assert_eq!(moves.iter().map(|m| m.remove).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn joins_racing_on_one_range_never_add_a_replica_beyond_the_factor() {
        // Two nodes plan their joins from the same descriptors and both take range 1 from node 3;
        // the leader applies the moves one at a time to the voters it has.
        let ranges = initial_layout(&[1, 2, 3], 4, 3);
        let meta = ranges.iter().find(|r| r.replicas.contains(&3)).unwrap();
        let mut voters: BTreeSet<NodeId> = meta.replicas.iter().copied().collect();
        let first = Move { range_id: meta.range_id, add: 4, remove: 3 };
        let second = Move { range_id: meta.range_id, add: 5, remove: 3 };
        voters = voters_after(&voters, &first, 3).unwrap();
        assert!(voters_after(&voters, &second, 3).is_err(), "node 3 no longer holds it: the second plan is stale");
        assert_eq!(voters_after(&voters, &first, 3).unwrap(), voters, "a retried move changes nothing");
        assert!(voters_after(&voters, &Move { range_id: 1, add: 5, remove: 0 }, 3).is_err(), "full: no addition");
        assert!(voters_after(&voters, &Move { range_id: 1, add: 0, remove: 4 }, 3).is_err(), "no removal below it");
        let four: BTreeSet<NodeId> = [1, 2, 4, 5].into();
        assert_eq!(voters_after(&four, &Move { range_id: 1, add: 0, remove: 5 }, 3).unwrap(), [1, 2, 4].into());
    }

    #[test]
    fn the_initial_layout_covers_the_keyspace_once_and_spreads_replicas() {
        let layout = initial_layout(&[3, 1, 2], 4, 3);
        assert_eq!(layout.len(), 5);
        assert!(layout[0].meta);
        let data = &layout[1..];
        assert!(data[0].start_key.is_empty() && data[3].end_key.is_empty());
        for pair in data.windows(2) {
            assert_eq!(pair[0].end_key, pair[1].start_key, "adjacent and without gaps");
            assert!(pair[0].start_key < pair[1].start_key || pair[0].start_key.is_empty());
        }
        for key in [&b""[..], b"\x00", b"0", b"abc", b"zzz", b"\xff\xff"] {
            assert_eq!(data.iter().filter(|d| descriptor_contains(d, key)).count(), 1, "{key:?}");
        }
        assert!(layout.iter().all(|d| d.replicas.len() == 3));
        let five = initial_layout(&[1, 2, 3, 4, 5], 4, 3);
        let mut per_node = BTreeMap::new();
        for d in &five {
            for r in &d.replicas {
                *per_node.entry(*r).or_insert(0) += 1;
            }
        }
        assert_eq!(per_node.len(), 5, "every founder gets replicas: {per_node:?}");
        assert_eq!(initial_layout(&[7], 2, 3)[1].replicas, vec![7], "one node, one replica");
    }
}
