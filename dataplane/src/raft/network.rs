//! openraft's network over PWP: one QUIC connection per peer node (shared by all ranges), and
//! raft-service streams reused from call to call: a call has its stream to itself while it
//! runs, so each replication pipeline keeps an ordered lane.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, SnapshotSegmentId};
use pleiades_proto::payload_type;
use pleiades_proto::v1::{self, raft_request::Rpc, raft_response::Result as RaftResult};
use pleiades_proto::wire::Service;

use super::codec;
use super::{NodeId, TypeConfig};
use crate::observe::{Metrics, RangeLabels};
use crate::transport::pool::{OpenStream, Peers};
use crate::transport::stream::{ClientError, PwpStream};

/// Sends one raft-service request to the node at `addr`, on a stream an earlier call left open
/// when there is one; the stream is kept for the next call only if this one went well (a stream
/// that failed mid-call may still deliver a late answer).
pub async fn call(
    peers: &Peers,
    addr: &str,
    request: &v1::RaftRequest,
    timeout: Duration,
) -> Result<RaftResult, RpcFailure> {
    let mut open = match peers.idle_stream(addr, Service::Raft) {
        Some(open) => open,
        None => {
            let connection = peers.connection(addr).await.map_err(RpcFailure::Unreachable)?;
            match PwpStream::open(&connection, Service::Raft, timeout).await {
                Ok(stream) => OpenStream { stream, connection },
                Err(e) => {
                    let failure = RpcFailure::from(e);
                    if connection_lost(&failure) {
                        peers.forget(addr, &connection).await;
                    }
                    return Err(failure);
                }
            }
        }
    };
    open.stream.set_timeout(timeout);
    let result = exchange(&mut open.stream, request).await;
    match &result {
        Err(failure) if connection_lost(failure) => peers.forget(addr, &open.connection).await,
        Err(RpcFailure::Network(_)) => {}
        _ => peers.keep_idle(addr, Service::Raft, open),
    }
    result
}

/// Why a raft RPC got no usable answer.
#[derive(Debug)]
pub enum RpcFailure {
    Unreachable(String),
    Network(String),
    Remote(v1::RaftError),
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcFailure::Unreachable(e) => write!(f, "unreachable: {e}"),
            RpcFailure::Network(e) => write!(f, "network: {e}"),
            RpcFailure::Remote(e) => write!(f, "remote {:?}: {}", e.kind(), e.message),
        }
    }
}

impl From<ClientError> for RpcFailure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } | ClientError::Connection(_) => RpcFailure::Unreachable(e.to_string()),
            other => RpcFailure::Network(other.to_string()),
        }
    }
}

/// Whether a failure condemns the connection (it is gone), not just the stream (a slow answer).
/// A busy peer's late answer must not tear down the connection every other range shares; a
/// dead one is found by the connection's short idle timeout instead.
fn connection_lost(failure: &RpcFailure) -> bool {
    matches!(failure, RpcFailure::Unreachable(_))
}

/// openraft asks for answers within its heartbeat interval; a follower fsyncing under load can
/// take longer, and giving up early only resends the same entries. Never wait less than this.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(500);

async fn exchange(stream: &mut PwpStream, request: &v1::RaftRequest) -> Result<RaftResult, RpcFailure> {
    use prost::Message;
    let (kind, payload) = stream.call(payload_type::raft::REQUEST, request.encode_to_vec().into()).await?;
    if kind != payload_type::raft::RESPONSE {
        return Err(RpcFailure::Network(format!("answer of payload type {kind:#04x}")));
    }
    let response =
        v1::RaftResponse::decode(payload).map_err(|e| RpcFailure::Network(format!("malformed RaftResponse: {e}")))?;
    match response.result {
        Some(RaftResult::Error(e)) => Err(RpcFailure::Remote(e)),
        Some(result) => Ok(result),
        None => Err(RpcFailure::Network("RaftResponse without a result".into())),
    }
}

/// Makes the per-target clients of one range.
#[derive(Clone)]
pub struct RangeNetworkFactory {
    pub range_id: u64,
    pub local_node: NodeId,
    pub peers: Arc<Peers>,
    pub metrics: Arc<Metrics>,
    /// The wire's payload limit: an append that would exceed it is split (openraft resends
    /// fewer entries on `PayloadTooLarge`), or the follower would refuse it forever.
    pub max_payload: u64,
}

