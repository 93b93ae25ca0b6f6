//! What a range's leader does when asked (by the coordinator, an operator, or a joining
//! node): move a replica, split the range, hand its leadership over. Each holds the replica's
//! `changing` lock, so changes to one range happen one at a time and each is judged against
//! the state the previous one left.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use pleiades_proto::v1::{self, raft_request::Rpc};
use tracing::{info, warn};

use super::executor::Ranges;
use super::placement::{voters_after, Move};
use super::store::Replica;
use crate::raft::{NodeId, Outcome};

/// How long a leader that moved its own replica away keeps heartbeating before it stops.
const STEP_ASIDE_DELAY: Duration = Duration::from_millis(500);
/// How long a leadership transfer may take before the leader takes writes again.
const TRANSFER_LIMIT: Duration = Duration::from_secs(2);

pub(super) fn refused(message: String) -> v1::RaftError {
    v1::RaftError { kind: v1::RaftErrorKind::Refused.into(), message, ..Default::default() }
}

pub(super) fn failed(message: String) -> v1::RaftError {
    v1::RaftError { kind: v1::RaftErrorKind::Fatal.into(), message, ..Default::default() }
}

pub(super) fn not_leader(replica: &Replica) -> v1::RaftError {
    let leader = replica.leader();
    v1::RaftError {
        kind: v1::RaftErrorKind::NotLeader.into(),
        message: format!("range {} is led by {:?}", replica.range_id, leader.as_ref().map(|l| l.node_id)),
        leader_addr: leader.map(|l| l.addr).unwrap_or_default(),
        ..Default::default()
    }
}

/// A raft write on this leader, with its outcome or the error a caller should see.
pub(super) async fn propose(replica: &Replica, ranges: &Ranges, op: v1::command::Op) -> Result<Outcome, v1::RaftError> {
    // Through the same gate as clients' writes: a hand-over of the meta range must not race the
    // descriptors other nodes record in it.
    let Some(_admitted) = replica.writes.admit() else {
        return Err(refused(format!("range {} is handing its leadership over; try again", replica.range_id)));
    };
    let command = v1::Command { timestamp: ranges.hlc.now().ok().map(Into::into), op: Some(op) };
    match replica.raft.client_write(command).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(not_leader(replica)),
        Err(e) => Err(failed(e.to_string())),
    }
}

