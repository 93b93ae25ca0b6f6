//! Which node id a pod runs as, decided at start from its volume and the Constellation's status.
//!
//! A pod's ordinal gives its first node id (`ordinal + 1`); the operator retires an id for good
//! when it removes its member (scale-down) or when the member's volume was lost, and the pod's
//! next member takes the next id up (`pleiades_crds::node_id_for`). So:
//! - a volume that holds a retired id (a claim kept by `whenScaled: Retain`, scaled back up) is
//!   wiped, and the pod joins as a new member: no stale replica or vote comes back;
//! - an empty volume for an id that was a member (the volume was lost) makes the pod report
//!   `VolumeLost` and wait until the operator retires that id, then join under the next one —
//!   never bootstrap a second constellation, even on a founder's ordinal, and never rejoin as a
//!   voter that forgot its votes.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use pleiades_crds::{node_id_for, Constellation, ConstellationStatus, MemberState, MemberStatus, NODE_ID_STRIDE};
use tracing::{info, warn};

use super::Pod;
use crate::config::{ConfigError, KubernetesConfig};

/// What the pod does with its node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Run as `node_id`; `join`: through the client Service rather than as a founder;
    /// `replaces`: this pod's former node id, retired after its volume was lost, whose replicas
    /// the new member rebuilds elsewhere once it has joined.
    Run { node_id: u64, join: bool, replaces: Option<u64> },
    /// The volume holds a retired id: wipe it, then run as `node_id` and join.
    WipeAndJoin { node_id: u64 },
    /// The volume is empty but `lost` was a member: report that and wait for its retirement.
    AwaitRetirement { lost: u64 },
}

/// What [`settle`] decided: the node id to run as, whether to join (rather than found),
/// whether the volume must be wiped first, and the former id whose replicas to rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub node_id: u64,
    pub join: bool,
    pub wipe: bool,
    pub replaces: Option<u64>,
}

/// The decision, from the node id stored on the volume (if any) and the Constellation's status.
pub fn choose(
    pod: &Pod,
    founders: u32,
    stored: Option<u64>,
    status: &ConstellationStatus,
) -> Result<Identity, ConfigError> {
    let ordinal = i32::try_from(pod.ordinal).map_err(|_| ConfigError::Invalid(format!("ordinal of {}", pod.name)))?;
    let retired = &status.retired_node_ids;
    let current = node_id_for(ordinal, retired);
    let first = u64::from(pod.ordinal) + 1;
    let is_retired = |id: u64| retired.iter().any(|r| u64::try_from(*r).ok() == Some(id));
    match stored {
        Some(stored) if is_retired(stored) => Ok(Identity::WipeAndJoin { node_id: current }),
        // Ours, and at least as new as the status knows (a status that lost its retired list
        // must not send a member back to an old id).
        Some(stored) if stored % NODE_ID_STRIDE == first % NODE_ID_STRIDE && stored >= current => {
            Ok(Identity::Run { node_id: stored, join: pod.ordinal >= founders || stored != first, replaces: None })
        }
        Some(stored) => Err(ConfigError::Invalid(format!(
            "the volume of {} belongs to node {stored}, but this pod runs as node {current}: it is another pod's volume",
            pod.name
        ))),
        None => {
            let former = status
                .members
                .iter()
                .find(|m| m.pod == pod.name)
                .and_then(|m| u64::try_from(m.node_id).ok())
                .filter(|id| *id != 0);
            match former {
                Some(lost) if lost == current => Ok(Identity::AwaitRetirement { lost }),
                replaces => Ok(Identity::Run {
                    node_id: current,
                    join: pod.ordinal >= founders || current != first,
                    replaces: replaces.filter(|id| is_retired(*id)),
                }),
            }
        }
    }
}

/// Writes this pod's member entry before the node runs (its reporter takes over later, under the
/// same field manager): what is wrong, and the state if it has one.
pub async fn report(k8s: &KubernetesConfig, pod: &Pod, node_id: u64, state: Option<MemberState>, message: String) {
    let Ok(client) = kube::Client::try_default().await else { return };
    let api: Api<Constellation> = Api::namespaced(client, &pod.namespace);
    let params = PatchParams::apply(&super::field_manager(&pod.name)).force();
    let entry = MemberStatus {
        pod: pod.name.clone(),
        node_id: i64::try_from(node_id).unwrap_or_default(),
        state: state.unwrap_or_default(),
        last_report: Timestamp::now().to_string(),
        message: Some(message),
        ..Default::default()
    };
    let body = super::member_entry_apply(&k8s.constellation, entry);
    if let Err(error) = api.patch_status(&k8s.constellation, &params, &Patch::Apply(&body)).await {
        warn!(%error, "cannot report this member's state");
    }
}

