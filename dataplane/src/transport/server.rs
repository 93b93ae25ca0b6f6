//! The server side of PWP over QUIC: one task per connection, one per stream. A bad stream
//! costs only that stream: it gets a PROTOCOL_ERROR and CLOSE, the connection and node go on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pleiades_proto::wire::{Action, Frame, ServerSession, Service, ServiceDirectory, SessionConfig, WireError};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::observe::{KindLabels, Metrics};
use crate::transport::count_frame;

/// QUIC application error code used when a stream is abandoned after a protocol error.
const STREAM_PROTOCOL_ERROR: u32 = 1;
/// Read buffer growth step; most PWP requests fit in one.
const READ_CHUNK: usize = 16 * 1024;

/// A bound service's application handler.
pub trait Dispatch: ServiceDirectory + Send + Sync + 'static {
    /// Answers one message of `service` with the response's payload type and bytes.
    fn dispatch(
        &self,
        service: Service,
        payload_type: u8,
        payload: Bytes,
    ) -> impl Future<Output = Result<(u8, Bytes), DispatchError>> + Send;

    /// Takes one unreliable QUIC datagram (its first byte names the service).
    fn datagram(&self, datagram: Bytes);
}

/// A message the service cannot take; the stream ends with a protocol error naming it.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("payload type {payload_type:#04x} is not a request of the {service:?} service")]
    UnknownPayloadType { service: Service, payload_type: u8 },
    #[error("malformed {message}: {detail}")]
    Malformed { message: &'static str, detail: String },
}

impl DispatchError {
    pub fn malformed(message: &'static str, error: prost::DecodeError) -> Self {
        DispatchError::Malformed { message, detail: error.to_string() }
    }

    fn kind(&self) -> &'static str {
        match self {
            DispatchError::UnknownPayloadType { .. } => "unknown_payload_type",
            DispatchError::Malformed { .. } => "malformed_message",
        }
    }
}

pub struct StreamSettings {
    pub max_payload: u64,
    pub stall_timeout: Duration,
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop<D: Dispatch>(
    endpoint: quinn::Endpoint,
    dispatch: Arc<D>,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (dispatch, settings, metrics) = (dispatch.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => serve_connection(connection, dispatch, settings, metrics).await,
                Err(e) => debug!(%remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

async fn serve_connection<D: Dispatch>(
    connection: quinn::Connection,
    dispatch: Arc<D>,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
) {
    let remote = connection.remote_address();
    metrics.quic_connections_accepted.inc();
    metrics.quic_connections_open.inc();
    debug!(%remote, "connection open");
    let datagrams = tokio::spawn({
        let (connection, dispatch) = (connection.clone(), dispatch.clone());
        async move {
            while let Ok(datagram) = connection.read_datagram().await {
                dispatch.datagram(datagram);
            }
        }
    });
    let reason = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let (dispatch, settings, metrics) = (dispatch.clone(), settings.clone(), metrics.clone());
                tokio::spawn(async move {
                    metrics.pwp_streams_accepted.inc();
                    metrics.pwp_streams_open.inc();
                    serve_stream(send, recv, &*dispatch, &settings, &metrics).await;
                    metrics.pwp_streams_open.dec();
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

async fn serve_stream<D: Dispatch>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    dispatch: &D,
    settings: &StreamSettings,
    metrics: &Metrics,
) {
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
                    match dispatch.dispatch(service, payload_type, payload).await {
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
