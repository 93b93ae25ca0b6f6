//! Node configuration: defaults, overridden by a TOML file, overridden by environment variables
//! and command-line flags (see `cli::NodeArgs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::storage::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Fixed node id; when absent the node keeps the id stored in its data directory or picks one.
    pub node_id: Option<u64>,
    /// QUIC (PWP) listen address.
    pub listen: SocketAddr,
    /// Observability HTTP listen address (`/metrics`, `/healthz`, `/readyz`).
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `pleiades=debug,info`.
    pub log_level: String,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub wire: WireConfig,
    pub clock: ClockConfig,
    pub kv: KvLimits,
    pub raft: RaftSettings,
    pub constellation: ConstellationConfig,
    pub gossip: GossipConfig,
    /// SCHED_FIFO for the node's runtime (raft and network) threads; absent: normal scheduling.
    pub realtime: Option<RealtimeConfig>,
    /// Present when the node runs as a pod of a Constellation (written by the operator).
    pub kubernetes: Option<KubernetesConfig>,
    /// A file of settings re-read while the node runs (log level, kv limits); see `LiveConfig`.
    pub live_config: Option<PathBuf>,
    /// How long a shutdown waits for open streams before closing connections.
    pub shutdown_grace_ms: u64,
    /// Accept callers without a client certificate and let them do anything. For experiments
    /// only: every log line and `/readyz` say so.
    pub insecure: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http: SocketAddr::from(([127, 0, 0, 1], 7480)),
            data_dir: PathBuf::from("pleiades-data"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            tls: TlsConfig::default(),
            storage: StorageConfig::default(),
            wire: WireConfig::default(),
            clock: ClockConfig::default(),
            kv: KvLimits::default(),
            raft: RaftSettings::default(),
            constellation: ConstellationConfig::default(),
            gossip: GossipConfig::default(),
            realtime: None,
            kubernetes: None,
            live_config: None,
            shutdown_grace_ms: 5_000,
            insecure: false,
        }
    }
}

/// TLS is always on. Without a certificate and key the node creates a local CA and a node
/// certificate under `<data-dir>/tls` on first start and reuses them afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM certificate chain of this node.
    pub cert: Option<PathBuf>,
    /// PEM private key of this node.
    pub key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for a generated certificate.
    pub subject_alt_names: Vec<String>,
    /// CA certificates that every peer's and client's certificate must chain to; defaults to the
    /// CA in `<data-dir>/tls/ca.crt` (the generated one, or one placed there before first start).
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WireConfig {
    /// Largest PWP message payload accepted.
    pub max_payload_bytes: u64,
    /// A frame must arrive whole within this from its first byte, however slowly it trickles.
    pub frame_timeout_ms: u64,
    /// A stream with no frame for this long is closed (heartbeats count as frames).
    pub stream_idle_timeout_ms: u64,
    /// Concurrent PWP streams on one user's QUIC connection. Each allowed stream costs the
    /// connection memory for its whole life (QUIC stream credit), used or not.
    pub max_streams_per_connection: u32,
    /// The same on another node's connection, which carries every range's raft traffic.
    pub max_streams_per_node_connection: u32,
    /// Concurrent PWP streams on the node, over all connections; more are refused.
    pub max_streams: usize,
    /// Received bytes not yet handled (and answers not yet sent) one peer — a node or user
    /// identity, over all its connections — may hold; its streams stop reading past it. At
    /// least one maximal message.
    pub max_buffered_bytes_per_peer: usize,
    /// The same over all peers of the node; a quarter of it is kept for peers that hold little,
    /// so several identities flooding at once still leave everyone else served.
    pub max_buffered_bytes: usize,
    /// Open connections (and handshakes) the node accepts in all.
    pub max_connections: usize,
    /// Open connections (and handshakes) the node accepts from one IP address.
    pub max_connections_per_address: usize,
    /// QUIC idle timeout of a connection.
    pub idle_timeout_ms: u64,
}

