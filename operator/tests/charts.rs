//! Both Helm charts, linted and rendered by a real `helm` (v4, from ../shared/tools/get-helm.sh),
//! with default and example values; every rendered manifest validated offline
//! (kubernetes-validate for built-in kinds, the CRD's own schema and CEL rules for Constellations).

mod support;
use support::manifest_dir;

use std::path::{Path, PathBuf};
use std::process::Command;

use pleiades_crds::{Constellation, ConstellationSpec};
use pleiades_operator::desired::desired;

fn repo() -> PathBuf {
    Path::new(&manifest_dir()).join("..")
}

/// `$HELM`, else the one ../shared/tools/get-helm.sh installs (and caches), else `helm` on PATH.
fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        return helm.into();
    }
    let script = repo().join("../shared/tools/get-helm.sh");
    if script.exists() {
        let output = Command::new("bash").arg(&script).output().expect("run get-helm.sh");
        assert!(output.status.success(), "get-helm.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        let dir = String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().trim().to_string();
        return Path::new(&dir).join("helm");
    }
    PathBuf::from("helm")
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Lints and renders `chart` with each values file; returns the rendered files.
fn render(helm: &Path, chart: &str, values: &[Option<&str>], out: &Path) -> Vec<PathBuf> {
    let chart_dir = repo().join("charts").join(chart);
    let mut rendered = Vec::new();
    for (i, values) in values.iter().enumerate() {
        let mut lint = Command::new(helm);
        lint.arg("lint").arg("--strict").arg(&chart_dir);
        let mut template = Command::new(helm);
        template.args(["template", "demo"]).arg(&chart_dir).args(["--namespace", "db", "--include-crds"]);
        if let Some(values) = values {
            lint.arg("-f").arg(chart_dir.join(values));
            template.arg("-f").arg(chart_dir.join(values));
        }
        let (ok, text) = run(&mut lint);
        assert!(ok, "helm lint {chart} {values:?}:\n{text}");
        let output = template.output().unwrap();
        assert!(
            output.status.success(),
            "helm template {chart} {values:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let file = out.join(format!("{chart}-{i}.yaml"));
        std::fs::write(&file, &output.stdout).unwrap();
        rendered.push(file);
    }
    rendered
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    run(Command::new("python3")
        .arg(repo().join("scripts/validate-manifests.py"))
        .arg("--crd")
        .arg(repo().join("crds/constellation.yaml"))
        .args(files))
}

fn constellations(file: &Path) -> Vec<Constellation> {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("\n---")
        .filter(|doc| doc.contains("kind: Constellation"))
        .map(|doc| serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}")))
        .collect()
}

#[test]
fn both_charts_lint_render_and_validate() {
    let helm = helm();
    let out = tempfile::tempdir().unwrap();
    let mut files = render(
        &helm,
        "pleiades-operator",
        &[None, Some("ci/production-values.yaml"), Some("ci/namespaced-values.yaml")],
        out.path(),
    );
    let constellation_files = render(
        &helm,
        "constellation",
        &[None, Some("examples/dev.yaml"), Some("examples/production-rt-arm64.yaml")],
        out.path(),
    );
    files.extend(constellation_files.iter().cloned());

    let operator = std::fs::read_to_string(&files[0]).unwrap();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "ServiceAccount",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(operator.contains(&format!("kind: {kind}\n")), "the operator chart renders no {kind}");
    }
    let production = std::fs::read_to_string(&files[1]).unwrap();
    assert!(production.contains("kind: ServiceMonitor") && production.contains("pleiades-overview"));
    // The admission policy exempts the operator by its rendered service account.
    assert!(operator.contains("system:serviceaccount:db:demo-pleiades-operator'"), "{operator}");

    let (ok, text) = validate(&files);
    assert!(ok, "rendered manifests are invalid:\n{text}");

    // The API server's CEL rules, evaluated here on each rendered Constellation.
    for file in &constellation_files {
        for cst in constellations(file) {
            let spec = serde_json::to_value(&cst.spec).unwrap();
            ConstellationSpec::validate_cel(&spec, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
    let production = constellations(&constellation_files[2]).remove(0);
    assert!(production.spec.realtime.enabled && production.spec.replication_factor == 5);

    // What the operator makes of each rendered Constellation (NetworkPolicy included), checked
    // by the same validator.
    let mut objects = String::new();
    for file in &constellation_files {
        for mut cst in constellations(file) {
            cst.metadata.namespace = Some("db".into());
            cst.metadata.uid = Some("6f1c3a52-0d4e-4c3b-9a41-2f5e8b7d9c10".into());
            let desired = serde_json::to_value(desired(&cst)).unwrap();
            for object in desired.as_object().unwrap().values().filter(|o| !o.is_null()) {
                objects.push_str(&format!("---\n{}", serde_saphyr::to_string(object).unwrap()));
            }
        }
    }
    assert_eq!(objects.matches("kind: NetworkPolicy\n").count(), 3);
    assert!(objects.contains("kubernetes.io/metadata.name: monitoring"));
    let owned = out.path().join("desired.yaml");
    std::fs::write(&owned, objects).unwrap();
    let (ok, text) = validate(&[owned]);
    assert!(ok, "the operator's objects are invalid:\n{text}");
}

/// Every document of a rendered file, as JSON.
fn documents(file: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("\n---")
        .filter_map(|doc| {
            serde_saphyr::from_str::<Option<serde_json::Value>>(doc).unwrap_or_else(|e| panic!("{e}: {doc}"))
        })
        .filter(|doc| doc.is_object())
        .collect()
}

/// (kind, namespace, rules) of every Role and ClusterRole.
fn roles(documents: &[serde_json::Value]) -> Vec<(String, String, Vec<serde_json::Value>)> {
    documents
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .map(|d| {
            let namespace = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            (d["kind"].as_str().unwrap().to_string(), namespace, d["rules"].as_array().cloned().unwrap_or_default())
        })
        .collect()
}

fn grants(rules: &[serde_json::Value], resource: &str, verb: &str) -> bool {
    rules.iter().any(|rule| {
        let has =
            |field: &str, value: &str| rule[field].as_array().is_some_and(|a| a.iter().any(|v| v == value || v == "*"));
        has("resources", resource) && has("verbs", verb)
    })
}

#[test]
fn operator_rbac_is_least_privilege_and_namespaced_on_request() {
    let helm = helm();
    let out = tempfile::tempdir().unwrap();
    let files = render(&helm, "pleiades-operator", &[None, Some("ci/namespaced-values.yaml")], out.path());
    let (cluster, namespaced) = (documents(&files[0]), documents(&files[1]));

    for (mode, documents) in [("cluster", &cluster), ("namespaced", &namespaced)] {
        for (kind, namespace, rules) in roles(documents) {
            for rule in &rules {
                let verbs = rule["verbs"].to_string();
                for never in ["\"*\"", "deletecollection", "escalate", "bind", "impersonate"] {
                    assert!(!verbs.contains(never), "{mode}: {kind} in {namespace:?} grants {never}: {rule}");
                }
                assert!(!rule["resources"].to_string().contains('*'), "{mode}: {rule}");
            }
            for verb in ["list", "watch"] {
                assert!(!grants(&rules, "secrets", verb), "{mode}: {kind} lets the operator {verb} secrets");
            }
        }
    }

    let cluster_roles = roles(&cluster);
    let cluster_role = cluster_roles.iter().find(|(kind, ..)| kind == "ClusterRole").expect("a ClusterRole by default");
    assert!(grants(&cluster_role.2, "constellations", "watch"));
    assert!(cluster.iter().any(|d| d["kind"] == "ClusterRoleBinding"));
    // By default the operator keeps its CRD current, with rights over that one CRD only.
    let crd_role = cluster
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-crd")))
        .expect("the CRD ClusterRole");
    let crd_rules = crd_role["rules"].as_array().unwrap();
    assert!(grants(crd_rules, "customresourcedefinitions", "patch"));
    for rule in crd_rules.iter().filter(|r| r["verbs"].to_string().contains("patch")) {
        assert_eq!(rule["resourceNames"], serde_json::json!(["constellations.pleiades.io"]), "{rule}");
    }
    assert!(!grants(&cluster_role.2, "customresourcedefinitions", "patch"));

    // watchNamespaces: Roles in those namespaces, nothing cluster-wide but reading Nodes (their
    // zone labels), and the operator told.
    let nodes_only = |d: &&serde_json::Value| d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-nodes"));
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let cluster_wide: Vec<_> = namespaced.iter().filter(|d| d["kind"] == kind).collect();
        assert!(cluster_wide.iter().all(nodes_only), "a namespaced install renders a {kind} beyond Nodes");
    }
    for (mode, documents) in [("cluster", &cluster), ("namespaced", &namespaced)] {
        let nodes = documents.iter().find(|d| d["kind"] == "ClusterRole" && nodes_only(d)).expect("the Nodes role");
        assert_eq!(
            nodes["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
            "{mode}: reading Nodes and nothing else"
        );
    }
    let namespaced_roles = roles(&namespaced);
    for team in ["team-a", "team-b"] {
        let (_, _, rules) = namespaced_roles
            .iter()
            .find(|(kind, namespace, _)| kind == "Role" && namespace == team)
            .unwrap_or_else(|| panic!("no Role in {team}"));
        assert!(grants(rules, "constellations", "watch") && grants(rules, "secrets", "get"), "{team}: {rules:?}");
        let binding = namespaced
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == team)
            .unwrap_or_else(|| panic!("no RoleBinding in {team}"));
        assert_eq!(binding["subjects"][0]["namespace"], "db", "the operator's own service account");
    }
    let (_, _, leader) = namespaced_roles.iter().find(|(_, namespace, _)| namespace == "db").expect("the leader Role");
    assert!(!grants(leader, "secrets", "get") && grants(leader, "leases", "update"));
    let deployment = namespaced.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--watch-namespaces=team-a,team-b"), "{args}");
    assert!(args.contains("--manage-crd=false"), "{args}");
    let default_args = cluster.iter().find(|d| d["kind"] == "Deployment").unwrap().to_string();
    assert!(!default_args.contains("--watch-namespaces") && default_args.contains("--manage-crd=true"));

    let (ok, text) = run(Command::new(&helm)
        .args(["template", "demo"])
        .arg(repo().join("charts/pleiades-operator"))
        .args(["--set", "watchNamespaces={Team_A}"]));
    assert!(!ok && text.contains("schema"), "an invalid namespace name is refused: {text}");
}

#[test]
fn bad_values_and_bad_manifests_are_refused() {
    let helm = helm();
    let out = tempfile::tempdir().unwrap();
    let chart = repo().join("charts/constellation");
    for bad in ["replica=5", "replicas=three", "storage.retention.whenScaled=Sometimes", "tls.mode=Plain"] {
        let (ok, text) = run(Command::new(&helm).args(["template", "demo"]).arg(&chart).args(["--set", bad]));
        assert!(!ok, "helm accepted --set {bad}");
        assert!(text.contains("schema"), "--set {bad}: {text}");
    }
    // The validator itself fails on a broken Constellation and a broken StatefulSet.
    let broken = out.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: pleiades.io/v1alpha1\nkind: Constellation\nmetadata:\n  name: x\nspec:\n  replicas: 3\n  replica: 3\n\
         ---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: y\nspec:\n  replicas: three\n",
    )
    .unwrap();
    let (ok, text) = validate(&[broken]);
    assert!(!ok);
    assert!(text.contains("INVALID") && text.contains("2 invalid"), "{text}");
}
