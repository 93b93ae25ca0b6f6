//! The server side of PWP over QUIC: one task per connection, one per stream. A connection
//! whose certificate names no identity of this constellation is closed after the handshake (one
//! without a certificate fails the handshake itself); every call is handed to the services with
//! its caller. A bad stream costs only that stream: it gets a PROTOCOL_ERROR and CLOSE, the
//! connection and node go on.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pleiades_proto::wire::{Action, Frame, ServerSession, Service, ServiceDirectory, SessionConfig, WireError};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::observe::{KindLabels, Metrics};
use crate::transport::count_frame;
use crate::transport::peer::{authenticate, Denials, Peer};

/// QUIC application error code used when a stream is abandoned after a protocol error.
const STREAM_PROTOCOL_ERROR: u32 = 1;
/// Read buffer growth step; most PWP requests fit in one.
const READ_CHUNK: usize = 16 * 1024;

/// A bound service's application handler.
pub trait Dispatch: ServiceDirectory + Send + Sync + 'static {
    /// Answers one message of `service` from `peer` with the response's payload type and bytes.
    fn dispatch(
        &self,
        peer: &Peer,
        service: Service,
        payload_type: u8,
        payload: Bytes,
    ) -> impl Future<Output = Result<(u8, Bytes), DispatchError>> + Send;

    /// Takes one unreliable QUIC datagram from `peer` (its first byte names the service).
    fn datagram(&self, peer: &Peer, datagram: Bytes);
}

/// A message the service cannot take; the stream ends with a protocol error naming it.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("payload type {payload_type:#04x} is not a request of the {service:?} service")]
    UnknownPayloadType { service: Service, payload_type: u8 },
    #[error("malformed {message}: {detail}")]
    Malformed { message: &'static str, detail: String },
    /// Answered with a `PermissionDenied` message; the stream goes on.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl DispatchError {
    pub fn malformed(message: &'static str, error: prost::DecodeError) -> Self {
        DispatchError::Malformed { message, detail: error.to_string() }
    }

    fn kind(&self) -> &'static str {
        match self {
            DispatchError::UnknownPayloadType { .. } => "unknown_payload_type",
            DispatchError::Malformed { .. } => "malformed_message",
            DispatchError::PermissionDenied(_) => "permission_denied",
        }
    }
}

pub struct StreamSettings {
    pub max_payload: u64,
    pub stall_timeout: Duration,
}

/// Who may connect, and how many.
pub struct AcceptSettings {
    /// The constellation every certificate must name.
    pub constellation: String,
    /// `--insecure`: callers without a certificate are accepted (and may do anything).
    pub insecure: bool,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

/// Open connections, in all and by remote IP address.
#[derive(Default)]
struct ConnectionCount {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection's place in the count, given back when it is dropped.
struct Admitted {
    count: Arc<Mutex<ConnectionCount>>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        count.total -= 1;
        if let Some(n) = count.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                count.by_address.remove(&self.address);
            }
        }
    }
}

/// Admits a connection attempt from `address` unless a bound is reached; says which one.
fn admit(
    count: &Arc<Mutex<ConnectionCount>>,
    address: IpAddr,
    settings: &AcceptSettings,
) -> Result<Admitted, &'static str> {
    let mut guard = count.lock().unwrap_or_else(|p| p.into_inner());
    if guard.total >= settings.max_connections {
        return Err("node_connection_limit");
    }
    let from_address = guard.by_address.entry(address).or_default();
    if *from_address >= settings.max_connections_per_address {
        return Err("address_connection_limit");
    }
    *from_address += 1;
    guard.total += 1;
    Ok(Admitted { count: count.clone(), address })
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop<D: Dispatch>(
    endpoint: quinn::Endpoint,
    dispatch: Arc<D>,
    accept: Arc<AcceptSettings>,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
) {
    let count = Arc::new(Mutex::new(ConnectionCount::default()));
    let denials = Arc::new(Denials::default());
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        // Counted before the handshake, so a flood of half-open attempts is bounded too.
        let admitted = match admit(&count, remote.ip(), &accept) {
            Ok(admitted) => admitted,
            Err(kind) => {
                metrics.connections_refused.get_or_create(&KindLabels { kind }).inc();
                incoming.refuse();
                continue;
            }
        };
        let (dispatch, accept, settings, metrics, denials) =
            (dispatch.clone(), accept.clone(), settings.clone(), metrics.clone(), denials.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    metrics.connections_refused.get_or_create(&KindLabels { kind: "handshake" }).inc();
                    debug!(%remote, error = %e, "QUIC handshake failed");
                    return;
                }
            };
            match authenticate(&connection, &accept.constellation, accept.insecure) {
                Ok(peer) => {
                    let context = Context { peer, dispatch, settings, metrics, denials };
                    serve_connection(connection, Arc::new(context)).await
                }
                Err(e) => {
                    metrics.connections_refused.get_or_create(&KindLabels { kind: "identity" }).inc();
                    debug!(%remote, error = %e, "connection refused: no identity of this constellation");
                    connection.close(quinn::VarInt::from_u32(STREAM_PROTOCOL_ERROR), e.to_string().as_bytes());
                }
            }
        });
    }
}

