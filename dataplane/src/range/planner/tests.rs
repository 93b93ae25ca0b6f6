use super::*;
use crate::range::placement::PlanError;

const MIB: u64 = 1 << 20;

fn member(node_id: NodeId, zone: &str) -> MemberInfo {
    MemberInfo { node_id, alive: true, zone: zone.into(), region: String::new(), coordinate: None }
}

/// Members 1..=count, in zones a, b, c in turn (empty: no zones).
fn members(count: u64, zones: &[&str]) -> Vec<MemberInfo> {
    (1..=count).map(|id| member(id, zones.get((id as usize - 1) % zones.len().max(1)).copied().unwrap_or(""))).collect()
}

fn range(range_id: u64, start: &str, end: &str, replicas: &[NodeId]) -> RangeDescriptor {
    RangeDescriptor {
        range_id,
        start_key: start.as_bytes().to_vec(),
        end_key: end.as_bytes().to_vec(),
        replicas: replicas.to_vec(),
        generation: 1,
        ..Default::default()
    }
}

fn load(bytes: u64, leader: NodeId) -> RangeLoad {
    RangeLoad { bytes, live_bytes: bytes, leader: Some(leader), sized: true, ..Default::default() }
}

/// A constellation under test, and what the executor does with the planner's decisions.
struct World {
    descriptors: Vec<RangeDescriptor>,
    load: BTreeMap<u64, RangeLoad>,
    members: Vec<MemberInfo>,
    settings: PlannerSettings,
}

impl World {
    /// The meta range and `data_ranges` ranges tiling the keyspace, all on `founders`, led in
    /// turn by each founder, 200 MiB each (neither splits nor merges).
    fn new(members: Vec<MemberInfo>, founders: &[NodeId], data_ranges: usize) -> World {
        let key = |j: usize| if j == 0 || j == data_ranges { String::new() } else { format!("k{j:04}") };
        let mut descriptors = vec![RangeDescriptor { meta: true, ..range(1, "", "", founders) }];
        descriptors.extend((0..data_ranges).map(|j| range(j as u64 + 2, &key(j), &key(j + 1), founders)));
        let load = descriptors
            .iter()
            .enumerate()
            .map(|(i, r)| (r.range_id, load(200 * MIB, founders[i % founders.len()])))
            .collect();
        World { descriptors, load, members, settings: PlannerSettings::default() }
    }

    fn load_of(&mut self, range_id: u64) -> &mut RangeLoad {
        self.load.entry(range_id).or_default()
    }

