//! The node process: opens storage, starts the clock, serves PWP over QUIC and the
//! observability endpoints, and shuts down cleanly.

pub mod auth;
pub mod drain;
mod fence;
pub mod gossip;
pub mod kubernetes;
mod kv;
pub mod live;
mod system;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pleiades_proto::payload_type;
use pleiades_proto::v1::{
    DecommissionRequest, DecommissionResponse, HealthRequest, MembersRequest, NodeInfoRequest, QueryRequest,
    QueryResponse, RaftRequest, RangeAdminRequest, RangeStatusRequest, RangeStatusResponse,
};
use pleiades_proto::wire::{Service, ServiceDirectory, ServiceHealth, ServiceTypeStatus};
use prometheus_client::registry::Registry;
use prost::Message;
use tracing::{error, info, warn};

use crate::clock::{ClockError, Hlc, UpperBoundStore, DEFAULT_PERSIST_WINDOW};
use crate::config::{parse_peer, ConfigError, NodeConfig};
use crate::observe::{Health, HttpState, Metrics, OperationLabels};
use crate::range::members::MemberView;
use crate::range::planner::PlannerSettings;
use crate::range::store::{self, ReplicaError, Replicas};
use crate::range::table::DescriptorTable;
use crate::range::Ranges;
use crate::storage::{Storage, StorageError};
use crate::transport::peer::{Denials, Peer};
use crate::transport::pool::Peers;
use crate::transport::server::{self, AcceptSettings, Dispatch, DispatchError, StreamSettings};
use crate::transport::tls::{QuicLimits, TlsError};
use tls::NodeTls;

pub use kv::KvService;
pub use system::SystemService;

/// QUIC idle timeout of connections to other nodes.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping node waits for the writes it already proposed (milliseconds, normally)
/// before it hands its leaderships over anyway.
const PROPOSALS_SETTLE_LIMIT: Duration = Duration::from_secs(1);
/// How long a stopping node waits for its connections' close frames to go out.
const CLOSE_FRAMES_SENT_WITHIN: Duration = Duration::from_millis(200);
/// How long a stopping node tries to hand its leaderships over before it drains anyway: two
/// tries of one follower each, well inside Kubernetes' default 30 s grace.
const LEADERSHIP_HANDOVER_LIMIT: Duration = Duration::from_secs(3);

