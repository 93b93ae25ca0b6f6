//! The server side of PWP over QUIC: one task per connection, one per stream. A connection
//! whose certificate names no identity of this constellation is closed after the handshake (one
//! without a certificate fails the handshake itself); every call is handed to the services with
//! its caller. A bad stream costs only that stream: it gets a PROTOCOL_ERROR and CLOSE, the
//! connection and node go on.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pleiades_proto::wire::{Action, Frame, ServerSession, Service, ServiceDirectory, SessionConfig, WireError};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::WireConfig;
use crate::observe::{KindLabels, LimitLabels, Metrics};
use crate::transport::budget::{NodeBudget, PeerBudget, PeerBudgets, PeerKey, Reservation};
use crate::transport::count_frame;
use crate::transport::inbound::Inbound;
use crate::transport::peer::{authenticate, Denials, Peer};

/// QUIC application error code used when a stream is abandoned after a protocol error.
const STREAM_PROTOCOL_ERROR: u32 = 1;
/// QUIC application error code of a stream refused because the node serves its most streams.
pub const STREAM_REFUSED: u32 = 2;
/// QUIC application error code of a stream closed because the node is shutting down; nothing
/// on it was handled after its last answer.
pub const STREAM_DRAINING: u32 = 3;
/// Bytes read while no message payload is in progress: one message header.
const HEADER_READ: usize = 16;
/// First read of a payload; reads double while the sender keeps them full, so a trickle holds
/// a small reservation and a fast sender soon reads in large chunks.
const FIRST_PAYLOAD_READ: usize = 1024;
const MAX_READ: usize = 64 * 1024;

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
    /// A frame must arrive whole within this from its first byte.
    pub frame_timeout: Duration,
    /// A stream with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// Streams open on the node at once, over all connections.
    pub max_streams: usize,
    /// Streams one user's connection may open (the QUIC transport's initial credit).
    pub max_streams_per_connection: u32,
    /// Streams another node's connection may open; raised from the above once it authenticates.
    pub max_streams_per_node_connection: u32,
    /// Bytes received and not yet handled (and answers not yet sent), per peer identity.
    pub peer_buffers: PeerBudgets,
    /// The node's budget of received and not yet handled bytes, over all connections.
    pub node_buffer: Arc<NodeBudget>,
    /// Streams open now, counted against `max_streams`.
    pub open_streams: AtomicUsize,
    /// Set when the node starts shutting down (see `start_draining`).
    draining: tokio::sync::watch::Sender<bool>,
}