/// How long a pod whose volume holds its id keeps asking the API server before it trusts the
/// volume alone: the data plane does not wait on the control plane to serve.
const STATUS_ATTEMPTS_WITH_A_VOLUME: u32 = 3;
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Reads the status until `choose` can decide, reporting `VolumeLost` and waiting while it must.
/// An empty volume waits for the API server however long it takes: guessing could rejoin a
/// member that forgot its votes.
pub async fn settle(k8s: &KubernetesConfig, pod: &Pod, stored: Option<u64>) -> Result<Settled, ConfigError> {
    let client = kube::Client::try_default().await;
    let api: Option<Api<Constellation>> = client.ok().map(|client| Api::namespaced(client, &pod.namespace));
    let mut failures = 0u32;
    loop {
        let status = match &api {
            Some(api) => api.get_status(&k8s.constellation).await.map(|cst| cst.status.unwrap_or_default()),
            None => Err(kube::Error::Service("no Kubernetes API configuration".into())),
        };
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                failures += 1;
                if let Some(stored) = stored.filter(|_| failures >= STATUS_ATTEMPTS_WITH_A_VOLUME) {
                    warn!(%error, node_id = stored, "cannot read the Constellation; running as the volume's node");
                    return Ok(Settled {
                        node_id: stored,
                        join: pod.ordinal >= k8s.founders,
                        wipe: false,
                        replaces: None,
                    });
                }
                warn!(%error, "cannot read the Constellation to settle this pod's node id; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        match choose(pod, k8s.founders, stored, &status)? {
            Identity::AwaitRetirement { lost } => {
                warn!(
                    node_id = lost,
                    "this pod's volume is empty but node {lost} was a member: waiting for the operator to retire it"
                );
                let message =
                    format!("started on an empty volume; node {lost}'s data is lost: it joins again under a new id");
                report(k8s, pod, lost, Some(MemberState::VolumeLost), message).await;
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Identity::Run { node_id, join, replaces } => {
                info!(node_id, join, ?replaces, "node id settled");
                return Ok(Settled { node_id, join, wipe: false, replaces });
            }
            Identity::WipeAndJoin { node_id } => {
                info!(node_id, "node id settled: the volume's retired id is wiped");
                return Ok(Settled { node_id, join: true, wipe: true, replaces: None });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: u32) -> Pod {
        Pod { name: format!("demo-{ordinal}"), namespace: "db".into(), ordinal }
    }

    fn member(ordinal: u32, node_id: i64) -> MemberStatus {
        MemberStatus { pod: format!("demo-{ordinal}"), node_id, ..Default::default() }
    }

    #[test]
    fn a_new_constellation_founds_and_a_restart_keeps_its_id() {
        let fresh = ConstellationStatus::default();
        let run = |node_id, join| Identity::Run { node_id, join, replaces: None };
        assert_eq!(choose(&pod(0), 3, None, &fresh).unwrap(), run(1, false));
        assert_eq!(choose(&pod(4), 3, None, &fresh).unwrap(), run(5, true));
        let running = ConstellationStatus { members: vec![member(0, 1), member(4, 5)], ..Default::default() };
        assert_eq!(choose(&pod(0), 3, Some(1), &running).unwrap(), run(1, false));
        assert_eq!(choose(&pod(4), 3, Some(5), &running).unwrap(), run(5, true));
    }

    #[test]
    fn a_retained_claim_of_a_removed_member_is_wiped_and_joins_as_a_new_node() {
        // 5 -> 3 retired nodes 4 and 5; 3 -> 5 brings the pods back on their old claims.
        let status = ConstellationStatus { retired_node_ids: vec![4, 5], ..Default::default() };
        assert_eq!(choose(&pod(4), 3, Some(5), &status).unwrap(), Identity::WipeAndJoin { node_id: 10_005 });
        assert_eq!(choose(&pod(3), 3, Some(4), &status).unwrap(), Identity::WipeAndJoin { node_id: 10_004 });
        // A claim deleted with its member: a fresh volume, a fresh id.
        let fresh = Identity::Run { node_id: 10_004, join: true, replaces: None };
        assert_eq!(choose(&pod(3), 3, None, &status).unwrap(), fresh);
    }

    #[test]
    fn a_founder_that_lost_its_volume_never_bootstraps_again() {
        let running =
            ConstellationStatus { members: vec![member(0, 1), member(1, 2), member(2, 3)], ..Default::default() };
        assert_eq!(choose(&pod(0), 3, None, &running).unwrap(), Identity::AwaitRetirement { lost: 1 });
        // Once the operator retired node 1, demo-0 joins as node 10 001 and rebuilds node 1's
        // replicas elsewhere.
        let retired = ConstellationStatus { retired_node_ids: vec![1], ..running };
        let joined = Identity::Run { node_id: 10_001, join: true, replaces: Some(1) };
        assert_eq!(choose(&pod(0), 3, None, &retired).unwrap(), joined);
        // Its next restart keeps that id and joins again (idempotently).
        let restarted = Identity::Run { node_id: 10_001, join: true, replaces: None };
        assert_eq!(choose(&pod(0), 3, Some(10_001), &retired).unwrap(), restarted);
    }

    #[test]
    fn another_pods_volume_is_refused() {
        let error = choose(&pod(1), 3, Some(1), &ConstellationStatus::default()).unwrap_err().to_string();
        assert!(error.contains("another pod's volume"), "{error}");
        // A retired id is wiped and replaced, never run again.
        let status = ConstellationStatus { retired_node_ids: vec![2], ..Default::default() };
        assert_eq!(choose(&pod(1), 3, Some(2), &status).unwrap(), Identity::WipeAndJoin { node_id: 10_002 });
    }
}
