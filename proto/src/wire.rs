//! The Pleiades Wire Protocol (PWP) v1, sans-IO: bytes in, frames out, and the per-stream
//! session state machines of both ends. No sockets and no clocks here; the QUIC shell moves the
//! bytes and applies the time limits. `WIRE.md` beside this crate is the byte-level table.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;

/// The only protocol version, and so the highest one this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Default largest message payload (16 MiB).
pub const DEFAULT_MAX_PAYLOAD: u64 = 16 << 20;
/// Longest PROTOCOL_ERROR reason, in bytes.
pub const MAX_ERROR_REASON: usize = 1024;

/// Magic bytes: the first byte of every frame.
pub mod magic {
    pub const HELLO: u8 = 0x01;
    pub const RESPONSE_STREAM_ID_INCOMING: u8 = 0x02;
    pub const STREAM_SETUP_COMPLETE: u8 = 0x03;
    pub const SERVER_VERSION_REQUEST: u8 = 0x05;
    pub const SERVER_VERSION_RESPONSE: u8 = 0x06;
    pub const SERVICE_TYPE_REQUEST: u8 = 0x10;
    pub const SERVICE_TYPE_RESPONSE: u8 = 0x11;
    pub const SERVICE_STATUS_REQUEST: u8 = 0x12;
    pub const SERVICE_STATUS_RESPONSE: u8 = 0x13;
    pub const PAYLOAD_TYPE_INCOMING: u8 = 0x20;
    pub const PAYLOAD_CHECKSUM_INCOMING: u8 = 0x21;
    /// The seed gave 0x21 to both checksum and size; size gets its own byte.
    pub const PAYLOAD_SIZE_INCOMING: u8 = 0x22;
    pub const LATENCY_TEST_START: u8 = 0xD0;
    pub const LATENCY_TEST_STOP: u8 = 0xD1;
    pub const HEARTBEAT: u8 = 0xE0;
    pub const HEARTBEAT_FREQUENCY_SETTING_INCOMING: u8 = 0xE1;
    /// Our addition: a clear error before a stream is closed.
    pub const PROTOCOL_ERROR: u8 = 0xFE;
    pub const CLOSE: u8 = 0xFF;
}

/// PROTOCOL_ERROR codes.
pub mod error_code {
    pub const UNKNOWN_MAGIC: u8 = 0x01;
    pub const UNKNOWN_SERVICE: u8 = 0x02;
    pub const UNSUPPORTED_VERSION: u8 = 0x03;
    pub const CHECKSUM_MISMATCH: u8 = 0x04;
    pub const PAYLOAD_TOO_LARGE: u8 = 0x05;
    pub const TRUNCATED: u8 = 0x06;
    pub const UNEXPECTED_FRAME: u8 = 0x07;
    pub const MALFORMED_FRAME: u8 = 0x08;
    /// The stream stalled mid-frame, or missed its heartbeats.
    pub const TIMEOUT: u8 = 0x09;
    /// The bound service cannot take the message (unknown payload type, undecodable payload).
    pub const BAD_MESSAGE: u8 = 0x0A;
}

/// Message header: type (2 bytes) + size (9) + checksum (5).
const MESSAGE_HEADER_LEN: usize = 16;