impl Ranges {
    /// On a range's leader: adds `add_node` (created empty, then a learner until it has caught
    /// up), then swaps it in for `remove_node` in one joint-consensus change, and tells the
    /// removed node and the meta range.
    pub(super) async fn move_replica(
        self: &Arc<Self>,
        replica: &Replica,
        request: v1::MoveReplicaRequest,
    ) -> Result<v1::RangeDescriptor, v1::RaftError> {
        let _one_at_a_time = replica.changing.lock().await;
        if !replica.is_leader() {
            return Err(not_leader(replica));
        }
        let range_id = replica.range_id;
        let own = replica.descriptor();
        if own.merging_into != 0 || own.absorbing != 0 {
            // A replica moved off a frozen range would take data its node's share of the merged
            // range needs; the merge decides first.
            return Err(refused(format!("range {range_id} is in a merge; try again")));
        }
        let membership = replica.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_joint_config().len() > 1 {
            return Err(refused(format!("range {range_id} is changing its membership; try again")));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if request.add_node != 0 && request.add_addr.is_empty() {
            return Err(refused("the node to add needs an address".into()));
        }
        if request.add_node != 0 && !voters.contains(&request.add_node) && !self.takes_replicas(request.add_node) {
            return Err(refused(format!("node {} is leaving or down: it takes no replica", request.add_node)));
        }
        let step = Move { range_id, add: request.add_node, remove: request.remove_node };
        let after = voters_after(&voters, &step, self.factor() as usize).map_err(refused)?;
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
            let ranges = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(STEP_ASIDE_DELAY).await;
                if let Err(e) = ranges.store.remove(range_id).await {
                    warn!(range_id, error = %e, "cannot remove this node's replica after moving it away");
                }
            });
        }
        self.publish(descriptor.clone()).await;
        Ok(descriptor)
    }

    /// On a range's leader: splits it at `request.split_key` (empty: near the middle of its
    /// data), with a range id from the meta range, in one raft command; records both halves in
    /// meta. Returns the two halves.
    pub(super) async fn split_range(
        self: &Arc<Self>,
        replica: &Replica,
        request: v1::SplitRangeRequest,
    ) -> Result<v1::SplitResult, v1::RaftError> {
        let _one_at_a_time = replica.changing.lock().await;
        if !replica.is_leader() {
            return Err(not_leader(replica));
        }
        let span = replica.span();
        let key = match request.split_key {
            key if !key.is_empty() => key,
            _ => self.measure(replica).await.middle_key.ok_or_else(|| {
                refused(format!("range {} holds too little to split near its middle", replica.range_id))
            })?,
        };
        if span.meta || !span.contains(&key) || key == span.start_key {
            return Err(refused(format!("{key:02x?} is not strictly inside range {}", replica.range_id)));
        }
        let new_range_id = self.allocate_range_id().await.map_err(failed)?;
        let op = v1::command::Op::Split(v1::SplitRange { split_key: key, new_range_id, sticky: request.sticky });
        match propose(replica, self, op).await? {
            Outcome::Split { left, right } => {
                self.metrics.range_splits.inc();
                replica.load.forget_size();
                if request.for_load {
                    replica.load.split_for_load();
                }
                self.publish(left.clone()).await;
                self.publish(right.clone()).await;
                info!(range_id = left.range_id, right = right.range_id, for_load = request.for_load, "split the range");
                Ok(v1::SplitResult { left: Some(left), right: Some(right) })
            }
            Outcome::Refused(why) => Err(refused(why)),
            other => Err(failed(format!("unexpected outcome of a split: {other:?}"))),
        }
    }

    /// On a range's leader: hands the leadership to `to`, holding new writes back meanwhile
    /// (at most [`TRANSFER_LIMIT`]) so the target can catch up with the whole log.
    pub(super) async fn transfer_leader(&self, replica: &Replica, to: NodeId) -> Result<(), v1::RaftError> {
        let _one_at_a_time = replica.changing.lock().await;
        let metrics = replica.raft.metrics().borrow().clone();
        // The target itself, asked as a follower, must redirect like anyone else: only the
        // leader knows whether the leadership has moved.
        if metrics.state != ServerState::Leader {
            return Err(not_leader(replica));
        }
        if to == self.node_id {
            return Ok(());
        }
        if !self.takes_replicas(to) {
            return Err(refused(format!("node {to} is leaving or down: it takes no leadership")));
        }
        if !metrics.membership_config.voter_ids().any(|voter| voter == to) {
            return Err(refused(format!("node {to} holds no voting replica of range {}", replica.range_id)));
        }
        let deadline = tokio::time::Instant::now() + TRANSFER_LIMIT;
        let result = {
            // Writes resume however this ends, even if the caller goes away mid-transfer.
            let _held = replica.writes.hold();
            replica.writes.settled(deadline).await;
            super::leadership::hand_over(replica, &self.peers, self.node_id, Some(to), deadline).await
        };
        let new_leader = result.map_err(refused)?;
        self.metrics.range_leader_transfers.inc();
        info!(range_id = replica.range_id, to = new_leader, "handed the range's leadership over");
        Ok(())
    }

    /// Sizes a replica's span now (off the async workers).
    pub(super) async fn measure(&self, replica: &Replica) -> crate::storage::SpanStats {
        let (storage, bounds) = (self.store.storage().clone(), replica.span().bounds());
        // Far enough to see either size the planner splits at (live, or history-heavy).
        let stop_after = self.settings().split_bytes.saturating_mul(super::planner::HISTORY_FACTOR + 1);
        let measured = tokio::task::spawn_blocking(move || storage.span_stats(&bounds, stop_after)).await;
        match measured {
            Ok(Ok(stats)) => {
                replica.load.sized(stats.clone());
                stats
            }
            Ok(Err(e)) => {
                warn!(range_id = replica.range_id, error = %e, "cannot size the range");
                Default::default()
            }
            Err(e) => {
                warn!(range_id = replica.range_id, error = %e, "cannot size the range");
                Default::default()
            }
        }
    }
}
