//! The system service (PWP 0x05): node info and health.

use std::sync::Arc;
use std::time::Instant;

use pleiades_proto::v1::{ComponentHealth, HealthResponse, HealthStatus, NodeInfoResponse};

use crate::clock::{Hlc, Timestamp};
use crate::observe::Health;

pub struct SystemService {
    pub node_id: u64,
    pub listen: String,
    pub http: String,
    pub started: Instant,
    pub hlc: Arc<Hlc>,
    pub health: Arc<Health>,
    pub services: Vec<u32>,
}

impl SystemService {
    pub fn node_info(&self) -> NodeInfoResponse {
        NodeInfoResponse {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: pleiades_proto::wire::PROTOCOL_VERSION.into(),
            listen_address: self.listen.clone(),
            http_address: self.http.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            // Reading the clock without ticking it: info must not consume timestamps.
            now: Some(Timestamp::max(self.hlc.last(), Timestamp::new(self.hlc.physical_now(), 0)).into()),
            services: self.services.clone(),
        }
    }

    pub fn health(&self) -> HealthResponse {
        let (status, message) = if self.health.is_ready() {
            (HealthStatus::Serving, String::new())
        } else {
            (HealthStatus::NotServing, self.health.not_ready_reason())
        };
        HealthResponse {
            status: status.into(),
            components: vec![ComponentHealth { name: "node".into(), status: status.into(), message }],
        }
    }
}