/// A one-byte enum of the protocol: conversions both ways, unknown bytes as `$error`.
macro_rules! byte_enum {
    ($(#[$doc:meta])* $name:ident, |$byte:ident| $error:expr, { $($variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant = $value),+
        }

        impl TryFrom<u8> for $name {
            type Error = WireError;
            fn try_from($byte: u8) -> Result<Self, WireError> {
                match $byte {
                    $($value => Ok($name::$variant),)+
                    _ => Err($error),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(value: $name) -> u8 {
                value as u8
            }
        }
    };
}

byte_enum!(
    /// The services a stream can bind to.
    Service, |byte| WireError::UnknownService(byte), {
    Gossip = 0x01,
    Raft = 0x02,
    Kv = 0x03,
    Messaging = 0x04,
    System = 0x05,
});

byte_enum!(
    /// SERVICE_TYPE_RESPONSE statuses.
    ServiceTypeStatus, |byte| WireError::Malformed(format!("unknown service type status {byte:#04x}")), {
    Ready = 0x00,
    UnavailableRetryable = 0x01,
    UnavailableRetryableWithError = 0x02,
    UnavailableNonRetryable = 0x03,
    UnavailableNonRetryableWithError = 0x04,
});

byte_enum!(
    /// SERVICE_STATUS_RESPONSE values.
    ServiceHealth, |byte| WireError::Malformed(format!("unknown service health {byte:#04x}")), {
    Healthy = 0x00,
    Unhealthy = 0x01,
});

/// Everything that can be wrong with bytes on a stream. Each costs only that stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown magic byte {0:#04x}")]
    UnknownMagic(u8),
    #[error("unknown service {0:#04x}")]
    UnknownService(u8),
    #[error("unsupported protocol version {requested}; this node speaks versions 1 to {supported}")]
    UnsupportedVersion { requested: u8, supported: u8 },
    #[error("payload checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("payload of {size} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge { size: u64, max: u64 },
    #[error("stream truncated in the middle of a frame")]
    Truncated,
    #[error("unexpected {frame} {context}")]
    UnexpectedFrame { frame: &'static str, context: &'static str },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl WireError {
    /// Stable snake_case label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::UnknownMagic(_) => "unknown_magic",
            WireError::UnknownService(_) => "unknown_service",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::ChecksumMismatch { .. } => "checksum_mismatch",
            WireError::PayloadTooLarge { .. } => "payload_too_large",
            WireError::Truncated => "truncated",
            WireError::UnexpectedFrame { .. } => "unexpected_frame",
            WireError::Malformed(_) => "malformed_frame",
        }
    }

    /// The PROTOCOL_ERROR code a peer receives for this error.
    pub fn code(&self) -> u8 {
        match self {
            WireError::UnknownMagic(_) => error_code::UNKNOWN_MAGIC,
            WireError::UnknownService(_) => error_code::UNKNOWN_SERVICE,
            WireError::UnsupportedVersion { .. } => error_code::UNSUPPORTED_VERSION,
            WireError::ChecksumMismatch { .. } => error_code::CHECKSUM_MISMATCH,
            WireError::PayloadTooLarge { .. } => error_code::PAYLOAD_TOO_LARGE,
            WireError::Truncated => error_code::TRUNCATED,
            WireError::UnexpectedFrame { .. } => error_code::UNEXPECTED_FRAME,
            WireError::Malformed(_) => error_code::MALFORMED_FRAME,
        }
    }
}

/// One unit of PWP: a magic byte with its metadata, or a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello,
    ResponseStreamId(u64),
    StreamSetupComplete,
    ServerVersionRequest(u8),
    ServerVersionResponse(u8),
    ServiceTypeRequest(u8),
    ServiceTypeResponse(u8),
    ServiceStatusRequest(u8),
    ServiceStatusResponse(u8),
    /// PAYLOAD_TYPE_INCOMING, PAYLOAD_SIZE_INCOMING and PAYLOAD_CHECKSUM_INCOMING preludes, then
    /// the payload.
    Message {
        payload_type: u8,
        payload: Bytes,
    },
    LatencyTestStart(u64),
    LatencyTestStop(u64),
    Heartbeat,
    /// Seconds between heartbeats; 0 turns them off.
    HeartbeatFrequency(u8),
    ProtocolError {
        code: u8,
        reason: String,
    },
    Close,
}

