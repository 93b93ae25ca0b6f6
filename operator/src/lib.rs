//! The Pleiades operator: reconciles `Constellation` resources into running constellations.

pub mod certificates;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod failover;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod probe;
pub mod scope;
pub mod tls;
pub mod topology;
