//! `pleiades sim placement`: the range planner ([`plan`]) driving a simulated constellation,
//! with no IO. Each round the planner sees the whole constellation and every decision it
//! returns is carried out before the next round (the executor finishes a round's moves within
//! the planning interval), so rounds here count planning intervals.
//!
//! The start is a constellation that grew without a planner: range `i` was created when
//! `3 + i × (nodes − 3) / ranges` nodes existed, on three of them at random, zones ignored, led
//! by the first. So the oldest nodes hold several times their share, the newest almost
//! nothing, most ranges have two replicas in one zone, and sizes and load vary (a few ranges
//! are big or busy enough to split, a few are tiny enough to merge). Then three scenarios:
//! converge from that start; add a fifth more nodes over the zones and converge; lose zone 0
//! (its members stop being alive, the zone-aware decommission re-places their replicas) and
//! converge.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pleiades_proto::v1::RangeDescriptor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::placement::Move;
use super::planner::{
    plan, plan_decommission_in, plan_up_replicate_in, Decision, MemberInfo, PlannerSettings, RangeLoad, SplitReason,
    View,
};
use crate::chart::Frame;
use crate::gossip::vivaldi::Coordinate;
use crate::raft::NodeId;

pub struct PlacementSimConfig {
    pub nodes: u64,
    pub ranges: u64,
    pub zones: u64,
    pub seed: u64,
}

/// Rounds a scenario may take before it counts as not converging.
const MAX_ROUNDS: usize = 2_000;
/// Simulated time between planner rounds.
const ROUND_MS: u64 = 10_000;
const MIB: u64 = 1 << 20;
const FACTOR: usize = 3;

/// Mean, spread and extremes of one figure over the living nodes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Balance {
    pub mean: f64,
    pub max: f64,
    pub min: f64,
    pub stddev: f64,
}

impl Balance {
    fn of(values: &[f64]) -> Balance {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let max = values.iter().copied().fold(f64::MIN, f64::max).max(0.0);
        let min = values.iter().copied().fold(f64::MAX, f64::min).min(max);
        Balance { mean, max, min, stddev: variance.sqrt() }
    }

