//! Outgoing connections from this node to the other nodes, one per address, shared by raft,
//! gossip and the node's own calls.

use std::collections::HashMap;
use std::time::Duration;

use pleiades_proto::wire::Service;
use tokio::sync::Mutex;

use super::peer::{authenticate, Peer};
use super::stream::{dial, PwpStream};

/// Idle streams kept per node and service. openraft asks for a new network client for every
/// ReadIndex round and every vote; a stream per call costs its setup, a stop, a reset and their
/// acknowledgements (measured: 8,390 streams opened and reset in 12 s of linearizable reads at
/// concurrency 1, about 6 datagrams per raft call instead of 2).
const IDLE_STREAMS_PER_PEER: usize = 32;

/// A stream bound to a service on a connection to a node.
pub struct OpenStream {
    pub stream: PwpStream,
    pub connection: quinn::Connection,
}

/// Outgoing QUIC connections to the other nodes, one per address, reconnected when lost.
pub struct Peers {
    endpoint: quinn::Endpoint,
    /// Trusts the constellation's CA and presents this node's certificate; replaced when the
    /// certificate files are reloaded.
    client_config: std::sync::RwLock<quinn::ClientConfig>,
    connect_timeout: Duration,
    constellation: String,
    connections: Mutex<HashMap<String, quinn::Connection>>,
    /// Streams left open by calls that went well, by address and service.
    idle: std::sync::Mutex<HashMap<String, HashMap<Service, Vec<OpenStream>>>>,
}

impl Peers {
    pub fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        connect_timeout: Duration,
        constellation: String,
    ) -> Self {
        Peers {
            endpoint,
            client_config: std::sync::RwLock::new(client_config),
            connect_timeout,
            constellation,
            connections: Mutex::new(HashMap::new()),
            idle: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// New connections use `config` (open ones carry on with theirs).
    pub fn set_client_config(&self, config: quinn::ClientConfig) {
        *self.client_config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub async fn connection(&self, addr: &str) -> Result<quinn::Connection, String> {
        if let Some(connection) = self.connections.lock().await.get(addr) {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let config = self.client_config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let connection =
            dial(&self.endpoint, config, addr, None, self.connect_timeout).await.map_err(|e| e.to_string())?;
        // Whoever answers at a member's address must be a node of this constellation: a user's
        // certificate signed by the same CA must not pass for one.
        match authenticate(&connection, &self.constellation, false) {
            Ok(Peer::Node(_)) => {}
            Ok(other) => {
                connection.close(quinn::VarInt::from_u32(0), b"not a node");
                return Err(format!("{addr} answered as {other}, not as a node"));
            }
            Err(e) => {
                connection.close(quinn::VarInt::from_u32(0), b"not a node");
                return Err(format!("{addr} is no node of this constellation: {e}"));
            }
        }
        self.connections.lock().await.insert(addr.to_string(), connection.clone());
        Ok(connection)
    }

    /// Drops a cached connection that failed, so the next call dials again: a peer that
    /// restarted is reached at once instead of after the dead connection's idle timeout.
    pub async fn forget(&self, addr: &str, failed: &quinn::Connection) {
        let mut connections = self.connections.lock().await;
        if connections.get(addr).is_some_and(|c| c.stable_id() == failed.stable_id()) {
            connections.remove(addr);
        }
        failed.close(quinn::VarInt::from_u32(0), b"request failed");
    }

    /// A stream to `addr` bound to `service` that an earlier call left open, if one is still
    /// usable; the most recently used first.
    pub fn idle_stream(&self, addr: &str, service: Service) -> Option<OpenStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.get_mut(addr)?.get_mut(&service)?;
        std::iter::from_fn(|| streams.pop())
            .find(|open| open.stream.is_fresh() && open.connection.close_reason().is_none())
    }

    /// Keeps a stream whose call went well for the next call to the same node and service.
    pub fn keep_idle(&self, addr: &str, service: Service, open: OpenStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: the address is copied once per peer, not once per call.
        if !idle.contains_key(addr) {
            idle.insert(addr.to_string(), HashMap::new());
        }
        let Some(by_service) = idle.get_mut(addr) else { return };
        let streams = by_service.entry(service).or_default();
        if streams.len() < IDLE_STREAMS_PER_PEER {
            streams.push(open);
        }
    }
}
