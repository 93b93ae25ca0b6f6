//! The executor: carries the planner's decisions out. One node — the coordinator, the lowest
//! living member by gossip — surveys the constellation (descriptors, members, each leader's
//! load), runs the planner and sends each decision to the range's leader (`range::leader`),
//! one at a time per range and a few per round, so reshaping never starves serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pleiades_proto::v1::{self, raft_request::Rpc, raft_response::Result as RaftResult};
use tracing::{debug, info, warn};

use super::members::MemberView;
use super::placement::{plan_down_replicate, plan_join, Move, PlanError};
use super::planner::{self, Decision, PlannerSettings, RangeLoad, SplitReason};
use super::store::Replicas;
use super::table::DescriptorTable;
use crate::clock::Hlc;
use crate::observe::Metrics;
use crate::raft::network::RpcFailure;
use crate::raft::NodeId;
use crate::transport::pool::Peers;

/// Survey-and-move passes of a decommission, at most.
const DECOMMISSION_PASSES: usize = 10;
/// How long a decommission that found nothing left to move waits before it looks again.
const DECOMMISSION_SETTLE: Duration = Duration::from_secs(3);
/// Calls one pass over a range's replicas makes, hints included.
const LEADER_HOPS: usize = 8;
/// Decisions carried out per planner round, so a round never takes long.
const DECISIONS_PER_ROUND: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DecommissionError {
    /// A replica has nowhere to go: only another node (or a dead one back) unblocks it.
    #[error(transparent)]
    NoPlacement(PlanError),
    /// A move failed on the way; trying again may succeed.
    #[error("{0}")]
    Failed(String),
}

/// Why a range's leader gave no answer.
pub(super) struct LeaderCallError {
    /// The leader refused the request: asking again will not help.
    pub refused: bool,
    pub message: String,
}

/// What a survey found.
pub struct Survey {
    pub ranges: Vec<v1::RangeDescriptor>,
    /// Every member known, by id, at its address.
    pub members: BTreeMap<NodeId, String>,
    /// What each range's leader reported.
    pub load: BTreeMap<u64, RangeLoad>,
}

/// The range layer of one node: its store of replicas, the descriptor table, the member view,
/// and what acts on them.
pub struct Ranges {
    pub node_id: NodeId,
    pub advertise: String,
    pub store: Arc<Replicas>,
    pub table: Arc<DescriptorTable>,
    pub members: Arc<MemberView>,
    pub(super) peers: Arc<Peers>,
    pub(super) hlc: Arc<Hlc>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: RwLock<PlannerSettings>,
    /// Whether the coordinator runs the planner (splits, rebalancing); repairs run regardless.
    pub(super) reshape: bool,
    /// How long a dead member's replicas wait before they are rebuilt elsewhere (None: never).
    replace_dead_after: Option<Duration>,
    /// Generations of led ranges already recorded in meta by this node.
    pub(super) published: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// Serialises reads of meta on demand (`refresh_from_meta`).
    pub(super) meta_refresh: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// This node is being decommissioned: it takes no replica (kept across restarts).
    decommissioning: std::sync::atomic::AtomicBool,
}

/// Node-local marker of a node being decommissioned.
const DECOMMISSIONING_KEY: &[u8] = b"decommissioning";

