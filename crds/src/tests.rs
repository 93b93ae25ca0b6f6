use serde_json::{json, Value};

use super::*;

fn spec(overrides: Value) -> Value {
    let mut spec = serde_json::to_value(ConstellationSpec::default()).unwrap();
    merge(&mut spec, overrides);
    spec
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

fn rejected(value: &Value, old: Option<&Value>) -> String {
    match ConstellationSpec::validate_cel(value, old) {
        Ok(()) => panic!("accepted {value}"),
        Err(errors) => errors.to_string(),
    }
}

/// Fails when a generated file in the repository differs from what the types generate now;
/// `UPDATE_CRD=1` rewrites it instead, for review in the diff.
fn assert_checked_in(relative: &str, generated: &str) {
    let path = std::path::Path::new(&manifest_dir()).join(relative);
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} drifted from the Rust types: run `UPDATE_CRD=1 cargo test -p pleiades-crds` and review the diff",
        path.display()
    );
}

#[test]
fn the_checked_in_crd_matches_the_types() {
    let generated = crd_yaml();
    assert_checked_in("constellation.yaml", &generated);
    assert_checked_in("../charts/pleiades-operator/crds/constellation.yaml", &generated);
}

#[test]
fn the_constellation_chart_validates_values_against_the_crd_schema() {
    let generated = chart_values_schema();
    assert_checked_in("../charts/constellation/values.schema.json", &generated);
    let schema: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["storage"]["additionalProperties"], false);
}

#[test]
fn an_empty_spec_takes_every_default() {
    let spec: ConstellationSpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(spec, ConstellationSpec::default());
    assert_eq!((spec.replicas, spec.replication_factor), (3, 3));
    assert_eq!(spec.node_pool.architecture, "arm64");
    assert_eq!(spec.node_pool.realtime_kernel_label, DEFAULT_REALTIME_KERNEL_LABEL);
    assert_eq!(spec.node_pool.tolerations[0].key.as_deref(), Some(DEFAULT_POOL_TAINT));
    assert_eq!(spec.tuning.raft.heartbeat_interval_ms, 250);
    assert_eq!(spec.tuning.initial_ranges, 4);
    assert_eq!(spec.tls.certificate_lifetime_days, 90);
    let tls: TlsSpec = serde_json::from_value(json!({"certManager": {"issuerRef": {"name": "ca"}}})).unwrap();
    let issuer = tls.cert_manager.unwrap().issuer_ref;
    assert_eq!((issuer.kind.as_str(), issuer.group.as_str()), ("Issuer", "cert-manager.io"));
    assert!(!spec.realtime.enabled && spec.monitoring.service_monitor && !spec.paused);
    assert!(spec.network_policy.enabled, "a NetworkPolicy unless turned off");
    assert!(spec.network_policy.client_from.is_empty() && spec.network_policy.metrics_from.is_empty());
    ConstellationSpec::validate_cel(&serde_json::to_value(&spec).unwrap(), None).unwrap();
}

#[test]
fn the_schema_carries_defaults_docs_and_rules_for_the_api_server() {
    let crd = serde_json::to_value(Constellation::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["default"], 3);
    assert!(spec["properties"]["replicas"]["description"].as_str().unwrap().contains("decommissions"));
    let rules = spec["x-kubernetes-validations"].to_string();
    assert!(rules.contains("self.replicas >= self.replicationFactor"), "{rules}");
    let members = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["members"];
    assert_eq!(members["x-kubernetes-list-type"], "map");
    assert_eq!(members["x-kubernetes-list-map-keys"], json!(["pod"]));
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cst"]));
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Replicas", "Ready", "Members", "Ranges", "Phase", "Age"]);
    assert_eq!(version["subresources"]["scale"]["specReplicasPath"], ".spec.replicas");
}

#[test]
fn fewer_replicas_than_the_replication_factor_is_refused() {
    let error = rejected(&spec(json!({"replicas": 2})), None);
    assert!(error.contains("replicas must be at least replicationFactor"), "{error}");
    let error = rejected(&spec(json!({"replicas": 4, "replicationFactor": 5})), None);
    assert!(error.contains("replicas must be at least replicationFactor"), "{error}");
    ConstellationSpec::validate_cel(&spec(json!({"replicas": 5, "replicationFactor": 5})), None).unwrap();
}

#[test]
fn the_replication_factor_is_three_or_five_and_fixed() {
    let error = rejected(&spec(json!({"replicas": 4, "replicationFactor": 4})), None);
    assert!(error.contains("must be 3 or 5"), "{error}");
    let old = spec(json!({"replicas": 5}));
    let error = rejected(&spec(json!({"replicas": 5, "replicationFactor": 5})), Some(&old));
    assert!(error.contains("cannot change"), "{error}");
}

#[test]
fn storage_may_grow_but_not_shrink() {
    let old = spec(json!({"storage": {"size": "20Gi"}}));
    let error = rejected(&spec(json!({"storage": {"size": "10Gi"}})), Some(&old));
    assert!(error.contains("may not shrink"), "{error}");
    ConstellationSpec::validate_cel(&spec(json!({"storage": {"size": "30Gi"}})), Some(&old)).unwrap();
    let error = rejected(&spec(json!({"storage": {"size": "lots"}})), None);
    assert!(error.contains("quantity"), "{error}");
}

#[test]
fn bad_images_tls_and_raft_timings_are_refused() {
    assert!(rejected(&spec(json!({"image": {"tag": ""}})), None).contains("tag must not be empty"));
    assert!(rejected(&spec(json!({"tls": {"mode": "Secret"}})), None).contains("secretName is required"));
    ConstellationSpec::validate_cel(&spec(json!({"tls": {"mode": "Secret", "secretName": "certs"}})), None).unwrap();
    let issuer = json!({"issuerRef": {"name": "ca"}});
    let error = rejected(&spec(json!({"tls": {"mode": "Secret", "secretName": "certs", "certManager": issuer}})), None);
    assert!(error.contains("needs mode SelfSigned"), "{error}");
    ConstellationSpec::validate_cel(&spec(json!({"tls": {"certManager": issuer}})), None).unwrap();
    let slow_heartbeat = spec(json!({"tuning": {"raft": {"heartbeatIntervalMs": 2000}}}));
    assert!(rejected(&slow_heartbeat, None).contains("electionTimeoutMinMs must exceed"));
    assert!(rejected(&spec(json!({"resources": {"memory": "64Mi"}})), None).contains("at least 256Mi"));
}

/// The package's directory as cargo gives it to the running test: a binary built in another
/// checkout (the target directory is shared) would carry that checkout's path at compile time.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}
