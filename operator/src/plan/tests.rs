use k8s_openapi::jiff::{SignedDuration, Timestamp};
use pleiades_crds::{ConstellationSpec, ConstellationStatus, MemberState, MemberStatus, RangesStatus, RolloutStatus};

use super::*;
use crate::desired::tests::constellation;

const OLD: &str = "old-hash";
const NEW: &str = "new-hash";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub(crate) fn member(ordinal: i32, state: MemberState, hash: &str) -> MemberStatus {
    MemberStatus {
        pod: format!("demo-{ordinal}"),
        node_id: i64::from(ordinal) + 1,
        address: format!("demo-{ordinal}.demo-peers.db.svc:7400"),
        state,
        ready: state == MemberState::Alive,
        ranges: 3,
        leaders: 1,
        constellation_ranges: 5,
        config_hash: hash.into(),
        last_report: (now() - SignedDuration::from_secs(3)).to_string(),
        ..Default::default()
    }
}

fn healthy(pods: i32, hash: &str) -> ConstellationStatus {
    let mut members: Vec<MemberStatus> = (0..pods).map(|o| member(o, MemberState::Alive, hash)).collect();
    // Every one of the 5 ranges has a leader somewhere.
    members[0].leaders = 5 - (pods - 1);
    ConstellationStatus { members, ..Default::default() }
}

fn cst(replicas: i32, status: ConstellationStatus) -> Constellation {
    let mut cst = constellation(ConstellationSpec { replicas, ..Default::default() });
    cst.status = Some(status);
    cst
}

fn set(replicas: i32, partition: i32, hash: &str) -> ObservedSet {
    ObservedSet { replicas, partition, ready_replicas: replicas, template_hash: Some(hash.into()), confirmation: None }
}

#[test]
fn a_new_constellation_is_created_at_full_size() {
    let plan = plan(&cst(3, ConstellationStatus::default()), None, NEW, now());
    assert_eq!((plan.stateful_set_replicas, plan.partition), (3, 0));
    assert_eq!((plan.scale, plan.rollout), (Scale::Stable, Rollout::Idle));
}

#[test]
fn scaling_up_adds_pods_at_once() {
    let plan = plan(&cst(5, healthy(3, OLD)), Some(&set(3, 0, OLD)), OLD, now());
    assert_eq!(plan.stateful_set_replicas, 5);
    assert_eq!(plan.scale, Scale::Up { from: 3, to: 5 });
}

#[test]
fn scaling_down_decommissions_the_highest_ordinal_first_and_waits() {
    let first = plan(&cst(3, healthy(5, OLD)), Some(&set(5, 0, OLD)), OLD, now());
    assert_eq!(first.stateful_set_replicas, 5, "no pod goes before its replicas moved");
    assert_eq!(first.decommission, ["demo-4"]);
    assert_eq!(first.scale, Scale::Decommissioning { pod: "demo-4".into() });

    let mut status = healthy(5, OLD);
    status.decommission = vec!["demo-4".into()];
    status.members[4].state = MemberState::Decommissioning;
    let waiting = plan(&cst(3, status.clone()), Some(&set(5, 0, OLD)), OLD, now());
    assert_eq!((waiting.stateful_set_replicas, waiting.decommission.clone()), (5, vec!["demo-4".to_string()]));

    // Its own word is not enough: a member must say no range names it any more.
    status.members[4].state = MemberState::Decommissioned;
    let unconfirmed = plan(&cst(3, status.clone()), Some(&set(5, 0, OLD)), OLD, now());
    assert!(matches!(unconfirmed.scale, Scale::Confirming { .. }), "{:?}", unconfirmed.scale);
    assert_eq!((unconfirmed.stateful_set_replicas, unconfirmed.decommission.len()), (5, 1));
    let testimony = |ranges: Vec<u64>| ObservedSet {
        confirmation: Some(Confirmation {
            about: "demo-4".into(),
            answer: Ok(crate::probe::Testimony { member: "demo-0".into(), ranges }),
        }),
        ..set(5, 0, OLD)
    };
    let contradicted = plan(&cst(3, status.clone()), Some(&testimony(vec![3])), OLD, now());
    let Scale::Confirming { detail, .. } = &contradicted.scale else { panic!("{:?}", contradicted.scale) };
    assert!(detail.contains("demo-0 says ranges [3] still name it"), "{detail}");
    assert_eq!(contradicted.stateful_set_replicas, 5, "a pod that still holds a replica stays");

    let removing = plan(&cst(3, status), Some(&testimony(vec![])), OLD, now());
    assert_eq!(removing.stateful_set_replicas, 4);
    assert_eq!(removing.scale, Scale::Removing { pod: "demo-4".into() });
    assert!(removing.decommission.is_empty());
    assert_eq!(removing.forget_members, ["demo-4"]);

    // The next reconcile moves on to demo-3.
    let next = plan(&cst(3, healthy(4, OLD)), Some(&set(4, 0, OLD)), OLD, now());
    assert_eq!(next.decommission, ["demo-3"]);
}