/// Node-local keys.
const NODE_ID_KEY: &[u8] = b"node_id";
const STORAGE_FORMAT_KEY: &[u8] = b"storage_format";
/// The on-disk layout this binary reads and writes. Raise it with any change an older binary
/// would misread; a data directory stamped newer is refused, never half-understood.
const STORAGE_FORMAT: u64 = 1;
const HLC_UPPER_BOUND_KEY: &[u8] = b"hlc_wall_upper_bound";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("clock: {0}")]
    Clock(#[from] ClockError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("data directory belongs to node {stored}, but node id {configured} was configured")]
    NodeIdMismatch { stored: u64, configured: u64 },
    #[error(
        "the data directory is in storage format {stored}, newer than this binary's {supported}: a downgrade \
         across storage formats is refused; run a release that reads format {stored}"
    )]
    NewerStorageFormat { stored: u64, supported: u64 },
    #[error("corrupt node-local record {key}: {detail}")]
    CorruptLocal { key: &'static str, detail: String },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("replication: {0}")]
    Replica(#[from] ReplicaError),
    #[error("certificate: {0}")]
    Certificate(#[from] kubernetes::certificate::CertificateError),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| NodeError::Task(e.to_string()))
}

fn decode_u64(key: &'static str, bytes: &[u8]) -> Result<u64, NodeError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| NodeError::CorruptLocal { key, detail: format!("expected 8 bytes, found {}", bytes.len()) })?;
    Ok(u64::from_be_bytes(array))
}

/// The node id stored in the data directory, else the configured one, else a random one; stored.
/// Stamps a data directory with this binary's storage format, or refuses one written newer.
fn check_storage_format(storage: &Storage) -> Result<(), NodeError> {
    let stored = storage.get_local(STORAGE_FORMAT_KEY)?.map(|b| decode_u64("storage_format", &b)).transpose()?;
    match stored {
        Some(stored) if stored > STORAGE_FORMAT => {
            Err(NodeError::NewerStorageFormat { stored, supported: STORAGE_FORMAT })
        }
        Some(stored) if stored == STORAGE_FORMAT => Ok(()),
        // New, older or from before the stamp: this binary reads it and now owns the layout.
        _ => Ok(storage.put_local(STORAGE_FORMAT_KEY, &STORAGE_FORMAT.to_be_bytes())?),
    }
}

/// The node id this data directory belongs to, if it has one yet.
fn stored_node_id(storage: &Storage) -> Result<Option<u64>, NodeError> {
    storage.get_local(NODE_ID_KEY)?.map(|stored| decode_u64("node_id", &stored)).transpose()
}

/// Deletes a data directory's replicas and raft state (not its TLS material: a new certificate
/// is requested for the new id).
fn wipe_data(data_dir: &std::path::Path) -> Result<(), NodeError> {
    for part in ["db", "snapshots"] {
        let path = data_dir.join(part);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(NodeError::DataDir { path, source }),
        }
    }
    Ok(())
}

fn resolve_node_id(storage: &Storage, configured: Option<u64>) -> Result<u64, NodeError> {
    if let Some(stored) = stored_node_id(storage)? {
        return match configured {
            Some(configured) if configured != stored => Err(NodeError::NodeIdMismatch { stored, configured }),
            _ => Ok(stored),
        };
    }
    let id = configured.unwrap_or_else(random_node_id);
    storage.put_local(NODE_ID_KEY, &id.to_be_bytes())?;
    Ok(id)
}

fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in time and pid separates nodes started together.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Keeps the HLC's wall-time upper bound in node-local storage.
struct StoredUpperBound(Storage);

impl UpperBoundStore for StoredUpperBound {
    fn load(&self) -> Result<Option<u64>, ClockError> {
        let stored = self.0.get_local(HLC_UPPER_BOUND_KEY).map_err(|e| ClockError::Persist(e.to_string()))?;
        stored
            .map(|bytes| decode_u64("hlc_wall_upper_bound", &bytes).map_err(|e| ClockError::Persist(e.to_string())))
            .transpose()
    }

    fn persist(&self, wall_nanos: u64) -> Result<(), ClockError> {
        self.0.put_local(HLC_UPPER_BOUND_KEY, &wall_nanos.to_be_bytes()).map_err(|e| ClockError::Persist(e.to_string()))
    }
}

/// Opens the node's clock with its upper bound kept in `storage`.
pub fn open_clock(storage: &Storage, max_offset: Duration) -> Result<Hlc, ClockError> {
    let fault = std::env::var(crate::clock::FAULT_CLOCK_OFFSET_ENV).ok();
    let physical = crate::clock::node_physical_clock(fault.as_deref()).map_err(ClockError::Fault)?;
    if let Some(offset) = fault {
        warn!(offset_ms = %offset, "fault injection: this node's wall clock is moved");
    }
    Hlc::with_persistence(physical, max_offset, Arc::new(StoredUpperBound(storage.clone())), DEFAULT_PERSIST_WINDOW)
}

/// The services this node serves over PWP.
struct NodeServices {
    system: SystemService,
    kv: KvService,
    ranges: Arc<Ranges>,
    gossip: gossip::Gossip,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    authorizer: Arc<auth::Authorizer>,
    denials: Denials,
    insecure: bool,
}

const SERVED: [Service; 4] = [Service::System, Service::Kv, Service::Raft, Service::Gossip];

impl ServiceDirectory for NodeServices {
    fn service_type_status(&self, service: Service) -> ServiceTypeStatus {
        if matches!(service, Service::Raft | Service::Gossip) {
            // Peers replicate to and gossip with a node as soon as it listens, ready for
            // clients or not.
            ServiceTypeStatus::Ready
        } else if !SERVED.contains(&service) {
            // Messaging comes with a later release: retrying this node won't help.
            ServiceTypeStatus::UnavailableNonRetryable
        } else if self.health.is_ready() {
            ServiceTypeStatus::Ready
        } else {
            ServiceTypeStatus::UnavailableRetryable
        }
    }

    fn service_health(&self, service: Service) -> ServiceHealth {
        if SERVED.contains(&service) && self.health.is_ready() {
            ServiceHealth::Healthy
        } else {
            ServiceHealth::Unhealthy
        }
    }
}

impl Dispatch for NodeServices {
    async fn dispatch(
        &self,
        peer: &Peer,
        service: Service,
        kind: u8,
        payload: Bytes,
    ) -> Result<(u8, Bytes), DispatchError> {
        let denied = DispatchError::PermissionDenied;
        match (service, kind) {
            (Service::System, payload_type::system::NODE_INFO_REQUEST) => {
                let started = Instant::now();
                NodeInfoRequest::decode(payload).map_err(|e| DispatchError::malformed("NodeInfoRequest", e))?;
                let response = self.system.node_info().encode_to_vec();
                self.observe_system("node_info", started);
                Ok((payload_type::system::NODE_INFO_RESPONSE, response.into()))
            }
            (Service::System, payload_type::system::HEALTH_REQUEST) => {
                let started = Instant::now();
                HealthRequest::decode(payload).map_err(|e| DispatchError::malformed("HealthRequest", e))?;
                let response = self.system.health().encode_to_vec();
                self.observe_system("health", started);
                Ok((payload_type::system::HEALTH_RESPONSE, response.into()))
            }
            (Service::System, payload_type::system::RANGE_STATUS_REQUEST) => {
                let started = Instant::now();
                RangeStatusRequest::decode(payload).map_err(|e| DispatchError::malformed("RangeStatusRequest", e))?;
                let response =
                    RangeStatusResponse { node_id: self.system.node_id, replicas: self.ranges.store.status() }
                        .encode_to_vec();
                self.observe_system("range_status", started);
                Ok((payload_type::system::RANGE_STATUS_RESPONSE, response.into()))
            }
            (Service::System, payload_type::system::DECOMMISSION_REQUEST) => {
                let started = Instant::now();
                let request = DecommissionRequest::decode(payload)
                    .map_err(|e| DispatchError::malformed("DecommissionRequest", e))?;
                self.authorizer.require_admin(peer).map_err(denied)?;
                let response = match self.ranges.decommission(request.node_id).await {
                    Ok(moves) => DecommissionResponse {
                        moves: moves
                            .iter()
                            .map(|m| format!("range {}: node {} -> node {}", m.range_id, m.remove, m.add))
                            .collect(),
                        error: String::new(),
                    },
                    Err(e) => DecommissionResponse {
                        moves: Vec::new(),
                        error: format!("cannot decommission node {}: {e}", request.node_id),
                    },
                };
                self.observe_system("decommission", started);
                Ok((payload_type::system::DECOMMISSION_RESPONSE, response.encode_to_vec().into()))
            }
            (Service::System, payload_type::system::RANGE_ADMIN_REQUEST) => {
                let started = Instant::now();
                let request =
                    RangeAdminRequest::decode(payload).map_err(|e| DispatchError::malformed("RangeAdminRequest", e))?;
                self.authorizer.require_admin(peer).map_err(denied)?;
                let response = self.ranges.admin(request).await;
                self.observe_system("range_admin", started);
                Ok((payload_type::system::RANGE_ADMIN_RESPONSE, response.encode_to_vec().into()))
            }
            (Service::System, payload_type::system::MEMBERS_REQUEST) => {
                let started = Instant::now();
                MembersRequest::decode(payload).map_err(|e| DispatchError::malformed("MembersRequest", e))?;
                let response = self.gossip.members().await.unwrap_or_default();
                self.observe_system("members", started);
                Ok((payload_type::system::MEMBERS_RESPONSE, response.encode_to_vec().into()))
            }
            (Service::System, payload_type::system::QUERY_REQUEST) => {
                let started = Instant::now();
                let request = QueryRequest::decode(payload).map_err(|e| DispatchError::malformed("QueryRequest", e))?;
                // A query reaches every member: an admin's call.
                self.authorizer.require_admin(peer).map_err(denied)?;
                let response = match check_query(&request) {
                    Ok(timeout) => {
                        self.gossip.query(request.name, request.payload, timeout).await.unwrap_or_else(|| {
                            QueryResponse { error: "gossip is not running".into(), ..Default::default() }
                        })
                    }
                    Err(error) => QueryResponse { error, ..Default::default() },
                };
                self.observe_system("query", started);
                Ok((payload_type::system::QUERY_RESPONSE, response.encode_to_vec().into()))
            }
            (Service::Gossip, payload_type::gossip::ENVELOPE) => {
                let sender = self.gossip_sender(peer).map_err(denied)?;
                self.gossip.receive_streamed(&payload, sender).map_err(denied)?;
                Ok((payload_type::gossip::RECEIVED, Bytes::new()))
            }
            (Service::Raft, payload_type::raft::REQUEST) => {
                let request = RaftRequest::decode(payload).map_err(|e| DispatchError::malformed("RaftRequest", e))?;
                let caller = self.authorizer.require_node(peer, Some(request.from_node)).map_err(denied)?;
                // Known unless an --insecure node let an anonymous caller in.
                let caller = matches!(peer, Peer::Node(_)).then_some(caller);
                let response = self.ranges.handle(request, caller).await;
                Ok((payload_type::raft::RESPONSE, response.encode_to_vec().into()))
            }
            (Service::Kv, payload_type::kv::REQUEST) => {
                let response = self.kv.handle(peer, payload).await;
                Ok((payload_type::kv::RESPONSE, response.encode_to_vec().into()))
            }
            _ => Err(DispatchError::UnknownPayloadType { service, payload_type: kind }),
        }
    }

    fn datagram(&self, peer: &Peer, datagram: Bytes) {
        let received = self.gossip_sender(peer).and_then(|sender| self.gossip.receive_datagram(datagram, sender));
        if let Err(reason) = received {
            self.denials.record(&self.metrics, "gossip", peer, &reason);
        }
    }
}

/// A client's query, checked as a peer's would be; returns its deadline.
fn check_query(request: &QueryRequest) -> Result<Duration, String> {
    crate::gossip::codec::check_query(&request.name, request.payload.len(), request.timeout_ms)
        .map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(request.timeout_ms))
}

