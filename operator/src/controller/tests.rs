//! The reconciler against kube's `tower-test` mock service, answered by a small in-memory API
//! server: objects by path, server-side apply (the operator's status fields replace its old
//! ones; the pods' member entries stay), JSON and merge patches, lists by label, events, and
//! injected failures.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::controller::Action;
use pleiades_crds::{ConstellationSpec, MemberState, MemberStatus};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::*;

const CST: &str = "/apis/pleiades.io/v1alpha1/namespaces/db/constellations/demo";
const STS: &str = "/apis/apps/v1/namespaces/db/statefulsets/demo";
const CONFIG: &str = "/api/v1/namespaces/db/configmaps/demo-config";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/db/networkpolicies/demo";
const CA_SECRET: &str = "/api/v1/namespaces/db/secrets/demo-ca";
const CA_CONFIG: &str = "/api/v1/namespaces/db/configmaps/demo-ca";
const ADMIN_SECRET: &str = "/api/v1/namespaces/db/secrets/demo-admin-tls";
const REQUESTS: &str = "/apis/cert-manager.io/v1/namespaces/db/certificaterequests";

struct Fault {
    method: &'static str,
    path: &'static str,
    code: u16,
    /// Someone else's write that lands right after the failure.
    then: Option<(String, Value)>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    events: Vec<Value>,
    faults: VecDeque<Fault>,
    service_monitors_installed: bool,
    cert_manager_installed: bool,
    version: u64,
    /// "METHOD path" of every request, watches included.
    requests: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

fn ok(code: u16, value: &Value) -> Response<Body> {
    Response::builder().status(code).body(Body::from(serde_json::to_vec(value).unwrap())).unwrap()
}

/// Namespaced collections are /api/v1/namespaces/ns/kind (5 segments) and
/// /apis/group/version/namespaces/ns/kind (6); their objects have one segment more.
fn is_collection(path: &str) -> bool {
    let segments = path.trim_matches('/').split('/').count();
    if path.starts_with("/api/") {
        segments == 5
    } else {
        segments == 6
    }
}

fn selector_matches(object: &Value, query: &str) -> bool {
    let Some(selector) = query.split('&').find_map(|p| p.strip_prefix("labelSelector=")) else { return true };
    let selector = selector.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/");
    selector.split(',').all(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        object["metadata"]["labels"][k] == v
    })
}

