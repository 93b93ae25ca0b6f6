use k8s_openapi::api::core::v1::{PodSpec, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use pleiades_crds::{ConstellationSpec, RetentionPolicy, TlsSpec, ZoneSpread};
use serde_json::json;

use super::*;

pub(crate) fn constellation(spec: ConstellationSpec) -> Constellation {
    let mut cst = Constellation::new("demo", spec);
    cst.metadata.namespace = Some("db".into());
    cst.metadata.uid = Some("6f1c3a52-0d4e-4c3b-9a41-2f5e8b7d9c10".into());
    cst.metadata.generation = Some(1);
    cst
}

fn production() -> ConstellationSpec {
    let mut spec = ConstellationSpec { replicas: 5, replication_factor: 5, ..Default::default() };
    spec.image.tag = "1.4.2".into();
    spec.image.pull_secrets = vec!["registry".into()];
    spec.resources.cpus = 8;
    spec.resources.memory = "32Gi".into();
    spec.storage.size = "500Gi".into();
    spec.storage.storage_class_name = Some("local-nvme".into());
    spec.storage.retention.when_scaled = RetentionPolicy::Delete;
    spec.node_pool.node_selector.insert("node-pool".into(), "pleiades-rt".into());
    spec.node_pool.tolerations.push(Toleration {
        key: Some("realtime".into()),
        operator: Some("Equal".into()),
        value: Some("true".into()),
        effect: Some("NoExecute".into()),
        ..Default::default()
    });
    spec.node_pool.zone_spread = ZoneSpread::DoNotSchedule;
    spec.realtime.enabled = true;
    spec.realtime.priority = 70;
    spec.tls = TlsSpec { mode: TlsMode::Secret, secret_name: Some("pleiades-certs".into()), ..Default::default() };
    spec.monitoring.labels.insert("release".into(), "kube-prometheus".into());
    spec.network_policy.client_from = vec![pods_labelled("app", "checkout")];
    spec.network_policy.metrics_from = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), "monitoring".into())])),
            ..Default::default()
        }),
        ..Default::default()
    }];
    spec
}

fn pods_labelled(key: &str, value: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.into(), value.into())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(desired: &Desired) -> &PodSpec {
    desired.stateful_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

#[test]
fn default_constellation_snapshot() {
    insta::assert_yaml_snapshot!(desired(&constellation(ConstellationSpec::default())));
}

#[test]
fn realtime_arm64_production_snapshot() {
    insta::assert_yaml_snapshot!(desired(&constellation(production())));
}

#[test]
fn pods_land_on_the_arm64_preempt_rt_pool() {
    let defaults = desired(&constellation(ConstellationSpec::default()));
    let selector = pod(&defaults).node_selector.clone().unwrap();
    assert_eq!(selector["kubernetes.io/arch"], "arm64");
    assert_eq!(selector[pleiades_crds::DEFAULT_REALTIME_KERNEL_LABEL], "true");

    let mut spec = production();
    spec.node_pool.realtime_kernel_label = "example.com/rt-kernel".into();
    let selector = pod(&desired(&constellation(spec.clone()))).node_selector.clone().unwrap();
    assert_eq!(selector["example.com/rt-kernel"], "true");
    assert_eq!(selector["node-pool"], "pleiades-rt");
    assert!(!selector.contains_key(pleiades_crds::DEFAULT_REALTIME_KERNEL_LABEL));

    spec.node_pool.architecture.clear();
    spec.node_pool.realtime_kernel_label.clear();
    spec.node_pool.node_selector.clear();
    assert_eq!(pod(&desired(&constellation(spec))).node_selector, None, "an empty pool runs anywhere");
}

#[test]
fn pods_tolerate_the_pool_taints_and_spread_by_host_and_zone() {
    let defaults = desired(&constellation(ConstellationSpec::default()));
    let tolerations = pod(&defaults).tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].key.as_deref(), Some(pleiades_crds::DEFAULT_POOL_TAINT));
    let anti = pod(&defaults).affinity.clone().unwrap().pod_anti_affinity.unwrap();
    let term = &anti.required_during_scheduling_ignored_during_execution.unwrap()[0];
    assert_eq!(term.topology_key, "kubernetes.io/hostname");

    let production = desired(&constellation(production()));
    let tolerations = pod(&production).tolerations.clone().unwrap();
    assert_eq!(tolerations[1].effect.as_deref(), Some("NoExecute"));
    let spread = &pod(&production).topology_spread_constraints.clone().unwrap()[0];
    assert_eq!(
        (spread.topology_key.as_str(), spread.when_unsatisfiable.as_str()),
        ("topology.kubernetes.io/zone", "DoNotSchedule")
    );
}