impl NodeServices {
    /// The node whose gossip a connection may carry: the one its certificate names (`None`, any,
    /// only on an `--insecure` node).
    fn gossip_sender(&self, peer: &Peer) -> Result<Option<u64>, String> {
        match peer {
            Peer::Insecure if self.insecure => Ok(None),
            peer => self.authorizer.require_node(peer, None).map(Some),
        }
    }

    fn observe_system(&self, op: &'static str, started: Instant) {
        self.metrics
            .system_request_seconds
            .get_or_create(&OperationLabels { op })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Asks the constellation, through `seed`, for this node's share of replicas until it has it.
/// A seed that is down or busy is retried; the node serves meanwhile.
pub(crate) async fn join_until_done(ranges: Arc<Ranges>, seed: String, joined: Arc<AtomicBool>) {
    for attempt in 1u64.. {
        match ranges.join(&seed).await {
            Ok(moves) => {
                info!(%seed, replicas_taken = moves.len(), "joined the constellation");
                joined.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => warn!(%seed, attempt, error = %e, "join incomplete; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(attempt.min(10))).await;
    }
}

/// Moves the replicas of `former` (this pod's retired node id, whose data was lost) to living
/// nodes, this one included, rather than waiting for the dead-member repair.
async fn rebuild_replicas_of(ranges: &Arc<Ranges>, former: crate::raft::NodeId) {
    for attempt in 1u64.. {
        match ranges.decommission(former).await {
            Ok(moves) => {
                info!(former, moved = moves.len(), "rebuilt the replicas of this pod's former node id");
                return;
            }
            Err(e) => warn!(former, attempt, error = %e, "cannot rebuild the former node id's replicas yet"),
        }
        tokio::time::sleep(Duration::from_secs(attempt.min(30))).await;
    }
}

/// Runs a node until `shutdown` resolves, then stops accepting, drains, flushes and closes
/// storage. The "node ready" log event carries the addresses actually bound (port 0 picks one).
pub async fn run(mut config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| NodeError::DataDir { path: config.data_dir.clone(), source })?;
    let db_path = config.data_dir.join("db");
    let storage_config = config.storage.clone();
    let open_storage = || {
        let (db_path, storage_config) = (db_path.clone(), storage_config.clone());
        blocking(move || Storage::open(&db_path, &storage_config))
    };
    let mut storage = open_storage().await??;
    let pod = config.kubernetes.as_ref().map(kubernetes::Pod::from_env).transpose()?;
    if let Err(refused) = check_storage_format(&storage) {
        if let (Some(k8s), Some(pod)) = (&config.kubernetes, &pod) {
            let message = format!("{}{refused}", pleiades_crds::INCOMPATIBLE_STORAGE);
            kubernetes::identity::report(k8s, pod, stored_node_id(&storage)?.unwrap_or_default(), None, message).await;
        }
        return Err(refused);
    }
    // This pod's former node id, whose volume was lost: its replicas are rebuilt once joined.
    let mut replaced = None;
    if let (Some(k8s), Some(pod)) = (config.kubernetes.clone(), &pod) {
        let stored = stored_node_id(&storage)?;
        let settled = kubernetes::identity::settle(&k8s, pod, stored).await?;
        if settled.wipe {
            warn!(
                ?stored,
                node_id = settled.node_id,
                "this volume belongs to a retired member: wiping it to join anew"
            );
            blocking(move || storage.close()).await??;
            wipe_data(&config.data_dir)?;
            storage = open_storage().await??;
        }
        replaced = settled.replaces;
        kubernetes::adopt(&mut config, &k8s, pod, settled.node_id, settled.join)?;
    }
    // This pod's own certificate (its key stays on its volume); points config.tls at it.
    let certificate_task = match (config.kubernetes.clone(), &pod) {
        (Some(k8s), Some(pod)) if k8s.request_certificate => {
            Some(tokio::spawn(kubernetes::certificate::ensure_certificate(&mut config, &k8s, pod).await?.run()))
        }
        _ => None,
    };
    config.validate()?;
    let started = Instant::now();
    let node_id = resolve_node_id(&storage, config.node_id)?;
    let hlc = Arc::new(open_clock(&storage, Duration::from_millis(config.clock.max_offset_ms))?);

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    storage.metrics().register(&mut registry);

    let health = Arc::new(Health::default());
    let limits = QuicLimits {
        max_streams: config.wire.max_streams_per_connection,
        idle_timeout: Duration::from_millis(config.wire.idle_timeout_ms),
    };
    if config.insecure {
        health.set_insecure();
        warn!("{}", crate::observe::INSECURE_WARNING);
    }
    // The same endpoint dials the other nodes with this node's certificate. Peer connections
    // idle out after a few seconds of silence (keep-alives flow every third of that), so a
    // peer that died or restarted is redialled quickly.
    let peer_limits = QuicLimits::dialler(PEER_IDLE_TIMEOUT);
    let node_tls = NodeTls::resolve(&config, node_id, limits, peer_limits)?;
    let material = node_tls.load()?;
    node_tls.export_expiry(&metrics);
    let endpoint = crate::transport::endpoint(config.listen, Some(node_tls.server_config(&material)?))
        .map_err(|source| NodeError::Bind { what: "QUIC", addr: config.listen, source })?;
    let quic_addr =
        endpoint.local_addr().map_err(|source| NodeError::Bind { what: "QUIC", addr: config.listen, source })?;

    let advertise = config.constellation.advertise.clone().unwrap_or_else(|| quic_addr.to_string());
    let mut founders = config.constellation.peers.iter().map(|p| parse_peer(p)).collect::<Result<Vec<_>, _>>()?;
    if founders.is_empty() && config.constellation.join.is_none() {
        // Neither founder nor joiner: a constellation of one.
        founders.push((node_id, advertise.clone()));
    }
    let peers = Arc::new(Peers::new(
        endpoint.clone(),
        node_tls.client_config(&material)?,
        Duration::from_secs(3),
        config.constellation.name.clone(),
    ));
    let table = Arc::new(DescriptorTable::default());
    let replicas = Replicas::new(
        node_id,
        advertise.clone(),
        storage.clone(),
        hlc.clone(),
        peers.clone(),
        store::raft_config(&config.raft)?,
        config.data_dir.join("snapshots"),
        metrics.clone(),
        config.wire.max_payload_bytes,
        table.clone(),
    )?;
    let constellation = &config.constellation;
    let tag = |name: &str| config.gossip.tags.get(name).cloned().unwrap_or_default();
    let members = Arc::new(MemberView::new(node_id, advertise.clone(), tag("zone"), tag("region")));
    let planner_settings = PlannerSettings {
        replication_factor: constellation.replication_factor,
        split_bytes: constellation.range_split_bytes,
        merge_bytes: constellation.merge_bytes(),
        load_split_requests_per_second: match constellation.load_split_requests_per_second {
            0.0 => f64::INFINITY,
            rate => rate,
        },
        rebalance_threshold: constellation.rebalance_threshold,
        lease_preferences: constellation.lease_preferences.clone(),
        ..PlannerSettings::default()
    };
    let ranges = Ranges::new(
        replicas.clone(),
        table,
        members,
        peers.clone(),
        hlc.clone(),
        metrics.clone(),
        planner_settings,
        constellation.rebalance,
        (constellation.replace_dead_after_ms > 0).then(|| Duration::from_millis(constellation.replace_dead_after_ms)),
    );
    let gossip_metrics = gossip::GossipMetrics::new(&mut registry);
    let seeds = if config.gossip.seeds.is_empty() {
        // The founders and the node to join through.
        founders.iter().map(|(_, addr)| addr.clone()).chain(config.constellation.join.clone()).collect()
    } else {
        config.gossip.seeds.clone()
    };
    let gossip_settings = gossip::GossipSettings {
        node_id,
        advertise: advertise.clone(),
        swim: config.gossip.swim_config()?,
        seeds,
        tags: config.gossip.tags.clone(),
        max_messages_per_peer: (!config.insecure).then_some(config.gossip.max_messages_per_peer),
    };
    let (gossip, gossip_task) =
        gossip::start(gossip_settings, peers.clone(), ranges.clone(), hlc.clone(), gossip_metrics);

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let refresh = {
        let replicas = replicas.clone();
        let storage = storage.clone();
        let metrics = metrics.clone();
        let hlc = hlc.clone();
        Box::new(move || {
            if let Ok(stats) = storage.engine_stats() {
                metrics.rocksdb_memtable_bytes.set(stats.memtable_bytes as i64);
                metrics.rocksdb_sst_bytes.set(stats.sst_bytes as i64);
                metrics.rocksdb_pending_compaction_bytes.set(stats.pending_compaction_bytes as i64);
            }
            replicas.export_metrics();
            let rejections = hlc.offset_rejections();
            let counted = metrics.hlc_offset_rejections.get();
            metrics.hlc_offset_rejections.inc_by(rejections.saturating_sub(counted));
        })
    };
    let ranges_on = {
        let table = ranges.table.clone();
        Box::new(move |node: u64| {
            let descriptors = table.descriptors().into_iter();
            descriptors.filter(|d| d.replicas.contains(&node)).map(|d| d.range_id).collect()
        })
    };
    let http_state = Arc::new(HttpState { registry, health: health.clone(), refresh, ranges_on });
    let (http_addr, http_server) = crate::observe::serve_http(config.http, http_state, async {
        let _ = http_stopped.await;
    })
    .await
    .map_err(|source| NodeError::Bind { what: "HTTP", addr: config.http, source })?;
    let http_task = tokio::spawn(http_server);

    let clock_task = {
        let hlc = hlc.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DEFAULT_PERSIST_WINDOW / 4);
            loop {
                tick.tick().await;
                let hlc = hlc.clone();
                match tokio::task::spawn_blocking(move || hlc.persist_ahead()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!(error = %e, "cannot persist the clock's upper bound");
                        health.set_not_ready(format!("clock: {e}"));
                    }
                    Err(e) => error!(error = %e, "clock persistence task failed"),
                }
            }
        })
    };