#[test]
fn a_scale_down_waits_for_a_healthy_constellation() {
    let mut status = healthy(5, OLD);
    status.members[1].state = MemberState::Suspect;
    status.members[1].ready = false;
    let blocked = plan(&cst(3, status), Some(&set(5, 0, OLD)), OLD, now());
    let Scale::Blocked { reason } = &blocked.scale else { panic!("{:?}", blocked.scale) };
    assert!(reason.contains("demo-1 is Suspect"), "{reason}");
    assert!(blocked.decommission.is_empty());
    assert_eq!(blocked.stateful_set_replicas, 5);

    let mut status = healthy(5, OLD);
    status.members[3].unavailable_ranges = 2;
    let blocked = plan(&cst(3, status), Some(&set(5, 0, OLD)), OLD, now());
    assert!(matches!(&blocked.scale, Scale::Blocked { reason } if reason.contains("2 of 5 ranges have no quorum")));

    let mut status = healthy(5, OLD);
    status.members[2].last_report = (now() - SignedDuration::from_secs(120)).to_string();
    status.members[2].leaders = 0;
    status.members[0].leaders += 1;
    let blocked = plan(&cst(3, status), Some(&set(5, 0, OLD)), OLD, now());
    assert!(matches!(&blocked.scale, Scale::Blocked { reason } if reason.contains("demo-2 has not reported")));
}

#[test]
fn a_scale_down_below_the_replication_factor_is_refused() {
    let plan = plan(&cst(2, healthy(3, OLD)), Some(&set(3, 0, OLD)), OLD, now());
    let Scale::Blocked { reason } = &plan.scale else { panic!("{:?}", plan.scale) };
    assert!(reason.contains("below replicationFactor 3"), "{reason}");
    assert_eq!(plan.stateful_set_replicas, 3);
    assert!(plan.decommission.is_empty());
}

#[test]
fn scaling_back_up_mid_decommission_cancels_it() {
    let mut status = healthy(5, OLD);
    status.decommission = vec!["demo-4".into()];
    status.members[4].state = MemberState::Decommissioning;
    let plan = plan(&cst(5, status), Some(&set(5, 0, OLD)), OLD, now());
    assert!(plan.decommission.is_empty(), "demo-4 stays and rejoins");
    assert_eq!((plan.stateful_set_replicas, plan.scale), (5, Scale::Stable));
}

#[test]
fn a_new_configuration_rolls_one_pod_at_a_time_while_healthy() {
    // The first step: every pod held back, and the constellation is healthy, so the highest
    // ordinal is released at once.
    let start = plan(&cst(3, healthy(3, OLD)), Some(&set(3, 0, OLD)), NEW, now());
    let Rollout::Rolling { status, advanced } = &start.rollout else { panic!("{:?}", start.rollout) };
    assert!(*advanced);
    assert_eq!((start.partition, status.partition), (2, 2));

    // demo-2 restarts: until it reports the new hash and ready, nothing moves.
    let mut observed = healthy(3, OLD);
    observed.rollout = Some(status.clone());
    observed.members[2].ready = false;
    observed.members[2].state = MemberState::Joining;
    let waiting = plan(&cst(3, observed.clone()), Some(&set(3, 2, NEW)), NEW, now());
    let Rollout::Rolling { status: waiting_status, advanced } = &waiting.rollout else { panic!() };
    assert!(!advanced);
    assert_eq!(waiting.partition, 2);
    assert!(waiting_status.waiting_for.as_deref().unwrap().contains("demo-2"));

    // demo-2 is back on the new configuration, but a range lost quorum: still hold.
    observed.members[2] = member(2, MemberState::Alive, NEW);
    observed.members[0].unavailable_ranges = 1;
    let unhealthy = plan(&cst(3, observed.clone()), Some(&set(3, 2, NEW)), NEW, now());
    assert_eq!(unhealthy.partition, 2);
    let Rollout::Rolling { status: held, .. } = &unhealthy.rollout else { panic!() };
    assert!(held.waiting_for.as_deref().unwrap().contains("no quorum"), "{held:?}");

    // Healthy again: the next pod goes.
    observed.members[0].unavailable_ranges = 0;
    let next = plan(&cst(3, observed), Some(&set(3, 2, NEW)), NEW, now());
    assert_eq!(next.partition, 1);
}