impl Frame {
    /// The magic byte's name, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello => "HELLO",
            Frame::ResponseStreamId(_) => "RESPONSE_STREAM_ID_INCOMING",
            Frame::StreamSetupComplete => "STREAM_SETUP_COMPLETE",
            Frame::ServerVersionRequest(_) => "SERVER_VERSION_REQUEST",
            Frame::ServerVersionResponse(_) => "SERVER_VERSION_RESPONSE",
            Frame::ServiceTypeRequest(_) => "SERVICE_TYPE_REQUEST",
            Frame::ServiceTypeResponse(_) => "SERVICE_TYPE_RESPONSE",
            Frame::ServiceStatusRequest(_) => "SERVICE_STATUS_REQUEST",
            Frame::ServiceStatusResponse(_) => "SERVICE_STATUS_RESPONSE",
            Frame::Message { .. } => "MESSAGE",
            Frame::LatencyTestStart(_) => "LATENCY_TEST_START",
            Frame::LatencyTestStop(_) => "LATENCY_TEST_STOP",
            Frame::Heartbeat => "HEARTBEAT",
            Frame::HeartbeatFrequency(_) => "HEARTBEAT_FREQUENCY_SETTING_INCOMING",
            Frame::ProtocolError { .. } => "PROTOCOL_ERROR",
            Frame::Close => "CLOSE",
        }
    }

    /// The PROTOCOL_ERROR frame that reports `error` to the peer.
    pub fn protocol_error(error: &WireError) -> Frame {
        Frame::error(error.code(), error.to_string())
    }

    /// A PROTOCOL_ERROR for a message the bound service cannot take.
    pub fn application_error(reason: String) -> Frame {
        Frame::error(error_code::BAD_MESSAGE, reason)
    }

    /// A PROTOCOL_ERROR for a stream that went silent.
    pub fn timeout_error(reason: String) -> Frame {
        Frame::error(error_code::TIMEOUT, reason)
    }

    fn error(code: u8, mut reason: String) -> Frame {
        if reason.len() > MAX_ERROR_REASON {
            let mut cut = MAX_ERROR_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Frame::ProtocolError { code, reason }
    }

    /// Appends the frame's bytes. Integers are big-endian.
    pub fn encode(&self, out: &mut BytesMut) {
        use magic::*;
        match self {
            Frame::Hello => out.put_u8(HELLO),
            Frame::ResponseStreamId(id) => {
                out.put_u8(RESPONSE_STREAM_ID_INCOMING);
                out.put_u64(*id);
            }
            Frame::StreamSetupComplete => out.put_u8(STREAM_SETUP_COMPLETE),
            Frame::ServerVersionRequest(v) => out.put_slice(&[SERVER_VERSION_REQUEST, *v]),
            Frame::ServerVersionResponse(v) => out.put_slice(&[SERVER_VERSION_RESPONSE, *v]),
            Frame::ServiceTypeRequest(s) => out.put_slice(&[SERVICE_TYPE_REQUEST, *s]),
            Frame::ServiceTypeResponse(s) => out.put_slice(&[SERVICE_TYPE_RESPONSE, *s]),
            Frame::ServiceStatusRequest(s) => out.put_slice(&[SERVICE_STATUS_REQUEST, *s]),
            Frame::ServiceStatusResponse(s) => out.put_slice(&[SERVICE_STATUS_RESPONSE, *s]),
            Frame::Message { payload_type, payload } => {
                out.reserve(MESSAGE_HEADER_LEN + payload.len());
                out.put_slice(&[PAYLOAD_TYPE_INCOMING, *payload_type, PAYLOAD_SIZE_INCOMING]);
                out.put_u64(payload.len() as u64);
                out.put_u8(PAYLOAD_CHECKSUM_INCOMING);
                out.put_u32(crc32c::crc32c(payload));
                out.put_slice(payload);
            }
            Frame::LatencyTestStart(id) => {
                out.put_u8(LATENCY_TEST_START);
                out.put_u64(*id);
            }
            Frame::LatencyTestStop(id) => {
                out.put_u8(LATENCY_TEST_STOP);
                out.put_u64(*id);
            }
            Frame::Heartbeat => out.put_u8(HEARTBEAT),
            Frame::HeartbeatFrequency(seconds) => out.put_slice(&[HEARTBEAT_FREQUENCY_SETTING_INCOMING, *seconds]),
            Frame::ProtocolError { code, reason } => {
                // Reasons longer than the limit are cut at encode time too, so the peer's
                // decoder never sees an over-long one from us.
                let bytes = reason.as_bytes();
                let len = bytes.len().min(MAX_ERROR_REASON);
                out.put_slice(&[PROTOCOL_ERROR, *code]);
                out.put_u16(len as u16);
                out.put_slice(&bytes[..len]);
            }
            Frame::Close => out.put_u8(CLOSE),
        }
    }
}

/// A message payload waiting for its bytes.
#[derive(Debug, Clone, Copy)]
struct PendingPayload {
    payload_type: u8,
    size: usize,
    checksum: u32,
}

/// Incremental PWP decoder: consumes the bytes of complete frames from the front of a buffer.
#[derive(Debug)]
pub struct Decoder {
    max_payload: u64,
    pending: Option<PendingPayload>,
    /// Bytes of a frame have arrived but not the whole frame.
    partial: bool,
    failed: Option<WireError>,
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

impl Decoder {
    pub fn new(max_payload: u64) -> Self {
        Decoder { max_payload, pending: None, partial: false, failed: None }
    }

