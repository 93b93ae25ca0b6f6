//! Repairs: where the replicas of a leaving or dead member go, and where the missing replicas of
//! under-replicated ranges go. Zone spread first, then load; the planner's rounds reshape,
//! these restore.

use pleiades_proto::v1::RangeDescriptor;

use super::{lacking_zones, Members, Tally, View};
use crate::raft::NodeId;
use crate::range::placement::{Move, PlanError};

/// Where `leaving`'s replicas go (a decommission, or a node dead too long): the replacement of its
/// replica goes to another member of its zone when one is alive (the range keeps its spread),
/// else to the least loaded zone the range lacks, else to a member with no zone, else to the
/// least loaded living member. A range above its factor only loses the replica.
pub fn plan_decommission_in(view: View<'_>, leaving: NodeId) -> Result<Vec<Move>, PlanError> {
    let members = Members::new(view.members);
    let leaving_member = members.position.get(&leaving).copied();
    if leaving_member.is_none() && !view.descriptors.iter().any(|r| r.replicas.contains(&leaving)) {
        return Err(PlanError::UnknownNode(leaving));
    }
    let mut tally = Tally::new(&members, replica_counts(&members, view.descriptors));
    let factor = view.settings.replication_factor as usize;
    let mut moves = Vec::new();
    for range in view.descriptors.iter().filter(|r| r.replicas.contains(&leaving)) {
        if range.replicas.len() > factor {
            moves.push(Move { range_id: range.range_id, add: 0, remove: leaving });
            continue;
        }
        let (mut holders, _) = members.holders(range);
        holders.retain(|h| Some(*h) != leaving_member);
        let Some(target) = repair_target(&members, &tally, &holders, leaving_member) else {
            return Err(PlanError::NoTarget {
                range_id: range.range_id,
                node: leaving,
                replicas: range.replicas.clone(),
            });
        };
        tally.change(target, true);
        moves.push(Move { range_id: range.range_id, add: members.id(target), remove: leaving });
    }
    Ok(moves)
}

/// Additions that bring every range up to the replication factor: each missing replica goes to the
/// least loaded zone the range lacks, else to a member with no zone, else to the least loaded
/// living member not holding the range.
pub fn plan_up_replicate_in(view: View<'_>) -> Vec<Move> {
    let members = Members::new(view.members);
    let mut tally = Tally::new(&members, replica_counts(&members, view.descriptors));
    let want = (view.settings.replication_factor as usize).min(tally.living());
    let mut moves = Vec::new();
    for range in view.descriptors {
        let (mut holders, _) = members.holders(range);
        let mut replicas = range.replicas.len();
        while replicas < want {
            let Some(target) = repair_target(&members, &tally, &holders, None) else { break };
            tally.change(target, true);
            holders.push(target);
            replicas += 1;
            moves.push(Move { range_id: range.range_id, add: members.id(target), remove: 0 });
        }
    }
    moves
}

fn replica_counts(members: &Members, descriptors: &[RangeDescriptor]) -> Vec<usize> {
    let mut counts = vec![0; members.len()];
    for member in descriptors.iter().flat_map(|r| &r.replicas).filter_map(|id| members.position.get(id)) {
        counts[*member] += 1;
    }
    counts
}

/// Where a replacement replica goes: `leaving`'s zone if the range lacks it now, else the least
/// loaded zone (replicas per living member) it lacks, else a member with no zone, else anyone.
fn repair_target(members: &Members, tally: &Tally, holders: &[usize], leaving: Option<usize>) -> Option<usize> {
    let excluded = |member: &usize| holders.contains(member) || Some(*member) == leaving;
    let first_in = |group: usize| tally.groups[group].iter().map(|(_, m)| *m).find(|m| !excluded(m));
    let mut lacking = lacking_zones(members, tally, holders);
    let home = leaving.and_then(|m| members.zone[m]).filter(|zone| lacking.contains(zone));
    let zone_load = |zone: &usize| tally.group_total[*zone] as f64 / tally.groups[*zone].len().max(1) as f64;
    lacking.sort_by(|a, b| zone_load(a).total_cmp(&zone_load(b)).then(a.cmp(b)));
    home.into_iter()
        .chain(lacking)
        .chain([members.unzoned_group()])
        .find_map(first_in)
        .or_else(|| tally.all.iter().map(|(_, m)| *m).find(|m| !excluded(m)))
}