    pub fn max_over_mean(&self) -> f64 {
        if self.mean > 0.0 {
            self.max / self.mean
        } else {
            1.0
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub living_nodes: usize,
    pub rounds: usize,
    /// The planner returned nothing within `MAX_ROUNDS`.
    pub converged: bool,
    /// Replicas re-placed off dead nodes by the zone-aware decommission, before the rounds.
    pub repair_moves: usize,
    /// Dead nodes whose replicas found no living target (fewer living nodes than the factor).
    pub unrepaired_nodes: usize,
    pub moves: usize,
    pub transfers: usize,
    pub splits: usize,
    pub merges: usize,
    pub ranges: usize,
    pub replicas: Balance,
    pub leaders: Balance,
    pub bytes: Balance,
    pub zone_violations_before: usize,
    pub zone_violations: usize,
    pub elapsed: Duration,
}

pub struct PlacementReport {
    pub nodes: u64,
    pub ranges: u64,
    pub zones: u64,
    pub seed: u64,
    pub scenarios: Vec<ScenarioReport>,
    /// Before every round of every scenario, and after the last: max/mean replicas per node
    /// and max/mean leaders per node.
    pub curve: Vec<(f64, f64)>,
    /// Where in `curve` each scenario starts.
    pub starts: Vec<usize>,
}

/// The simulated constellation: what the planner sees, kept up to date as decisions land.
struct Constellation {
    /// Node `id` is `members[id - 1]`.
    members: Vec<MemberInfo>,
    descriptors: Vec<RangeDescriptor>,
    load: BTreeMap<u64, RangeLoad>,
    /// Range id → index in `descriptors`.
    position: HashMap<u64, usize>,
    settings: PlannerSettings,
    zones: u64,
    next_range_id: u64,
    rng: SmallRng,
}

fn zone_name(zone: u64) -> String {
    format!("zone-{zone}")
}

/// Keys are the big-endian bytes of a point in a 64-bit keyspace; empty is either end.
fn key_point(key: &[u8], empty: u128) -> u128 {
    if key.is_empty() {
        return empty;
    }
    let mut bytes = [0u8; 8];
    let len = key.len().min(8);
    bytes[..len].copy_from_slice(&key[..len]);
    u128::from(u64::from_be_bytes(bytes))
}

fn middle_key(start: &[u8], end: &[u8]) -> Option<Vec<u8>> {
    let (low, high) = (key_point(start, 0), key_point(end, 1 << 64));
    let middle = low + (high - low) / 2;
    (middle > low).then(|| u64::try_from(middle).unwrap_or(u64::MAX).to_be_bytes().to_vec())
}

impl Constellation {
    fn grown(config: &PlacementSimConfig) -> Constellation {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let zones = config.zones.max(1);
        let mut constellation = Constellation {
            members: Vec::new(),
            descriptors: Vec::new(),
            load: BTreeMap::new(),
            position: HashMap::new(),
            settings: PlannerSettings::default(),
            zones,
            next_range_id: 1,
            rng: SmallRng::seed_from_u64(config.seed ^ 0x5eed),
        };
        constellation.add_nodes(config.nodes);
        let nodes = config.nodes.max(1) as usize;
        let founders = FACTOR.min(nodes);
        let step = u64::MAX / config.ranges.max(1);
        let bound = |i: u64| if i == 0 || i >= config.ranges { Vec::new() } else { (i * step).to_be_bytes().to_vec() };
        let meta = RangeDescriptor { meta: true, replicas: (1..=founders as u64).collect(), ..Default::default() };
        constellation.push_range(
            meta,
            RangeLoad { bytes: 64 * MIB, live_bytes: 64 * MIB, leader: Some(1), ..Default::default() },
        );
        for i in 0..config.ranges {
            let existing =
                (founders + (i as usize) * (nodes - founders) / config.ranges as usize).clamp(founders, nodes);
            let replicas: Vec<NodeId> =
                rand::seq::index::sample(&mut rng, existing, founders).iter().map(|n| n as NodeId + 1).collect();
            let roll: f64 = rng.random();
            let bytes = match roll {
                r if r < 0.01 => rng.random_range(MIB..16 * MIB),
                r if r < 0.02 => rng.random_range(520 * MIB..1000 * MIB),
                _ => rng.random_range(32 * MIB..480 * MIB),
            };
            let reads =
                if rng.random_bool(0.005) { rng.random_range(3_000.0..6_000.0) } else { rng.random_range(0.0..200.0) };
            let load = RangeLoad {
                bytes,
                live_bytes: bytes,
                sized: true,
                reads_per_second: reads,
                leader: replicas.first().copied(),
                ..Default::default()
            };
            let descriptor =
                RangeDescriptor { start_key: bound(i), end_key: bound(i + 1), replicas, ..Default::default() };
            constellation.push_range(descriptor, load);
        }
        constellation
    }

    /// Adds `count` nodes, zones in turn; each zone is a cluster of coordinates (20 ms apart
    /// inside, about 60 ms between zones).
    fn add_nodes(&mut self, count: u64) {
        for _ in 0..count {
            let id = self.members.len() as NodeId + 1;
            let zone = (id - 1) % self.zones;
            let angle = std::f64::consts::TAU * zone as f64 / self.zones as f64;
            let jitter = |rng: &mut SmallRng| rng.random_range(-0.01..0.01);
            let vec = vec![0.035 * angle.cos() + jitter(&mut self.rng), 0.035 * angle.sin() + jitter(&mut self.rng)];
            self.members.push(MemberInfo {
                node_id: id,
                alive: true,
                zone: zone_name(zone),
                region: String::new(),
                coordinate: Some(Coordinate { vec, error: 0.1, adjustment: 0.0, height: 0.000_1 }),
            });
        }
    }

    fn push_range(&mut self, mut descriptor: RangeDescriptor, mut load: RangeLoad) {
        descriptor.range_id = self.next_range_id;
        descriptor.generation = descriptor.generation.max(1);
        self.next_range_id += 1;
        if !descriptor.meta {
            load.middle_key = middle_key(&descriptor.start_key, &descriptor.end_key);
            load.load_split_key = load.middle_key.clone();
        }
        self.position.insert(descriptor.range_id, self.descriptors.len());
        self.load.insert(descriptor.range_id, load);
        self.descriptors.push(descriptor);
    }

    fn view(&self) -> View<'_> {
        View { descriptors: &self.descriptors, load: &self.load, members: &self.members, settings: &self.settings }
    }

    fn living(&self) -> usize {
        self.members.iter().filter(|m| m.alive).count()
    }

    fn alive(&self, node: NodeId) -> bool {
        self.member(node).is_some_and(|m| m.alive)
    }

    fn member(&self, node: NodeId) -> Option<&MemberInfo> {
        node.checked_sub(1).and_then(|index| self.members.get(index as usize))
    }

    /// A replacement leader as raft would elect one: any living replica.
    fn elect(&mut self, range: usize) -> Option<NodeId> {
        let living: Vec<NodeId> = self.descriptors[range].replicas.iter().copied().filter(|n| self.alive(*n)).collect();
        (!living.is_empty()).then(|| living[self.rng.random_range(0..living.len())])
    }

    fn apply_move(&mut self, step: &Move) {
        let Some(&index) = self.position.get(&step.range_id) else { return };
        let replicas = &mut self.descriptors[index].replicas;
        replicas.retain(|n| step.remove == 0 || *n != step.remove);
        if step.add != 0 && !replicas.contains(&step.add) {
            replicas.push(step.add);
        }
        self.descriptors[index].generation += 1;
        let leader = self.load.get(&step.range_id).and_then(|l| l.leader);
        if leader.is_none_or(|leader| leader == step.remove) {
            let elected = self.elect(index);
            self.load.entry(step.range_id).or_default().leader = elected;
        }
    }

    fn apply_split(&mut self, range_id: u64, key: &[u8], reason: SplitReason) {
        let Some(&index) = self.position.get(&range_id) else { return };
        let left = &mut self.descriptors[index];
        let right = RangeDescriptor { start_key: key.to_vec(), generation: left.generation + 1, ..left.clone() };
        left.end_key = key.to_vec();
        left.generation += 1;
        let (start, end) = (left.start_key.clone(), left.end_key.clone());
        let whole = self.load.get(&range_id).cloned().unwrap_or_default();
        let split_for_load_ms_ago = if reason == SplitReason::Load { Some(0) } else { whole.split_for_load_ms_ago };
        let half = RangeLoad {
            bytes: whole.bytes / 2,
            live_bytes: whole.live_bytes / 2,
            reads_per_second: whole.reads_per_second / 2.0,
            writes_per_second: whole.writes_per_second / 2.0,
            split_for_load_ms_ago,
            ..whole
        };
        let middle = middle_key(&start, &end);
        let left_load = RangeLoad { middle_key: middle.clone(), load_split_key: middle, ..half.clone() };
        self.load.insert(range_id, left_load);
        self.push_range(right, half);
    }

    fn apply_merge(&mut self, left: u64, right: u64) {
        let (Some(&l), Some(&r)) = (self.position.get(&left), self.position.get(&right)) else { return };
        let end = self.descriptors[r].end_key.clone();
        let descriptor = &mut self.descriptors[l];
        descriptor.end_key = end;
        descriptor.generation += 1;
        let middle = middle_key(&descriptor.start_key, &descriptor.end_key);
        let gone = self.load.remove(&right).unwrap_or_default();
        let kept = self.load.entry(left).or_default();
        kept.bytes += gone.bytes;
        kept.live_bytes += gone.live_bytes;
        kept.reads_per_second += gone.reads_per_second;
        kept.writes_per_second += gone.writes_per_second;
        (kept.middle_key, kept.load_split_key) = (middle.clone(), middle);
        self.descriptors.swap_remove(r);
        self.position.remove(&right);
        if let Some(moved) = self.descriptors.get(r) {
            self.position.insert(moved.range_id, r);
        }
    }

    fn apply(&mut self, decision: &Decision, scenario: &mut ScenarioReport) {
        match decision {
            Decision::Move(step) => {
                scenario.moves += 1;
                self.apply_move(step);
            }
            Decision::TransferLeader { range_id, to } => {
                scenario.transfers += 1;
                self.load.entry(*range_id).or_default().leader = Some(*to);
            }
            Decision::Split { range_id, key, reason } => {
                scenario.splits += 1;
                self.apply_split(*range_id, key, *reason);
            }
            Decision::Merge { left, right } => {
                scenario.merges += 1;
                self.apply_merge(*left, *right);
            }
        }
    }

    /// Replicas, leaderships and bytes per living node.
    fn per_node(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut replicas = vec![0.0; self.members.len()];
        let mut leaders = vec![0.0; self.members.len()];
        let mut bytes = vec![0.0; self.members.len()];
        for range in &self.descriptors {
            let load = self.load.get(&range.range_id);
            for index in range.replicas.iter().filter_map(|n| n.checked_sub(1)).map(|n| n as usize) {
                if index < self.members.len() {
                    replicas[index] += 1.0;
                    bytes[index] += load.map_or(0, |l| l.bytes) as f64;
                }
            }
            if let Some(index) = load.and_then(|l| l.leader).and_then(|n| n.checked_sub(1)) {
                if let Some(count) = leaders.get_mut(index as usize) {
                    *count += 1.0;
                }
            }
        }
        let living = |values: Vec<f64>| -> Vec<f64> {
            values.into_iter().zip(&self.members).filter(|(_, m)| m.alive).map(|(v, _)| v).collect()
        };
        (living(replicas), living(leaders), living(bytes))
    }

    /// Ranges with two replicas in one zone while at least as many zones as replicas are alive.
    fn zone_violations(&self) -> usize {
        let mut living_zones: Vec<&str> = self.members.iter().filter(|m| m.alive).map(|m| m.zone.as_str()).collect();
        living_zones.sort_unstable();
        living_zones.dedup();
        if living_zones.len() < FACTOR {
            return 0;
        }
        let crowded = |range: &RangeDescriptor| {
            let mut zones: Vec<&str> =
                range.replicas.iter().filter_map(|n| self.member(*n)).map(|m| m.zone.as_str()).collect();
            zones.sort_unstable();
            zones.windows(2).any(|pair| pair[0] == pair[1])
        };
        self.descriptors.iter().filter(|r| crowded(r)).count()
    }

    fn sample(&self, curve: &mut Vec<(f64, f64)>) {
        let (replicas, leaders, _) = self.per_node();
        curve.push((Balance::of(&replicas).max_over_mean(), Balance::of(&leaders).max_over_mean()));
    }

    /// Plans and applies rounds until the planner has nothing more to do.
    fn converge(&mut self, scenario: &mut ScenarioReport, curve: &mut Vec<(f64, f64)>) {
        // Many executors run at once in a large constellation: about one move per node per round.
        let living = self.living();
        self.settings.max_moves_per_round = living;
        self.settings.max_leader_transfers_per_round = living;
        scenario.zone_violations_before = self.zone_violations();
        while scenario.rounds < MAX_ROUNDS {
            self.sample(curve);
            let decisions = plan(self.view());
            if decisions.is_empty() {
                scenario.converged = true;
                break;
            }
            for decision in &decisions {
                self.apply(decision, scenario);
            }
            for load in self.load.values_mut() {
                load.split_for_load_ms_ago = load.split_for_load_ms_ago.map(|ago| ago + ROUND_MS);
            }
            scenario.rounds += 1;
        }
        if !scenario.converged {
            self.sample(curve);
        }
        let (replicas, leaders, bytes) = self.per_node();
        scenario.living_nodes = self.living();
        scenario.ranges = self.descriptors.len();
        scenario.replicas = Balance::of(&replicas);
        scenario.leaders = Balance::of(&leaders);
        scenario.bytes = Balance::of(&bytes);
        scenario.zone_violations = self.zone_violations();
    }

    /// Zone 0 goes down: its ranges elect leaders elsewhere, and every dead node is
    /// decommissioned with the zone-aware planner, then anything still short is topped up.
    fn lose_zone(&mut self, scenario: &mut ScenarioReport) {
        let lost = zone_name(0);
        for member in self.members.iter_mut().filter(|m| m.zone == lost) {
            member.alive = false;
        }
        for index in 0..self.descriptors.len() {
            let range_id = self.descriptors[index].range_id;
            if !self.load.get(&range_id).and_then(|l| l.leader).is_some_and(|leader| self.alive(leader)) {
                let elected = self.elect(index);
                self.load.entry(range_id).or_default().leader = elected;
            }
        }
        let dead: Vec<NodeId> = self.members.iter().filter(|m| !m.alive).map(|m| m.node_id).collect();
        for node in dead {
            match plan_decommission_in(self.view(), node) {
                Ok(moves) => {
                    scenario.repair_moves += moves.len();
                    moves.iter().for_each(|step| self.apply_move(step));
                }
                Err(_) => scenario.unrepaired_nodes += 1,
            }
        }
        let top_up = plan_up_replicate_in(self.view());
        scenario.repair_moves += top_up.len();
        top_up.iter().for_each(|step| self.apply_move(step));
    }
}

/// Runs the three scenarios on one constellation.
pub fn run(config: &PlacementSimConfig) -> PlacementReport {
    let mut constellation = Constellation::grown(config);
    let mut report = PlacementReport {
        nodes: config.nodes,
        ranges: config.ranges,
        zones: config.zones,
        seed: config.seed,
        scenarios: Vec::new(),
        curve: Vec::new(),
        starts: Vec::new(),
    };
    let added = (config.nodes / 5).max(1);
    run_scenario("grown unevenly, zones ignored".into(), &mut constellation, &mut report, false);
    constellation.add_nodes(added);
    run_scenario(format!("{added} nodes added"), &mut constellation, &mut report, false);
    if config.zones >= 2 {
        let lost = constellation.members.iter().filter(|m| m.zone == zone_name(0)).count();
        run_scenario(format!("zone 0 lost ({lost} nodes)"), &mut constellation, &mut report, true);
    }
    report
}

fn run_scenario(name: String, constellation: &mut Constellation, report: &mut PlacementReport, lose_zone: bool) {
    let started = Instant::now();
    let mut scenario = ScenarioReport { name, ..Default::default() };
    if lose_zone {
        constellation.lose_zone(&mut scenario);
    }
    report.starts.push(report.curve.len());
    constellation.converge(&mut scenario, &mut report.curve);
    scenario.elapsed = started.elapsed();
    report.scenarios.push(scenario);
}

fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

impl PlacementReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "placement simulation: {} nodes in {} zones, {} ranges x {FACTOR} replicas, seed {}",
            self.nodes,
            self.zones,
            thousands(self.ranges as usize),
            self.seed
        );
        let _ =
            writeln!(out, "  (a round: one planner call, every decision carried out; moves per round <= living nodes)");
        for (number, s) in self.scenarios.iter().enumerate() {
            let outcome = if s.converged { "converged" } else { "NOT converged" };
            let _ = writeln!(
                out,
                "  {}. {}: {} living nodes, {} ranges",
                number + 1,
                s.name,
                thousands(s.living_nodes),
                thousands(s.ranges)
            );
            if s.repair_moves > 0 || s.unrepaired_nodes > 0 {
                let _ = writeln!(
                    out,
                    "     repair (zone-aware decommission of dead nodes): {} moves, {} nodes without a target",
                    thousands(s.repair_moves),
                    s.unrepaired_nodes
                );
            }
            let _ = writeln!(
                out,
                "     {outcome} in {} rounds ({:.1} s): {} moves, {} leader transfers, {} splits, {} merges",
                s.rounds,
                s.elapsed.as_secs_f64(),
                thousands(s.moves),
                thousands(s.transfers),
                thousands(s.splits),
                thousands(s.merges)
            );
            let line = |label: &str, b: &Balance, scale: f64, unit: &str| {
                format!(
                    "     {label:<18} mean {:>8.1}{unit}  max/mean {:.3}  min {:.1}{unit}  sd {:.1}{unit}\n",
                    b.mean / scale,
                    b.max_over_mean(),
                    b.min / scale,
                    b.stddev / scale
                )
            };
            out.push_str(&line("replicas per node", &s.replicas, 1.0, ""));
            out.push_str(&line("leaders per node", &s.leaders, 1.0, ""));
            out.push_str(&line("bytes per node", &s.bytes, (1u64 << 30) as f64, " GiB"));
            let _ = writeln!(
                out,
                "     zone violations    {} (at the start {})",
                s.zone_violations,
                thousands(s.zone_violations_before)
            );
        }
        out
    }

    /// Max/mean replicas and leaders per node over the rounds, as an SVG line chart.
    pub fn svg(&self) -> String {
        let frame = Frame { width: 720.0, height: 380.0, left: 60.0, bottom: 40.0, top: 40.0, right: 20.0 };
        let rounds = self.curve.len().saturating_sub(1).max(1) as f64;
        let highest = self.curve.iter().map(|(r, l)| r.max(*l)).fold(1.0_f64, f64::max).min(10.0).ceil().max(2.0);
        let y = |ratio: f64| frame.y((ratio.min(highest) - 1.0) / (highest - 1.0));
        let mut svg = frame.open(&format!(
            "Placement of {} ranges on {} nodes: busiest node / mean, per planner round",
            self.ranges, self.nodes
        ));
        for tick in 0..=4 {
            let ratio = 1.0 + f64::from(tick) / 4.0 * (highest - 1.0);
            let round = f64::from(tick) / 4.0 * rounds;
            frame.ticks(&mut svg, y(ratio), &format!("{ratio:.2}"), frame.x(round, rounds), &format!("{round:.0}"));
        }
        for (number, (start, scenario)) in self.starts.iter().zip(&self.scenarios).enumerate() {
            let at = frame.x(*start as f64, rounds);
            // Labels step down, and those in the right half end at their line, so none overlap.
            let (label_x, anchor) = if at > frame.width / 2.0 { (at - 4.0, "end") } else { (at + 4.0, "start") };
            let _ = writeln!(
                svg,
                "<line x1=\"{at:.1}\" y1=\"{}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"gray\" stroke-dasharray=\"4 4\"/>\n\
                 <text x=\"{label_x:.1}\" y=\"{}\" fill=\"gray\" text-anchor=\"{anchor}\">{}</text>",
                frame.top,
                frame.height - frame.bottom,
                frame.top + 14.0 * (number as f64 + 1.0),
                scenario.name
            );
        }
        for (series, color, label) in [(0, "#1f77b4", "replicas"), (1, "#ff7f0e", "leaders")] {
            let points = self.curve.iter().enumerate().map(|(round, pair)| {
                let ratio = if series == 0 { pair.0 } else { pair.1 };
                (frame.x(round as f64, rounds), y(ratio))
            });
            Frame::polyline(&mut svg, points, color);
            let _ = writeln!(
                svg,
                "<text x=\"{:.0}\" y=\"34\" fill=\"{color}\">{label}</text>",
                frame.left + 80.0 * f64::from(series)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_constellation_converges_balanced_through_every_scenario() {
        let report = run(&PlacementSimConfig { nodes: 50, ranges: 2_000, zones: 3, seed: 7 });
        assert_eq!(report.scenarios.len(), 3);
        for scenario in &report.scenarios {
            assert!(scenario.converged, "{}", report.text());
            assert_eq!(scenario.zone_violations, 0, "{}", report.text());
            assert!(scenario.replicas.max_over_mean() <= 1.1 + 1e-9, "{}", report.text());
            assert!(scenario.leaders.max <= scenario.leaders.mean + 1.0 + 1e-9, "{}", report.text());
        }
        assert!(report.scenarios[0].zone_violations_before > 0, "the start exercises zone repair");
        assert!(report.scenarios[0].splits > 0 && report.scenarios[2].repair_moves > 0, "{}", report.text());
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn middle_keys_split_the_keyspace_strictly_inside() {
        assert_eq!(middle_key(&[], &[]), Some((1u64 << 63).to_be_bytes().to_vec()));
        assert_eq!(middle_key(&5u64.to_be_bytes(), &6u64.to_be_bytes()), None);
        assert_eq!(middle_key(&4u64.to_be_bytes(), &8u64.to_be_bytes()), Some(6u64.to_be_bytes().to_vec()));
    }
}
