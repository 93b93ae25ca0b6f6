//! The member view: what gossip says of each member (where it is, since when it is dead, its
//! failure domain and network coordinate), as the range layer needs it for placement.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::planner::MemberInfo;
use crate::gossip::vivaldi::Coordinate;
use crate::raft::NodeId;

#[derive(Debug, Clone, Default)]
struct Member {
    addr: String,
    dead_since: Option<Instant>,
    zone: String,
    region: String,
    coordinate: Option<Coordinate>,
    /// It announces it is being decommissioned (gossip tag `decommissioning`).
    decommissioning: bool,
}

/// The gossip tag a node being decommissioned announces.
pub const DECOMMISSIONING_TAG: &str = "decommissioning";

pub struct MemberView {
    node_id: NodeId,
    members: RwLock<BTreeMap<NodeId, Member>>,
    /// This node's own failure domain and coordinate (gossip lists only the others).
    own: RwLock<Member>,
    /// The zone and region this node learned at run time (on Kubernetes, from its Kubernetes
    /// node's topology labels); gossip announces them unless the configuration names its own.
    learned: RwLock<Topology>,
}

/// A failure domain: `zone` within `region`; empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub zone: String,
    pub region: String,
}

impl MemberView {
    pub fn new(node_id: NodeId, advertise: String, zone: String, region: String) -> Self {
        MemberView {
            node_id,
            members: RwLock::default(),
            own: RwLock::new(Member { addr: advertise, zone, region, ..Default::default() }),
            learned: RwLock::default(),
        }
    }

    /// This node's failure domain as learned at run time; whether it changed.
    pub fn learn_own_topology(&self, topology: Topology) -> bool {
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        let changed = *learned != topology;
        *learned = topology;
        changed
    }

    pub fn learned_topology(&self) -> Topology {
        self.learned.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gossip: `id` is alive at `addr`.
    pub fn alive(&self, id: NodeId, addr: String) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let member = members.entry(id).or_default();
        member.addr = addr;
        member.dead_since = None;
    }

    /// Gossip declared `id` dead (or it left); `fallback_addr` when gossip never knew it.
    pub fn failed(&self, id: NodeId, fallback_addr: Option<String>) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let member = members.entry(id).or_default();
        if member.addr.is_empty() {
            member.addr = fallback_addr.unwrap_or_default();
        }
        member.dead_since.get_or_insert_with(Instant::now);
    }

    /// Gossip's latest tags and coordinate of `id` (this node's own too).
    pub fn describe(&self, id: NodeId, tags: Option<&crate::gossip::events::Tags>, coordinate: Option<Coordinate>) {
        let tag = |name: &str| tags.and_then(|t| t.get(name)).cloned().unwrap_or_default();
        let update = |member: &mut Member| {
            member.zone = tag("zone");
            member.region = tag("region");
            member.decommissioning = tags.is_some_and(|t| t.contains_key(DECOMMISSIONING_TAG));
            member.coordinate = coordinate;
        };
        if id == self.node_id {
            update(&mut self.own.write().unwrap_or_else(|p| p.into_inner()));
        } else if let Some(member) = self.members.write().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            update(member);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Members and where gossip last saw them; the dead ones too, when `with_dead`.
    pub fn addresses(&self, with_dead: bool) -> BTreeMap<NodeId, String> {
        self.read()
            .iter()
            .filter(|(_, m)| with_dead || m.dead_since.is_none())
            .map(|(id, m)| (*id, m.addr.clone()))
            .collect()
    }

    pub fn is_dead(&self, id: NodeId) -> bool {
        self.read().get(&id).is_some_and(|m| m.dead_since.is_some())
    }

    /// Whether gossip knows `id` as alive (this node always is). Replicas only go to such
    /// nodes: a member not heard of yet, or dead, takes none.
    pub fn is_living(&self, id: NodeId) -> bool {
        id == self.node_id || self.read().get(&id).is_some_and(|m| m.dead_since.is_none())
    }

    /// Members gossip has declared dead or gone.
    pub fn down(&self) -> Vec<NodeId> {
        self.read().iter().filter(|(_, m)| m.dead_since.is_some()).map(|(id, _)| *id).collect()
    }

    /// Members dead for `after` or longer.
    pub fn dead_for(&self, after: Duration) -> Vec<NodeId> {
        self.read()
            .iter()
            .filter(|(_, m)| m.dead_since.is_some_and(|since| since.elapsed() >= after))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether this node coordinates the constellation's range changes: the lowest-numbered
    /// living member, as gossip sees it, so exactly one node acts (and another takes over if it
    /// dies).
    pub fn coordinates(&self) -> bool {
        let lowest_other = self.read().iter().filter(|(_, m)| m.dead_since.is_none()).map(|(id, _)| *id).min();
        lowest_other.is_none_or(|other| self.node_id < other)
    }

    /// The planner's view of `nodes` (those gossip never described get no zone).
    pub fn infos(&self, nodes: impl IntoIterator<Item = NodeId>) -> Vec<MemberInfo> {
        let members = self.read();
        let own = self.own.read().unwrap_or_else(|p| p.into_inner()).clone();
        nodes
            .into_iter()
            .map(|node_id| {
                let member = if node_id == self.node_id { Some(&own) } else { members.get(&node_id) };
                let alive = node_id == self.node_id || member.is_some_and(|m| m.dead_since.is_none());
                MemberInfo {
                    node_id,
                    // A member being decommissioned takes nothing, alive or not.
                    alive: alive && !member.is_some_and(|m| m.decommissioning),
                    zone: member.map(|m| m.zone.clone()).unwrap_or_default(),
                    region: member.map(|m| m.region.clone()).unwrap_or_default(),
                    coordinate: member.and_then(|m| m.coordinate.clone()),
                }
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }
}
