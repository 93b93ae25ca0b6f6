//! The ranges this node hosts: one openraft group per replica, opened at start from the
//! node-local list, created at bootstrap from the founders' layout or on a leader's request,
//! and the routing table of every range descriptor the node knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use pleiades_proto::v1::{self, raft_request::Rpc, raft_response::Result as RaftResult};
use prost::Message;
use tracing::{info, warn};

use crate::clock::Hlc;
use crate::config::RaftSettings;
use crate::observe::{Metrics, RangeLabels};
use crate::raft::codec;
use crate::raft::log::RangeLog;
use crate::raft::network::{RangeNetworkFactory, RpcFailure};
use crate::raft::state_machine::{read_descriptors, RangeObserver, RangeSpan, RangeStateMachine};
use crate::raft::{NodeId, Raft, WalSyncer};
use crate::range::placement::{
    plan_decommission, plan_down_replicate, plan_join, plan_up_replicate, voters_after, Move,
};
use crate::storage::Storage;
use crate::transport::pool::Peers;

/// Range id of the meta range, which holds every range's descriptor.
pub const META_RANGE_ID: u64 = 1;
/// Node-local record of a hosted replica: `replica/` ++ range id.
const REPLICA_KEY_PREFIX: &[u8] = b"replica/";
/// How long a leader that moved its own replica away keeps heartbeating before it stops.
const STEP_ASIDE_DELAY: Duration = Duration::from_millis(500);
/// Node-local marker: this founder created its share of the initial layout (once, ever).
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";

#[derive(Debug, thiserror::Error)]
pub enum DecommissionError {
    /// A replica has nowhere to go: only another node (or a dead one back) unblocks it.
    #[error(transparent)]
    NoPlacement(crate::range::placement::PlanError),
    /// A move failed on the way; trying again may succeed.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("corrupt node-local replica record: {0}")]
    Corrupt(String),
}

/// Cuts the keyspace for a new constellation: the meta range plus `data_ranges` spans whose
/// split points are spread over the printable ASCII bytes '0'..'z' (so textual keys spread
/// out until load-based splitting exists), each replicated on `replication_factor` founders
/// (all of them when there are fewer), rotated so replicas and leaders spread evenly.
pub fn initial_layout(founders: &[NodeId], data_ranges: u32, replication_factor: u32) -> Vec<v1::RangeDescriptor> {
    let mut nodes: Vec<NodeId> = founders.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return Vec::new();
    }
    let replicas_per_range = (replication_factor as usize).min(nodes.len());
    let replicas_of =
        |index: usize| -> Vec<NodeId> { (0..replicas_per_range).map(|k| nodes[(index + k) % nodes.len()]).collect() };
    let (low, high) = (u32::from(b'0'), u32::from(b'z') + 1);
    let split = |j: u32| vec![(low + j * (high - low) / data_ranges) as u8];
    let mut layout = vec![v1::RangeDescriptor {
        range_id: META_RANGE_ID,
        replicas: replicas_of(0),
        generation: 1,
        meta: true,
        ..Default::default()
    }];
    for j in 0..data_ranges {
        layout.push(v1::RangeDescriptor {
            range_id: META_RANGE_ID + 1 + u64::from(j),
            start_key: if j == 0 { Vec::new() } else { split(j) },
            end_key: if j + 1 == data_ranges { Vec::new() } else { split(j + 1) },
            replicas: replicas_of(j as usize + 1),
            generation: 1,
            meta: false,
        });
    }
    layout
}

pub fn descriptor_contains(descriptor: &v1::RangeDescriptor, key: &[u8]) -> bool {
    !descriptor.meta
        && key >= descriptor.start_key.as_slice()
        && (descriptor.end_key.is_empty() || key < descriptor.end_key.as_slice())
}

pub fn raft_config(settings: &RaftSettings) -> Result<openraft::Config, ReplicaError> {
    openraft::Config {
        cluster_name: "pleiades".into(),
        heartbeat_interval: settings.heartbeat_interval_ms,
        election_timeout_min: settings.election_timeout_min_ms,
        election_timeout_max: settings.election_timeout_max_ms,
        max_payload_entries: settings.max_entries_per_append,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: settings.keep_entries_after_snapshot,
        // Chunks well under the wire's payload limit.
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ReplicaError::Raft(e.to_string()))
}

/// One hosted replica.
pub struct Replica {
    pub span: RangeSpan,
    pub raft: Raft,
    pub descriptor: RwLock<v1::RangeDescriptor>,
    pub read_barrier: ReadBarrier,
    /// Held by a move from its check of the voters to its membership change, so concurrent
    /// moves are judged against the voters the previous one left.
    changing_membership: tokio::sync::Mutex<()>,
}

/// Shares ReadIndex confirmations between concurrent linearizable reads of one range: a read
/// may use any confirmation that *started* after it arrived (leadership confirmed and the state
/// machine caught up to the commit index at a time after the read began), so a crowd of readers
/// costs one heartbeat round, not one each.
#[derive(Default)]
pub struct ReadBarrier {
    /// Confirmations started so far; the next one gets this number plus one.
    started: std::sync::atomic::AtomicU64,
    /// The number of the last confirmation that succeeded.
    confirmed: std::sync::atomic::AtomicU64,
    /// One confirmation at a time; readers queue here in arrival order.
    running: tokio::sync::Mutex<()>,
}

impl ReadBarrier {
    pub async fn confirm<E>(&self, confirm: impl std::future::Future<Output = Result<(), E>>) -> Result<(), E> {
        use std::sync::atomic::Ordering::SeqCst;
        let arrived_after = self.started.load(SeqCst);
        let _turn = self.running.lock().await;
        if self.confirmed.load(SeqCst) > arrived_after {
            return Ok(());
        }
        let number = self.started.fetch_add(1, SeqCst) + 1;
        confirm.await?;
        self.confirmed.store(number, SeqCst);
        Ok(())
    }
}