    fn view(&self) -> View<'_> {
        View { descriptors: &self.descriptors, load: &self.load, members: &self.members, settings: &self.settings }
    }

    /// One round, checking that it gives no range two decisions and keeps to its caps.
    fn plan(&self) -> Vec<Decision> {
        let decisions = plan(self.view());
        let mut seen = BTreeSet::new();
        for decision in &decisions {
            let ranges = match decision {
                Decision::Split { range_id, .. } | Decision::TransferLeader { range_id, .. } => vec![*range_id],
                Decision::Merge { left, right } => vec![*left, *right],
                Decision::Move(step) => vec![step.range_id],
            };
            assert!(ranges.iter().all(|r| seen.insert(*r)), "one decision per range: {decisions:?}");
        }
        let count = |f: fn(&Decision) -> bool| decisions.iter().filter(|d| f(d)).count();
        assert!(count(|d| matches!(d, Decision::Move(_))) <= self.settings.max_moves_per_round);
        assert!(
            count(|d| matches!(d, Decision::TransferLeader { .. })) <= self.settings.max_leader_transfers_per_round
        );
        decisions
    }

    fn index(&self, range_id: u64) -> usize {
        self.descriptors.iter().position(|r| r.range_id == range_id).expect("a planned range exists")
    }

    fn apply(&mut self, decisions: &[Decision]) {
        for decision in decisions {
            match decision {
                Decision::Move(step) => self.apply_move(step),
                Decision::TransferLeader { range_id, to } => {
                    assert!(self.descriptors[self.index(*range_id)].replicas.contains(to), "leads a replica");
                    self.load.entry(*range_id).or_default().leader = Some(*to);
                }
                Decision::Split { range_id, key, reason } => {
                    let index = self.index(*range_id);
                    let new_id = self.descriptors.iter().map(|r| r.range_id).max().unwrap_or(0) + 1;
                    let left = &mut self.descriptors[index];
                    let right = RangeDescriptor { range_id: new_id, start_key: key.clone(), ..left.clone() };
                    left.end_key = key.clone();
                    self.descriptors.push(right);
                    let half = self.load.get(range_id).cloned().unwrap_or_default();
                    let half = RangeLoad {
                        bytes: half.bytes / 2,
                        live_bytes: half.live_bytes / 2,
                        reads_per_second: half.reads_per_second / 2.0,
                        split_for_load_ms_ago: (*reason == SplitReason::Load).then_some(0),
                        middle_key: None,
                        load_split_key: None,
                        ..half
                    };
                    self.load.insert(*range_id, half.clone());
                    self.load.insert(new_id, half);
                }
                Decision::Merge { left, right } => {
                    let (l, r) = (self.index(*left), self.index(*right));
                    let set = |i: usize| self.descriptors[i].replicas.iter().copied().collect::<BTreeSet<_>>();
                    assert_eq!(set(l), set(r), "merged ranges are colocated");
                    assert_eq!(
                        self.descriptors[l].end_key, self.descriptors[r].start_key,
                        "merged ranges are neighbours"
                    );
                    self.descriptors[l].end_key = self.descriptors[r].end_key.clone();
                    self.descriptors.remove(r);
                    let gone = self.load.remove(right).unwrap_or_default();
                    self.load.entry(*left).or_default().bytes += gone.bytes;
                }
            }
        }
    }

    fn apply_move(&mut self, step: &Move) {
        let index = self.index(step.range_id);
        let replicas = &mut self.descriptors[index].replicas;
        if step.remove != 0 {
            assert!(replicas.contains(&step.remove), "removes a replica it has: {step:?}");
            replicas.retain(|n| *n != step.remove);
        }
        if step.add != 0 {
            assert!(!replicas.contains(&step.add), "never two replicas on one node: {step:?}");
            replicas.push(step.add);
        }
        let first = replicas.first().copied();
        let load = self.load.entry(step.range_id).or_default();
        if load.leader.is_some_and(|leader| leader == step.remove) {
            load.leader = first;
        }
    }

    /// Plans and applies rounds until a round decides nothing; returns how many it took.
    fn converge(&mut self, limit: usize) -> usize {
        for round in 0..limit {
            let decisions = self.plan();
            if decisions.is_empty() {
                return round;
            }
            self.apply(&decisions);
        }
        panic!("no convergence in {limit} rounds: {:?}", self.plan());
    }

    fn per_node(&self, count: impl Fn(&RangeDescriptor, NodeId) -> bool) -> Vec<usize> {
        let living = self.members.iter().filter(|m| m.alive);
        living.map(|m| self.descriptors.iter().filter(|r| count(r, m.node_id)).count()).collect()
    }

    fn replica_counts(&self) -> Vec<usize> {
        self.per_node(|r, node| r.replicas.contains(&node))
    }

    fn leader_counts(&self) -> Vec<usize> {
        self.per_node(|r, node| self.load.get(&r.range_id).and_then(|l| l.leader) == Some(node))
    }

    fn zones_of(&self, range: &RangeDescriptor) -> BTreeSet<String> {
        let zone = |id: &NodeId| self.members.iter().find(|m| m.node_id == *id).map(|m| m.zone.clone());
        range.replicas.iter().filter_map(zone).collect()
    }
}

fn within(counts: &[usize], mean: f64, slack: f64) -> bool {
    counts.iter().all(|c| (*c as f64 - mean).abs() <= slack)
}

#[test]
fn a_range_splits_at_its_middle_when_big_and_at_its_load_key_when_busy() {
    let mut world = World::new(members(3, &[]), &[1, 2, 3], 2);
    world.load.insert(
        1,
        RangeLoad { bytes: 4096 * MIB, live_bytes: 4096 * MIB, middle_key: Some(b"x".to_vec()), ..load(0, 1) },
    );
    world.load.insert(
        2,
        RangeLoad { bytes: 600 * MIB, live_bytes: 600 * MIB, middle_key: Some(b"g".to_vec()), ..load(0, 1) },
    );
    let hot = RangeLoad { reads_per_second: 3_000.0, load_split_key: Some(b"q".to_vec()), ..load(MIB, 2) };
    world.load.insert(3, hot);
    let decisions = world.plan();
    assert!(decisions.contains(&Decision::Split { range_id: 2, key: b"g".to_vec(), reason: SplitReason::Size }));
    assert!(decisions.contains(&Decision::Split { range_id: 3, key: b"q".to_vec(), reason: SplitReason::Load }));
    assert!(!decisions.iter().any(|d| matches!(d, Decision::Split { range_id: 1, .. })), "the meta range never splits");
}

