//! The Pleiades node engine. Layers, bottom up: clock, storage, transport, node, observe; the
//! client and CLI on top. Each layer only talks to the ones below it.

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod node;
pub mod observe;
pub mod storage;
pub mod transport;
