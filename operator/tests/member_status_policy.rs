//! The chart's ValidatingAdmissionPolicy, its CEL evaluated here as the API server would on
//! pods' writes to a Constellation's status: a pod changes its own member entry only, never a
//! certificate, never the operator's fields; the operator is not held to it.

mod support;
use support::manifest_dir;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kube::core::cel::cel::objects::{Key, Map};
use kube::core::cel::cel::{Context, Program, Value as Cel};
use serde_json::{json, Value};

const OPERATOR: &str = "system:serviceaccount:pleiades-system:pleiades-operator";

/// The policy template with Helm's actions replaced: lines that are only an action go, inline
/// ones (the operator's namespace and service account, names, labels) get fixed values.
fn policy() -> Value {
    let path = Path::new(&manifest_dir()).join("../charts/pleiades-operator/templates/member-status-policy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut yaml = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            continue;
        }
        let line = line
            .replace("{{ .Release.Namespace }}", "pleiades-system")
            .replace("{{ include \"pleiades-operator.serviceAccountName\" . }}", "pleiades-operator")
            .replace("{{ include \"pleiades-operator.fullname\" . }}", "pleiades-operator");
        assert!(!line.contains("{{"), "an unexpected template action: {line}");
        yaml.push_str(&line);
        yaml.push('\n');
    }
    let policy = yaml.split("\n---").next().unwrap();
    serde_saphyr::from_str(policy).unwrap()
}

fn cel(value: &Value) -> Cel {
    kube::core::cel::cel::to_value(value).unwrap()
}

/// Runs the policy on an update of the status from `old` to `new` by `username` (with the pod
/// name a bound token carries, if any): `Ok` when admitted, else the messages of the refusals.
fn admit(username: &str, pod: Option<&str>, old: &Value, new: &Value) -> Result<(), Vec<String>> {
    let policy = policy();
    let spec = &policy["spec"];
    let mut extra = HashMap::new();
    if let Some(pod) = pod {
        extra.insert("authentication.kubernetes.io/pod-name", vec![pod]);
    }
    let request = json!({"operation": "UPDATE", "userInfo": {"username": username, "extra": extra}});
    let mut context = Context::default();
    context.add_variable_from_value("object", cel(new));
    context.add_variable_from_value("oldObject", cel(old));
    context.add_variable_from_value("request", cel(&request));
    let eval = |context: &Context, expression: &str| {
        let program = Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
        program.execute(context).unwrap_or_else(|e| panic!("{expression}: {e}"))
    };
    for condition in spec["matchConditions"].as_array().unwrap() {
        if eval(&context, condition["expression"].as_str().unwrap()) != Cel::Bool(true) {
            return Ok(());
        }
    }
    // Each variable sees the ones before it, as in the API server.
    let mut variables = HashMap::new();
    for variable in spec["variables"].as_array().unwrap() {
        let value = eval(&context, variable["expression"].as_str().unwrap());
        variables.insert(Key::String(Arc::new(variable["name"].as_str().unwrap().to_string())), value);
        context.add_variable_from_value("variables", Cel::Map(Map { map: Arc::new(variables.clone()) }));
    }
    let refusals: Vec<String> = spec["validations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| eval(&context, v["expression"].as_str().unwrap()) != Cel::Bool(true))
        .map(|v| match v["messageExpression"].as_str() {
            Some(expression) => format!("{:?}", eval(&context, expression)),
            None => v["message"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

fn member(pod: &str, state: &str) -> Value {
    json!({"pod": pod, "nodeId": 1, "state": state, "ready": true, "csr": format!("CSR of {pod}")})
}

fn constellation(members: Vec<Value>) -> Value {
    json!({"apiVersion": "pleiades.io/v1alpha1", "kind": "Constellation", "metadata": {"name": "demo"},
        "spec": {"replicas": 3},
        "status": {"phase": "Running", "replicas": 3, "decommission": ["demo-2"], "members": members}})
}

fn node(ns: &str) -> String {
    format!("system:serviceaccount:{ns}:demo-node")
}

#[test]
fn a_pod_may_change_its_own_entry() {
    let old = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Joining")]);
    let new = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Alive")]);
    admit(&node("db"), Some("demo-1"), &old, &new).unwrap();
    // Its first report adds its entry.
    let new = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Joining"), member("demo-2", "Joining")]);
    admit(&node("db"), Some("demo-2"), &old, &new).unwrap();
}

#[test]
fn a_pod_may_not_change_another_pods_entry() {
    let old = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Alive")]);
    let forged = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Decommissioned")]);
    let refusals = admit(&node("db"), Some("demo-0"), &old, &forged).unwrap_err();
    assert!(refusals.iter().any(|r| r.contains("demo-0 may change only its own")), "{refusals:?}");
    let mut swapped_csr = old.clone();
    swapped_csr["status"]["members"][1]["csr"] = json!("CSR of demo-0's choosing");
    assert!(admit(&node("db"), Some("demo-0"), &old, &swapped_csr).is_err());
    let dropped = constellation(vec![member("demo-0", "Alive")]);
    assert!(admit(&node("db"), Some("demo-0"), &old, &dropped).is_err());
}

#[test]
fn a_pod_may_not_write_a_certificate_even_into_its_own_entry() {
    let old = constellation(vec![member("demo-0", "Alive")]);
    let mut new = old.clone();
    new["status"]["members"][0]["certificate"] = json!("a certificate of its own making");
    let refusals = admit(&node("db"), Some("demo-0"), &old, &new).unwrap_err();
    assert!(refusals.iter().any(|r| r.contains("only the operator issues certificates")), "{refusals:?}");

    // The one the operator issued stays as the pod rewrites the rest of its entry.
    let mut issued = old.clone();
    issued["status"]["members"][0]["certificate"] = json!("issued");
    let mut report = issued.clone();
    report["status"]["members"][0]["state"] = json!("Suspect");
    admit(&node("db"), Some("demo-0"), &issued, &report).unwrap();
}

#[test]
fn a_pod_may_not_change_the_operators_fields_or_write_without_a_bound_token() {
    let old = constellation(vec![member("demo-0", "Alive")]);
    let mut new = old.clone();
    new["status"]["decommission"] = json!([]);
    let refusals = admit(&node("db"), Some("demo-0"), &old, &new).unwrap_err();
    assert!(refusals.iter().any(|r| r.contains("only status.members")), "{refusals:?}");
    let refusals = admit(&node("db"), None, &old, &old).unwrap_err();
    assert!(refusals.iter().any(|r| r.contains("bound service-account token")), "{refusals:?}");
}

#[test]
fn the_operator_and_people_are_not_held_to_it() {
    let old = constellation(vec![member("demo-0", "Alive"), member("demo-1", "Alive")]);
    let mut new = constellation(vec![member("demo-0", "Alive")]);
    new["status"]["members"][0]["certificate"] = json!("issued");
    new["status"]["phase"] = json!("Scaling");
    admit(OPERATOR, None, &old, &new).unwrap();
    admit("kubernetes-admin", None, &old, &new).unwrap();
}