impl FakeApi {
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            // Watches are held open and never answered: an idle watch, for the controller tests.
            let mut watches = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let line = format!("{} {}", request.method(), request.uri().path());
                fake.0.lock().unwrap().requests.push(line);
                if request.uri().query().is_some_and(|query| query.contains("watch=true")) {
                    watches.push(send);
                    continue;
                }
                let response = fake.respond(request).await;
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    async fn respond(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let content_type =
            request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut state = self.0.lock().unwrap();
        if let Some(i) = state.faults.iter().position(|f| f.method == method && path.contains(f.path)) {
            let fault = state.faults.remove(i).unwrap();
            if let Some((path, object)) = fault.then {
                state.objects.insert(path, object);
            }
            let reason = match fault.code {
                404 => "NotFound",
                409 => "Conflict",
                _ => "InternalError",
            };
            return status_response(fault.code, reason, "injected failure");
        }
        if path == "/apis/monitoring.coreos.com/v1" {
            return if state.service_monitors_installed {
                ok(
                    200,
                    &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
                    "resources": [{"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true,
                        "kind": "ServiceMonitor", "verbs": ["get", "patch"]}]}),
                )
            } else {
                status_response(404, "NotFound", "the server could not find the requested resource")
            };
        }
        if path == "/apis/cert-manager.io/v1" {
            return if state.cert_manager_installed {
                ok(
                    200,
                    &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cert-manager.io/v1",
                    "resources": [{"name": "certificaterequests", "singularName": "certificaterequest",
                        "namespaced": true, "kind": "CertificateRequest", "verbs": ["get", "create", "delete"]}]}),
                )
            } else {
                status_response(404, "NotFound", "the server could not find the requested resource")
            };
        }
        state.version += 1;
        let version = state.version.to_string();
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(object) if !is_collection(&path) => (object.to_string(), true),
            _ => (path.clone(), false),
        };
        match method.as_str() {
            "GET" if is_collection(&path) => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(key, object)| key.starts_with(&prefix) && selector_matches(object, &query))
                    .map(|(_, object)| object.clone())
                    .collect();
                ok(
                    200,
                    &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            "GET" => match state.objects.get(&object_path) {
                Some(object) => ok(200, object),
                None => status_response(404, "NotFound", "not found"),
            },
            "POST" => {
                let mut object = body;
                if path.ends_with("/events") {
                    state.events.push(object.clone());
                    return ok(201, &object);
                }
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = format!("{path}/{name}");
                if state.objects.contains_key(&key) {
                    return status_response(409, "AlreadyExists", "already exists");
                }
                object["metadata"]["resourceVersion"] = json!(version);
                state.objects.insert(key, object.clone());
                ok(201, &object)
            }
            "PUT" => {
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!(version);
                state.objects.insert(object_path, object.clone());
                ok(200, &object)
            }
            "PATCH" if path.contains("/events/") => ok(200, &body),
            "PATCH" => {
                let existing = state.objects.get(&object_path).cloned();
                let merged = if content_type.starts_with("application/apply-patch") {
                    match (existing, subresource) {
                        (None, true) => return status_response(404, "NotFound", "not found"),
                        (None, false) => body,
                        (Some(mut old), true)
                            if body["status"]
                                .as_object()
                                .is_some_and(|s| s.len() == 1 && s.contains_key("members")) =>
                        {
                            // Another manager's fields in the members' entries (the
                            // operator's certificates): merged into each entry by its key.
                            let members = old["status"]["members"].as_array_mut();
                            let Some(members) = members else { return status_response(422, "Invalid", "no members") };
                            for entry in body["status"]["members"].as_array().cloned().unwrap_or_default() {
                                match members.iter_mut().find(|m| m["pod"] == entry["pod"]) {
                                    Some(member) => json_patch::merge(member, &entry),
                                    None => members.push(entry),
                                }
                            }
                            old
                        }
                        (Some(mut old), true) => {
                            // The operator's status fields replace its previous ones; the
                            // pods' entries (another field manager's) stay.
                            let members = old["status"]["members"].take();
                            old["status"] = body["status"].clone();
                            if !members.is_null() {
                                old["status"]["members"] = members;
                            }
                            old
                        }
                        (Some(old), false) => {
                            let mut new = body;
                            for keep in ["uid", "finalizers", "creationTimestamp"] {
                                if !old["metadata"][keep].is_null() {
                                    new["metadata"][keep] = old["metadata"][keep].clone();
                                }
                            }
                            if !old["status"].is_null() {
                                new["status"] = old["status"].clone();
                            }
                            new
                        }
                    }
                } else {
                    let Some(mut old) = existing else { return status_response(404, "NotFound", "not found") };
                    if content_type.starts_with("application/json-patch") {
                        // The API server reads an absent field as null in a `test`.
                        if old["metadata"].get("finalizers").is_none() {
                            old["metadata"]["finalizers"] = Value::Null;
                        }
                        let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                        if json_patch::patch(&mut old, &patch).is_err() {
                            return status_response(422, "Invalid", "json patch failed");
                        }
                    } else {
                        json_patch::merge(&mut old, &body);
                    }
                    old
                };
                let mut merged = merged;
                merged["metadata"]["resourceVersion"] = json!(version);
                state.objects.insert(object_path, merged.clone());
                ok(200, &merged)
            }
            "DELETE" => match state.objects.remove(&object_path) {
                Some(object) => ok(200, &object),
                None => status_response(404, "NotFound", "not found"),
            },
            _ => status_response(405, "MethodNotAllowed", "unexpected request"),
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    fn update(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.0.lock().unwrap();
        change(state.objects.get_mut(path).unwrap_or_else(|| panic!("{path} is missing")));
    }

    fn fail_next(&self, method: &'static str, path: &'static str, code: u16) {
        self.0.lock().unwrap().faults.push_back(Fault { method, path, code, then: None });
    }

    fn fail_next_then(&self, method: &'static str, path: &'static str, code: u16, then: (&str, Value)) {
        let then = Some((then.0.to_string(), then.1));
        self.0.lock().unwrap().faults.push_back(Fault { method, path, code, then });
    }

    fn event_reasons(&self) -> Vec<String> {
        self.0.lock().unwrap().events.iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect()
    }

    fn constellation(&self) -> Arc<Constellation> {
        Arc::new(serde_json::from_value(self.get(CST).unwrap()).unwrap())
    }

    fn statefulset_replicas_and_partition(&self) -> (i64, i64) {
        let set = self.get(STS).unwrap();
        (
            set["spec"]["replicas"].as_i64().unwrap(),
            set["spec"]["updateStrategy"]["rollingUpdate"]["partition"].as_i64().unwrap(),
        )
    }

    fn template_hash(&self) -> String {
        let set = self.get(STS).unwrap();
        set["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].as_str().unwrap().to_string()
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let cst = self.get(CST).unwrap();
        let conditions = cst["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let c = conditions.iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("no {type_} in {cst}"));
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
            c["message"].as_str().unwrap().into(),
        )
    }

    /// The pods' own reports, as the data plane's reporter writes them.
    fn report(&self, members: &[MemberStatus]) {
        let members = serde_json::to_value(members).unwrap();
        self.update(CST, |cst| cst["status"]["members"] = members);
    }

    fn mark_statefulset_ready(&self) {
        self.update(STS, |set| {
            let replicas = set["spec"]["replicas"].clone();
            set["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
        });
    }
}

fn member(ordinal: i32, state: MemberState, hash: &str) -> MemberStatus {
    MemberStatus {
        pod: format!("demo-{ordinal}"),
        node_id: i64::from(ordinal) + 1,
        address: format!("demo-{ordinal}.demo-peers.db.svc:7400"),
        state,
        ready: matches!(state, MemberState::Alive | MemberState::Decommissioning | MemberState::Decommissioned),
        ranges: if state == MemberState::Decommissioned { 0 } else { 3 },
        leaders: if ordinal == 0 { 5 } else { 0 },
        constellation_ranges: 5,
        config_hash: hash.into(),
        last_report: (Timestamp::now() - SignedDuration::from_secs(1)).to_string(),
        ..Default::default()
    }
}

fn alive(pods: i32, hash: &str) -> Vec<MemberStatus> {
    (0..pods).map(|o| member(o, MemberState::Alive, hash)).collect()
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    /// What the members' HTTP endpoint (one, on loopback) answers to `GET /replicas/<id>`.
    member_answer: Arc<Mutex<String>>,
}

/// Serves `answer` to every request, as a member's HTTP port would its `/replicas` answer.
fn member_endpoint(answer: Arc<Mutex<String>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/replicas/{node}",
        axum::routing::get(move || {
            let answer = answer.clone();
            async move { answer.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move { axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await });
    port
}

impl Harness {
    fn new(spec: ConstellationSpec) -> Harness {
        let api = FakeApi::default();
        let mut cst = crate::desired::tests::constellation(spec);
        cst.metadata.resource_version = Some("1".into());
        api.0.lock().unwrap().objects.insert(CST.into(), serde_json::to_value(&cst).unwrap());
        let mut ctx =
            Context::new(api.client(), Metrics::new(&mut Registry::default()), "test".into(), "pleiades-system".into());
        let member_answer = Arc::new(Mutex::new(String::new()));
        if let Some(ctx) = Arc::get_mut(&mut ctx) {
            ctx.member_http_port = member_endpoint(member_answer.clone());
        }
        Harness { api, ctx, member_answer }
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        reconcile(self.api.constellation(), self.ctx.clone()).await
    }

    /// Adds the finalizer, then creates everything.
    async fn created(spec: ConstellationSpec) -> Harness {
        let harness = Harness::new(spec);
        assert_eq!(harness.reconcile().await.unwrap(), Action::await_change(), "the first pass adds the finalizer");
        let finalizers = harness.api.get(CST).unwrap()["metadata"]["finalizers"].clone();
        assert_eq!(finalizers, json!([FINALIZER]));
        harness.reconcile().await.unwrap();
        harness.api.mark_statefulset_ready();
        harness
    }

    fn set_spec(&self, change: impl FnOnce(&mut ConstellationSpec)) {
        self.api.update(CST, |cst| {
            let mut spec: ConstellationSpec = serde_json::from_value(cst["spec"].clone()).unwrap();
            change(&mut spec);
            cst["spec"] = serde_json::to_value(spec).unwrap();
            let generation = cst["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            cst["metadata"]["generation"] = json!(generation);
        });
    }
}

#[tokio::test]
async fn create_applies_every_object_and_reports_creating() {
    let h = Harness::created(ConstellationSpec::default()).await;
    for path in [
        STS,
        CONFIG,
        "/api/v1/namespaces/db/services/demo",
        "/api/v1/namespaces/db/services/demo-peers",
        "/api/v1/namespaces/db/serviceaccounts/demo-node",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/db/roles/demo-node",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/db/rolebindings/demo-node",
        "/apis/policy/v1/namespaces/db/poddisruptionbudgets/demo",
        NETPOL,
        CA_SECRET,
        CA_CONFIG,
        ADMIN_SECRET,
    ] {
        let object = h.api.get(path).unwrap_or_else(|| panic!("{path} was not created"));
        assert_eq!(object["metadata"]["ownerReferences"][0]["name"], "demo", "{path}");
    }
    assert_eq!(h.api.statefulset_replicas_and_partition(), (3, 0));
    assert!(
        h.api.get("/apis/monitoring.coreos.com/v1/namespaces/db/servicemonitors/demo").is_none(),
        "no CRD, no ServiceMonitor"
    );
    let status = h.api.get(CST).unwrap()["status"].clone();
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(h.api.condition("Available").1, "NoReports");
    assert!(h.api.event_reasons().contains(&"CreatedCA".to_string()));

    // The pods report in: the constellation becomes Available and Running.
    let hash = h.api.template_hash();
    h.api.report(&alive(3, &hash));
    h.reconcile().await.unwrap();
    assert_eq!(h.api.condition("Available").0, "True");
    let status = h.api.get(CST).unwrap()["status"].clone();
    assert_eq!((status["phase"].as_str(), status["aliveMembers"].as_i64()), (Some("Running"), Some(3)));
    assert_eq!(status["ranges"], json!({"total": 5, "underReplicated": 0, "unavailable": 0}));
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "the pods' entries stay");
}

#[tokio::test]
async fn a_service_monitor_is_applied_when_its_crd_exists() {
    let h = Harness::new(ConstellationSpec::default());
    h.api.0.lock().unwrap().service_monitors_installed = true;
    h.reconcile().await.unwrap();
    h.reconcile().await.unwrap();
    let monitor = h.api.get("/apis/monitoring.coreos.com/v1/namespaces/db/servicemonitors/demo").unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
}

#[tokio::test]
async fn scale_up_adds_pods() {
    let h = Harness::created(ConstellationSpec::default()).await;
    h.api.report(&alive(3, &h.api.template_hash()));
    h.set_spec(|spec| spec.replicas = 5);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition(), (5, 0));
    assert_eq!(h.api.condition("Progressing").1, "ScalingUp");
    assert!(h.api.event_reasons().contains(&"ScalingUp".to_string()));
}

#[tokio::test]
async fn scale_down_waits_for_decommission_then_resumes() {
    let h = Harness::created(ConstellationSpec { replicas: 5, ..Default::default() }).await;
    let hash = h.api.template_hash();
    h.api.report(&alive(5, &hash));
    h.set_spec(|spec| spec.replicas = 3);

    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 5, "no pod removed before its data moved");
    assert_eq!(h.api.get(CST).unwrap()["status"]["decommission"], json!(["demo-4"]));
    assert_eq!(h.api.condition("Progressing").1, "Decommissioning");
    assert!(h.api.event_reasons().contains(&"Decommissioning".to_string()));

    // demo-4 is still moving replicas: nothing changes.
    let mut members = alive(5, &hash);
    members[4] = member(4, MemberState::Decommissioning, &hash);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 5);

    // demo-4 says it is empty. No member can be asked yet (their addresses do not resolve
    // here), so its word alone keeps it: the pod stays.
    members[4] = member(4, MemberState::Decommissioned, &hash);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 5);
    assert_eq!(h.api.condition("Progressing").1, "ConfirmingDecommission");

    // A member contradicts it: still no removal, and a warning.
    for member in &mut members {
        member.address = "127.0.0.1:7400".into();
    }
    h.api.report(&members);
    *h.member_answer.lock().unwrap() = r#"{"node_id":5,"ranges":[2]}"#.into();
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 5);
    assert!(h.api.event_reasons().contains(&"DecommissionContradicted".to_string()));

    // A member confirms no range names it: its pod goes, its entry is dropped, demo-3 is next.
    *h.member_answer.lock().unwrap() = r#"{"node_id":5,"ranges":[]}"#.into();
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 4);
    let status = h.api.get(CST).unwrap()["status"].clone();
    assert_eq!(status["members"].as_array().unwrap().len(), 4);
    assert!(status["decommission"].is_null());
    assert!(h.api.event_reasons().contains(&"RemovingPod".to_string()));
    h.api.mark_statefulset_ready();
    h.reconcile().await.unwrap();
    assert_eq!(h.api.get(CST).unwrap()["status"]["decommission"], json!(["demo-3"]));

    // Changing one's mind: back to 4 cancels demo-3's decommission.
    h.set_spec(|spec| spec.replicas = 4);
    h.reconcile().await.unwrap();
    assert!(h.api.get(CST).unwrap()["status"]["decommission"].is_null());
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 4);
    assert!(h.api.event_reasons().contains(&"DecommissionCancelled".to_string()));
}

