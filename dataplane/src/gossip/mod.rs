//! Constellation gossip (SWIM with Lifeguard, Vivaldi coordinates, clock offsets): sans-IO cores
//! driven by the node's tokio shell.

pub mod clock_offsets;
pub mod codec;
pub mod epidemic;
pub mod events;
pub mod rate;
pub mod report;
pub mod sim;
pub mod swim;
pub mod vivaldi;