#[test]
fn requests_equal_limits_in_whole_cpus_for_guaranteed_qos() {
    for spec in [ConstellationSpec::default(), production()] {
        let cpus = spec.resources.cpus;
        let desired = desired(&constellation(spec));
        let resources = pod(&desired).containers[0].resources.clone().unwrap();
        assert_eq!(resources.requests, resources.limits);
        let limits = resources.limits.unwrap();
        assert_eq!(limits["cpu"].0, cpus.to_string(), "whole CPUs, no millicores");
        assert!(limits.contains_key("memory"));
    }
}

#[test]
fn realtime_grants_cap_sys_nice_and_configures_the_priority() {
    let capabilities =
        |desired: &Desired| pod(desired).containers[0].security_context.clone().unwrap().capabilities.unwrap();
    let plain = desired(&constellation(ConstellationSpec::default()));
    assert_eq!(capabilities(&plain).drop, Some(vec!["ALL".to_string()]));
    assert_eq!(capabilities(&plain).add, None);
    assert!(!plain.config_map.data.as_ref().unwrap()["node.toml"].contains("[realtime]"));

    let realtime = desired(&constellation(production()));
    assert_eq!(capabilities(&realtime).add, Some(vec!["SYS_NICE".to_string()]));
    // The file capability that makes SYS_NICE effective for a non-root user counts only without
    // no_new_privs; without real time escalation stays off.
    let escalation =
        |desired: &Desired| pod(desired).containers[0].security_context.clone().unwrap().allow_privilege_escalation;
    assert_eq!((escalation(&plain), escalation(&realtime)), (Some(false), Some(true)));
    assert_eq!(pod(&realtime).security_context.clone().unwrap().run_as_non_root, Some(true));
    assert_eq!(capabilities(&realtime).drop, Some(vec!["ALL".to_string()]));
    assert!(realtime.config_map.data.as_ref().unwrap()["node.toml"].contains("[realtime]\npriority = 70\n"));
}

#[test]
fn pods_are_locked_down() {
    let desired = desired(&constellation(ConstellationSpec::default()));
    let container = &pod(&desired).containers[0];
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(pod(&desired).security_context.clone().unwrap().run_as_non_root, Some(true));
    let env: Vec<_> = container.env.clone().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", CONFIG_HASH_ENV]);
    assert_eq!(container.readiness_probe.clone().unwrap().http_get.unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(container.liveness_probe.clone().unwrap().http_get.unwrap().path.as_deref(), Some("/healthz"));
    assert!(container.startup_probe.is_some());
}

#[test]
fn per_pod_certificates_mount_only_the_ca_and_a_named_secret_mounts_the_secret() {
    let tls = |desired: &Desired| {
        let volumes = pod(desired).volumes.clone().unwrap();
        volumes.into_iter().find(|v| v.name == "tls").unwrap()
    };
    let own = desired(&constellation(ConstellationSpec::default()));
    let ca = tls(&own).config_map.unwrap();
    assert_eq!((ca.name.as_str(), ca.optional), ("demo-ca", Some(true)));
    let node_toml = &own.config_map.data.as_ref().unwrap()["node.toml"];
    assert!(node_toml.contains("request-certificate = true"), "{node_toml}");
    assert!(!node_toml.contains("tls.key"), "the pod's key is its own: {node_toml}");

    let shared = desired(&constellation(production()));
    assert_eq!(tls(&shared).secret.unwrap().secret_name.as_deref(), Some("pleiades-certs"));
    let node_toml = &shared.config_map.data.as_ref().unwrap()["node.toml"];
    assert!(node_toml.contains("request-certificate = false") && node_toml.contains("tls.key"), "{node_toml}");
}

#[test]
fn the_service_monitor_follows_the_switch() {
    let on = desired(&constellation(production()));
    let monitor = serde_json::to_value(on.service_monitor.unwrap()).unwrap();
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0], json!({"port": "http", "path": "/metrics", "interval": "15s"}));
    let mut spec = production();
    spec.monitoring.service_monitor = false;
    assert!(desired(&constellation(spec)).service_monitor.is_none());
}

