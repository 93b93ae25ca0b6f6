//! A deterministic, in-process constellation of SWIM/Lifeguard nodes for tests and for
//! `pleiades sim gossip`: seeded randomness, a fixed latency or a latency matrix from nodes
//! placed on a plane, packet loss, crashed, paused and overloaded ("slow") nodes, partitions,
//! and a virtual clock: messages arrive at their exact time, timers tick every `step` ms. The
//! same state machines run here as on a real node.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::events::{Cre, CreKind};
use super::swim::{Envelope, Event, Millis, NodeId, Output, State, Swim, SwimConfig, Update};
use super::vivaldi::Place;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Traffic {
    pub messages: u64,
    pub updates: u64,
    pub bytes: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            messages: self.messages - earlier.messages,
            updates: self.updates - earlier.updates,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// The simulated address of node `id`.
pub fn addr(id: NodeId) -> String {
    format!("n{id}")
}

/// A deterministic constellation: messages take `latency` ms (or are lost), crashed nodes
/// neither send nor receive, and every node ticks every 10 ms.
pub struct Sim {
    pub nodes: BTreeMap<NodeId, Swim>,
    pub now: Millis,
    /// One-way latency when nodes have no places.
    pub latency: Millis,
    /// Where nodes are: one-way latency is half the round trip between places.
    pub places: HashMap<NodeId, Place>,
    pub loss: f64,
    pub crashed: HashSet<NodeId>,
    /// Stopped processes (SIGSTOP): no timers; what is sent to them waits until they resume.
    pub paused: HashSet<NodeId>,
    /// Nodes cut off from the rest: messages across the cut are lost.
    pub partition: HashSet<NodeId>,
    /// Overloaded nodes: everything sent to them is handled this much later.
    pub slow: HashMap<NodeId, Millis>,
    /// Tick granularity.
    pub step: Millis,
    in_flight: BTreeMap<(Millis, u64), (NodeId, Envelope)>,
    sent: u64,
    delivered: u64,
    updates_delivered: u64,
    bytes_delivered: u64,
    rng: SmallRng,
    pub events: Vec<(Millis, NodeId, Event)>,
    /// Events already offered to `answer_queries`.
    queries_seen: usize,
}

impl Sim {
    pub fn new(count: u64, config: SwimConfig, seed: u64) -> Sim {
        let nodes = (1..=count).map(|id| (id, Swim::new(config.clone(), id, addr(id), 0, seed ^ id))).collect();
        Sim {
            nodes,
            now: 0,
            latency: 5,
            places: HashMap::new(),
            loss: 0.0,
            crashed: HashSet::new(),
            paused: HashSet::new(),
            partition: HashSet::new(),
            slow: HashMap::new(),
            step: 10,
            in_flight: BTreeMap::new(),
            sent: 0,
            delivered: 0,
            updates_delivered: 0,
            bytes_delivered: 0,
            rng: SmallRng::seed_from_u64(seed),
            events: Vec::new(),
            queries_seen: 0,
        }
    }

    /// Places every node on a plane (seeded): latencies become a matrix that respects the
    /// triangle inequality, as real networks roughly do.
    pub fn place_on_plane(&mut self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        self.places = self.nodes.keys().map(|id| (*id, Place::random(&mut rng))).collect();
    }

    /// The true round trip between two nodes, in ms.
    pub fn rtt(&self, a: NodeId, b: NodeId) -> f64 {
        match (self.places.get(&a), self.places.get(&b)) {
            (Some(a), Some(b)) => a.rtt(b) * 1000.0,
            _ => 2.0 * self.latency as f64,
        }
    }

    fn one_way(&self, from: NodeId, to: NodeId) -> Millis {
        (self.rtt(from, to) / 2.0).round().max(1.0) as Millis
    }

    /// Queues what node `id` produced at time `at`.
    fn collect(&mut self, id: NodeId, at: Millis) {
        let Some(swim) = self.nodes.get_mut(&id) else { return };
        for output in swim.drain() {
            match output {
                Output::Event(event) => self.events.push((at, id, event)),
                Output::Send { to, envelope } => {
                    let to = to.trim_start_matches('n').parse::<NodeId>().unwrap_or(0);
                    let cut = self.partition.contains(&id) != self.partition.contains(&to);
                    if cut || self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let delay = self.one_way(id, to) + self.slow.get(&to).copied().unwrap_or(0);
                    self.sent += 1;
                    self.in_flight.insert((at + delay, self.sent), (to, envelope));
                }
            }
        }
    }

    pub fn run_until(&mut self, until: Millis) {
        while self.now < until {
            let next = self.now + self.step;
            // Messages arrive at their own time, answers included, so round trips are exact.
            while let Some(entry) = self.in_flight.first_entry() {
                let at = entry.key().0;
                if at > next {
                    break;
                }
                let (to, envelope) = entry.remove();
                if self.crashed.contains(&to) {
                    continue;
                }
                if self.paused.contains(&to) {
                    // Held by the kernel until the process runs again.
                    self.sent += 1;
                    self.in_flight.insert((next + self.step, self.sent), (to, envelope));
                    continue;
                }
                if let Some(swim) = self.nodes.get_mut(&to) {
                    self.delivered += 1;
                    self.updates_delivered += envelope.updates.len() as u64;
                    self.bytes_delivered += super::codec::encoded_len(&envelope) as u64;
                    swim.handle(at, envelope);
                    self.collect(to, at);
                }
            }
            self.now = next;
            let ids: Vec<NodeId> = self
                .nodes
                .keys()
                .copied()
                .filter(|id| !self.crashed.contains(id) && !self.paused.contains(id))
                .collect();
            for id in ids {
                if let Some(swim) = self.nodes.get_mut(&id) {
                    swim.tick(next);
                }
                self.collect(id, next);
            }
        }
    }

    /// Relative error of every running node's estimated round trip to every other (by their
    /// Vivaldi coordinates) against the true one, sorted.
    pub fn coordinate_errors(&self) -> Vec<f64> {
        let running: Vec<(&NodeId, &Swim)> = self.nodes.iter().filter(|(id, _)| !self.crashed.contains(id)).collect();
        let mut errors = Vec::new();
        for (i, (a, swim_a)) in running.iter().enumerate() {
            for (b, swim_b) in &running[i + 1..] {
                let estimate = swim_a.coordinate().distance_to(swim_b.coordinate()).as_secs_f64() * 1000.0;
                let truth = self.rtt(**a, **b);
                errors.push((estimate - truth).abs() / truth);
            }
        }
        errors.sort_by(f64::total_cmp);
        errors
    }

    /// Every running node's view of `subject`.
    pub fn views(&self, subject: NodeId) -> Vec<Option<State>> {
        self.nodes
            .iter()
            .filter(|(id, swim)| !self.crashed.contains(id) && **id != subject && !swim.has_left())
            .map(|(_, swim)| swim.member(subject).map(|m| m.state))
            .collect()
    }
}

impl Sim {
    /// A constellation in which every node already knows every other as alive.
    pub fn meshed(count: u64, config: SwimConfig, seed: u64) -> Sim {
        let mut sim = Sim::new(count, config, seed);
        for swim in sim.nodes.values_mut() {
            for id in 1..=count {
                swim.apply(Update::Alive { id, incarnation: 0, addr: addr(id) }, 0);
            }
            swim.settle();
            swim.drain();
        }
        sim
    }

    /// Failures declared about healthy nodes (neither crashed nor slow): (observer, victim) events.
    pub fn false_failures(&self) -> usize {
        self.events
            .iter()
            .filter(
                |(_, _, e)| matches!(e, Event::Failed(id) if !self.crashed.contains(id) && !self.slow.contains_key(id)),
            )
            .count()
    }

    /// Runs until every running node sees `subject` in `state`; returns the time it took.
    pub fn time_until_all_see(&mut self, subject: NodeId, state: State, limit: Millis) -> Option<Millis> {
        let start = self.now;
        while self.now < start + limit {
            self.run_until(self.now + 100);
            if self.views(subject).iter().all(|v| *v == Some(state)) {
                return Some(self.now - start);
            }
        }
        None
    }
}

impl Sim {
    /// Adds node `id`, started now, and has it join through `seed`.
    pub fn join(&mut self, id: NodeId, config: SwimConfig, seed: NodeId) {
        let mut swim = Swim::new(config, id, addr(id), self.now, id);
        swim.join(&addr(seed), self.now);
        self.nodes.insert(id, swim);
        self.collect(id, self.now);
    }

    /// Has every running node answer the queries it received since the last call, with what
    /// `answer` says (nothing: the node does not handle that query).
    pub fn answer_queries(&mut self, answer: impl Fn(NodeId, &Cre) -> Option<Vec<u8>>) {
        let fresh: Vec<(NodeId, Cre)> = self.events[self.queries_seen..]
            .iter()
            .filter_map(|(_, id, e)| match e {
                Event::Cre(cre) if matches!(cre.kind, CreKind::Query { .. }) => Some((*id, cre.clone())),
                _ => None,
            })
            .collect();
        self.queries_seen = self.events.len();
        for (id, query) in fresh {
            if self.crashed.contains(&id) {
                continue;
            }
            if let (Some(payload), Some(swim)) = (answer(id, &query), self.nodes.get_mut(&id)) {
                swim.answer(&query, payload);
                self.collect(id, self.now);
            }
        }
    }

    /// Messages delivered so far, the updates they carried, and their size as protobuf.
    pub fn traffic(&self) -> Traffic {
        Traffic { messages: self.delivered, updates: self.updates_delivered, bytes: self.bytes_delivered }
    }
}