    /// True when part of a frame has arrived: the moment a stall timeout applies.
    pub fn is_mid_frame(&self) -> bool {
        self.pending.is_some() || self.partial
    }

    /// Bytes of the message payload in progress still to arrive beyond the `buffered` ones;
    /// `None` unless a message header has arrived. Readers size their reads by it.
    pub fn payload_remaining(&self, buffered: usize) -> Option<usize> {
        self.pending.map(|pending| pending.size.saturating_sub(buffered))
    }

    /// The next complete frame, `None` if more bytes are needed. After an error the decoder stays
    /// failed: a byte stream has no resynchronisation point.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode_inner(buf);
        match &result {
            Err(error) => self.failed = Some(error.clone()),
            Ok(None) => self.partial = !buf.is_empty(),
            Ok(Some(_)) => self.partial = false,
        }
        result
    }

    /// Like [`Decoder::decode`] at the end of the stream: a partial frame is `Truncated`.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.is_mid_frame() => {
                self.failed = Some(WireError::Truncated);
                Err(WireError::Truncated)
            }
            None => Ok(None),
        }
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        use magic::*;
        if let Some(pending) = self.pending {
            // Memory grows as the payload arrives, never to the size the header claims.
            if buf.len() < pending.size {
                return Ok(None);
            }
            let payload = buf.split_to(pending.size).freeze();
            let actual = crc32c::crc32c(&payload);
            if actual != pending.checksum {
                return Err(WireError::ChecksumMismatch { expected: pending.checksum, actual });
            }
            self.pending = None;
            return Ok(Some(Frame::Message { payload_type: pending.payload_type, payload }));
        }
        let Some(&first) = buf.first() else { return Ok(None) };
        let needed = match first {
            HELLO | STREAM_SETUP_COMPLETE | HEARTBEAT | CLOSE => 1,
            SERVER_VERSION_REQUEST
            | SERVER_VERSION_RESPONSE
            | SERVICE_TYPE_REQUEST
            | SERVICE_TYPE_RESPONSE
            | SERVICE_STATUS_REQUEST
            | SERVICE_STATUS_RESPONSE
            | HEARTBEAT_FREQUENCY_SETTING_INCOMING => 2,
            RESPONSE_STREAM_ID_INCOMING | LATENCY_TEST_START | LATENCY_TEST_STOP => 9,
            PAYLOAD_TYPE_INCOMING => return self.decode_message_header(buf),
            PROTOCOL_ERROR => return decode_protocol_error(buf),
            PAYLOAD_CHECKSUM_INCOMING | PAYLOAD_SIZE_INCOMING => {
                return Err(WireError::UnexpectedFrame {
                    frame: if first == PAYLOAD_SIZE_INCOMING {
                        "PAYLOAD_SIZE_INCOMING"
                    } else {
                        "PAYLOAD_CHECKSUM_INCOMING"
                    },
                    context: "without a PAYLOAD_TYPE_INCOMING before it",
                })
            }
            other => return Err(WireError::UnknownMagic(other)),
        };
        if buf.len() < needed {
            return Ok(None);
        }
        let frame = buf.split_to(needed);
        Ok(Some(match first {
            HELLO => Frame::Hello,
            STREAM_SETUP_COMPLETE => Frame::StreamSetupComplete,
            HEARTBEAT => Frame::Heartbeat,
            CLOSE => Frame::Close,
            SERVER_VERSION_REQUEST => Frame::ServerVersionRequest(frame[1]),
            SERVER_VERSION_RESPONSE => Frame::ServerVersionResponse(frame[1]),
            SERVICE_TYPE_REQUEST => Frame::ServiceTypeRequest(frame[1]),
            SERVICE_TYPE_RESPONSE => Frame::ServiceTypeResponse(frame[1]),
            SERVICE_STATUS_REQUEST => Frame::ServiceStatusRequest(frame[1]),
            SERVICE_STATUS_RESPONSE => Frame::ServiceStatusResponse(frame[1]),
            HEARTBEAT_FREQUENCY_SETTING_INCOMING => Frame::HeartbeatFrequency(frame[1]),
            RESPONSE_STREAM_ID_INCOMING => Frame::ResponseStreamId(be_u64(&frame[1..])),
            LATENCY_TEST_START => Frame::LatencyTestStart(be_u64(&frame[1..])),
            _ => Frame::LatencyTestStop(be_u64(&frame[1..])),
        }))
    }

    /// Validates the message preludes as far as they have arrived, so an oversized or
    /// misordered message is refused before its payload is buffered.
    fn decode_message_header(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        use magic::*;
        let prelude = |found: u8, expected: &'static str| {
            WireError::Malformed(format!("expected {expected} in a message header, found {found:#04x}"))
        };
        if buf.len() > 2 && buf[2] != PAYLOAD_SIZE_INCOMING {
            return Err(prelude(buf[2], "PAYLOAD_SIZE_INCOMING (0x22)"));
        }
        if buf.len() >= 11 {
            let size = be_u64(&buf[3..11]);
            if size > self.max_payload {
                return Err(WireError::PayloadTooLarge { size, max: self.max_payload });
            }
        }
        if buf.len() > 11 && buf[11] != PAYLOAD_CHECKSUM_INCOMING {
            return Err(prelude(buf[11], "PAYLOAD_CHECKSUM_INCOMING (0x21)"));
        }
        if buf.len() < MESSAGE_HEADER_LEN {
            return Ok(None);
        }
        let header = buf.split_to(MESSAGE_HEADER_LEN);
        let checksum = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
        // The size was checked against max_payload (itself a u64 that fits memory) above.
        let size = usize::try_from(be_u64(&header[3..11]))
            .map_err(|_| WireError::PayloadTooLarge { size: be_u64(&header[3..11]), max: self.max_payload })?;
        self.pending = Some(PendingPayload { payload_type: header[1], size, checksum });
        self.decode_inner(buf)
    }
}