/// Streams a node grants one user connection unless configured otherwise; clients keep no more
/// requests in flight on a connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            max_payload_bytes: 16 << 20,
            frame_timeout_ms: 10_000,
            stream_idle_timeout_ms: 120_000,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_streams_per_node_connection: 4_096,
            max_streams: 16_384,
            max_buffered_bytes_per_peer: 24 << 20,
            max_buffered_bytes: 48 << 20,
            max_connections: 4_096,
            max_connections_per_address: 256,
            idle_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockConfig {
    /// Remote timestamps further ahead than this are rejected.
    pub max_offset_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { max_offset_ms: crate::clock::DEFAULT_MAX_OFFSET.as_millis() as u64 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct KvLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most entries one scan returns.
    pub max_scan_limit: u32,
    /// Most bytes of keys and values one scan answer carries (its first entry comes back
    /// whatever its size); below wire.max-payload-bytes, so every answer fits a message.
    /// Default: three quarters of wire.max-payload-bytes.
    pub max_scan_bytes: Option<usize>,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits { max_key_bytes: 64 << 10, max_value_bytes: 8 << 20, max_scan_limit: 10_000, max_scan_bytes: None }
    }
}

/// Room in a message for everything around the keys and values of an answer.
const ANSWER_FRAMING: u64 = 4 << 10;

impl KvLimits {
    /// The scan answer bound for messages of `max_payload` bytes.
    pub fn scan_bytes(&self, max_payload: u64) -> usize {
        self.max_scan_bytes.unwrap_or((max_payload / 4 * 3) as usize)
    }

    /// Whether these limits let every request and answer fit a message of `max_payload` bytes.
    pub fn check(&self, max_payload: u64) -> Result<(), String> {
        let scan_bytes = self.scan_bytes(max_payload);
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 || self.max_scan_limit == 0 || scan_bytes == 0 {
            return Err("kv.max-key-bytes, max-value-bytes, max-scan-limit and max-scan-bytes must be positive".into());
        }
        let largest_entry = (self.max_key_bytes as u64).saturating_add(self.max_value_bytes as u64);
        if largest_entry.saturating_add(ANSWER_FRAMING) > max_payload {
            return Err(format!(
                "kv.max-key-bytes plus kv.max-value-bytes ({largest_entry}) must leave {ANSWER_FRAMING} bytes of \
                 wire.max-payload-bytes ({max_payload}) so a maximal entry fits in a message"
            ));
        }
        if (scan_bytes as u64).saturating_add(ANSWER_FRAMING) > max_payload {
            return Err(format!(
                "kv.max-scan-bytes ({scan_bytes}) must leave {ANSWER_FRAMING} bytes of wire.max-payload-bytes ({max_payload})"
            ));
        }
        Ok(())
    }
}

/// Raft timing and log retention, the same for every range on the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept behind a snapshot, so briefly lagging followers catch up from the log.
    pub keep_entries_after_snapshot: u64,
    /// Most entries in one append-entries message.
    pub max_entries_per_append: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            // openraft 0.9 also gives up on an append-entries call after one heartbeat interval,
            // and the answer waits for the follower's fsync: at 100 ms a busy shared disk trips
            // it, the leader resends, followers miss heartbeats and start needless elections.
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            max_entries_per_append: 300,
        }
    }
}