#[tokio::test]
async fn scale_down_below_the_replication_factor_is_refused() {
    let h = Harness::created(ConstellationSpec::default()).await;
    h.api.report(&alive(3, &h.api.template_hash()));
    // The API server's CEL rule refuses this; an older CRD or a forced write might not.
    h.set_spec(|spec| spec.replicas = 2);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 3);
    let (status, reason, message) = h.api.condition("Progressing");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ScaleDownBlocked"));
    assert!(message.contains("below replicationFactor"), "{message}");
    let events = h.api.0.lock().unwrap().events.clone();
    assert!(events.iter().any(|e| e["reason"] == "ScaleDownBlocked" && e["type"] == "Warning"));
}

#[tokio::test]
async fn a_retune_advances_the_partition_only_while_healthy() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let old = h.api.template_hash();
    h.api.report(&alive(3, &old));

    // A live setting: new ConfigMap, same pods.
    h.set_spec(|spec| spec.tuning.log_level = "debug".into());
    h.reconcile().await.unwrap();
    assert_eq!(h.api.template_hash(), old);
    assert_eq!(h.api.statefulset_replicas_and_partition(), (3, 0));
    assert!(h.api.get(CONFIG).unwrap()["data"]["live.toml"].as_str().unwrap().contains("\"debug\""));

    // A restart-requiring one: the highest ordinal goes first.
    h.set_spec(|spec| spec.tuning.raft.heartbeat_interval_ms = 50);
    h.reconcile().await.unwrap();
    let new = h.api.template_hash();
    assert_ne!(new, old);
    assert_eq!(h.api.statefulset_replicas_and_partition(), (3, 2));
    assert_eq!(h.api.condition("Progressing").1, "RollingUpdate");

    // demo-2 restarting: the rollout holds, and says why.
    let mut members = alive(3, &old);
    members[2] = member(2, MemberState::Joining, &new);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 2);
    let waiting = h.api.get(CST).unwrap()["status"]["rollout"]["waitingFor"].as_str().unwrap().to_string();
    assert!(waiting.contains("demo-2"), "{waiting}");

    // demo-2 is back but demo-0 is unhealthy: still holding.
    members[2] = member(2, MemberState::Alive, &new);
    members[0] = member(0, MemberState::Suspect, &old);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 2);

    // Healthy: demo-1 next, then demo-0, then done.
    members[0] = member(0, MemberState::Alive, &old);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 1);
    members[1] = member(1, MemberState::Alive, &new);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 0);
    h.api.report(&alive(3, &new));
    h.reconcile().await.unwrap();
    assert!(h.api.get(CST).unwrap()["status"]["rollout"].is_null());
    assert_eq!(h.api.condition("Progressing").1, "Idle");
    assert!(h.api.event_reasons().contains(&"RolloutComplete".to_string()));
    // Each step is its own event naming its pod, not a count under the first one's message.
    let events = h.api.0.lock().unwrap().events.clone();
    let restarted: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "RollingUpdate")
        .filter_map(|e| e["related"]["name"].as_str())
        .collect();
    assert_eq!(restarted, ["demo-2", "demo-1", "demo-0"]);
}

