//! The write gate of a range's replica: admits new writes, counts those admitted and not yet
//! answered, and lets a leadership hand-over (a planned transfer, or a node draining) hold new
//! writes back and wait until the admitted ones are in the log. A follower picked to lead must
//! have the whole log; a write appended after it was picked would be cut from the old leader's
//! log and answered only once the new leader reached it — never, if the old one is leaving.
//!
//! Admission counts first and checks second, and holding closes first and counts second (all
//! sequentially consistent), so a write either sees the gate closed or is seen by the holder.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub struct WriteGate {
    /// Hand-overs holding writes back now (a drain and a planned transfer may overlap).
    holders: AtomicUsize,
    /// Writes admitted and not yet answered.
    in_flight: AtomicUsize,
}

/// An admitted write; answered when dropped.
pub struct Admitted<'a>(&'a WriteGate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

/// Writes held back while this lives, however its holder ends (a holder that went away must
/// not leave the range refusing writes for good).
pub struct Held(Arc<WriteGate>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, SeqCst);
    }
}

impl WriteGate {
    /// Admits a write, unless a hand-over holds writes back.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        self.in_flight.fetch_add(1, SeqCst);
        let admitted = Admitted(self);
        (self.holders.load(SeqCst) == 0).then_some(admitted)
    }

    /// Holds new writes back until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>) -> Held {
        self.holders.fetch_add(1, SeqCst);
        Held(self.clone())
    }

    /// Waits until every admitted write is answered, or until `deadline`; whether they are.
    pub async fn settled(&self, deadline: Instant) -> bool {
        while self.in_flight.load(SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_gate_admits_nothing_and_waits_for_what_it_admitted() {
        let gate = Arc::new(WriteGate::default());
        let admitted = gate.admit().expect("open");
        let held = gate.hold();
        let again = gate.hold();
        assert!(gate.admit().is_none(), "held: refused");
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!gate.settled(soon).await, "one write still unanswered");
        drop(admitted);
        assert!(gate.settled(Instant::now()).await);
        drop(held);
        assert!(gate.admit().is_none(), "still held by the other hand-over");
        drop(again);
        assert!(gate.admit().is_some(), "open again");
    }
}
