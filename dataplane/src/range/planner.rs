//! The range planner: a pure function from what the constellation looks like (descriptors, per
//! range load, the member view) to what should change (split, merge, move a replica, transfer a
//! leadership). Sans-IO: the executor feeds it a survey and carries out what it returns; the
//! simulator (`range::sim`) feeds it a model of a thousand nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use pleiades_proto::v1::RangeDescriptor;

use super::placement::Move;
use crate::gossip::vivaldi::Coordinate;
use crate::raft::NodeId;
pub use repair::{plan_decommission_in, plan_up_replicate_in};

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
    /// Every record: live values, older versions and tombstones.
    pub bytes: u64,
    /// The latest value of each live key, with the key.
    pub live_bytes: u64,
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
    /// The sizes were measured since the range last changed (a range not yet sized looks
    /// empty, and must not merge for it).
    pub sized: bool,
}

/// History (older versions, tombstones) a range may carry, as a multiple of its split size,
/// before it splits for it.
pub const HISTORY_FACTOR: u64 = 4;

impl RangeLoad {
    pub fn requests_per_second(&self) -> f64 {
        self.reads_per_second + self.writes_per_second
    }

    /// Whether the range splits for its size: its live data passed the split size, or all its
    /// versions passed [`HISTORY_FACTOR`] times it. Deleting keys thus shrinks a range (so it
    /// can merge) without letting history grow it without bound.
    pub fn oversized(&self, split_bytes: u64) -> bool {
        self.live_bytes > split_bytes || self.bytes > split_bytes.saturating_mul(HISTORY_FACTOR)
    }
}

/// Knobs of the planner; the node takes them from `[constellation]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerSettings {
    pub replication_factor: u32,
    /// A range larger than this ([`RangeLoad::size`]) splits at its middle key.
    pub split_bytes: u64,
    /// Two adjacent ranges smaller than this together, and cold, merge (0: never).
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
    /// Replica moves one round may decide (each copies a range to a node; the executor carries
    /// them out one at a time per range).
    pub max_moves_per_round: usize,
    /// Leadership transfers one round may decide.
    pub max_leader_transfers_per_round: usize,
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
            max_moves_per_round: 8,
            max_leader_transfers_per_round: 16,
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
    /// Asked for by an operator: the boundary is sticky, never merged away by the planner.
    Manual,
}

/// Among the least loaded candidates with the same count, this many per zone are compared by
/// network distance: enough to prefer a near node, few enough to keep a round linear.
const CLOSEST_OF: usize = 4;

/// One planner round, in order: splits, merges (colocating neighbours first), zone spread,
/// replica count balance, lease preferences, leadership balance. Conservative: a range gets at
/// most one decision, moves and transfers are capped per round, and each is accounted for
/// before the next is chosen, so a round neither overshoots nor contradicts itself. Ranges with
/// a replica on a member that is not alive may split but are otherwise left to the repair path
/// ([`plan_decommission_in`]). Deterministic: the same view gives the same plan.
///
/// Balanced means: no living member holds more than `max(mean × (1 + threshold), mean + 1)`
/// replicas or fewer than `min(mean × (1 − threshold), mean − 1)` (the ±1 keeps small
/// constellations from moving replicas back and forth), and leaderships are within ±1 of their
/// mean, as far as zones and lease preferences allow. A move or transfer only ever goes from a
/// member to one with at least two fewer, so rounds converge.
pub fn plan(view: View<'_>) -> Vec<Decision> {
    let mut round = Round::new(view);
    round.split();
    round.merge();
    round.spread_over_zones();
    round.balance_replicas();
    round.follow_lease_preferences();
    round.balance_leaders();
    round.decisions
}

/// Whether `key` splits the range into two non-empty halves.
fn strictly_inside(range: &RangeDescriptor, key: &[u8]) -> bool {
    key > range.start_key.as_slice() && (range.end_key.is_empty() || key < range.end_key.as_slice())
}

/// The members, indexed: everything below names a member by its position here. Members are
/// sorted by id, so ordering by position is ordering by id, which keeps plans deterministic.
struct Members<'a> {
    info: Vec<&'a MemberInfo>,
    position: HashMap<NodeId, usize>,
    /// Index into `zone_names`; None: no zone, so the member is a failure domain of its own.
    zone: Vec<Option<usize>>,
    zone_names: Vec<&'a str>,
}

