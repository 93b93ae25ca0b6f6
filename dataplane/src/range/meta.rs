//! The meta range from everywhere else: recording descriptors in it, allocating range ids from
//! it, and reading it from nodes that host no replica of it, so any node answers any range
//! lookup. Plus the upkeep every node runs for the ranges it leads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use pleiades_proto::v1::{self, raft_request::Rpc, raft_response::Result as RaftResult};
use tracing::{debug, info, warn};

use super::executor::Ranges;
use super::leader::propose;
use super::store::Replica;
use super::META_RANGE_ID;
use crate::raft::state_machine::read_descriptors;
use crate::raft::Outcome;

/// How often a node that hosts no meta replica reads meta, at most.
const META_REFRESH_EVERY: Duration = Duration::from_secs(5);
/// On demand (a lookup), meta is read again if the last read is older than this.
const META_REFRESH_ON_DEMAND: Duration = Duration::from_millis(500);

impl Ranges {
    /// The addresses of the meta range's replicas, the leader hint first.
    fn meta_candidates(&self) -> Vec<String> {
        let replicas = self.table.meta().map(|m| m.replicas).unwrap_or_default();
        let mut candidates: Vec<String> = replicas.iter().filter_map(|id| self.address_of(*id)).collect();
        if candidates.is_empty() {
            // A node that never learned meta's replicas asks everyone it knows.
            candidates = self.members().into_iter().filter(|m| m.node_id != self.node_id).map(|m| m.addr).collect();
        }
        candidates
    }

    /// Sends `rpc` to the meta range's leader (trying meta's replicas in turn).
    async fn call_meta(&self, rpc: Rpc) -> Result<RaftResult, String> {
        let request = v1::RaftRequest { range_id: META_RANGE_ID, from_node: self.node_id, rpc: Some(rpc) };
        self.ask_leader(&request, self.meta_candidates(), Duration::from_secs(5)).await.map_err(|e| e.message)
    }

    /// Sends a descriptor to the meta range's leader.
    pub async fn publish(&self, descriptor: v1::RangeDescriptor) {
        self.table.learn(descriptor.clone());
        let (range_id, generation) = (descriptor.range_id, descriptor.generation);
        match self.call_meta(Rpc::RecordDescriptor(descriptor)).await {
            Ok(_) => {
                self.published.lock().unwrap_or_else(|p| p.into_inner()).insert(range_id, generation);
            }
            Err(e) => warn!(range_id, error = %e, "no meta leader recorded the descriptor; the upkeep retries"),
        }
    }

    /// On the meta leader: stores `descriptor` unless a newer one is stored.
    pub(super) async fn record_in_meta(
        &self,
        meta: &Replica,
        descriptor: v1::RangeDescriptor,
    ) -> Result<(), v1::RaftError> {
        self.table.learn(descriptor.clone());
        propose(meta, self, v1::command::Op::SetDescriptor(descriptor)).await.map(|_| ())
    }

    /// A range id no range has had, from the meta range.
    pub(super) async fn allocate_range_id(&self) -> Result<u64, String> {
        if let Some(meta) = self.store.get(META_RANGE_ID).filter(|m| m.is_leader()) {
            return self.allocate_here(&meta).await.map_err(|e| e.message);
        }
        match self.call_meta(Rpc::AllocateRangeId(v1::AllocateRangeId {})).await? {
            RaftResult::AllocatedRangeId(id) if id != 0 => Ok(id),
            other => Err(format!("unexpected answer to a range id allocation: {other:?}")),
        }
    }

    /// On the meta leader: allocates a range id through the meta range's log.
    pub(super) async fn allocate_here(&self, meta: &Replica) -> Result<u64, v1::RaftError> {
        match propose(meta, self, v1::command::Op::AllocateRangeId(v1::AllocateRangeId {})).await? {
            Outcome::Allocated(id) => Ok(id),
            other => Err(super::leader::failed(format!("unexpected outcome of an allocation: {other:?}"))),
        }
    }