#[tokio::test]
async fn paused_constellations_are_left_alone() {
    let h = Harness::created(ConstellationSpec::default()).await;
    h.set_spec(|spec| {
        spec.paused = true;
        spec.replicas = 5;
    });
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 3);
    assert_eq!(h.api.get(CST).unwrap()["status"]["phase"], "Paused");
}

#[tokio::test]
async fn api_errors_are_retried_with_growing_backoff() {
    let h = Harness::created(ConstellationSpec::default()).await;
    h.set_spec(|spec| spec.replicas = 4);
    h.api.fail_next("PATCH", "/statefulsets/demo", 500);
    h.api.fail_next("PATCH", "/statefulsets/demo", 409);
    let cst = h.api.constellation();

    let first = h.reconcile().await.unwrap_err();
    assert_eq!(first.kind(), "server");
    assert_eq!(error_policy(cst.clone(), &first, h.ctx.clone()), Action::requeue(Duration::from_secs(2)));
    let second = h.reconcile().await.unwrap_err();
    assert_eq!(second.kind(), "conflict");
    assert_eq!(error_policy(cst.clone(), &second, h.ctx.clone()), Action::requeue(Duration::from_secs(4)));
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 3);

    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().0, 4);
    // Success resets the backoff.
    assert_eq!(error_policy(cst, &first, h.ctx.clone()), Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_ca_created_by_another_replica_meanwhile_is_used() {
    let h = Harness::new(ConstellationSpec::default());
    h.reconcile().await.unwrap();
    // The other replica's CA lands between our look and our create.
    let names = Names::of(&h.api.constellation());
    let theirs = crate::tls::Ca::generate(&names, time::OffsetDateTime::now_utc()).unwrap();
    let mut secret = serde_json::to_value(theirs.secret(&h.api.constellation(), &names)).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    h.api.fail_next_then("GET", "/secrets/demo-ca", 404, (CA_SECRET, secret));
    h.reconcile().await.unwrap();
    assert!(h.api.get(STS).is_some());
    assert_eq!(h.api.get(CA_CONFIG).unwrap()["data"]["ca.crt"], theirs.cert_pem());
}

#[tokio::test]
async fn deletion_cleans_up_and_releases_the_finalizer() {
    let mut spec = ConstellationSpec::default();
    spec.storage.retention.when_deleted = pleiades_crds::RetentionPolicy::Delete;
    let h = Harness::created(spec).await;
    let claim = "/api/v1/namespaces/db/persistentvolumeclaims/data-demo-0";
    h.api.0.lock().unwrap().objects.insert(
        claim.into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-demo-0",
            "labels": {"app.kubernetes.io/name": "pleiades", "app.kubernetes.io/instance": "demo"}}}),
    );
    h.api.update(CST, |cst| cst["metadata"]["deletionTimestamp"] = json!("2026-11-26T00:00:00Z"));
    h.reconcile().await.unwrap();
    assert!(h.api.get(claim).is_none(), "whenDeleted: Delete removes the claims");
    assert_eq!(h.api.get(CST).unwrap()["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn a_namespaced_operator_watches_and_reconciles_only_its_namespaces() {
    let h = Harness::new(ConstellationSpec::default());
    let elsewhere = "/apis/pleiades.io/v1alpha1/namespaces/other/constellations/demo";
    let mut other = crate::desired::tests::constellation(ConstellationSpec::default());
    other.metadata.namespace = Some("other".into());
    other.metadata.uid = Some("0b5c1e7a-2f44-4d8e-8c1a-5d6e7f809a1b".into());
    h.api.0.lock().unwrap().objects.insert(elsewhere.into(), serde_json::to_value(&other).unwrap());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scope = Scope::new(["db"]).unwrap();
    let controller = tokio::spawn(run(h.ctx.clone(), scope, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.api.get(CST).unwrap()["metadata"]["finalizers"] != json!([FINALIZER]) {
        assert!(tokio::time::Instant::now() < deadline, "db/demo was never reconciled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    controller.await.unwrap();

    assert!(h.api.get(elsewhere).unwrap()["metadata"]["finalizers"].is_null(), "other/demo is not watched");
    let requests = h.api.0.lock().unwrap().requests.clone();
    for kind in ["/apis/pleiades.io/v1alpha1/namespaces/db/constellations", "/apis/apps/v1/namespaces/db/statefulsets"]
    {
        assert!(requests.contains(&format!("GET {kind}")), "{kind} is listed and watched: {requests:?}");
    }
    assert!(requests.contains(&"GET /api/v1/namespaces/db/configmaps".to_string()), "{requests:?}");
    let outside: Vec<_> = requests.iter().filter(|r| !r.contains("/namespaces/db/")).collect();
    assert!(outside.is_empty(), "requests outside the watched namespace: {outside:?}");
}

#[tokio::test]
async fn turning_the_network_policy_off_removes_ours_but_not_someone_elses() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let ingress = h.api.get(NETPOL).unwrap()["spec"]["ingress"].clone();
    assert_eq!(ingress.as_array().unwrap().len(), 4, "peers, clients, scrapers and the operator");
    assert_eq!(
        ingress[3]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "pleiades-system"
    );
    h.set_spec(|spec| spec.network_policy.enabled = false);
    h.reconcile().await.unwrap();
    assert!(h.api.get(NETPOL).is_none(), "enabled: false removes the policy");
    assert!(h.api.event_reasons().contains(&"RemovedNetworkPolicy".to_string()));
    h.reconcile().await.unwrap();

    // A policy of the same name that the constellation does not own is left alone.
    let foreign = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "demo", "namespace": "db", "uid": "f0f0f0f0-0000-4000-8000-000000000000"},
        "spec": {"podSelector": {}}});
    h.api.0.lock().unwrap().objects.insert(NETPOL.into(), foreign.clone());
    h.reconcile().await.unwrap();
    assert_eq!(h.api.get(NETPOL), Some(foreign));
}

/// A member entry carrying a CSR, as the pod writes it.
fn asking(ordinal: i32, csr: &str) -> MemberStatus {
    MemberStatus { csr: Some(csr.into()), ..member(ordinal, MemberState::Joining, "") }
}

fn exact_csr(ordinal: i32) -> String {
    let names = Names { constellation: "demo".into(), namespace: "db".into() };
    let subject = crate::tls::node_subject(&names, &format!("demo-{ordinal}"), 3, &[]).unwrap();
    crate::tls::tests::csr(subject.dns_names, &subject.uri).0
}

impl FakeApi {
    fn certificate(&self, ordinal: usize) -> Option<String> {
        let cst = self.get(CST).unwrap();
        cst["status"]["members"][ordinal]["certificate"].as_str().map(str::to_string)
    }
}

#[tokio::test]
async fn a_members_csr_gets_a_certificate_naming_its_node_id_not_what_it_asked_for() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let (csr, _key) = crate::tls::tests::csr(vec!["evil.example".into()], "pleiades://demo.db/node/1");
    h.api.report(&[asking(0, &exact_csr(0)), asking(1, &csr)]);
    h.reconcile().await.unwrap();

    let cert = h.api.certificate(1).expect("demo-1 got a certificate");
    let info = crate::tls::inspect_certificate(&cert).unwrap();
    assert_eq!(info.uris, ["pleiades://demo.db/node/2"], "the ordinal decides, not the CSR");
    assert_eq!(info.public_key, crate::tls::parse_csr(&csr).unwrap().public_key);
    assert!(!cert.contains("evil"));
    assert!(h.api.certificate(0).is_some());
    let entry = h.api.get(CST).unwrap()["status"]["members"][1].clone();
    assert_eq!(
        (entry["nodeId"].as_i64(), entry["csr"].as_str()),
        (Some(2), Some(csr.as_str())),
        "the pod's fields stay"
    );
    assert_eq!(h.api.condition("CertificatesReady").0, "True");
    assert!(h.api.event_reasons().contains(&"IssuedCertificate".to_string()));

    // Nothing new asked: nothing reissued.
    h.reconcile().await.unwrap();
    assert_eq!(h.api.certificate(1), Some(cert));

    // The admin client certificate is the user's, from the same CA.
    let admin = h.api.get(ADMIN_SECRET).unwrap();
    let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> =
        serde_json::from_value(admin["data"].clone()).unwrap();
    let admin_cert = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
    assert_eq!(crate::tls::inspect_certificate(&admin_cert).unwrap().uris, ["pleiades://demo.db/user/admin"]);
    assert_eq!(data["ca.crt"].0, h.api.get(CA_CONFIG).unwrap()["data"]["ca.crt"].as_str().unwrap().as_bytes());
}