/// How this node forms its constellation: the founders, or a node to join through. Membership
/// after that is gossip's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConstellationConfig {
    /// The constellation's name, as its certificates name it (`pleiades://<name>/node/<id>`).
    pub name: String,
    /// The founding members as `id=host:port`; every founder must be given the same list.
    pub peers: Vec<String>,
    /// Address of a running node to join through (for a node that is not a founder).
    pub join: Option<String>,
    /// Address other nodes reach this node at; defaults to the QUIC listen address.
    pub advertise: Option<String>,
    /// Data ranges the keyspace is cut into at bootstrap (plus the meta range).
    pub initial_ranges: u32,
    /// Replicas per range (fewer when the constellation has fewer nodes).
    pub replication_factor: u32,
    /// How long a node declared dead by gossip may stay dead before its replicas are rebuilt
    /// elsewhere; 0 never rebuilds them automatically.
    pub replace_dead_after_ms: u64,
    /// A range whose live data passes this, or whose versions (history included) pass four
    /// times this, splits at its middle key; down to kilobytes for tests.
    pub range_split_bytes: u64,
    /// Two neighbouring ranges smaller than this together, both cold (under a quarter of the
    /// load split rate), merge; at most half the split size. Unset: a quarter of the split size
    /// (CockroachDB's range_min_bytes to range_max_bytes); 0 never merges.
    pub range_merge_bytes: Option<u64>,
    /// A range busier than this (reads + writes per second, over 10 s) splits at the median of
    /// the keys it was asked for; 0 never splits for load.
    pub load_split_requests_per_second: f64,
    /// How far (a fraction of the mean) a node's replica count may stray before replicas move.
    pub rebalance_threshold: f64,
    /// Zones (the gossip tag `zone`) where range leaders should be, most preferred first.
    pub lease_preferences: Vec<String>,
    /// Whether the constellation reshapes itself (splits, rebalancing, leadership balance);
    /// repairs of lost replicas happen regardless.
    pub rebalance: bool,
}

impl ConstellationConfig {
    /// The merge size in effect (see `range_merge_bytes`).
    pub fn merge_bytes(&self) -> u64 {
        self.range_merge_bytes.unwrap_or(self.range_split_bytes / 4)
    }
}

impl Default for ConstellationConfig {
    fn default() -> Self {
        ConstellationConfig {
            name: "local".into(),
            peers: Vec::new(),
            join: None,
            advertise: None,
            initial_ranges: 4,
            replication_factor: 3,
            // CockroachDB's time_until_store_dead.
            replace_dead_after_ms: 300_000,
            // CockroachDB's range_max_bytes.
            range_split_bytes: 512 << 20,
            range_merge_bytes: None,
            // CockroachDB's kv.range_split.load_qps_threshold.
            load_split_requests_per_second: 2_500.0,
            rebalance_threshold: 0.2,
            lease_preferences: Vec::new(),
            rebalance: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GossipProfile {
    /// One data centre: fast probes, short suspicion.
    #[default]
    Lan,
    /// Across regions: slower probes, longer suspicion.
    Wan,
    /// Loopback test constellations.
    Local,
}

/// SWIM/Lifeguard membership: the timing profile, any value of it overridden, the nodes to
/// join through, and the tags this node announces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct GossipConfig {
    pub profile: GossipProfile,
    /// `host:port` of nodes to join the gossip through; DNS names are re-resolved on every
    /// attempt until joined. Default: the founders and the `join` address.
    pub seeds: Vec<String>,
    /// Metadata spread to every member (zone, rack ...); `version` and `ranges` are added.
    pub tags: std::collections::BTreeMap<String, String>,
    pub probe_interval_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub indirect_checks: Option<usize>,
    pub suspicion_mult: Option<u32>,
    pub suspicion_max_timeout_mult: Option<u32>,
    pub gossip_interval_ms: Option<u64>,
    pub gossip_nodes: Option<usize>,
    pub retransmit_mult: Option<u32>,
    pub push_pull_interval_ms: Option<u64>,
    /// Gossip messages a second one member may send this node, on average (bursts of twice
    /// that); more are dropped, so a flooding member cannot crowd out the others' probes.
    pub max_messages_per_peer: u32,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            profile: GossipProfile::default(),
            seeds: Vec::new(),
            tags: Default::default(),
            probe_interval_ms: None,
            probe_timeout_ms: None,
            indirect_checks: None,
            suspicion_mult: None,
            suspicion_max_timeout_mult: None,
            gossip_interval_ms: None,
            gossip_nodes: None,
            retransmit_mult: None,
            push_pull_interval_ms: None,
            // SWIM sends a member a few messages a second; queries and joins come in bursts.
            max_messages_per_peer: 200,
        }
    }
}

