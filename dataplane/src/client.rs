//! The Rust client: [`Client`] is one QUIC connection to one node with PWP streams bound to a
//! service on it; [`cluster::Cluster`] routes requests across a constellation.

pub mod cluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pleiades_proto::payload_type;
use pleiades_proto::v1::{self, kv_request::Op, kv_response::Result as KvResult, KvRequest, KvResponse};
use pleiades_proto::wire::{ClientEvent, ClientSession, Frame, Service, ServiceTypeStatus, WireError};
use prost::Message;
use tokio::io::AsyncReadExt;

use crate::transport::tls::{self, QuicLimits, TlsError};

pub struct ClientConfig {
    pub addr: SocketAddr,
    /// Name the node's certificate must carry.
    pub server_name: String,
    /// CA certificate(s) to trust, PEM.
    pub ca_cert: PathBuf,
    /// Deadline of each request.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot send: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("cannot receive: {0}")]
    Read(String),
    #[error("the node sent bytes that are not valid PWP: {0}")]
    Wire(#[from] WireError),
    #[error("the node refused the {service:?} service: {status:?}")]
    Refused { service: Service, status: ServiceTypeStatus },
    #[error("the node reported a protocol error ({code}): {reason}")]
    Remote { code: u8, reason: String },
    #[error("the node closed the stream")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the node sent a malformed {message}: {detail}")]
    Decode { message: &'static str, detail: String },
    #[error("the node answered with payload type {0:#04x}, not the expected response")]
    UnexpectedPayload(u8),
    #[error("{code:?}: {message}")]
    Kv { code: v1::ErrorCode, message: String },
    #[error("outcome unknown: {0}")]
    Uncertain(String),
    #[error("gave up after {after:?}; last error: {last}")]
    Deadline { after: Duration, last: Box<ClientError> },
}

/// Dials `addr` (`host:port`, resolved now) on `endpoint`, verifying the certificate against the
/// host part, within `timeout`.
pub async fn dial(endpoint: &quinn::Endpoint, addr: &str, timeout: Duration) -> Result<quinn::Connection, ClientError> {
    let connect_error =
        |detail: String| ClientError::Connect { addr: ([0, 0, 0, 0], 0).into(), detail: format!("{addr}: {detail}") };
    let socket = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| connect_error(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| connect_error("resolves to no address".into()))?;
    let server_name = addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])).unwrap_or(addr);
    let connecting = endpoint.connect(socket, server_name).map_err(|e| connect_error(e.to_string()))?;
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
        .map_err(|e| connect_error(e.to_string()))
}

/// A connection to one node.
pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    timeout: Duration,
}

impl Client {
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let trusted = tls::load_certificates(&config.ca_cert)?;
        let limits = QuicLimits { max_streams: 64, idle_timeout: Duration::from_secs(30) };
        let connect_error = |detail: String| ClientError::Connect { addr: config.addr, detail };
        let bind: SocketAddr = if config.addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(|e| connect_error(format!("{e}")))?;
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_error(e.to_string()))?;
        endpoint.set_default_client_config(tls::client_config(&trusted, &limits)?);
        let connecting =
            endpoint.connect(config.addr, &config.server_name).map_err(|e| connect_error(e.to_string()))?;
        let connection = tokio::time::timeout(config.timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(config.timeout))?
            .map_err(|e| connect_error(e.to_string()))?;
        Ok(Client { endpoint, connection, timeout: config.timeout })
    }

    /// Opens a stream bound to `service`, pipelining the whole setup (with a version check).
    pub async fn open(&self, service: Service) -> Result<PwpStream, ClientError> {
        PwpStream::open(&self.connection, service, self.timeout).await
    }

    pub async fn system(&self) -> Result<SystemClient, ClientError> {
        Ok(SystemClient(self.open(Service::System).await?))
    }

    /// The QUIC connection itself (for datagrams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    pub async fn kv(&self) -> Result<KvClient, ClientError> {
        Ok(KvClient { stream: self.open(Service::Kv).await?, next_request_id: 1 })
    }

    pub async fn close(self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// A PWP stream bound to one service.
pub struct PwpStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbound: BytesMut,
    session: ClientSession,
    timeout: Duration,
    events: Vec<ClientEvent>,
}