impl<'a> Members<'a> {
    fn new(members: &'a [MemberInfo]) -> Members<'a> {
        let mut info: Vec<&MemberInfo> = members.iter().collect();
        info.sort_by_key(|m| m.node_id);
        info.dedup_by_key(|m| m.node_id);
        let mut zone_names: Vec<&str> = info.iter().map(|m| m.zone.as_str()).filter(|z| !z.is_empty()).collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let zone = info.iter().map(|m| zone_names.binary_search(&m.zone.as_str()).ok()).collect();
        let position = info.iter().enumerate().map(|(index, m)| (m.node_id, index)).collect();
        Members { info, position, zone, zone_names }
    }

    fn len(&self) -> usize {
        self.info.len()
    }

    fn id(&self, member: usize) -> NodeId {
        self.info[member].node_id
    }

    fn alive(&self, member: usize) -> bool {
        self.info[member].alive
    }

    /// Members are grouped by zone, then come those with no zone as one last group.
    fn unzoned_group(&self) -> usize {
        self.zone_names.len()
    }

    fn group(&self, member: usize) -> usize {
        self.zone[member].unwrap_or(self.unzoned_group())
    }

    fn in_zone(&self, holders: &[usize], zone: usize) -> usize {
        holders.iter().filter(|h| self.zone[**h] == Some(zone)).count()
    }

    /// The range's replicas on members, and whether every replica is on a living member.
    fn holders(&self, range: &RangeDescriptor) -> (Vec<usize>, bool) {
        let holders: Vec<usize> = range.replicas.iter().filter_map(|id| self.position.get(id).copied()).collect();
        let healthy = holders.len() == range.replicas.len() && holders.iter().all(|h| self.alive(*h));
        (holders, healthy)
    }

    /// Estimated round trips from `member` to each of `others`, summed in seconds; infinite
    /// when a coordinate is missing, so members without one come last among equals.
    fn distance(&self, member: usize, others: &[usize]) -> f64 {
        let Some(from) = &self.info[member].coordinate else { return f64::INFINITY };
        others
            .iter()
            .map(|other| {
                self.info[*other].coordinate.as_ref().map_or(f64::INFINITY, |to| from.distance_to(to).as_secs_f64())
            })
            .sum()
    }
}

/// A count per member (replicas or leaderships), with the living members ordered by it, overall
/// and per group, so the least and most loaded are found in O(log n).
struct Tally {
    count: Vec<usize>,
    all: BTreeSet<(usize, usize)>,
    groups: Vec<BTreeSet<(usize, usize)>>,
    group_total: Vec<usize>,
    /// The group a living member is ordered in; None for members that are not alive.
    group_of: Vec<Option<usize>>,
}

impl Tally {
    fn new(members: &Members, count: Vec<usize>) -> Tally {
        let groups = members.unzoned_group() + 1;
        let mut tally = Tally {
            all: BTreeSet::new(),
            groups: vec![BTreeSet::new(); groups],
            group_total: vec![0; groups],
            group_of: vec![None; members.len()],
            count,
        };
        for member in (0..members.len()).filter(|m| members.alive(*m)) {
            let (group, count) = (members.group(member), tally.count[member]);
            tally.group_of[member] = Some(group);
            tally.all.insert((count, member));
            tally.groups[group].insert((count, member));
            tally.group_total[group] += count;
        }
        tally
    }

    fn change(&mut self, member: usize, up: bool) {
        let old = self.count[member];
        let new = if up { old + 1 } else { old.saturating_sub(1) };
        self.count[member] = new;
        if let Some(group) = self.group_of[member] {
            self.all.remove(&(old, member));
            self.all.insert((new, member));
            self.groups[group].remove(&(old, member));
            self.groups[group].insert((new, member));
            self.group_total[group] = self.group_total[group] + new - old;
        }
    }

    fn living(&self) -> usize {
        self.all.len()
    }

    fn mean(&self) -> f64 {
        self.all.iter().map(|(count, _)| *count).sum::<usize>() as f64 / self.living().max(1) as f64
    }

    fn least(&self) -> usize {
        self.all.first().map_or(0, |(count, _)| *count)
    }

