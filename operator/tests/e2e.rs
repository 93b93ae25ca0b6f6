//! End to end on a real cluster: install the operator chart, create a constellation from the
//! constellation chart, see it Available, scale 3 → 5 → 3 → 5 → 3 (no node id reused), lose a
//! founder's volume (it rejoins under a new id), re-tune with a writer running (no failed write)
//! until every member runs the new configuration, delete.
//!
//! Ignored by default; run it with `cargo test -p pleiades-operator --test e2e -- --ignored` and
//! `KUBECONFIG` naming a cluster (kind, k3d, a cloud cluster with an arm64 pool); without one it
//! says so and passes. An operator already installed in the cluster (as the README installs it)
//! is used as it is; otherwise the test installs the chart and removes it after. Everything the
//! test creates goes with its namespace, also when a step fails. Images come from
//! `PLEIADES_OPERATOR_IMAGE`, `PLEIADES_NODE_IMAGE_NEXT` (an image-change step, skipped without it) and
//! `PLEIADES_NODE_IMAGE` (`repository:tag`), defaulting to the released ones; the constellation
//! uses the dev example (any architecture, no RT kernel) so it schedules on any cluster.

mod support;
use support::manifest_dir;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::Client;
use kube::ResourceExt;
use pleiades_crds::{Constellation, MemberState};

const NAMESPACE: &str = "pleiades-e2e";
const TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    Path::new(&manifest_dir()).join("..")
}

fn helm() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "helm".into())
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn image(var: &str) -> Option<(String, String)> {
    let value = std::env::var(var).ok()?;
    let (repository, tag) = value.rsplit_once(':')?;
    Some((repository.to_string(), tag.to_string()))
}

/// Polls the Constellation until `done` holds, failing with its last status after `TIMEOUT`.
async fn wait_for(api: &Api<Constellation>, what: &str, done: impl Fn(&Constellation) -> bool) -> Constellation {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let cst = api.get("demo").await.expect("read the Constellation");
        if done(&cst) {
            return cst;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {:#?}", cst.status);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn available(cst: &Constellation) -> bool {
    cst.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True")
            && s.observed_generation == cst.metadata.generation
    })
}

/// The configuration hash in the StatefulSet's pod template.
async fn template_hash(sets: &Api<StatefulSet>) -> Option<String> {
    let set = sets.get("demo").await.expect("read the StatefulSet");
    set.spec.and_then(|s| s.template.metadata).and_then(|m| m.annotations)?.get("pleiades.io/config-hash").cloned()
}

/// Applies `change` and waits until the rollout it starts is over: the StatefulSet carries a new
/// template and every member reports its hash (an empty `status.rollout` alone proves nothing).
async fn roll_out(api: &Api<Constellation>, sets: &Api<StatefulSet>, change: serde_json::Value, what: &str) {
    let before = template_hash(sets).await;
    api.patch("demo", &PatchParams::default(), &Patch::Merge(change)).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let new_hash = loop {
        match template_hash(sets).await {
            Some(hash) if Some(&hash) != before.as_ref() => break hash,
            _ => assert!(Instant::now() < deadline, "the StatefulSet never got {what}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    wait_for(api, &format!("every member to report {what}"), |c| {
        available(c)
            && c.status.as_ref().is_some_and(|s| {
                s.rollout.is_none() && s.members.len() == 3 && s.members.iter().all(|m| m.config_hash == new_hash)
            })
    })
    .await;
}

/// A Job that writes for three minutes through the client Service as the admin user, with the
/// node image's own benchmark, and prints its report as JSON.
fn writer_job(image: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "writer"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "tls", "secret": {"secretName": "demo-admin-tls"}}],
                "containers": [{
                    "name": "writer",
                    "image": image,
                    "volumeMounts": [{"name": "tls", "mountPath": "/tls"}],
                    "args": ["bench", "--workload", "write", "--concurrency", "16", "--keys", "1000",
                             "--duration", "180", "--json", "--addr", format!("demo.{NAMESPACE}.svc:7400"),
                             "--ca-cert", "/tls/ca.crt", "--cert", "/tls/tls.crt", "--key", "/tls/tls.key"],
                }],
            }},
        },
    }))
    .expect("a valid Job")
}