impl RaftNetworkFactory<TypeConfig> for RangeNetworkFactory {
    type Network = RangeNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RangeNetwork {
        RangeNetwork {
            range_id: self.range_id,
            local_node: self.local_node,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            metrics: self.metrics.clone(),
            max_payload: self.max_payload,
        }
    }
}

pub struct RangeNetwork {
    range_id: u64,
    local_node: NodeId,
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
    metrics: Arc<Metrics>,
    max_payload: u64,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RangeNetwork {
    async fn call(&mut self, rpc: Rpc, timeout: Duration) -> Result<RaftResult, RpcFailure> {
        let request = v1::RaftRequest { range_id: self.range_id, from_node: self.local_node, rpc: Some(rpc) };
        call(&self.peers, &self.addr, &request, timeout).await
    }

    fn failure<E: std::error::Error>(&self, failure: RpcFailure) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let error = std::io::Error::other(format!("range {} → node {}: {failure}", self.range_id, self.target));
        match failure {
            RpcFailure::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&error)),
            RpcFailure::Remote(remote) if remote.kind() == v1::RaftErrorKind::NoSuchRange => {
                RPCError::Unreachable(Unreachable::new(&error))
            }
            _ => RPCError::Network(NetworkError::new(&error)),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        self.failure(RpcFailure::Network("an answer of another RPC".into()))
    }

    fn malformed<E: std::error::Error>(
        &self,
        e: codec::CodecError,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        self.failure(RpcFailure::Network(e.to_string()))
    }
}

impl RaftNetwork<TypeConfig> for RangeNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let request = Rpc::AppendEntries(codec::append_request_to_proto(&rpc));
        // Room for the request's own fields beside its entries.
        let size = request.encoded_len() as u64 + 1024;
        let entries = rpc.entries.len() as u64;
        if size > self.max_payload && entries > 1 {
            let fitting = (entries * self.max_payload / size).clamp(1, entries - 1);
            return Err(PayloadTooLarge::new_entries_hint(fitting).into());
        }
        match self.call(request, option.hard_ttl().max(MIN_RPC_TIMEOUT)).await {
            Ok(RaftResult::AppendEntries(response)) => {
                codec::append_response_from_proto(&response).map_err(|e| self.malformed(e))
            }
            Ok(_) => Err(self.unexpected()),
            Err(failure) => Err(self.failure(failure)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let last_chunk = rpc.done;
        let request = Rpc::InstallSnapshot(v1::InstallSnapshotRequest {
            vote: Some(codec::vote_to_proto(&rpc.vote)),
            meta: Some(codec::snapshot_meta_to_proto(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        });
        match self.call(request, option.hard_ttl().max(MIN_RPC_TIMEOUT)).await {
            Ok(RaftResult::InstallSnapshot(response)) => {
                if last_chunk {
                    self.metrics.raft_snapshots_sent.get_or_create(&RangeLabels { range: self.range_id }).inc();
                }
                Ok(InstallSnapshotResponse {
                    vote: codec::vote_from_proto(response.vote.as_ref()).map_err(|e| self.malformed(e))?,
                })
            }
            Ok(_) => Err(self.unexpected()),
            Err(RpcFailure::Remote(remote)) if remote.kind() == v1::RaftErrorKind::SnapshotMismatch => {
                // The target lost track of this stream: openraft restarts it from offset 0.
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId { id: remote.expected_snapshot_id, offset: remote.expected_offset },
                    got: SnapshotSegmentId { id: rpc.meta.snapshot_id, offset: rpc.offset },
                };
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )))
            }
            Err(failure) => Err(self.failure(failure)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let request = Rpc::Vote(v1::VoteRequest {
            vote: Some(codec::vote_to_proto(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_proto(rpc.last_log_id.as_ref()),
        });
        match self.call(request, option.hard_ttl().max(MIN_RPC_TIMEOUT)).await {
            Ok(RaftResult::Vote(response)) => Ok(VoteResponse {
                vote: codec::vote_from_proto(response.vote.as_ref()).map_err(|e| self.malformed(e))?,
                vote_granted: response.vote_granted,
                last_log_id: codec::opt_log_id_from_proto(response.last_log_id.as_ref()),
            }),
            Ok(_) => Err(self.unexpected()),
            Err(failure) => Err(self.failure(failure)),
        }
    }
}
