//! What a Constellation should look like in the cluster: a pure function of its spec, so every
//! feature is unit-tested and snapshotted without an API server. The reconciler decides the two
//! things that depend on the cluster's state — the StatefulSet's replica count during a
//! scale-down and its rollout partition — and overrides them on the result.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use pleiades_crds::{AntiAffinity, Constellation, ConstellationSpec, TlsMode};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// QUIC (PWP) port: clients and peers. UDP.
pub const QUIC_PORT: i32 = 7400;
/// Observability HTTP port: `/metrics`, `/healthz`, `/readyz`.
pub const HTTP_PORT: i32 = 7480;
/// The operator chart's name, which labels the operator's pods `app.kubernetes.io/name`.
pub const OPERATOR_NAME: &str = "pleiades-operator";
pub const DATA_DIR: &str = "/var/lib/pleiades";
pub const CONFIG_DIR: &str = "/etc/pleiades/config";
pub const TLS_DIR: &str = "/etc/pleiades/tls";
/// The pod's annotations, as the downward API writes them (the operator's topology annotations
/// among them).
pub const PODINFO_DIR: &str = "/etc/pleiades/podinfo";
/// The pod template annotation (and env var) carrying the hash of everything that needs a restart.
pub const CONFIG_HASH_ANNOTATION: &str = "pleiades.io/config-hash";
pub const CONFIG_HASH_ENV: &str = "PLEIADES_CONFIG_HASH";
/// Unprivileged user the node image runs as.
pub const NODE_UID: i64 = 10001;

/// Names of the objects a Constellation owns.
pub struct Names {
    pub constellation: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cst: &Constellation) -> Names {
        Names { constellation: cst.name_any(), namespace: cst.namespace().unwrap_or_else(|| "default".into()) }
    }
    pub fn stateful_set(&self) -> String {
        self.constellation.clone()
    }
    pub fn client_service(&self) -> String {
        self.constellation.clone()
    }
    pub fn peer_service(&self) -> String {
        format!("{}-peers", self.constellation)
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.constellation)
    }
    pub fn node_account(&self) -> String {
        format!("{}-node", self.constellation)
    }
    pub fn network_policy(&self) -> String {
        self.constellation.clone()
    }
    /// The CA: a Secret with its key (the operator's alone) and a ConfigMap with its certificate.
    pub fn ca(&self) -> String {
        format!("{}-ca", self.constellation)
    }
    pub fn admin_secret(&self) -> String {
        format!("{}-admin-tls", self.constellation)
    }
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.constellation)
    }
}

/// The labels on every object, and the selector subset that picks the pods.
pub fn labels(cst: &Constellation) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cst);
    labels.insert("app.kubernetes.io/component".into(), "node".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "pleiades-operator".into());
    labels.insert("app.kubernetes.io/version".into(), cst.spec.image.tag.clone());
    labels
}

pub fn selector_labels(cst: &Constellation) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "pleiades".into()),
        ("app.kubernetes.io/instance".into(), cst.name_any()),
    ])
}