impl StreamSettings {
    pub fn new(wire: &WireConfig) -> Self {
        StreamSettings {
            max_payload: wire.max_payload_bytes,
            frame_timeout: Duration::from_millis(wire.frame_timeout_ms),
            idle_timeout: Duration::from_millis(wire.stream_idle_timeout_ms),
            max_streams: wire.max_streams,
            max_streams_per_connection: wire.max_streams_per_connection,
            max_streams_per_node_connection: wire.max_streams_per_node_connection,
            peer_buffers: PeerBudgets::new(wire.max_buffered_bytes_per_peer),
            node_buffer: Arc::new(NodeBudget::new(wire.max_buffered_bytes)),
            open_streams: AtomicUsize::new(0),
            draining: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Closes every stream waiting for its next frame, and each other stream once its current
    /// request is answered; refuses new streams. All with `STREAM_DRAINING`, so callers know
    /// nothing was left half-handled. The node can then exit as soon as its open streams reach
    /// zero.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }
}

/// One stream's place in the node's count, given back when the stream ends.
struct OpenStream<'a>(&'a StreamSettings, &'a Metrics);

impl<'a> OpenStream<'a> {
    fn admit(settings: &'a StreamSettings, metrics: &'a Metrics) -> Option<Self> {
        let admitted = settings
            .open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < settings.max_streams).then_some(n + 1))
            .is_ok();
        admitted.then(|| {
            metrics.pwp_streams_accepted.inc();
            metrics.pwp_streams_open.inc();
            OpenStream(settings, metrics)
        })
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
        self.1.pwp_streams_open.dec();
    }
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
                    let buffer = settings.peer_buffers.of(PeerKey::of(&peer, remote.ip()));
                    let mut stream_limit = settings.max_streams_per_connection;
                    if let Peer::Node(_) = peer {
                        stream_limit = settings.max_streams_per_node_connection;
                        connection.set_max_concurrent_bi_streams(stream_limit.into());
                    }
                    let context = Context {
                        peer,
                        dispatch,
                        settings,
                        metrics,
                        denials,
                        buffer,
                        open_streams: AtomicUsize::new(0),
                        stream_limit: stream_limit as usize,
                    };
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
    /// The peer's budget of received and not yet handled bytes, shared by its connections.
    buffer: Arc<PeerBudget>,
    open_streams: AtomicUsize,
    /// Streams this connection may have open at once.
    stream_limit: usize,
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
            Ok((mut send, mut recv)) => {
                let context = context.clone();
                tokio::spawn(async move {
                    if *context.settings.draining.borrow() {
                        return refuse(&mut send, &mut recv, STREAM_DRAINING);
                    }
                    let Some(_open) = OpenStream::admit(&context.settings, &context.metrics) else {
                        context.metrics.limit_reached(LimitLabels::NODE_STREAMS);
                        return refuse(&mut send, &mut recv, STREAM_REFUSED);
                    };
                    let on_connection = context.open_streams.fetch_add(1, Ordering::AcqRel) + 1;
                    if on_connection == context.stream_limit {
                        context.metrics.limit_reached(LimitLabels::CONNECTION_STREAMS);
                    }
                    serve_stream(send, recv, &context).await;
                    context.open_streams.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => break e,
        }
    };
    datagrams.abort();
    metrics.quic_connections_open.dec();
    debug!(%remote, reason = %reason, "connection closed");
}

/// Turns a new stream away before anything on it is read, telling the peer why with `code`.
fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32) {
    let _ = send.reset(quinn::VarInt::from_u32(code));
    let _ = recv.stop(quinn::VarInt::from_u32(code));
}

/// Why a stream ended early.
enum StreamFault {
    Wire(WireError),
    Dispatch(DispatchError),
    /// A frame did not arrive whole within the frame timeout of its first byte.
    FrameTimeout(Duration),
    /// The peer was silent longer than its heartbeat promise allows.
    HeartbeatMissed(Duration),
    /// No frame for the idle timeout.
    Idle(Duration),
    /// The peer did not take an answer within the frame timeout.
    AnswerNotTaken(Duration),
}

impl StreamFault {
    fn kind(&self) -> &'static str {
        match self {
            StreamFault::Wire(e) => e.kind(),
            StreamFault::Dispatch(e) => e.kind(),
            StreamFault::FrameTimeout(_) => "frame_timeout",
            StreamFault::HeartbeatMissed(_) => "heartbeat_missed",
            StreamFault::Idle(_) => "idle_timeout",
            StreamFault::AnswerNotTaken(_) => "answer_not_taken",
        }
    }

    fn error_frame(&self) -> Frame {
        match self {
            StreamFault::Wire(e) => Frame::protocol_error(e),
            StreamFault::Dispatch(e) => Frame::application_error(e.to_string()),
            StreamFault::FrameTimeout(after) => {
                Frame::timeout_error(format!("a frame did not arrive whole within {after:?} of its first byte"))
            }
            StreamFault::HeartbeatMissed(after) => Frame::timeout_error(format!("no heartbeat for {after:?}")),
            StreamFault::Idle(after) => Frame::timeout_error(format!("no frame for {after:?}")),
            StreamFault::AnswerNotTaken(after) => Frame::timeout_error(format!("an answer was not taken in {after:?}")),
        }
    }
}

