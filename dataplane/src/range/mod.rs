//! Layer 6, ranges: the store of hosted replicas, the descriptor table and the meta range, the
//! sans-IO planner that turns descriptors, replica statistics and the member view into
//! decisions (moves, splits, merges, leadership transfers), and the executor that carries them
//! out through raft. Placement is decided here and nowhere else.

pub mod addressing;
mod admin;
pub mod executor;
pub mod gate;
mod leader;
pub mod leadership;
pub mod members;
mod merge;
mod meta;
pub mod placement;
pub mod planner;
mod service;
pub mod sim;
pub mod stats;
pub mod store;
pub mod table;

pub use executor::{DecommissionError, Ranges};

/// Range id of the meta range, which holds every range's descriptor.
pub const META_RANGE_ID: u64 = 1;