impl GossipConfig {
    /// The profile's timing with the overrides applied, checked.
    pub fn swim_config(&self) -> Result<crate::gossip::swim::SwimConfig, ConfigError> {
        use crate::gossip::swim::SwimConfig;
        let mut swim = match self.profile {
            GossipProfile::Lan => SwimConfig::lan(),
            GossipProfile::Wan => SwimConfig::wan(),
            GossipProfile::Local => SwimConfig::local(),
        };
        macro_rules! override_with {
            ($($field:ident => $target:ident),* $(,)?) => {
                $(if let Some(value) = self.$field { swim.$target = value; })*
            };
        }
        override_with! {
            probe_interval_ms => probe_interval,
            probe_timeout_ms => probe_timeout,
            indirect_checks => indirect_checks,
            suspicion_mult => suspicion_mult,
            suspicion_max_timeout_mult => suspicion_max_timeout_mult,
            gossip_interval_ms => gossip_interval,
            gossip_nodes => gossip_nodes,
            retransmit_mult => retransmit_mult,
            push_pull_interval_ms => push_pull_interval,
        }
        let invalid = |msg: &str| Err(ConfigError::Invalid(format!("gossip: {msg}")));
        if swim.probe_interval == 0 || swim.probe_timeout == 0 || swim.gossip_interval == 0 {
            return invalid("probe-interval-ms, probe-timeout-ms and gossip-interval-ms must be positive");
        }
        if swim.probe_timeout >= swim.probe_interval {
            return invalid("probe-timeout-ms must be below probe-interval-ms");
        }
        if swim.suspicion_mult < 1 || swim.suspicion_max_timeout_mult < 1 || swim.retransmit_mult < 1 {
            return invalid("suspicion-mult, suspicion-max-timeout-mult and retransmit-mult must be at least 1");
        }
        if swim.gossip_nodes == 0 || swim.push_pull_interval < swim.probe_interval {
            return invalid("gossip-nodes must be positive and push-pull-interval-ms at least probe-interval-ms");
        }
        // The node adds `version` and `ranges` (two tags, at most 64 bytes) to these.
        crate::gossip::codec::check_tag_limits(self.tags.iter(), 2, 64)
            .map_err(|e| ConfigError::Invalid(format!("gossip: tags: {e}")))?;
        Ok(swim)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RealtimeConfig {
    /// SCHED_FIFO priority, 1 to 98.
    pub priority: i32,
}

/// How a pod of a StatefulSet finds its identity and its peers: its ordinal (from `POD_NAME`)
/// gives its node id; the first `founders` ordinals found the constellation, the others join
/// through the client Service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesConfig {
    /// Name of the Constellation resource (and of the StatefulSet).
    pub constellation: String,
    /// The headless Service that gives each pod a DNS name.
    pub peer_service: String,
    /// The Service in front of every ready pod.
    pub client_service: String,
    /// How many of the first ordinals found the constellation.
    pub founders: u32,
    /// Make this pod's own key and have the operator sign its certificate (through a CSR in the
    /// pod's status entry) instead of using configured `tls.cert` and `tls.key`.
    #[serde(default)]
    pub request_certificate: bool,
    /// The pod's annotations as the downward API writes them: where the operator leaves the
    /// zone and region of the Kubernetes node the pod runs on. Unset: zones come from
    /// `[gossip] tags` only.
    #[serde(default)]
    pub pod_annotations: Option<PathBuf>,
}

/// The settings a running node re-reads from `live-config` (what the operator pushes without a
/// restart). Absent keys keep their values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LiveConfig {
    pub log_level: Option<String>,
    pub kv: Option<KvLimits>,
}

impl LiveConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Applies this file over `config` (at start; later changes go through `node::live`).
    pub fn apply_to(&self, config: &mut NodeConfig) {
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
        if let Some(kv) = &self.kv {
            config.kv = kv.clone();
        }
    }
}