fn decode_protocol_error(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len > MAX_ERROR_REASON {
        return Err(WireError::Malformed(format!(
            "PROTOCOL_ERROR reason of {len} bytes exceeds {MAX_ERROR_REASON} bytes"
        )));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len);
    let code = frame[1];
    frame.advance(4);
    let reason = String::from_utf8(frame.to_vec())
        .map_err(|_| WireError::Malformed("PROTOCOL_ERROR reason is not UTF-8".into()))?;
    Ok(Some(Frame::ProtocolError { code, reason }))
}

/// What the node offers on a stream; implemented by the node.
pub trait ServiceDirectory {
    fn service_type_status(&self, service: Service) -> ServiceTypeStatus;
    fn service_health(&self, service: Service) -> ServiceHealth;
}

/// Server session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub max_payload: u64,
    pub max_version: u8,
}

impl SessionConfig {
    pub fn new(max_payload: u64) -> Self {
        SessionConfig { max_payload, max_version: PROTOCOL_VERSION }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::new(DEFAULT_MAX_PAYLOAD)
    }
}

/// What the server's IO shell must do after feeding bytes to a [`ServerSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame to the peer.
    Send(Frame),
    /// A frame arrived (for metrics).
    Received(&'static str),
    /// An application message for the bound service.
    Message { service: Service, payload_type: u8, payload: Bytes },
    /// The peer promises a heartbeat at this interval (`None`: no promise).
    HeartbeatInterval(Option<Duration>),
    /// Finish the stream after writing what was sent.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    AwaitHello,
    AwaitSetupComplete,
    Negotiating,
    Bound(Service),
    Closed,
}

/// The server end of one stream pair.
#[derive(Debug)]
pub struct ServerSession {
    stream_id: u64,
    config: SessionConfig,
    decoder: Decoder,
    state: ServerState,
}

impl ServerSession {
    pub fn new(stream_id: u64, config: SessionConfig) -> Self {
        ServerSession { stream_id, config, decoder: Decoder::new(config.max_payload), state: ServerState::AwaitHello }
    }

    pub fn bound_service(&self) -> Option<Service> {
        match self.state {
            ServerState::Bound(service) => Some(service),
            _ => None,
        }
    }

    pub fn is_mid_frame(&self) -> bool {
        self.decoder.is_mid_frame()
    }

    /// See [`Decoder::payload_remaining`].
    pub fn payload_remaining(&self, buffered: usize) -> Option<usize> {
        self.decoder.payload_remaining(buffered)
    }

    /// Decodes and handles every complete frame in `buf`.
    pub fn receive(
        &mut self,
        buf: &mut BytesMut,
        directory: &dyn ServiceDirectory,
        actions: &mut Vec<Action>,
    ) -> Result<(), WireError> {
        while self.state != ServerState::Closed {
            let Some(frame) = self.decoder.decode(buf)? else { return Ok(()) };
            self.handle(frame, buf, directory, actions)?;
        }
        Ok(())
    }