#[tokio::test]
async fn a_csr_with_a_bad_signature_gets_no_certificate() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let csr = exact_csr(0);
    let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
    let body = lines.len() - 2;
    let flip = lines[body].trim_end_matches('=').len() - 2;
    let replacement = if &lines[body][flip..=flip] == "A" { "B" } else { "A" };
    lines[body].replace_range(flip..=flip, replacement);
    h.api.report(&[asking(0, &lines.join("\n")), asking(1, &exact_csr(1))]);
    h.reconcile().await.unwrap();

    assert!(h.api.certificate(0).is_none());
    assert!(h.api.certificate(1).is_some(), "one bad request does not hold up the others");
    let (status, reason, message) = h.api.condition("CertificatesReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CSRRefused"));
    assert!(message.contains("demo-0") && message.contains("not a valid signed CSR"), "{message}");
    let events = h.api.0.lock().unwrap().events.clone();
    assert!(events.iter().any(|e| e["reason"] == "CertificateRefused" && e["type"] == "Warning"));
}

#[tokio::test]
async fn a_renewal_csr_replaces_a_certificate_past_two_thirds() {
    let h = Harness::created(ConstellationSpec::default()).await;
    // demo-0 holds a certificate issued 70 days into a 90-day lifetime ago.
    let names = Names { constellation: "demo".into(), namespace: "db".into() };
    let ca = crate::tls::Ca::from_secret(&serde_json::from_value(h.api.get(CA_SECRET).unwrap()).unwrap(), "demo-ca")
        .unwrap();
    let old_csr = exact_csr(0);
    let subject = crate::tls::node_subject(&names, "demo-0", 3, &[]).unwrap();
    let issued_at = time::OffsetDateTime::now_utc() - time::Duration::days(70);
    let old = ca
        .issue_node(&subject, &crate::tls::parse_csr(&old_csr).unwrap(), time::Duration::days(90), issued_at)
        .unwrap();
    assert!(crate::tls::renewal_due(&crate::tls::inspect_certificate(&old).unwrap(), time::OffsetDateTime::now_utc()));
    h.api.report(&[MemberStatus { certificate: Some(old.clone()), ..asking(0, &old_csr) }]);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.certificate(0), Some(old.clone()), "the node renews; the operator answers what it asks");

    // The node's new key and CSR: a new certificate for that key.
    let new_csr = exact_csr(0);
    h.api.update(CST, |cst| cst["status"]["members"][0]["csr"] = json!(new_csr));
    h.reconcile().await.unwrap();
    let new = h.api.certificate(0).unwrap();
    assert_ne!(new, old);
    let info = crate::tls::inspect_certificate(&new).unwrap();
    assert_eq!(info.public_key, crate::tls::parse_csr(&new_csr).unwrap().public_key);
    assert!(!crate::tls::renewal_due(&info, time::OffsetDateTime::now_utc()));
}

