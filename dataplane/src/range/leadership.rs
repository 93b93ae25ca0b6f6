//! Leadership transfer. openraft 0.9 has none, so it is built from what it has: the leader
//! picks a voter whose replication has matched its whole log and asks it to campaign
//! (`Campaign`). The leader grants that vote — its log is no longer than the candidate's, and
//! its own lease (taken when it was elected) has run out — and steps down on seeing the higher
//! term; with the candidate's own vote that is a majority of three. Where it does not work
//! (five replicas, a leader elected moments ago) the caller tries again later. Used by a
//! draining node for every range it leads and by the planner to balance leaders.

use std::time::Duration;

use openraft::ServerState;
use pleiades_proto::v1::{self, raft_request::Rpc};
use tokio::time::Instant;
use tracing::warn;

use super::store::Replica;
use crate::raft::NodeId;
use crate::transport::pool::Peers;

/// How long a leader waits for the follower it asked to win before asking another.
const ELECTION_WAIT: Duration = Duration::from_millis(1_500);

/// Hands one range's leadership to a caught-up follower (`to`, when given); the new leader's
/// id, or why not. New writes to the range must be refused meanwhile (see
/// [`Replica::transferring`]): a leader still taking them may never have a follower with all of
/// its log.
pub async fn hand_over(
    replica: &Replica,
    peers: &Peers,
    node_id: NodeId,
    to: Option<NodeId>,
    deadline: Instant,
) -> Result<NodeId, String> {
    let range_id = replica.range_id;
    let mut asked: Option<(NodeId, Instant)> = None;
    let mut metrics = replica.raft.metrics();
    loop {
        let now = metrics.borrow().clone();
        // Stepped down: done once another node is known to lead.
        if let Some(leader) = now.current_leader.filter(|leader| *leader != node_id) {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(match (now.state, asked) {
                (ServerState::Leader, Some((node, _))) => {
                    format!("asked node {node} to campaign, but no follower took the leadership in time")
                }
                (ServerState::Leader, None) => format!(
                    "no follower caught up with the log (last index {:?}, matched {:?})",
                    now.last_log_index, now.replication
                ),
                _ => "stepped down, but no new leader was elected in time".into(),
            });
        }
        let waiting_for_election = asked.is_some_and(|(_, at)| at.elapsed() < ELECTION_WAIT);
        if now.state == ServerState::Leader && !waiting_for_election {
            let tried = asked.map(|(node, _)| node);
            match caught_up_follower(&now, node_id, tried, to) {
                Some((target, addr)) => {
                    let request = v1::RaftRequest {
                        range_id,
                        from_node: node_id,
                        rpc: Some(Rpc::Campaign(v1::CampaignRequest {})),
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Err(e) = crate::raft::network::call(peers, &addr, &request, left).await {
                        warn!(range_id, target, error = %e, "a follower could not be asked to campaign");
                    }
                    asked = Some((target, Instant::now()));
                }
                None if now.membership_config.voter_ids().all(|voter| voter == node_id) => {
                    return Err("no other voter".into());
                }
                // Followers still catching up: the next append or heartbeat moves them on.
                None => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), metrics.changed()).await;
    }
}

/// A voter other than this node (`to`, when given) whose replication has matched the whole
/// log, preferring one not tried last, with its address.
fn caught_up_follower(
    metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    node_id: NodeId,
    tried: Option<NodeId>,
    to: Option<NodeId>,
) -> Option<(NodeId, String)> {
    let replication = metrics.replication.as_ref()?;
    let membership = metrics.membership_config.membership();
    let mut candidates: Vec<NodeId> = metrics
        .membership_config
        .voter_ids()
        .filter(|voter| *voter != node_id && to.is_none_or(|to| to == *voter))
        .filter(|voter| {
            let matched = replication.get(voter).and_then(|log_id| log_id.map(|id| id.index));
            matched.is_some() && matched == metrics.last_log_index
        })
        .collect();
    candidates.sort_by_key(|voter| Some(*voter) == tried);
    let target = *candidates.first()?;
    Some((target, membership.get_node(&target)?.addr.clone()))
}