    /// Keeps the meta range's descriptors in step with what this node knows, when it leads meta.
    async fn sync_meta(&self) {
        let Some(meta) = self.store.get(META_RANGE_ID) else { return };
        if meta.raft.metrics().borrow().state != ServerState::Leader {
            return;
        }
        let stored: BTreeMap<u64, u64> = match read_descriptors(self.store.storage()) {
            Ok(stored) => stored.into_iter().map(|d| (d.range_id, d.generation)).collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the meta range");
                return;
            }
        };
        for descriptor in self.table.with_tombstones() {
            if stored.get(&descriptor.range_id).is_some_and(|g| *g >= descriptor.generation) {
                continue;
            }
            if let Err(e) = self.record_in_meta(&meta, descriptor).await {
                warn!(error = %e.message, "cannot record a range descriptor in the meta range");
                return;
            }
        }
    }

    /// Reads every descriptor from a node hosting meta, if this node hosts none and has not
    /// read it within `fresh_for` (concurrent callers share one read).
    pub async fn refresh_from_meta(&self, fresh_for: Duration) {
        if self.store.get(META_RANGE_ID).is_some() {
            return;
        }
        let mut last = self.meta_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < fresh_for) {
            return;
        }
        let candidates = self.meta_candidates();
        for addr in candidates.iter().rev() {
            match self.fetch_meta(addr).await {
                Ok(descriptors) => {
                    for descriptor in descriptors {
                        self.table.learn(descriptor);
                    }
                    *last = Some(Instant::now());
                    return;
                }
                Err(e) => debug!(%addr, error = %e, "cannot read the meta range there"),
            }
        }
    }

    /// The descriptors a meta replica at `addr` holds, through the raft service's ranges answer.
    async fn fetch_meta(&self, addr: &str) -> Result<Vec<v1::RangeDescriptor>, String> {
        let request = v1::RaftRequest {
            range_id: META_RANGE_ID,
            from_node: self.node_id,
            rpc: Some(Rpc::ReadMeta(v1::ReadMetaRequest {})),
        };
        match crate::raft::network::call(&self.peers, addr, &request, Duration::from_secs(3)).await {
            Ok(RaftResult::Descriptors(list)) => Ok(list.descriptors),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The meta range's descriptors as this node's replica of it holds them.
    pub(super) fn read_meta_here(&self) -> Result<Vec<v1::RangeDescriptor>, v1::RaftError> {
        read_descriptors(self.store.storage()).map_err(|e| super::leader::failed(e.to_string()))
    }

    /// For the ranges this node leads: sizes them when they may have grown, records their
    /// descriptors in meta if meta may not have them, and asks every voter that has matched
    /// nothing to create its replica (one that missed the split that made the range).
    async fn tend_led_ranges(&self) {
        let split_bytes = self.settings().split_bytes;
        for replica in self.store.hosted().into_iter().filter(|r| r.is_leader()) {
            if !replica.descriptor.span().meta && replica.load.needs_sizing(split_bytes / 8) {
                self.measure(&replica).await;
            }
            self.settle_merge(&replica).await;
            let descriptor = replica.descriptor();
            let recorded = self.published.lock().unwrap_or_else(|p| p.into_inner()).get(&descriptor.range_id).copied();
            if recorded.is_none_or(|g| g < descriptor.generation) {
                self.publish(descriptor.clone()).await;
            }
            let metrics = replica.raft.metrics().borrow().clone();
            let Some(replication) = metrics.replication else { continue };
            for (node, matched) in replication {
                if matched.is_some() || node == self.node_id {
                    continue;
                }
                let Some(addr) = self.address_of(node) else { continue };
                let create = v1::RaftRequest {
                    range_id: descriptor.range_id,
                    from_node: self.node_id,
                    rpc: Some(Rpc::CreateReplica(descriptor.clone())),
                };
                if let Err(e) = crate::raft::network::call(&self.peers, &addr, &create, Duration::from_secs(5)).await {
                    debug!(range_id = descriptor.range_id, node, error = %e, "cannot create a lagging voter's replica");
                }
            }
        }
    }

    /// Removes replicas left behind: a replica whose range, by a newer descriptor from meta, no
    /// longer lists this node was moved away while this node missed being told (it was busy,
    /// or down). CockroachDB's replica GC queue does the same.
    async fn collect_removed_replicas(&self) {
        for replica in self.store.hosted() {
            let own = replica.descriptor();
            let Some(known) = self.table.get(own.range_id) else { continue };
            if known.generation <= own.generation || known.replicas.contains(&self.node_id) || replica.is_leader() {
                continue;
            }
            info!(
                range_id = own.range_id,
                generation = known.generation,
                "removing a replica its range no longer lists"
            );
            if let Err(e) = self.store.remove(own.range_id).await {
                warn!(range_id = own.range_id, error = %e, "cannot remove a replica left behind");
            }
        }
    }

    /// Runs the periodic upkeep until the task is aborted.
    pub async fn upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            rounds += 1;
            self.sync_meta().await;
            self.refresh_from_meta(META_REFRESH_EVERY).await;
            if rounds.is_multiple_of(3) {
                self.tend_led_ranges().await;
                self.collect_removed_replicas().await;
            }
        }
    }

    /// Before answering a lookup: a node without a meta replica reads meta if its last read is
    /// more than a moment old.
    pub async fn refresh_for_lookup(&self) {
        self.refresh_from_meta(META_REFRESH_ON_DEMAND).await;
    }
}