/// The label selector of the pods as a string (the scale subresource reports it).
pub fn selector_string(cst: &Constellation) -> String {
    selector_labels(cst).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Every object a Constellation owns, in the order they are applied (identities and
/// configuration before the pods that use them).
#[derive(Debug, Clone, Serialize)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub peer_service: Service,
    pub client_service: Service,
    /// Absent when `spec.networkPolicy.enabled` is false (the reconciler then removes its own).
    pub network_policy: Option<NetworkPolicy>,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub stateful_set: StatefulSet,
    /// Created only when the Prometheus Operator's CRD exists in the cluster.
    pub service_monitor: Option<DynamicObject>,
}

pub fn desired(cst: &Constellation) -> Desired {
    let names = Names::of(cst);
    let config = NodeConfig::render(cst, &names);
    Desired {
        service_account: ServiceAccount { metadata: meta(cst, names.node_account()), ..Default::default() },
        role: node_role(cst, &names),
        role_binding: node_role_binding(cst, &names),
        config_map: ConfigMap {
            metadata: meta(cst, names.config_map()),
            data: Some(BTreeMap::from([
                ("node.toml".to_string(), config.restart.clone()),
                ("live.toml".to_string(), config.live.clone()),
            ])),
            ..Default::default()
        },
        peer_service: peer_service(cst, &names),
        client_service: client_service(cst, &names),
        network_policy: cst.spec.network_policy.enabled.then(|| network_policy(cst, &names)),
        pod_disruption_budget: PodDisruptionBudget {
            metadata: meta(cst, names.stateful_set()),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector { match_labels: Some(selector_labels(cst)), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
        stateful_set: stateful_set(cst, &names, &config.hash),
        service_monitor: cst.spec.monitoring.service_monitor.then(|| service_monitor(cst, &names)),
    }
}

/// The node's configuration files: `node.toml` (read at start; a change rolls the pods) and
/// `live.toml` (re-read by the running node: log level and kv limits).
pub struct NodeConfig {
    pub restart: String,
    pub live: String,
    /// Hash of `node.toml` and the image: a pod runs the current configuration when its
    /// template carries this hash.
    pub hash: String,
}

impl NodeConfig {
    pub fn render(cst: &Constellation, names: &Names) -> NodeConfig {
        let spec = &cst.spec;
        let tuning = &spec.tuning;
        let mut restart = format!(
            "# Rendered by pleiades-operator from Constellation {ns}/{name}; changes roll the pods.\n\
             listen = \"0.0.0.0:{QUIC_PORT}\"\n\
             http = \"0.0.0.0:{HTTP_PORT}\"\n\
             data-dir = \"{DATA_DIR}\"\n\
             log-format = \"json\"\n\
             shutdown-grace-ms = 20000\n\n\
             [tls]\n\
             {tls}\
             ca-cert = \"{TLS_DIR}/ca.crt\"\n\n\
             [storage]\n\
             block-cache-bytes = {cache}\n\
             memtable-bytes = {memtable}\n\
             compression = \"{compression}\"\n\n\
             [raft]\n\
             heartbeat-interval-ms = {heartbeat}\n\
             election-timeout-min-ms = {election_min}\n\
             election-timeout-max-ms = {election_max}\n\n\
             [constellation]\n\
             initial-ranges = {initial_ranges}\n\
             replication-factor = {rf}\n\n\
             [gossip]\n\
             profile = \"{gossip}\"\n\n\
             [kubernetes]\n\
             constellation = \"{name}\"\n\
             peer-service = \"{peers}\"\n\
             client-service = \"{client}\"\n\
             founders = {rf}\n\
             request-certificate = {request_certificate}\n\
             pod-annotations = \"{PODINFO_DIR}/annotations\"\n",
            ns = names.namespace,
            name = names.constellation,
            cache = i64::from(tuning.rocksdb.block_cache_mib) << 20,
            memtable = i64::from(tuning.rocksdb.memtable_mib) << 20,
            compression = tuning.rocksdb.compression.as_config(),
            heartbeat = tuning.raft.heartbeat_interval_ms,
            election_min = tuning.raft.election_timeout_min_ms,
            election_max = tuning.raft.election_timeout_max_ms,
            initial_ranges = tuning.initial_ranges,
            rf = spec.replication_factor,
            gossip = tuning.gossip_profile.as_config(),
            peers = names.peer_service(),
            client = names.client_service(),
            tls = match spec.tls.mode {
                // The pod makes its own key and asks the operator for a certificate.
                TlsMode::SelfSigned => String::new(),
                TlsMode::Secret => format!("cert = \"{TLS_DIR}/tls.crt\"\nkey = \"{TLS_DIR}/tls.key\"\n"),
            },
            request_certificate = spec.tls.mode == TlsMode::SelfSigned,
        );
        if spec.realtime.enabled {
            restart.push_str(&format!("\n[realtime]\npriority = {}\n", spec.realtime.priority));
        }
        let live = format!(
            "# Re-read by the running node: no restart.\n\
             log-level = {log_level:?}\n\n\
             [kv]\n\
             max-key-bytes = {key}\n\
             max-value-bytes = {value}\n\
             max-scan-limit = {scan}\n",
            log_level = tuning.log_level,
            key = tuning.kv.max_key_bytes,
            value = tuning.kv.max_value_bytes,
            scan = tuning.kv.max_scan_limit,
        );
        let mut hasher = Sha256::new();
        hasher.update(restart.as_bytes());
        hasher.update(image(&cst.spec).as_bytes());
        hasher.update(serde_json::to_vec(&pod_shape(&cst.spec)).unwrap_or_default());
        let hash = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        NodeConfig { restart, live, hash }
    }
}

/// Spec fields that reach the pod template other than through `node.toml`: changing any of them
/// restarts pods, so they are part of the configuration hash.
fn pod_shape(spec: &ConstellationSpec) -> serde_json::Value {
    json!([spec.resources, spec.node_pool, spec.realtime, spec.image, spec.tls])
}

fn image(spec: &ConstellationSpec) -> String {
    format!("{}:{}", spec.image.repository, spec.image.tag)
}

pub(crate) fn meta(cst: &Constellation, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cst.namespace(),
        labels: Some(labels(cst)),
        owner_references: cst.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..Default::default()
    }
}

fn node_role(cst: &Constellation, names: &Names) -> Role {
    let constellations = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![pleiades_crds::GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        resource_names: Some(vec![names.constellation.clone()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    Role {
        metadata: meta(cst, names.node_account()),
        // A pod reads its own Constellation and writes only its status (its member entry).
        rules: Some(vec![
            constellations(&["constellations"], &["get"]),
            constellations(&["constellations/status"], &["get", "patch"]),
        ]),
    }
}

fn node_role_binding(cst: &Constellation, names: &Names) -> RoleBinding {
    RoleBinding {
        metadata: meta(cst, names.node_account()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: names.node_account(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names.node_account(),
            namespace: cst.namespace(),
            ..Default::default()
        }]),
    }
}

fn service_ports() -> Vec<ServicePort> {
    vec![
        ServicePort {
            name: Some("quic".into()),
            port: QUIC_PORT,
            protocol: Some("UDP".into()),
            target_port: Some(IntOrString::String("quic".into())),
            ..Default::default()
        },
        ServicePort {
            name: Some("http".into()),
            port: HTTP_PORT,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::String("http".into())),
            ..Default::default()
        },
    ]
}

fn peer_service(cst: &Constellation, names: &Names) -> Service {
    let mut metadata = meta(cst, names.peer_service());
    metadata.labels.get_or_insert_default().insert("pleiades.io/service".into(), "peers".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must resolve each other before they are ready: readiness needs the others.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cst)),
            ports: Some(service_ports()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn client_service(cst: &Constellation, names: &Names) -> Service {
    Service {
        metadata: meta(cst, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cst)),
            ports: Some(service_ports()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ingress to the nodes: peers (UDP 7400) only from the constellation's own pods; clients on the
/// same port and scrapers on the HTTP port from the spec's selectors, by default every pod in
/// the namespace. Egress stays open: nodes dial each other, DNS and the API server. The operator
/// needs no rule: it talks to the API server, never to the pods, and kubelet probes come from
/// the node, which NetworkPolicy always admits.
fn network_policy(cst: &Constellation, names: &Names) -> NetworkPolicy {
    let spec = &cst.spec.network_policy;
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(cst)), ..Default::default() }),
        ..Default::default()
    };
    // An empty `from` would admit every source, so an empty list in the spec means the namespace.
    let or_namespace = |from: &[NetworkPolicyPeer]| {
        if from.is_empty() {
            vec![NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() }]
        } else {
            from.to_vec()
        }
    };
    let rule = |from: Vec<NetworkPolicyPeer>, protocol: &str, port: i32| NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(vec![NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: Some(IntOrString::Int(port)),
            ..Default::default()
        }]),
    };
    NetworkPolicy {
        metadata: meta(cst, names.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(cst)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                rule(vec![own_pods], "UDP", QUIC_PORT),
                rule(or_namespace(&spec.client_from), "UDP", QUIC_PORT),
                rule(or_namespace(&spec.metrics_from), "TCP", HTTP_PORT),
            ]),
            ..Default::default()
        }),
    }
}

