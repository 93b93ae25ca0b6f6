//! Wall-clock offsets to the other members, measured on direct SWIM probes, and the verdict
//! CockroachDB's remote clock monitor reaches: a node whose clock is beyond the tolerated offset
//! from a majority of the members it measured must not serve, or it would stamp versions in the
//! future (or the past) and lead ranges whose reads trust its clock.
//!
//! Sans-IO: the core hands in each measurement and asks for the verdict with its own time.

use std::collections::HashMap;
use std::time::Duration;

use super::swim::{Millis, NodeId};

/// How long a measurement counts: members are probed every few seconds; one not measured for
/// this long (dead, or answering only through relays) is left out of the verdict.
pub const MEASUREMENT_MAX_AGE: Millis = 15_000;

/// One member's clock relative to this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// The member's wall clock minus this node's, in nanoseconds: negative when this node is
    /// ahead.
    pub nanos: i64,
    /// Half the probe's round trip: the member read its clock somewhere within it.
    pub uncertainty_nanos: u64,
    /// When it was measured, on the core's clock.
    pub at: Millis,
}

impl Offset {
    /// Whether this measurement shows the clocks apart by more than `tolerated` even at the
    /// most favourable point of its uncertainty.
    fn beyond(&self, tolerated: Duration) -> bool {
        self.nanos.unsigned_abs().saturating_sub(self.uncertainty_nanos) > tolerated.as_nanos() as u64
    }
}

/// What the measurements say about this node's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockVerdict {
    /// No member measured recently (a constellation of one, or all others silent).
    Unmeasured,
    /// Within the tolerated offset of at least half of the members measured.
    Healthy { measured: usize },
    /// Beyond it from a majority of them.
    OutOfBounds {
        measured: usize,
        /// The members this node's clock is too far from.
        disagreeing: usize,
        /// The median offset of the disagreeing members (negative: this node is ahead).
        median_offset_nanos: i64,
    },
}

impl ClockVerdict {
    /// Why the node must not serve, or `None` when it may.
    pub fn fence_reason(&self, tolerated: Duration) -> Option<String> {
        match self {
            ClockVerdict::OutOfBounds { measured, disagreeing, median_offset_nanos } => {
                let offset = Duration::from_nanos(median_offset_nanos.unsigned_abs());
                let direction = if *median_offset_nanos < 0 { "ahead of" } else { "behind" };
                Some(format!(
                    "this node's clock is {offset:?} {direction} {disagreeing} of the {measured} members it measured, \
                     beyond the tolerated {tolerated:?} (80 % of clock.max-offset-ms)"
                ))
            }
            _ => None,
        }
    }
}

/// The latest offset measured to each member.
#[derive(Debug, Default)]
pub struct ClockOffsets {
    latest: HashMap<NodeId, Offset>,
}

impl ClockOffsets {
    /// Records a direct probe's answer: the member's wall clock when it answered, this node's
    /// when the answer arrived, and the round trip.
    pub fn observe(
        &mut self,
        member: NodeId,
        remote_wall_nanos: u64,
        local_wall_nanos: u64,
        rtt: Duration,
        at: Millis,
    ) {
        let half = (rtt.as_nanos() / 2).min(u128::from(u64::MAX)) as u64;
        // The member read its clock about half a round trip before the answer arrived.
        let local_then = i128::from(local_wall_nanos) - i128::from(half);
        let nanos =
            (i128::from(remote_wall_nanos) - local_then).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.latest.insert(member, Offset { nanos, uncertainty_nanos: half, at });
    }