fn with_cert_manager() -> ConstellationSpec {
    let mut spec = ConstellationSpec::default();
    spec.tls.cert_manager = Some(pleiades_crds::CertManagerSpec {
        issuer_ref: pleiades_crds::IssuerRef {
            name: "ca".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        },
    });
    spec
}

#[tokio::test]
async fn cert_manager_signs_through_a_certificate_request_and_the_result_is_copied() {
    let h = Harness::new(with_cert_manager());
    h.api.0.lock().unwrap().cert_manager_installed = true;
    h.reconcile().await.unwrap();
    h.reconcile().await.unwrap();
    assert!(h.api.get(CA_SECRET).is_none(), "cert-manager's issuer signs; the operator keeps no CA");
    let admin = h.api.get("/apis/cert-manager.io/v1/namespaces/db/certificates/demo-admin-tls").unwrap();
    assert_eq!(admin["spec"]["uris"], json!(["pleiades://demo.db/user/admin"]));
    assert_eq!(admin["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(admin["spec"]["renewBefore"], "720h");

    let csr = exact_csr(0);
    let (wrong, _) = crate::tls::tests::csr(vec!["demo".into()], "pleiades://demo.db/node/1");
    h.api.report(&[asking(0, &csr), asking(1, &wrong)]);
    h.reconcile().await.unwrap();
    let name = crate::tls::certificate_request_name("demo-0", &csr);
    let path = format!("{REQUESTS}/{name}");
    let request = h.api.get(&path).expect("a CertificateRequest for demo-0");
    let sent: k8s_openapi::ByteString = serde_json::from_value(request["spec"]["request"].clone()).unwrap();
    assert_eq!(sent.0, csr.as_bytes());
    assert_eq!(request["spec"]["duration"], "2160h");
    assert_eq!(request["metadata"]["labels"]["pleiades.io/member"], "demo-0");
    assert!(
        h.api.get(&format!("{REQUESTS}/{}", crate::tls::certificate_request_name("demo-1", &wrong))).is_none(),
        "cert-manager would sign the CSR as given: one asking for the wrong names is refused"
    );
    let (_, reason, message) = h.api.condition("CertificatesReady");
    assert_eq!(reason, "CSRRefused");
    assert!(message.contains("demo-1") && message.contains("URIs"), "{message}");

    // cert-manager's CA issuer answers; the operator copies the result and publishes the CA.
    let names = Names { constellation: "demo".into(), namespace: "db".into() };
    let issuer = crate::tls::Ca::generate(&names, time::OffsetDateTime::now_utc()).unwrap();
    let subject = crate::tls::node_subject(&names, "demo-0", 3, &[]).unwrap();
    let cert = issuer
        .issue_node(
            &subject,
            &crate::tls::parse_csr(&csr).unwrap(),
            time::Duration::days(90),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let base64 = |text: &str| serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap();
    h.api.update(&path, |request| {
        request["status"] = json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued"}],
            "certificate": base64(&cert),
            "ca": base64(issuer.cert_pem()),
        })
    });
    h.api.report(&[asking(0, &csr)]);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.certificate(0), Some(cert));
    assert_eq!(h.api.get(CA_CONFIG).unwrap()["data"]["ca.crt"], issuer.cert_pem());
    assert!(h.api.get(&path).is_none(), "a request that served is removed");
    assert_eq!(h.api.condition("CertificatesReady").0, "True");
}

