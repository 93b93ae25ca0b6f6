//! Memory for received bytes not yet handled (and answers not yet sent), reserved before they
//! are read — never the size a frame header claims — from the caller's budget and the node's.
//! A stream that finds a budget spent stops reading; QUIC flow control then stops its sender,
//! so a flood costs the budget and no more. The caller's budget is per identity, shared by all
//! its connections, so one user or node (or a bug in one) cannot spend what the others need.

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

/// One budget per peer with connections open; a peer's budget goes when its last connection does.
pub struct PeerBudgets {
    per_peer: usize,
    budgets: Mutex<HashMap<PeerKey, Weak<Semaphore>>>,
}

impl PeerBudgets {
    pub fn new(per_peer: usize) -> Self {
        PeerBudgets { per_peer, budgets: Mutex::default() }
    }

    /// The budget `key` shares among its connections.
    pub fn of(&self, key: PeerKey) -> Arc<Semaphore> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(budget) = budgets.get(&key).and_then(Weak::upgrade) {
            return budget;
        }
        // Connections are bounded, so peers are; forget those whose connections all closed.
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = Arc::new(Semaphore::new(self.per_peer));
        budgets.insert(key, Arc::downgrade(&budget));
        budget
    }
}

/// The bytes one stream holds against its peer's and the node's budgets; given back as the
/// stream consumes them and in full when it ends.
pub struct Reservation {
    peer: Arc<Semaphore>,
    node: Arc<Semaphore>,
    held: usize,
    /// The node's reserved bytes, for `pleiades_wire_buffered_bytes`.
    gauge: Gauge,
}

impl Reservation {
    pub fn new(peer: Arc<Semaphore>, node: Arc<Semaphore>, gauge: Gauge) -> Self {
        Reservation { peer, node, held: 0, gauge }
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
        let peer = match self.peer.try_acquire_many(more_u32) {
            Ok(permit) => permit,
            Err(_) => {
                waited(Budget::Peer);
                match self.peer.acquire_many(more_u32).await {
                    Ok(permit) => permit,
                    Err(_) => return, // never closed
                }
            }
        };
        let node = match self.node.try_acquire_many(more_u32) {
            Ok(permit) => permit,
            Err(_) => {
                waited(Budget::Node);
                match self.node.acquire_many(more_u32).await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            }
        };
        peer.forget();
        node.forget();
        self.held += more_u32 as usize;
        self.gauge.inc_by(more_u32 as i64);
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(freed) = self.held.checked_sub(bytes).filter(|freed| *freed > 0) {
            self.peer.add_permits(freed);
            self.node.add_permits(freed);
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

    fn budgets(peer: usize, node: usize) -> (Arc<Semaphore>, Arc<Semaphore>) {
        (Arc::new(Semaphore::new(peer)), Arc::new(Semaphore::new(node)))
    }

    #[tokio::test]
    async fn a_reservation_takes_from_both_budgets_and_gives_back_on_drop() {
        let (peer, node) = budgets(100, 150);
        let gauge = Gauge::default();
        let mut reservation = Reservation::new(peer.clone(), node.clone(), gauge.clone());
        reservation.grow_to(60, |_| panic!("no wait expected")).await;
        assert_eq!((peer.available_permits(), node.available_permits(), gauge.get()), (40, 90, 60));
        reservation.shrink_to(10);
        assert_eq!((peer.available_permits(), node.available_permits(), gauge.get()), (90, 140, 10));
        drop(reservation);
        assert_eq!((peer.available_permits(), node.available_permits(), gauge.get()), (100, 150, 0));
    }

    #[tokio::test]
    async fn a_spent_node_budget_blocks_other_peers_until_bytes_are_given_back() {
        let node = Arc::new(Semaphore::new(100));
        let gauge = Gauge::default();
        let mut first = Reservation::new(Arc::new(Semaphore::new(100)), node.clone(), gauge.clone());
        first.grow_to(100, |_| {}).await;
        let mut second = Reservation::new(Arc::new(Semaphore::new(100)), node.clone(), gauge.clone());
        let mut waits = Vec::new();
        let blocked = tokio::time::timeout(Duration::from_millis(50), second.grow_to(10, |b| waits.push(b))).await;
        assert!(blocked.is_err(), "the node budget is spent");
        assert_eq!(waits, [Budget::Node]);
        assert_eq!(second.held(), 0, "a cancelled wait holds nothing");
        first.shrink_to(50);
        second.grow_to(10, |_| {}).await;
        assert_eq!((second.held(), node.available_permits()), (10, 40));
    }

    #[tokio::test]
    async fn a_cancelled_wait_for_the_node_gives_back_what_the_peer_lent() {
        let (peer, node) = budgets(100, 5);
        let mut reservation = Reservation::new(peer.clone(), node, Gauge::default());
        let blocked = tokio::time::timeout(Duration::from_millis(20), reservation.grow_to(10, |_| {})).await;
        assert!(blocked.is_err());
        assert_eq!(peer.available_permits(), 100);
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
