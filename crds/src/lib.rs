//! The `Constellation` custom resource (`pleiades.io/v1alpha1`): the API users write to run a
//! Pleiades constellation on Kubernetes, and the status the operator and the pods report back.
//!
//! Every field carries a doc comment because it becomes the `kubectl explain` text. Validation
//! lives in the schema (types, bounds, enums) and in CEL rules the API server enforces
//! (`x-kubernetes-validations`), so a bad spec is refused at `kubectl apply`, before the operator
//! ever sees it. `crds/constellation.yaml` is generated from these types (`pleiades-operator crd`)
//! and a test fails when it drifts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "pleiades.io";
pub const VERSION: &str = "v1alpha1";
/// The node label Node Feature Discovery sets on nodes whose kernel has `CONFIG_PREEMPT_RT`
/// (with `PREEMPT_RT` added to NFD's kernel `kconfigFile`/`configOpts`).
pub const DEFAULT_REALTIME_KERNEL_LABEL: &str = "feature.node.kubernetes.io/kernel-config.PREEMPT_RT";
/// The taint a dedicated Pleiades node pool carries; tolerated by default.
pub const DEFAULT_POOL_TAINT: &str = "pleiades.io/dedicated";

/// A Pleiades constellation: a StatefulSet of data-plane nodes forming one replicated,
/// range-partitioned key-value store, reconciled by the Pleiades operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pleiades.io",
    version = "v1alpha1",
    kind = "Constellation",
    namespaced,
    shortname = "cst",
    status = "ConstellationStatus",
    derive = "PartialEq",
    doc = "A Pleiades constellation: a StatefulSet of data-plane nodes forming one replicated, range-partitioned key-value store.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas","description":"Requested data-plane nodes"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Pods ready to serve"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.aliveMembers","description":"Members reporting alive"}"#,
    printcolumn = r#"{"name":"Ranges","type":"integer","jsonPath":".status.ranges.total","description":"Ranges in the constellation"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("self.replicas >= self.replicationFactor").message("replicas must be at least replicationFactor: a range needs that many nodes for its replicas"),
    validation = Rule::new("!has(oldSelf.replicationFactor) || self.replicationFactor == oldSelf.replicationFactor").message("replicationFactor cannot change after creation")
)]
#[serde(rename_all = "camelCase")]
pub struct ConstellationSpec {
    /// Number of data-plane nodes (pods). Scaling down decommissions the highest ordinals first:
    /// their replicas move to the remaining nodes before their pods are removed.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Replicas kept of every range: 3 survives one node failure, 5 survives two. Fixed at creation.
    #[serde(default = "default_replication_factor")]
    #[x_kube(validation = Rule::new("self == 3 || self == 5").message("replicationFactor must be 3 or 5"))]
    pub replication_factor: i32,
    /// The node image.
    #[serde(default)]
    pub image: ImageSpec,
    /// CPU and memory of each node. Requests equal limits (Guaranteed QoS) with whole CPUs, so
    /// the kubelet's static CPU manager pins each node to exclusive cores.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// The persistent volume of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Which Kubernetes nodes the pods run on and how they spread.
    #[serde(default)]
    pub node_pool: NodePoolSpec,
    /// Real-time scheduling of the node's raft and network threads.
    #[serde(default)]
    pub realtime: RealtimeSpec,
    /// Engine settings. Log level and kv limits apply live; the rest rolls the pods one at a time.
    #[serde(default)]
    pub tuning: TuningSpec,
    /// Transport security between nodes and for clients (always TLS 1.3).
    #[serde(default)]
    pub tls: TlsSpec,
    /// Prometheus scraping.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Which pods may reach the nodes: a NetworkPolicy the operator keeps beside the StatefulSet.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Replacing the pod of a Kubernetes node that died.
    #[serde(default)]
    pub failover: FailoverSpec,
    /// When true the operator makes no changes to the constellation's objects (status is still
    /// reported). Use it to hold a constellation during maintenance.
    #[serde(default)]
    pub paused: bool,
}

