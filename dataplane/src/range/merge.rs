//! Merges, CockroachDB's subsume in four raft commands. The left-hand range's leader runs it:
//! `BeginMerge` on the left (it now expects the right and nothing else), `FreezeForMerge` on
//! the right (no more writes, no linearizable reads: its data is final), a wait until every
//! replica of the right has applied the freeze, and `MergeRanges` on the left, which takes the
//! right's span on every replica at once (the data is already there: both ranges have their
//! replicas on the same nodes, and keys carry no range prefix). Anything short of that ends
//! in `AbandonMerge` on both, left first. A right-hand range frozen for too long (its merger
//! died) asks the left to abandon and thaws unless the merge won.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pleiades_proto::v1::{self, command::Op, raft_request::Rpc, raft_response::Result as RaftResult};
use tracing::{debug, info, warn};

use super::executor::Ranges;
use super::leader::{failed, not_leader, propose, refused};
use super::store::Replica;
use crate::raft::{NodeId, Outcome};

/// How long the left waits for every replica of the frozen right to apply its freeze.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a range stays in one merge attempt before its leader settles it.
const MERGE_TOO_LONG: Duration = Duration::from_secs(30);

impl Ranges {
    /// On the left-hand range's leader: subsumes `right_id`, its right-hand neighbour.
    pub(super) async fn merge_range(
        &self,
        left: &Replica,
        right_id: u64,
    ) -> Result<v1::RangeDescriptor, v1::RaftError> {
        let _one_at_a_time = left.changing.lock().await;
        if !left.is_leader() {
            return Err(not_leader(left));
        }
        let own = left.descriptor();
        let right = self.table.get(right_id).ok_or_else(|| refused(format!("no range {right_id} is known")))?;
        if own.meta || own.end_key.is_empty() || own.end_key != right.start_key || right.merged_into != 0 {
            return Err(refused(format!("range {right_id} is not the right-hand neighbour of range {}", own.range_id)));
        }
        let voters: BTreeSet<NodeId> = own.replicas.iter().copied().collect();
        if voters != right.replicas.iter().copied().collect() {
            return Err(refused(format!("ranges {} and {right_id} are not on the same nodes", own.range_id)));
        }
        let epoch = match propose(left, self, Op::BeginMerge(v1::BeginMerge { right_range_id: right_id })).await? {
            Outcome::Range(begun) => begun.merge_epoch,
            Outcome::Refused(why) => return Err(refused(why)),
            other => return Err(failed(format!("unexpected outcome of a merge's start: {other:?}"))),
        };
        match self.subsume(left, right_id, epoch, &voters).await {
            Ok(merged) => Ok(merged),
            Err(e) => {
                self.abandon(left, &right, epoch).await;
                Err(e)
            }
        }
    }

    /// Freezes the right, waits for its replicas, and proposes the merge.
    async fn subsume(
        &self,
        left: &Replica,
        right_id: u64,
        epoch: u64,
        voters: &BTreeSet<NodeId>,
    ) -> Result<v1::RangeDescriptor, v1::RaftError> {
        let members = self.living_members();
        let freeze = Rpc::FreezeForMerge(v1::FreezeForMerge { into_range_id: left.range_id, epoch });
        let (right, frozen_at) = match self.call_leader(right_id, freeze, &members, Duration::from_secs(10)).await {
            Ok(RaftResult::Frozen(v1::FrozenRange { descriptor: Some(descriptor), frozen_at })) => {
                (descriptor, frozen_at)
            }
            Ok(other) => return Err(failed(format!("unexpected answer to a freeze: {other:?}"))),
            Err(e) => return Err(refused(format!("range {right_id} did not freeze: {e}"))),
        };
        if voters != &right.replicas.iter().copied().collect::<BTreeSet<_>>() {
            return Err(refused(format!("range {right_id} moved before it froze")));
        }
        self.wait_until_applied(right_id, frozen_at, voters, &members).await?;
        match propose(left, self, Op::Merge(v1::MergeRanges { right: Some(right) })).await? {
            Outcome::Merged { left: merged, right: tombstone } => {
                self.metrics.range_merges.inc();
                left.load.forget_size();
                self.publish(merged.clone()).await;
                self.publish(tombstone).await;
                info!(range_id = merged.range_id, right = right_id, "merged the right-hand neighbour");
                Ok(merged)
            }
            Outcome::Refused(why) => Err(refused(why)),
            other => Err(failed(format!("unexpected outcome of a merge: {other:?}"))),
        }
    }

