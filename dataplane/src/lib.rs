//! The Pleiades node engine. Layers, bottom up: clock, storage, transport, raft, node, observe;
//! the client, CLI, local constellation and bench on top. Each layer only talks to the ones below it.

pub mod admin;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod gossip;
pub mod local;
pub mod node;
pub mod observe;
pub mod raft;
pub mod range;
pub mod realtime;
pub mod storage;
pub mod survey;
pub mod transport;
