//! Constellation runtime events (CREs): `join`, `leave`, `update` (a member's tags: zone,
//! capacity, version, ranges held) and `query`, spread neighbour to neighbour on the SWIM
//! dissemination queue. Each event is named by its origin and the origin's Lamport time, so a
//! node handles it once however many neighbours relay it, and tags are ordered by Lamport time
//! whatever order the updates arrive in. The pieces here are the bookkeeping; `swim` spreads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::swim::{Millis, NodeId};
use super::vivaldi::Coordinate;

/// A member's metadata, as key/value tags (Serf's model).
pub type Tags = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Cre {
    pub origin: NodeId,
    /// The origin's Lamport time when it raised the event; (origin, ltime) names the event.
    pub ltime: u64,
    /// Receivers acknowledge directly to the origin, which then observes equilibrium.
    pub ack: bool,
    pub kind: CreKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreKind {
    Join {
        tags: Tags,
    },
    Leave,
    Update {
        tags: Tags,
    },
    /// Every receiver that knows `name` answers directly to `reply_to` within `timeout` ms.
    Query {
        name: String,
        payload: Vec<u8>,
        reply_to: String,
        timeout: Millis,
    },
}

impl CreKind {
    pub fn name(&self) -> &'static str {
        match self {
            CreKind::Join { .. } => "join",
            CreKind::Leave => "leave",
            CreKind::Update { .. } => "update",
            CreKind::Query { .. } => "query",
        }
    }
}

/// One answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryAnswer {
    pub from: NodeId,
    pub payload: Vec<u8>,
    /// The responder's network coordinate, so the asker can rank answers by estimated RTT.
    pub coordinate: Option<Coordinate>,
}

/// How an event raised here was seen to settle.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Every member alive when it was raised (and still alive) acknowledged it.
    Acknowledged { acked: usize },
    /// The deadline passed first: `acked` of `expected` acknowledged.
    Deadline { acked: usize, expected: usize },
    /// Not acknowledged: this node's own retransmissions are done, which by the epidemic bound
    /// (`retransmit_mult * log10(n + 1)` rounds to `gossip_nodes` peers) reached the others.
    Rounds,
}

/// A Lamport clock: ticks for every local event, jumps past every remote one seen.
#[derive(Debug, Default, Clone)]
pub struct LamportClock(u64);

impl LamportClock {
    pub fn time(&self) -> u64 {
        self.0
    }

    pub fn tick(&mut self) -> u64 {
        // The codec refuses implausibly large times, so this never saturates in practice.
        self.0 = self.0.saturating_add(1);
        self.0
    }

    pub fn witness(&mut self, seen: u64) {
        self.0 = self.0.max(seen);
    }
}

/// Events seen recently, per origin, so each is handled once. Older than the window means
/// already handled (a relay that slow is a duplicate).
#[derive(Default)]
pub struct Seen {
    by_origin: HashMap<NodeId, BTreeSet<u64>>,
}

/// Event times remembered per origin.
const SEEN_WINDOW: usize = 256;

impl Seen {
    /// Forgets an origin that is gone for good.
    pub fn forget(&mut self, origin: NodeId) {
        self.by_origin.remove(&origin);
    }

    /// True the first time (origin, ltime) is offered.
    pub fn first_sight(&mut self, origin: NodeId, ltime: u64) -> bool {
        let seen = self.by_origin.entry(origin).or_default();
        if seen.len() >= SEEN_WINDOW && seen.first().is_some_and(|oldest| ltime <= *oldest) {
            return false;
        }
        if !seen.insert(ltime) {
            return false;
        }
        while seen.len() > SEEN_WINDOW {
            seen.pop_first();
        }
        true
    }
}

/// An event raised here, waiting for acknowledgements or answers.
pub struct Pending {
    /// The event, kept to send it again to members that have not acknowledged it.
    pub cre: Cre,
    pub expected: BTreeSet<NodeId>,
    pub acked: BTreeSet<NodeId>,
    pub answers: Vec<QueryAnswer>,
    /// Halfway to the deadline, members still silent get the event directly.
    pub resend_at: Option<Millis>,
    pub deadline: Millis,
    pub query: bool,
}

impl Pending {
    /// Whether every expected member still alive has acknowledged the event (a query: has
    /// answered it; a member without a handler only acknowledges, so the deadline closes it).
    pub fn complete(&self, alive: impl Fn(NodeId) -> bool) -> bool {
        let done = |id: &NodeId| {
            if self.query {
                self.answers.iter().any(|a| a.from == *id)
            } else {
                self.acked.contains(id)
            }
        };
        self.expected.iter().all(|id| done(id) || !alive(*id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_seen_once_and_stale_relays_are_dropped() {
        let mut seen = Seen::default();
        assert!(seen.first_sight(1, 5));
        assert!(!seen.first_sight(1, 5));
        assert!(seen.first_sight(2, 5), "another origin's event with the same time is another event");
        for t in 6..6 + SEEN_WINDOW as u64 {
            assert!(seen.first_sight(1, t));
        }
        assert!(!seen.first_sight(1, 5), "fell out of the window: treated as already handled");
        assert!(!seen.first_sight(1, 100));
        assert!(seen.first_sight(1, 10_000));
    }

    #[test]
    fn the_lamport_clock_never_goes_back() {
        let mut clock = LamportClock::default();
        assert_eq!(clock.tick(), 1);
        clock.witness(10);
        assert_eq!(clock.tick(), 11);
        clock.witness(3);
        assert_eq!(clock.tick(), 12);
    }

    #[test]
    fn a_pending_event_completes_when_every_living_member_acknowledged() {
        let mut pending = Pending {
            cre: Cre { origin: 1, ltime: 1, ack: true, kind: CreKind::Leave },
            resend_at: None,
            expected: BTreeSet::from([2, 3, 4]),
            acked: BTreeSet::from([2]),
            answers: Vec::new(),
            deadline: 100,
            query: false,
        };
        assert!(!pending.complete(|_| true));
        pending.acked.insert(3);
        assert!(!pending.complete(|_| true));
        assert!(pending.complete(|id| id != 4), "a member that died meanwhile is not waited for");
    }
}