    let kv_limits = Arc::new(live::LiveKvLimits::new(&config.kv, config.wire.max_payload_bytes));
    let authorizer = Arc::new(auth::Authorizer::new(config.insecure));
    let services = Arc::new(NodeServices {
        system: SystemService {
            node_id,
            listen: quic_addr.to_string(),
            http: http_addr.to_string(),
            started,
            hlc: hlc.clone(),
            health: health.clone(),
            services: SERVED.iter().map(|s| u32::from(u8::from(*s))).collect(),
        },
        kv: KvService::new(ranges.clone(), hlc.clone(), kv_limits.clone(), metrics.clone(), authorizer.clone()),
        ranges: ranges.clone(),
        gossip: gossip.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        authorizer: authorizer.clone(),
        denials: Denials::default(),
        insecure: config.insecure,
    });
    let settings = Arc::new(StreamSettings::new(&config.wire));
    let accept = Arc::new(AcceptSettings {
        constellation: config.constellation.name.clone(),
        insecure: config.insecure,
        max_connections: config.wire.max_connections,
        max_connections_per_address: config.wire.max_connections_per_address,
    });
    let accept_task = tokio::spawn(server::accept_loop(
        endpoint.clone(),
        services.clone(),
        accept,
        settings.clone(),
        metrics.clone(),
    ));
    let reload_task = tokio::spawn(node_tls.watch(material, endpoint.clone(), peers.clone(), metrics.clone()));
    let auth_task = tokio::spawn(auth::refresh(authorizer, ranges.clone(), peers.clone()));

