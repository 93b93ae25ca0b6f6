//! The dissemination model behind Serf's convergence simulator, for constellations too large to
//! simulate node by node here (every member table is N entries, so N nodes cost N² memory): each
//! gossip interval, every node still retransmitting an update sends it to `gossip_nodes`
//! random members, each send spending one of its `retransmit_mult * ceil(log10(n + 1))`
//! transmissions, each lost with probability `loss`. Probe piggybacking, which only speeds
//! things up, is left out, as in Serf's model. The full simulator checks the model at the sizes
//! it can run.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::swim::{Millis, SwimConfig};

/// (ms since the update was raised, fraction of nodes that have it), one point per interval,
/// until 99.99 % have it, nobody retransmits any more, or `limit` passes.
pub fn spread(nodes: usize, config: &SwimConfig, loss: f64, seed: u64, limit: Millis) -> Vec<(Millis, f64)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let transmissions = config.retransmit_mult * ((nodes as f64 + 1.0).log10().ceil() as u32).max(1);
    let mut budget = vec![0u32; nodes];
    let mut informed = vec![false; nodes];
    budget[0] = transmissions;
    informed[0] = true;
    let mut count = 1usize;
    let mut curve = vec![(0, count as f64 / nodes as f64)];
    let mut now = 0;
    while now < limit && (count as f64) < 0.9999 * nodes as f64 {
        now += config.gossip_interval;
        let mut newly = Vec::new();
        for (node, left) in budget.iter_mut().enumerate() {
            for _ in 0..config.gossip_nodes {
                if *left == 0 {
                    break;
                }
                *left -= 1;
                let peer = (node + rng.random_range(1..nodes)) % nodes;
                if !informed[peer] && !rng.random_bool(loss) {
                    informed[peer] = true;
                    newly.push(peer);
                }
            }
        }
        count += newly.len();
        for node in newly {
            budget[node] = transmissions;
        }
        curve.push((now, count as f64 / nodes as f64));
        if budget.iter().all(|b| *b == 0) {
            break;
        }
    }
    curve
}

/// When 99.99 % of the nodes had the update, if they all got it.
pub fn time_to_converge(curve: &[(Millis, f64)]) -> Option<Millis> {
    curve.iter().find(|(_, fraction)| *fraction >= 0.9999).map(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_converges_in_a_few_seconds_and_slows_down_logarithmically() {
        let lan = SwimConfig::lan();
        let thousand = time_to_converge(&spread(1_000, &lan, 0.0, 1, 60_000)).expect("converges");
        let ten_thousand = time_to_converge(&spread(10_000, &lan, 0.0, 1, 60_000)).expect("converges");
        // Serf's simulator: about 2.2 s for 1,000 nodes at 200 ms and fanout 3.
        assert!((1_000..=3_000).contains(&thousand), "{thousand} ms");
        assert!(ten_thousand > thousand && ten_thousand <= 2 * thousand, "{ten_thousand} ms");
    }

    #[test]
    fn loss_slows_the_spread_but_it_still_converges() {
        let lan = SwimConfig::lan();
        let clean = time_to_converge(&spread(1_000, &lan, 0.0, 2, 60_000)).expect("converges");
        let lossy = time_to_converge(&spread(1_000, &lan, 0.2, 2, 60_000)).expect("converges with 20 % loss");
        assert!(lossy >= clean);
    }
}
