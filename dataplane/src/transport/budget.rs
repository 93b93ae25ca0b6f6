//! Memory for received bytes not yet handled (and answers not yet sent), reserved before they
//! are read — never the size a frame header claims — from the caller's budget and the node's.
//! A stream that finds a budget spent stops reading; QUIC flow control then stops its sender,
//! so a flood costs the budget and no more. The caller's budget is per identity, shared by all
//! its connections, so one user or node (or a bug in one) cannot spend what the others need;
//! a part of the node's is kept for identities that hold little, so neither can several.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

use super::peer::Peer;

/// Which budget a reservation had to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Peer,
    Node,
}

impl Budget {
    pub fn label(self) -> &'static str {
        match self {
            Budget::Peer => "peer_buffer",
            Budget::Node => "node_buffer",
        }
    }
}

/// Whose budget a connection spends: its identity, or on an `--insecure` node (no identities)
/// its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerKey {
    Identity(Peer),
    Address(IpAddr),
}

impl PeerKey {
    pub fn of(peer: &Peer, address: IpAddr) -> Self {
        match peer {
            Peer::Insecure => PeerKey::Address(address),
            peer => PeerKey::Identity(peer.clone()),
        }
    }
}

/// One identity's budget, shared by its connections.
pub struct PeerBudget {
    semaphore: Semaphore,
    capacity: usize,
}

impl PeerBudget {
    fn new(capacity: usize) -> Self {
        PeerBudget { semaphore: Semaphore::new(capacity), capacity }
    }

    /// Bytes the peer holds now, over all its streams.
    fn held(&self) -> usize {
        self.capacity.saturating_sub(self.semaphore.available_permits())
    }
}

/// One budget per peer with connections open; a peer's budget goes when its last connection does.
pub struct PeerBudgets {
    per_peer: usize,
    budgets: Mutex<HashMap<PeerKey, Weak<PeerBudget>>>,
}

impl PeerBudgets {
    pub fn new(per_peer: usize) -> Self {
        PeerBudgets { per_peer, budgets: Mutex::default() }
    }

    /// The budget `key` shares among its connections.
    pub fn of(&self, key: PeerKey) -> Arc<PeerBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(budget) = budgets.get(&key).and_then(Weak::upgrade) {
            return budget;
        }
        // Connections are bounded, so peers are; forget those whose connections all closed.
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = Arc::new(PeerBudget::new(self.per_peer));
        budgets.insert(key, Arc::downgrade(&budget));
        budget
    }
}

/// A peer holding at most this much may draw on the node's reserve.
const SMALL_HOLDER: usize = 1 << 20;

/// The node's budget. A quarter of it is kept for peers that hold little, so that when several
/// identities flood at once and spend the rest, everyone else's small requests still get read
/// instead of queueing behind the flood until its frames time out.
pub struct NodeBudget {
    main: Semaphore,
    reserve: Semaphore,
}

impl NodeBudget {
    pub fn new(total: usize) -> Self {
        let reserve = total / 4;
        NodeBudget { main: Semaphore::new(total - reserve), reserve: Semaphore::new(reserve) }
    }
}

/// The bytes one stream holds against its peer's and the node's budgets; given back as the
/// stream consumes them and in full when it ends.
pub struct Reservation {
    peer: Arc<PeerBudget>,
    node: Arc<NodeBudget>,
    held: usize,
    /// The part of `held` drawn from the node's reserve, given back there first.
    from_reserve: usize,
    /// The node's reserved bytes, for `pleiades_wire_buffered_bytes`.
    gauge: Gauge,
}

