//! The reconciler: observe, plan (pure, `plan.rs`), apply with server-side apply, report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use pleiades_crds::{Constellation, MemberState, MemberStatus};
use serde::Serialize;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::certificates;
use crate::desired::{allow_operator, desired, service_monitor_resource, Names, CONFIG_HASH_ANNOTATION, HTTP_PORT};
use crate::failover::{self, Failover};
use crate::metrics::Metrics;
use crate::plan::{aggregate, plan, Confirmation, ObservedSet, Plan, Rollout, Scale};
use crate::scope::{api, Scope};
use crate::topology;

pub const FIELD_MANAGER: &str = "pleiades-operator";
pub const FINALIZER: &str = "pleiades.io/cleanup";
/// Requeue while something is in progress (members report every few seconds anyway).
const BUSY_REQUEUE: Duration = Duration::from_secs(10);
const IDLE_REQUEUE: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Constellation {0} has no namespace")]
    NotNamespaced(String),
    #[error("certificates: {0}")]
    Certificates(#[from] crate::tls::CertError),
}

impl Error {
    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code >= 500 => "server",
            Error::Kube(_) => "api",
            Error::Finalizer(_) => "finalizer",
            Error::NotNamespaced(_) => "spec",
            Error::Certificates(_) => "tls",
        }
    }
}

pub struct Context {
    pub client: Client,
    /// The operator's own namespace, whose pods the constellations' NetworkPolicies admit.
    pub namespace: String,
    /// The members' HTTP port, where the operator asks one member about another.
    pub member_http_port: u16,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per Constellation, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, instance: String, namespace: String) -> Arc<Context> {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(instance) };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace,
            member_http_port: HTTP_PORT as u16,
            metrics,
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the controller until `shutdown` resolves: one over the whole cluster, or one per watched
/// namespace, so a namespaced install lists and watches only where its Roles grant it.
pub async fn run(ctx: Arc<Context>, scope: Scope, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.boxed().shared();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=pleiades-operator");
    let controllers = scope.namespaces().into_iter().map(|namespace| {
        let client = &ctx.client;
        Controller::new(api::<Constellation>(client, namespace), watcher::Config::default())
            .owns(api::<StatefulSet>(client, namespace), owned.clone())
            .owns(api::<ConfigMap>(client, namespace), owned.clone())
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok(_) => {}
                    // An owned object's event for a Constellation just deleted: nothing to do.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        debug!(%object, "the constellation is gone; nothing to reconcile")
                    }
                    Err(error) => warn!(%error, "reconcile failed"),
                }
            })
    });
    futures::future::join_all(controllers).await;
}