#[test]
fn a_rollout_finishes_when_every_pod_runs_the_new_configuration() {
    let mut status = healthy(3, NEW);
    status.rollout = Some(RolloutStatus {
        target_config_hash: NEW.into(),
        partition: 0,
        updated_replicas: 2,
        waiting_for: None,
        step_started: None,
    });
    let plan = plan(&cst(3, status), Some(&set(3, 0, NEW)), NEW, now());
    assert_eq!(plan.rollout, Rollout::Idle);
    assert_eq!(plan.partition, 0);
}

#[test]
fn status_aggregates_the_members_reports() {
    let cst = cst(3, healthy(3, OLD));
    let observed = set(3, 0, OLD);
    let plan = plan(&cst, Some(&observed), OLD, now());
    let status = aggregate(&cst, Some(&observed), &plan, now());
    assert_eq!(status.alive_members, 3);
    assert_eq!(status.ranges, Some(RangesStatus { total: 5, under_replicated: 0, unavailable: 0 }));
    let condition = |status: &ConstellationStatus, t: &str| {
        let c = status.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(condition(&status, "Available"), ("True".into(), "AllRangesAvailable".into()));
    assert_eq!(condition(&status, "Degraded"), ("False".into(), "Healthy".into()));
    assert_eq!(condition(&status, "Progressing"), ("False".into(), "Idle".into()));
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.selector.as_deref(), Some("app.kubernetes.io/instance=demo,app.kubernetes.io/name=pleiades"));

    // One member lost its leaders (they moved) and stopped reporting; another is suspect.
    let mut reports = healthy(3, OLD);
    reports.members[0].leaders = 0;
    reports.members[0].last_report = (now() - SignedDuration::from_secs(300)).to_string();
    reports.members[1].state = MemberState::Suspect;
    reports.members[2].under_replicated_ranges = 2;
    reports.phase = Some(Phase::Running);
    let cst = self::cst(3, reports);
    let status = aggregate(&cst, Some(&observed), &plan, now());
    assert_eq!(status.alive_members, 1);
    let ranges = status.ranges.clone().unwrap();
    assert_eq!((ranges.total, ranges.under_replicated, ranges.unavailable), (5, 2, 3));
    assert_eq!(condition(&status, "Available").1, "RangesUnavailable");
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("demo-0 stopped reporting") && degraded.message.contains("demo-1 is Suspect"));
    assert_eq!(status.phase, Some(Phase::Degraded));
}

#[test]
fn a_blocked_scale_down_and_a_stuck_rollout_show_in_the_conditions() {
    let mut reports = healthy(5, OLD);
    reports.members[0].ready = false;
    let cst = cst(3, reports);
    let observed = set(5, 0, OLD);
    let plan = plan(&cst, Some(&observed), OLD, now());
    let status = aggregate(&cst, Some(&observed), &plan, now());
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "ScaleDownBlocked"));
    assert!(progressing.message.contains("cannot decommission demo-4"), "{}", progressing.message);

    let mut reports = healthy(3, OLD);
    reports.rollout = Some(RolloutStatus {
        target_config_hash: NEW.into(),
        partition: 2,
        updated_replicas: 0,
        waiting_for: None,
        step_started: Some((now() - SignedDuration::from_secs(3600)).to_string()),
    });
    let cst = self::cst(3, reports);
    let observed = set(3, 2, NEW);
    let plan = self::plan(&cst, Some(&observed), NEW, now());
    let status = aggregate(&cst, Some(&observed), &plan, now());
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(progressing.reason, "RolloutStuck");
    assert!(progressing.message.contains("demo-2"), "{}", progressing.message);
    assert_eq!(status.rollout.unwrap().partition, 2);
}