impl Default for ConstellationSpec {
    fn default() -> Self {
        ConstellationSpec {
            replicas: default_replicas(),
            replication_factor: default_replication_factor(),
            image: ImageSpec::default(),
            resources: ResourcesSpec::default(),
            storage: StorageSpec::default(),
            node_pool: NodePoolSpec::default(),
            realtime: RealtimeSpec::default(),
            tuning: TuningSpec::default(),
            tls: TlsSpec::default(),
            monitoring: MonitoringSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            failover: FailoverSpec::default(),
            paused: false,
        }
    }
}

fn default_replicas() -> i32 {
    3
}
fn default_replication_factor() -> i32 {
    3
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository of the `pleiades` node binary.
    #[serde(default = "default_repository")]
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Image tag. Changing it rolls the pods one at a time.
    #[serde(default = "default_tag")]
    #[x_kube(validation = Rule::new("self != ''").message("image tag must not be empty"))]
    pub tag: String,
    /// Image pull policy.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets in the namespace used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

fn default_repository() -> String {
    "ghcr.io/pleiades-db/pleiades".into()
}
fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: default_repository(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Whole CPUs per node, requested and limited alike (Guaranteed QoS, exclusive cores).
    #[serde(default = "default_cpus")]
    #[schemars(range(min = 1, max = 256))]
    pub cpus: i32,
    /// Memory per node, requested and limited alike, as a Kubernetes quantity (e.g. `4Gi`).
    #[serde(default = "default_memory")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('255Mi'))").message("memory must be a quantity of at least 256Mi"))]
    pub memory: String,
}

fn default_cpus() -> i32 {
    2
}
fn default_memory() -> String {
    "4Gi".into()
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec { cpus: default_cpus(), memory: default_memory() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's volume, as a Kubernetes quantity. It may grow (when the storage class
    /// allows expansion) but never shrink.
    #[serde(default = "default_storage_size")]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage size must be a Kubernetes quantity such as 10Gi"),
        validation = Rule::new("!isQuantity(oldSelf) || !isQuantity(self) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage size may not shrink")
    )]
    pub size: String,
    /// Storage class of the volumes; the cluster default when absent. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storageClassName cannot change"))]
    pub storage_class_name: Option<String>,
    /// What happens to a node's volume when its pod is removed by a scale-down, and when the
    /// constellation is deleted.
    #[serde(default)]
    pub retention: RetentionSpec,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_storage_size(), storage_class_name: None, retention: RetentionSpec::default() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Volumes of pods removed by a scale-down (after their data moved away).
    #[serde(default)]
    pub when_scaled: RetentionPolicy,
    /// Volumes of every pod when the Constellation is deleted.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RetentionPolicy {
    /// Keep the PersistentVolumeClaim.
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaim (and, with a Delete reclaim policy, its volume).
    Delete,
}

impl RetentionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Retain => "Retain",
            RetentionPolicy::Delete => "Delete",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// CPU architecture the pods are pinned to (`kubernetes.io/arch`); empty to run anywhere.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// Node label (value `true`) marking nodes with a PREEMPT_RT kernel; empty to not require one.
    /// The default is Node Feature Discovery's kernel-config label.
    #[serde(default = "default_realtime_kernel_label")]
    pub realtime_kernel_label: String,
    /// More node labels every pod's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pool's taints. By default the `pleiades.io/dedicated` NoSchedule taint.
    #[serde(default = "default_tolerations")]
    pub tolerations: Vec<Toleration>,
    /// How strictly pods avoid sharing a host: `Required` (one node per host), `Preferred`, `None`.
    #[serde(default)]
    pub host_anti_affinity: AntiAffinity,
    /// Spreading across zones (`topology.kubernetes.io/zone`): `ScheduleAnyway` or `DoNotSchedule`.
    #[serde(default)]
    pub zone_spread: ZoneSpread,
}

