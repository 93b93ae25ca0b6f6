//! End to end on a real cluster: install the operator chart, create a constellation from the
//! constellation chart, see it Available, scale 3 → 5 → 3, re-tune, delete.
//!
//! Runs only when `KUBECONFIG` names a cluster (kind, k3d, a cloud cluster with an arm64 pool);
//! otherwise it says so and passes. Images come from `PLEIADES_OPERATOR_IMAGE` and
//! `PLEIADES_NODE_IMAGE` (`repository:tag`), defaulting to the released ones; the constellation
//! uses the dev example (any architecture, no RT kernel) so it schedules on any cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use pleiades_crds::{Constellation, MemberState};

const NAMESPACE: &str = "pleiades-e2e";
const TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

fn alive_members(cst: &Constellation) -> usize {
    cst.status
        .as_ref()
        .map(|s| s.members.iter().filter(|m| m.state == MemberState::Alive && m.ready).count())
        .unwrap_or(0)
}

#[tokio::test]
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
    run(&helm, &operator_args);

    let mut constellation_args = vec![
        "upgrade",
        "--install",
        "demo",
        "charts/constellation",
        "--namespace",
        NAMESPACE,
        "-f",
        "charts/constellation/examples/dev.yaml",
    ];
    let node_sets: Vec<String> = image("PLEIADES_NODE_IMAGE")
        .iter()
        .flat_map(|(repository, tag)| [format!("image.repository={repository}"), format!("image.tag={tag}")])
        .collect();
    for set in &node_sets {
        constellation_args.extend(["--set", set.as_str()]);
    }
    run(&helm, &constellation_args);
    let api: Api<Constellation> = Api::namespaced(client, NAMESPACE);
    let cst = wait_for(&api, "Available with 3 alive members", |c| available(c) && alive_members(c) == 3).await;
    assert_eq!(cst.status.unwrap().ranges.unwrap().unavailable, 0);

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

    let retune = serde_json::json!({"spec": {"tuning": {"raft": {"heartbeatIntervalMs": 80}}}});
    api.patch("demo", &params, &Patch::Merge(retune)).await.unwrap();
    wait_for(&api, "the re-tune rollout to finish", |c| {
        available(c)
            && c.status.as_ref().is_some_and(|s| {
                s.rollout.is_none()
                    && s.members.iter().map(|m| &m.config_hash).collect::<std::collections::BTreeSet<_>>().len() == 1
            })
    })
    .await;

    run(&helm, &["uninstall", "demo", "--namespace", NAMESPACE, "--wait"]);
    let deadline = Instant::now() + TIMEOUT;
    while api.get_opt("demo").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the Constellation was not deleted");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    run(&helm, &["uninstall", "pleiades-operator", "--namespace", NAMESPACE, "--wait"]);
}