#[test]
fn a_split_key_at_an_edge_of_the_range_splits_nothing() {
    let mut world = World::new(members(3, &[]), &[1, 2, 3], 2);
    let at = |key: &str| Some(key.as_bytes().to_vec());
    // Range 2 is ["", "k0001"), range 3 ["k0001", "").
    world.load.insert(
        2,
        RangeLoad {
            bytes: 600 * MIB,
            live_bytes: 600 * MIB,
            middle_key: at(""),
            load_split_key: at("k0001"),
            ..load(0, 1)
        },
    );
    world.load_of(2).writes_per_second = 5_000.0;
    world.load.insert(3, RangeLoad { bytes: 600 * MIB, live_bytes: 600 * MIB, middle_key: at("k0001"), ..load(0, 1) });
    world.descriptors.push(range(4, "a", "t", &[1, 2, 3]));
    let at_end = RangeLoad { middle_key: at("t"), load_split_key: at("t"), reads_per_second: 5_000.0, ..load(0, 2) };
    world.load.insert(4, RangeLoad { bytes: 600 * MIB, live_bytes: 600 * MIB, ..at_end });
    assert!(!world.plan().iter().any(|d| matches!(d, Decision::Split { .. })));
    // Too big, without a middle key, but busy: it splits for load.
    (world.load_of(3).reads_per_second, world.load_of(3).load_split_key) = (5_000.0, at("m"));
    let splits: Vec<Decision> = world.plan().into_iter().filter(|d| matches!(d, Decision::Split { .. })).collect();
    assert_eq!(splits, vec![Decision::Split { range_id: 3, key: b"m".to_vec(), reason: SplitReason::Load }]);
}

/// Two small neighbours (2: ["", "m"), 3: ["m", "")) on the given replicas.
fn small_neighbours(left: &[NodeId], right: &[NodeId]) -> World {
    let mut world = World::new(members(5, &[]), &[1, 2, 3], 0);
    world.descriptors.push(range(2, "", "m", left));
    world.descriptors.push(range(3, "m", "", right));
    world.load.insert(2, load(10 * MIB, left[0]));
    world.load.insert(3, load(20 * MIB, right[0]));
    world
}

#[test]
fn small_cold_neighbours_on_the_same_nodes_merge() {
    let mut world = small_neighbours(&[1, 2, 3], &[3, 2, 1]);
    // Balance would move replicas to the empty nodes 4 and 5: keep them out of this test.
    world.members.truncate(3);
    assert_eq!(world.plan(), vec![Decision::Merge { left: 2, right: 3 }]);
    world.load_of(3).writes_per_second = 700.0;
    assert!(world.plan().is_empty(), "a range busier than a quarter of the load split threshold stays apart");
    (world.load_of(3).writes_per_second, world.load_of(3).live_bytes) = (0.0, 118 * MIB);
    assert!(world.plan().is_empty(), "together at the merge size: apart");
}

#[test]
fn a_boundary_made_by_hand_or_at_bootstrap_is_never_merged_away() {
    let mut world = small_neighbours(&[1, 2, 3], &[3, 2, 1]);
    world.members.truncate(3);
    world.descriptors.iter_mut().filter(|d| d.range_id == 3).for_each(|d| d.sticky = true);
    assert!(world.plan().is_empty(), "{:?}", world.plan());
}