impl Ranges {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Replicas>,
        table: Arc<DescriptorTable>,
        members: Arc<MemberView>,
        peers: Arc<Peers>,
        hlc: Arc<Hlc>,
        metrics: Arc<Metrics>,
        settings: PlannerSettings,
        reshape: bool,
        replace_dead_after: Option<Duration>,
    ) -> Arc<Self> {
        let decommissioning = store.storage().get_local(DECOMMISSIONING_KEY).ok().flatten().is_some();
        Arc::new(Ranges {
            node_id: store.node_id,
            advertise: store.advertise.clone(),
            store,
            table,
            members,
            peers,
            hlc,
            metrics,
            settings: RwLock::new(settings),
            reshape,
            replace_dead_after,
            published: Default::default(),
            meta_refresh: Default::default(),
            decommissioning: decommissioning.into(),
        })
    }

    pub fn is_decommissioning(&self) -> bool {
        self.decommissioning.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks this node as being decommissioned (or, `false`, back in service), durably; gossip
    /// announces it, so the coordinator places nothing here.
    pub fn set_decommissioning(&self, on: bool) {
        let stored = match on {
            true => self.store.storage().put_local(DECOMMISSIONING_KEY, b"1"),
            false => self.store.storage().delete_local(DECOMMISSIONING_KEY),
        };
        if let Err(e) = stored {
            warn!(error = %e, "cannot record the node's decommissioning state");
        }
        if self.decommissioning.swap(on, std::sync::atomic::Ordering::AcqRel) != on {
            info!(decommissioning = on, "this node's decommissioning state changed");
        }
    }

    /// Tells `leaving` it is being decommissioned (itself, or over the raft service); a node
    /// that cannot be told is down and takes nothing anyway.
    async fn announce_decommissioning(&self, leaving: NodeId, members: &BTreeMap<NodeId, String>) {
        if leaving == self.node_id {
            self.set_decommissioning(true);
            return;
        }
        let Some(addr) = members.get(&leaving) else { return };
        let request = v1::RaftRequest {
            range_id: 0,
            from_node: self.node_id,
            rpc: Some(Rpc::Decommissioning(Default::default())),
        };
        if let Err(e) = crate::raft::network::call(&self.peers, addr, &request, Duration::from_secs(3)).await {
            debug!(node_id = leaving, error = %e, "the leaving node was not told it is being decommissioned");
        }
    }

    pub(super) fn settings(&self) -> PlannerSettings {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn factor(&self) -> u32 {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).replication_factor
    }

    /// Every member this node knows of: the living gossip members, and the members of its
    /// replicas' groups, at the address gossip last saw (a restarted pod may have moved).
    pub fn members(&self) -> Vec<v1::MemberNode> {
        let mut nodes = BTreeMap::new();
        nodes.insert(self.node_id, self.advertise.clone());
        for replica in self.store.hosted() {
            let metrics = replica.raft.metrics().borrow().clone();
            for (id, node) in metrics.membership_config.nodes() {
                nodes.entry(*id).or_insert_with(|| node.addr.clone());
            }
        }
        for (id, addr) in self.members.addresses(true) {
            if id != self.node_id && (!self.members.is_dead(id) || nodes.contains_key(&id)) {
                nodes.insert(id, addr);
            }
        }
        nodes.into_iter().map(|(node_id, addr)| v1::MemberNode { node_id, addr }).collect()
    }

    /// Whether `node` may take a replica or a leadership: alive, and not being decommissioned.
    pub(super) fn takes_replicas(&self, node: NodeId) -> bool {
        match node == self.node_id {
            true => !self.is_decommissioning(),
            false => self.members.infos([node]).first().is_some_and(|info| info.alive),
        }
    }

    pub(super) fn address_of(&self, node_id: NodeId) -> Option<String> {
        self.members().into_iter().find(|m| m.node_id == node_id).map(|m| m.addr)
    }

    /// Gossip: `id` left gracefully or was declared dead. Its replicas keep their quorum while
    /// the others live; if it stays dead for `replace_dead_after`, the coordinator rebuilds them
    /// elsewhere (`repair_once`). Meanwhile it takes no new replicas.
    pub fn member_failed(&self, id: NodeId) {
        self.members.failed(id, self.address_of(id));
        let affected = self.table.held_by(id);
        warn!(node_id = id, ranges_with_a_replica_there = affected, "replication: member reported dead");
    }

    /// The descriptors, members and leaders' load a node knows, over its KV service.
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

    /// The newest descriptors, every member known to this node and the members it knows, and
    /// what each range's leader measured.
    pub async fn survey(&self, seed: Option<&str>) -> Survey {
        let mut members: BTreeMap<NodeId, String> = self.members().into_iter().map(|m| (m.node_id, m.addr)).collect();
        let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
        let mut load: BTreeMap<u64, RangeLoad> = BTreeMap::new();
        for replica in self.store.hosted().into_iter().filter(|r| r.is_leader()) {
            terms.insert(replica.range_id, replica.term());
            load.insert(
                replica.range_id,
                range_load(replica.load.report(replica.range_id, replica.term()), Some(self.node_id)),
            );
        }
        let mut asked = BTreeSet::new();
        let mut to_ask: Vec<String> = seed.into_iter().map(str::to_string).chain(members.values().cloned()).collect();
        while let Some(addr) = to_ask.pop() {
            if addr == self.advertise || !asked.insert(addr.clone()) {
                continue;
            }
            if members.iter().any(|(id, a)| *a == addr && self.members.is_dead(*id)) {
                continue;
            }
            match self.fetch_ranges(&addr).await {
                Ok(answer) => {
                    for descriptor in answer.ranges {
                        self.table.learn(descriptor);
                    }
                    for node in answer.nodes {
                        if let std::collections::btree_map::Entry::Vacant(entry) = members.entry(node.node_id) {
                            to_ask.push(node.addr.clone());
                            entry.insert(node.addr);
                        }
                    }
                    let leaders: BTreeMap<u64, NodeId> =
                        answer.leaders.iter().filter_map(|l| Some((l.range_id, l.leader.as_ref()?.node_id))).collect();
                    for report in answer.loads {
                        // Two replicas may both think they lead: the deposed one has not heard
                        // of the next term yet. The higher term is the leader.
                        if terms.get(&report.range_id).is_some_and(|term| *term >= report.term) {
                            continue;
                        }
                        terms.insert(report.range_id, report.term);
                        let leader = leaders.get(&report.range_id).copied();
                        load.insert(report.range_id, range_load(report, leader));
                    }
                }
                Err(e) => warn!(%addr, error = %e, "cannot ask a member for its ranges"),
            }
        }
        Survey { ranges: self.table.descriptors(), members, load }
    }

    /// Sends `rpc` to the leader of `range_id` (through its replicas as `members` places them,
    /// following leadership hints), retrying for a while; a refusal ends it at once.
    pub(super) async fn call_leader(
        &self,
        range_id: u64,
        rpc: Rpc,
        members: &BTreeMap<NodeId, String>,
        timeout: Duration,
    ) -> Result<RaftResult, String> {
        let request = v1::RaftRequest { range_id, from_node: self.node_id, rpc: Some(rpc) };
        let mut last_error = String::from("no replica to ask");
        for attempt in 0..20u32 {
            let replicas = self.table.get(range_id).map(|d| d.replicas).unwrap_or_default();
            let candidates: Vec<String> = replicas.iter().filter_map(|id| members.get(id).cloned()).collect();
            match self.ask_leader(&request, candidates, timeout).await {
                Ok(answer) => return Ok(answer),
                Err(LeaderCallError { refused: true, message }) => return Err(message),
                Err(LeaderCallError { message, .. }) => last_error = message,
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10) + 1))).await;
        }
        Err(format!("range {range_id}: {last_error}"))
    }

    /// One pass over `candidates` (the last first), following `NOT_LEADER` hints, at most
    /// [`LEADER_HOPS`] calls.
    pub(super) async fn ask_leader(
        &self,
        request: &v1::RaftRequest,
        mut candidates: Vec<String>,
        timeout: Duration,
    ) -> Result<RaftResult, LeaderCallError> {
        let mut message = String::from("no replica to ask");
        for _ in 0..LEADER_HOPS {
            let Some(addr) = candidates.pop() else { break };
            match crate::raft::network::call(&self.peers, &addr, request, timeout).await {
                Ok(answer) => return Ok(answer),
                Err(RpcFailure::Remote(e)) if e.kind() == v1::RaftErrorKind::NotLeader => {
                    if !e.leader_addr.is_empty() {
                        candidates.push(e.leader_addr.clone());
                    }
                    message = e.message;
                }
                Err(RpcFailure::Remote(e)) if e.kind() == v1::RaftErrorKind::Refused => {
                    return Err(LeaderCallError { refused: true, message: e.message })
                }
                Err(e) => message = format!("{addr}: {e}"),
            }
        }
        Err(LeaderCallError { refused: false, message })
    }

    /// Carries out one move through the range's leader.
    pub(super) async fn execute_move(
        &self,
        step: &Move,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<v1::RangeDescriptor, String> {
        let add_addr = match step.add {
            0 => String::new(),
            add => members.get(&add).cloned().ok_or_else(|| format!("node {add} has no known address"))?,
        };
        let rpc = Rpc::MoveReplica(v1::MoveReplicaRequest { add_node: step.add, add_addr, remove_node: step.remove });
        // Catching a learner up may take a while on a loaded range.
        match self.call_leader(step.range_id, rpc, members, Duration::from_secs(120)).await? {
            RaftResult::Moved(descriptor) => {
                self.table.learn(descriptor.clone());
                Ok(descriptor)
            }
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Joins a running constellation through `seed`: asks the ranges' leaders to move this
    /// node's fair share of replicas here. Idempotent: a node that has its share takes nothing.
    pub async fn join(self: &Arc<Self>, seed: &str) -> Result<Vec<Move>, String> {
        let Survey { ranges, mut members, .. } = self.survey(Some(seed)).await;
        if ranges.is_empty() {
            return Err(format!("{seed} told no ranges"));
        }
        // Joining (again, after a withdrawn scale-down) puts the node back in service.
        self.set_decommissioning(false);
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
        let (mut made, mut quiet) = (Vec::new(), false);
        // Until the leaving node holds nothing: the coordinator may have placed a replica there
        // before gossip told it of the decommissioning, so each pass plans from a fresh survey.
        for pass in 0..DECOMMISSION_PASSES {
            let Survey { ranges, members, load } = self.survey(None).await;
            if pass == 0 {
                self.announce_decommissioning(leaving, &members).await;
            }
            let mut infos = self.members.infos(members.keys().copied());
            // The leaving node takes nothing, even while it is alive.
            for info in infos.iter_mut().filter(|info| info.node_id == leaving) {
                info.alive = false;
            }
            let settings = self.settings();
            let view = planner::View { descriptors: &ranges, load: &load, members: &infos, settings: &settings };
            let moves = planner::plan_decommission_in(view, leaving).map_err(DecommissionError::NoPlacement)?;
            if moves.is_empty() {
                // Done once a second look, after a planner round's worth of moves already under
                // way elsewhere have landed, finds nothing either.
                if quiet {
                    break;
                }
                quiet = true;
                tokio::time::sleep(DECOMMISSION_SETTLE).await;
                continue;
            }
            quiet = false;
            for step in &moves {
                self.execute_move(step, &members).await.map_err(DecommissionError::Failed)?;
                match step.add {
                    0 => {
                        info!(range_id = step.range_id, "removed node {leaving}'s replica, which the range could spare")
                    }
                    to => info!(range_id = step.range_id, to, "moved a replica off node {leaving}"),
                }
                self.count_rebalance();
            }
            made.extend(moves);
        }
        Ok(made)
    }

    pub(super) fn count_rebalance(&self) {
        self.metrics.range_rebalances.inc();
    }

    /// One pass of the repairs and the planner, on the coordinator only: rebuilds elsewhere the
    /// replicas of members dead longer than `replace_dead_after`, brings every range to the
    /// replication factor, then reshapes (splits, rebalancing, leadership balance). What fails
    /// is retried on the next pass.
    pub async fn repair_once(self: &Arc<Self>) {
        if !self.members.coordinates() || self.members.is_empty() {
            return;
        }
        if let Some(after) = self.replace_dead_after {
            for id in self.members.dead_for(after) {
                if self.table.held_by(id) == 0 {
                    continue;
                }
                info!(node_id = id, ?after, "replication: rebuilding the replicas of a member dead too long");
                match self.decommission(id).await {
                    Ok(moves) => info!(node_id = id, moved = moves.len(), "replication: replicas rebuilt elsewhere"),
                    Err(e) => warn!(node_id = id, error = %e, "replication: cannot rebuild the replicas yet"),
                }
            }
        }
        let survey = self.survey(None).await;
        let living: Vec<NodeId> = survey.members.keys().copied().filter(|id| self.members.is_living(*id)).collect();
        let (settings, infos) = (self.settings(), self.members.infos(survey.members.keys().copied()));
        let view =
            planner::View { descriptors: &survey.ranges, load: &survey.load, members: &infos, settings: &settings };
        let steps: Vec<Move> = planner::plan_up_replicate_in(view)
            .into_iter()
            .chain(plan_down_replicate(&survey.ranges, &living, settings.replication_factor))
            .collect();
        for step in &steps {
            match self.execute_move(step, &survey.members).await {
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
        if steps.is_empty() && self.reshape {
            self.reshape_once(&survey).await;
        }
    }

    /// One planner round over `survey`, carrying out its first few decisions.
    async fn reshape_once(self: &Arc<Self>, survey: &Survey) {
        let settings = self.settings();
        let infos = self.members.infos(survey.members.keys().copied());
        let view =
            planner::View { descriptors: &survey.ranges, load: &survey.load, members: &infos, settings: &settings };
        let decisions = planner::plan(view);

        if !decisions.is_empty() {
            debug!(decisions = decisions.len(), "planner round");
        }
        for decision in decisions.into_iter().take(DECISIONS_PER_ROUND) {
            if let Err(e) = self.execute(&decision, &survey.members).await {
                warn!(?decision, error = %e, "a planned range change did not happen; the next round reconsiders");
            }
        }
    }

    /// Carries out one decision.
    pub async fn execute(&self, decision: &Decision, members: &BTreeMap<NodeId, String>) -> Result<String, String> {
        match decision {
            Decision::Split { range_id, key, reason } => {
                let rpc = Rpc::SplitRange(v1::SplitRangeRequest {
                    split_key: key.clone(),
                    for_load: *reason == SplitReason::Load,
                    sticky: *reason == SplitReason::Manual,
                });
                match self.call_leader(*range_id, rpc, members, Duration::from_secs(30)).await? {
                    RaftResult::Split(v1::SplitResult { left: Some(left), right: Some(right) }) => {
                        self.table.learn(left);
                        self.table.learn(right.clone());
                        Ok(format!("range {range_id} split ({reason:?}): range {} is the right half", right.range_id))
                    }
                    other => Err(format!("unexpected answer {other:?}")),
                }
            }
            Decision::Move(step) => {
                // Planned a moment ago: the target may have started leaving since.
                if step.add != 0 && !self.takes_replicas(step.add) {
                    return Err(format!("node {} no longer takes replicas", step.add));
                }
                self.execute_move(step, members).await?;
                self.count_rebalance();
                Ok(format!("range {}: node {} -> node {}", step.range_id, step.remove, step.add))
            }
            Decision::TransferLeader { range_id, to } if !self.takes_replicas(*to) => {
                Err(format!("node {to} no longer takes leaderships (range {range_id})"))
            }
            Decision::TransferLeader { range_id, to } => {
                let rpc = Rpc::TransferLeader(v1::TransferLeaderRequest { to_node: *to });
                self.call_leader(*range_id, rpc, members, Duration::from_secs(10)).await?;
                Ok(format!("range {range_id}: leadership moved to node {to}"))
            }
            Decision::Merge { left, right } => {
                let rpc = Rpc::MergeRange(v1::MergeRangeRequest { right_range_id: *right });
                match self.call_leader(*left, rpc, members, Duration::from_secs(30)).await? {
                    RaftResult::Merged(merged) => {
                        self.table.learn(merged);
                        Ok(format!("range {left} subsumed range {right}"))
                    }
                    other => Err(format!("unexpected answer {other:?}")),
                }
            }
        }
    }

    /// Runs the repairs and the planner every few seconds until aborted.
    pub async fn repair(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            self.repair_once().await;
        }
    }
}

fn range_load(report: v1::RangeLoadReport, leader: Option<NodeId>) -> RangeLoad {
    let key = |k: Vec<u8>| (!k.is_empty()).then_some(k);
    RangeLoad {
        bytes: report.bytes,
        live_bytes: report.live_bytes,
        keys: report.live_keys,
        reads_per_second: report.reads_per_second,
        writes_per_second: report.writes_per_second,
        write_bytes_per_second: report.write_bytes_per_second,
        leader,
        middle_key: key(report.middle_key),
        load_split_key: key(report.load_split_key),
        split_for_load_ms_ago: (report.split_for_load_ms_ago > 0).then_some(report.split_for_load_ms_ago),
        sized: report.sized,
    }
}