impl PwpStream {
    /// Opens a stream on `connection` bound to `service`; `timeout` bounds each answer.
    pub async fn open(
        connection: &quinn::Connection,
        service: Service,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let (mut send, recv) = connection.open_bi().await?;
        let mut session = ClientSession::new();
        send.write_chunk(session.pipelined_setup(service, true).freeze()).await?;
        let mut stream = PwpStream { send, recv, inbound: BytesMut::new(), session, timeout, events: Vec::new() };
        match stream.next_event().await? {
            ClientEvent::Ready { .. } => Ok(stream),
            ClientEvent::Refused(status) => Err(ClientError::Refused { service, status }),
            other => Err(stream.unexpected(other)),
        }
    }

    /// Changes the deadline of the answers that follow.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_event()).await.map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn read_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if !self.events.is_empty() {
                return match self.events.remove(0) {
                    ClientEvent::ProtocolError { code, reason } => Err(ClientError::Remote { code, reason }),
                    ClientEvent::Closed => Err(ClientError::Closed),
                    event => Ok(event),
                };
            }
            self.inbound.reserve(16 * 1024);
            let n = self.recv.read_buf(&mut self.inbound).await.map_err(|e| ClientError::Read(e.to_string()))?;
            if n == 0 {
                self.session.receive_eof(&mut self.inbound, &mut self.events)?;
                if self.events.is_empty() {
                    return Err(ClientError::Closed);
                }
            } else {
                self.session.receive(&mut self.inbound, &mut self.events)?;
            }
        }
    }

    fn unexpected(&self, event: ClientEvent) -> ClientError {
        ClientError::Read(format!("unexpected answer {event:?}"))
    }

    /// Sends one message and waits for the next message back.
    pub async fn call(&mut self, payload_type: u8, payload: Bytes) -> Result<(u8, Bytes), ClientError> {
        let mut out = BytesMut::with_capacity(payload.len() + 16);
        Frame::Message { payload_type, payload }.encode(&mut out);
        self.send.write_chunk(out.freeze()).await?;
        loop {
            match self.next_event().await? {
                ClientEvent::Message { payload_type, payload } => return Ok((payload_type, payload)),
                ClientEvent::ServiceStatus(_) | ClientEvent::Heartbeat => continue,
                other => return Err(self.unexpected(other)),
            }
        }
    }

    pub async fn call_proto<Response: Message + Default>(
        &mut self,
        request_type: u8,
        request: &impl Message,
        response_type: u8,
        name: &'static str,
    ) -> Result<Response, ClientError> {
        let (kind, payload) = self.call(request_type, request.encode_to_vec().into()).await?;
        if kind != response_type {
            return Err(ClientError::UnexpectedPayload(kind));
        }
        Response::decode(payload).map_err(|e| ClientError::Decode { message: name, detail: e.to_string() })
    }

    /// One wire-level latency test (LATENCY_TEST_START → echo); returns the round-trip time.
    pub async fn latency_test(&mut self, id: u64) -> Result<Duration, ClientError> {
        let mut out = BytesMut::with_capacity(9);
        Frame::LatencyTestStart(id).encode(&mut out);
        let started = Instant::now();
        self.send.write_chunk(out.freeze()).await?;
        loop {
            match self.next_event().await? {
                ClientEvent::LatencyTestStart(echo) if echo == id => break,
                ClientEvent::Heartbeat => continue,
                other => return Err(self.unexpected(other)),
            }
        }
        let rtt = started.elapsed();
        let mut out = BytesMut::with_capacity(9);
        Frame::LatencyTestStop(id).encode(&mut out);
        self.send.write_chunk(out.freeze()).await?;
        loop {
            match self.next_event().await? {
                ClientEvent::LatencyTestStop(echo) if echo == id => return Ok(rtt),
                ClientEvent::Heartbeat => continue,
                other => return Err(self.unexpected(other)),
            }
        }
    }

    /// Sends CLOSE and waits for the node's CLOSE.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(1);
        Frame::Close.encode(&mut out);
        self.send.write_chunk(out.freeze()).await?;
        let _ = self.send.finish();
        match self.next_event().await {
            Err(ClientError::Closed) => Ok(()),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(e),
        }
    }
}

/// System service calls.
pub struct SystemClient(pub PwpStream);

