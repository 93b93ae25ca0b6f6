//! A node whose clock gossip found too far from the other members' has its HLC fenced: it
//! stamps nothing and its KV service refuses requests. This task keeps it out of leadership for
//! as long: every range it leads is handed to a follower, it stands in no election, and it
//! reports itself not ready (so a Kubernetes Service stops sending it clients). When its clock
//! is back within bounds, it campaigns and serves again.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::drain::hand_over_leaderships;
use crate::clock::Hlc;
use crate::observe::Health;
use crate::raft::NodeId;
use crate::range::store::Replicas;
use crate::transport::pool::Peers;

/// How often the fence is checked; a replica opened meanwhile could campaign no sooner than
/// its election timeout, which is longer.
const CHECK: Duration = Duration::from_millis(500);
/// How long one round of hand-overs may take before the next check.
const HAND_OVER_LIMIT: Duration = Duration::from_secs(3);

/// Runs until aborted.
pub async fn lead_nothing_while_fenced(
    clock: Arc<Hlc>,
    replicas: Arc<Replicas>,
    peers: Arc<Peers>,
    health: Arc<Health>,
    node_id: NodeId,
) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_fenced = false;
    loop {
        tick.tick().await;
        let fence = clock.fenced();
        let fenced = fence.is_some();
        if fenced || was_fenced {
            for replica in replicas.hosted() {
                replica.raft.runtime_config().elect(!fenced);
            }
        }
        match fence {
            Some(why) => {
                health.set_not_ready(format!("clock fenced: {why}"));
                let handed = hand_over_leaderships(&replicas, &peers, node_id, HAND_OVER_LIMIT).await;
                if handed.handed > 0 || !handed.kept.is_empty() {
                    warn!(handed = handed.handed, kept = ?handed.kept, "clock fenced: leaderships handed over");
                }
            }
            // The gossip shell logs the fence and its lifting.
            None if was_fenced => health.set_ready(),
            None => {}
        }
        was_fenced = fenced;
    }
}