/// Removes what the test installed when it ends, failed or not.
struct Cleanup {
    helm: String,
    operator_installed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |program: &str, args: &[&str]| {
            let _ = Command::new(program).args(args).output();
        };
        quiet(&self.helm, &["uninstall", "demo", "--namespace", NAMESPACE, "--wait", "--timeout", "3m"]);
        if self.operator_installed {
            quiet(&self.helm, &["uninstall", "pleiades-operator", "--namespace", NAMESPACE, "--wait"]);
        }
        // Claims kept by `whenScaled: Retain` and anything a failed step left go with it.
        quiet("kubectl", &["delete", "namespace", NAMESPACE, "--wait=false"]);
    }
}

/// Whether an operator is already running somewhere in the cluster.
/// Every pod whose Kubernetes node has a zone label carries it (the operator copies it).
async fn pods_carry_their_nodes_zones(client: &Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut missing = Vec::new();
        let selector = "app.kubernetes.io/instance=demo";
        for pod in pods.list(&ListParams::default().labels(selector)).await.unwrap() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            let zone = nodes.get(&node).await.unwrap().labels().get("topology.kubernetes.io/zone").cloned();
            if zone.is_some() && pod.annotations().get("pleiades.io/zone") != zone.as_ref() {
                missing.push(pod.name_any());
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "pods without their node's zone: {missing:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn operator_running(client: &Client) -> bool {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let params = ListParams::default().labels("app.kubernetes.io/name=pleiades-operator");
    deployments
        .list(&params)
        .await
        .is_ok_and(|list| list.items.iter().any(|d| d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) > 0))
}