pub async fn reconcile(cst: Arc<Constellation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = cst.namespace().ok_or_else(|| Error::NotNamespaced(cst.name_any()))?;
    let api: Api<Constellation> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, cst.clone(), |event| async {
        match event {
            Finalize::Apply(cst) => apply(&cst, &ctx).await,
            Finalize::Cleanup(cst) => cleanup(&cst, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures().remove(&key(&cst));
    }
    result
}

/// Exponential backoff per Constellation: 2 s, 4 s, 8 s … up to 5 minutes.
pub fn error_policy(cst: Arc<Constellation>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures();
    let count = failures.entry(key(&cst)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = FIRST_BACKOFF.saturating_mul(1 << (*count - 1).min(16)).min(MAX_BACKOFF);
    warn!(constellation = %key(&cst), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn key(cst: &Constellation) -> String {
    format!("{}/{}", cst.namespace().unwrap_or_default(), cst.name_any())
}

async fn apply(cst: &Constellation, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(cst);
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let now = Timestamp::now();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let existing = sets.get_opt(&names.stateful_set()).await?;
    let mut observed = existing.as_ref().map(observe);
    if let Some(set) = observed.as_mut() {
        set.confirmation = confirm_decommission(cst, &names, set.replicas, ctx.member_http_port).await;
    }
    let mut objects = desired(cst);
    let desired_hash = template_hash(&objects.stateful_set).unwrap_or_default();
    let plan = plan(cst, observed.as_ref(), &desired_hash, now);
    let mut status = aggregate(cst, observed.as_ref(), &plan, now);
    // Even while paused: a pod that cannot renew its certificate stops talking to its peers.
    let pods = plan.stateful_set_replicas.max(observed.as_ref().map(|s| s.replicas).unwrap_or(0));
    if let Some(outcome) = certificates::reconcile(cst, ctx, &names, pods, &plan.forget_members).await? {
        status.conditions.push(certificates::condition(cst, &outcome, now));
    }

    if cst.spec.paused {
        write_status(cst, ctx, &plan, status).await?;
        return Ok(Action::requeue(IDLE_REQUEUE));
    }

    let set_spec = objects.stateful_set.spec.get_or_insert_default();
    set_spec.replicas = Some(plan.stateful_set_replicas);
    if let Some(rolling) = set_spec.update_strategy.as_mut().and_then(|s| s.rolling_update.as_mut()) {
        rolling.partition = Some(plan.partition);
    }
    if let Some(claims) = existing.and_then(|s| s.spec).and_then(|s| s.volume_claim_templates) {
        // Claim templates are immutable; a larger size is applied to each claim instead.
        set_spec.volume_claim_templates = Some(claims);
    }

    let params = PatchParams::apply(FIELD_MANAGER).force();
    apply_object(Api::<ServiceAccount>::namespaced(client.clone(), ns), &objects.service_account, &params).await?;
    apply_object(Api::<Role>::namespaced(client.clone(), ns), &objects.role, &params).await?;
    apply_object(Api::<RoleBinding>::namespaced(client.clone(), ns), &objects.role_binding, &params).await?;
    apply_object(Api::<ConfigMap>::namespaced(client.clone(), ns), &objects.config_map, &params).await?;
    apply_object(Api::<Service>::namespaced(client.clone(), ns), &objects.peer_service, &params).await?;
    apply_object(Api::<Service>::namespaced(client.clone(), ns), &objects.client_service, &params).await?;
    if let Some(policy) = objects.network_policy.as_mut() {
        allow_operator(policy, &ctx.namespace);
    }
    match &objects.network_policy {
        Some(policy) => apply_object(Api::<NetworkPolicy>::namespaced(client.clone(), ns), policy, &params).await?,
        None => remove_network_policy(cst, ctx, &names).await?,
    }
    apply_object(Api::<PodDisruptionBudget>::namespaced(client.clone(), ns), &objects.pod_disruption_budget, &params)
        .await?;
    apply_object(sets.clone(), &objects.stateful_set, &params).await?;
    if let Some(monitor) = &objects.service_monitor {
        if service_monitors_installed(client).await? {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
            api.patch(&names.constellation, &params, &Patch::Apply(monitor)).await?;
        }
    }
    expand_volumes(cst, ctx, &names).await?;
    label_topology(cst, ctx, &names).await?;
    if let Failover::Waiting { pod, reason } = fail_over(cst, ctx, &names, now).await? {
        // Shown where a user looks for what is wrong; the Event says it once more.
        if let Some(degraded) = status.conditions.iter_mut().find(|c| c.type_ == "Degraded") {
            degraded.message = format!("{}; {pod}'s node is lost: {reason}", degraded.message);
        }
    }

    publish_decisions(cst, ctx, &plan).await;
    let busy = !matches!((&plan.scale, &plan.rollout), (Scale::Stable, Rollout::Idle));
    write_status(cst, ctx, &plan, status).await?;
    Ok(Action::requeue(if busy { BUSY_REQUEUE } else { IDLE_REQUEUE }))
}

/// Once the pod on its way out reports itself decommissioned, asks another member whether any
/// range still names it; the plan removes the pod only on that member's word.
async fn confirm_decommission(
    cst: &Constellation,
    names: &Names,
    replicas: i32,
    http_port: u16,
) -> Option<Confirmation> {
    let status = cst.status.as_ref()?;
    let leaving = names.pod(replicas - 1);
    if cst.spec.replicas >= replicas {
        return None;
    }
    // A pod that never reported is asked about by the node id its ordinal gives it.
    let never_reported = pleiades_crds::MemberStatus {
        pod: leaving.clone(),
        node_id: i64::try_from(pleiades_crds::node_id_for(replicas - 1, &status.retired_node_ids)).unwrap_or_default(),
        ..Default::default()
    };
    let member = match status.members.iter().find(|m| m.pod == leaving) {
        Some(m) if m.state == MemberState::Decommissioned && status.decommission.contains(&leaving) => m,
        Some(_) => return None,
        None => &never_reported,
    };
    Some(ask_about(&status.members, member, http_port).await)
}

/// What a member other than `leaving` says about the ranges that still name `leaving`'s node.
async fn ask_about(members: &[MemberStatus], leaving: &MemberStatus, http_port: u16) -> Confirmation {
    let answer = crate::probe::confirm_empty(members, leaving, http_port).await.map_err(|errors| {
        if errors.is_empty() {
            "no other member is ready to ask".to_string()
        } else {
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
    });
    Confirmation { about: leaving.pod.clone(), answer }
}

fn observe(set: &StatefulSet) -> ObservedSet {
    let spec = set.spec.as_ref();
    ObservedSet {
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
        ready_replicas: set.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        template_hash: template_hash(set),
        confirmation: None,
    }
}

fn template_hash(set: &StatefulSet) -> Option<String> {
    set.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(CONFIG_HASH_ANNOTATION).cloned()
}

async fn apply_object<K>(api: Api<K>, object: &K, params: &PatchParams) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, params, &Patch::Apply(object)).await?;
    Ok(())
}

/// Deletes the constellation's NetworkPolicy after `networkPolicy.enabled` turned false; one of
/// the same name that this constellation does not own is someone else's and stays.
async fn remove_network_policy(cst: &Constellation, ctx: &Context, names: &Names) -> Result<(), Error> {
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let Some(policy) = policies.get_opt(&names.network_policy()).await? else { return Ok(()) };
    let uid = cst.uid();
    if uid.is_none()
        || !policy
            .owner_references()
            .iter()
            .any(|owner| owner.controller == Some(true) && Some(&owner.uid) == uid.as_ref())
    {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: policy.uid(), resource_version: None }),
        ..Default::default()
    };
    match policies.delete(&names.network_policy(), &params).await {
        Ok(_) => {
            publish(ctx, cst, EventType::Normal, "RemovedNetworkPolicy", "networkPolicy.enabled is false".into()).await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn service_monitors_installed(client: &Client) -> Result<bool, Error> {
    match client.list_api_group_resources("monitoring.coreos.com/v1").await {
        Ok(resources) => Ok(resources.resources.iter().any(|r| r.name == "servicemonitors")),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Grows every node's volume claim to the requested size (the schema forbids shrinking).
async fn expand_volumes(cst: &Constellation, ctx: &Context, names: &Names) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let selector = crate::desired::selector_string(cst);
    for claim in claims.list(&ListParams::default().labels(&selector)).await? {
        let requested = claim.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
        if requested.and_then(|r| r.get("storage")).is_some_and(|q| q.0 != cst.spec.storage.size) {
            let patch = json!({"spec": {"resources": {"requests": {"storage": cst.spec.storage.size}}}});
            claims.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            publish(
                ctx,
                cst,
                EventType::Normal,
                "ExpandingVolume",
                format!("requested {} for {}", cst.spec.storage.size, claim.name_any()),
            )
            .await;
        }
    }
    Ok(())
}

/// Copies each scheduled pod's Kubernetes node zone and region into its annotations
/// (`topology`), so the nodes spread replicas over zones. A node that cannot be read (gone, or
/// no right to read Nodes) leaves its pods as they are: placement then works without zones.
async fn label_topology(cst: &Constellation, ctx: &Context, names: &Names) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let selector = crate::desired::selector_string(cst);
    let mut wanted_on: HashMap<String, Option<std::collections::BTreeMap<String, String>>> = HashMap::new();
    for pod in pods.list(&ListParams::default().labels(&selector)).await? {
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        if !wanted_on.contains_key(&node_name) {
            let labels = match nodes.get_opt(&node_name).await {
                Ok(node) => node.map(|node| topology::annotations_for(&node)),
                Err(error) => {
                    debug!(node = %node_name, %error, "cannot read a Kubernetes node's topology labels");
                    None
                }
            };
            wanted_on.insert(node_name.clone(), labels);
        }
        let Some(Some(wanted)) = wanted_on.get(&node_name) else { continue };
        if let Some(patch) = topology::patch_for(&pod, wanted) {
            pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }
    Ok(())
}

/// Replaces the pod of a lost Kubernetes node once `failover::decide` allows it: force-deletes
/// the pod and its claim, so the StatefulSet starts the ordinal afresh elsewhere.
async fn fail_over(cst: &Constellation, ctx: &Context, names: &Names, now: Timestamp) -> Result<Failover, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let selector = crate::desired::selector_string(cst);
    let mut stuck: Vec<_> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .iter()
        .filter_map(|p| failover::stuck(p, now))
        .collect();
    stuck.sort_by(|a, b| a.name.cmp(&b.name));
    let status = cst.status.clone().unwrap_or_default();
    let after = cst.spec.failover.after_seconds;
    let mut decision = failover::decide(&stuck, &status, after, None, now);
    // A member is asked only once nothing else stands in the way.
    if let (Failover::Waiting { reason, .. }, Some(member)) =
        (&decision, stuck.first().and_then(|s| status.members.iter().find(|m| m.pod == s.name)))
    {
        if reason.starts_with("asking a member") {
            let testimony = ask_about(&status.members, member, ctx.member_http_port).await;
            decision = failover::decide(&stuck, &status, after, Some(&testimony), now);
        }
    }
    match &decision {
        Failover::Replace { pod, node_id } => {
            let force = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            ignore_not_found(pods.delete(pod, &force).await.map(|_| ()))?;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
            ignore_not_found(claims.delete(&format!("data-{pod}"), &DeleteParams::default()).await.map(|_| ()))?;
            let note = format!(
                "{pod}'s Kubernetes node stopped answering over {after}s ago and node {node_id}'s replicas were \
                 rebuilt elsewhere: deleted its pod and claim; it starts afresh and joins as a new node"
            );
            publish_about(ctx, cst, Some(pod), EventType::Warning, "FailedOver", note).await;
        }
        Failover::Waiting { pod, reason } => {
            publish_about(ctx, cst, Some(pod), EventType::Warning, "NodeLost", format!("{pod}: {reason}")).await
        }
        Failover::Idle => {}
    }
    Ok(decision)
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(()),
        other => other,
    }
}

/// Writes the operator's fields of the status (server-side apply; the members' entries belong
/// to the pods), after dropping the entries of pods that are gone.
async fn write_status(
    cst: &Constellation,
    ctx: &Context,
    plan: &Plan,
    status: pleiades_crds::ConstellationStatus,
) -> Result<(), Error> {
    let names = Names::of(cst);
    let api: Api<Constellation> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let members = cst.status.as_ref().map(|s| s.members.as_slice()).unwrap_or_default();
    // Remove from the highest index down so earlier indices stay valid; each removal tests
    // the entry first, so a concurrent change makes the patch fail instead of removing the wrong one.
    let mut operations = Vec::new();
    for (index, member) in members.iter().enumerate().rev() {
        if plan.forget_members.contains(&member.pod) {
            operations.push(json!({"op": "test", "path": format!("/status/members/{index}/pod"), "value": member.pod}));
            operations.push(json!({"op": "remove", "path": format!("/status/members/{index}")}));
        }
    }
    if !operations.is_empty() {
        let patch: json_patch::Patch =
            serde_json::from_value(json!(operations)).map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
        api.patch_status(&names.constellation, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
    }
    let body = json!({
        "apiVersion": Constellation::api_version(&()),
        "kind": Constellation::kind(&()),
        "metadata": {"name": names.constellation},
        "status": status,
    });
    api.patch_status(&names.constellation, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

async fn publish_decisions(cst: &Constellation, ctx: &Context, plan: &Plan) {
    let previous = cst.status.clone().unwrap_or_default();
    match &plan.scale {
        Scale::Up { from, to } => {
            publish(ctx, cst, EventType::Normal, "ScalingUp", format!("scaling from {from} to {to} pods")).await
        }
        Scale::Decommissioning { pod } if !previous.decommission.contains(pod) => {
            publish_about(
                ctx,
                cst,
                Some(pod),
                EventType::Normal,
                "Decommissioning",
                format!("asked {pod} to move its replicas away before removing it"),
            )
            .await
        }
        Scale::Removing { pod } => {
            publish_about(
                ctx,
                cst,
                Some(pod),
                EventType::Normal,
                "RemovingPod",
                format!("{pod} holds no replica; lowering the StatefulSet to {}", plan.stateful_set_replicas),
            )
            .await
        }
        Scale::Blocked { reason } => publish(ctx, cst, EventType::Warning, "ScaleDownBlocked", reason.clone()).await,
        Scale::Confirming { detail, pod } if detail.contains("still name it") => {
            publish_about(ctx, cst, Some(pod), EventType::Warning, "DecommissionContradicted", detail.clone()).await
        }
        Scale::Decommissioning { .. } | Scale::Confirming { .. } | Scale::Stable => {}
    }
    let retired: Vec<i64> = previous.retired_node_ids.iter().chain(&plan.retire).copied().collect();
    let lost_volumes = previous.members.iter().filter(|m| m.state == MemberState::VolumeLost);
    for lost in lost_volumes.filter(|m| plan.retire.contains(&m.node_id)) {
        let ordinal = crate::plan::ordinal(&Names::of(cst), &lost.pod).unwrap_or_default();
        let note = format!(
            "{} started on an empty volume: node {} is retired for good and the pod joins as node {}, rebuilding \
             its replicas",
            lost.pod,
            lost.node_id,
            pleiades_crds::node_id_for(ordinal, &retired)
        );
        publish_about(ctx, cst, Some(&lost.pod), EventType::Warning, "VolumeLost", note).await;
    }
    if !previous.decommission.is_empty()
        && plan.decommission.is_empty()
        && !matches!(plan.scale, Scale::Removing { .. })
    {
        publish(
            ctx,
            cst,
            EventType::Normal,
            "DecommissionCancelled",
            format!("replicas is back to {}; {} stays", cst.spec.replicas, previous.decommission.join(", ")),
        )
        .await;
    }
    match &plan.rollout {
        Rollout::Rolling { status, advanced: true } => {
            let pod = Names::of(cst).pod(status.partition);
            publish_about(
                ctx,
                cst,
                Some(&pod),
                EventType::Normal,
                "RollingUpdate",
                format!("constellation healthy; restarting {pod} with configuration {}", status.target_config_hash),
            )
            .await
        }
        Rollout::Idle if previous.rollout.is_some() => {
            publish(ctx, cst, EventType::Normal, "RolloutComplete", "every pod runs the new configuration".into()).await
        }
        _ => {}
    }
}

pub(crate) async fn publish(ctx: &Context, cst: &Constellation, type_: EventType, reason: &str, note: String) {
    publish_about(ctx, cst, None, type_, reason, note).await
}

/// An event about one of the constellation's pods, which it names as the related object: events
/// are aggregated by reason and related object, so steps on different pods stay apart instead of
/// folding into one count under the first pod's message.
async fn publish_about(
    ctx: &Context,
    cst: &Constellation,
    pod: Option<&str>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    info!(constellation = %key(cst), reason, pod, %note, "decision");
    let secondary = pod.map(|pod| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.into()),
        namespace: cst.namespace(),
        ..Default::default()
    });
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary };
    if let Err(error) = ctx.recorder.publish(&event, &cst.object_ref(&())).await {
        warn!(%error, reason, "could not publish an event");
    }
}

async fn cleanup(cst: &Constellation, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(cst);
    publish(
        ctx,
        cst,
        EventType::Normal,
        "Deleting",
        "deleting the constellation; owned objects are garbage-collected".into(),
    )
    .await;
    if cst.spec.storage.retention.when_deleted == pleiades_crds::RetentionPolicy::Delete {
        // The StatefulSet's own retention policy does the same; doing it here also covers
        // claims left by earlier scale-downs with `whenScaled: Retain`.
        // One claim at a time rather than a collection delete: the operator's RBAC grants no
        // `deletecollection`, and each deletion is logged.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
        let selector = crate::desired::selector_string(cst);
        for claim in claims.list(&ListParams::default().labels(&selector)).await? {
            let name = claim.name_any();
            match claims.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(constellation = %key(cst), claim = %name, "deleted volume claim (whenDeleted: Delete)"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests;