    /// Waits until the replica of `range_id` on every voter has applied `index`.
    async fn wait_until_applied(
        &self,
        range_id: u64,
        index: u64,
        voters: &BTreeSet<NodeId>,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<(), v1::RaftError> {
        let deadline = Instant::now() + APPLY_WAIT;
        let request = v1::RaftRequest {
            range_id,
            from_node: self.node_id,
            rpc: Some(Rpc::AppliedIndex(v1::AppliedIndexRequest {})),
        };
        let mut waiting: BTreeSet<NodeId> = voters.clone();
        loop {
            for node in waiting.clone() {
                let applied = if node == self.node_id {
                    self.store.get(range_id).and_then(|r| r.raft.metrics().borrow().last_applied).map(|id| id.index)
                } else {
                    let Some(addr) = members.get(&node) else { continue };
                    match crate::raft::network::call(&self.peers, addr, &request, Duration::from_secs(2)).await {
                        Ok(RaftResult::AppliedIndex(applied)) => Some(applied),
                        other => {
                            debug!(range_id, node, answer = ?other, "no applied index yet");
                            None
                        }
                    }
                };
                if applied.is_some_and(|applied| applied >= index) {
                    waiting.remove(&node);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(refused(format!("nodes {waiting:?} did not apply the freeze of range {range_id}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The attempt is off: the left stops expecting it, then the right is asked to thaw (it
    /// checks with the left itself). If the left cannot say, the right settles it later.
    async fn abandon(&self, left: &Replica, right: &v1::RangeDescriptor, epoch: u64) {
        let abandon = Op::AbandonMerge(v1::AbandonMerge { right_range_id: right.range_id, epoch });
        match propose(left, self, abandon).await {
            Ok(Outcome::Range(now)) if covers(&now, right) => return,
            Ok(Outcome::Range(_)) => {}
            Ok(other) => return warn!(range_id = left.range_id, ?other, "unexpected outcome of abandoning a merge"),
            Err(e) => {
                return warn!(range_id = left.range_id, error = %e.message, "cannot abandon a merge; the right thaws later")
            }
        }
        let rpc = Rpc::AbandonMerge(v1::AbandonMerge { right_range_id: right.range_id, epoch });
        let members = self.living_members();
        if let Err(e) = self.call_leader(right.range_id, rpc, &members, Duration::from_secs(5)).await {
            warn!(range_id = right.range_id, error = %e, "cannot thaw the range after an abandoned merge; it thaws later");
        }
    }

    /// On the right-hand range's leader: freezes it for a merge attempt.
    pub(super) async fn freeze_for_merge(
        &self,
        right: &Replica,
        freeze: v1::FreezeForMerge,
    ) -> Result<v1::FrozenRange, v1::RaftError> {
        // Under the lock moves and splits take: neither is under way, and none starts after.
        let _one_at_a_time = right.changing.lock().await;
        if !right.is_leader() {
            return Err(not_leader(right));
        }
        match propose(right, self, Op::FreezeForMerge(freeze)).await? {
            Outcome::Frozen { descriptor, index } => {
                Ok(v1::FrozenRange { descriptor: Some(descriptor), frozen_at: index })
            }
            Outcome::Refused(why) => Err(refused(why)),
            other => Err(failed(format!("unexpected outcome of a freeze: {other:?}"))),
        }
    }

    /// `AbandonMerge` from a peer. To the left: stop expecting that attempt, and answer with
    /// the left as it is now. To the right: thaw, if the left confirms the attempt is off.
    pub(super) async fn abandon_merge(
        &self,
        replica: &Replica,
        abandon: v1::AbandonMerge,
    ) -> Result<v1::RangeDescriptor, v1::RaftError> {
        if replica.range_id == abandon.right_range_id {
            return self.thaw(replica, abandon.epoch).await;
        }
        // No lock: the left's log orders this against the attempt's merge, and one of them
        // wins on every replica (a merger holding the lock may be the one asking).
        if !replica.is_leader() {
            return Err(not_leader(replica));
        }
        match propose(replica, self, Op::AbandonMerge(abandon)).await? {
            Outcome::Range(descriptor) => Ok(descriptor),
            other => Err(failed(format!("unexpected outcome of abandoning a merge: {other:?}"))),
        }
    }

    /// On a frozen range's leader: asks the range it was to merge into to abandon the attempt,
    /// and thaws unless that range has subsumed this one meanwhile. The left's log orders the
    /// merge and its abandonment, so exactly one wins, and the right thaws only if it lost.
    async fn thaw(&self, right: &Replica, epoch: u64) -> Result<v1::RangeDescriptor, v1::RaftError> {
        let own = right.descriptor();
        if own.merging_into == 0 || own.merge_epoch != epoch {
            return Ok(own);
        }
        let members = self.living_members();
        let rpc = Rpc::AbandonMerge(v1::AbandonMerge { right_range_id: right.range_id, epoch });
        let left = match self.call_leader(own.merging_into, rpc, &members, Duration::from_secs(5)).await {
            Ok(RaftResult::Merged(left)) => left,
            Ok(other) => return Err(failed(format!("unexpected answer from the merging range: {other:?}"))),
            Err(e) => return Err(failed(format!("range {} does not answer: {e}", own.merging_into))),
        };
        if covers(&left, &own) || (left.absorbing == own.range_id && left.merge_epoch == epoch) {
            // Merged (this replica goes with the range), or the attempt goes on.
            return Ok(own);
        }
        let _one_at_a_time = right.changing.lock().await;
        if !right.is_leader() {
            return Err(not_leader(right));
        }
        match propose(right, self, Op::AbandonMerge(v1::AbandonMerge { right_range_id: right.range_id, epoch })).await?
        {
            Outcome::Range(thawed) => {
                info!(range_id = right.range_id, "thawed: the merge is off");
                Ok(thawed)
            }
            other => Err(failed(format!("unexpected outcome of a thaw: {other:?}"))),
        }
    }

    /// On a led range in a merge for longer than [`MERGE_TOO_LONG`] (its merger may have died):
    /// a left-hand range abandons the attempt (and has its neighbour thaw), a frozen right-hand
    /// range thaws if the merge is off.
    pub(super) async fn settle_merge(&self, replica: &Replica) {
        let own = replica.descriptor();
        let in_merge = own.absorbing != 0 || own.merging_into != 0;
        let since = {
            let mut since = replica.merge_seen.lock().unwrap_or_else(|p| p.into_inner());
            match *since {
                _ if !in_merge => {
                    *since = None;
                    return;
                }
                Some((epoch, at)) if epoch == own.merge_epoch => at,
                _ => {
                    *since = Some((own.merge_epoch, Instant::now()));
                    return;
                }
            }
        };
        if since.elapsed() < MERGE_TOO_LONG {
            return;
        }
        if own.merging_into != 0 {
            if let Err(e) = self.thaw(replica, own.merge_epoch).await {
                warn!(range_id = own.range_id, error = %e.message, "frozen for a merge that may be off; trying again later");
            }
            return;
        }
        // A merge under way holds the lock; one that died left the attempt behind.
        let Ok(_one_at_a_time) = replica.changing.try_lock() else { return };
        let right =
            v1::RangeDescriptor { range_id: own.absorbing, start_key: own.end_key.clone(), ..Default::default() };
        warn!(range_id = own.range_id, right = own.absorbing, "abandoning a merge attempt that stalled");
        self.abandon(replica, &right, own.merge_epoch).await;
    }
}

impl Ranges {
    /// The living members with this node among them (gossip lists only the others).
    fn living_members(&self) -> BTreeMap<NodeId, String> {
        let mut members = self.members.addresses(false);
        members.insert(self.node_id, self.advertise.clone());
        members
    }
}

/// Whether `left` has taken `right`'s span.
fn covers(left: &v1::RangeDescriptor, right: &v1::RangeDescriptor) -> bool {
    left.start_key <= right.start_key && (left.end_key.is_empty() || left.end_key > right.start_key)
}
