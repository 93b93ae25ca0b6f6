//! Per-peer rate limit on inbound gossip (sans-IO: the caller passes the time). Every member
//! shares one inbound queue; without a limit, one peer flooding it crowds out the probes and
//! acks of all the others, and healthy members are then suspected.

use std::collections::HashMap;
use std::hash::Hash;

use super::swim::Millis;

/// Token buckets, one per peer: `rate` messages a second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct PeerRateLimit<K> {
    rate: f64,
    burst: f64,
    /// Peers tracked at most; idle ones (full buckets) are forgotten past it.
    max_peers: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Millis,
}

impl<K: Hash + Eq + Clone> PeerRateLimit<K> {
    pub fn new(rate_per_second: u32, burst: u32, max_peers: usize) -> Self {
        PeerRateLimit {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            max_peers: max_peers.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Whether one more message from `peer` at `now` is within its rate.
    pub fn allow(&mut self, peer: &K, now: Millis) -> bool {
        if !self.buckets.contains_key(peer) && self.buckets.len() >= self.max_peers {
            self.forget_idle(now);
            if self.buckets.len() >= self.max_peers {
                // Every tracked peer is busy: a new one waits rather than growing the table.
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(peer.clone()).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_sub(bucket.updated) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops peers whose buckets have refilled: they would start full anyway.
    fn forget_idle(&mut self, now: Millis) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_sub(bucket.updated) as f64 / 1000.0;
            bucket.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut limit = PeerRateLimit::new(10, 5, 16);
        let passed = (0..20).filter(|_| limit.allow(&1u64, 0)).count();
        assert_eq!(passed, 5, "the burst");
        assert!(!limit.allow(&1, 50), "half a token after 50 ms");
        assert!(limit.allow(&1, 100), "one token after 100 ms at 10/s");
        let in_a_second = (1..=1000).filter(|ms| limit.allow(&1, 100 + ms)).count();
        assert_eq!(in_a_second, 10);
    }

    #[test]
    fn one_flooding_peer_does_not_spend_another_peers_budget() {
        let mut limit = PeerRateLimit::new(10, 5, 16);
        for _ in 0..1000 {
            limit.allow(&1u64, 0);
        }
        assert!(limit.allow(&2, 0));
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_idle_peers_first() {
        let mut limit = PeerRateLimit::new(10, 2, 2);
        assert!(limit.allow(&1u64, 0));
        assert!(limit.allow(&2, 0));
        assert!(!limit.allow(&3, 0), "both tracked peers are mid-burst");
        // After a second both buckets are full again: they are forgotten, 3 gets a place.
        assert!(limit.allow(&3, 1_000));
        assert!(limit.buckets.len() <= 2);
    }
}