impl Reservation {
    pub fn new(peer: Arc<PeerBudget>, node: Arc<NodeBudget>, gauge: Gauge) -> Self {
        Reservation { peer, node, held: 0, from_reserve: 0, gauge }
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Grows the reservation to `bytes`, waiting while either budget is spent; `waited` hears of
    /// each wait. Cancel-safe: a dropped call holds nothing it did not finish reserving.
    pub async fn grow_to(&mut self, bytes: usize, mut waited: impl FnMut(Budget)) {
        let Some(more) = bytes.checked_sub(self.held).filter(|more| *more > 0) else { return };
        // Callers read at most a bounded chunk at a time, far below u32::MAX.
        let more_u32 = u32::try_from(more).unwrap_or(u32::MAX);
        let peer = match self.peer.semaphore.try_acquire_many(more_u32) {
            Ok(permit) => permit,
            Err(_) => {
                waited(Budget::Peer);
                match self.peer.semaphore.acquire_many(more_u32).await {
                    Ok(permit) => permit,
                    Err(_) => return, // never closed
                }
            }
        };
        let small = self.peer.held() <= SMALL_HOLDER;
        let (node, from_reserve) = match self.node.main.try_acquire_many(more_u32) {
            Ok(permit) => (permit, false),
            Err(_) => match self.node.reserve.try_acquire_many(more_u32) {
                Ok(permit) if small => (permit, true),
                _ => {
                    waited(Budget::Node);
                    match self.node.main.acquire_many(more_u32).await {
                        Ok(permit) => (permit, false),
                        Err(_) => return,
                    }
                }
            },
        };
        peer.forget();
        node.forget();
        let more = more_u32 as usize;
        self.held += more;
        if from_reserve {
            self.from_reserve += more;
        }
        self.gauge.inc_by(more as i64);
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(freed) = self.held.checked_sub(bytes).filter(|freed| *freed > 0) {
            let to_reserve = freed.min(self.from_reserve);
            self.peer.semaphore.add_permits(freed);
            self.node.reserve.add_permits(to_reserve);
            self.node.main.add_permits(freed - to_reserve);
            self.from_reserve -= to_reserve;
            self.held = bytes;
            self.gauge.dec_by(freed as i64);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer(capacity: usize) -> Arc<PeerBudget> {
        Arc::new(PeerBudget::new(capacity))
    }

    fn available(node: &NodeBudget) -> (usize, usize) {
        (node.main.available_permits(), node.reserve.available_permits())
    }

    #[tokio::test]
    async fn a_reservation_takes_from_both_budgets_and_gives_back_on_drop() {
        let (alice, node) = (peer(100), Arc::new(NodeBudget::new(200)));
        let gauge = Gauge::default();
        let mut reservation = Reservation::new(alice.clone(), node.clone(), gauge.clone());
        reservation.grow_to(60, |_| panic!("no wait expected")).await;
        assert_eq!((alice.held(), available(&node), gauge.get()), (60, (90, 50), 60));
        reservation.shrink_to(10);
        assert_eq!((alice.held(), available(&node), gauge.get()), (10, (140, 50), 10));
        drop(reservation);
        assert_eq!((alice.held(), available(&node), gauge.get()), (0, (150, 50), 0));
    }

    #[tokio::test]
    async fn when_big_holders_spend_the_node_budget_small_ones_draw_on_the_reserve() {
        let node = Arc::new(NodeBudget::new(8 << 20)); // 6 MiB main, 2 MiB reserve
        let (flood, other_flood) = (peer(4 << 20), peer(4 << 20));
        let mut first = Reservation::new(flood.clone(), node.clone(), Gauge::default());
        first.grow_to(4 << 20, |_| {}).await;
        let mut second = Reservation::new(other_flood.clone(), node.clone(), Gauge::default());
        second.grow_to(2 << 20, |_| {}).await;
        // The main budget is spent; a big holder waits for it, and does not touch the reserve.
        let mut waits = Vec::new();
        let blocked = tokio::time::timeout(Duration::from_millis(50), second.grow_to(3 << 20, |b| waits.push(b))).await;
        assert!(blocked.is_err());
        assert_eq!((waits, available(&node)), (vec![Budget::Node], (0, 2 << 20)));
        // Someone holding little is still served, from the reserve, which it gives back first.
        let mut small = Reservation::new(peer(4 << 20), node.clone(), Gauge::default());
        small.grow_to(16 << 10, |_| panic!("a small holder must not wait")).await;
        assert_eq!(available(&node), (0, (2 << 20) - (16 << 10)));
        drop(small);
        assert_eq!(available(&node), (0, 2 << 20));
        drop(first);
        second.grow_to(3 << 20, |_| {}).await;
    }

    #[tokio::test]
    async fn a_cancelled_wait_for_the_node_gives_back_what_the_peer_lent() {
        let (alice, node) = (peer(100), Arc::new(NodeBudget::new(8)));
        let mut reservation = Reservation::new(alice.clone(), node, Gauge::default());
        let blocked = tokio::time::timeout(Duration::from_millis(20), reservation.grow_to(10, |_| {})).await;
        assert!(blocked.is_err());
        assert_eq!(alice.held(), 0);
    }

    #[test]
    fn connections_of_one_identity_share_a_budget_that_goes_with_the_last_of_them() {
        let budgets = PeerBudgets::new(10);
        let alice = PeerKey::of(&Peer::User("alice".into()), [127, 0, 0, 2].into());
        let first = budgets.of(alice.clone());
        let second = budgets.of(PeerKey::of(&Peer::User("alice".into()), [127, 0, 0, 3].into()));
        assert!(Arc::ptr_eq(&first, &second), "one identity, one budget, whatever the address");
        let insecure = budgets.of(PeerKey::of(&Peer::Insecure, [127, 0, 0, 2].into()));
        assert!(!Arc::ptr_eq(&first, &insecure));
        drop((first, second));
        let _other = budgets.of(PeerKey::of(&Peer::Node(2), [127, 0, 0, 4].into()));
        assert_eq!(budgets.budgets.lock().unwrap().len(), 2, "alice's budget went with her connections");
    }
}