#[test]
fn live_settings_do_not_restart_pods_but_the_rest_does() {
    let base = desired(&constellation(ConstellationSpec::default()));
    let hash = |desired: &Desired| {
        desired.stateful_set.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
            [CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let mut live = ConstellationSpec::default();
    live.tuning.log_level = "debug".into();
    live.tuning.kv.max_scan_limit = 500;
    let live = desired(&constellation(live));
    assert_eq!(hash(&live), hash(&base));
    assert_ne!(live.config_map.data, base.config_map.data);
    assert!(live.config_map.data.as_ref().unwrap()["live.toml"].contains("max-scan-limit = 500"));

    for change in [
        |s: &mut ConstellationSpec| s.tuning.raft.heartbeat_interval_ms = 50,
        |s: &mut ConstellationSpec| s.tuning.rocksdb.block_cache_mib = 512,
        |s: &mut ConstellationSpec| s.image.tag = "9.9.9".into(),
        |s: &mut ConstellationSpec| s.resources.cpus = 4,
        |s: &mut ConstellationSpec| s.realtime.enabled = true,
    ] {
        let mut spec = ConstellationSpec::default();
        change(&mut spec);
        assert_ne!(hash(&desired(&constellation(spec))), hash(&base));
    }
}

#[test]
fn every_object_is_owned_by_the_constellation() {
    let desired = desired(&constellation(ConstellationSpec::default()));
    let value = serde_json::to_value(&desired).unwrap();
    for (name, object) in value.as_object().unwrap() {
        if object.is_null() {
            continue;
        }
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Constellation", "{name}");
        assert_eq!(owner["controller"], true, "{name}");
    }
}

/// (protocol, port, sources) of each ingress rule.
fn ingress(desired: &Desired) -> Vec<(String, i32, Vec<NetworkPolicyPeer>)> {
    let spec = desired.network_policy.clone().unwrap().spec.unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]), "egress stays open");
    assert_eq!(spec.pod_selector.unwrap().match_labels, Some(selector_labels(&constellation(Default::default()))));
    spec.ingress
        .unwrap()
        .into_iter()
        .map(|rule| {
            let port = rule.ports.unwrap().remove(0);
            let number = match port.port.unwrap() {
                IntOrString::Int(number) => number,
                IntOrString::String(name) => panic!("named port {name}"),
            };
            (port.protocol.unwrap(), number, rule.from.unwrap())
        })
        .collect()
}

#[test]
fn peers_come_only_from_the_constellation_and_clients_and_scrapers_from_the_namespace() {
    let cst = constellation(ConstellationSpec::default());
    let rules = ingress(&desired(&cst));
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(&cst)), ..Default::default() }),
        ..Default::default()
    };
    // A pod selector without a namespace selector picks pods in the policy's own namespace.
    let namespace = NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() };
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0], ("UDP".to_string(), QUIC_PORT, vec![own_pods]));
    assert_eq!(rules[1], ("UDP".to_string(), QUIC_PORT, vec![namespace.clone()]));
    assert_eq!(rules[2], ("TCP".to_string(), HTTP_PORT, vec![namespace]));
}

#[test]
fn the_operator_pods_may_ask_members_over_http_and_nothing_more() {
    let mut desired = desired(&constellation(ConstellationSpec::default()));
    if let Some(policy) = desired.network_policy.as_mut() {
        allow_operator(policy, "pleiades-system");
    }
    let rules = ingress(&desired);
    assert_eq!(rules.len(), 4);
    let (protocol, port, from) = &rules[3];
    assert_eq!((protocol.as_str(), *port), ("TCP", HTTP_PORT));
    let labels = |selector: &Option<LabelSelector>| selector.clone().unwrap().match_labels.unwrap();
    assert_eq!(labels(&from[0].namespace_selector)["kubernetes.io/metadata.name"], "pleiades-system");
    assert_eq!(labels(&from[0].pod_selector)["app.kubernetes.io/name"], OPERATOR_NAME);
}

#[test]
fn configured_sources_replace_the_namespace_default_but_never_the_peers() {
    let production = production();
    let cst = constellation(production.clone());
    let rules = ingress(&desired(&cst));
    assert_eq!(rules[0].2[0].pod_selector.clone().unwrap().match_labels, Some(selector_labels(&cst)));
    assert_eq!(rules[1], ("UDP".to_string(), QUIC_PORT, production.network_policy.client_from.clone()));
    assert_eq!(rules[2], ("TCP".to_string(), HTTP_PORT, production.network_policy.metrics_from.clone()));

    let mut off = production;
    off.network_policy.enabled = false;
    assert!(desired(&constellation(off)).network_policy.is_none());
}