    // Replicas start once the endpoint serves, so founders starting together can reach each other.
    let founder_ids: Vec<crate::raft::NodeId> = founders.iter().map(|(id, _)| *id).collect();
    let layout = crate::range::placement::initial_layout(
        &founder_ids,
        config.constellation.initial_ranges,
        config.constellation.replication_factor,
    );
    replicas.start(&founders, layout).await?;
    let upkeep_task = tokio::spawn(ranges.clone().upkeep());
    let repair_task = tokio::spawn(ranges.clone().repair());
    let joined = Arc::new(AtomicBool::new(config.constellation.join.is_none()));
    let join_task = config.constellation.join.clone().map(|seed| {
        let (ranges, joined) = (ranges.clone(), joined.clone());
        tokio::spawn(async move {
            join_until_done(ranges.clone(), seed, joined).await;
            if let Some(former) = replaced {
                rebuild_replicas_of(&ranges, former).await;
            }
        })
    });
    let live_task = config.live_config.clone().map(|path| tokio::spawn(live::watch(path, kv_limits.clone())));
    let topology_task = config
        .kubernetes
        .as_ref()
        .and_then(|k| k.pod_annotations.clone())
        .map(|path| tokio::spawn(kubernetes::topology::follow(path, ranges.members.clone())));

    health.set_ready();
    let fence_task = tokio::spawn(fence::lead_nothing_while_fenced(
        hlc.clone(),
        replicas.clone(),
        peers.clone(),
        health.clone(),
        node_id,
    ));
    info!(node_id, listen = %quic_addr, http = %http_addr, data_dir = %config.data_dir.display(), "node ready");
    // By now every runtime thread has started and tried to apply it.
    crate::realtime::report();
    let reporter_task = pod.map(|pod| {
        let reporter = kubernetes::Reporter {
            constellation: config.kubernetes.as_ref().map(|k| k.constellation.clone()).unwrap_or_default(),
            pod,
            node_id,
            address: advertise.clone(),
            replication_factor: config.constellation.replication_factor as usize,
            join_seed: config.constellation.join.clone(),
            ranges: ranges.clone(),
            health: health.clone(),
            joined: joined.clone(),
        };
        tokio::spawn(Arc::new(reporter).run())
    });