/// Admits the operator's pods in `namespace` to the members' HTTP port: the operator asks a
/// member before it removes another (see `probe`).
pub fn allow_operator(policy: &mut NetworkPolicy, namespace: &str) {
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".to_string(), namespace.to_string())].into()),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some([("app.kubernetes.io/name".to_string(), OPERATOR_NAME.to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rule = NetworkPolicyIngressRule {
        from: Some(vec![operator]),
        ports: Some(vec![NetworkPolicyPort {
            protocol: Some("TCP".into()),
            port: Some(IntOrString::Int(HTTP_PORT)),
            ..Default::default()
        }]),
    };
    policy.spec.get_or_insert_default().ingress.get_or_insert_default().push(rule);
}

fn service_monitor(cst: &Constellation, names: &Names) -> DynamicObject {
    let resource = service_monitor_resource();
    let mut metadata = meta(cst, names.constellation.clone());
    metadata.labels.get_or_insert_default().extend(cst.spec.monitoring.labels.clone());
    let mut monitor = DynamicObject::new(&names.constellation, &resource).data(json!({
        "spec": {
            "selector": {"matchLabels": {
                "app.kubernetes.io/instance": names.constellation,
                "pleiades.io/service": "peers",
            }},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": cst.spec.monitoring.interval}],
        }
    }));
    monitor.metadata = metadata;
    monitor
}

pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn stateful_set(cst: &Constellation, names: &Names, config_hash: &str) -> StatefulSet {
    let spec = &cst.spec;
    let quantity = |q: &str| Quantity(q.to_string());
    let compute = BTreeMap::from([
        ("cpu".to_string(), quantity(&spec.resources.cpus.to_string())),
        ("memory".to_string(), quantity(&spec.resources.memory)),
    ]);
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let mut capabilities = Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() };
    if spec.realtime.enabled {
        capabilities.add = Some(vec!["SYS_NICE".into()]);
    }
    let container = Container {
        name: "pleiades".into(),
        image: Some(image(spec)),
        image_pull_policy: Some(spec.image.pull_policy.as_str().into()),
        args: Some(vec![
            "node".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/node.toml"),
            "--live-config".into(),
            format!("{CONFIG_DIR}/live.toml"),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            EnvVar { name: CONFIG_HASH_ENV.into(), value: Some(config_hash.into()), ..Default::default() },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("quic".into()),
                container_port: QUIC_PORT,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(compute.clone()),
            limits: Some(compute),
            ..Default::default()
        }),
        // Up to five minutes to open a large RocksDB and replay its WAL before liveness counts.
        startup_probe: Some(probe("/healthz", 5, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            // Real time needs the image's cap_sys_nice file capability, which the kernel
            // ignores under no_new_privs: only then is escalation allowed (the image has no
            // setuid file, and every capability but SYS_NICE is dropped).
            allow_privilege_escalation: Some(spec.realtime.enabled),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(capabilities),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR, false),
            mount("config", CONFIG_DIR, true),
            mount("tls", TLS_DIR, true),
            mount("podinfo", PODINFO_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    };

    let pool = &spec.node_pool;
    let mut node_selector = pool.node_selector.clone();
    if !pool.architecture.is_empty() {
        node_selector.insert("kubernetes.io/arch".into(), pool.architecture.clone());
    }
    if !pool.realtime_kernel_label.is_empty() {
        node_selector.insert(pool.realtime_kernel_label.clone(), "true".into());
    }
    let same_constellation = Some(LabelSelector { match_labels: Some(selector_labels(cst)), ..Default::default() });
    let host_term = PodAffinityTerm {
        label_selector: same_constellation.clone(),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    let anti_affinity = match pool.host_anti_affinity {
        AntiAffinity::Required => Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![host_term]),
            ..Default::default()
        }),
        AntiAffinity::Preferred => Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: host_term,
            }]),
            ..Default::default()
        }),
        AntiAffinity::None => None,
    };
    let tls_volume = match spec.tls.mode {
        // Only the CA certificate: the pod's key and certificate live on its data volume. The
        // ConfigMap may not exist yet (cert-manager returns the CA with the first certificate);
        // the node waits for it.
        TlsMode::SelfSigned => Volume {
            name: "tls".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.ca(),
                optional: Some(true),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        TlsMode::Secret => Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: spec.tls.secret_name.clone(),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    };

    let mut template_meta = ObjectMeta { labels: Some(labels(cst)), ..Default::default() };
    template_meta.annotations = Some(BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string()),
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
    ]));
    let pod = PodSpec {
        service_account_name: Some(names.node_account()),
        containers: vec![container],
        image_pull_secrets: (!spec.image.pull_secrets.is_empty())
            .then(|| spec.image.pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!pool.tolerations.is_empty()).then(|| pool.tolerations.clone()),
        affinity: anti_affinity.map(|anti| Affinity { pod_anti_affinity: Some(anti), ..Default::default() }),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: pool.zone_spread.as_str().into(),
            label_selector: same_constellation,
            ..Default::default()
        }]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        // The node's own shutdown grace (20 s) plus flushing memtables.
        termination_grace_period_seconds: Some(60),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource { name: names.config_map(), ..Default::default() }),
                ..Default::default()
            },
            tls_volume,
            // The kubelet rewrites the file when the annotations change: the zone and region the
            // operator copies from the Kubernetes node arrive after the pod started.
            Volume {
                name: "podinfo".into(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "annotations".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.annotations".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    default_mode: Some(0o444),
                }),
                ..Default::default()
            },
            Volume { name: "tmp".into(), empty_dir: Some(Default::default()), ..Default::default() },
        ]),
        ..Default::default()
    };

    let retention = &spec.storage.retention;
    StatefulSet {
        metadata: meta(cst, names.stateful_set()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.peer_service()),
            // Founders must start together to elect leaders; scale-down order is still
            // highest ordinal first, and the operator decommissions before removing a pod.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector_labels(cst)), ..Default::default() },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy { partition: Some(0), max_unavailable: None }),
            }),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some(retention.when_scaled.as_str().into()),
                when_deleted: Some(retention.when_deleted.as_str().into()),
            }),
            template: PodTemplateSpec { metadata: Some(template_meta), spec: Some(pod) },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector_labels(cst)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), quantity(&spec.storage.size))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