/// What every stream of one connection shares.
struct Context<D> {
    peer: Peer,
    dispatch: Arc<D>,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
    denials: Arc<Denials>,
}

async fn serve_connection<D: Dispatch>(connection: quinn::Connection, context: Arc<Context<D>>) {
    let remote = connection.remote_address();
    let metrics = &context.metrics;
    metrics.quic_connections_accepted.inc();
    metrics.quic_connections_open.inc();
    debug!(%remote, peer = %context.peer, "connection open");
    let datagrams = tokio::spawn({
        let (connection, context) = (connection.clone(), context.clone());
        async move {
            while let Ok(datagram) = connection.read_datagram().await {
                context.dispatch.datagram(&context.peer, datagram);
            }
        }
    });
    let reason = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let context = context.clone();
                tokio::spawn(async move {
                    context.metrics.pwp_streams_accepted.inc();
                    context.metrics.pwp_streams_open.inc();
                    serve_stream(send, recv, &context).await;
                    context.metrics.pwp_streams_open.dec();
                });
            }
            Err(e) => break e,
        }
    };
    datagrams.abort();
    metrics.quic_connections_open.dec();
    debug!(%remote, reason = %reason, "connection closed");
}

/// Why a stream ended early.
enum StreamFault {
    Wire(WireError),
    Dispatch(DispatchError),
    /// The peer stopped sending in the middle of a frame.
    Stalled(Duration),
    /// The peer was silent longer than its heartbeat promise allows.
    HeartbeatMissed(Duration),
}

impl StreamFault {
    fn kind(&self) -> &'static str {
        match self {
            StreamFault::Wire(e) => e.kind(),
            StreamFault::Dispatch(e) => e.kind(),
            StreamFault::Stalled(_) => "stalled",
            StreamFault::HeartbeatMissed(_) => "heartbeat_missed",
        }
    }

    fn error_frame(&self) -> Frame {
        match self {
            StreamFault::Wire(e) => Frame::protocol_error(e),
            StreamFault::Dispatch(e) => Frame::application_error(e.to_string()),
            StreamFault::Stalled(after) => Frame::timeout_error(format!("stream stalled mid-frame for {after:?}")),
            StreamFault::HeartbeatMissed(after) => Frame::timeout_error(format!("no heartbeat for {after:?}")),
        }
    }
}