#[test]
fn a_pod_that_never_started_does_not_block_a_scale_down() {
    // Six pods asked for, five nodes with required anti-affinity: demo-5 never ran.
    let status = healthy(5, OLD);
    let asking = plan(&cst(3, status.clone()), Some(&set(6, 0, OLD)), OLD, now());
    let Scale::Confirming { detail, .. } = &asking.scale else { panic!("{:?}", asking.scale) };
    assert!(detail.contains("demo-5 never reported"), "{detail}");
    assert_eq!(asking.stateful_set_replicas, 6, "not removed on the operator's guess alone");
    let answered = |ranges: Vec<u64>| ObservedSet {
        confirmation: Some(Confirmation {
            about: "demo-5".into(),
            answer: Ok(crate::probe::Testimony { member: "demo-0".into(), ranges }),
        }),
        ..set(6, 0, OLD)
    };
    let removing = plan(&cst(3, status.clone()), Some(&answered(vec![])), OLD, now());
    assert_eq!(removing.scale, Scale::Removing { pod: "demo-5".into() });
    assert_eq!(removing.stateful_set_replicas, 5);
    assert!(removing.decommission.is_empty(), "nothing to decommission");
    // A node that somehow holds replicas without ever reporting is not dropped.
    let holding = plan(&cst(3, status.clone()), Some(&answered(vec![2])), OLD, now());
    assert!(
        matches!(&holding.scale, Scale::Blocked { reason } if reason.contains("ranges [2]")),
        "{:?}",
        holding.scale
    );
    assert_eq!(holding.stateful_set_replicas, 6);
    // Then the usual way for the pods that did run.
    let next = plan(&cst(3, status), Some(&set(5, 0, OLD)), OLD, now());
    assert_eq!(next.scale, Scale::Decommissioning { pod: "demo-4".into() });
}

#[test]
fn a_rollout_is_not_complete_while_any_member_reports_the_old_configuration() {
    // The StatefulSet already carries the new hash, but the status read had no rollout in it
    // (a stale read) and every member still runs the old configuration.
    let status = healthy(3, OLD);
    let plan_ = plan(&cst(3, status), Some(&set(3, 2, NEW)), NEW, now());
    let Rollout::Rolling { status: rollout, .. } = &plan_.rollout else { panic!("{:?}", plan_.rollout) };
    assert_eq!(rollout.target_config_hash, NEW);
    assert!(rollout.partition <= 2, "resumes at the StatefulSet's partition: {rollout:?}");
    // Pods that have not reported yet (new ones of a scale-up) do not start a rollout.
    let mut status = healthy(3, NEW);
    status.members.truncate(2);
    assert_eq!(plan(&cst(3, status), Some(&set(3, 0, NEW)), NEW, now()).rollout, Rollout::Idle);
}

#[test]
fn planned_work_is_not_degraded() {
    let degraded = |cst: &Constellation, observed: &ObservedSet| {
        let plan = plan(cst, Some(observed), NEW, now());
        let status = aggregate(cst, Some(observed), &plan, now());
        status.conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap()
    };
    // Scaling 3 -> 5: the two new pods are not ready and have not joined yet.
    let mut status = healthy(3, NEW);
    status.members.push(member(3, MemberState::Joining, NEW));
    let scaling = cst(5, status);
    let observed = ObservedSet { ready_replicas: 3, ..set(3, 0, NEW) };
    assert_eq!(degraded(&scaling, &observed).status, "False", "{:?}", degraded(&scaling, &observed));
    // A rollout restarting demo-2.
    let mut status = healthy(3, OLD);
    status.members[2] = member(2, MemberState::Joining, NEW);
    status.rollout = Some(RolloutStatus { target_config_hash: NEW.into(), partition: 2, ..Default::default() });
    let rolling = cst(3, status);
    let observed = ObservedSet { ready_replicas: 2, ..set(3, 2, NEW) };
    assert_eq!(degraded(&rolling, &observed).status, "False", "{:?}", degraded(&rolling, &observed));
    // The same pod down outside any plan is.
    let mut status = healthy(3, NEW);
    status.members[2] = member(2, MemberState::Suspect, NEW);
    let observed = ObservedSet { ready_replicas: 2, ..set(3, 0, NEW) };
    assert_eq!(degraded(&cst(3, status), &observed).status, "True");
}

