//! The raft service (PWP 0x02) of the range layer: raft's own messages go to the hosted
//! replica; replica lifecycle and range changes go to the store or the leader's actions. Every
//! request is checked against what its caller — the node its certificate names — may do.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use pleiades_proto::v1::{self, raft_request::Rpc, raft_response::Result as RaftResult};

use super::executor::Ranges;
use crate::observe::RangeLabels;
use crate::raft::codec;
use crate::raft::NodeId;

impl Ranges {
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
            if self.store.get(request.range_id).is_none() {
                self.table.learn(descriptor.clone());
                self.store.create(descriptor).await.map_err(|e| fatal(e.to_string()))?;
            }
            return Ok(RaftResult::Done(true));
        }
        if let Rpc::Decommissioning(_) = rpc {
            self.set_decommissioning(true);
            return Ok(RaftResult::Done(true));
        }
        let replica = self.store.get(request.range_id).ok_or_else(|| {
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
                                .get_or_create(&RangeLabels { range: replica.range_id })
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
                self.store.remove(request.range_id).await.map_err(|e| fatal(e.to_string()))?;
                Ok(RaftResult::Done(true))
            }
            Rpc::MoveReplica(request) => {
                let moved = self.move_replica(&replica, request).await?;
                Ok(RaftResult::Moved(moved))
            }
            Rpc::RecordDescriptor(descriptor) => {
                if !replica.span().meta {
                    return Err(error(
                        v1::RaftErrorKind::Malformed,
                        "descriptors are recorded by the meta range".into(),
                    ));
                }
                self.record_in_meta(&replica, descriptor).await?;
                Ok(RaftResult::Done(true))
            }
            Rpc::Campaign(_) => {
                if let Some(why) = self.hlc.fenced() {
                    return Err(error(v1::RaftErrorKind::Refused, format!("{why}: this node takes no leadership")));
                }
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
            Rpc::SplitRange(request) => Ok(RaftResult::Split(self.split_range(&replica, request).await?)),
            Rpc::TransferLeader(request) => {
                self.transfer_leader(&replica, request.to_node).await?;
                Ok(RaftResult::Done(true))
            }
            Rpc::AllocateRangeId(_) => {
                if !replica.span().meta {
                    return Err(error(v1::RaftErrorKind::Malformed, "range ids come from the meta range".into()));
                }
                if !replica.is_leader() {
                    return Err(super::leader::not_leader(&replica));
                }
                Ok(RaftResult::AllocatedRangeId(self.allocate_here(&replica).await?))
            }
            Rpc::ReadMeta(_) => {
                if !replica.span().meta {
                    return Err(error(v1::RaftErrorKind::Malformed, "descriptors are read from the meta range".into()));
                }
                Ok(RaftResult::Descriptors(v1::DescriptorList { descriptors: self.read_meta_here()? }))
            }
            Rpc::MergeRange(request) => {
                Ok(RaftResult::Merged(self.merge_range(&replica, request.right_range_id).await?))
            }
            Rpc::FreezeForMerge(freeze) => Ok(RaftResult::Frozen(self.freeze_for_merge(&replica, freeze).await?)),
            Rpc::AbandonMerge(abandon) => Ok(RaftResult::Merged(self.abandon_merge(&replica, abandon).await?)),
            Rpc::AppliedIndex(_) => {
                let applied = replica.raft.metrics().borrow().last_applied.map_or(0, |id| id.index);
                Ok(RaftResult::AppliedIndex(applied))
            }
            Rpc::CreateReplica(_) | Rpc::Decommissioning(_) => Ok(RaftResult::Done(true)),
        }
    }
}
