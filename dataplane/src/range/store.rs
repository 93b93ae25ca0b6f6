//! The store: the replicas this node hosts, one openraft group each, opened at start from the
//! node-local records, created at bootstrap from the founders' layout, on a leader's request or
//! by a split, and removed when they leave their group. It decides nothing about placement.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::error::RaftError;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use pleiades_proto::v1;
use prost::Message;
use tracing::{info, warn};

use super::gate::WriteGate;
use super::stats::ReplicaLoad;
use super::table::DescriptorTable;
use crate::clock::Hlc;
use crate::config::RaftSettings;
use crate::observe::{Metrics, RangeLabels};
use crate::raft::log::RangeLog;
use crate::raft::network::RangeNetworkFactory;
use crate::raft::state_machine::{read_descriptors, RangeObserver, RangeSpan, RangeStateMachine, SharedDescriptor};
use crate::raft::{NodeId, Raft, WalSyncer};
use crate::storage::keys::{node_local_range_key, REMOVED_RECORD_PREFIX, REPLICA_RECORD_PREFIX};
use crate::storage::{replica_record, Storage};
use crate::transport::pool::Peers;

/// Node-local marker: this founder created its share of the initial layout (once, ever).
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("corrupt node-local replica record: {0}")]
    Corrupt(String),
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
    pub range_id: u64,
    pub raft: Raft,
    /// Its span and replicas as applied; a split or a membership change updates them.
    pub descriptor: SharedDescriptor,
    pub read_barrier: ReadBarrier,
    /// Held by a move or a split from its checks to its raft change, so concurrent changes are
    /// judged against the state the previous one left.
    pub changing: tokio::sync::Mutex<()>,
    /// Requests served and keys sampled, for splits by load.
    pub load: ReplicaLoad,
    /// Admits writes, and holds them back while this leader hands its leadership over, so the
    /// follower it picked can have all of its log.
    pub writes: Arc<WriteGate>,
    /// Client writes waiting to be proposed, batched while earlier ones are in flight.
    pub proposals: Arc<crate::raft::proposals::Proposals>,
    /// The merge attempt this range was first seen in by its leader's upkeep, and when: an
    /// attempt that lasts too long is settled (`range::merge`).
    pub merge_seen: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
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
        self.descriptor.get()
    }

    pub fn span(&self) -> RangeSpan {
        self.descriptor.span()
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
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
    peers: Arc<Peers>,
    raft_config: Arc<openraft::Config>,
    /// The wire's payload limit, which replication messages must fit.
    max_payload: u64,
    snapshot_root: PathBuf,
    metrics: Arc<Metrics>,
    hosted: RwLock<BTreeMap<u64, Arc<Replica>>>,
    /// Serialises opening replicas, so one range never gets two raft groups here.
    opening: tokio::sync::Mutex<()>,
    /// Told of every descriptor the replicas apply (the store keeps none itself).
    table: Arc<DescriptorTable>,
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
        max_payload: u64,
        table: Arc<DescriptorTable>,
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
            opening: tokio::sync::Mutex::new(()),
            table,
        }))
    }

    /// Opens the replicas recorded in node-local storage; on a founder's first start, creates
    /// and initializes its share of `layout` (the initial layout of a new constellation).
    pub async fn start(
        self: &Arc<Self>,
        founders: &[(NodeId, String)],
        layout: Vec<v1::RangeDescriptor>,
    ) -> Result<(), ReplicaError> {
        for descriptor in self.recorded()? {
            self.table.learn(descriptor.clone());
            self.open(descriptor).await?;
        }
        if let Ok(stored) = read_descriptors(&self.storage) {
            for descriptor in stored {
                self.table.learn(descriptor);
            }
        }
        if founders.is_empty() || self.storage.get_local(BOOTSTRAPPED_KEY)?.is_some() {
            return Ok(());
        }
        let addrs: BTreeMap<NodeId, BasicNode> =
            founders.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
        for descriptor in layout {
            self.table.learn(descriptor.clone());
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
        for (_, value) in self.storage.local_records(REPLICA_RECORD_PREFIX)? {
            out.push(v1::RangeDescriptor::decode(value.as_slice()).map_err(|e| ReplicaError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Records and opens a new (empty) replica, unless one is open already.
    pub async fn create(self: &Arc<Self>, descriptor: v1::RangeDescriptor) -> Result<Arc<Replica>, ReplicaError> {
        if let Some(open) = self.get(descriptor.range_id) {
            return Ok(open);
        }
        self.storage.record_replica(&descriptor)?;
        self.open(descriptor).await
    }

    /// Opens a recorded replica (once: a split and a leader may both ask for the same one).
    async fn open(self: &Arc<Self>, descriptor: v1::RangeDescriptor) -> Result<Arc<Replica>, ReplicaError> {
        let _one_at_a_time = self.opening.lock().await;
        if let Some(open) = self.get(descriptor.range_id) {
            return Ok(open);
        }
        let range_id = descriptor.range_id;
        let shared = SharedDescriptor::new(descriptor);
        let log = RangeLog::new(range_id, self.storage.clone(), self.syncer.clone());
        let observer = Arc::new(Observer(Arc::downgrade(self)));
        let machine = RangeStateMachine::open(
            shared.clone(),
            self.storage.clone(),
            self.hlc.clone(),
            &self.snapshot_root,
            observer,
        )
        .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let network = RangeNetworkFactory {
            range_id,
            local_node: self.node_id,
            peers: self.peers.clone(),
            metrics: self.metrics.clone(),
            max_payload: self.max_payload,
        };
        let raft = Raft::new(self.node_id, self.raft_config.clone(), network, log.clone(), machine)
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let replica = Arc::new(Replica {
            range_id,
            raft,
            descriptor: shared,
            read_barrier: ReadBarrier::default(),
            changing: tokio::sync::Mutex::new(()),
            load: ReplicaLoad::default(),
            writes: Arc::default(),
            proposals: Arc::default(),
            merge_seen: std::sync::Mutex::new(None),
        });
        write(&self.hosted).insert(range_id, replica.clone());
        tokio::spawn(count_leader_changes(replica.raft.metrics(), self.metrics.clone(), range_id));
        info!(range_id, "replica open");
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

    /// The hosted replica whose span holds `key`; the newest generation while a merged
    /// neighbour's replica is still being stopped.
    pub fn for_key(&self, key: &[u8]) -> Option<Arc<Replica>> {
        read(&self.hosted)
            .values()
            .filter(|r| r.descriptor.contains(key))
            .max_by_key(|r| r.descriptor().generation)
            .cloned()
    }

    /// Stops and forgets a replica that left its group, leaving a tombstone so a split this
    /// node applies late does not bring it back. Its span's data goes too, unless another
    /// replica here covers part of it: the range that subsumed it in a merge.
    pub async fn remove(&self, range_id: u64) -> Result<(), ReplicaError> {
        let Some(replica) = write(&self.hosted).remove(&range_id) else { return Ok(()) };
        if let Err(e) = replica.raft.shutdown().await {
            warn!(range_id, error = %e, "replica shutdown failed");
        }
        let span = replica.span();
        let subsumed = self.hosted().iter().any(|other| spans_overlap(&other.span(), &span));
        self.storage.put_local(&node_local_range_key(REMOVED_RECORD_PREFIX, range_id), b"")?;
        self.storage.delete_local(&node_local_range_key(REPLICA_RECORD_PREFIX, range_id))?;
        self.storage.clear_replica(range_id, &span.bounds(), subsumed)?;
        match subsumed {
            true => info!(range_id, "replica of a merged range stopped; its data stays with the range that took it"),
            false => info!(range_id, "replica removed and its data deleted"),
        }
        Ok(())
    }

    /// Holds new writes back on every hosted replica, then waits (until `deadline`) for those
    /// already admitted to be answered: a node about to hand its leaderships over.
    pub async fn hold_writes(&self, deadline: tokio::time::Instant) -> Vec<super::gate::Held> {
        let hosted = self.hosted();
        let held = hosted.iter().map(|replica| replica.writes.hold()).collect();
        for replica in &hosted {
            if !replica.writes.settled(deadline).await {
                let metrics = replica.raft.metrics().borrow().clone();
                warn!(
                    range_id = replica.range_id,
                    state = ?metrics.state,
                    last_log = ?metrics.last_log_index,
                    applied = ?metrics.last_applied.map(|id| id.index),
                    replication = ?metrics.replication,
                    "writes still unanswered; handing over anyway"
                );
            }
        }
        held
    }

    /// Stops every replica (raft tasks flush nothing further after this).
    pub async fn shutdown(&self) {
        for replica in self.hosted() {
            if let Err(e) = replica.raft.shutdown().await {
                warn!(range_id = replica.range_id, error = %e, "replica shutdown failed");
            }
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
                    load: Some(replica.load.report(replica.range_id, replica.term())),
                }
            })
            .collect()
    }
}

fn spans_overlap(a: &RangeSpan, b: &RangeSpan) -> bool {
    let before = |key: &[u8], end: &[u8]| end.is_empty() || key < end;
    !a.meta && !b.meta && before(&a.start_key, &b.end_key) && before(&b.start_key, &a.end_key)
}

/// Keeps the hosted replicas and the table in step with what ranges apply.
struct Observer(std::sync::Weak<Replicas>);

impl RangeObserver for Observer {
    fn descriptor_applied(&self, descriptor: v1::RangeDescriptor) {
        if let Some(replicas) = self.0.upgrade() {
            replicas.table.learn(descriptor);
        }
    }

    fn range_changed(&self, descriptor: v1::RangeDescriptor) {
        let Some(replicas) = self.0.upgrade() else { return };
        // The record is rewritten off the apply path; the applied state already has it.
        let (storage, (key, value)) = (replicas.storage.clone(), replica_record(&descriptor));
        let range_id = descriptor.range_id;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = storage.put_local(&key, &value) {
                warn!(range_id, error = %e, "cannot record a replica's new descriptor");
            }
        });
        replicas.table.learn(descriptor);
    }

    fn range_split(&self, left: v1::RangeDescriptor, right: Option<v1::RangeDescriptor>) {
        let Some(replicas) = self.0.upgrade() else { return };
        replicas.table.learn(left.clone());
        let Some(right) = right else { return };
        replicas.table.learn(right.clone());
        // Opening starts a raft group (and builds its first snapshot): not on the apply path.
        let led_left = replicas.get(left.range_id).is_some_and(|r| r.is_leader());
        tokio::spawn(async move {
            let range_id = right.range_id;
            match replicas.open(right).await {
                // The left half's leader stands first, so the halves start with one leader.
                Ok(replica) if led_left => campaign_for_right_half(&replica).await,
                Ok(_) => {}
                Err(e) => warn!(range_id, error = %e, "cannot open the right half of a split"),
            }
        });
    }

    fn range_merged(&self, left: v1::RangeDescriptor, right: v1::RangeDescriptor) {
        let Some(replicas) = self.0.upgrade() else { return };
        replicas.table.learn(left);
        replicas.table.learn(right.clone());
        // Stopping a raft group waits for its tasks: not on the apply path.
        tokio::spawn(async move {
            if let Err(e) = replicas.remove(right.range_id).await {
                warn!(range_id = right.range_id, error = %e, "cannot stop the replica of a merged range");
            }
        });
    }
}

/// How long the right half's first candidate waits for votes before standing again.
const SPLIT_VOTE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// After this, the right half is left to raft's own election timers.
const SPLIT_CAMPAIGN_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Stands for the right half of a split until a leader is known. The other replicas open the
/// right half only when they apply the split, often after this node asked for their votes; a
/// refused round would otherwise leave the new range without a leader, and its keys
/// unavailable, for a whole election timeout (1–2 s under load, measured in `bench`).
async fn campaign_for_right_half(replica: &Replica) {
    let range_id = replica.range_id;
    let deadline = tokio::time::Instant::now() + SPLIT_CAMPAIGN_LIMIT;
    while tokio::time::Instant::now() < deadline {
        let metrics = replica.raft.metrics().borrow().clone();
        if metrics.current_leader.is_some() || metrics.running_state.is_err() {
            return;
        }
        if let Err(e) = replica.raft.trigger().elect().await {
            warn!(range_id, error = %e, "the right half could not start an election");
            return;
        }
        let wait = replica.raft.wait(Some(SPLIT_VOTE_WAIT));
        if wait.metrics(|m| m.current_leader.is_some(), "a leader").await.is_ok() {
            return;
        }
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
        let hosted = self.hosted();
        self.metrics.range_count.set(hosted.len() as i64);
        self.metrics.range_leader_count.set(hosted.iter().filter(|r| r.is_leader()).count() as i64);
        self.metrics
            .range_bytes
            .set(hosted.iter().map(|r| r.load.report(r.range_id, r.term()).bytes).sum::<u64>() as i64);
        for replica in hosted {
            let labels = RangeLabels { range: replica.range_id };
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
    use std::time::Duration;

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
}