#[tokio::test]
async fn a_failed_certificate_request_is_reported_and_retried() {
    let h = Harness::created(with_cert_manager()).await;
    h.api.0.lock().unwrap().cert_manager_installed = true;
    let csr = exact_csr(0);
    h.api.report(&[asking(0, &csr)]);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.condition("CertificatesReady").1, "Issuing");
    let path = format!("{REQUESTS}/{}", crate::tls::certificate_request_name("demo-0", &csr));
    h.api.update(&path, |request| {
        request["status"] = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Failed",
            "message": "issuer ca not found"}]})
    });
    h.reconcile().await.unwrap();
    let (_, reason, message) = h.api.condition("CertificatesReady");
    assert_eq!(reason, "IssuerFailed");
    assert!(message.contains("issuer ca not found"), "{message}");
    assert!(h.api.certificate(0).is_none());
    h.reconcile().await.unwrap();
    assert!(h.api.get(&path).unwrap()["status"].is_null(), "a fresh request replaces the failed one");
}

#[tokio::test]
async fn without_cert_manager_in_the_cluster_the_condition_says_so() {
    let h = Harness::created(with_cert_manager()).await;
    h.api.report(&[asking(0, &exact_csr(0))]);
    h.reconcile().await.unwrap();
    let (status, reason, message) = h.api.condition("CertificatesReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CertManagerMissing"));
    assert!(message.contains("cert-manager"), "{message}");
    assert!(h.api.certificate(0).is_none());
    assert!(h.api.get(STS).is_some(), "the rest of the constellation is still reconciled");
}

#[tokio::test]
async fn the_operator_applies_its_own_crd_at_start_but_never_takes_a_newer_version_away() {
    use crate::crd::{apply_crd, CrdOutcome};
    const CRD: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/constellations.pleiades.io";
    let api = FakeApi::default();
    // What Helm installed long ago: an old schema, no status subresource fields we need.
    api.0.lock().unwrap().objects.insert(
        CRD.into(),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "constellations.pleiades.io"},
               "spec": {"group": "pleiades.io", "scope": "Namespaced",
                        "names": {"kind": "Constellation", "plural": "constellations"},
                        "versions": [{"name": "v1alpha1", "served": true, "storage": true}]}}),
    );
    let outcome = apply_crd(api.client()).await.unwrap();
    assert_eq!(outcome, CrdOutcome::Applied { name: "constellations.pleiades.io".into() });
    let applied = api.get(CRD).unwrap();
    let ours = serde_json::to_value(<pleiades_crds::Constellation as kube::CustomResourceExt>::crd()).unwrap();
    assert_eq!(applied["spec"]["versions"], ours["spec"]["versions"], "the schema this operator was built with");
    assert!(api.0.lock().unwrap().requests.iter().any(|r| r == &format!("PATCH {CRD}")));

    // A newer operator's CRD serves a version this one does not know: left alone.
    api.update(CRD, |crd| {
        crd["spec"]["versions"].as_array_mut().unwrap().push(json!({"name": "v2", "served": true, "storage": false}))
    });
    let before = api.get(CRD).unwrap();
    let outcome = apply_crd(api.client()).await.unwrap();
    assert_eq!(outcome, CrdOutcome::Newer { name: "constellations.pleiades.io".into(), versions: vec!["v2".into()] });
    assert_eq!(api.get(CRD).unwrap(), before);
}

#[tokio::test]
async fn an_image_change_rolls_through_the_same_gates_and_stops_on_a_failed_one() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let old = h.api.template_hash();
    h.api.report(&alive(3, &old));
    h.set_spec(|spec| spec.image.tag = "0.1.1".into());
    h.reconcile().await.unwrap();
    let new = h.api.template_hash();
    assert_ne!(new, old, "the image is part of the configuration hash");
    let set = h.api.get(STS).unwrap();
    assert!(set["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().ends_with(":0.1.1"));
    assert_eq!(h.api.statefulset_replicas_and_partition(), (3, 2), "demo-2 first, the others held");

    // demo-2 came back on the new image, but demo-0 is suspect: the gate holds the rollout.
    let mut members = alive(3, &old);
    members[2] = member(2, MemberState::Alive, &new);
    members[0] = member(0, MemberState::Suspect, &old);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 2);
    let waiting = h.api.get(CST).unwrap()["status"]["rollout"]["waitingFor"].as_str().unwrap().to_string();
    assert!(waiting.contains("demo-0"), "{waiting}");
    // Healthy again: the next pod goes.
    members[0] = member(0, MemberState::Alive, &old);
    h.api.report(&members);
    h.reconcile().await.unwrap();
    assert_eq!(h.api.statefulset_replicas_and_partition().1, 1);
}