/// One founding member from `id=host:port`.
pub fn parse_peer(peer: &str) -> Result<(u64, String), ConfigError> {
    let invalid = || ConfigError::Invalid(format!("peer {peer:?} is not id=host:port"));
    let (id, addr) = peer.split_once('=').ok_or_else(invalid)?;
    let id: u64 = id.trim().parse().map_err(|_| invalid())?;
    let addr = addr.trim();
    if id == 0 || addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
        return Err(invalid());
    }
    Ok((id, addr.to_string()))
}

impl NodeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Checks what serde cannot: ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.wire.max_payload_bytes == 0 {
            return invalid("wire.max-payload-bytes must be positive".into());
        }
        let wire = &self.wire;
        if wire.frame_timeout_ms == 0 || wire.stream_idle_timeout_ms == 0 {
            return invalid("wire.frame-timeout-ms and wire.stream-idle-timeout-ms must be positive".into());
        }
        if wire.max_streams_per_connection == 0 || wire.max_streams_per_node_connection == 0 || wire.max_streams == 0 {
            return invalid(
                "wire.max-streams-per-connection, max-streams-per-node-connection and max-streams must be positive"
                    .into(),
            );
        }
        // A maximal message and the read in progress beside it must fit, or it could never arrive.
        let least_buffer = wire.max_payload_bytes.saturating_add(1 << 20);
        if (wire.max_buffered_bytes_per_peer as u64) < least_buffer {
            return invalid(format!(
                "wire.max-buffered-bytes-per-peer ({}) must be at least wire.max-payload-bytes plus 1 MiB ({least_buffer})",
                wire.max_buffered_bytes_per_peer
            ));
        }
        // A peer holding much draws only on the three quarters that are not the reserve.
        if (wire.max_buffered_bytes - wire.max_buffered_bytes / 4) < wire.max_buffered_bytes_per_peer {
            return invalid(
                "three quarters of wire.max-buffered-bytes must be at least wire.max-buffered-bytes-per-peer".into(),
            );
        }
        self.kv.check(self.wire.max_payload_bytes).map_err(ConfigError::Invalid)?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key must be given together".into());
        }
        if self.wire.max_connections == 0 || self.wire.max_connections_per_address == 0 {
            return invalid("wire.max-connections and wire.max-connections-per-address must be positive".into());
        }
        pleiades_proto::identity::check_name(&self.constellation.name)
            .map_err(|e| ConfigError::Invalid(format!("constellation.name: {e}")))?;
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return invalid("raft.election-timeout-min-ms must exceed raft.heartbeat-interval-ms (> 0)".into());
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return invalid("raft.election-timeout-max-ms must exceed raft.election-timeout-min-ms".into());
        }
        if raft.snapshot_after_entries == 0 || raft.max_entries_per_append == 0 {
            return invalid("raft.snapshot-after-entries and raft.max-entries-per-append must be positive".into());
        }
        self.gossip.swim_config()?;
        if self.gossip.max_messages_per_peer == 0 {
            return invalid("gossip.max-messages-per-peer must be positive".into());
        }
        let constellation = &self.constellation;
        if !(1..=1024).contains(&constellation.initial_ranges) {
            return invalid("constellation.initial-ranges must be 1 to 1024".into());
        }
        if constellation.range_split_bytes < 1024 {
            return invalid("constellation.range-split-bytes must be at least 1024".into());
        }
        if constellation.range_merge_bytes.is_some_and(|merge| merge > constellation.range_split_bytes / 2) {
            return invalid(
                "constellation.range-merge-bytes must be at most half of range-split-bytes, or a merged range \
                 would split again"
                    .into(),
            );
        }
        if !constellation.load_split_requests_per_second.is_finite()
            || constellation.load_split_requests_per_second < 0.0
        {
            return invalid("constellation.load-split-requests-per-second must be 0 or more".into());
        }
        if !(0.01..=1.0).contains(&constellation.rebalance_threshold) {
            return invalid("constellation.rebalance-threshold must be 0.01 to 1".into());
        }
        if !matches!(constellation.replication_factor, 1 | 3 | 5) {
            return invalid("constellation.replication-factor must be 1, 3 or 5".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        for peer in &constellation.peers {
            let (id, _) = parse_peer(peer)?;
            if !ids.insert(id) {
                return invalid(format!("node id {id} appears twice in constellation.peers"));
            }
        }
        if !constellation.peers.is_empty() && constellation.join.is_some() {
            return invalid("give constellation.peers (a founder) or constellation.join, not both".into());
        }
        if !constellation.peers.is_empty() && !self.node_id.is_some_and(|id| ids.contains(&id)) {
            return invalid("a founder's node-id must be one of the ids in constellation.peers".into());
        }
        if self.listen.port() != 0 && self.listen == self.http {
            return invalid(format!("listen and http are both {}", self.listen));
        }
        if let Some(realtime) = &self.realtime {
            if !(1..=98).contains(&realtime.priority) {
                return invalid("realtime.priority must be 1 to 98".into());
            }
        }
        if let Some(k8s) = &self.kubernetes {
            if k8s.constellation.is_empty() || k8s.peer_service.is_empty() || k8s.client_service.is_empty() {
                return invalid("kubernetes.constellation, peer-service and client-service must be set".into());
            }
            if k8s.founders == 0 {
                return invalid("kubernetes.founders must be positive".into());
            }
        }
        self.storage.validate().map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotated example in the README is what users copy: it must parse and be valid.
    #[test]
    fn the_readme_example_config_parses_and_validates() {
        let readme = include_str!("../../README.md");
        let example = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).unwrap();
        let config: NodeConfig = toml::from_str(example).unwrap_or_else(|e| panic!("README example: {e}"));
        config.validate().unwrap();
    }

    #[test]
    fn a_full_file_parses_with_kebab_case_keys() {
        let config: NodeConfig = toml::from_str(
            r#"
            node-id = 7
            listen = "127.0.0.1:9000"
            http = "127.0.0.1:9001"
            data-dir = "/var/lib/pleiades"
            log-format = "json"
            [wire]
            max-payload-bytes = 1048576
            [clock]
            max-offset-ms = 250
            [kv]
            max-key-bytes = 1024
            max-value-bytes = 4096
            "#,
        )
        .unwrap();
        assert_eq!(config.node_id, Some(7));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.wire.max_payload_bytes, 1 << 20);
        assert_eq!(config.clock.max_offset_ms, 250);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let err = toml::from_str::<NodeConfig>("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let err = toml::from_str::<NodeConfig>("listen = \"not an address\"").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let mut config = NodeConfig::default();
        config.kv.max_value_bytes = 32 << 20;
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("kv.max-value-bytes"), "{err}");
    }

    #[test]
    fn gossip_profiles_overrides_and_bad_values() {
        let config: NodeConfig = toml::from_str(
            r#"
            [gossip]
            profile = "wan"
            seeds = ["pleiades-0.pleiades-peers.db.svc:7400"]
            probe-interval-ms = 8000
            tags = { zone = "eu-west-1a" }
            "#,
        )
        .unwrap();
        let swim = config.gossip.swim_config().unwrap();
        assert_eq!(swim.probe_interval, 8_000, "the override wins");
        assert_eq!(swim.probe_timeout, crate::gossip::swim::SwimConfig::wan().probe_timeout, "the rest is WAN");
        assert_eq!(config.gossip.tags["zone"], "eu-west-1a");
        for (bad, says) in [
            ("probe-timeout-ms = 1000\nprobe-interval-ms = 500", "probe-timeout-ms must be below"),
            ("gossip-interval-ms = 0", "must be positive"),
            ("suspicion-mult = 0", "at least 1"),
            ("tags = { \"\" = \"x\" }", "tags"),
        ] {
            let config: NodeConfig = toml::from_str(&format!("[gossip]\n{bad}")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = toml::from_str::<NodeConfig>("[gossip]\nprofile = \"lan2\"").unwrap_err();
        assert!(err.to_string().contains("profile"), "{err}");
    }
}
