//! A deterministic, in-process constellation of SWIM/Lifeguard nodes for tests and for
//! `pleiades sim gossip`: seeded randomness, a fixed latency, packet loss, crashed nodes and
//! overloaded ("slow") nodes that handle everything late, and a virtual clock ticking every
//! `step` ms. The same state machines run here as on a real node.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::events::{Cre, CreKind};
use super::swim::{Envelope, Event, Millis, NodeId, Output, State, Swim, SwimConfig, Update};

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
    pub latency: Millis,
    pub loss: f64,
    pub crashed: HashSet<NodeId>,
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
            loss: 0.0,
            crashed: HashSet::new(),
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

    fn collect(&mut self, id: NodeId) {
        let Some(swim) = self.nodes.get_mut(&id) else { return };
        for output in swim.drain() {
            match output {
                Output::Event(event) => self.events.push((self.now, id, event)),
                Output::Send { to, envelope } => {
                    let lost = self.rng.random_bool(self.loss);
                    let to = to.trim_start_matches('n').parse::<NodeId>().unwrap_or(0);
                    if !lost {
                        let delay = self.latency + self.slow.get(&to).copied().unwrap_or(0);
                        self.sent += 1;
                        self.in_flight.insert((self.now + delay, self.sent), (to, envelope));
                    }
                }
            }
        }
    }

    pub fn run_until(&mut self, until: Millis) {
        while self.now < until {
            self.now += self.step;
            let now = self.now;
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (to, envelope) = entry.remove();
                if self.crashed.contains(&to) {
                    continue;
                }
                if let Some(swim) = self.nodes.get_mut(&to) {
                    self.delivered += 1;
                    self.updates_delivered += envelope.updates.len() as u64;
                    self.bytes_delivered += super::codec::encoded_len(&envelope) as u64;
                    swim.handle(now, envelope);
                    self.collect(to);
                }
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.crashed.contains(id)).collect();
            for id in ids {
                if let Some(swim) = self.nodes.get_mut(&id) {
                    swim.tick(now);
                }
                self.collect(id);
            }
        }
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
        self.collect(id);
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
                self.collect(id);
            }
        }
    }

    /// Messages delivered so far, the updates they carried, and their size as protobuf.
    pub fn traffic(&self) -> Traffic {
        Traffic { messages: self.delivered, updates: self.updates_delivered, bytes: self.bytes_delivered }
    }
}