/// When the stream must next show progress, and what it is if it does not.
fn deadline(
    settings: &StreamSettings,
    frame_started: Option<Instant>,
    last_frame: Instant,
    heartbeat_window: Option<Duration>,
) -> (Instant, StreamFault) {
    if let Some(started) = frame_started {
        return (started + settings.frame_timeout, StreamFault::FrameTimeout(settings.frame_timeout));
    }
    match heartbeat_window {
        Some(window) if window < settings.idle_timeout => (last_frame + window, StreamFault::HeartbeatMissed(window)),
        _ => (last_frame + settings.idle_timeout, StreamFault::Idle(settings.idle_timeout)),
    }
}

async fn serve_stream<D: Dispatch>(mut send: quinn::SendStream, mut recv: quinn::RecvStream, context: &Context<D>) {
    let (dispatch, settings, metrics) = (&*context.dispatch, &*context.settings, &*context.metrics);
    let stream_id = quinn::VarInt::from(send.id()).into_inner();
    let mut session = ServerSession::new(stream_id, SessionConfig::new(settings.max_payload));
    // Both buffers start empty: an idle stream holds no memory of its own.
    let mut inbound = Inbound::default();
    let mut outbound = BytesMut::new();
    let mut reservation =
        Reservation::new(context.buffer.clone(), settings.node_buffer.clone(), metrics.wire_buffered_bytes.clone());
    let mut actions = Vec::new();
    let mut heartbeat_window: Option<Duration> = None;
    let mut frame_started: Option<Instant> = None;
    let mut last_frame = Instant::now();
    let mut payload_read = FIRST_PAYLOAD_READ;
    let mut draining = settings.draining.subscribe();
    let fault = 'stream: loop {
        let remaining = session.payload_remaining(inbound.len());
        let want = remaining.map_or(HEADER_READ, |remaining| remaining.clamp(1, payload_read));
        let capacity = inbound.capacity_after(want, remaining);
        let (deadline, timed_out) = deadline(settings, frame_started, last_frame, heartbeat_window);
        // Waiting for budget counts against the same deadline as waiting for bytes: a frame
        // that cannot be received in time fails either way, and gives its budget back.
        let read = async {
            reservation.grow_to(capacity, |budget| metrics.limit_reached(LimitLabels { limit: budget.label() })).await;
            recv.read_chunk(want, true).await
        };
        // Between frames, a drain closes the stream: what the peer may have sent since is
        // discarded unread, which the drain code tells it. The send half finishes rather than
        // resets, so the last answer still arrives.
        let between_frames = frame_started.is_none() && inbound.is_empty();
        let drained = async {
            if !between_frames || draining.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, read) => match read {
                Ok(read) => read,
                Err(_) => break timed_out,
            },
            () = drained => {
                let _ = recv.stop(quinn::VarInt::from_u32(STREAM_DRAINING));
                let _ = send.finish();
                return;
            }
        };
        let (at_end, complete) = match read {
            Ok(None) => (true, true),
            Ok(Some(chunk)) => {
                let n = chunk.bytes.len();
                metrics.bytes_received.inc_by(n as u64);
                if remaining.is_some() {
                    payload_read = if n == want { (payload_read * 2).min(MAX_READ) } else { FIRST_PAYLOAD_READ };
                }
                if frame_started.is_none() {
                    frame_started = Some(Instant::now());
                }
                inbound.push(&chunk.bytes, remaining);
                (false, remaining.is_none_or(|remaining| remaining == n))
            }
            Err(e) => {
                debug!(stream_id, error = %e, "stream reset by peer");
                return;
            }
        };
        // A payload still arriving has nothing to decode yet.
        if !complete {
            continue;
        }
        let result = if at_end {
            session.receive_eof(inbound.joined(), dispatch, &mut actions)
        } else {
            session.receive(inbound.joined(), dispatch, &mut actions)
        };
        let mut closing = at_end;
        for action in actions.drain(..) {
            match action {
                Action::Send(frame) => {
                    count_frame(metrics, "out", frame.name());
                    frame.encode(&mut outbound);
                }
                Action::Received(name) => {
                    count_frame(metrics, "in", name);
                    // Whatever is left in the buffer belongs to a frame that started in this read.
                    last_frame = Instant::now();
                    frame_started = None;
                    payload_read = FIRST_PAYLOAD_READ;
                }
                Action::Message { service, payload_type, payload } => {
                    // Boxed: the services' futures are large, and an idle stream should not
                    // carry room for one.
                    let answer = match Box::pin(dispatch.dispatch(&context.peer, service, payload_type, payload)).await
                    {
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
                            // Each answer goes out before the next request is handled, so a
                            // peer that pipelines requests and reads no answers holds one.
                            match send_answers(&mut send, &mut outbound, &mut reservation, settings, metrics).await {
                                Ok(()) => {}
                                Err(Some(fault)) => break 'stream fault,
                                Err(None) => return,
                            }
                        }
                        Err(e) => break 'stream StreamFault::Dispatch(e),
                    }
                }
                Action::HeartbeatInterval(interval) => heartbeat_window = interval.map(|i| i * 3),
                Action::Close => closing = true,
            }
        }
        if session.is_mid_frame() && frame_started.is_none() {
            frame_started = Some(Instant::now());
        }
        // Handled frames are gone; the reservation keeps only the buffer still held.
        inbound.release_if_empty();
        reservation.shrink_to(inbound.capacity());
        match send_answers(&mut send, &mut outbound, &mut reservation, settings, metrics).await {
            Ok(()) => {}
            Err(Some(fault)) => break fault,
            Err(None) => return,
        }
        if let Err(e) = result {
            break StreamFault::Wire(e);
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
        _ => debug!(stream_id, kind, "closing a silent stream"),
    }
    if matches!(fault, StreamFault::FrameTimeout(_) | StreamFault::Idle(_) | StreamFault::AnswerNotTaken(_)) {
        metrics.limit_reached(LimitLabels { limit: kind });
    }
    // We will not read the rest of what the peer sends on this stream.
    let _ = recv.stop(quinn::VarInt::from_u32(STREAM_PROTOCOL_ERROR));
    if let StreamFault::AnswerNotTaken(_) = fault {
        let _ = send.reset(quinn::VarInt::from_u32(STREAM_PROTOCOL_ERROR));
        return;
    }
    // The stream gives its budget back before its last words: they are a few hundred bytes,
    // and must not wait behind the budget the peer's other streams have spent.
    drop(inbound);
    reservation.shrink_to(0);
    for frame in [fault.error_frame(), Frame::Close] {
        count_frame(metrics, "out", frame.name());
        frame.encode(&mut outbound);
    }
    metrics.bytes_sent.inc_by(outbound.len() as u64);
    match tokio::time::timeout(settings.frame_timeout, send.write_chunk(outbound.freeze())).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        _ => {
            let _ = send.reset(quinn::VarInt::from_u32(STREAM_PROTOCOL_ERROR));
        }
    }
}

/// Writes what `outbound` holds. Its bytes count against the budgets until QUIC has taken
/// them, and a peer must take them within the frame timeout. `Err(None)`: the peer is gone.
async fn send_answers(
    send: &mut quinn::SendStream,
    outbound: &mut BytesMut,
    reservation: &mut Reservation,
    settings: &StreamSettings,
    metrics: &Metrics,
) -> Result<(), Option<StreamFault>> {
    if outbound.is_empty() {
        return Ok(());
    }
    let before = reservation.held();
    let bytes = outbound.split().freeze();
    let write = async {
        let len = bytes.len();
        reservation.grow_to(before + len, |budget| metrics.limit_reached(LimitLabels { limit: budget.label() })).await;
        metrics.bytes_sent.inc_by(len as u64);
        send.write_chunk(bytes).await
    };
    let written = tokio::time::timeout(settings.frame_timeout, write).await;
    reservation.shrink_to(before);
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(StreamFault::AnswerNotTaken(settings.frame_timeout))),
    }
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
