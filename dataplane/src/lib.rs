//! The Pleiades node engine. Layers, bottom up: clock, storage, transport, node, observe, client.

pub mod clock;
pub mod storage;
