//! The range planner: a pure function from what the constellation looks like (descriptors, per
//! range load, the member view) to what should change (split, merge, move a replica, transfer a
//! leadership). Sans-IO: the executor feeds it a survey and carries out what it returns; the
//! simulator (`range::sim`) feeds it a model of a thousand nodes.

use std::collections::BTreeMap;

use pleiades_proto::v1::RangeDescriptor;

use super::placement::Move;
use crate::gossip::vivaldi::Coordinate;
use crate::raft::NodeId;

/// One member as gossip sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub node_id: NodeId,
    /// Alive by gossip (and not draining): only such members take replicas or leaderships.
    pub alive: bool,
    /// Failure domains from the node's configured tags (`zone`, `region`); empty: unknown.
    pub zone: String,
    pub region: String,
    /// Its Vivaldi coordinate, when gossip has one.
    pub coordinate: Option<Coordinate>,
}

/// What a range's leader measured over the last load window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeLoad {
    pub bytes: u64,
    pub keys: u64,
    pub reads_per_second: f64,
    pub writes_per_second: f64,
    pub write_bytes_per_second: f64,
    /// The node leading the range now.
    pub leader: Option<NodeId>,
    /// A key near the middle of the range's data (for a split by size).
    pub middle_key: Option<Vec<u8>>,
    /// A key that splits the sampled requests of the window in two (for a split by load).
    pub load_split_key: Option<Vec<u8>>,
    /// Milliseconds since the range was last split for load (None: never, or long ago).
    pub split_for_load_ms_ago: Option<u64>,
}

impl RangeLoad {
    pub fn requests_per_second(&self) -> f64 {
        self.reads_per_second + self.writes_per_second
    }
}

/// Knobs of the planner; the node takes them from `[constellation]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerSettings {
    pub replication_factor: u32,
    /// A range larger than this splits at its middle key.
    pub split_bytes: u64,
    /// Two adjacent ranges smaller than this together, and cold, merge.
    pub merge_bytes: u64,
    /// A range busier than this (reads + writes per second) splits at its load split key.
    pub load_split_requests_per_second: f64,
    /// How long after a split for load the two halves may not merge again, in milliseconds.
    pub load_window_ms: u64,
    /// A node may hold this fraction above (or below) the mean replica count before replicas
    /// move off (onto) it; `0.1` is ±10 %.
    pub rebalance_threshold: f64,
    /// Zones where leaders should be, in order of preference (empty: anywhere).
    pub lease_preferences: Vec<String>,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            replication_factor: 3,
            split_bytes: 512 << 20,
            merge_bytes: 128 << 20,
            load_split_requests_per_second: 2_500.0,
            load_window_ms: 300_000,
            rebalance_threshold: 0.1,
            lease_preferences: Vec::new(),
        }
    }
}

/// What the constellation looks like to the planner.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub descriptors: &'a [RangeDescriptor],
    pub load: &'a BTreeMap<u64, RangeLoad>,
    pub members: &'a [MemberInfo],
    pub settings: &'a PlannerSettings,
}

/// One change the executor carries out.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Split {
        range_id: u64,
        key: Vec<u8>,
        reason: SplitReason,
    },
    /// `left` subsumes `right`, its neighbour; both have their replicas on the same nodes.
    Merge {
        left: u64,
        right: u64,
    },
    Move(Move),
    TransferLeader {
        range_id: u64,
        to: NodeId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitReason {
    Size,
    Load,
}