#[test]
fn history_splits_a_range_past_four_times_the_split_size_and_never_undoes_a_merge() {
    let mut world = small_neighbours(&[1, 2, 3], &[3, 2, 1]);
    world.members.truncate(3);
    // Most keys deleted: little live data, much history. Merged, they stay under 4 × 512 MiB.
    for range_id in [2, 3] {
        (world.load_of(range_id).live_bytes, world.load_of(range_id).bytes) = (MIB, 900 * MIB);
    }
    assert_eq!(world.plan(), vec![Decision::Merge { left: 2, right: 3 }]);
    // Together past the history limit: the merged range would split again at once.
    world.load_of(3).bytes = 1200 * MIB;
    assert!(world.plan().is_empty(), "{:?}", world.plan());
    // One range alone past it splits, however little of it is live.
    (world.load_of(3).bytes, world.load_of(3).middle_key) = (2100 * MIB, Some(b"x".to_vec()));
    assert!(world.plan().iter().any(|d| matches!(d, Decision::Split { range_id: 3, reason: SplitReason::Size, .. })));
}

#[test]
fn neighbours_on_different_nodes_are_colocated_first_then_merge() {
    let mut world = small_neighbours(&[1, 2, 3], &[1, 4, 5]);
    let first = world.plan();
    let moves: Vec<&Decision> = first.iter().filter(|d| matches!(d, Decision::Move(m) if m.range_id == 3)).collect();
    assert_eq!(moves.len(), 1, "one step per round: {first:?}");
    assert!(matches!(moves[0], Decision::Move(Move { add: 2 | 3, remove: 4 | 5, .. })), "{first:?}");
    assert!(!first.iter().any(|d| matches!(d, Decision::Merge { .. } | Decision::Move(Move { range_id: 2, .. }))));
    world.apply(&first);
    let second = world.plan();
    let right_moves = second.iter().filter(|d| matches!(d, Decision::Move(Move { range_id: 3, .. }))).count();
    assert!(right_moves == 1 && !second.iter().any(|d| matches!(d, Decision::Merge { .. })), "{second:?}");
    world.apply(&second);
    assert!(world.plan().contains(&Decision::Merge { left: 2, right: 3 }));
}

#[test]
fn halves_of_a_recent_load_split_do_not_merge_back() {
    let mut world = small_neighbours(&[1, 2, 3], &[2, 3, 1]);
    world.members.truncate(3);
    let window = world.settings.load_window_ms;
    world.load_of(3).split_for_load_ms_ago = Some(window - 1);
    assert!(world.plan().is_empty());
    world.load_of(3).split_for_load_ms_ago = Some(window);
    assert_eq!(world.plan(), vec![Decision::Merge { left: 2, right: 3 }]);
}

#[test]
fn growing_from_three_to_six_nodes_balances_replicas_and_leaders() {
    for zones in [&["a", "b", "c"][..], &[]] {
        let mut world = World::new(members(6, zones), &[1, 2, 3], 24);
        let rounds = world.converge(40);
        assert!(rounds <= 20, "{rounds} rounds");
        let (replicas, leaders) = (world.replica_counts(), world.leader_counts());
        let mean = 25.0 * 3.0 / 6.0;
        assert!(within(&replicas, mean, mean * 0.2), "replicas {replicas:?}");
        assert!(within(&leaders, 25.0 / 6.0, 1.0), "leaders {leaders:?}");
        if !zones.is_empty() {
            assert!(world.descriptors.iter().all(|r| world.zones_of(r).len() == 3), "one replica per zone");
        }
        assert!(world.plan().is_empty(), "balanced: nothing more to do");
    }
}

#[test]
fn a_balanced_constellation_plans_nothing() {
    let world = World::new(members(3, &["a", "b", "c"]), &[1, 2, 3], 5);
    assert_eq!(world.plan(), vec![]);
}

#[test]
fn moves_go_to_the_closest_of_equally_loaded_nodes() {
    let place = |x: f64| Some(Coordinate { vec: vec![x, 0.0], error: 0.1, adjustment: 0.0, height: 1.0e-5 });
    let mut world = World::new(members(5, &[]), &[1, 2, 3], 3);
    for (m, x) in world.members.iter_mut().zip([0.0, 0.001, 0.002, 0.100, 0.003]) {
        m.coordinate = place(x);
    }
    let decisions = world.plan();
    assert!(matches!(decisions.first(), Some(Decision::Move(Move { add: 5, .. }))), "{decisions:?}");
}