fn alive_members(cst: &Constellation) -> usize {
    cst.status
        .as_ref()
        .map(|s| s.members.iter().filter(|m| m.state == MemberState::Alive && m.ready).count())
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: KUBECONFIG=... cargo test -p pleiades-operator --test e2e -- --ignored"]
async fn install_create_scale_retune_delete() {
    if std::env::var_os("KUBECONFIG").is_none() {
        // Straight to stderr, past the test harness's capture, so the skip is visible in CI logs.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED install_create_scale_retune_delete: KUBECONFIG is not set (point it at a cluster to run it)"
        );
        return;
    }
    let client = Client::try_default().await.expect("connect to the cluster named by KUBECONFIG");
    let helm = helm();
    let mut operator_args = vec![
        "upgrade",
        "--install",
        "pleiades-operator",
        "charts/pleiades-operator",
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ];
    let operator_image = image("PLEIADES_OPERATOR_IMAGE");
    let operator_sets: Vec<String> = operator_image
        .iter()
        .flat_map(|(repository, tag)| [format!("image.repository={repository}"), format!("image.tag={tag}")])
        .collect();
    for set in &operator_sets {
        operator_args.extend(["--set", set.as_str()]);
    }
    std::env::set_current_dir(repo()).unwrap();
    let operator_installed = !operator_running(&client).await;
    let _cleanup = Cleanup { helm: helm.clone(), operator_installed };
    if operator_installed {
        run(&helm, &operator_args);
    } else {
        run("kubectl", &["create", "namespace", NAMESPACE]);
    }

    let mut constellation_args = vec![
        "upgrade",
        "--install",
        "demo",
        "charts/constellation",
        "--namespace",
        NAMESPACE,
        "-f",
        "charts/constellation/examples/dev.yaml",
        // Claims outlive a scale-down, so scaling back up meets them (and must not reuse them).
        "--set",
        "storage.retention.whenScaled=Retain",
    ];
    let node_image = image("PLEIADES_NODE_IMAGE")
        .map(|(repository, tag)| format!("{repository}:{tag}"))
        .unwrap_or_else(|| "ghcr.io/pleiades-db/pleiades:0.1.0".into());
    let node_sets: Vec<String> = image("PLEIADES_NODE_IMAGE")
        .iter()
        .flat_map(|(repository, tag)| [format!("image.repository={repository}"), format!("image.tag={tag}")])
        .collect();
    for set in &node_sets {
        constellation_args.extend(["--set", set.as_str()]);
    }
    run(&helm, &constellation_args);
    let api_client = client.clone();
    let api: Api<Constellation> = Api::namespaced(client.clone(), NAMESPACE);
    let sets: Api<StatefulSet> = Api::namespaced(client, NAMESPACE);
    let cst = wait_for(&api, "Available with 3 alive members", |c| available(c) && alive_members(c) == 3).await;
    assert_eq!(cst.status.unwrap().ranges.unwrap().unavailable, 0);
    pods_carry_their_nodes_zones(&api_client).await;

    let scale = |replicas: i32| serde_json::json!({"spec": {"replicas": replicas}});
    let params = PatchParams::default();
    api.patch("demo", &params, &Patch::Merge(scale(5))).await.unwrap();
    wait_for(&api, "5 alive members", |c| available(c) && alive_members(c) == 5).await;

    api.patch("demo", &params, &Patch::Merge(scale(3))).await.unwrap();
    let cst = wait_for(&api, "scale-down to 3", |c| {
        available(c)
            && c.status.as_ref().is_some_and(|s| s.replicas == 3 && s.members.len() == 3 && s.decommission.is_empty())
    })
    .await;
    assert_eq!(alive_members(&cst), 3);
    let retired = cst.status.as_ref().map(|s| s.retired_node_ids.clone()).unwrap_or_default();
    assert_eq!(retired, [4, 5], "the removed members' node ids are retired");

    // Back to 5: the new demo-3 and demo-4 are new members, never the retired nodes 4 and 5.
    api.patch("demo", &params, &Patch::Merge(scale(5))).await.unwrap();
    let cst = wait_for(&api, "5 alive members again", |c| available(c) && alive_members(c) == 5).await;
    let ids: Vec<i64> = cst.status.as_ref().map(|s| s.members.iter().map(|m| m.node_id).collect()).unwrap_or_default();
    assert!(ids.iter().all(|id| !retired.contains(id)), "a retired node id came back: {ids:?}");
    api.patch("demo", &params, &Patch::Merge(scale(3))).await.unwrap();
    wait_for(&api, "scale-down to 3 again", |c| {
        available(c)
            && c.status.as_ref().is_some_and(|s| s.replicas == 3 && s.members.len() == 3 && s.decommission.is_empty())
    })
    .await;

    // A founder loses its volume: its pod comes back on an empty one, reports VolumeLost, node 1
    // is retired, and demo-0 joins as node 10 001 instead of founding a second constellation.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(api_client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(api_client.clone(), NAMESPACE);
    claims.delete("data-demo-0", &DeleteParams::default()).await.expect("delete demo-0's claim");
    pods.delete("demo-0", &DeleteParams::default()).await.expect("delete demo-0");
    let cst = wait_for(&api, "demo-0 to rejoin under a new node id", |c| {
        available(c)
            && alive_members(c) == 3
            && c.status.as_ref().is_some_and(|s| {
                s.retired_node_ids.contains(&1) && s.members.iter().any(|m| m.pod == "demo-0" && m.node_id == 10_001)
            })
    })
    .await;
    assert_eq!(cst.status.unwrap().ranges.unwrap().unavailable, 0);

    // A restart-requiring re-tune with a writer running: it must see no failed write.
    let jobs: Api<Job> = Api::namespaced(api_client.clone(), NAMESPACE);
    jobs.create(&PostParams::default(), &writer_job(&node_image)).await.expect("start the writer");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let retune = serde_json::json!({"spec": {"tuning": {"raft": {"heartbeatIntervalMs": 80}}}});
    roll_out(&api, &sets, retune, "the re-tuned configuration").await;

    // An image change, when a second image is given: the same gates, and every member reports
    // the new hash.
    if let Some((repository, tag)) = image("PLEIADES_NODE_IMAGE_NEXT") {
        let change = serde_json::json!({"spec": {"image": {"repository": repository, "tag": tag}}});
        roll_out(&api, &sets, change, "the new image").await;
    } else {
        eprintln!("image change step skipped: set PLEIADES_NODE_IMAGE_NEXT to a second node image to run it");
    }

    let deadline = Instant::now() + TIMEOUT;
    let report = loop {
        let job = jobs.get("writer").await.expect("read the writer Job");
        let status = job.status.unwrap_or_default();
        if status.succeeded.unwrap_or(0) > 0 || status.failed.unwrap_or(0) > 0 {
            let pod = pods
                .list(&ListParams::default().labels("job-name=writer"))
                .await
                .expect("list the writer's pod")
                .items
                .into_iter()
                .next()
                .expect("the writer's pod");
            break pods.logs(&pod.name_any(), &LogParams::default()).await.expect("the writer's output");
        }
        assert!(Instant::now() < deadline, "the writer never finished");
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let report: serde_json::Value = report
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report from the writer:\n{report}"));
    assert_eq!(report["errors"], 0, "writes failed during the rolling restart: {report}");
    assert!(report["writes"]["count"].as_u64().unwrap_or(0) > 0, "{report}");

    run(&helm, &["uninstall", "demo", "--namespace", NAMESPACE, "--wait"]);
    let deadline = Instant::now() + TIMEOUT;
    while api.get_opt("demo").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the Constellation was not deleted");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
