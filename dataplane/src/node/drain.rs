//! A node that leaves on purpose (SIGTERM: a rollout step, a scale-down) first hands every range
//! it leads to a follower (`range::leadership`), so writers see a leader change of milliseconds
//! instead of waiting for an election timeout after it is gone. Where a hand-over does not work
//! the range falls back to an ordinary election once the node is gone.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::raft::NodeId;
use crate::range::leadership::hand_over;
use crate::range::store::{Replica, Replicas};
use crate::transport::pool::Peers;

/// What a hand-over achieved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HandOver {
    /// Ranges now led elsewhere.
    pub handed: usize,
    /// Ranges still led here when the time ran out (or led here alone).
    pub kept: Vec<u64>,
}

/// Hands every range this node leads to a caught-up follower, all ranges at once, within
/// `limit`. New writes must already be refused: a leader still taking them may never have a
/// follower that has all of its log.
pub async fn hand_over_leaderships(replicas: &Replicas, peers: &Peers, node_id: NodeId, limit: Duration) -> HandOver {
    let deadline = Instant::now() + limit;
    let led: Vec<Arc<Replica>> = replicas
        .hosted()
        .into_iter()
        .filter(|replica| replica.raft.metrics().borrow().state == ServerState::Leader)
        .collect();
    let attempts = led.iter().map(|replica| async move {
        // After a planned transfer or move under way on this range: two hand-overs at once ask
        // two followers to campaign, and their split votes leave the range leaderless.
        let _one_at_a_time = tokio::time::timeout_at(deadline, replica.changing.lock())
            .await
            .map_err(|_| "a change of the range did not finish in time".to_string())?;
        hand_over(replica, peers, node_id, None, deadline).await
    });
    let outcomes = futures::future::join_all(attempts).await;
    let mut result = HandOver::default();
    for (replica, outcome) in led.iter().zip(outcomes) {
        let range_id = replica.range_id;
        match outcome {
            Ok(to) => {
                info!(range_id, to, "handed the range's leadership over");
                result.handed += 1;
            }
            Err(why) => {
                warn!(range_id, %why, "the range's leadership stays here until this node is gone");
                result.kept.push(range_id);
            }
        }
    }
    result
}