    /// No living member outside the band: nothing to balance.
    fn within(&self, band: &Band) -> bool {
        let most = self.all.last().map_or(0, |(count, _)| *count);
        !band.above(most) && !band.below(self.least())
    }
}

/// Zones with a living member and none of `holders`.
fn lacking_zones(members: &Members, tally: &Tally, holders: &[usize]) -> Vec<usize> {
    (0..members.zone_names.len())
        .filter(|zone| !tally.groups[*zone].is_empty() && members.in_zone(holders, *zone) == 0)
        .collect()
}

struct RangeState<'a> {
    descriptor: &'a RangeDescriptor,
    load: Option<&'a RangeLoad>,
    holders: Vec<usize>,
    /// Every replica on a living member; the others are left to the repair path.
    healthy: bool,
    /// The living member leading it, if it holds a replica.
    leader: Option<usize>,
    /// Already given its one decision of the round.
    decided: bool,
}

impl RangeState<'_> {
    fn bytes(&self) -> u64 {
        self.load.map_or(0, |load| load.bytes)
    }

    fn movable(&self) -> bool {
        self.healthy && !self.decided
    }
}

struct Round<'a> {
    view: View<'a>,
    members: Members<'a>,
    ranges: Vec<RangeState<'a>>,
    replicas: Tally,
    leaders: Tally,
    bytes: Vec<u64>,
    decisions: Vec<Decision>,
    moves: usize,
    transfers: usize,
}

impl<'a> Round<'a> {
    fn new(view: View<'a>) -> Round<'a> {
        let members = Members::new(view.members);
        let mut replica_count = vec![0; members.len()];
        let mut leader_count = vec![0; members.len()];
        let mut bytes = vec![0; members.len()];
        let ranges: Vec<RangeState> = view
            .descriptors
            .iter()
            .map(|descriptor| {
                let load = view.load.get(&descriptor.range_id);
                let (holders, healthy) = members.holders(descriptor);
                let leader = load
                    .and_then(|load| load.leader)
                    .and_then(|id| members.position.get(&id).copied())
                    .filter(|m| members.alive(*m) && holders.contains(m));
                for holder in &holders {
                    replica_count[*holder] += 1;
                    bytes[*holder] += load.map_or(0, |load| load.bytes);
                }
                if let Some(leader) = leader {
                    leader_count[leader] += 1;
                }
                RangeState { descriptor, load, holders, healthy, leader, decided: false }
            })
            .collect();
        let replicas = Tally::new(&members, replica_count);
        let leaders = Tally::new(&members, leader_count);
        Round { view, members, ranges, replicas, leaders, bytes, decisions: Vec::new(), moves: 0, transfers: 0 }
    }

    fn settings(&self) -> &'a PlannerSettings {
        self.view.settings
    }

    fn split(&mut self) {
        let settings = self.settings();
        for state in self.ranges.iter_mut().filter(|s| !s.descriptor.meta) {
            let Some(load) = state.load else { continue };
            let inside = |key: &Option<Vec<u8>>| key.as_ref().filter(|k| strictly_inside(state.descriptor, k)).cloned();
            let by_size = load
                .oversized(settings.split_bytes)
                .then(|| inside(&load.middle_key).map(|key| (key, SplitReason::Size)))
                .flatten();
            let by_load = || {
                (load.requests_per_second() > settings.load_split_requests_per_second)
                    .then(|| inside(&load.load_split_key).map(|key| (key, SplitReason::Load)))
                    .flatten()
            };
            if let Some((key, reason)) = by_size.or_else(by_load) {
                state.decided = true;
                self.decisions.push(Decision::Split { range_id: state.descriptor.range_id, key, reason });
            }
        }
    }

    /// Whether a range may merge: small enough (checked for the pair), cold, and not split for
    /// load within the window (its halves would merge back and split again).
    fn mergeable(&self, state: &RangeState) -> bool {
        let settings = self.settings();
        let cold = |load: &RangeLoad| {
            load.requests_per_second() < settings.load_split_requests_per_second / 4.0
                && load.split_for_load_ms_ago.is_none_or(|ago| ago >= settings.load_window_ms)
        };
        !state.descriptor.meta && state.movable() && state.load.is_some_and(|load| load.sized && cold(load))
    }

    /// Whether two ranges merged would be small: live data under the merge size, and all
    /// versions under the history limit, so the merged range does not split again.
    fn small_together(&self, left: &RangeState, right: &RangeState) -> bool {
        let settings = self.settings();
        let (Some(l), Some(r)) = (left.load, right.load) else { return false };
        l.live_bytes.saturating_add(r.live_bytes) < settings.merge_bytes
            && l.bytes.saturating_add(r.bytes) < settings.split_bytes.saturating_mul(HISTORY_FACTOR)
    }