impl Replica {
    pub fn descriptor(&self) -> v1::RangeDescriptor {
        read(&self.descriptor).clone()
    }

    /// The leader as this replica knows it, with its address.
    pub fn leader(&self) -> Option<v1::MemberNode> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())?;
        Some(v1::MemberNode { node_id: leader, addr })
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

pub struct Replicas {
    pub node_id: NodeId,
    pub advertise: String,
    storage: Storage,
    hlc: Arc<Hlc>,
    syncer: WalSyncer,
    pub peers: Arc<Peers>,
    raft_config: Arc<openraft::Config>,
    /// The wire's payload limit, which replication messages must fit.
    max_payload: u64,
    snapshot_root: PathBuf,
    metrics: Arc<Metrics>,
    hosted: RwLock<BTreeMap<u64, Arc<Replica>>>,
    /// Every range descriptor this node knows, by range id (newest generation wins).
    table: Arc<RwLock<BTreeMap<u64, v1::RangeDescriptor>>>,
    /// What gossip says of each member: where it is now, and since when it is dead.
    gossip: RwLock<BTreeMap<NodeId, GossipMember>>,
    /// How long a dead member's replicas wait before they are rebuilt elsewhere (None: never).
    replace_dead_after: Option<Duration>,
    /// Replicas each range should have (set at start).
    replication_factor: std::sync::atomic::AtomicU32,
}

struct GossipMember {
    addr: String,
    dead_since: Option<std::time::Instant>,
}

