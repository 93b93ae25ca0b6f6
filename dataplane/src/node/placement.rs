//! Replica placement decisions, as pure functions of the range descriptors: which replicas a
//! joining node takes over and where a leaving node's replicas go. Sans-IO, so they are tested
//! exhaustively here; the node carries the moves out one at a time through the ranges' leaders.

use std::collections::BTreeMap;

use pleiades_proto::v1::RangeDescriptor;

use crate::raft::NodeId;

/// Replace `remove` by `add` in one range's voters (`remove == 0`: only add).
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
        "range {range_id} has replicas on every other node ({replicas:?}); decommissioning node {node} would leave \
         it under-replicated: add a node first"
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

/// Moves that take every replica off `leaving`, each to the least loaded node not already
/// holding that range.
pub fn plan_decommission(
    ranges: &[RangeDescriptor],
    nodes: &[NodeId],
    leaving: NodeId,
) -> Result<Vec<Move>, PlanError> {
    if !nodes.contains(&leaving) && !ranges.iter().any(|r| r.replicas.contains(&leaving)) {
        return Err(PlanError::UnknownNode(leaving));
    }
    let mut load = load(ranges, nodes);
    load.remove(&leaving);
    let mut moves = Vec::new();
    for range in ranges.iter().filter(|r| r.replicas.contains(&leaving)) {
        let target = load
            .iter()
            // Only listed nodes take replicas: a holder that is not listed may be dead.
            .filter(|(node, _)| nodes.contains(node) && !range.replicas.contains(node))
            .min_by_key(|(node, count)| (**count, **node))
            .map(|(node, _)| *node);
        let Some(target) = target else {
            return Err(PlanError::NoTarget {
                range_id: range.range_id,
                node: leaving,
                replicas: range.replicas.clone(),
            });
        };
        *load.entry(target).or_default() += 1;
        moves.push(Move { range_id: range.range_id, add: target, remove: leaving });
    }
    Ok(moves)
}

/// Additions that bring every range up to `replication_factor` replicas (or as many as there
/// are living nodes), each on the least loaded living node not holding that range yet. Ranges
/// founded by fewer nodes than the factor fill up as nodes join; replicas on dead nodes are
/// replaced by decommissioning those nodes, not here.
pub fn plan_up_replicate(ranges: &[RangeDescriptor], living: &[NodeId], replication_factor: u32) -> Vec<Move> {
    let want = (replication_factor as usize).min(living.len());
    let mut load = load(ranges, living);
    let mut moves = Vec::new();
    for range in ranges {
        let mut holders = range.replicas.clone();
        while holders.len() < want {
            let target = load
                .iter()
                .filter(|(node, _)| living.contains(node) && !holders.contains(node))
                .min_by_key(|(node, count)| (**count, **node))
                .map(|(node, _)| *node);
            let Some(target) = target else { break };
            *load.entry(target).or_default() += 1;
            holders.push(target);
            moves.push(Move { range_id: range.range_id, add: target, remove: 0 });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::replicas::initial_layout;

    fn apply(ranges: &mut [RangeDescriptor], moves: &[Move]) {
        for m in moves {
            let range = ranges.iter_mut().find(|r| r.range_id == m.range_id).unwrap();
            range.replicas.retain(|n| m.remove == 0 || *n != m.remove);
            assert!(!range.replicas.contains(&m.add), "a range never holds two replicas on one node");
            range.replicas.push(m.add);
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
        let moves = plan_decommission(&ranges, &[1, 2, 3, 4], 2).unwrap();
        apply(&mut ranges, &moves);
        assert!(ranges.iter().all(|r| r.replicas.len() == 3 && !r.replicas.contains(&2)));
        let three = initial_layout(&[1, 2, 3], 4, 3);
        assert!(matches!(plan_decommission(&three, &[1, 2, 3], 3), Err(PlanError::NoTarget { .. })));
        assert_eq!(plan_decommission(&three, &[1, 2, 3], 9), Err(PlanError::UnknownNode(9)));
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
}
