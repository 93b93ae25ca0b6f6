//! The calling side of PWP: dialling a node and one stream bound to a service on it. Every
//! client of the wire — the Rust client, raft replication, gossip, the node's own calls — goes
//! through here.

use std::time::{Duration, Instant};

use super::server::{STREAM_DRAINING, STREAM_REFUSED};
use super::tls::TlsError;
use bytes::{Bytes, BytesMut};
use pleiades_proto::v1;
use pleiades_proto::wire::{ClientEvent, ClientSession, Frame, Service, ServiceTypeStatus, WireError};
use prost::Message;

/// Largest read from a stream at once.
const READ_MAX: usize = 64 * 1024;
/// A stream idle longer than this is not reused: the node may be closing it (its stream idle
/// timeout is two minutes by default), and a fresh stream costs one round trip.
const REUSE_WITHIN: Duration = Duration::from_secs(30);
/// How long a stream the node finished without a word waits for the node's STOP_SENDING, which
/// tells a drain from a plain close; both leave the node together, but may arrive apart.
const DRAIN_SIGNAL_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
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
    #[error("the node is overloaded: {0}")]
    Overloaded(String),
    /// The node is shutting down and handled nothing of the request: send it elsewhere.
    #[error("the node is draining; the request was not handled")]
    Draining,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node granted no new stream in time: the connection is starved, not just slow.
    #[error("no stream granted within {0:?}")]
    NoStream(Duration),
    #[error("the node sent a malformed {message}: {detail}")]
    Decode { message: &'static str, detail: String },
    #[error("the node answered with payload type {0:#04x}, not the expected response")]
    UnexpectedPayload(u8),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{code:?}: {message}")]
    Kv { code: v1::ErrorCode, message: String },
    #[error("outcome unknown: {0}")]
    Uncertain(String),
    #[error("gave up after {after:?}; last error: {last}")]
    Deadline { after: Duration, last: Box<ClientError> },
}

/// Dials `addr` (`host:port`, resolved now) on `endpoint` with `config` within `timeout`,
/// verifying the node's certificate against `server_name`, or else the host part of `addr`.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    server_name: Option<&str>,
    timeout: Duration,
) -> Result<quinn::Connection, ClientError> {
    let connect_error = |detail: String| ClientError::Connect { addr: addr.to_string(), detail };
    let connecting = async {
        let resolved: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host(addr).await.map_err(|e| connect_error(format!("cannot resolve: {e}")))?.collect();
        // A name may resolve to both families (`localhost`): take one the endpoint can reach.
        let ipv4 = endpoint.local_addr().map_or(true, |local| local.is_ipv4());
        let socket = resolved
            .iter()
            .find(|socket| socket.is_ipv4() == ipv4)
            .or(resolved.first())
            .copied()
            .ok_or_else(|| connect_error("resolves to no address".into()))?;
        let server_name = server_name.unwrap_or_else(|| host_of(addr));
        endpoint
            .connect_with(config, socket, server_name)
            .map_err(|e| connect_error(e.to_string()))?
            .await
            .map_err(|e| connect_error(e.to_string()))
    };
    tokio::time::timeout(timeout, connecting).await.map_err(|_| ClientError::Timeout(timeout))?
}

/// The host part of `host:port` (an IPv6 address without its brackets).
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])).unwrap_or(addr)
}

/// A PWP stream bound to one service.
pub struct PwpStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbound: BytesMut,
    session: ClientSession,
    timeout: Duration,
    events: Vec<ClientEvent>,
    last_used: Instant,
}

impl PwpStream {
    /// Opens a stream on `connection` bound to `service`; `timeout` bounds each answer.
    pub async fn open(
        connection: &quinn::Connection,
        service: Service,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let (mut send, recv) =
            tokio::time::timeout(timeout, connection.open_bi()).await.map_err(|_| ClientError::NoStream(timeout))??;
        let mut session = ClientSession::new();
        send.write_chunk(session.pipelined_setup(service, true).freeze()).await?;
        let mut stream = PwpStream {
            send,
            recv,
            inbound: BytesMut::new(),
            session,
            timeout,
            events: Vec::new(),
            last_used: Instant::now(),
        };
        match stream.next_event().await? {
            ClientEvent::Ready { .. } => Ok(stream),
            ClientEvent::Refused(status) => Err(ClientError::Refused { service, status }),
            other => Err(stream.unexpected(other)),
        }
    }

    /// Whether the stream was used recently enough to be reused rather than replaced.
    pub fn is_fresh(&self) -> bool {
        self.last_used.elapsed() < REUSE_WITHIN
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
            let chunk = self.recv.read_chunk(READ_MAX, true).await.map_err(|e| match e {
                quinn::ReadError::Reset(code) if code.into_inner() == u64::from(STREAM_REFUSED) => {
                    ClientError::Overloaded("the node serves its most streams; try again later".into())
                }
                quinn::ReadError::Reset(code) if code.into_inner() == u64::from(STREAM_DRAINING) => {
                    ClientError::Draining
                }
                e => ClientError::Read(e.to_string()),
            })?;
            if let Some(chunk) = chunk {
                self.inbound.extend_from_slice(&chunk.bytes);
                self.session.receive(&mut self.inbound, &mut self.events)?;
            } else {
                self.session.receive_eof(&mut self.inbound, &mut self.events)?;
                if self.events.is_empty() {
                    return Err(self.closed_without_a_word().await);
                }
            }
        }
    }

    /// The node finished its half with no frame. A draining node does that to a stream between
    /// requests, and stops reading it with `STREAM_DRAINING` in the same breath; anything else
    /// is a plain close.
    async fn closed_without_a_word(&self) -> ClientError {
        match tokio::time::timeout(DRAIN_SIGNAL_WAIT, self.send.stopped()).await {
            Ok(Ok(Some(code))) if code.into_inner() == u64::from(STREAM_DRAINING) => ClientError::Draining,
            _ => ClientError::Closed,
        }
    }

    /// Sends `bytes`; a stream the node stopped reading because it is draining says so.
    async fn write(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        self.send.write_chunk(bytes).await.map_err(|e| match e {
            quinn::WriteError::Stopped(code) if code.into_inner() == u64::from(STREAM_DRAINING) => {
                ClientError::Draining
            }
            e => ClientError::Write(e),
        })
    }

    fn unexpected(&self, event: ClientEvent) -> ClientError {
        ClientError::Read(format!("unexpected answer {event:?}"))
    }

    /// Sends one message and waits for the next message back.
    pub async fn call(&mut self, payload_type: u8, payload: Bytes) -> Result<(u8, Bytes), ClientError> {
        let mut out = BytesMut::with_capacity(payload.len() + 16);
        Frame::Message { payload_type, payload }.encode(&mut out);
        self.last_used = Instant::now();
        self.write(out.freeze()).await?;
        loop {
            match self.next_event().await? {
                ClientEvent::Message { payload_type: pleiades_proto::payload_type::PERMISSION_DENIED, payload } => {
                    let denied = v1::PermissionDenied::decode(payload)
                        .map_err(|e| ClientError::Decode { message: "PermissionDenied", detail: e.to_string() })?;
                    return Err(ClientError::PermissionDenied(denied.reason));
                }
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
