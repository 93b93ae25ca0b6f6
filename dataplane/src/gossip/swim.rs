//! SWIM membership with Lifeguard, as a sans-IO state machine: the caller feeds it the time and
//! inbound envelopes, and drains outbound envelopes and membership events. No sockets, no clock,
//! no global randomness (a seeded generator), so a whole constellation can be simulated
//! deterministically. HashiCorp memberlist's behaviour is the specification.
//!
//! - SWIM: randomized round-robin probes, indirect probes through `indirect_checks` members,
//!   suspicion before death, incarnation numbers and refutation, infection-style dissemination
//!   piggybacked on every message with a retransmit limit of `retransmit_mult * log10(n + 1)`,
//!   state sync on join and periodically, graceful leave.
//! - Lifeguard (when `lifeguard` is on): local health awareness scaling the node's own probe
//!   interval and timeout, nacks from indirect probers, dynamic suspicion timeouts that shrink
//!   with independent confirmations, and the buddy system (a suspect is told when probed).

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::SmallRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::SeedableRng;

use super::clock_offsets::ClockOffsets;
use super::codec;
use super::events::{Cre, CreKind, LamportClock, Pending, QueryAnswer, Seen, Settled, Tags};
use super::vivaldi::{Coordinate, Vivaldi, VivaldiConfig};

pub type NodeId = u64;
/// Most updates waiting for dissemination (memberlist bounds its queue too).
const MAX_BROADCASTS: usize = 4_096;
/// How long a member declared dead still receives gossip (memberlist's GossipToTheDeadTime).
const GOSSIP_TO_THE_DEAD: Millis = 30_000;
/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct SwimConfig {
    pub probe_interval: Millis,
    pub probe_timeout: Millis,
    pub indirect_checks: usize,
    pub suspicion_mult: u32,
    pub suspicion_max_timeout_mult: u32,
    pub gossip_interval: Millis,
    pub gossip_nodes: usize,
    pub retransmit_mult: u32,
    pub push_pull_interval: Millis,
    /// Lifeguard's local health multiplier ceiling.
    pub awareness_max: u32,
    /// Lifeguard on (memberlist's behaviour) or plain SWIM (for comparison).
    pub lifeguard: bool,
    /// Most updates piggybacked on one message.
    pub max_piggyback: usize,
    /// Piggybacking stops at this encoded size, so probes and gossip fit one QUIC datagram.
    pub max_message_bytes: usize,
    /// How long an acknowledged event waits for every member before settling by deadline.
    pub event_ack_timeout: Millis,
    /// Serf's reconnect: this often, a state sync with one member believed dead, so a healed
    /// partition merges again (gossip alone never reaches a member declared dead).
    pub reconnect_interval: Millis,
    /// Dead members are tried for this long, then only remembered.
    pub reconnect_timeout: Millis,
}

impl SwimConfig {
    /// HashiCorp's LAN profile.
    pub fn lan() -> SwimConfig {
        SwimConfig {
            probe_interval: 1_000,
            probe_timeout: 500,
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            gossip_interval: 200,
            gossip_nodes: 3,
            retransmit_mult: 4,
            push_pull_interval: 30_000,
            awareness_max: 8,
            lifeguard: true,
            max_piggyback: 16,
            max_message_bytes: 1_100,
            event_ack_timeout: 10_000,
            reconnect_interval: 30_000,
            reconnect_timeout: 24 * 3_600_000,
        }
    }

    /// Loopback constellations (tests, `pleiades up`): failures found within seconds.
    pub fn local() -> SwimConfig {
        SwimConfig {
            probe_interval: 500,
            probe_timeout: 200,
            gossip_interval: 100,
            push_pull_interval: 10_000,
            event_ack_timeout: 5_000,
            ..SwimConfig::lan()
        }
    }

    /// HashiCorp's WAN profile: slower probes, longer suspicion.
    pub fn wan() -> SwimConfig {
        SwimConfig {
            probe_interval: 5_000,
            probe_timeout: 3_000,
            suspicion_mult: 6,
            gossip_interval: 500,
            gossip_nodes: 4,
            push_pull_interval: 60_000,
            event_ack_timeout: 30_000,
            ..SwimConfig::lan()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub incarnation: u64,
    pub state: State,
    /// When the member entered its state.
    pub since: Millis,
}

/// What dissemination spreads: a claim about one member at one incarnation.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Alive {
        id: NodeId,
        incarnation: u64,
        addr: String,
    },
    Suspect {
        id: NodeId,
        incarnation: u64,
        from: NodeId,
    },
    /// `from == id` is a graceful leave.
    Dead {
        id: NodeId,
        incarnation: u64,
        from: NodeId,
    },
    /// A constellation runtime event.
    Cre(Cre),
}