    /// As [`ServerSession::receive`], for the last bytes before the peer finished its side: a
    /// partial frame is `Truncated`; a clean end without CLOSE closes the stream.
    pub fn receive_eof(
        &mut self,
        buf: &mut BytesMut,
        directory: &dyn ServiceDirectory,
        actions: &mut Vec<Action>,
    ) -> Result<(), WireError> {
        while self.state != ServerState::Closed {
            match self.decoder.decode_eof(buf)? {
                Some(frame) => self.handle(frame, buf, directory, actions)?,
                None => {
                    self.state = ServerState::Closed;
                    actions.push(Action::Close);
                }
            }
        }
        Ok(())
    }

    fn handle(
        &mut self,
        frame: Frame,
        rest: &BytesMut,
        directory: &dyn ServiceDirectory,
        actions: &mut Vec<Action>,
    ) -> Result<(), WireError> {
        use ServerState::*;
        actions.push(Action::Received(frame.name()));
        let unexpected = |frame: &Frame, context| WireError::UnexpectedFrame { frame: frame.name(), context };
        let set_up = !matches!(self.state, AwaitHello | AwaitSetupComplete);
        match (frame, self.state) {
            (Frame::Hello, AwaitHello) => {
                actions.push(Action::Send(Frame::ResponseStreamId(self.stream_id)));
                self.state = AwaitSetupComplete;
            }
            (Frame::StreamSetupComplete, AwaitSetupComplete) => {
                actions.push(Action::Send(Frame::StreamSetupComplete));
                self.state = Negotiating;
            }
            (Frame::ServerVersionRequest(requested), _) if set_up => {
                actions.push(Action::Send(Frame::ServerVersionResponse(self.config.max_version)));
                if requested == 0 || requested > self.config.max_version {
                    return Err(WireError::UnsupportedVersion { requested, supported: self.config.max_version });
                }
            }
            (Frame::ServiceTypeRequest(byte), Negotiating) => {
                let service = Service::try_from(byte)?;
                let status = directory.service_type_status(service);
                actions.push(Action::Send(Frame::ServiceTypeResponse(status.into())));
                if status == ServiceTypeStatus::Ready {
                    self.state = Bound(service);
                } else {
                    self.close(actions);
                }
            }
            (Frame::ServiceStatusRequest(byte), _) if set_up => {
                let health = directory.service_health(Service::try_from(byte)?);
                actions.push(Action::Send(Frame::ServiceStatusResponse(health.into())));
            }
            (Frame::Heartbeat, _) if set_up => {}
            (Frame::HeartbeatFrequency(seconds), _) if set_up => {
                let interval = (seconds > 0).then(|| Duration::from_secs(seconds.into()));
                actions.push(Action::HeartbeatInterval(interval));
            }
            (Frame::LatencyTestStart(id), _) if set_up => actions.push(Action::Send(Frame::LatencyTestStart(id))),
            (Frame::LatencyTestStop(id), _) if set_up => actions.push(Action::Send(Frame::LatencyTestStop(id))),
            (Frame::Message { payload_type, payload }, Bound(service)) => {
                actions.push(Action::Message { service, payload_type, payload });
            }
            (frame @ Frame::Message { .. }, _) => return Err(unexpected(&frame, "before a service is bound")),
            (Frame::Close | Frame::ProtocolError { .. }, _) => {
                if !rest.is_empty() {
                    return Err(WireError::UnexpectedFrame { frame: "bytes", context: "after CLOSE" });
                }
                self.close(actions);
            }
            (
                frame @ (Frame::ResponseStreamId(_)
                | Frame::ServerVersionResponse(_)
                | Frame::ServiceTypeResponse(_)
                | Frame::ServiceStatusResponse(_)),
                _,
            ) => return Err(unexpected(&frame, "from a client: only servers send it")),
            (frame, AwaitHello) => return Err(unexpected(&frame, "before HELLO")),
            (frame, AwaitSetupComplete) => return Err(unexpected(&frame, "before STREAM_SETUP_COMPLETE")),
            (frame, _) => return Err(unexpected(&frame, "in this state of the stream")),
        }
        Ok(())
    }