impl Replicas {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        advertise: String,
        storage: Storage,
        hlc: Arc<Hlc>,
        peers: Arc<Peers>,
        raft_config: openraft::Config,
        snapshot_root: PathBuf,
        metrics: Arc<Metrics>,
        replace_dead_after: Option<Duration>,
        max_payload: u64,
    ) -> Result<Arc<Self>, ReplicaError> {
        let syncer = WalSyncer::start(storage.clone())
            .map_err(|e| ReplicaError::Raft(format!("cannot start the WAL sync thread: {e}")))?;
        Ok(Arc::new(Replicas {
            node_id,
            advertise,
            syncer,
            storage,
            hlc,
            peers,
            raft_config: Arc::new(raft_config),
            max_payload,
            snapshot_root,
            metrics,
            hosted: RwLock::new(BTreeMap::new()),
            table: Arc::new(RwLock::new(BTreeMap::new())),
            gossip: RwLock::new(BTreeMap::new()),
            replace_dead_after,
            replication_factor: std::sync::atomic::AtomicU32::new(3),
        }))
    }

    fn learn(table: &RwLock<BTreeMap<u64, v1::RangeDescriptor>>, descriptor: v1::RangeDescriptor) {
        let mut table = write(table);
        match table.get(&descriptor.range_id) {
            Some(known) if known.generation >= descriptor.generation => {}
            _ => {
                table.insert(descriptor.range_id, descriptor);
            }
        }
    }

    /// Opens the replicas recorded in node-local storage; on a founder's first start, creates
    /// and initializes its share of the initial layout.
    pub async fn start(
        self: &Arc<Self>,
        founders: &[(NodeId, String)],
        data_ranges: u32,
        rf: u32,
    ) -> Result<(), ReplicaError> {
        self.replication_factor.store(rf, std::sync::atomic::Ordering::Relaxed);
        for descriptor in self.recorded()? {
            Self::learn(&self.table, descriptor.clone());
            self.open(descriptor).await?;
        }
        if let Ok(stored) = read_descriptors(&self.storage) {
            for descriptor in stored {
                Self::learn(&self.table, descriptor);
            }
        }
        if founders.is_empty() || self.storage.get_local(BOOTSTRAPPED_KEY)?.is_some() {
            return Ok(());
        }
        let ids: Vec<NodeId> = founders.iter().map(|(id, _)| *id).collect();
        let addrs: BTreeMap<NodeId, BasicNode> =
            founders.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
        for descriptor in initial_layout(&ids, data_ranges, rf) {
            Self::learn(&self.table, descriptor.clone());
            if !descriptor.replicas.contains(&self.node_id) || self.get(descriptor.range_id).is_some() {
                continue;
            }
            let voters: BTreeMap<NodeId, BasicNode> =
                descriptor.replicas.iter().filter_map(|id| addrs.get(id).map(|n| (*id, n.clone()))).collect();
            let replica = self.create(descriptor).await?;
            // Every founder initializes with the same membership; openraft accepts that.
            match replica.raft.initialize(voters).await {
                Ok(()) => {}
                Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ReplicaError::Raft(e.to_string())),
            }
        }
        // Never again: a replica later moved off this node must not come back from the layout.
        self.storage.put_local(BOOTSTRAPPED_KEY, b"1")?;
        Ok(())
    }

    fn recorded(&self) -> Result<Vec<v1::RangeDescriptor>, ReplicaError> {
        let mut out = Vec::new();
        for (_, value) in self.storage.local_records(REPLICA_KEY_PREFIX)? {
            out.push(v1::RangeDescriptor::decode(value.as_slice()).map_err(|e| ReplicaError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    fn record_key(range_id: u64) -> Vec<u8> {
        let mut key = REPLICA_KEY_PREFIX.to_vec();
        key.extend_from_slice(&range_id.to_be_bytes());
        key
    }

    /// Records and opens a new (empty) replica.
    async fn create(self: &Arc<Self>, descriptor: v1::RangeDescriptor) -> Result<Arc<Replica>, ReplicaError> {
        self.storage.put_local(&Self::record_key(descriptor.range_id), &descriptor.encode_to_vec())?;
        self.open(descriptor).await
    }

    async fn open(self: &Arc<Self>, descriptor: v1::RangeDescriptor) -> Result<Arc<Replica>, ReplicaError> {
        let span = RangeSpan {
            range_id: descriptor.range_id,
            start_key: descriptor.start_key.clone(),
            end_key: descriptor.end_key.clone(),
            meta: descriptor.meta,
        };
        let log = RangeLog::new(descriptor.range_id, self.storage.clone(), self.syncer.clone());
        let observer = Arc::new(Observer(Arc::downgrade(self)));
        let machine = RangeStateMachine::open(
            span.clone(),
            self.storage.clone(),
            self.hlc.clone(),
            &self.snapshot_root,
            observer,
        )
        .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let network = RangeNetworkFactory {
            range_id: descriptor.range_id,
            local_node: self.node_id,
            peers: self.peers.clone(),
            metrics: self.metrics.clone(),
            max_payload: self.max_payload,
        };
        let raft = Raft::new(self.node_id, self.raft_config.clone(), network, log.clone(), machine)
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let replica = Arc::new(Replica {
            span,
            raft,
            descriptor: RwLock::new(descriptor.clone()),
            read_barrier: ReadBarrier::default(),
            changing_membership: tokio::sync::Mutex::new(()),
        });
        write(&self.hosted).insert(descriptor.range_id, replica.clone());
        tokio::spawn(count_leader_changes(replica.raft.metrics(), self.metrics.clone(), descriptor.range_id));
        info!(range_id = descriptor.range_id, "replica open");
        Ok(replica)
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn get(&self, range_id: u64) -> Option<Arc<Replica>> {
        read(&self.hosted).get(&range_id).cloned()
    }

    pub fn hosted(&self) -> Vec<Arc<Replica>> {
        read(&self.hosted).values().cloned().collect()
    }

    /// The hosted replica whose span holds `key`.
    pub fn for_key(&self, key: &[u8]) -> Option<Arc<Replica>> {
        read(&self.hosted).values().find(|r| r.span.contains(key)).cloned()
    }

    /// The newest descriptor this node knows for the range holding `key`.
    pub fn descriptor_for_key(&self, key: &[u8]) -> Option<v1::RangeDescriptor> {
        read(&self.table).values().find(|d| descriptor_contains(d, key)).cloned()
    }

    pub fn descriptors(&self) -> Vec<v1::RangeDescriptor> {
        read(&self.table).values().cloned().collect()
    }

    /// Every member this node knows of: the living gossip members, and the members of its
    /// replicas' groups, at the address gossip last saw (a restarted pod may have moved).
    pub fn members(&self) -> Vec<v1::MemberNode> {
        let mut nodes = BTreeMap::new();
        nodes.insert(self.node_id, self.advertise.clone());
        for replica in self.hosted() {
            let metrics = replica.raft.metrics().borrow().clone();
            for (id, node) in metrics.membership_config.nodes() {
                nodes.entry(*id).or_insert_with(|| node.addr.clone());
            }
        }
        for (id, member) in read(&self.gossip).iter() {
            if *id != self.node_id && (member.dead_since.is_none() || nodes.contains_key(id)) {
                nodes.insert(*id, member.addr.clone());
            }
        }
        nodes.into_iter().map(|(node_id, addr)| v1::MemberNode { node_id, addr }).collect()
    }

    /// Members gossip has declared dead or gone.
    pub fn members_down(&self) -> Vec<NodeId> {
        read(&self.gossip).iter().filter(|(_, m)| m.dead_since.is_some()).map(|(id, _)| *id).collect()
    }

    fn is_dead(&self, id: NodeId) -> bool {
        read(&self.gossip).get(&id).is_some_and(|m| m.dead_since.is_some())
    }

    /// Whether this node repairs the constellation's replication: the lowest-numbered living
    /// member, as gossip sees it, so exactly one node acts (and another takes over if it dies).
    fn coordinates_repairs(&self) -> bool {
        let gossip = read(&self.gossip);
        let lowest_other = gossip.iter().filter(|(_, m)| m.dead_since.is_none()).map(|(id, _)| *id).min();
        lowest_other.is_none_or(|other| self.node_id < other)
    }

    /// Whether gossip knows `id` as alive (this node always is). Replicas only go to such
    /// nodes: a member not heard of yet, or dead, takes none.
    fn is_living(&self, id: NodeId) -> bool {
        id == self.node_id || read(&self.gossip).get(&id).is_some_and(|m| m.dead_since.is_none())
    }

    /// One pass of the repairs, on the coordinator only: rebuilds elsewhere the replicas of
    /// members dead longer than `replace_dead_after`, then adds replicas to ranges below the
    /// replication factor. What fails is retried on the next pass.
    pub async fn repair_once(self: &Arc<Self>) {
        if !self.coordinates_repairs() || read(&self.gossip).is_empty() {
            return;
        }
        if let Some(after) = self.replace_dead_after {
            let overdue: Vec<NodeId> = read(&self.gossip)
                .iter()
                .filter(|(_, m)| m.dead_since.is_some_and(|since| since.elapsed() >= after))
                .map(|(id, _)| *id)
                .collect();
            for id in overdue {
                if !read(&self.table).values().any(|d| d.replicas.contains(&id)) {
                    continue;
                }
                info!(node_id = id, ?after, "replication: rebuilding the replicas of a member dead too long");
                match self.decommission(id).await {
                    Ok(moves) => info!(node_id = id, moved = moves.len(), "replication: replicas rebuilt elsewhere"),
                    Err(e) => warn!(node_id = id, error = %e, "replication: cannot rebuild the replicas yet"),
                }
            }
        }
        let (ranges, members) = self.survey(None).await;
        let living: Vec<NodeId> = members.keys().copied().filter(|id| self.is_living(*id)).collect();
        let factor = self.replication_factor.load(std::sync::atomic::Ordering::Relaxed);
        let steps = plan_up_replicate(&ranges, &living, factor)
            .into_iter()
            .chain(plan_down_replicate(&ranges, &living, factor));
        for step in steps {
            match self.execute_move(&step, &members).await {
                Ok(_) if step.add == 0 => {
                    info!(
                        range_id = step.range_id,
                        node_id = step.remove,
                        "removed a replica from an over-replicated range"
                    )
                }
                Ok(_) => {
                    info!(range_id = step.range_id, node_id = step.add, "added a replica to an under-replicated range")
                }
                Err(e) => {
                    warn!(range_id = step.range_id, error = %e, "cannot repair the range's replication yet");
                    return;
                }
            }
        }
    }

    /// Gossip: `id` is alive at `addr`.
    pub fn member_alive(&self, id: NodeId, addr: String) {
        write(&self.gossip).insert(id, GossipMember { addr, dead_since: None });
    }

    /// Gossip: `id` left gracefully (its replicas were moved off first, if it was decommissioned).
    pub fn member_left(&self, id: NodeId) {
        self.member_failed(id);
    }

    /// Gossip declared `id` dead. Its replicas keep their quorum while the others live; if it
    /// stays dead for `replace_dead_after`, the repair coordinator rebuilds them elsewhere
    /// (`repair_once`). Meanwhile it takes no new replicas.
    pub fn member_failed(&self, id: NodeId) {
        let known = read(&self.gossip).get(&id).map(|m| m.addr.clone());
        let addr = known.or_else(|| self.address_of(id)).unwrap_or_default();
        write(&self.gossip).insert(id, GossipMember { addr, dead_since: Some(std::time::Instant::now()) });
        let affected = read(&self.table).values().filter(|d| d.replicas.contains(&id)).count();
        warn!(node_id = id, ranges_with_a_replica_there = affected, "replication: member reported dead");
    }

    /// Answers one raft-service request from `caller`, the node its certificate names (`None`
    /// only on an `--insecure` node).
    pub async fn handle(self: &Arc<Self>, request: v1::RaftRequest, caller: Option<NodeId>) -> v1::RaftResponse {
        let result = self.serve(request, caller).await.unwrap_or_else(RaftResult::Error);
        v1::RaftResponse { result: Some(result) }
    }

    async fn serve(
        self: &Arc<Self>,
        request: v1::RaftRequest,
        caller: Option<NodeId>,
    ) -> Result<RaftResult, v1::RaftError> {
        let error = |kind: v1::RaftErrorKind, message: String| v1::RaftError {
            kind: kind.into(),
            message,
            ..Default::default()
        };
        let malformed = |e: codec::CodecError| error(v1::RaftErrorKind::Malformed, e.to_string());
        // A vote names the candidate or leader it speaks for: only that node may send it.
        let speaks_for = |who: Option<NodeId>, what: &str| match caller {
            Some(caller) if who != Some(caller) => Err(error(
                v1::RaftErrorKind::PermissionDenied,
                format!("node {caller} cannot send a {what} for node {who:?}"),
            )),
            _ => Ok(()),
        };
        let fatal = |e: String| error(v1::RaftErrorKind::Fatal, e);
        let rpc = request.rpc.ok_or_else(|| error(v1::RaftErrorKind::Malformed, "no rpc".into()))?;
        if let Rpc::CreateReplica(descriptor) = rpc {
            if descriptor.range_id != request.range_id || !descriptor.replicas.is_empty() && descriptor.range_id == 0 {
                return Err(error(v1::RaftErrorKind::Malformed, "descriptor names another range".into()));
            }
            // The range's leader creates the learners it adds: it is a replica of the range.
            if caller.is_some_and(|caller| !descriptor.replicas.contains(&caller)) {
                return Err(error(
                    v1::RaftErrorKind::PermissionDenied,
                    format!("node {caller:?} holds no replica of range {}", descriptor.range_id),
                ));
            }
            if self.get(request.range_id).is_none() {
                Self::learn(&self.table, descriptor.clone());
                self.create(descriptor).await.map_err(|e| fatal(e.to_string()))?;
            }
            return Ok(RaftResult::Done(true));
        }
        let replica = self.get(request.range_id).ok_or_else(|| {
            error(
                v1::RaftErrorKind::NoSuchRange,
                format!("node {} hosts no replica of range {}", self.node_id, request.range_id),
            )
        })?;
        match rpc {
            Rpc::AppendEntries(append) => {
                let append = codec::append_request_from_proto(append).map_err(malformed)?;
                speaks_for(append.vote.leader_id().voted_for(), "leader's append")?;
                let response = replica.raft.append_entries(append).await.map_err(|e| fatal(e.to_string()))?;
                Ok(RaftResult::AppendEntries(codec::append_response_to_proto(&response)))
            }
            Rpc::Vote(vote) => {
                let request = openraft::raft::VoteRequest {
                    vote: codec::vote_from_proto(vote.vote.as_ref()).map_err(malformed)?,
                    last_log_id: codec::opt_log_id_from_proto(vote.last_log_id.as_ref()),
                };
                speaks_for(request.vote.leader_id().voted_for(), "vote request")?;
                let response = replica.raft.vote(request).await.map_err(|e| fatal(e.to_string()))?;
                Ok(RaftResult::Vote(v1::VoteResponse {
                    vote: Some(codec::vote_to_proto(&response.vote)),
                    vote_granted: response.vote_granted,
                    last_log_id: codec::opt_log_id_to_proto(response.last_log_id.as_ref()),
                }))
            }
            Rpc::InstallSnapshot(install) => {
                let request = openraft::raft::InstallSnapshotRequest {
                    vote: codec::vote_from_proto(install.vote.as_ref()).map_err(malformed)?,
                    meta: codec::snapshot_meta_from_proto(install.meta.as_ref()).map_err(malformed)?,
                    offset: install.offset,
                    data: install.data,
                    done: install.done,
                };
                speaks_for(request.vote.leader_id().voted_for(), "leader's snapshot")?;
                let done = request.done;
                match replica.raft.install_snapshot(request).await {
                    Ok(response) => {
                        if done {
                            self.metrics
                                .raft_snapshots_received
                                .get_or_create(&RangeLabels { range: replica.span.range_id })
                                .inc();
                        }
                        Ok(RaftResult::InstallSnapshot(v1::InstallSnapshotResponse {
                            vote: Some(codec::vote_to_proto(&response.vote)),
                        }))
                    }
                    Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))) => Err(v1::RaftError {
                        kind: v1::RaftErrorKind::SnapshotMismatch.into(),
                        message: mismatch.to_string(),
                        expected_snapshot_id: mismatch.expect.id,
                        expected_offset: mismatch.expect.offset,
                        leader_addr: String::new(),
                    }),
                    Err(e) => Err(fatal(e.to_string())),
                }
            }
            Rpc::RemoveReplica(_) => {
                // Only a member of the range (its leader, after moving this replica out) may.
                let membership = replica.raft.metrics().borrow().membership_config.clone();
                let member = |id: NodeId| {
                    replica.descriptor().replicas.contains(&id) || membership.nodes().any(|(node, _)| *node == id)
                };
                if let Some(caller) = caller.filter(|caller| !member(*caller)) {
                    return Err(error(
                        v1::RaftErrorKind::PermissionDenied,
                        format!("node {caller} is no member of range {}", request.range_id),
                    ));
                }
                self.remove(request.range_id).await.map_err(|e| fatal(e.to_string()))?;
                Ok(RaftResult::Done(true))
            }
            Rpc::MoveReplica(request) => {
                let moved = self.move_replica(&replica, request).await?;
                Ok(RaftResult::Moved(moved))
            }
            Rpc::RecordDescriptor(descriptor) => {
                if !replica.span.meta {
                    return Err(error(
                        v1::RaftErrorKind::Malformed,
                        "descriptors are recorded by the meta range".into(),
                    ));
                }
                self.record_in_meta(&replica, descriptor).await?;
                Ok(RaftResult::Done(true))
            }
            Rpc::Campaign(_) => {
                // Only the leader may hand its range over; anyone else would just disrupt it.
                let leader = replica.raft.metrics().borrow().current_leader;
                if caller.is_some() && caller != leader {
                    return Err(error(
                        v1::RaftErrorKind::PermissionDenied,
                        format!("node {caller:?} does not lead range {}; its leader is {leader:?}", request.range_id),
                    ));
                }
                replica.raft.trigger().elect().await.map_err(|e| fatal(e.to_string()))?;
                Ok(RaftResult::Done(true))
            }
            Rpc::CreateReplica(_) => Ok(RaftResult::Done(true)),
        }
    }

    fn not_leader(replica: &Replica) -> v1::RaftError {
        let leader = replica.leader();
        v1::RaftError {
            kind: v1::RaftErrorKind::NotLeader.into(),
            message: format!("range {} is led by {:?}", replica.span.range_id, leader.as_ref().map(|l| l.node_id)),
            leader_addr: leader.map(|l| l.addr).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// On the meta leader: stores `descriptor` unless a newer one is stored.
    async fn record_in_meta(&self, meta: &Replica, descriptor: v1::RangeDescriptor) -> Result<(), v1::RaftError> {
        Self::learn(&self.table, descriptor.clone());
        let command = v1::Command {
            timestamp: self.hlc.now().ok().map(Into::into),
            op: Some(v1::command::Op::SetDescriptor(descriptor)),
        };
        match meta.raft.client_write(command).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_))) => {
                Err(Self::not_leader(meta))
            }
            Err(e) => Err(v1::RaftError {
                kind: v1::RaftErrorKind::Fatal.into(),
                message: e.to_string(),
                ..Default::default()
            }),
        }
    }

    /// On a range's leader: adds `add_node` (created empty, then a learner until it has caught
    /// up), then swaps it in for `remove_node` in one joint-consensus change, and tells the
    /// removed node and the meta range.
    async fn move_replica(
        self: &Arc<Self>,
        replica: &Replica,
        request: v1::MoveReplicaRequest,
    ) -> Result<v1::RangeDescriptor, v1::RaftError> {
        let refused =
            |message: String| v1::RaftError { kind: v1::RaftErrorKind::Refused.into(), message, ..Default::default() };
        let failed =
            |message: String| v1::RaftError { kind: v1::RaftErrorKind::Fatal.into(), message, ..Default::default() };
        let _one_at_a_time = replica.changing_membership.lock().await;
        if replica.raft.metrics().borrow().state != ServerState::Leader {
            return Err(Self::not_leader(replica));
        }
        let range_id = replica.span.range_id;
        let membership = replica.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_joint_config().len() > 1 {
            return Err(refused(format!("range {range_id} is changing its membership; try again")));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if request.add_node != 0 && request.add_addr.is_empty() {
            return Err(refused("the node to add needs an address".into()));
        }
        let factor = self.replication_factor.load(std::sync::atomic::Ordering::Relaxed) as usize;
        let step = Move { range_id, add: request.add_node, remove: request.remove_node };
        let after = voters_after(&voters, &step, factor).map_err(refused)?;
        if request.add_node != 0 && !voters.contains(&request.add_node) {
            let create = v1::RaftRequest {
                range_id,
                from_node: self.node_id,
                rpc: Some(Rpc::CreateReplica(replica.descriptor())),
            };
            crate::raft::network::call(&self.peers, &request.add_addr, &create, Duration::from_secs(10))
                .await
                .map_err(|e| failed(format!("cannot create the replica on node {}: {e}", request.add_node)))?;
            let learner = BasicNode::new(request.add_addr.clone());
            replica
                .raft
                .add_learner(request.add_node, learner, true)
                .await
                .map_err(|e| failed(format!("cannot add node {} as a learner: {e}", request.add_node)))?;
        }
        let removed_addr = self.address_of(request.remove_node);
        if after != voters {
            replica
                .raft
                .change_membership(after, false)
                .await
                .map_err(|e| failed(format!("membership change of range {range_id} failed: {e}")))?;
        }
        info!(range_id, added = request.add_node, removed = request.remove_node, "replica moved");
        let descriptor = replica.descriptor();
        // The removed replica stops and forgets the range; if it is down, it is simply gone.
        if request.remove_node != 0 && request.remove_node != self.node_id {
            if let Some(addr) = removed_addr {
                let remove = v1::RaftRequest {
                    range_id,
                    from_node: self.node_id,
                    rpc: Some(Rpc::RemoveReplica(v1::RemoveReplicaRequest {})),
                };
                if let Err(e) = crate::raft::network::call(&self.peers, &addr, &remove, Duration::from_secs(5)).await {
                    warn!(range_id, node = request.remove_node, error = %e, "the removed replica was not told");
                }
            }
        }
        if request.remove_node == self.node_id {
            // This leader moved its own replica away. It steps aside once its heartbeats have
            // carried the commit of the new membership, so the remaining voters apply it and
            // elect a leader among themselves instead of following a node outside the group.
            let replicas = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(STEP_ASIDE_DELAY).await;
                if let Err(e) = replicas.remove(range_id).await {
                    warn!(range_id, error = %e, "cannot remove this node's replica after moving it away");
                }
            });
        }
        self.publish(descriptor.clone()).await;
        Ok(descriptor)
    }

    /// The descriptors and members a node knows, over its KV service.
    async fn fetch_ranges(&self, addr: &str) -> Result<v1::RangesResponse, String> {
        use pleiades_proto::payload_type::kv;
        let connection = self.peers.connection(addr).await?;
        let mut stream = crate::transport::stream::PwpStream::open(
            &connection,
            pleiades_proto::wire::Service::Kv,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        let request = v1::KvRequest {
            request_id: 1,
            op: Some(v1::kv_request::Op::Ranges(v1::RangesRequest {})),
            ..Default::default()
        };
        let response: v1::KvResponse =
            stream.call_proto(kv::REQUEST, &request, kv::RESPONSE, "KvResponse").await.map_err(|e| e.to_string())?;
        match response.result {
            Some(v1::kv_response::Result::Ranges(ranges)) => Ok(ranges),
            other => Err(format!("unexpected answer to a ranges request: {other:?}")),
        }
    }

    /// The newest descriptors and every member known to this node and the members it knows.
    async fn survey(&self, seed: Option<&str>) -> (Vec<v1::RangeDescriptor>, BTreeMap<NodeId, String>) {
        let mut members: BTreeMap<NodeId, String> = self.members().into_iter().map(|m| (m.node_id, m.addr)).collect();
        let mut asked = BTreeSet::new();
        let mut to_ask: Vec<String> = seed.into_iter().map(str::to_string).chain(members.values().cloned()).collect();
        while let Some(addr) = to_ask.pop() {
            if addr == self.advertise || !asked.insert(addr.clone()) {
                continue;
            }
            if members.iter().any(|(id, a)| *a == addr && self.is_dead(*id)) {
                continue;
            }
            match self.fetch_ranges(&addr).await {
                Ok(answer) => {
                    for descriptor in answer.ranges {
                        Self::learn(&self.table, descriptor);
                    }
                    for node in answer.nodes {
                        if let std::collections::btree_map::Entry::Vacant(entry) = members.entry(node.node_id) {
                            to_ask.push(node.addr.clone());
                            entry.insert(node.addr);
                        }
                    }
                }
                Err(e) => warn!(%addr, error = %e, "cannot ask a member for its ranges"),
            }
        }
        (self.descriptors(), members)
    }

    /// Carries out one move through the range's leader, following redirects; retries a while.
    async fn execute_move(
        &self,
        step: &Move,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<v1::RangeDescriptor, String> {
        let add_addr = match step.add {
            0 => String::new(),
            add => members.get(&add).cloned().ok_or_else(|| format!("node {add} has no known address"))?,
        };
        let request = v1::RaftRequest {
            range_id: step.range_id,
            from_node: self.node_id,
            rpc: Some(Rpc::MoveReplica(v1::MoveReplicaRequest {
                add_node: step.add,
                add_addr,
                remove_node: step.remove,
            })),
        };
        let mut last_error = String::from("no replica to ask");
        for attempt in 0..20u32 {
            let replicas = read(&self.table).get(&step.range_id).map(|d| d.replicas.clone()).unwrap_or_default();
            let mut candidates: Vec<String> = replicas.iter().filter_map(|id| members.get(id).cloned()).collect();
            let mut hops = 0;
            while let Some(addr) = candidates.pop() {
                hops += 1;
                if hops > 8 {
                    break;
                }
                // Catching a learner up may take a while on a loaded range.
                match crate::raft::network::call(&self.peers, &addr, &request, Duration::from_secs(120)).await {
                    Ok(RaftResult::Moved(descriptor)) => {
                        Self::learn(&self.table, descriptor.clone());
                        return Ok(descriptor);
                    }
                    Ok(other) => last_error = format!("unexpected answer {other:?}"),
                    Err(RpcFailure::Remote(e)) if e.kind() == v1::RaftErrorKind::NotLeader => {
                        if !e.leader_addr.is_empty() {
                            candidates.push(e.leader_addr.clone());
                        }
                        last_error = e.message;
                    }
                    Err(RpcFailure::Remote(e)) if e.kind() == v1::RaftErrorKind::Refused => return Err(e.message),
                    Err(e) => last_error = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10) + 1))).await;
        }
        Err(format!("range {}: {last_error}", step.range_id))
    }

    /// Joins a running constellation through `seed`: asks the ranges' leaders to move this
    /// node's fair share of replicas here. Idempotent: a node that has its share takes nothing.
    pub async fn join(self: &Arc<Self>, seed: &str) -> Result<Vec<Move>, String> {
        let (ranges, mut members) = self.survey(Some(seed)).await;
        if ranges.is_empty() {
            return Err(format!("{seed} told no ranges"));
        }
        members.insert(self.node_id, self.advertise.clone());
        let others: Vec<NodeId> = members.keys().copied().filter(|id| *id != self.node_id).collect();
        let moves = plan_join(&ranges, &others, self.node_id);
        for step in &moves {
            self.execute_move(step, &members).await?;
            info!(range_id = step.range_id, from = step.remove, "took over a replica");
        }
        Ok(moves)
    }

    /// Moves every replica off `leaving` (a member or this node), never below quorum: each move
    /// adds the new replica before removing the old one.
    pub async fn decommission(&self, leaving: NodeId) -> Result<Vec<Move>, DecommissionError> {
        let (ranges, members) = self.survey(None).await;
        let nodes: Vec<NodeId> = members.keys().copied().filter(|id| *id == leaving || self.is_living(*id)).collect();
        let factor = self.replication_factor.load(std::sync::atomic::Ordering::Relaxed);
        let moves = plan_decommission(&ranges, &nodes, leaving, factor).map_err(DecommissionError::NoPlacement)?;
        for step in &moves {
            self.execute_move(step, &members).await.map_err(DecommissionError::Failed)?;
            match step.add {
                0 => info!(range_id = step.range_id, "removed node {leaving}'s replica, which the range could spare"),
                to => info!(range_id = step.range_id, to, "moved a replica off node {leaving}"),
            }
        }
        Ok(moves)
    }

    fn address_of(&self, node_id: NodeId) -> Option<String> {
        self.members().into_iter().find(|m| m.node_id == node_id).map(|m| m.addr)
    }

    /// Sends a descriptor to the meta range's leader (trying the meta replicas in turn).
    pub async fn publish(&self, descriptor: v1::RangeDescriptor) {
        Self::learn(&self.table, descriptor.clone());
        let Some(meta) = read(&self.table).get(&META_RANGE_ID).cloned() else { return };
        let mut candidates: Vec<String> = meta.replicas.iter().filter_map(|id| self.address_of(*id)).collect();
        let request = v1::RaftRequest {
            range_id: META_RANGE_ID,
            from_node: self.node_id,
            rpc: Some(Rpc::RecordDescriptor(descriptor.clone())),
        };
        for _ in 0..10 {
            let Some(addr) = candidates.pop() else { break };
            match crate::raft::network::call(&self.peers, &addr, &request, Duration::from_secs(5)).await {
                Ok(_) => return,
                Err(RpcFailure::Remote(e)) if e.kind() == v1::RaftErrorKind::NotLeader && !e.leader_addr.is_empty() => {
                    candidates.push(e.leader_addr);
                }
                Err(e) => warn!(range_id = descriptor.range_id, error = %e, "cannot record a descriptor at {addr}"),
            }
        }
        warn!(range_id = descriptor.range_id, "no meta leader recorded the descriptor; the meta upkeep retries");
    }

    /// Stops and forgets a replica that left its group.
    pub async fn remove(&self, range_id: u64) -> Result<(), ReplicaError> {
        let Some(replica) = write(&self.hosted).remove(&range_id) else { return Ok(()) };
        if let Err(e) = replica.raft.shutdown().await {
            warn!(range_id, error = %e, "replica shutdown failed");
        }
        self.storage.delete_local(&Self::record_key(range_id))?;
        self.storage.clear_replica(range_id, &replica.span.bounds())?;
        info!(range_id, "replica removed and its data deleted");
        Ok(())
    }

    /// Keeps the meta range's descriptors in step with what this node knows, when it leads meta.
    pub async fn sync_meta(&self) {
        let Some(meta) = self.get(META_RANGE_ID) else { return };
        if meta.raft.metrics().borrow().state != ServerState::Leader {
            return;
        }
        let stored: BTreeMap<u64, u64> = match read_descriptors(&self.storage) {
            Ok(stored) => stored.into_iter().map(|d| (d.range_id, d.generation)).collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the meta range");
                return;
            }
        };
        for descriptor in self.descriptors() {
            if stored.get(&descriptor.range_id).is_some_and(|g| *g >= descriptor.generation) {
                continue;
            }
            let command = v1::Command {
                timestamp: self.hlc.now().ok().map(Into::into),
                op: Some(v1::command::Op::SetDescriptor(descriptor)),
            };
            if let Err(e) = meta.raft.client_write(command).await {
                warn!(error = %e, "cannot record a range descriptor in the meta range");
                return;
            }
        }
    }

    /// Stops every replica (raft tasks flush nothing further after this).
    pub async fn shutdown(&self) {
        for replica in self.hosted() {
            if let Err(e) = replica.raft.shutdown().await {
                warn!(range_id = replica.span.range_id, error = %e, "replica shutdown failed");
            }
        }
    }

    /// Runs the periodic upkeep (meta descriptors) until the task is aborted.
    pub async fn upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.sync_meta().await;
        }
    }

    /// Runs the replication repairs every few seconds until aborted.
    pub async fn repair(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            self.repair_once().await;
        }
    }

    /// Status of every hosted replica, for `pleiades status`.
    pub fn status(&self) -> Vec<v1::ReplicaStatus> {
        self.hosted()
            .into_iter()
            .map(|replica| {
                let metrics = replica.raft.metrics().borrow().clone();
                let role = match metrics.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Candidate => "candidate",
                    ServerState::Learner => "learner",
                    ServerState::Shutdown => "shutdown",
                };
                v1::ReplicaStatus {
                    descriptor: Some(replica.descriptor()),
                    role: role.into(),
                    term: metrics.current_term,
                    leader_node: metrics.current_leader.unwrap_or_default(),
                    last_log_index: metrics.last_log_index.unwrap_or_default(),
                    applied_index: metrics.last_applied.map(|id| id.index).unwrap_or_default(),
                    snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or_default(),
                    purged_index: metrics.purged.map(|id| id.index).unwrap_or_default(),
                    members: metrics
                        .membership_config
                        .nodes()
                        .map(|(id, node)| v1::MemberNode { node_id: *id, addr: node.addr.clone() })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Keeps descriptors in step with what ranges apply.
struct Observer(std::sync::Weak<Replicas>);

impl RangeObserver for Observer {
    fn descriptor_applied(&self, descriptor: v1::RangeDescriptor) {
        if let Some(replicas) = self.0.upgrade() {
            Replicas::learn(&replicas.table, descriptor);
        }
    }

    fn membership_applied(&self, range_id: u64, voters: Vec<NodeId>, generation: u64) {
        let Some(replicas) = self.0.upgrade() else { return };
        // The hosted replica's own descriptor is compared with its own generation: the table may
        // already hold this generation (learned from the meta range or a move's answer).
        let base = match replicas.get(range_id) {
            Some(replica) => Some(replica.descriptor()),
            None => read(&replicas.table).get(&range_id).cloned(),
        };
        let Some(mut descriptor) = base.filter(|known| known.generation < generation) else { return };
        descriptor.replicas = voters;
        descriptor.generation = generation;
        if let Some(replica) = replicas.get(range_id) {
            *write(&replica.descriptor) = descriptor.clone();
            // The hosted-replica record is rewritten off the apply path.
            let (storage, bytes) = (replicas.storage.clone(), descriptor.encode_to_vec());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = storage.put_local(&Replicas::record_key(range_id), &bytes) {
                    warn!(range_id, error = %e, "cannot record a replica's new descriptor");
                }
            });
        }
        Replicas::learn(&replicas.table, descriptor);
    }
}

/// Counts leader changes of one replica until its raft stops.
async fn count_leader_changes(
    mut watch: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    metrics: Arc<Metrics>,
    range: u64,
) {
    let mut leader = watch.borrow().current_leader;
    while watch.changed().await.is_ok() {
        let now = watch.borrow().current_leader;
        if now != leader && now.is_some() {
            metrics.raft_leader_changes.get_or_create(&RangeLabels { range }).inc();
        }
        leader = now;
    }
}

impl Replicas {
    /// Sets the per-range gauges from each replica's raft metrics (called at scrape time).
    pub fn export_metrics(&self) {
        for replica in self.hosted() {
            let labels = RangeLabels { range: replica.span.range_id };
            let raft = replica.raft.metrics().borrow().clone();
            let last = raft.last_log_index.unwrap_or_default();
            let purged = raft.purged.map(|id| id.index).unwrap_or_default();
            self.metrics.raft_term.get_or_create(&labels).set(raft.current_term as i64);
            self.metrics.raft_is_leader.get_or_create(&labels).set(i64::from(raft.state == ServerState::Leader));
            self.metrics.raft_last_log_index.get_or_create(&labels).set(last as i64);
            self.metrics
                .raft_applied_index
                .get_or_create(&labels)
                .set(raft.last_applied.map(|id| id.index).unwrap_or_default() as i64);
            self.metrics.raft_log_entries.get_or_create(&labels).set(last.saturating_sub(purged) as i64);
            let lag = raft
                .replication
                .as_ref()
                .and_then(|followers| {
                    followers.values().map(|matched| last.saturating_sub(matched.map(|id| id.index).unwrap_or(0))).max()
                })
                .unwrap_or(0);
            self.metrics.raft_replication_lag_entries.get_or_create(&labels).set(lag as i64);
            // Event counters start at zero rather than appearing with the first event, so
            // rates and dashboards see every range from the start.
            let _ = self.metrics.raft_proposals.get_or_create(&labels);
            let _ = self.metrics.raft_proposal_seconds.get_or_create(&labels);
            let _ = self.metrics.raft_read_index_seconds.get_or_create(&labels);
            let _ = self.metrics.raft_leader_changes.get_or_create(&labels);
            let _ = self.metrics.raft_snapshots_sent.get_or_create(&labels);
            let _ = self.metrics.raft_snapshots_received.get_or_create(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_barrier_is_shared_only_by_reads_that_arrived_before_it_started() {
        let barrier = Arc::new(ReadBarrier::default());
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let slow_round = |rounds: Arc<std::sync::atomic::AtomicU64>| async move {
            rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<(), ()>(())
        };
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let (barrier, rounds) = (barrier.clone(), rounds.clone());
                tokio::spawn(async move { barrier.confirm(slow_round(rounds)).await })
            })
            .collect();
        for reader in readers {
            reader.await.unwrap().unwrap();
        }
        let shared = rounds.load(std::sync::atomic::Ordering::SeqCst);
        assert!(shared <= 3, "50 concurrent reads needed {shared} rounds");
        // A read arriving after every confirmation has finished needs a new one.
        barrier.confirm(slow_round(rounds.clone())).await.unwrap();
        assert_eq!(rounds.load(std::sync::atomic::Ordering::SeqCst), shared + 1);
        // A failed round is shared by no one.
        assert_eq!(barrier.confirm(async { Err::<(), _>("lost leadership") }).await, Err("lost leadership"));
    }

    #[test]
    fn the_initial_layout_covers_the_keyspace_once_and_spreads_replicas() {
        let layout = initial_layout(&[3, 1, 2], 4, 3);
        assert_eq!(layout.len(), 5);
        assert!(layout[0].meta);
        let data = &layout[1..];
        assert!(data[0].start_key.is_empty() && data[3].end_key.is_empty());
        for pair in data.windows(2) {
            assert_eq!(pair[0].end_key, pair[1].start_key, "adjacent and without gaps");
            assert!(pair[0].start_key < pair[1].start_key || pair[0].start_key.is_empty());
        }
        for key in [&b""[..], b"\x00", b"0", b"abc", b"zzz", b"\xff\xff"] {
            assert_eq!(data.iter().filter(|d| descriptor_contains(d, key)).count(), 1, "{key:?}");
        }
        assert!(layout.iter().all(|d| d.replicas.len() == 3));
        let five = initial_layout(&[1, 2, 3, 4, 5], 4, 3);
        let mut per_node = BTreeMap::new();
        for d in &five {
            for r in &d.replicas {
                *per_node.entry(*r).or_insert(0) += 1;
            }
        }
        assert_eq!(per_node.len(), 5, "every founder gets replicas: {per_node:?}");
        assert_eq!(initial_layout(&[7], 2, 3)[1].replicas, vec![7], "one node, one replica");
    }
}