impl SystemClient {
    pub async fn node_info(&mut self) -> Result<v1::NodeInfoResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(NODE_INFO_REQUEST, &v1::NodeInfoRequest {}, NODE_INFO_RESPONSE, "NodeInfoResponse").await
    }

    pub async fn range_status(&mut self) -> Result<v1::RangeStatusResponse, ClientError> {
        use payload_type::system::*;
        let request = v1::RangeStatusRequest {};
        self.0.call_proto(RANGE_STATUS_REQUEST, &request, RANGE_STATUS_RESPONSE, "RangeStatusResponse").await
    }

    pub async fn decommission(&mut self, node_id: u64) -> Result<v1::DecommissionResponse, ClientError> {
        use payload_type::system::*;
        let request = v1::DecommissionRequest { node_id };
        self.0.call_proto(DECOMMISSION_REQUEST, &request, DECOMMISSION_RESPONSE, "DecommissionResponse").await
    }

    pub async fn health(&mut self) -> Result<v1::HealthResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(HEALTH_REQUEST, &v1::HealthRequest {}, HEALTH_RESPONSE, "HealthResponse").await
    }

    /// The gossip membership as the node sees it.
    pub async fn members(&mut self) -> Result<v1::MembersResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(MEMBERS_REQUEST, &v1::MembersRequest {}, MEMBERS_RESPONSE, "MembersResponse").await
    }

    /// Raises a query event through the node; answers arrive when it closes (allow `timeout`).
    pub async fn query(&mut self, request: &v1::QueryRequest) -> Result<v1::QueryResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(QUERY_REQUEST, request, QUERY_RESPONSE, "QueryResponse").await
    }
}

/// KV service calls on one stream.
pub struct KvClient {
    stream: PwpStream,
    next_request_id: u64,
}

impl KvClient {
    /// Sends one operation and returns its result; a KV error becomes [`ClientError::Kv`].
    pub async fn request(&mut self, op: Op) -> Result<KvResult, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = KvRequest { request_id, op: Some(op), ..Default::default() };
        let response: KvResponse = self
            .stream
            .call_proto(payload_type::kv::REQUEST, &request, payload_type::kv::RESPONSE, "KvResponse")
            .await?;
        if response.request_id != request_id {
            return Err(ClientError::Read(format!(
                "answer to request {} arrived for {request_id}",
                response.request_id
            )));
        }
        match response.result {
            Some(KvResult::Error(e)) => Err(ClientError::Kv { code: e.code(), message: e.message }),
            Some(result) => Ok(result),
            None => Err(ClientError::Decode { message: "KvResponse", detail: "no result".into() }),
        }
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<v1::PutResponse, ClientError> {
        match self.request(Op::Put(v1::PutRequest { key: key.to_vec(), value: value.to_vec() })).await? {
            KvResult::Put(r) => Ok(r),
            _ => Err(mismatched("put")),
        }
    }

    pub async fn get(&mut self, key: &[u8], version: u32) -> Result<Option<v1::VersionedValue>, ClientError> {
        let get = v1::GetRequest { key: key.to_vec(), version, ..Default::default() };
        match self.request(Op::Get(get)).await? {
            KvResult::Get(r) => Ok(r.value),
            _ => Err(mismatched("get")),
        }
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<v1::DeleteResponse, ClientError> {
        match self.request(Op::Delete(v1::DeleteRequest { key: key.to_vec() })).await? {
            KvResult::Delete(r) => Ok(r),
            _ => Err(mismatched("delete")),
        }
    }

    pub async fn scan(&mut self, start: &[u8], end: &[u8], limit: u32) -> Result<v1::ScanResponse, ClientError> {
        let scan = v1::ScanRequest { start: start.to_vec(), end: end.to_vec(), limit, ..Default::default() };
        match self.request(Op::Scan(scan)).await? {
            KvResult::Scan(r) => Ok(r),
            _ => Err(mismatched("scan")),
        }
    }

    pub async fn versions(&mut self, key: &[u8]) -> Result<Vec<v1::VersionInfo>, ClientError> {
        match self
            .request(Op::ListVersions(v1::ListVersionsRequest { key: key.to_vec(), ..Default::default() }))
            .await?
        {
            KvResult::ListVersions(r) => Ok(r.versions),
            _ => Err(mismatched("list_versions")),
        }
    }

    pub async fn describe(&mut self, key: &[u8]) -> Result<Option<v1::KeyDescriptor>, ClientError> {
        match self.request(Op::Describe(v1::DescribeKeyRequest { key: key.to_vec(), ..Default::default() })).await? {
            KvResult::Describe(r) => Ok(r.descriptor),
            _ => Err(mismatched("describe")),
        }
    }
}

fn mismatched(op: &'static str) -> ClientError {
    ClientError::Decode { message: "KvResponse", detail: format!("the answer to a {op} is of another operation") }
}
