//! Running as a pod of a `Constellation`: the pod's ordinal gives its node id (see `identity`)
//! and tells whether it founds the constellation or joins it; a reporter writes this pod's entry in the
//! Constellation's `status.members` (server-side apply with this pod's own field manager, so
//! pods never overwrite each other) and carries out the operator's decommission requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use pleiades_crds::{Constellation, MemberState, MemberStatus};
use tracing::{info, warn};

pub mod certificate;
pub mod identity;
pub mod topology;

use crate::config::{ConfigError, KubernetesConfig, NodeConfig};
use crate::observe::Health;
use crate::range::{DecommissionError, Ranges};

/// How often the reporter looks for changes; an unchanged entry is re-sent as a heartbeat.
const CHECK_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// The operator puts this in the pod's environment: the hash of the configuration it runs.
const CONFIG_HASH_ENV: &str = "PLEIADES_CONFIG_HASH";

/// The field manager under which pod `pod` applies its member entry (pods never overwrite each
/// other's fields).
pub fn field_manager(pod: &str) -> String {
    format!("pleiades-node/{pod}")
}

/// The server-side-apply body that sets one entry of `status.members` (a list-map keyed by pod).
pub fn member_entry_apply(constellation: &str, entry: impl serde::Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pleiades.io/v1alpha1",
        "kind": "Constellation",
        "metadata": {"name": constellation},
        "status": {"members": [entry]},
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ordinal: u32,
}

impl Pod {
    /// The pod's identity from the downward-API environment.
    pub fn from_env(k8s: &KubernetesConfig) -> Result<Pod, ConfigError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                ConfigError::Invalid(format!("[kubernetes] is configured but {name} is not set (downward API)"))
            })
        };
        Pod::parse(k8s, &var("POD_NAME")?, &var("POD_NAMESPACE")?)
    }

    pub fn parse(k8s: &KubernetesConfig, name: &str, namespace: &str) -> Result<Pod, ConfigError> {
        let ordinal = name
            .strip_prefix(&k8s.constellation)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|ordinal| ordinal.parse::<u32>().ok())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "pod name {name:?} is not <constellation>-<ordinal> for constellation {:?}",
                    k8s.constellation
                ))
            })?;
        Ok(Pod { name: name.into(), namespace: namespace.into(), ordinal })
    }
}

/// Fills in the node id (settled by [`identity::settle`]), advertised address and founders or
/// join seed from the pod's identity. `join`: through the client Service even on a founder's
/// ordinal (a member that lost its volume, or runs under a later id).
pub fn adopt(
    config: &mut NodeConfig,
    k8s: &KubernetesConfig,
    pod: &Pod,
    node_id: u64,
    join: bool,
) -> Result<(), ConfigError> {
    let port = config.listen.port();
    let peer_address =
        |ordinal: u32| format!("{}-{ordinal}.{}.{}.svc:{port}", k8s.constellation, k8s.peer_service, pod.namespace);
    if config.node_id.is_some_and(|id| id != node_id) {
        return Err(ConfigError::Invalid(format!("node-id is set but {} must be node {node_id}", pod.name)));
    }
    config.node_id = Some(node_id);
    // Certificates name the constellation by resource and namespace (unique in a cluster).
    config.constellation.name = format!("{}.{}", k8s.constellation, pod.namespace);
    config.constellation.advertise = Some(peer_address(pod.ordinal));
    if pod.ordinal < k8s.founders && !join {
        config.constellation.peers = (0..k8s.founders).map(|o| format!("{}={}", o + 1, peer_address(o))).collect();
        config.constellation.join = None;
    } else {
        config.constellation.peers.clear();
        config.constellation.join = Some(format!("{}.{}.svc:{port}", k8s.client_service, pod.namespace));
    }
    Ok(())
}

/// What the node can tell about itself, for its member entry.
pub struct Observation {
    pub ready: bool,
    pub joined: bool,
    pub decommission_requested: bool,
    pub ranges: i32,
    pub leaders: i32,
    pub constellation_ranges: i32,
    pub unavailable: i32,
    pub under_replicated: i32,
}

