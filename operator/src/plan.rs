//! The operator's decisions, as pure functions of what it observed: how many pods the
//! StatefulSet runs (a scale-down waits for decommission), which pods a rollout may restart (the
//! partition steps down only while the constellation is healthy), and the aggregate status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use pleiades_crds::{
    node_id_for, Constellation, ConstellationStatus, MemberState, MemberStatus, Phase, RangesStatus, RolloutStatus,
};

use crate::desired::Names;

/// A member that has not reported for this long counts as suspect.
pub const REPORT_STALE_AFTER_SECONDS: i64 = 45;
/// A rollout step that has waited longer than this is reported as stuck.
pub const ROLLOUT_STUCK_AFTER_SECONDS: i64 = 600;

/// What the operator saw of the StatefulSet it owns.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedSet {
    pub replicas: i32,
    pub partition: i32,
    pub ready_replicas: i32,
    /// The configuration hash in the StatefulSet's current pod template.
    pub template_hash: Option<String>,
    /// What a member other than the pod being removed said it still holds, asked once that pod
    /// reports itself decommissioned: its own report is not trusted alone.
    pub confirmation: Option<Confirmation>,
}

/// A member's answer about the pod on its way out.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmation {
    pub about: String,
    /// The pod that answered, or why none could.
    pub answer: Result<crate::probe::Testimony, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scale {
    Stable,
    Up {
        from: i32,
        to: i32,
    },
    /// Waiting for `pod` to move its replicas away before the StatefulSet shrinks.
    Decommissioning {
        pod: String,
    },
    /// `pod` reports itself decommissioned; a member is asked to confirm it holds nothing.
    Confirming {
        pod: String,
        detail: String,
    },
    /// `pod` reported decommissioned and a member confirmed it: the StatefulSet shrinks past it.
    Removing {
        pod: String,
    },
    /// A scale-down that cannot proceed, and why.
    Blocked {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    Idle,
    /// Rolling to a new configuration; `waiting_for` says what the next step waits on.
    Rolling {
        status: RolloutStatus,
        advanced: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stateful_set_replicas: i32,
    pub partition: i32,
    pub decommission: Vec<String>,
    /// Member entries of pods that no longer exist, to drop from the status.
    pub forget_members: Vec<String>,
    /// Node ids to retire for good: of the pod removed now, and of members that lost their volume.
    pub retire: Vec<i64>,
    pub scale: Scale,
    pub rollout: Rollout,
}

/// The ordinal of a pod of this constellation (`<name>-<ordinal>`).
pub fn ordinal(names: &Names, pod: &str) -> Option<i32> {
    pod.strip_prefix(&names.constellation)?.strip_prefix('-')?.parse().ok()
}

pub(crate) fn fresh(member: &MemberStatus, now: Timestamp) -> bool {
    member
        .last_report
        .parse::<Timestamp>()
        .is_ok_and(|reported| now.as_second() - reported.as_second() <= REPORT_STALE_AFTER_SECONDS)
}

/// Whether another member, reporting freshly, has seen gossip declare `member` dead: gossip
/// notices in seconds, while the dead member's own last report stays fresh for longer.
fn reported_down(members: &[MemberStatus], member: &MemberStatus, now: Timestamp) -> bool {
    members
        .iter()
        .any(|other| other.pod != member.pod && fresh(other, now) && other.peers_down.contains(&member.node_id))
}

/// Why the constellation cannot afford to lose or restart a pod right now, if it cannot.
/// `pods` are the pods that must all be serving.
fn unhealthy(status: &ConstellationStatus, names: &Names, pods: i32, now: Timestamp) -> Option<String> {
    let members: Vec<&MemberStatus> =
        status.members.iter().filter(|m| ordinal(names, &m.pod).is_some_and(|o| o < pods)).collect();
    if let Some(ranges) = range_health(&members, now) {
        if ranges.unavailable > 0 {
            return Some(format!("{} of {} ranges have no quorum", ranges.unavailable, ranges.total));
        }
        if ranges.under_replicated > 0 {
            return Some(format!("{} ranges are under-replicated", ranges.under_replicated));
        }
    } else {
        return Some("no member has reported range health yet".into());
    }
    for ordinal in 0..pods {
        let pod = names.pod(ordinal);
        match status.members.iter().find(|m| m.pod == pod) {
            None => return Some(format!("{pod} has not reported")),
            Some(m) if !fresh(m, now) => {
                return Some(format!("{pod} has not reported for {REPORT_STALE_AFTER_SECONDS}s"))
            }
            Some(m) if !m.ready || m.state != MemberState::Alive => {
                return Some(format!("{pod} is {:?}{}", m.state, if m.ready { "" } else { " and not ready" }))
            }
            Some(m) if reported_down(&status.members, m, now) => return Some(format!("{pod} is down (gossip)")),
            Some(_) => {}
        }
    }
    None
}

pub fn plan(cst: &Constellation, observed: Option<&ObservedSet>, desired_hash: &str, now: Timestamp) -> Plan {
    let names = Names::of(cst);
    let status = cst.status.clone().unwrap_or_default();
    let target = cst.spec.replicas;
    let Some(set) = observed else {
        // First reconcile: create everything at the requested size, nothing to roll.
        return Plan {
            stateful_set_replicas: target,
            partition: 0,
            decommission: Vec::new(),
            forget_members: Vec::new(),
            retire: Vec::new(),
            scale: Scale::Stable,
            rollout: Rollout::Idle,
        };
    };
    let current = set.replicas;
    let mut decommission: Vec<String> =
        status.decommission.iter().filter(|pod| ordinal(&names, pod).is_some_and(|o| o >= target)).cloned().collect();
    let mut forget_members: Vec<String> = status
        .members
        .iter()
        .filter(|m| ordinal(&names, &m.pod).is_none_or(|o| o >= current.max(target)))
        .map(|m| m.pod.clone())
        .collect();
    let mut stateful_set_replicas = current;
    // A member that lost its volume waits for its id to be retired before it joins anew.
    let mut retire: Vec<i64> = status
        .members
        .iter()
        .filter(|m| m.state == MemberState::VolumeLost && !status.retired_node_ids.contains(&m.node_id))
        .map(|m| m.node_id)
        .collect();
    let scale = if target >= current {
        stateful_set_replicas = target;
        decommission.clear();
        if target > current {
            Scale::Up { from: current, to: target }
        } else {
            Scale::Stable
        }
    } else if target < cst.spec.replication_factor {
        Scale::Blocked {
            reason: format!(
                "replicas {target} is below replicationFactor {}: every range needs that many nodes",
                cst.spec.replication_factor
            ),
        }
    } else {
        // One pod at a time, highest ordinal first, so the nodes receiving replicas are never
        // themselves on the way out.
        let victim = names.pod(current - 1);
        let member = status.members.iter().find(|m| m.pod == victim);
        let testimony = set.confirmation.as_ref().filter(|c| c.about == victim).map(|c| &c.answer);
        // A pod goes once a member confirms no range names its node: after it decommissioned
        // itself, or at once if it never reported — it never joined, so it holds nothing to move
        // (an unschedulable extra pod must not block the scale-down for good).
        let may_go = member.is_none_or(|m| m.state == MemberState::Decommissioned && decommission.contains(&victim));
        let confirmed_empty = matches!(testimony, Some(Ok(testimony)) if testimony.ranges.is_empty());
        match member {
            _ if may_go && confirmed_empty => {
                stateful_set_replicas = current - 1;
                decommission.retain(|pod| pod != &victim);
                forget_members.push(victim.clone());
                // Retired for good: a claim kept by `Retain` must not bring the id back.
                let never_reported = || node_id_for(current - 1, &status.retired_node_ids);
                retire.push(member.map_or_else(|| i64::try_from(never_reported()).unwrap_or_default(), |m| m.node_id));
                Scale::Removing { pod: victim }
            }
            Some(m) if m.state == MemberState::Decommissioned && decommission.contains(&victim) => match testimony {
                Some(Ok(testimony)) => Scale::Confirming {
                    detail: format!(
                        "{victim} reports itself decommissioned, but {} says ranges {:?} still name it",
                        testimony.member, testimony.ranges
                    ),
                    pod: victim,
                },
                Some(Err(reason)) => Scale::Confirming {
                    detail: format!("{victim} reports itself decommissioned; no member could confirm it: {reason}"),
                    pod: victim,
                },
                None => Scale::Confirming {
                    detail: format!("{victim} reports itself decommissioned; asking a member to confirm"),
                    pod: victim,
                },
            },
            None => match testimony {
                Some(Ok(testimony)) => Scale::Blocked {
                    reason: format!(
                        "cannot remove {victim}: it never reported, yet {} says ranges {:?} name its node; start the \
                         pod so it can be decommissioned",
                        testimony.member, testimony.ranges
                    ),
                },
                Some(Err(reason)) => Scale::Confirming {
                    detail: format!("{victim} never reported; no member could confirm it holds nothing: {reason}"),
                    pod: victim,
                },
                None => Scale::Confirming {
                    detail: format!("{victim} never reported; asking a member whether it holds anything"),
                    pod: victim,
                },
            },
            // Still asked to decommission (so it retries), but nothing can happen until a node is
            // added: say so where users look.
            Some(m) if decommission.contains(&victim) => {
                match m.message.as_deref().and_then(|message| message.strip_prefix(pleiades_crds::DECOMMISSION_BLOCKED))
                {
                    Some(why) => Scale::Blocked { reason: format!("cannot decommission {victim}: {why}") },
                    None => Scale::Decommissioning { pod: victim },
                }
            }
            _ => match unhealthy(&status, &names, current, now) {
                Some(reason) => Scale::Blocked { reason: format!("cannot decommission {victim}: {reason}") },
                None => {
                    decommission = vec![victim.clone()];
                    Scale::Decommissioning { pod: victim }
                }
            },
        }
    };

    let rollout = plan_rollout(set, &status, &names, stateful_set_replicas, desired_hash, now);
    let partition = match &rollout {
        Rollout::Idle => 0,
        Rollout::Rolling { status, .. } => status.partition,
    };
    forget_members.sort();
    forget_members.dedup();
    retire.sort_unstable();
    retire.dedup();
    Plan { stateful_set_replicas, partition, decommission, forget_members, retire, scale, rollout }
}

fn plan_rollout(
    set: &ObservedSet,
    status: &ConstellationStatus,
    names: &Names,
    replicas: i32,
    desired_hash: &str,
    now: Timestamp,
) -> Rollout {
    let previous = status.rollout.as_ref().filter(|r| r.target_config_hash == desired_hash);
    let updated = |ordinal: i32| {
        status
            .members
            .iter()
            .any(|m| m.pod == names.pod(ordinal) && m.config_hash == desired_hash && m.ready && fresh(m, now))
    };
    let updated_replicas = (0..replicas).filter(|o| updated(*o)).count() as i32;
    // A pod that has not reported yet (a new one, one restarting) says nothing either way.
    let runs_old = |ordinal: i32| {
        status.members.iter().any(|m| m.pod == names.pod(ordinal) && fresh(m, now) && m.config_hash != desired_hash)
    };
    let (mut partition, step_started) = match previous {
        Some(rollout) => (set.partition.min(rollout.partition), rollout.step_started.clone()),
        // The StatefulSet carries the configuration, but a rollout is over only when every
        // member says it runs it: a reconcile that read a stale status (no rollout recorded)
        // resumes from the StatefulSet's partition instead of calling it done.
        None if set.template_hash.as_deref() == Some(desired_hash) && !(0..replicas).any(runs_old) => {
            return Rollout::Idle
        }
        None if set.template_hash.as_deref() == Some(desired_hash) => (set.partition, Some(now.to_string())),
        // A new configuration: hold every pod on the old one, then release them one by one.
        None => (replicas, Some(now.to_string())),
    };
    partition = partition.min(replicas);
    if partition == 0 && updated_replicas == replicas {
        return Rollout::Idle;
    }
    let pending = (partition..replicas).find(|o| !updated(*o));
    let waiting_for = match pending {
        Some(o) => {
            let pod = names.pod(o);
            // What the pod says about itself, if anything (a refused downgrade, for one).
            let says = status.members.iter().find(|m| m.pod == pod).and_then(|m| m.message.as_deref());
            let says = says.map(|message| format!(" (it reports: {message})")).unwrap_or_default();
            Some(format!("{pod} to restart with the new configuration and report ready{says}"))
        }
        None if partition == 0 => Some("every pod to report the new configuration".into()),
        None => unhealthy(status, names, replicas, now).map(|reason| format!("a healthy constellation: {reason}")),
    };
    let advanced = waiting_for.is_none();
    let (partition, step_started) =
        if advanced { (partition - 1, Some(now.to_string())) } else { (partition, step_started) };
    Rollout::Rolling {
        status: RolloutStatus {
            target_config_hash: desired_hash.to_string(),
            partition,
            updated_replicas,
            waiting_for,
            step_started,
        },
        advanced,
    }
}

/// Range health from the fresh reports: the total is what the best-informed member knows; a
/// range is unavailable when a member sees no leader for it or when no member leads it.
fn range_health(members: &[&MemberStatus], now: Timestamp) -> Option<RangesStatus> {
    let fresh: Vec<&&MemberStatus> = members.iter().filter(|m| fresh(m, now)).collect();
    if fresh.is_empty() {
        return None;
    }
    let total = fresh.iter().map(|m| m.constellation_ranges).max().unwrap_or(0);
    let leaders: i32 = fresh.iter().map(|m| m.leaders).sum();
    let unavailable =
        fresh.iter().map(|m| m.unavailable_ranges).max().unwrap_or(0).max(total.saturating_sub(leaders).max(0));
    let under_replicated = fresh.iter().map(|m| m.under_replicated_ranges).sum();
    Some(RangesStatus { total, under_replicated, unavailable })
}

/// The operator's part of the status: counts, range health, phase and conditions, from the
/// members' own reports and the plan.
pub fn aggregate(cst: &Constellation, set: Option<&ObservedSet>, plan: &Plan, now: Timestamp) -> ConstellationStatus {
    let names = Names::of(cst);
    let previous = cst.status.clone().unwrap_or_default();
    let members: Vec<&MemberStatus> = previous
        .members
        .iter()
        .filter(|m| !plan.forget_members.contains(&m.pod))
        .filter(|m| ordinal(&names, &m.pod).is_some_and(|o| o < plan.stateful_set_replicas))
        .collect();
    let down = |member: &MemberStatus| reported_down(&previous.members, member, now);
    let alive_members =
        members.iter().filter(|m| fresh(m, now) && m.state == MemberState::Alive && !down(m)).count() as i32;
    let ranges = range_health(&members, now);
    let under_replicated = ranges.as_ref().map(|r| r.under_replicated).unwrap_or(0);
    let ready_replicas = set.map(|s| s.ready_replicas).unwrap_or(0);

    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: cst.metadata.generation,
        }
    };

    let available = match &ranges {
        None => condition("Available", false, "NoReports", "no member has reported yet".into()),
        Some(r) if r.total == 0 => condition("Available", false, "NoRanges", "no member knows any range yet".into()),
        Some(r) if r.unavailable > 0 => condition(
            "Available",
            false,
            "RangesUnavailable",
            format!("{} of {} ranges have no leader and accept no writes", r.unavailable, r.total),
        ),
        Some(r) => condition("Available", true, "AllRangesAvailable", format!("all {} ranges have a leader", r.total)),
    };
    let rollout_stuck = match &plan.rollout {
        Rollout::Rolling { status, advanced: false } => status
            .step_started
            .as_deref()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .is_some_and(|started| now.as_second() - started.as_second() > ROLLOUT_STUCK_AFTER_SECONDS),
        _ => false,
    };
    // A pod restarted on an image that cannot read its volume (a downgrade) holds the rollout
    // for good: say so at once rather than after the stuck-rollout timeout.
    let refused_downgrade = members.iter().find_map(|m| {
        let message = m.message.as_deref()?.strip_prefix(pleiades_crds::INCOMPATIBLE_STORAGE)?;
        Some(format!("{} refuses its volume: {message}; set spec.image back", m.pod))
    });
    let progressing = match (&plan.scale, &plan.rollout) {
        (Scale::Blocked { reason }, _) => condition("Progressing", false, "ScaleDownBlocked", reason.clone()),
        (_, Rollout::Rolling { .. }) if refused_downgrade.is_some() => {
            condition("Progressing", false, "IncompatibleStorage", refused_downgrade.clone().unwrap_or_default())
        }
        (_, Rollout::Rolling { status, .. }) if rollout_stuck => condition(
            "Progressing",
            false,
            "RolloutStuck",
            format!(
                "partition {} has waited over {ROLLOUT_STUCK_AFTER_SECONDS}s for {}",
                status.partition,
                status.waiting_for.clone().unwrap_or_default()
            ),
        ),
        (Scale::Up { from, to }, _) => condition(
            "Progressing",
            true,
            "ScalingUp",
            format!("adding pods: {from} to {to}; new nodes join and take replicas"),
        ),
        (Scale::Decommissioning { pod }, _) => condition(
            "Progressing",
            true,
            "Decommissioning",
            format!("waiting for {pod} to move its replicas to the other nodes"),
        ),
        (Scale::Confirming { detail, .. }, _) => {
            condition("Progressing", true, "ConfirmingDecommission", detail.clone())
        }
        (Scale::Removing { pod }, _) => {
            condition("Progressing", true, "RemovingPod", format!("{pod} is decommissioned; removing its pod"))
        }
        (Scale::Stable, Rollout::Rolling { status, .. }) => condition(
            "Progressing",
            true,
            "RollingUpdate",
            format!(
                "{} of {} pods run the new configuration; {}",
                status.updated_replicas,
                plan.stateful_set_replicas,
                status.waiting_for.clone().unwrap_or_else(|| format!("restarting pod ordinal {}", status.partition))
            ),
        ),
        (Scale::Stable, Rollout::Idle) => condition("Progressing", false, "Idle", "nothing to change".into()),
    };
    // Pods the operator is adding or restarting on purpose are not a fault while it does.
    let planned = |ordinal: i32| match (&plan.scale, &plan.rollout) {
        (Scale::Up { from, .. }, _) if ordinal >= *from => true,
        (_, Rollout::Rolling { status, .. }) => ordinal >= status.partition,
        _ => false,
    };
    let planned_pods = (0..plan.stateful_set_replicas).filter(|o| planned(*o)).count() as i32;
    let unhealthy_members: Vec<String> = members
        .iter()
        .filter(|m| !fresh(m, now) || !m.ready || m.state != MemberState::Alive || down(m))
        .filter(|m| !previous.decommission.contains(&m.pod))
        .filter(|m| !ordinal(&names, &m.pod).is_some_and(planned))
        .map(|m| {
            if down(m) {
                format!("{} is down (gossip)", m.pod)
            } else if fresh(m, now) {
                format!("{} is {:?}", m.pod, m.state)
            } else {
                format!("{} stopped reporting", m.pod)
            }
        })
        .collect();
    let degraded = if !unhealthy_members.is_empty() {
        condition("Degraded", true, "MembersUnhealthy", unhealthy_members.join(", "))
    } else if under_replicated > 0 {
        condition("Degraded", true, "UnderReplicated", format!("{under_replicated} ranges are under-replicated"))
    } else if ready_replicas + planned_pods < plan.stateful_set_replicas {
        condition(
            "Degraded",
            true,
            "PodsNotReady",
            format!("{ready_replicas} of {} pods ready", plan.stateful_set_replicas),
        )
    } else {
        condition("Degraded", false, "Healthy", "every member is alive and every range fully replicated".into())
    };

    let ever_available = previous.phase.is_some_and(|p| p != Phase::Creating) || available.status == "True";
    let phase = if cst.spec.paused {
        Phase::Paused
    } else if !ever_available || set.is_none() {
        Phase::Creating
    } else if !matches!(plan.scale, Scale::Stable) {
        Phase::Scaling
    } else if matches!(plan.rollout, Rollout::Rolling { .. }) {
        Phase::Updating
    } else if degraded.status == "True" || available.status == "False" {
        Phase::Degraded
    } else {
        Phase::Running
    };

    ConstellationStatus {
        observed_generation: cst.metadata.generation,
        phase: Some(phase),
        replicas: plan.stateful_set_replicas,
        ready_replicas,
        alive_members,
        selector: Some(crate::desired::selector_string(cst)),
        members: Vec::new(),
        ranges,
        decommission: plan.decommission.clone(),
        retired_node_ids: {
            let mut retired = previous.retired_node_ids.clone();
            retired.extend(&plan.retire);
            retired.sort_unstable();
            retired.dedup();
            retired
        },
        rollout: match &plan.rollout {
            Rollout::Rolling { status, .. } => Some(status.clone()),
            Rollout::Idle => None,
        },
        conditions: vec![available, progressing, degraded],
    }
}

#[cfg(test)]
pub(crate) mod tests;