fn default_architecture() -> String {
    "arm64".into()
}
fn default_realtime_kernel_label() -> String {
    DEFAULT_REALTIME_KERNEL_LABEL.into()
}
fn default_tolerations() -> Vec<Toleration> {
    vec![Toleration {
        key: Some(DEFAULT_POOL_TAINT.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }]
}

impl Default for NodePoolSpec {
    fn default() -> Self {
        NodePoolSpec {
            architecture: default_architecture(),
            realtime_kernel_label: default_realtime_kernel_label(),
            node_selector: BTreeMap::new(),
            tolerations: default_tolerations(),
            host_anti_affinity: AntiAffinity::default(),
            zone_spread: ZoneSpread::default(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AntiAffinity {
    #[default]
    Required,
    Preferred,
    None,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZoneSpread {
    #[default]
    ScheduleAnyway,
    DoNotSchedule,
}

impl ZoneSpread {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneSpread::ScheduleAnyway => "ScheduleAnyway",
            ZoneSpread::DoNotSchedule => "DoNotSchedule",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeSpec {
    /// Run the node's raft and network threads under SCHED_FIFO. Grants the container
    /// `CAP_SYS_NICE`; a node that still may not (no RT kernel, a restrictive runtime) logs a
    /// warning and runs with normal scheduling.
    #[serde(default)]
    pub enabled: bool,
    /// SCHED_FIFO priority (1 to 98; 99 is left to the kernel's own threads).
    #[serde(default = "default_rt_priority")]
    #[schemars(range(min = 1, max = 98))]
    pub priority: i32,
}

fn default_rt_priority() -> i32 {
    50
}

impl Default for RealtimeSpec {
    fn default() -> Self {
        RealtimeSpec { enabled: false, priority: default_rt_priority() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TuningSpec {
    /// Raft timing, the same for every range.
    #[serde(default)]
    pub raft: RaftTuning,
    /// RocksDB sizing and compression.
    #[serde(default)]
    pub rocksdb: RocksdbTuning,
    /// Gossip timing profile: `Lan` (one data centre), `Wan` (across regions), `Local` (tests).
    #[serde(default)]
    pub gossip_profile: GossipProfile,
    /// Key, value and scan limits (applied live, without a restart).
    #[serde(default)]
    pub kv: KvTuning,
    /// Data ranges the keyspace is cut into when the constellation is first created.
    #[serde(default = "default_initial_ranges")]
    #[schemars(range(min = 1, max = 1024))]
    pub initial_ranges: i32,
    /// Log filter such as `info` or `pleiades=debug,info` (applied live, without a restart).
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
}

impl Default for TuningSpec {
    fn default() -> Self {
        TuningSpec {
            raft: RaftTuning::default(),
            rocksdb: RocksdbTuning::default(),
            gossip_profile: GossipProfile::default(),
            kv: KvTuning::default(),
            initial_ranges: default_initial_ranges(),
            log_level: default_log_level(),
        }
    }
}

fn default_initial_ranges() -> i32 {
    4
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.electionTimeoutMinMs > self.heartbeatIntervalMs").message("electionTimeoutMinMs must exceed heartbeatIntervalMs"),
    validation = Rule::new("self.electionTimeoutMaxMs > self.electionTimeoutMinMs").message("electionTimeoutMaxMs must exceed electionTimeoutMinMs")
)]
pub struct RaftTuning {
    /// Leader heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: i32,
    /// Lower bound of the randomised election timeout in milliseconds.
    #[serde(default = "default_election_min")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_min_ms: i32,
    /// Upper bound of the randomised election timeout in milliseconds.
    #[serde(default = "default_election_max")]
    #[schemars(range(min = 100, max = 120000))]
    pub election_timeout_max_ms: i32,
}

/// The node's own default (`raft.heartbeat-interval-ms`); see there why it is not lower.
fn default_heartbeat() -> i32 {
    250
}
fn default_election_min() -> i32 {
    1000
}
fn default_election_max() -> i32 {
    2000
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: default_heartbeat(),
            election_timeout_min_ms: default_election_min(),
            election_timeout_max_ms: default_election_max(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RocksdbTuning {
    /// Block cache shared by all column families, in MiB.
    #[serde(default = "default_block_cache")]
    #[schemars(range(min = 8, max = 1048576))]
    pub block_cache_mib: i32,
    /// Memtable (write buffer) size per column family, in MiB.
    #[serde(default = "default_memtable")]
    #[schemars(range(min = 1, max = 4096))]
    pub memtable_mib: i32,
    /// SST block compression.
    #[serde(default)]
    pub compression: Compression,
}

fn default_block_cache() -> i32 {
    128
}
fn default_memtable() -> i32 {
    32
}

impl Default for RocksdbTuning {
    fn default() -> Self {
        RocksdbTuning {
            block_cache_mib: default_block_cache(),
            memtable_mib: default_memtable(),
            compression: Compression::default(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    /// The node config's spelling.
    pub fn as_config(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GossipProfile {
    #[default]
    Lan,
    Wan,
    Local,
}

impl GossipProfile {
    pub fn as_config(self) -> &'static str {
        match self {
            GossipProfile::Lan => "lan",
            GossipProfile::Wan => "wan",
            GossipProfile::Local => "local",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvTuning {
    /// Largest key in bytes.
    #[serde(default = "default_max_key")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_key_bytes: i32,
    /// Largest value in bytes (below the 16 MiB wire payload limit).
    #[serde(default = "default_max_value")]
    #[schemars(range(min = 1, max = 16000000))]
    pub max_value_bytes: i32,
    /// Most entries one scan returns.
    #[serde(default = "default_max_scan")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_scan_limit: i32,
}

fn default_max_key() -> i32 {
    64 << 10
}
fn default_max_value() -> i32 {
    8 << 20
}
fn default_max_scan() -> i32 {
    10_000
}

impl Default for KvTuning {
    fn default() -> Self {
        KvTuning {
            max_key_bytes: default_max_key(),
            max_value_bytes: default_max_value(),
            max_scan_limit: default_max_scan(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'Secret' || (has(self.secretName) && self.secretName != '')").message("tls.secretName is required when tls.mode is Secret"),
    validation = Rule::new("self.mode != 'Secret' || !has(self.certManager)").message("tls.certManager issues per-pod certificates: it needs mode SelfSigned, not Secret")
)]
pub struct TlsSpec {
    /// `SelfSigned`: every pod gets its own certificate naming its node id
    /// (`pleiades://<name>.<namespace>/node/<id>`): the pod keeps its key and sends a signing
    /// request through its status entry; the operator signs it with a CA it keeps in the Secret
    /// `<name>-ca` (or cert-manager does, with `certManager`), publishes the CA certificate in
    /// the ConfigMap `<name>-ca`, and writes an `admin` client certificate to the Secret
    /// `<name>-admin-tls`. `Secret`: every pod uses the one certificate in `secretName`
    /// (`ca.crt`, `tls.crt`, `tls.key`, naming `*.<name>-peers.<namespace>.svc` and
    /// `<name>.<namespace>.svc`) — no per-node identity, so nodes cannot tell each other apart.
    #[serde(default)]
    pub mode: TlsMode,
    /// The Secret holding `ca.crt`, `tls.crt` and `tls.key` when `mode` is `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Lifetime of the node and admin certificates in days; each is renewed at two thirds of it.
    #[serde(default = "default_certificate_lifetime_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub certificate_lifetime_days: i32,
    /// Have cert-manager sign the pods' certificates instead of the operator's own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

fn default_certificate_lifetime_days() -> i32 {
    90
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            mode: TlsMode::default(),
            secret_name: None,
            certificate_lifetime_days: default_certificate_lifetime_days(),
            cert_manager: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    SelfSigned,
    Secret,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The cert-manager issuer that signs the pods' certificate requests and the admin
    /// certificate. It must return the issuing CA (CA and Vault issuers do).
    pub issuer_ref: IssuerRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` (in the constellation's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// The DNS names a node certificate covers: the pod's stable name behind the peer Service and
/// the client Service's names. The pod asks for exactly these and the operator issues exactly
/// these, so both sides derive them here.
pub fn node_dns_names(pod: &str, peer_service: &str, client_service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{pod}.{peer_service}.{namespace}.svc"),
        format!("{pod}.{peer_service}.{namespace}.svc.cluster.local"),
        format!("{client_service}.{namespace}.svc"),
        format!("{client_service}.{namespace}.svc.cluster.local"),
        format!("{client_service}.{namespace}"),
        client_service.to_string(),
    ]
}

/// How a member's message starts when its replicas have nowhere to go (every other living node
/// already holds a copy): the operator reports the scale-down blocked with the rest of it.
pub const DECOMMISSION_BLOCKED: &str = "decommission blocked: ";

/// How a member's message starts when it refuses to open a volume written by a newer storage
/// format (a downgrade): the operator holds the rollout with condition `IncompatibleStorage`.
pub const INCOMPATIBLE_STORAGE: &str = "incompatible storage: ";

/// Node ids of one ordinal's successive members are this far apart (replicas are at most 1000).
pub const NODE_ID_STRIDE: u64 = 10_000;

/// The node id the pod with `ordinal` runs as: `ordinal + 1` (0 means none), or, once that id
/// is retired (its member was removed, or lost its volume), the next one up by
/// [`NODE_ID_STRIDE`]. A retired id is never used again, so no replica, vote or gossip state of
/// a former member can be mistaken for a new member's.
pub fn node_id_for(ordinal: i32, retired: &[i64]) -> u64 {
    let first = u64::try_from(ordinal).unwrap_or_default() + 1;
    (0..)
        .map(|incarnation: u64| first + incarnation * NODE_ID_STRIDE)
        .find(|id| !retired.iter().any(|r| u64::try_from(*r).ok() == Some(*id)))
        .unwrap_or(first)
}

/// The constellation part of identity URIs on Kubernetes: names are unique per namespace.
pub fn identity_constellation(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a Prometheus Operator ServiceMonitor for the nodes (when that CRD is installed).
    #[serde(default = "default_true")]
    pub service_monitor: bool,
    /// Labels on the ServiceMonitor, to match a Prometheus' `serviceMonitorSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval, e.g. `15s`.
    #[serde(default = "default_scrape_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub interval: String,
}

fn default_true() -> bool {
    true
}
fn default_scrape_interval() -> String {
    "15s".into()
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec { service_monitor: true, labels: BTreeMap::new(), interval: default_scrape_interval() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create a NetworkPolicy that admits only the traffic below; the constellation's own pods
    /// always reach each other on the QUIC port (UDP 7400). Off, anything that can route to a
    /// pod reaches it. Enforced only where the cluster's network plugin supports NetworkPolicy.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may reach the client port (UDP 7400, shared with peer traffic), as NetworkPolicy
    /// `from` peers. Empty: every pod in the constellation's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_from: Vec<NetworkPolicyPeer>,
    /// Who may reach the HTTP port (TCP 7480: `/metrics`, `/healthz`, `/readyz`), as
    /// NetworkPolicy `from` peers. Empty: every pod in the constellation's namespace, so a
    /// Prometheus in another namespace needs an entry here (e.g. a `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec { enabled: true, client_from: Vec::new(), metrics_from: Vec::new() }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// A pod left `Terminating` or `Unknown` by a node that stopped answering is force-deleted,
    /// with its claim, this long after — and only once the constellation stopped hearing from
    /// it and rebuilt all its replicas elsewhere. It then starts afresh on a new volume and
    /// joins under a new node id.
    #[serde(default = "default_failover_after")]
    #[schemars(range(min = 60))]
    pub after_seconds: i64,
}

fn default_failover_after() -> i64 {
    300
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec { after_seconds: default_failover_after() }
    }
}

/// What the operator and the pods report.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConstellationStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary: Creating, Running, Scaling, Updating, Degraded or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Pods the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Members reporting `Alive`.
    #[serde(default)]
    pub alive_members: i32,
    /// Label selector of the pods (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// One entry per pod, written by the pod itself (server-side apply, its own field manager).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub members: Vec<MemberStatus>,
    /// Range health, aggregated from the members' reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<RangesStatus>,
    /// Pods the operator asked to decommission ahead of a scale-down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decommission: Vec<String>,
    /// Node ids that are never used again: members removed by a scale-down and members whose
    /// volume was lost. A pod whose claim still holds a retired id wipes it and joins anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_node_ids: Vec<i64>,
    /// The rolling update in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Available, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Creating,
    Running,
    Scaling,
    Updating,
    Degraded,
    Paused,
}

/// A pod's own report.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name (the list's key).
    pub pod: String,
    /// Node id in the constellation.
    #[serde(default)]
    pub node_id: i64,
    /// Address other nodes and clients reach it at.
    #[serde(default)]
    pub address: String,
    /// Membership state.
    #[serde(default)]
    pub state: MemberState,
    /// Whether the node serves requests.
    #[serde(default)]
    pub ready: bool,
    /// Range replicas it holds.
    #[serde(default)]
    pub ranges: i32,
    /// Ranges it leads.
    #[serde(default)]
    pub leaders: i32,
    /// Ranges in the constellation as this node's routing table knows them.
    #[serde(default)]
    pub constellation_ranges: i32,
    /// Ranges it holds that lack a quorum of live replicas as far as it can tell.
    #[serde(default)]
    pub unavailable_ranges: i32,
    /// Ranges it leads that have fewer replicas than the replication factor.
    #[serde(default)]
    pub under_replicated_ranges: i32,
    /// Node ids gossip has declared dead or gone, as this member sees them: the operator stops
    /// counting such a member alive within seconds instead of waiting for its reports to go stale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_down: Vec<i64>,
    /// Node software version.
    #[serde(default)]
    pub version: String,
    /// Hash of the restart-requiring configuration the node runs with.
    #[serde(default)]
    pub config_hash: String,
    /// When the node last reported (RFC 3339).
    #[serde(default)]
    pub last_report: String,
    /// Anything the node wants an operator to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// PEM certificate signing request for the node's key, written by the pod; the key never
    /// leaves the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// PEM certificate issued for `csr`, written by the operator only: it names this pod's node
    /// id whatever the request asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemberState {
    #[default]
    Joining,
    Alive,
    Suspect,
    Dead,
    Decommissioning,
    Decommissioned,
    /// The pod started on an empty volume while its node id was a member: that member's data
    /// is gone. It waits for the operator to retire the id, then joins under a new one.
    VolumeLost,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RangesStatus {
    /// Ranges in the constellation.
    pub total: i32,
    /// Ranges with fewer replicas than the replication factor.
    pub under_replicated: i32,
    /// Ranges without a quorum: they accept no writes.
    pub unavailable: i32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Hash of the configuration being rolled out.
    pub target_config_hash: String,
    /// The StatefulSet partition: pods with a lower ordinal still run the old configuration.
    pub partition: i32,
    /// Pods running the new configuration and ready.
    pub updated_replicas: i32,
    /// What the rollout waits for, when it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// When the current step started (RFC 3339); a step much older than this is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<String>,
}

/// The CRD as YAML, exactly as checked in under `crds/` and in the operator chart.
pub fn crd_yaml() -> String {
    let crd = Constellation::crd();
    let yaml = serde_saphyr::to_string(&crd).expect("a CRD always serialises");
    format!("# Generated by `pleiades-operator crd` from the pleiades-crds types; do not edit.\n{yaml}")
}

/// The constellation chart's `values.schema.json`: the CRD's own spec schema (plus the chart's
/// `nameOverride`), closed to unknown keys so `helm install` refuses a misspelt value instead of
/// the API server silently dropping it.
pub fn chart_values_schema() -> String {
    fn close(schema: &mut serde_json::Value) {
        if let Some(object) = schema.as_object_mut() {
            if object.contains_key("properties") && !object.contains_key("additionalProperties") {
                object.insert("additionalProperties".into(), false.into());
            }
            for value in object.values_mut() {
                close(value);
            }
        } else if let Some(items) = schema.as_array_mut() {
            items.iter_mut().for_each(close);
        }
    }
    let crd = serde_json::to_value(Constellation::crd()).expect("a CRD always serialises");
    let mut spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    close(&mut spec);
    spec["$schema"] = "https://json-schema.org/draft-07/schema#".into();
    spec["properties"]["nameOverride"] =
        serde_json::json!({"type": "string", "description": "Name of the Constellation; the release name when empty."});
    if let Some(object) = spec.as_object_mut() {
        object.remove("required");
        // CEL rules are the API server's; helm cannot evaluate them.
        object.remove("x-kubernetes-validations");
    }
    let mut text = serde_json::to_string_pretty(&spec).expect("JSON always serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