#[test]
fn removed_and_lost_node_ids_are_retired_for_good() {
    // 5 -> 3: demo-4 is decommissioned and confirmed empty; removing it retires node 5.
    let mut status = healthy(5, OLD);
    status.decommission = vec!["demo-4".into()];
    status.members[4].state = MemberState::Decommissioned;
    let observed = ObservedSet {
        confirmation: Some(Confirmation {
            about: "demo-4".into(),
            answer: Ok(crate::probe::Testimony { member: "demo-0".into(), ranges: vec![] }),
        }),
        ..set(5, 0, OLD)
    };
    let shrinking = cst(3, status);
    let removing = plan(&shrinking, Some(&observed), OLD, now());
    assert_eq!(removing.retire, vec![5]);
    let written = aggregate(&shrinking, Some(&observed), &removing, now());
    assert_eq!(written.retired_node_ids, vec![5]);
    // 3 -> 5 again, on the claim `whenScaled: Retain` kept: demo-4 comes back as a new member.
    assert_eq!(pleiades_crds::node_id_for(4, &written.retired_node_ids), 10_005);
    assert_eq!(pleiades_crds::node_id_for(3, &written.retired_node_ids), 4, "demo-3's id was not retired");

    // A member that lost its volume has its id retired, once; the pod then runs as 10 001.
    let mut status = healthy(3, OLD);
    status.members[0].state = MemberState::VolumeLost;
    let lost = plan(&cst(3, status.clone()), Some(&set(3, 0, OLD)), OLD, now());
    assert_eq!(lost.retire, vec![1]);
    status.retired_node_ids = vec![1];
    assert!(plan(&cst(3, status.clone()), Some(&set(3, 0, OLD)), OLD, now()).retire.is_empty());
    assert_eq!(pleiades_crds::node_id_for(0, &status.retired_node_ids), 10_001);
}

#[test]
fn a_decommission_with_nowhere_to_go_shows_as_blocked_and_keeps_asking() {
    let mut status = healthy(4, OLD);
    status.decommission = vec!["demo-3".into()];
    status.members[3].state = MemberState::Decommissioning;
    status.members[3].message = Some(format!(
        "{}range 4 has its replicas on nodes [1, 2, 4] and no other living node can take node 4's: add a node",
        pleiades_crds::DECOMMISSION_BLOCKED
    ));
    let blocked = plan(&cst(3, status), Some(&set(4, 0, OLD)), OLD, now());
    let Scale::Blocked { reason } = &blocked.scale else { panic!("{:?}", blocked.scale) };
    assert!(reason.contains("cannot decommission demo-3: range 4") && reason.contains("add a node"), "{reason}");
    assert_eq!(blocked.decommission, ["demo-3"], "the pod keeps trying, and succeeds once a node is added");
    assert_eq!(blocked.stateful_set_replicas, 4);
}

#[test]
fn a_downgrade_the_volume_refuses_holds_the_rollout_with_a_clear_condition() {
    let mut status = healthy(3, OLD);
    status.members[2] = member(2, MemberState::Joining, NEW);
    status.members[2].message = Some(format!(
        "{}the data directory is in storage format 2, newer than this binary's 1",
        pleiades_crds::INCOMPATIBLE_STORAGE
    ));
    status.rollout = Some(RolloutStatus { target_config_hash: NEW.into(), partition: 2, ..Default::default() });
    let cst = cst(3, status);
    let observed = set(3, 2, NEW);
    let plan_ = plan(&cst, Some(&observed), NEW, now());
    let Rollout::Rolling { status: rollout, advanced: false } = &plan_.rollout else { panic!("{:?}", plan_.rollout) };
    assert_eq!(rollout.partition, 2, "no further pod restarts");
    assert!(rollout.waiting_for.as_deref().unwrap_or_default().contains("storage format 2"), "{rollout:?}");
    let written = aggregate(&cst, Some(&observed), &plan_, now());
    let progressing = written.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "IncompatibleStorage"));
    assert!(progressing.message.contains("demo-2 refuses its volume"), "{}", progressing.message);
}

#[test]
fn a_member_gossip_declared_dead_stops_counting_at_once() {
    let mut status = healthy(3, OLD);
    // demo-2 was killed a few seconds ago: its last report is still fresh, but demo-0's gossip
    // already declared node 3 dead.
    status.members[0].peers_down = vec![3];
    let cst = cst(3, status);
    let observed = set(3, 0, OLD);
    let plan_ = plan(&cst, Some(&observed), OLD, now());
    let written = aggregate(&cst, Some(&observed), &plan_, now());
    assert_eq!(written.alive_members, 2);
    let degraded = written.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(degraded.message.contains("demo-2 is down (gossip)"), "{}", degraded.message);
    // And no pod is decommissioned on top of it.
    let mut four = healthy(4, OLD);
    four.members[0].peers_down = vec![2];
    let scale_down = plan(&self::cst(3, four), Some(&set(4, 0, OLD)), OLD, now());
    assert!(
        matches!(&scale_down.scale, Scale::Blocked { reason } if reason.contains("demo-1 is down (gossip)")),
        "{:?}",
        scale_down.scale
    );
}