    fn close(&mut self, actions: &mut Vec<Action>) {
        actions.push(Action::Send(Frame::Close));
        actions.push(Action::Close);
        self.state = ServerState::Closed;
    }
}

/// What a [`ClientSession`] observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The stream is bound to the requested service.
    Ready {
        response_stream_id: u64,
        server_version: Option<u8>,
    },
    /// The server declined the service.
    Refused(ServiceTypeStatus),
    Message {
        payload_type: u8,
        payload: Bytes,
    },
    ServiceStatus(ServiceHealth),
    LatencyTestStart(u64),
    LatencyTestStop(u64),
    Heartbeat,
    ProtocolError {
        code: u8,
        reason: String,
    },
    Closed,
}

/// The client end of one stream pair.
#[derive(Debug)]
pub struct ClientSession {
    decoder: Decoder,
    response_stream_id: Option<u64>,
    server_version: Option<u8>,
    bound: bool,
    closed: bool,
}

impl Default for ClientSession {
    fn default() -> Self {
        ClientSession::new()
    }
}

impl ClientSession {
    pub fn new() -> Self {
        ClientSession::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    pub fn with_max_payload(max_payload: u64) -> Self {
        ClientSession {
            decoder: Decoder::new(max_payload),
            response_stream_id: None,
            server_version: None,
            bound: false,
            closed: false,
        }
    }

    /// The whole setup in one write, sent before any answer (`01 03 [05 01] 10 <service>`).
    pub fn pipelined_setup(&mut self, service: Service, check_version: bool) -> BytesMut {
        let mut out = BytesMut::with_capacity(6);
        Frame::Hello.encode(&mut out);
        Frame::StreamSetupComplete.encode(&mut out);
        if check_version {
            Frame::ServerVersionRequest(PROTOCOL_VERSION).encode(&mut out);
        }
        Frame::ServiceTypeRequest(service.into()).encode(&mut out);
        out
    }

    pub fn receive(&mut self, buf: &mut BytesMut, events: &mut Vec<ClientEvent>) -> Result<(), WireError> {
        while !self.closed {
            let Some(frame) = self.decoder.decode(buf)? else { return Ok(()) };
            self.handle(frame, events)?;
        }
        Ok(())
    }

    pub fn receive_eof(&mut self, buf: &mut BytesMut, events: &mut Vec<ClientEvent>) -> Result<(), WireError> {
        while !self.closed {
            match self.decoder.decode_eof(buf)? {
                Some(frame) => self.handle(frame, events)?,
                None => {
                    self.closed = true;
                    events.push(ClientEvent::Closed);
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame, events: &mut Vec<ClientEvent>) -> Result<(), WireError> {
        let unexpected = |frame: &Frame, context| WireError::UnexpectedFrame { frame: frame.name(), context };
        match frame {
            Frame::ResponseStreamId(id) if self.response_stream_id.is_none() => self.response_stream_id = Some(id),
            Frame::StreamSetupComplete if self.response_stream_id.is_some() => {}
            Frame::ServerVersionResponse(version) => self.server_version = Some(version),
            Frame::ServiceTypeResponse(status) if !self.bound => {
                let Some(response_stream_id) = self.response_stream_id else {
                    return Err(unexpected(&frame, "before RESPONSE_STREAM_ID_INCOMING"));
                };
                let status = ServiceTypeStatus::try_from(status)?;
                if status == ServiceTypeStatus::Ready {
                    self.bound = true;
                    events.push(ClientEvent::Ready { response_stream_id, server_version: self.server_version });
                } else {
                    events.push(ClientEvent::Refused(status));
                }
            }
            Frame::ServiceStatusResponse(health) => events.push(ClientEvent::ServiceStatus(health.try_into()?)),
            Frame::Message { payload_type, payload } if self.bound => {
                events.push(ClientEvent::Message { payload_type, payload })
            }
            Frame::LatencyTestStart(id) => events.push(ClientEvent::LatencyTestStart(id)),
            Frame::LatencyTestStop(id) => events.push(ClientEvent::LatencyTestStop(id)),
            Frame::Heartbeat => events.push(ClientEvent::Heartbeat),
            Frame::ProtocolError { code, reason } => events.push(ClientEvent::ProtocolError { code, reason }),
            Frame::Close => {
                self.closed = true;
                events.push(ClientEvent::Closed);
            }
            frame => return Err(unexpected(&frame, "from the server in this state of the stream")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
