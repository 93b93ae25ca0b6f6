//! A node running as pod `demo-0` of Constellation `demo`, reporting to a stand-in Kubernetes
//! API server (plain HTTP on loopback, named by KUBECONFIG): its member entry arrives through
//! server-side apply under its own field manager, carries its ranges, leadership and
//! configuration hash, and a decommission request that cannot be carried out (no other node to
//! take the replicas) is reported in the entry's message instead of being dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use pleiades_tests::TestNode;
use serde_json::{json, Value};

const STATUS: &str = "/apis/pleiades.io/v1alpha1/namespaces/db/constellations/demo/status";

#[derive(Default)]
struct Api {
    constellation: Value,
    applies: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Api>>;

async fn serve(State(api): State<Shared>, method: Method, uri: Uri, body: Bytes) -> (StatusCode, String) {
    if uri.path() != STATUS {
        return (StatusCode::NOT_FOUND, json!({"kind": "Status", "code": 404, "reason": "NotFound"}).to_string());
    }
    let mut api = api.lock().unwrap();
    if method == Method::PATCH {
        let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
        let manager = uri.query().unwrap_or_default().split('&').find_map(|p| p.strip_prefix("fieldManager="));
        api.applies.push((manager.unwrap_or_default().replace("%2F", "/"), patch.clone()));
        // status.members is a list-map keyed by pod: the applied entries replace theirs.
        let members = api.constellation["status"]["members"].as_array().cloned().unwrap_or_default();
        let mut merged: Vec<Value> = members;
        for entry in patch["status"]["members"].as_array().cloned().unwrap_or_default() {
            merged.retain(|m| m["pod"] != entry["pod"]);
            merged.push(entry);
        }
        api.constellation["status"]["members"] = json!(merged);
    }
    (StatusCode::OK, api.constellation.to_string())
}

fn member(api: &Shared) -> Option<Value> {
    api.lock().unwrap().constellation["status"]["members"].as_array().and_then(|m| m.first().cloned())
}

async fn wait_for(api: &Shared, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(member) = member(api).filter(|m| done(m)) {
            return member;
        }
        assert!(Instant::now() < deadline, "never saw {what}; last entry: {:?}", member(api));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reports_its_member_entry_and_the_decommission_it_cannot_do() {
    let api: Shared = Arc::default();
    api.lock().unwrap().constellation = json!({
        "apiVersion": "pleiades.io/v1alpha1", "kind": "Constellation",
        "metadata": {"name": "demo", "namespace": "db"},
        "spec": {"replicas": 1}, "status": {}
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(serve).with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{server}\n\
             users:\n- name: fake\n  user:\n    token: test\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[kubernetes]\nconstellation = \"demo\"\npeer-service = \"demo-peers\"\nclient-service = \"demo\"\nfounders = 1\n",
    )
    .unwrap();
    // The pod's downward-API environment; the node process inherits it.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    std::env::set_var("POD_NAME", "demo-0");
    std::env::set_var("POD_NAMESPACE", "db");
    std::env::set_var("PLEIADES_CONFIG_HASH", "0123abcd");
    let node = TestNode::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]).unwrap();
    assert_eq!(node.node_id, 1, "demo-0 is node 1");

    let entry = wait_for(&api, "an alive member leading every range", |m| {
        m["state"] == "Alive"
            && m["leaders"].as_i64() == m["constellationRanges"].as_i64()
            && m["leaders"].as_i64() > Some(0)
    })
    .await;
    assert_eq!(entry["pod"], "demo-0");
    assert_eq!(entry["nodeId"], 1);
    assert_eq!(entry["ready"], true);
    assert_eq!(entry["configHash"], "0123abcd");
    assert_eq!(entry["unavailableRanges"], 0);
    assert!(entry["address"].as_str().unwrap().starts_with("demo-0.demo-peers.db.svc:"));
    assert!(!entry["lastReport"].as_str().unwrap().is_empty());
    let managers: Vec<String> = api.lock().unwrap().applies.iter().map(|(m, _)| m.clone()).collect();
    assert!(managers.iter().all(|m| m == "pleiades-node/demo-0"), "{managers:?}");

    // The operator asks demo-0 to leave; with no other node, its replicas have nowhere to go.
    api.lock().unwrap().constellation["status"]["decommission"] = json!(["demo-0"]);
    let entry = wait_for(&api, "a decommission that reports why it cannot finish", |m| {
        // Nowhere to go is told apart from a move that failed: the operator reports it blocked.
        m["state"] == "Decommissioning"
            && m["message"].as_str().is_some_and(|s| s.starts_with("decommission blocked: "))
    })
    .await;
    assert!(entry["ranges"].as_i64() > Some(0), "no replica was dropped: {entry}");

    // Withdrawn: the node is a full member again.
    api.lock().unwrap().constellation["status"]["decommission"] = json!([]);
    wait_for(&api, "the member alive again", |m| m["state"] == "Alive" && m["message"].is_null()).await;
}