pub fn member_state(o: &Observation) -> MemberState {
    match () {
        _ if o.decommission_requested && o.ranges == 0 => MemberState::Decommissioned,
        _ if o.decommission_requested => MemberState::Decommissioning,
        _ if !o.joined => MemberState::Joining,
        _ if !o.ready => MemberState::Suspect,
        _ => MemberState::Alive,
    }
}

pub struct Reporter {
    pub pod: Pod,
    pub constellation: String,
    pub node_id: u64,
    pub address: String,
    pub replication_factor: usize,
    pub join_seed: Option<String>,
    pub ranges: Arc<Ranges>,
    pub health: Arc<Health>,
    pub joined: Arc<AtomicBool>,
}

impl Reporter {
    fn observe(&self, decommission_requested: bool) -> Observation {
        let statuses = self.ranges.store.status();
        let leaders = statuses.iter().filter(|s| s.role == "leader").count() as i32;
        let unavailable = statuses.iter().filter(|s| s.leader_node == 0).count() as i32;
        let under_replicated = statuses
            .iter()
            .filter(|s| s.role == "leader")
            .filter(|s| s.descriptor.as_ref().is_some_and(|d| d.replicas.len() < self.replication_factor))
            .count() as i32;
        Observation {
            ready: self.health.is_ready(),
            joined: self.joined.load(Ordering::SeqCst),
            decommission_requested,
            // The meta range is a range like any other for availability.
            ranges: statuses.len() as i32,
            leaders,
            constellation_ranges: self.ranges.table.len() as i32,
            unavailable,
            under_replicated,
        }
    }

    fn entry(&self, o: &Observation, message: Option<String>) -> MemberStatus {
        MemberStatus {
            pod: self.pod.name.clone(),
            node_id: self.node_id as i64,
            address: self.address.clone(),
            state: member_state(o),
            ready: o.ready,
            ranges: o.ranges,
            leaders: o.leaders,
            constellation_ranges: o.constellation_ranges,
            unavailable_ranges: o.unavailable,
            under_replicated_ranges: o.under_replicated,
            peers_down: self.ranges.members.down().into_iter().filter_map(|id| i64::try_from(id).ok()).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hash: std::env::var(CONFIG_HASH_ENV).unwrap_or_default(),
            last_report: String::new(),
            message,
            // The certificate task and the operator own these; leaving them out of this
            // manager's apply keeps them.
            csr: None,
            certificate: None,
        }
    }