#[tokio::test]
async fn a_lost_nodes_pod_is_replaced_only_after_its_replicas_were_rebuilt() {
    const POD: &str = "/api/v1/namespaces/db/pods/demo-2";
    const CLAIM: &str = "/api/v1/namespaces/db/persistentvolumeclaims/data-demo-2";
    let h = Harness::created(ConstellationSpec::default()).await;
    let hash = h.api.template_hash();
    let mut members = alive(3, &hash);
    for member in &mut members {
        // Where the test's member endpoint answers.
        member.address = "127.0.0.1:7400".into();
    }
    members[2].last_report = (Timestamp::now() - SignedDuration::from_secs(900)).to_string();
    h.api.report(&members);
    let labels = json!({"app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "pleiades"});
    for ordinal in 0..3 {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("demo-{ordinal}"), "namespace": "db", "labels": labels},
            "status": {"phase": "Running"}});
        if ordinal == 2 {
            // Evicted from its unreachable node ten minutes ago; its kubelet never confirmed.
            pod["metadata"]["deletionTimestamp"] =
                json!((Timestamp::now() - SignedDuration::from_secs(600)).to_string());
        }
        h.api.0.lock().unwrap().objects.insert(format!("/api/v1/namespaces/db/pods/demo-{ordinal}"), pod);
    }
    h.api.0.lock().unwrap().objects.insert(CLAIM.into(), json!({"metadata": {"name": "data-demo-2"}}));

    // A member still names node 3 in range 2: the pod stays.
    *h.member_answer.lock().unwrap() = r#"{"node_id":3,"ranges":[2]}"#.into();
    h.reconcile().await.unwrap();
    assert!(h.api.get(POD).is_some() && h.api.get(CLAIM).is_some());
    let degraded = h.api.condition("Degraded").2;
    assert!(degraded.contains("demo-2's node is lost") && degraded.contains("[2]"), "{degraded}");
    assert!(h.api.event_reasons().contains(&"NodeLost".to_string()));

    // Rebuilt elsewhere: the pod and its claim go, so the StatefulSet starts demo-2 afresh.
    *h.member_answer.lock().unwrap() = r#"{"node_id":3,"ranges":[]}"#.into();
    h.reconcile().await.unwrap();
    assert!(h.api.get(POD).is_none() && h.api.get(CLAIM).is_none());
    assert!(h.api.get("/api/v1/namespaces/db/pods/demo-1").is_some(), "healthy pods stay");
    assert!(h.api.event_reasons().contains(&"FailedOver".to_string()));
}

#[tokio::test]
async fn pods_carry_the_zone_and_region_of_their_kubernetes_nodes() {
    let h = Harness::created(ConstellationSpec::default()).await;
    let labels = json!({"app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "pleiades"});
    let pod_path = |ordinal: i32| format!("/api/v1/namespaces/db/pods/demo-{ordinal}");
    for (ordinal, node) in [(0, Some("k8s-a")), (1, Some("k8s-b")), (2, None), (3, Some("k8s-gone"))] {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("demo-{ordinal}"), "namespace": "db", "labels": labels,
                "annotations": {"prometheus.io/scrape": "true"}},
            "status": {"phase": "Running"}});
        if let Some(node) = node {
            pod["spec"] = json!({"nodeName": node, "containers": []});
        }
        h.api.0.lock().unwrap().objects.insert(pod_path(ordinal), pod);
    }
    let node = |name: &str, labels: Value| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    let zone = crate::topology::ZONE_LABEL;
    let region = crate::topology::REGION_LABEL;
    h.api.0.lock().unwrap().objects.insert(
        "/api/v1/nodes/k8s-a".into(),
        node("k8s-a", json!({zone: "eu-west-1a", region: "eu-west-1", "kubernetes.io/hostname": "k8s-a"})),
    );
    h.api.0.lock().unwrap().objects.insert("/api/v1/nodes/k8s-b".into(), node("k8s-b", json!({zone: "eu-west-1b"})));
    h.reconcile().await.unwrap();
    let annotations = |ordinal: i32| h.api.get(&pod_path(ordinal)).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(
        annotations(0),
        json!({"prometheus.io/scrape": "true", "pleiades.io/zone": "eu-west-1a", "pleiades.io/region": "eu-west-1"})
    );
    assert_eq!(annotations(1), json!({"prometheus.io/scrape": "true", "pleiades.io/zone": "eu-west-1b"}));
    assert_eq!(annotations(2), json!({"prometheus.io/scrape": "true"}), "not scheduled yet: nothing to copy");
    assert_eq!(annotations(3), json!({"prometheus.io/scrape": "true"}), "its node cannot be read: left alone");

    // A node relabelled: its pods follow on the next pass, and nothing is patched needlessly.
    h.api.update("/api/v1/nodes/k8s-b", |node| node["metadata"]["labels"][zone] = json!("eu-west-1c"));
    h.reconcile().await.unwrap();
    assert_eq!(annotations(1)["pleiades.io/zone"], "eu-west-1c");
    let patches = |h: &Harness| {
        h.api.0.lock().unwrap().requests.iter().filter(|r| r.starts_with("PATCH /api/v1/namespaces/db/pods/")).count()
    };
    let before = patches(&h);
    h.reconcile().await.unwrap();
    assert_eq!(patches(&h), before, "pods already labelled are not patched again");
}
