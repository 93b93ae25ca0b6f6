//! Replacing the pod of a Kubernetes node that died. Its pod stays `Terminating` (or `Unknown`)
//! for good: the kubelet that would confirm the deletion is gone, and a StatefulSet never
//! starts a second pod of the same ordinal. After `spec.failover.afterSeconds`, and only once
//! the data plane has stopped hearing from the member and rebuilt every replica it held
//! elsewhere (another member confirms no range names its node), the operator force-deletes the
//! pod and its claim (a local volume died with the node; a network one holds nothing the
//! constellation still needs). The StatefulSet then starts the ordinal afresh, on an empty
//! volume: the pod reports its volume lost, its old node id is retired and it joins as a new
//! member.
//!
//! The decision is a pure function of what the controller observed; the controller lists the
//! pods, asks a member and carries it out.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use pleiades_crds::{ConstellationStatus, MemberStatus};

use crate::plan::{fresh, Confirmation};

/// A pod the kubelet no longer speaks for, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckPod {
    pub name: String,
    pub since: Timestamp,
}

/// The pod stuck on a lost node, if `pod` is one: deleted longer ago than its grace period yet
/// still there, or in phase `Unknown` (its node stopped reporting).
pub fn stuck(pod: &Pod, now: Timestamp) -> Option<StuckPod> {
    let name = pod.metadata.name.clone()?;
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        // The deletion timestamp is when the grace period ends; past it, only a kubelet that
        // cannot answer keeps the pod.
        if now.as_second() > deleted.0.as_second() {
            return Some(StuckPod { name, since: deleted.0 });
        }
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Unknown") {
        let since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .and_then(|ready| ready.last_transition_time.as_ref())
            .map_or(now, |time| time.0);
        return Some(StuckPod { name, since });
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
pub enum Failover {
    Idle,
    /// `pod` is stuck; why it is not replaced yet.
    Waiting {
        pod: String,
        reason: String,
    },
    /// Force-delete `pod` and its claim.
    Replace {
        pod: String,
        node_id: i64,
    },
}

/// What to do about the first stuck pod (one at a time). `testimony`: a member's answer about
/// which ranges still name the pod's node, asked once everything else allows the replacement.
pub fn decide(
    stuck: &[StuckPod],
    status: &ConstellationStatus,
    after_seconds: i64,
    testimony: Option<&Confirmation>,
    now: Timestamp,
) -> Failover {
    let Some(pod) = stuck.first() else { return Failover::Idle };
    let waiting = |reason: String| Failover::Waiting { pod: pod.name.clone(), reason };
    let stuck_for = now.as_second() - pod.since.as_second();
    if stuck_for < after_seconds {
        return waiting(format!(
            "its node stopped answering {stuck_for}s ago; it is replaced after {after_seconds}s (spec.failover)"
        ));
    }
    let member: Option<&MemberStatus> = status.members.iter().find(|m| m.pod == pod.name);
    if member.is_some_and(|m| fresh(m, now)) {
        return waiting("the constellation still hears from it".into());
    }
    let others: Vec<&MemberStatus> = status.members.iter().filter(|m| m.pod != pod.name && fresh(m, now)).collect();
    let under_replicated: i32 = others.iter().map(|m| m.under_replicated_ranges).sum();
    let unavailable = others.iter().map(|m| m.unavailable_ranges).max().unwrap_or(0);
    if under_replicated > 0 || unavailable > 0 {
        return waiting(format!(
            "the constellation is still re-replicating ({under_replicated} ranges under-replicated, {unavailable} \
             without a leader)"
        ));
    }
    let Some(member) = member else {
        // It never reported: it holds nothing.
        return Failover::Replace { pod: pod.name.clone(), node_id: 0 };
    };
    match testimony.filter(|c| c.about == pod.name).map(|c| &c.answer) {
        Some(Ok(testimony)) if testimony.ranges.is_empty() => {
            Failover::Replace { pod: pod.name.clone(), node_id: member.node_id }
        }
        Some(Ok(testimony)) => waiting(format!(
            "{} says ranges {:?} still name node {}; the data plane rebuilds them once it has been dead for its \
             replace-dead-after",
            testimony.member, testimony.ranges, member.node_id
        )),
        Some(Err(reason)) => waiting(format!("no member could confirm its replicas were rebuilt: {reason}")),
        None => waiting(format!("asking a member whether any range still names node {}", member.node_id)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;
    use pleiades_crds::MemberState;

    use super::*;
    use crate::plan::tests::member;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn lost(seconds_ago: i64) -> Vec<StuckPod> {
        vec![StuckPod { name: "demo-2".into(), since: now() - SignedDuration::from_secs(seconds_ago) }]
    }

    fn with_dead_member() -> ConstellationStatus {
        let mut members: Vec<MemberStatus> = (0..3).map(|o| member(o, MemberState::Alive, "h")).collect();
        members[2].last_report = (now() - SignedDuration::from_secs(600)).to_string();
        ConstellationStatus { members, ..Default::default() }
    }

    fn testimony(ranges: Vec<u64>) -> Confirmation {
        Confirmation { about: "demo-2".into(), answer: Ok(crate::probe::Testimony { member: "demo-0".into(), ranges }) }
    }

    #[test]
    fn a_dead_nodes_pod_is_replaced_only_after_its_replicas_were_rebuilt() {
        let status = with_dead_member();
        let early = decide(&lost(60), &status, 300, Some(&testimony(vec![])), now());
        assert!(matches!(&early, Failover::Waiting { reason, .. } if reason.contains("after 300s")), "{early:?}");

        let mut rebuilding = status.clone();
        rebuilding.members[0].under_replicated_ranges = 2;
        let waiting = decide(&lost(400), &rebuilding, 300, Some(&testimony(vec![])), now());
        assert!(
            matches!(&waiting, Failover::Waiting { reason, .. } if reason.contains("re-replicating")),
            "{waiting:?}"
        );

        let unconfirmed = decide(&lost(400), &status, 300, None, now());
        assert!(
            matches!(&unconfirmed, Failover::Waiting { reason, .. } if reason.contains("asking")),
            "{unconfirmed:?}"
        );
        let named = decide(&lost(400), &status, 300, Some(&testimony(vec![3])), now());
        assert!(matches!(&named, Failover::Waiting { reason, .. } if reason.contains("[3]")), "{named:?}");

        let replace = decide(&lost(400), &status, 300, Some(&testimony(vec![])), now());
        assert_eq!(replace, Failover::Replace { pod: "demo-2".into(), node_id: 3 });
    }

    #[test]
    fn a_pod_the_constellation_still_hears_is_not_replaced() {
        let mut status = with_dead_member();
        status.members[2].last_report = (now() - SignedDuration::from_secs(3)).to_string();
        let decision = decide(&lost(400), &status, 300, Some(&testimony(vec![])), now());
        assert!(
            matches!(&decision, Failover::Waiting { reason, .. } if reason.contains("still hears")),
            "{decision:?}"
        );
        assert_eq!(decide(&[], &status, 300, None, now()), Failover::Idle);
    }

    #[test]
    fn only_pods_left_behind_by_their_kubelet_count_as_stuck() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("demo-2".into());
        assert_eq!(stuck(&pod, now()), None, "a running pod");
        pod.metadata.deletion_timestamp = Some(Time(now() + SignedDuration::from_secs(30)));
        assert_eq!(stuck(&pod, now()), None, "still within its grace period");
        pod.metadata.deletion_timestamp = Some(Time(now() - SignedDuration::from_secs(30)));
        assert_eq!(stuck(&pod, now()).map(|s| s.since), Some(now() - SignedDuration::from_secs(30)));
        let mut unknown = Pod::default();
        unknown.metadata.name = Some("demo-1".into());
        unknown.status =
            Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Unknown".into()), ..Default::default() });
        assert!(stuck(&unknown, now()).is_some());
    }
}