    shutdown.await;
    let stopping = Instant::now();
    info!("shutting down: handing leaderships over, then draining streams and leaving the gossip");
    health.set_not_ready("shutting down");
    // Nothing new is proposed or moved from here on: writes go to the ranges' next leaders.
    upkeep_task.abort();
    repair_task.abort();
    fence_task.abort();
    for task in [join_task, live_task, reporter_task, certificate_task, topology_task].into_iter().flatten() {
        task.abort();
    }
    services.kv.start_draining();
    // Writes already admitted reach the log first: a follower asked to campaign must have them.
    let _writes_held = replicas.hold_writes(tokio::time::Instant::now() + PROPOSALS_SETTLE_LIMIT).await;
    let handed = drain::hand_over_leaderships(&replicas, &peers, node_id, LEADERSHIP_HANDOVER_LIMIT).await;
    info!(handed = handed.handed, kept = ?handed.kept, took = ?stopping.elapsed(), "leaderships handed over");
    gossip.leave().await;
    gossip_task.abort();
    let left = stopping.elapsed();
    endpoint.set_server_config(None);
    settings.start_draining();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let deadline = Instant::now() + grace;
    while metrics.pwp_streams_open.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if metrics.pwp_streams_open.get() > 0 {
        warn!(
            open_streams = metrics.pwp_streams_open.get(),
            ?grace,
            "closing streams still open after the grace period"
        );
    }
    let drained = stopping.elapsed();
    reload_task.abort();
    auth_task.abort();
    replicas.shutdown().await;
    let raft_stopped = stopping.elapsed();
    endpoint.close(quinn::VarInt::from_u32(0), b"node shutting down");
    // Time for the CONNECTION_CLOSE frames to leave, not for QUIC's whole draining period (three
    // probe timeouts, two seconds here at times): a peer that misses one times the connection out.
    let _ = tokio::time::timeout(CLOSE_FRAMES_SENT_WITHIN, endpoint.wait_idle()).await;
    let closed = stopping.elapsed();
    accept_task.abort();
    clock_task.abort();
    let _ = stop_http.send(());
    let _ = http_task.await;
    // Storage must be the last handle standing: the services held clones. (A RocksDB still
    // open when the process exits aborts it.)
    drop(services);
    drop(hlc);
    drop(replicas);
    drop(ranges);
    blocking(move || storage.close()).await??;
    info!(took = ?stopping.elapsed(), ?left, ?drained, ?raft_stopped, ?closed, "node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_written_by_a_newer_storage_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        check_storage_format(&storage).unwrap();
        check_storage_format(&storage).unwrap();
        storage.put_local(STORAGE_FORMAT_KEY, &(STORAGE_FORMAT + 1).to_be_bytes()).unwrap();
        let refused = check_storage_format(&storage).unwrap_err();
        assert!(matches!(refused, NodeError::NewerStorageFormat { .. }), "{refused}");
        assert!(refused.to_string().contains("downgrade"), "{refused}");
    }