#[test]
fn a_range_regains_its_zone_spread_once_the_lost_zone_has_a_node_again() {
    let mut world = World::new(vec![member(1, "a"), member(2, "b"), member(3, "c"), member(4, "b")], &[1, 2, 3], 12);
    world.members[0].alive = false;
    let repair = plan_decommission_in(world.view(), 1).expect("node 4 can take the replicas");
    assert!(repair.iter().all(|m| m.add == 4 && m.remove == 1), "no other zone is alive: {repair:?}");
    world.apply(&repair.into_iter().map(Decision::Move).collect::<Vec<_>>());
    assert!(world.plan().iter().all(|d| !matches!(d, Decision::Move(_))), "no zone to spread to yet");
    world.members.push(member(5, "a"));
    world.converge(10);
    assert!(world.descriptors.iter().all(|r| world.zones_of(r).len() == 3 && !r.replicas.contains(&1)));
}

#[test]
fn leaders_follow_the_lease_preferences() {
    let mut world = World::new(members(3, &["a", "b", "c"]), &[1, 2, 3], 8);
    world.settings.lease_preferences = vec!["b".into()];
    world.converge(5);
    assert_eq!(world.leader_counts(), vec![0, 9, 0]);
    // An unknown zone comes to nothing; the next preference holds.
    world.settings.lease_preferences = vec!["x".into(), "c".into()];
    world.converge(5);
    assert_eq!(world.leader_counts(), vec![0, 0, 9]);
}

#[test]
fn a_round_keeps_to_its_caps() {
    let mut world = World::new(members(12, &[]), &[1, 2, 3], 60);
    let decisions = world.plan();
    assert_eq!(decisions.iter().filter(|d| matches!(d, Decision::Move(_))).count(), 8);
    world.settings.max_moves_per_round = 100;
    world.converge(30);
    assert!(
        within(&world.replica_counts(), 61.0 * 3.0 / 12.0, 61.0 * 3.0 / 12.0 * 0.2),
        "{:?}",
        world.replica_counts()
    );
}

#[test]
fn a_dead_nodes_replicas_stay_in_its_zone_if_they_can_else_go_to_the_least_loaded_zone() {
    let mut world =
        World::new(vec![member(1, "a"), member(2, "b"), member(3, "c"), member(4, "a"), member(5, "b")], &[1, 2, 3], 4);
    world.members[0].alive = false;
    let moves = plan_decommission_in(world.view(), 1).expect("targets exist");
    assert_eq!(moves.len(), 5);
    assert!(moves.iter().all(|m| m.add == 4 && m.remove == 1), "{moves:?}");

    // No other node in zone a: zone d is less loaded than zone e.
    let mut world =
        World::new(vec![member(1, "a"), member(2, "b"), member(3, "c"), member(4, "d"), member(5, "e")], &[1, 2, 3], 4);
    world.descriptors.extend((90..94).map(|id| range(id, "", "", &[2, 3, 5])));
    world.members[0].alive = false;
    let moves = plan_decommission_in(world.view(), 1).expect("targets exist");
    assert!(moves.iter().all(|m| m.add == 4), "{moves:?}");
    assert_eq!(plan_decommission_in(world.view(), 42), Err(PlanError::UnknownNode(42)));
    world.members.truncate(3);
    assert!(matches!(plan_decommission_in(world.view(), 1), Err(PlanError::NoTarget { .. })));
}

#[test]
fn up_replication_spreads_new_replicas_over_the_zones_a_range_lacks() {
    let world = World::new(vec![member(1, "a"), member(2, "a"), member(3, "b"), member(4, "c")], &[1], 3);
    let moves = plan_up_replicate_in(world.view());
    assert_eq!(moves.len(), 8);
    assert!(moves.iter().all(|m| (m.add == 3 || m.add == 4) && m.remove == 0), "{moves:?}");
    let mut world = world;
    world.members.push(member(5, ""));
    world.members[2].alive = false;
    let moves = plan_up_replicate_in(world.view());
    assert!(moves.iter().all(|m| m.add != 3 && m.add != 2), "a dead node takes nothing, nor zone a twice: {moves:?}");
}

#[test]
fn the_same_constellation_gives_the_same_plan_whatever_the_order_of_members() {
    let mut world = World::new(members(9, &["a", "b", "c"]), &[1, 2, 3], 30);
    let first = world.plan();
    assert!(!first.is_empty());
    world.members.reverse();
    assert_eq!(world.plan(), first);
}