    /// The recent measurements, by member.
    pub fn recent(&self, now: Millis) -> impl Iterator<Item = (NodeId, Offset)> + '_ {
        self.latest
            .iter()
            .filter(move |(_, offset)| now.saturating_sub(offset.at) <= MEASUREMENT_MAX_AGE)
            .map(|(member, offset)| (*member, *offset))
    }

    /// The verdict on this node's clock against the members measured recently.
    pub fn verdict(&self, now: Millis, tolerated: Duration) -> ClockVerdict {
        let recent: Vec<Offset> = self.recent(now).map(|(_, offset)| offset).collect();
        if recent.is_empty() {
            return ClockVerdict::Unmeasured;
        }
        let mut disagreeing: Vec<i64> =
            recent.iter().filter(|offset| offset.beyond(tolerated)).map(|offset| offset.nanos).collect();
        if disagreeing.len() * 2 <= recent.len() {
            return ClockVerdict::Healthy { measured: recent.len() };
        }
        disagreeing.sort_unstable();
        ClockVerdict::OutOfBounds {
            measured: recent.len(),
            disagreeing: disagreeing.len(),
            median_offset_nanos: disagreeing[disagreeing.len() / 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const TOLERATED: Duration = Duration::from_millis(400);
    const RTT: Duration = Duration::from_micros(400);

    fn offsets(members: &[(NodeId, i64)]) -> ClockOffsets {
        let mut offsets = ClockOffsets::default();
        let local = 1_000 * SECOND;
        for (member, skew) in members {
            // The member answers half a round trip before its answer arrives here.
            let remote = (local as i64 - (RTT.as_nanos() / 2) as i64 + skew) as u64;
            offsets.observe(*member, remote, local, RTT, 0);
        }
        offsets
    }

    #[test]
    fn the_offset_takes_half_the_round_trip_into_account() {
        let measured = offsets(&[(2, 0)]).recent(0).next().unwrap().1;
        assert_eq!(measured.nanos, 0);
        assert_eq!(measured.uncertainty_nanos, 200_000);
    }

    #[test]
    fn a_node_two_seconds_ahead_of_both_peers_is_out_of_bounds() {
        let verdict = offsets(&[(2, -2 * SECOND as i64), (3, -2 * SECOND as i64)]).verdict(0, TOLERATED);
        assert_eq!(
            verdict,
            ClockVerdict::OutOfBounds { measured: 2, disagreeing: 2, median_offset_nanos: -2 * SECOND as i64 }
        );
        let reason = verdict.fence_reason(TOLERATED).unwrap();
        assert!(reason.contains("2s ahead of 2 of the 2 members"), "{reason}");
    }

    #[test]
    fn the_peers_of_a_skewed_node_see_only_a_minority_disagree() {
        // Node 1's view when node 3 is 2 s ahead and node 2 is in step.
        let verdict = offsets(&[(2, 1_000), (3, 2 * SECOND as i64)]).verdict(0, TOLERATED);
        assert_eq!(verdict, ClockVerdict::Healthy { measured: 2 });
        assert_eq!(verdict.fence_reason(TOLERATED), None);
    }

    #[test]
    fn skew_within_the_tolerated_offset_is_healthy() {
        let verdict = offsets(&[(2, -350_000_000), (3, 300_000_000)]).verdict(0, TOLERATED);
        assert_eq!(verdict, ClockVerdict::Healthy { measured: 2 });
    }

    #[test]
    fn an_uncertain_measurement_does_not_condemn() {
        // 500 ms apart, but the probe took 300 ms: the clocks may be only 350 ms apart.
        let mut offsets = ClockOffsets::default();
        offsets.observe(2, 10 * SECOND + 500_000_000, 10 * SECOND + 150_000_000, Duration::from_millis(300), 0);
        assert_eq!(offsets.verdict(0, TOLERATED), ClockVerdict::Healthy { measured: 1 });
    }

    #[test]
    fn old_measurements_are_left_out() {
        let offsets = offsets(&[(2, -2 * SECOND as i64)]);
        assert!(matches!(offsets.verdict(MEASUREMENT_MAX_AGE, TOLERATED), ClockVerdict::OutOfBounds { .. }));
        assert_eq!(offsets.verdict(MEASUREMENT_MAX_AGE + 1, TOLERATED), ClockVerdict::Unmeasured);
    }

    #[test]
    fn absurd_clocks_do_not_overflow() {
        let mut offsets = ClockOffsets::default();
        offsets.observe(2, u64::MAX, 0, Duration::MAX, 0);
        offsets.observe(3, 0, u64::MAX, Duration::ZERO, 0);
        // The first round trip is so long that it proves nothing; the second condemns alone.
        assert_eq!(offsets.verdict(0, TOLERATED), ClockVerdict::Healthy { measured: 2 });
    }
}