    /// Reports until the task is aborted. Failures to reach the API server are logged and
    /// retried: the data plane never depends on the control plane to serve.
    pub async fn run(self: Arc<Self>) {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(error) => {
                warn!(%error, "no Kubernetes API access: the status reporter is off");
                return;
            }
        };
        let api: Api<Constellation> = Api::namespaced(client, &self.pod.namespace);
        let params = PatchParams::apply(&field_manager(&self.pod.name)).force();
        let mut last_sent: Option<(MemberStatus, Instant)> = None;
        let mut decommission: Option<tokio::task::JoinHandle<Result<(), DecommissionError>>> = None;
        let mut was_requested = false;
        let mut message = None;
        loop {
            let requested = match api.get_status(&self.constellation).await {
                Ok(cst) => cst.status.is_some_and(|s| s.decommission.contains(&self.pod.name)),
                Err(error) => {
                    warn!(%error, "cannot read the Constellation");
                    was_requested
                }
            };
            if requested && decommission.is_none() && !self.ranges.store.hosted().is_empty() {
                info!("the operator asked this node to decommission: moving its replicas away");
                let (ranges, node_id) = (self.ranges.clone(), self.node_id);
                decommission = Some(tokio::spawn(async move { ranges.decommission(node_id).await.map(|_| ()) }));
            }
            if decommission.as_ref().is_some_and(|task| task.is_finished()) {
                if let Some(Ok(Err(error))) = decommission.take().and_then(|task| task.now_or_never()) {
                    warn!(%error, "decommission incomplete; retrying");
                    message = Some(match error {
                        // The operator reports the scale-down blocked with this.
                        DecommissionError::NoPlacement(why) => format!("{}{why}", pleiades_crds::DECOMMISSION_BLOCKED),
                        DecommissionError::Failed(why) => format!("decommission incomplete: {why}"),
                    });
                }
            }
            if was_requested && !requested {
                // The scale-down was withdrawn: take a fair share of replicas back.
                info!("decommission withdrawn: rejoining");
                if let Some(task) = decommission.take() {
                    task.abort();
                }
                // A founder has no join seed; any member answers for the constellation, itself included.
                let seed = self.join_seed.clone().unwrap_or_else(|| self.address.clone());
                self.joined.store(false, Ordering::SeqCst);
                tokio::spawn(super::join_until_done(self.ranges.clone(), seed, self.joined.clone()));
                message = None;
            }
            was_requested = requested;

            let entry = self.entry(&self.observe(requested), message.clone());
            let due = last_sent.as_ref().is_none_or(|(sent, at)| *sent != entry || at.elapsed() >= HEARTBEAT_EVERY);
            if due {
                let mut report = entry.clone();
                report.last_report = Timestamp::now().to_string();
                let body = member_entry_apply(&self.constellation, report);
                match api.patch_status(&self.constellation, &params, &Patch::Apply(&body)).await {
                    Ok(_) => last_sent = Some((entry, Instant::now())),
                    Err(error) => warn!(%error, "cannot report this member's status"),
                }
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s() -> KubernetesConfig {
        KubernetesConfig {
            constellation: "demo".into(),
            peer_service: "demo-peers".into(),
            client_service: "demo".into(),
            founders: 3,
            request_certificate: false,
            pod_annotations: None,
        }
    }

    #[test]
    fn the_first_ordinals_found_and_the_rest_join() {
        let mut config = NodeConfig { listen: "0.0.0.0:7400".parse().unwrap(), ..Default::default() };
        adopt(&mut config, &k8s(), &Pod::parse(&k8s(), "demo-1", "db").unwrap(), 2, false).unwrap();
        assert_eq!(config.node_id, Some(2));
        assert_eq!(config.constellation.advertise.as_deref(), Some("demo-1.demo-peers.db.svc:7400"));
        assert_eq!(
            config.constellation.peers,
            ["1=demo-0.demo-peers.db.svc:7400", "2=demo-1.demo-peers.db.svc:7400", "3=demo-2.demo-peers.db.svc:7400"]
        );
        config.validate().unwrap();

        let mut config = NodeConfig { listen: "0.0.0.0:7400".parse().unwrap(), ..Default::default() };
        adopt(&mut config, &k8s(), &Pod::parse(&k8s(), "demo-4", "db").unwrap(), 5, true).unwrap();
        assert_eq!(config.node_id, Some(5));
        assert!(config.constellation.peers.is_empty());
        assert_eq!(config.constellation.join.as_deref(), Some("demo.db.svc:7400"));
    }

    #[test]
    fn foreign_pod_names_are_clear_errors() {
        for name in ["other-0", "demo", "demo-x", "demo--1"] {
            let error = Pod::parse(&k8s(), name, "db").unwrap_err().to_string();
            assert!(error.contains("<constellation>-<ordinal>"), "{error}");
        }
    }

    #[test]
    fn member_states_follow_the_node() {
        let mut o = Observation {
            ready: true,
            joined: true,
            decommission_requested: false,
            ranges: 3,
            leaders: 1,
            constellation_ranges: 5,
            unavailable: 0,
            under_replicated: 0,
        };
        assert_eq!(member_state(&o), MemberState::Alive);
        o.ready = false;
        assert_eq!(member_state(&o), MemberState::Suspect);
        o.joined = false;
        assert_eq!(member_state(&o), MemberState::Joining);
        o.decommission_requested = true;
        assert_eq!(member_state(&o), MemberState::Decommissioning);
        o.ranges = 0;
        assert_eq!(member_state(&o), MemberState::Decommissioned);
    }
}
