//! Range changes an operator asks for by hand (`pleiades ranges split|relocate|transfer-leader|
//! merge`), carried out like the planner's own decisions, through each range's leader.

use std::collections::BTreeSet;

use pleiades_proto::v1::{self, range_admin_request::Action};

use super::executor::Ranges;
use super::placement::Move;
use super::planner::{Decision, SplitReason};
use crate::raft::NodeId;

impl Ranges {
    /// Carries out one admin request; what was done, or why it stopped.
    pub async fn admin(&self, request: v1::RangeAdminRequest) -> v1::RangeAdminResponse {
        let mut done = Vec::new();
        let error = match self.admin_steps(request, &mut done).await {
            Ok(()) => String::new(),
            Err(e) => e,
        };
        v1::RangeAdminResponse { done, error }
    }

    async fn admin_steps(&self, request: v1::RangeAdminRequest, done: &mut Vec<String>) -> Result<(), String> {
        let action = request.action.ok_or("the request names no action")?;
        let survey = self.survey(None).await;
        let range_id = match (&action, request.range_id) {
            // A split names its key; the range is whichever holds it.
            (Action::SplitAt(key), 0) if !key.is_empty() => {
                self.table.for_key(key).map(|d| d.range_id).ok_or("no range holds that key")?
            }
            (_, 0) => return Err("name a range".into()),
            (_, id) => id,
        };
        let descriptor = self.table.get(range_id).ok_or_else(|| format!("no range {range_id} is known"))?;
        let decisions = match action {
            Action::SplitAt(key) => vec![Decision::Split { range_id, key, reason: SplitReason::Manual }],
            Action::TransferLeaderTo(to) => vec![Decision::TransferLeader { range_id, to }],
            Action::RelocateTo(list) => relocation(&descriptor, &list.nodes, self.factor())?,
            Action::Merge(_) => vec![merge_with_right_neighbour(&descriptor, &self.table.descriptors())?],
        };
        for decision in decisions {
            if let Decision::Move(step) = &decision {
                for node in [step.add, step.remove].into_iter().filter(|n| *n != 0) {
                    if !survey.members.contains_key(&node) {
                        return Err(format!("node {node} is not a member"));
                    }
                }
            }
            done.push(self.execute(&decision, &survey.members).await?);
        }
        Ok(())
    }
}

/// The merge of `descriptor` with its right-hand neighbour, which must be on the same nodes
/// (relocate one of them first).
fn merge_with_right_neighbour(
    descriptor: &v1::RangeDescriptor,
    ranges: &[v1::RangeDescriptor],
) -> Result<Decision, String> {
    let range_id = descriptor.range_id;
    if descriptor.meta || descriptor.end_key.is_empty() {
        return Err(format!("range {range_id} has no right-hand neighbour"));
    }
    let right = ranges
        .iter()
        .find(|r| !r.meta && r.start_key == descriptor.end_key)
        .ok_or_else(|| format!("the right-hand neighbour of range {range_id} is not known yet; try again"))?;
    let on = |d: &v1::RangeDescriptor| d.replicas.iter().copied().collect::<BTreeSet<NodeId>>();
    if on(descriptor) != on(right) {
        return Err(format!(
            "ranges {range_id} and {} are on different nodes ({:?} and {:?}): relocate one first",
            right.range_id, descriptor.replicas, right.replicas
        ));
    }
    Ok(Decision::Merge { left: range_id, right: right.range_id })
}

/// The moves that put a range's replicas on exactly `target`, one at a time, each adding a
/// replica before removing one so the range never has fewer than it had.
fn relocation(descriptor: &v1::RangeDescriptor, target: &[NodeId], factor: u32) -> Result<Vec<Decision>, String> {
    let target: BTreeSet<NodeId> = target.iter().copied().collect();
    if target.is_empty() || target.len() > factor as usize {
        return Err(format!("give 1 to {factor} distinct nodes"));
    }
    let current: BTreeSet<NodeId> = descriptor.replicas.iter().copied().collect();
    let mut adds: Vec<NodeId> = target.difference(&current).copied().collect();
    let mut removes: Vec<NodeId> = current.difference(&target).copied().collect();
    let range_id = descriptor.range_id;
    let mut steps = Vec::new();
    while !adds.is_empty() || !removes.is_empty() {
        let step = Move { range_id, add: adds.pop().unwrap_or(0), remove: removes.pop().unwrap_or(0) };
        steps.push(Decision::Move(step));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relocation_swaps_one_replica_at_a_time() {
        let descriptor = v1::RangeDescriptor { range_id: 4, replicas: vec![1, 2, 3], ..Default::default() };
        let steps = relocation(&descriptor, &[2, 5, 6], 3).unwrap();
        assert_eq!(steps.len(), 2);
        for step in &steps {
            let Decision::Move(step) = step else { panic!("{step:?}") };
            assert!(step.add == 5 || step.add == 6);
            assert!(step.remove == 1 || step.remove == 3);
        }
        assert!(relocation(&descriptor, &[1, 2, 3], 3).unwrap().is_empty());
        assert!(relocation(&descriptor, &[], 3).is_err());
        assert!(relocation(&descriptor, &[1, 2, 3, 4], 3).is_err());
    }
}