    #[test]
    fn node_id_is_kept_and_a_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        let id = resolve_node_id(&storage, None).unwrap();
        assert_eq!(resolve_node_id(&storage, None).unwrap(), id);
        assert_eq!(resolve_node_id(&storage, Some(id)).unwrap(), id);
        let err = resolve_node_id(&storage, Some(id.wrapping_add(1))).unwrap_err();
        assert!(matches!(err, NodeError::NodeIdMismatch { .. }), "{err}");
    }

    #[test]
    fn clock_restarts_above_its_persisted_bound_in_real_storage() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let storage = Storage::open(dir.path(), &Default::default()).unwrap();
            let hlc = open_clock(&storage, Duration::from_millis(500)).unwrap();
            let ts = hlc.now().unwrap();
            drop(hlc);
            storage.close().unwrap();
            ts
        };
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        // A physical clock an hour behind still cannot reissue time.
        let behind = Arc::new(crate::clock::ManualClock::new(before.wall_nanos - 3_600_000_000_000));
        let hlc = Hlc::with_persistence(
            behind,
            Duration::from_millis(500),
            Arc::new(StoredUpperBound(storage.clone())),
            DEFAULT_PERSIST_WINDOW,
        )
        .unwrap();
        assert!(hlc.now().unwrap() > before);
    }
}