async fn serve_stream<D: Dispatch>(mut send: quinn::SendStream, mut recv: quinn::RecvStream, context: &Context<D>) {
    let (dispatch, settings, metrics) = (&*context.dispatch, &*context.settings, &*context.metrics);
    let stream_id = quinn::VarInt::from(send.id()).into_inner();
    let mut session = ServerSession::new(stream_id, SessionConfig::new(settings.max_payload));
    let mut inbound = BytesMut::with_capacity(READ_CHUNK);
    let mut outbound = BytesMut::with_capacity(READ_CHUNK);
    let mut actions = Vec::new();
    let mut heartbeat_window: Option<Duration> = None;
    let fault = 'stream: loop {
        // Only a partly received frame is held to the stall timeout; an idle stream between
        // frames is fine unless the peer promised heartbeats.
        let limit = if session.is_mid_frame() {
            Some((settings.stall_timeout, true))
        } else {
            heartbeat_window.map(|window| (window, false))
        };
        inbound.reserve(READ_CHUNK);
        let read = recv.read_buf(&mut inbound);
        let read = match limit {
            Some((limit, mid_frame)) => match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) if mid_frame => break StreamFault::Stalled(limit),
                Err(_) => break StreamFault::HeartbeatMissed(limit),
            },
            None => read.await,
        };
        let at_end = match read {
            Ok(0) => true,
            Ok(n) => {
                metrics.bytes_received.inc_by(n as u64);
                false
            }
            Err(e) => {
                debug!(stream_id, error = %e, "stream reset by peer");
                return;
            }
        };
        let result = if at_end {
            session.receive_eof(&mut inbound, dispatch, &mut actions)
        } else {
            session.receive(&mut inbound, dispatch, &mut actions)
        };
        let mut closing = at_end;
        for action in actions.drain(..) {
            match action {
                Action::Send(frame) => {
                    count_frame(metrics, "out", frame.name());
                    frame.encode(&mut outbound);
                }
                Action::Received(name) => count_frame(metrics, "in", name),
                Action::Message { service, payload_type, payload } => {
                    let answer = match dispatch.dispatch(&context.peer, service, payload_type, payload).await {
                        Err(DispatchError::PermissionDenied(reason)) => {
                            context.denials.record(metrics, service_name(service), &context.peer, &reason);
                            let denied = pleiades_proto::v1::PermissionDenied { reason };
                            Ok((
                                pleiades_proto::payload_type::PERMISSION_DENIED,
                                prost::Message::encode_to_vec(&denied).into(),
                            ))
                        }
                        other => other,
                    };
                    match answer {
                        Ok((response_type, response)) => {
                            let frame = Frame::Message { payload_type: response_type, payload: response };
                            count_frame(metrics, "out", frame.name());
                            frame.encode(&mut outbound);
                        }
                        Err(e) => {
                            // Flush the answers already produced before reporting the fault.
                            let _ = write_out(&mut send, &mut outbound, metrics).await;
                            break 'stream StreamFault::Dispatch(e);
                        }
                    }
                }
                Action::HeartbeatInterval(interval) => heartbeat_window = interval.map(|i| i * 3),
                Action::Close => closing = true,
            }
        }
        if let Err(e) = result {
            let _ = write_out(&mut send, &mut outbound, metrics).await;
            break StreamFault::Wire(e);
        }
        if write_out(&mut send, &mut outbound, metrics).await.is_err() {
            return;
        }
        if closing {
            let _ = send.finish();
            return;
        }
    };
    let kind = fault.kind();
    metrics.wire_errors.get_or_create(&KindLabels { kind }).inc();
    match &fault {
        StreamFault::Wire(e) => warn!(stream_id, kind, error = %e, "closing stream after a protocol error"),
        StreamFault::Dispatch(e) => warn!(stream_id, kind, error = %e, "closing stream after a bad message"),
        _ => info!(stream_id, kind, "closing a silent stream"),
    }
    for frame in [fault.error_frame(), Frame::Close] {
        count_frame(metrics, "out", frame.name());
        frame.encode(&mut outbound);
    }
    let _ = write_out(&mut send, &mut outbound, metrics).await;
    let _ = send.finish();
    // We will not read the rest of what the peer sends on this stream.
    let _ = recv.stop(quinn::VarInt::from_u32(STREAM_PROTOCOL_ERROR));
}

/// The service's name as a metrics label.
pub fn service_name(service: Service) -> &'static str {
    match service {
        Service::Gossip => "gossip",
        Service::Raft => "raft",
        Service::Kv => "kv",
        Service::Messaging => "messaging",
        Service::System => "system",
    }
}

async fn write_out(
    send: &mut quinn::SendStream,
    outbound: &mut BytesMut,
    metrics: &Metrics,
) -> Result<(), quinn::WriteError> {
    if outbound.is_empty() {
        return Ok(());
    }
    let bytes = outbound.split().freeze();
    metrics.bytes_sent.inc_by(bytes.len() as u64);
    send.write_chunk(bytes).await
}
