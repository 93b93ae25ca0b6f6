//! Layer 6, ranges: the descriptor table and the meta range, the sans-IO planner that turns
//! descriptors, replica statistics and the member view into decisions (moves, splits, merges,
//! leadership transfers), and the executor that carries them out through raft.

pub mod placement;
pub mod planner;