impl Update {
    /// The member a membership claim is about (events are about no one in particular).
    fn subject(&self) -> Option<NodeId> {
        match self {
            Update::Alive { id, .. } | Update::Suspect { id, .. } | Update::Dead { id, .. } => Some(*id),
            Update::Cre(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Ping {
        seq: u32,
        target: NodeId,
    },
    /// Probe `target` on my behalf and tell me.
    PingReq {
        seq: u32,
        target: NodeId,
        target_addr: String,
    },
    /// `coordinate` and `wall_nanos` (its wall clock) come from the sender when it answers a
    /// ping of its own, not when relaying: a relayed round trip says nothing about the direct
    /// path, nor bounds when the target read its clock.
    Ack {
        seq: u32,
        coordinate: Option<Coordinate>,
        wall_nanos: Option<u64>,
    },
    /// Lifeguard: the indirect prober heard nothing from the target either.
    Nack {
        seq: u32,
    },
    /// Only piggybacked updates.
    Gossip,
    /// Full state exchange (join and periodic anti-entropy); `reply` asks for the peer's state.
    Sync {
        members: Vec<Update>,
        reply: bool,
    },
    /// Sent to an event's origin by each member that received it.
    CreAck {
        ltime: u64,
    },
    /// An answer to the query raised at `ltime`, sent to the asker.
    Answer {
        ltime: u64,
        payload: Vec<u8>,
        coordinate: Option<Coordinate>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub from: NodeId,
    pub from_addr: String,
    pub message: Message,
    pub updates: Vec<Update>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Joined(NodeId),
    Suspected(NodeId),
    Failed(NodeId),
    Left(NodeId),
    /// A suspect proved alive.
    Recovered(NodeId),
    /// A member declared dead proved alive: the declaration was a false positive.
    Revived(NodeId),
    /// This node was suspected and refuted it with a higher incarnation.
    Refuted {
        incarnation: u64,
    },
    /// A runtime event raised elsewhere reached this node (once per event). A query is answered
    /// with [`Swim::answer`].
    Cre(Cre),
    /// An event raised here settled.
    Settled {
        ltime: u64,
        settled: Settled,
    },
    /// A query raised here closed: by its deadline, or once every living member answered.
    QueryDone {
        ltime: u64,
        answers: Vec<QueryAnswer>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send { to: String, envelope: Envelope },
    Event(Event),
}

struct Probe {
    seq: u32,
    target: NodeId,
    sent_at: Millis,
    /// The same moment in microseconds, when the caller gives them.
    sent_at_micros: Option<u64>,
    indirect_at: Millis,
    acked: bool,
    indirect_sent: bool,
    nacks_expected: u32,
    nacks: u32,
}

struct Relay {
    origin_addr: String,
    origin_seq: u32,
    nack_at: Millis,
}

struct Suspicion {
    started: Millis,
    confirmations: HashSet<NodeId>,
    min: Millis,
    max: Millis,
    /// Confirmations after which the timeout reaches its minimum.
    k: u32,
}

impl Suspicion {
    /// Lifeguard: the timeout falls from `max` towards `min` as independent confirmations
    /// arrive (logarithmically, as memberlist).
    fn timeout(&self) -> Millis {
        let confirmed = self.confirmations.len().saturating_sub(1) as f64;
        if self.k < 1 {
            return self.min;
        }
        let fraction = (confirmed + 1.0).ln() / (f64::from(self.k) + 1.0).ln();
        let timeout = self.max as f64 - fraction * (self.max - self.min) as f64;
        (timeout.floor() as Millis).max(self.min)
    }
}

struct Broadcast {
    update: Update,
    transmits: u32,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Stats {
    pub probes: u64,
    /// Probes that closed with no ack, direct or relayed.
    pub probes_failed: u64,
    pub indirect_probes: u64,
}

pub struct Swim {
    config: SwimConfig,
    stats: Stats,
    me: NodeId,
    addr: String,
    incarnation: u64,
    members: BTreeMap<NodeId, Member>,
    probe_order: Vec<NodeId>,
    probe_index: usize,
    next_probe_at: Millis,
    next_gossip_at: Millis,
    next_sync_at: Millis,
    next_reconnect_at: Millis,
    seq: u32,
    probe: Option<Probe>,
    relays: HashMap<u32, Relay>,
    suspicions: HashMap<NodeId, Suspicion>,
    broadcasts: Vec<Broadcast>,
    /// Lifeguard's local health score: 0 is healthy; probes stretch by (score + 1).
    health: u32,
    left: bool,
    /// Network coordinate, refined by the round trip of every direct probe.
    vivaldi: Vivaldi,
    /// Peer coordinates refused (wrong shape, NaN, impossible round trip).
    rejected_coordinates: u64,
    /// Each peer's coordinate from its latest ack.
    coordinates: HashMap<NodeId, Coordinate>,
    /// The caller's clock in microseconds at the current `tick`/`handle`, when it has one.
    clock_micros: Option<u64>,
    /// The caller's wall clock (nanoseconds since the Unix epoch) at the current `tick`/`handle`.
    wall_nanos: Option<u64>,
    /// Wall-clock offsets to the members, from direct probes.
    clock_offsets: ClockOffsets,
    rng: SmallRng,
    outputs: Vec<Output>,
    lamport: LamportClock,
    seen: Seen,
    /// Each member's latest tags and the Lamport time they were set at (this node's included).
    tags: HashMap<NodeId, (u64, Tags)>,
    /// Events raised here awaiting acknowledgements or answers, by Lamport time.
    pending: BTreeMap<u64, Pending>,
}

impl Swim {
    pub fn new(config: SwimConfig, me: NodeId, addr: String, now: Millis, seed: u64) -> Swim {
        let mut swim = Swim {
            stats: Stats::default(),
            me,
            addr: addr.clone(),
            incarnation: 0,
            members: BTreeMap::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            next_probe_at: now + config.probe_interval,
            next_gossip_at: now + config.gossip_interval,
            next_sync_at: now + config.push_pull_interval,
            next_reconnect_at: now + config.reconnect_interval,
            seq: 0,
            probe: None,
            relays: HashMap::new(),
            suspicions: HashMap::new(),
            broadcasts: Vec::new(),
            health: 0,
            left: false,
            vivaldi: Vivaldi::new(VivaldiConfig::default(), seed),
            rejected_coordinates: 0,
            coordinates: HashMap::new(),
            clock_micros: None,
            wall_nanos: None,
            clock_offsets: ClockOffsets::default(),
            rng: SmallRng::seed_from_u64(seed),
            outputs: Vec::new(),
            lamport: LamportClock::default(),
            seen: Seen::default(),
            tags: HashMap::new(),
            pending: BTreeMap::new(),
            config,
        };
        swim.members.insert(me, Member { id: me, addr, incarnation: 0, state: State::Alive, since: now });
        swim
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's network coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        self.vivaldi.coordinate()
    }

    /// Peer coordinates refused so far.
    pub fn rejected_coordinates(&self) -> u64 {
        self.rejected_coordinates
    }

    /// Whether this node has announced a graceful leave.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Lifeguard's local health score (0 healthy, up to `awareness_max - 1`).
    pub fn health(&self) -> u32 {
        self.health
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Members not known dead or gone, this node included.
    pub fn live_count(&self) -> usize {
        self.members.values().filter(|m| matches!(m.state, State::Alive | State::Suspect)).count()
    }

    /// Forgets pending dissemination, as in a constellation that has long settled (simulation).
    pub fn settle(&mut self) {
        self.broadcasts.clear();
    }

    /// Everything produced since the last call.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Asks `seed` for its state and gives it ours, announcing a `join` event with our tags the
    /// first time.
    pub fn join(&mut self, seed: &str, now: Millis) {
        if !self.tags.contains_key(&self.me) {
            let tags = Tags::new();
            self.raise(CreKind::Join { tags }, false, now);
        }
        let members = self.state_updates();
        self.send(seed.to_string(), Message::Sync { members, reply: true });
    }

    /// Announces a graceful leave; keep ticking until the broadcast has spread.
    pub fn leave(&mut self, now: Millis) {
        self.raise(CreKind::Leave, false, now);
        self.left = true;
        self.incarnation = self.incarnation.saturating_add(1);
        let update = Update::Dead { id: self.me, incarnation: self.incarnation, from: self.me };
        if let Some(me) = self.members.get_mut(&self.me) {
            me.state = State::Left;
            me.incarnation = self.incarnation;
            me.since = now;
        }
        self.enqueue(update);
    }

    /// Sets this node's tags and spreads them as an `update` event (or as the `join` event when
    /// the node has announced none yet); returns the event's Lamport time.
    pub fn set_tags(&mut self, tags: Tags, ack: bool, now: Millis) -> u64 {
        if self.tags.contains_key(&self.me) {
            self.raise(CreKind::Update { tags }, ack, now)
        } else {
            self.raise(CreKind::Join { tags }, ack, now)
        }
    }

    /// Asks the constellation: every member handling `name` answers within `timeout`. The
    /// answers arrive as one [`Event::QueryDone`]; returns the query's Lamport time.
    pub fn query(&mut self, name: String, payload: Vec<u8>, timeout: Millis, now: Millis) -> u64 {
        let reply_to = self.addr.clone();
        self.raise(CreKind::Query { name, payload, reply_to, timeout }, true, now)
    }

    /// Answers a query received as [`Event::Cre`].
    pub fn answer(&mut self, query: &Cre, payload: Vec<u8>) {
        let CreKind::Query { reply_to, .. } = &query.kind else { return };
        let coordinate = Some(self.vivaldi.coordinate().clone());
        if query.origin == self.me {
            if let Some(pending) = self.pending.get_mut(&query.ltime) {
                pending.answers.push(QueryAnswer { from: self.me, payload, coordinate });
            }
        } else {
            self.send(reply_to.clone(), Message::Answer { ltime: query.ltime, payload, coordinate });
        }
    }

    /// A member's tags (this node's included).
    pub fn tags_of(&self, id: NodeId) -> Option<&Tags> {
        self.tags.get(&id).map(|(_, tags)| tags)
    }

    pub fn lamport_time(&self) -> u64 {
        self.lamport.time()
    }

    /// Gives the time of the next `tick` or `handle` in microseconds (same clock as their
    /// milliseconds): probe round trips, hence coordinates, are then measured to the
    /// microsecond, which LAN round trips well below 1 ms need.
    pub fn set_clock_micros(&mut self, micros: u64) {
        self.clock_micros = Some(micros);
    }

    /// Gives the wall clock of the next `tick` or `handle`: acks carry it, and the acks of
    /// direct probes measure the offset between this node's clock and the target's.
    pub fn set_wall_nanos(&mut self, nanos: u64) {
        self.wall_nanos = Some(nanos);
    }

    /// The wall-clock offsets measured to the members.
    pub fn clock_offsets(&self) -> &ClockOffsets {
        &self.clock_offsets
    }

    /// Starts the Lamport clock no lower than `floor`: a node restarting with its old id must
    /// not reuse its previous life's event times, which peers would drop as duplicates (the
    /// node passes the wall clock in milliseconds).
    pub fn start_lamport_at(&mut self, floor: u64) {
        self.lamport.witness(floor);
    }

    /// The last coordinate a living member reported.
    pub fn coordinate_of(&self, id: NodeId) -> Option<&Coordinate> {
        self.coordinates.get(&id)
    }

    /// Living members by estimated round trip from here, nearest first, at most `count`.
    pub fn nearest(&self, count: usize) -> Vec<(NodeId, std::time::Duration)> {
        let living = self.coordinates.iter().filter(|(id, _)| self.is_alive(**id)).map(|(id, c)| (*id, c));
        super::vivaldi::nearest(self.vivaldi.coordinate(), living, count)
    }

    /// Raises an event here: applies it locally, queues it for dissemination, and waits for
    /// acknowledgements when asked to.
    fn raise(&mut self, kind: CreKind, ack: bool, now: Millis) -> u64 {
        let ltime = self.lamport.tick();
        let cre = Cre { origin: self.me, ltime, ack, kind };
        self.seen.first_sight(self.me, ltime);
        self.record_tags(&cre);
        let query_timeout = match &cre.kind {
            CreKind::Query { timeout, .. } => Some(*timeout),
            _ => None,
        };
        if ack || query_timeout.is_some() {
            // A query is asked of this node too (as Serf does); other events only of the rest.
            let is_query = query_timeout.is_some();
            let expected = self
                .members
                .values()
                .filter(|m| (is_query || m.id != self.me) && matches!(m.state, State::Alive | State::Suspect))
                .map(|m| m.id)
                .collect();
            let wait = query_timeout.unwrap_or(self.config.event_ack_timeout);
            let pending = Pending {
                cre: cre.clone(),
                resend_at: Some(now + wait / 2),
                deadline: now + wait,
                expected,
                acked: Default::default(),
                answers: Vec::new(),
                query: query_timeout.is_some(),
            };
            self.pending.insert(ltime, pending);
        }
        if query_timeout.is_some() {
            self.event(Event::Cre(cre.clone()));
        }
        self.enqueue(Update::Cre(cre));
        ltime
    }

    /// Keeps the newest tags per member by Lamport time.
    fn record_tags(&mut self, cre: &Cre) {
        if !self.members.contains_key(&cre.origin) {
            return;
        }
        if let CreKind::Join { tags } | CreKind::Update { tags } = &cre.kind {
            let newer = self.tags.get(&cre.origin).is_none_or(|(at, _)| cre.ltime > *at);
            if newer {
                self.tags.insert(cre.origin, (cre.ltime, tags.clone()));
            }
        }
    }

    fn is_alive(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| matches!(m.state, State::Alive | State::Suspect))
    }

    /// An event reached this node: handled once, acknowledged if asked, relayed.
    fn apply_cre(&mut self, cre: Cre, from_sync: bool) {
        self.lamport.witness(cre.ltime);
        if cre.origin == self.me {
            return;
        }
        if from_sync {
            // State, not news: a sync hands over each member's latest tags. It does not mark
            // the event seen, so the event itself is still handled and relayed when it comes.
            self.record_tags(&cre);
            return;
        }
        // Events only from members (a stranger's event would only grow our tables).
        let Some(origin_addr) = self.members.get(&cre.origin).map(|m| m.addr.clone()) else { return };
        // Answers go where the query says; only to its origin's own address, or anyone could
        // make every member send datagrams to a host of their choosing.
        if matches!(&cre.kind, CreKind::Query { reply_to, .. } if *reply_to != origin_addr) {
            return;
        }
        if !self.seen.first_sight(cre.origin, cre.ltime) {
            return;
        }
        self.record_tags(&cre);
        if cre.ack {
            self.send(origin_addr, Message::CreAck { ltime: cre.ltime });
        }
        self.event(Event::Cre(cre.clone()));
        self.enqueue(Update::Cre(cre));
    }

    /// Settles events raised here whose acknowledgements are all in or whose deadline passed.
    fn settle_pending(&mut self, now: Millis) {
        // Gossip may miss a member (loss, a busy receiver): halfway to the deadline, each one
        // still silent gets the event directly, once.
        let mut resend = Vec::new();
        for pending in self.pending.values_mut() {
            if pending.resend_at.is_some_and(|at| now >= at) {
                pending.resend_at = None;
                let silent = pending.expected.iter().filter(|id| !pending.acked.contains(id) && **id != self.me);
                resend.extend(silent.map(|id| (*id, pending.cre.clone())));
            }
        }
        for (id, cre) in resend {
            if let Some(addr) = self.members.get(&id).filter(|m| m.state != State::Dead).map(|m| m.addr.clone()) {
                self.send_with(addr, Message::Gossip, vec![Update::Cre(cre)]);
            }
        }
        let mut done = Vec::new();
        for (ltime, pending) in &self.pending {
            let complete = pending.complete(|id| self.is_alive(id));
            if complete || now >= pending.deadline {
                done.push((*ltime, complete));
            }
        }
        for (ltime, complete) in done {
            let Some(pending) = self.pending.remove(&ltime) else { continue };
            if pending.query {
                self.event(Event::QueryDone { ltime, answers: pending.answers });
                continue;
            }
            let settled = if complete {
                Settled::Acknowledged { acked: pending.acked.len() }
            } else {
                Settled::Deadline { acked: pending.acked.len(), expected: pending.expected.len() }
            };
            self.event(Event::Settled { ltime, settled });
        }
    }

    fn probe_scale(&self) -> Millis {
        if self.config.lifeguard {
            Millis::from(self.health + 1)
        } else {
            1
        }
    }

    fn adjust_health(&mut self, delta: i64) {
        if !self.config.lifeguard {
            return;
        }
        let max = i64::from(self.config.awareness_max.saturating_sub(1));
        self.health = (i64::from(self.health) + delta).clamp(0, max) as u32;
    }

    /// Advances timers: probes, indirect probes, nacks, suspicion expiry, gossip and sync.
    pub fn tick(&mut self, now: Millis) {
        self.expire_relays(now);
        self.settle_pending(now);
        self.expire_suspicions(now);
        if let Some(probe) = &self.probe {
            if !probe.acked && !probe.indirect_sent && now >= probe.indirect_at {
                self.send_indirect_probes();
            }
        }
        if now >= self.next_probe_at {
            self.finish_probe(now);
            if !self.left {
                self.start_probe(now);
            }
            self.next_probe_at = now + self.config.probe_interval * self.probe_scale();
        }
        if now >= self.next_gossip_at {
            self.gossip(now);
            self.next_gossip_at = now + self.config.gossip_interval;
        }
        if now >= self.next_sync_at {
            if let Some(peer) = self.random_members(1, |m| matches!(m.state, State::Alive | State::Suspect)).pop() {
                let members = self.state_updates();
                self.send(peer.addr, Message::Sync { members, reply: true });
            }
            self.next_sync_at = now + self.config.push_pull_interval;
        }
        if now >= self.next_reconnect_at {
            self.reap(now);
        }
        if now >= self.next_reconnect_at && !self.left {
            let timeout = self.config.reconnect_timeout;
            let dead = self.random_members(1, |m| m.state == State::Dead && now.saturating_sub(m.since) < timeout);
            if let Some(peer) = dead.into_iter().next() {
                let members = self.state_updates();
                self.send(peer.addr, Message::Sync { members, reply: true });
            }
            self.next_reconnect_at = now + self.config.reconnect_interval;
        }
    }

    /// Forgets members dead or gone for longer than `reconnect_timeout`, with everything kept
    /// about them, so a long-lived constellation's tables and syncs do not grow forever.
    fn reap(&mut self, now: Millis) {
        let timeout = self.config.reconnect_timeout;
        let gone: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| matches!(m.state, State::Dead | State::Left) && now.saturating_sub(m.since) >= timeout)
            .map(|m| m.id)
            .collect();
        for id in gone {
            self.members.remove(&id);
            self.tags.remove(&id);
            self.coordinates.remove(&id);
            self.suspicions.remove(&id);
            self.seen.forget(id);
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn start_probe(&mut self, now: Millis) {
        let Some(target) = self.next_probe_target() else { return };
        self.stats.probes += 1;
        let seq = self.next_seq();
        let timeout = self.config.probe_timeout * self.probe_scale();
        let mut buddy = Vec::new();
        if self.config.lifeguard && target.state == State::Suspect {
            // The buddy system: tell the suspect at once, so it can refute.
            buddy.push(Update::Suspect { id: target.id, incarnation: target.incarnation, from: self.me });
        }
        self.probe = Some(Probe {
            seq,
            target: target.id,
            sent_at: now,
            sent_at_micros: self.clock_micros,
            indirect_at: now + timeout,
            acked: false,
            indirect_sent: false,
            nacks_expected: 0,
            nacks: 0,
        });
        self.send_with(target.addr, Message::Ping { seq, target: target.id }, buddy);
    }

    /// Round-robin over a shuffled list, reshuffled each pass (SWIM's bounded detection time).
    fn next_probe_target(&mut self) -> Option<Member> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let id = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if let Some(member) = self.members.get(&id) {
                    if id != self.me && matches!(member.state, State::Alive | State::Suspect) {
                        return Some(member.clone());
                    }
                }
            }
            self.probe_order = self.members.keys().copied().filter(|id| *id != self.me).collect();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_index = 0;
        }
        None
    }

    fn send_indirect_probes(&mut self) {
        let Some(probe) = self.probe.as_mut() else { return };
        probe.indirect_sent = true;
        self.stats.indirect_probes += 1;
        let (seq, target) = (probe.seq, probe.target);
        let Some(target_addr) = self.members.get(&target).map(|m| m.addr.clone()) else { return };
        let helpers = self.random_members(self.config.indirect_checks, |m| m.id != target && m.state == State::Alive);
        if self.config.lifeguard {
            if let Some(probe) = self.probe.as_mut() {
                probe.nacks_expected = helpers.len() as u32;
            }
        }
        for helper in helpers {
            let message = Message::PingReq { seq, target, target_addr: target_addr.clone() };
            self.send(helper.addr, message);
        }
    }

    /// Closes the probe round: no ack means suspicion. Lifeguard: missed nacks, or no helpers
    /// to ask, count against our own health; an ack counts for it.
    fn finish_probe(&mut self, now: Millis) {
        let Some(probe) = self.probe.take() else { return };
        if probe.acked {
            return;
        }
        self.stats.probes_failed += 1;
        let missed = if probe.nacks_expected > 0 { probe.nacks_expected.saturating_sub(probe.nacks) } else { 1 };
        self.adjust_health(i64::from(missed));
        let Some(target) = self.members.get(&probe.target).cloned() else { return };
        // On a member already suspected, our own failed probe is an independent confirmation.
        if matches!(target.state, State::Alive | State::Suspect) {
            let update = Update::Suspect { id: target.id, incarnation: target.incarnation, from: self.me };
            self.apply(update, now);
        }
    }

    fn expire_relays(&mut self, now: Millis) {
        let expired: Vec<u32> = self.relays.iter().filter(|(_, r)| now >= r.nack_at).map(|(seq, _)| *seq).collect();
        for seq in expired {
            if let Some(relay) = self.relays.remove(&seq) {
                if self.config.lifeguard {
                    self.send(relay.origin_addr, Message::Nack { seq: relay.origin_seq });
                }
            }
        }
    }

    fn expire_suspicions(&mut self, now: Millis) {
        let expired: Vec<NodeId> =
            self.suspicions.iter().filter(|(_, s)| now >= s.started + s.timeout()).map(|(id, _)| *id).collect();
        for id in expired {
            self.suspicions.remove(&id);
            let Some(member) = self.members.get(&id) else { continue };
            if member.state == State::Suspect {
                let update = Update::Dead { id, incarnation: member.incarnation, from: self.me };
                self.apply(update, now);
            }
        }
    }

    fn gossip(&mut self, now: Millis) {
        if self.broadcasts.is_empty() {
            return;
        }
        // Recently dead members still hear gossip, so a wrongly declared node learns and refutes.
        let peers = self.random_members(self.config.gossip_nodes, |m| match m.state {
            State::Alive | State::Suspect => true,
            State::Dead => now.saturating_sub(m.since) < GOSSIP_TO_THE_DEAD,
            State::Left => false,
        });
        for peer in peers {
            self.send(peer.addr, Message::Gossip);
        }
    }

    /// Up to `count` distinct members other than this node, chosen at random among those `keep`
    /// accepts (one pass, without copying the member table).
    fn random_members(&mut self, count: usize, keep: impl Fn(&Member) -> bool) -> Vec<Member> {
        let me = self.me;
        let chosen: Vec<&Member> =
            self.members.values().filter(|m| m.id != me && keep(m)).choose_multiple(&mut self.rng, count);
        chosen.into_iter().cloned().collect()
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.members.len() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn enqueue(&mut self, update: Update) {
        // A newer claim about a member makes older queued ones pointless.
        if let Some(subject) = update.subject() {
            self.broadcasts.retain(|b| b.update.subject() != Some(subject));
        }
        self.broadcasts.push(Broadcast { update, transmits: 0 });
        if self.broadcasts.len() > MAX_BROADCASTS {
            // Under a flood, the most retransmitted claims have spread furthest: drop those.
            self.broadcasts.sort_by_key(|b| b.transmits);
            self.broadcasts.truncate(MAX_BROADCASTS);
        }
    }

    /// The freshest pending updates that fit in `budget` encoded bytes. Broadcasts retire after
    /// the retransmit limit; an unacknowledged event raised here has then settled by rounds.
    fn piggyback(&mut self, mut budget: usize) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.broadcasts.sort_by_key(|b| b.transmits);
        let mut updates = Vec::new();
        for broadcast in &mut self.broadcasts {
            if updates.len() == self.config.max_piggyback {
                break;
            }
            let size = codec::piggybacked_len(&broadcast.update);
            if size > budget {
                if size > self.config.max_message_bytes * 3 / 4 {
                    // Would crowd out everything else; the codec's limits keep real events
                    // far smaller, so this only retires what a peer should not have sent.
                    broadcast.transmits = limit;
                }
                continue;
            }
            budget -= size;
            broadcast.transmits += 1;
            updates.push(broadcast.update.clone());
        }
        let me = self.me;
        let mut settled = Vec::new();
        self.broadcasts.retain(|b| {
            let keep = b.transmits < limit;
            if let (false, Update::Cre(cre)) = (keep, &b.update) {
                if cre.origin == me && !cre.ack && !matches!(cre.kind, CreKind::Query { .. }) {
                    settled.push(cre.ltime);
                }
            }
            keep
        });
        for ltime in settled {
            self.event(Event::Settled { ltime, settled: Settled::Rounds });
        }
        updates
    }

    fn send(&mut self, to: String, message: Message) {
        self.send_with(to, message, Vec::new());
    }

    /// Sends `message` with `updates` first, then as much pending dissemination as fits in one
    /// datagram.
    fn send_with(&mut self, to: String, message: Message, updates: Vec<Update>) {
        let mut envelope = Envelope { from: self.me, from_addr: self.addr.clone(), message, updates };
        let budget = self.config.max_message_bytes.saturating_sub(codec::encoded_len(&envelope));
        envelope.updates.extend(self.piggyback(budget));
        self.outputs.push(Output::Send { to, envelope });
    }

    /// Every member's state, then every member's latest tags.
    fn state_updates(&self) -> Vec<Update> {
        let members = self.members.values().map(|m| match m.state {
            State::Alive => Update::Alive { id: m.id, incarnation: m.incarnation, addr: m.addr.clone() },
            State::Suspect => Update::Suspect { id: m.id, incarnation: m.incarnation, from: self.me },
            State::Dead => Update::Dead { id: m.id, incarnation: m.incarnation, from: self.me },
            State::Left => Update::Dead { id: m.id, incarnation: m.incarnation, from: m.id },
        });
        let tags = self.tags.iter().map(|(id, (ltime, tags))| {
            Update::Cre(Cre { origin: *id, ltime: *ltime, ack: false, kind: CreKind::Update { tags: tags.clone() } })
        });
        members.chain(tags).collect()
    }

    /// Handles one inbound envelope.
    pub fn handle(&mut self, now: Millis, envelope: Envelope) {
        // The sender is alive as far as it claims; its own updates say at which incarnation.
        for update in envelope.updates {
            self.apply(update, now);
        }
        match envelope.message {
            Message::Ping { seq, target } => {
                if target == self.me && !self.left {
                    let coordinate = Some(self.vivaldi.coordinate().clone());
                    self.send(envelope.from_addr, Message::Ack { seq, coordinate, wall_nanos: self.wall_nanos });
                }
            }
            Message::PingReq { seq, target, target_addr } => {
                let relay_seq = self.next_seq();
                let timeout = self.config.probe_timeout * self.probe_scale();
                self.relays.insert(
                    relay_seq,
                    Relay { origin_addr: envelope.from_addr, origin_seq: seq, nack_at: now + timeout },
                );
                self.send(target_addr, Message::Ping { seq: relay_seq, target });
            }
            Message::Ack { seq, coordinate, wall_nanos } => {
                if let Some(relay) = self.relays.remove(&seq) {
                    let ack = Message::Ack { seq: relay.origin_seq, coordinate: None, wall_nanos: None };
                    self.send(relay.origin_addr, ack);
                } else if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq && !p.acked) {
                    probe.acked = true;
                    let target = probe.target;
                    let rtt = match (self.clock_micros, probe.sent_at_micros) {
                        (Some(at), Some(sent)) => std::time::Duration::from_micros(at.saturating_sub(sent)),
                        _ => std::time::Duration::from_millis(now.saturating_sub(probe.sent_at)),
                    };
                    self.adjust_health(-1);
                    // Only the target's own answer measures the path to it, and its clock.
                    if let (Some(remote), Some(local)) =
                        (wall_nanos.filter(|_| envelope.from == target), self.wall_nanos)
                    {
                        self.clock_offsets.observe(target, remote, local, rtt, now);
                    }
                    if let Some(coordinate) = coordinate.filter(|_| envelope.from == target) {
                        match self.vivaldi.observe(target, &coordinate, rtt) {
                            Ok(_) => {
                                self.coordinates.insert(target, coordinate);
                            }
                            Err(_) => self.rejected_coordinates += 1,
                        }
                    }
                }
            }
            Message::Nack { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    probe.nacks += 1;
                }
            }
            Message::Gossip => {}
            Message::Sync { members, reply } => {
                for update in members {
                    match update {
                        Update::Cre(cre) => self.apply_cre(cre, true),
                        update => self.apply(update, now),
                    }
                }
                if reply {
                    let members = self.state_updates();
                    self.send(envelope.from_addr, Message::Sync { members, reply: false });
                }
            }
            Message::CreAck { ltime } => {
                if let Some(pending) = self.pending.get_mut(&ltime).filter(|p| p.expected.contains(&envelope.from)) {
                    pending.acked.insert(envelope.from);
                }
                self.settle_pending(now);
            }
            Message::Answer { ltime, payload, coordinate } => {
                let asked = |p: &&mut Pending| p.query && p.expected.contains(&envelope.from);
                if let Some(pending) = self.pending.get_mut(&ltime).filter(asked) {
                    if !pending.answers.iter().any(|a| a.from == envelope.from) {
                        pending.answers.push(QueryAnswer { from: envelope.from, payload, coordinate });
                    }
                }
                self.settle_pending(now);
            }
        }
    }

    fn event(&mut self, event: Event) {
        self.outputs.push(Output::Event(event));
    }

    /// Claims about ourselves at our incarnation or above are refuted with a higher one.
    fn refute(&mut self, claimed: u64, now: Millis) {
        if self.left {
            return;
        }
        // The codec refuses implausibly large incarnations, so this cannot overflow.
        self.incarnation = self.incarnation.max(claimed).saturating_add(1);
        if let Some(me) = self.members.get_mut(&self.me) {
            me.incarnation = self.incarnation;
            me.state = State::Alive;
            me.since = now;
        }
        // Lifeguard: being suspected hints that we are the slow one.
        self.adjust_health(1);
        self.enqueue(Update::Alive { id: self.me, incarnation: self.incarnation, addr: self.addr.clone() });
        self.event(Event::Refuted { incarnation: self.incarnation });
    }

    /// Applies a disseminated claim with memberlist's precedence rules.
    pub fn apply(&mut self, update: Update, now: Millis) {
        match update {
            Update::Cre(cre) => self.apply_cre(cre, false),
            Update::Alive { id, incarnation, addr } => {
                if id == self.me {
                    // A claim from a previous life of this node (it restarted, maybe elsewhere):
                    // overtake it, or peers keep the old incarnation and address.
                    if incarnation > self.incarnation || (incarnation == self.incarnation && addr != self.addr) {
                        self.refute(incarnation, now);
                    }
                    return;
                }
                match self.members.get_mut(&id) {
                    None => {
                        self.members.insert(
                            id,
                            Member { id, addr: addr.clone(), incarnation, state: State::Alive, since: now },
                        );
                        self.event(Event::Joined(id));
                    }
                    Some(member) => {
                        let newer = incarnation > member.incarnation;
                        if !newer {
                            return;
                        }
                        let was = member.state;
                        member.incarnation = incarnation;
                        member.addr = addr.clone();
                        member.state = State::Alive;
                        member.since = now;
                        self.suspicions.remove(&id);
                        match was {
                            State::Alive => {}
                            State::Suspect => self.event(Event::Recovered(id)),
                            State::Dead => self.event(Event::Revived(id)),
                            State::Left => self.event(Event::Joined(id)),
                        }
                    }
                }
                self.enqueue(Update::Alive { id, incarnation, addr });
            }
            Update::Suspect { id, incarnation, from } => {
                if id == self.me {
                    if incarnation >= self.incarnation {
                        self.refute(incarnation, now);
                    }
                    return;
                }
                let alive = self.members.values().filter(|m| m.state == State::Alive).count() as u32;
                let Some(member) = self.members.get_mut(&id) else { return };
                if incarnation < member.incarnation || matches!(member.state, State::Dead | State::Left) {
                    return;
                }
                if member.state == State::Suspect {
                    // Another independent confirmation shortens the timeout (Lifeguard).
                    let confirmed = self.suspicions.get_mut(&id).is_some_and(|s| s.confirmations.insert(from));
                    if confirmed {
                        self.enqueue(Update::Suspect { id, incarnation, from });
                    }
                    return;
                }
                member.state = State::Suspect;
                member.incarnation = incarnation;
                member.since = now;
                let n = f64::from(alive.max(1));
                let min = (f64::from(self.config.suspicion_mult)
                    * n.log10().max(1.0)
                    * self.config.probe_interval as f64) as Millis;
                let (max, k) = if self.config.lifeguard {
                    let k = self.config.suspicion_mult.saturating_sub(2);
                    (min * Millis::from(self.config.suspicion_max_timeout_mult), if alive < k + 2 { 0 } else { k })
                } else {
                    (min, 0)
                };
                self.suspicions
                    .insert(id, Suspicion { started: now, confirmations: HashSet::from([from]), min, max, k });
                self.event(Event::Suspected(id));
                self.enqueue(Update::Suspect { id, incarnation, from });
            }
            Update::Dead { id, incarnation, from } => {
                if id == self.me {
                    // Includes our own leave from a previous life: we are running now.
                    if incarnation >= self.incarnation {
                        self.refute(incarnation, now);
                    }
                    return;
                }
                let Some(member) = self.members.get_mut(&id) else { return };
                if incarnation < member.incarnation || matches!(member.state, State::Dead | State::Left) {
                    return;
                }
                let left = from == id;
                member.state = if left { State::Left } else { State::Dead };
                member.incarnation = incarnation;
                member.since = now;
                self.suspicions.remove(&id);
                self.vivaldi.forget(id);
                self.coordinates.remove(&id);
                self.event(if left { Event::Left(id) } else { Event::Failed(id) });
                self.enqueue(Update::Dead { id, incarnation, from });
            }
        }
    }
}

#[cfg(test)]
mod tests;