    fn merge(&mut self) {
        let mut order: Vec<usize> = (0..self.ranges.len()).filter(|i| !self.ranges[*i].descriptor.meta).collect();
        order.sort_by(|a, b| self.ranges[*a].descriptor.start_key.cmp(&self.ranges[*b].descriptor.start_key));
        for pair in order.windows(2) {
            let (left, right) = (&self.ranges[pair[0]], &self.ranges[pair[1]]);
            let adjacent = !left.descriptor.end_key.is_empty() && left.descriptor.end_key == right.descriptor.start_key;
            // A boundary made by hand or at bootstrap stays (CockroachDB's sticky bit).
            let sticky = right.descriptor.sticky;
            if !adjacent
                || sticky
                || !self.mergeable(left)
                || !self.mergeable(right)
                || !self.small_together(left, right)
            {
                continue;
            }
            let left_set: BTreeSet<usize> = left.holders.iter().copied().collect();
            let right_set: BTreeSet<usize> = right.holders.iter().copied().collect();
            if left_set == right_set {
                let (left_id, right_id) = (left.descriptor.range_id, right.descriptor.range_id);
                self.decisions.push(Decision::Merge { left: left_id, right: right_id });
            } else if self.moves < self.settings().max_moves_per_round {
                let Some((add, remove)) = self.colocation_step(&left_set, &right_set, right.holders.len()) else {
                    continue;
                };
                self.push_move(pair[1], add, remove);
            } else {
                continue;
            }
            self.ranges[pair[0]].decided = true;
            self.ranges[pair[1]].decided = true;
        }
    }

    /// One step bringing the right range's replicas onto the left's: add the least loaded
    /// missing member and remove the most loaded extra one in the same move (the executor adds
    /// before it removes). A lone addition or removal only while the factor allows it.
    fn colocation_step(
        &self,
        left: &BTreeSet<usize>,
        right: &BTreeSet<usize>,
        right_replicas: usize,
    ) -> Option<(Option<usize>, Option<usize>)> {
        let count = |member: &&usize| (self.replicas.count[**member], **member);
        let add = left.difference(right).min_by_key(count).copied();
        let remove = right.difference(left).max_by_key(count).copied();
        let factor = self.settings().replication_factor as usize;
        match (add, remove) {
            (Some(_), Some(_)) => Some((add, remove)),
            (Some(_), None) if right_replicas < factor => Some((add, None)),
            (None, Some(_)) if right_replicas > factor => Some((None, remove)),
            _ => None,
        }
    }

    /// Records a move and accounts for it, so the rest of the round sees it.
    fn push_move(&mut self, range: usize, add: Option<usize>, remove: Option<usize>) {
        let state = &mut self.ranges[range];
        let bytes = state.load.map_or(0, |load| load.bytes);
        if let Some(member) = remove {
            state.holders.retain(|h| *h != member);
            self.replicas.change(member, false);
            self.bytes[member] = self.bytes[member].saturating_sub(bytes);
        }
        if let Some(member) = add {
            state.holders.push(member);
            self.replicas.change(member, true);
            self.bytes[member] += bytes;
        }
        state.decided = true;
        self.moves += 1;
        let id = |member: Option<usize>| member.map_or(0, |m| self.members.id(m));
        let step = Move { range_id: state.descriptor.range_id, add: id(add), remove: id(remove) };
        self.decisions.push(Decision::Move(step));
    }

    /// The least loaded living member among `groups` holding none of the range (`exclude`);
    /// among equal counts the closest to `near`, then the lowest id.
    fn least_loaded(&self, groups: &[usize], exclude: &[usize], near: &[usize]) -> Option<usize> {
        let mut best: Option<(usize, f64, usize)> = None;
        for group in groups {
            let candidates = self.replicas.groups[*group].iter().filter(|(_, m)| !exclude.contains(m));
            for (count, member) in candidates.take(CLOSEST_OF) {
                if best.is_some_and(|(least, _, _)| *count > least) {
                    break;
                }
                let candidate = (*count, self.members.distance(*member, near), *member);
                let better = |b: (usize, f64, usize)| {
                    candidate.0.cmp(&b.0).then(candidate.1.total_cmp(&b.1)).then(candidate.2.cmp(&b.2)).is_lt()
                };
                if best.is_none_or(better) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(_, _, member)| member)
    }

    /// A range with two replicas in one zone while a zone (or a member with no zone) without
    /// any is alive: the crowded zone's most loaded replica moves to the least loaded member
    /// there. Comes before count balance, which never takes diversity back.
    fn spread_over_zones(&mut self) {
        let cap = self.settings().max_moves_per_round;
        for index in 0..self.ranges.len() {
            if self.moves >= cap {
                break;
            }
            let state = &self.ranges[index];
            if !state.movable() {
                continue;
            }
            let crowded = (0..self.members.zone_names.len()).find(|z| self.members.in_zone(&state.holders, *z) >= 2);
            let Some(crowded) = crowded else { continue };
            let source = state
                .holders
                .iter()
                .copied()
                .filter(|h| self.members.zone[*h] == Some(crowded))
                .max_by_key(|h| (self.replicas.count[*h], *h));
            let Some(source) = source else { continue };
            let mut groups = lacking_zones(&self.members, &self.replicas, &state.holders);
            groups.push(self.members.unzoned_group());
            let near: Vec<usize> = state.holders.iter().copied().filter(|h| *h != source).collect();
            if let Some(target) = self.least_loaded(&groups, &state.holders, &near) {
                self.push_move(index, Some(target), Some(source));
            }
        }
    }

    /// Groups a replica on `source` may move to without lowering the range's zone count: its
    /// own zone, zones the range lacks, members with no zone; anywhere if its zone holds two.
    fn allowed_groups(&self, holders: &[usize], source: usize) -> Vec<usize> {
        match self.members.zone[source] {
            Some(zone) if self.members.in_zone(holders, zone) >= 2 => (0..=self.members.unzoned_group()).collect(),
            own => {
                let mut groups = lacking_zones(&self.members, &self.replicas, holders);
                groups.extend(own);
                groups.push(self.members.unzoned_group());
                groups
            }
        }
    }

    /// Moves replicas from the most loaded members to the least loaded ones until no member is
    /// outside the band. Each member's movable ranges are looked at once per round, biggest
    /// first from a member above the mean in bytes and smallest first otherwise, so bytes even
    /// out as a side effect.
    fn balance_replicas(&mut self) {
        let cap = self.settings().max_moves_per_round;
        if self.moves >= cap || self.replicas.living() < 2 {
            return;
        }
        let mean = self.replicas.mean();
        let threshold = self.settings().rebalance_threshold.max(0.0);
        let band =
            Band { high: (mean * (1.0 + threshold)).max(mean + 1.0), low: (mean * (1.0 - threshold)).min(mean - 1.0) };
        if self.replicas.within(&band) {
            return;
        }
        let living_bytes: u64 = self.replicas.all.iter().map(|(_, m)| self.bytes[*m]).sum();
        let mean_bytes = living_bytes as f64 / self.replicas.living() as f64;
        let mut movable: Vec<VecDeque<usize>> = vec![VecDeque::new(); self.members.len()];
        for (index, state) in self.ranges.iter().enumerate().filter(|(_, s)| s.movable()) {
            for holder in &state.holders {
                movable[*holder].push_back(index);
            }
        }
        for queue in &mut movable {
            queue.make_contiguous().sort_by_key(|i| (std::cmp::Reverse(self.ranges[*i].bytes()), *i));
        }
        let mut sources = self.replicas.all.clone();
        while self.moves < cap {
            let Some(&(count, source)) = sources.last() else { break };
            let least = self.replicas.least();
            if (!band.above(count) && !band.below(least)) || count < least + 2 {
                break;
            }
            let biggest_first = self.bytes[source] as f64 > mean_bytes;
            let Some((range, target)) = self.balance_move(source, &mut movable[source], biggest_first, &band) else {
                sources.remove(&(count, source));
                continue;
            };
            let target_count = self.replicas.count[target];
            self.push_move(range, Some(target), Some(source));
            sources.remove(&(count, source));
            sources.insert((count - 1, source));
            if sources.remove(&(target_count, target)) {
                sources.insert((target_count + 1, target));
            }
        }
    }

    fn balance_move(
        &self,
        source: usize,
        queue: &mut VecDeque<usize>,
        biggest_first: bool,
        band: &Band,
    ) -> Option<(usize, usize)> {
        let count = self.replicas.count[source];
        while let Some(range) = if biggest_first { queue.pop_front() } else { queue.pop_back() } {
            let state = &self.ranges[range];
            if state.decided {
                continue;
            }
            let groups = self.allowed_groups(&state.holders, source);
            let near: Vec<usize> = state.holders.iter().copied().filter(|h| *h != source).collect();
            let Some(target) = self.least_loaded(&groups, &state.holders, &near) else { continue };
            let target_count = self.replicas.count[target];
            if target_count + 2 <= count && (band.above(count) || band.below(target_count)) {
                return Some((range, target));
            }
        }
        None
    }

    /// The first preferred zone in which the range has a living replica.
    fn lease_zone(&self, state: &RangeState) -> Option<usize> {
        self.settings()
            .lease_preferences
            .iter()
            .filter_map(|name| self.members.zone_names.binary_search(&name.as_str()).ok())
            .find(|zone| state.holders.iter().any(|h| self.members.alive(*h) && self.members.zone[*h] == Some(*zone)))
    }

    /// The replica (other than on `from`) that should lead instead: in the lease zone if there
    /// is one, with the fewest leaderships.
    fn leader_target(&self, state: &RangeState, from: usize) -> Option<usize> {
        let zone = self.lease_zone(state);
        state
            .holders
            .iter()
            .copied()
            .filter(|h| *h != from && self.members.alive(*h) && zone.is_none_or(|z| self.members.zone[*h] == Some(z)))
            .min_by_key(|h| (self.leaders.count[*h], *h))
    }

    fn push_transfer(&mut self, range: usize, from: usize, to: usize) {
        self.leaders.change(from, false);
        self.leaders.change(to, true);
        let state = &mut self.ranges[range];
        state.leader = Some(to);
        state.decided = true;
        self.transfers += 1;
        self.decisions.push(Decision::TransferLeader { range_id: state.descriptor.range_id, to: self.members.id(to) });
    }

    fn follow_lease_preferences(&mut self) {
        if self.settings().lease_preferences.is_empty() {
            return;
        }
        for index in 0..self.ranges.len() {
            if self.transfers >= self.settings().max_leader_transfers_per_round {
                break;
            }
            let state = &self.ranges[index];
            let (true, Some(leader)) = (state.movable(), state.leader) else { continue };
            let Some(zone) = self.lease_zone(state) else { continue };
            if self.members.zone[leader] == Some(zone) {
                continue;
            }
            if let Some(target) = self.leader_target(state, leader) {
                self.push_transfer(index, leader, target);
            }
        }
    }

    /// Transfers leaderships from the members leading most to replicas on members leading at
    /// least two fewer, until every member is within ±1 of the mean (as replicas allow).
    fn balance_leaders(&mut self) {
        let cap = self.settings().max_leader_transfers_per_round;
        if self.transfers >= cap || self.leaders.living() < 2 {
            return;
        }
        let mean = self.leaders.mean();
        let band = Band { high: mean + 1.0, low: mean - 1.0 };
        if self.leaders.within(&band) {
            return;
        }
        let mut led: Vec<VecDeque<usize>> = vec![VecDeque::new(); self.members.len()];
        for (index, state) in self.ranges.iter().enumerate().filter(|(_, s)| s.movable()) {
            if let Some(leader) = state.leader {
                led[leader].push_back(index);
            }
        }
        let mut sources = self.leaders.all.clone();
        while self.transfers < cap {
            let Some(&(count, source)) = sources.last() else { break };
            let least = self.leaders.least();
            if (!band.above(count) && !band.below(least)) || count < least + 2 {
                break;
            }
            let found = std::iter::from_fn(|| led[source].pop_front()).find_map(|range| {
                let state = &self.ranges[range];
                if state.decided {
                    return None;
                }
                let target = self.leader_target(state, source)?;
                let target_count = self.leaders.count[target];
                (target_count + 2 <= count && (band.above(count) || band.below(target_count)))
                    .then_some((range, target))
            });
            sources.remove(&(count, source));
            let Some((range, target)) = found else { continue };
            let target_count = self.leaders.count[target];
            self.push_transfer(range, source, target);
            sources.insert((count - 1, source));
            if sources.remove(&(target_count, target)) {
                sources.insert((target_count + 1, target));
            }
        }
    }
}

/// Counts a member may have without anything moving to or from it.
struct Band {
    high: f64,
    low: f64,
}

impl Band {
    fn above(&self, count: usize) -> bool {
        count as f64 > self.high
    }

    fn below(&self, count: usize) -> bool {
        (count as f64) < self.low
    }
}

mod repair;
#[cfg(test)]
mod tests;
