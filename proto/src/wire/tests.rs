use super::*;

struct Directory;

impl ServiceDirectory for Directory {
    fn service_type_status(&self, service: Service) -> ServiceTypeStatus {
        match service {
            Service::System | Service::Kv => ServiceTypeStatus::Ready,
            _ => ServiceTypeStatus::UnavailableNonRetryable,
        }
    }
    fn service_health(&self, service: Service) -> ServiceHealth {
        if service == Service::System {
            ServiceHealth::Healthy
        } else {
            ServiceHealth::Unhealthy
        }
    }
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::Hello,
        Frame::ResponseStreamId(u64::MAX - 3),
        Frame::StreamSetupComplete,
        Frame::ServerVersionRequest(1),
        Frame::ServerVersionResponse(1),
        Frame::ServiceTypeRequest(5),
        Frame::ServiceTypeResponse(0),
        Frame::ServiceStatusRequest(3),
        Frame::ServiceStatusResponse(1),
        Frame::Message { payload_type: 7, payload: Bytes::from_static(b"hello payload") },
        Frame::Message { payload_type: 0, payload: Bytes::new() },
        Frame::LatencyTestStart(42),
        Frame::LatencyTestStop(42),
        Frame::Heartbeat,
        Frame::HeartbeatFrequency(5),
        Frame::ProtocolError { code: 3, reason: "nope ✗".into() },
        Frame::Close,
    ]
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

fn server(bytes: &[u8]) -> (ServerSession, Vec<Action>, Result<(), WireError>) {
    let mut session = ServerSession::new(4, SessionConfig::default());
    let mut actions = Vec::new();
    let result = session.receive(&mut BytesMut::from(bytes), &Directory, &mut actions);
    (session, actions, result)
}

fn sent(actions: &[Action]) -> BytesMut {
    let mut out = BytesMut::new();
    for action in actions {
        if let Action::Send(frame) = action {
            frame.encode(&mut out);
        }
    }
    out
}

#[test]
fn every_frame_has_its_exact_bytes() {
    let cases: Vec<(Frame, Vec<u8>)> = vec![
        (Frame::Hello, vec![0x01]),
        (Frame::ResponseStreamId(0x0102), vec![0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x02]),
        (Frame::StreamSetupComplete, vec![0x03]),
        (Frame::ServerVersionRequest(1), vec![0x05, 1]),
        (Frame::ServerVersionResponse(1), vec![0x06, 1]),
        (Frame::ServiceTypeRequest(5), vec![0x10, 5]),
        (Frame::ServiceTypeResponse(2), vec![0x11, 2]),
        (Frame::ServiceStatusRequest(3), vec![0x12, 3]),
        (Frame::ServiceStatusResponse(1), vec![0x13, 1]),
        (Frame::LatencyTestStart(9), vec![0xD0, 0, 0, 0, 0, 0, 0, 0, 9]),
        (Frame::LatencyTestStop(9), vec![0xD1, 0, 0, 0, 0, 0, 0, 0, 9]),
        (Frame::Heartbeat, vec![0xE0]),
        (Frame::HeartbeatFrequency(30), vec![0xE1, 30]),
        (Frame::ProtocolError { code: 4, reason: "ab".into() }, vec![0xFE, 4, 0, 2, b'a', b'b']),
        (Frame::Close, vec![0xFF]),
    ];
    for (frame, bytes) in cases {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        assert_eq!(out.to_vec(), bytes, "{frame:?}");
        let decoded = Decoder::new(DEFAULT_MAX_PAYLOAD).decode(&mut out).unwrap();
        assert_eq!(decoded, Some(frame));
        assert!(out.is_empty());
    }
}

#[test]
fn a_message_is_type_then_size_then_checksum_then_payload() {
    let mut out = BytesMut::new();
    Frame::Message { payload_type: 0x42, payload: Bytes::from_static(b"abc") }.encode(&mut out);
    let crc = crc32c::crc32c(b"abc").to_be_bytes();
    let mut expected = vec![0x20, 0x42, 0x22, 0, 0, 0, 0, 0, 0, 0, 3, 0x21];
    expected.extend_from_slice(&crc);
    expected.extend_from_slice(b"abc");
    assert_eq!(out.to_vec(), expected);
}

#[test]
fn frames_split_at_every_byte_decode_identically() {
    let frames = every_frame();
    let bytes = encode_all(&frames);
    for split in 0..=bytes.len() {
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut buf = BytesMut::from(&bytes[..split]);
        let mut decoded = decode_all(&mut decoder, &mut buf).unwrap();
        buf.extend_from_slice(&bytes[split..]);
        decoded.extend(decode_all(&mut decoder, &mut buf).unwrap());
        assert_eq!(decoded, frames, "split at {split}");
        assert!(!decoder.is_mid_frame());
    }
}

#[test]
fn the_16_byte_setup_of_the_seed() {
    let (session, actions, result) = server(&[0x01, 0x03, 0x10, 0x05]);
    result.unwrap();
    let reply = sent(&actions);
    assert_eq!(reply.to_vec(), vec![0x02, 0, 0, 0, 0, 0, 0, 0, 4, 0x03, 0x11, 0x00]);
    assert_eq!(4 + reply.len(), 16);
    assert_eq!(session.bound_service(), Some(Service::System));
}

#[test]
fn seed_18_byte_pipelined_setup() {
    let mut client = ClientSession::new();
    let setup = client.pipelined_setup(Service::System, true);
    assert_eq!(setup.to_vec(), vec![0x01, 0x03, 0x05, 0x01, 0x10, 0x05]);
    // All six client bytes arrive in one chunk, before the server said anything.
    let (session, actions, result) = server(&setup);
    result.unwrap();
    let mut reply = sent(&actions);
    assert_eq!(reply.to_vec(), vec![0x02, 0, 0, 0, 0, 0, 0, 0, 4, 0x03, 0x06, 0x01, 0x11, 0x00]);
    // The seed counts 16 + 2 = 18; the server's 2-byte version answer makes 20 on the wire.
    assert_eq!(setup.len() + reply.len(), 20);
    assert_eq!(session.bound_service(), Some(Service::System));
    let mut events = Vec::new();
    client.receive(&mut reply, &mut events).unwrap();
    assert_eq!(events, vec![ClientEvent::Ready { response_stream_id: 4, server_version: Some(1) }]);
}

#[test]
fn a_bound_stream_passes_messages_and_answers_control_frames() {
    let mut bytes = BytesMut::from(&[0x01, 0x03, 0x10, 0x03][..]);
    Frame::Message { payload_type: 1, payload: Bytes::from_static(b"req") }.encode(&mut bytes);
    for frame in [
        Frame::ServiceStatusRequest(5),
        Frame::LatencyTestStart(8),
        Frame::LatencyTestStop(8),
        Frame::Heartbeat,
        Frame::HeartbeatFrequency(2),
        Frame::HeartbeatFrequency(0),
        Frame::Close,
    ] {
        frame.encode(&mut bytes);
    }
    let (_, actions, result) = server(&bytes);
    result.unwrap();
    let interesting: Vec<_> = actions.into_iter().filter(|a| !matches!(a, Action::Received(_))).collect();
    assert_eq!(
        interesting,
        vec![
            Action::Send(Frame::ResponseStreamId(4)),
            Action::Send(Frame::StreamSetupComplete),
            Action::Send(Frame::ServiceTypeResponse(0)),
            Action::Message { service: Service::Kv, payload_type: 1, payload: Bytes::from_static(b"req") },
            Action::Send(Frame::ServiceStatusResponse(0)),
            Action::Send(Frame::LatencyTestStart(8)),
            Action::Send(Frame::LatencyTestStop(8)),
            Action::HeartbeatInterval(Some(Duration::from_secs(2))),
            Action::HeartbeatInterval(None),
            Action::Send(Frame::Close),
            Action::Close,
        ]
    );
}

#[test]
fn an_unavailable_service_is_answered_and_closed() {
    let (_, actions, result) = server(&[0x01, 0x03, 0x10, 0x02]);
    result.unwrap();
    assert_eq!(sent(&actions)[9..].to_vec(), vec![0x03, 0x11, 0x03, 0xFF]);
    assert_eq!(actions.last(), Some(&Action::Close));
}

#[test]
fn each_error_has_a_kind_a_code_and_a_clear_message() {
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"GET /".to_vec(), "unknown_magic", "unknown magic byte 0x47"),
        (vec![0x01, 0x03, 0x10, 0x05, 0x77], "unknown_magic", "0x77"),
        (vec![0x01, 0x03, 0x10, 0x09], "unknown_service", "unknown service 0x09"),
        (vec![0x01, 0x03, 0x12, 0x00], "unknown_service", "0x00"),
        (vec![0x01, 0x03, 0x05, 0x02], "unsupported_version", "version 2"),
        (vec![0x01, 0x03, 0x05, 0x00], "unsupported_version", "versions 1 to 1"),
        (vec![0x03], "unexpected_frame", "before HELLO"),
        (vec![0x01, 0x01], "unexpected_frame", "before STREAM_SETUP_COMPLETE"),
        (vec![0x01, 0x03, 0x10, 0x05, 0x10, 0x05], "unexpected_frame", "SERVICE_TYPE_REQUEST"),
        (vec![0x01, 0x03, 0x11, 0x00], "unexpected_frame", "only servers send it"),
        (vec![0x01, 0x03, 0x21], "unexpected_frame", "without a PAYLOAD_TYPE_INCOMING"),
        (vec![0x01, 0x03, 0x10, 0x05, 0x20, 0x01, 0x21], "malformed_frame", "PAYLOAD_SIZE_INCOMING"),
        (vec![0x01, 0x03, 0x10, 0x05, 0xFF, 0x01], "unexpected_frame", "after CLOSE"),
        (vec![0x01, 0x03, 0xFE, 0x01, 0x04, 0x01], "malformed_frame", "exceeds 1024"),
    ];
    for (bytes, kind, message) in cases {
        let (_, _, result) = server(&bytes);
        let error = result.expect_err(&format!("{bytes:02x?} must fail"));
        assert_eq!(error.kind(), kind, "{bytes:02x?}: {error}");
        assert!(error.to_string().contains(message), "{bytes:02x?}: {error:?} lacks {message:?}");
        let Frame::ProtocolError { code, reason } = Frame::protocol_error(&error) else { unreachable!() };
        assert_eq!((code, reason), (error.code(), error.to_string()));
    }
}

#[test]
fn a_message_before_binding_is_refused() {
    let mut bytes = BytesMut::from(&[0x01, 0x03][..]);
    Frame::Message { payload_type: 1, payload: Bytes::new() }.encode(&mut bytes);
    let (_, _, result) = server(&bytes);
    assert_eq!(
        result.unwrap_err(),
        WireError::UnexpectedFrame { frame: "MESSAGE", context: "before a service is bound" }
    );
}

#[test]
fn a_checksum_mismatch_is_detected() {
    let mut bytes = BytesMut::new();
    Frame::Message { payload_type: 1, payload: Bytes::from_static(b"payload") }.encode(&mut bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let error = Decoder::new(DEFAULT_MAX_PAYLOAD).decode(&mut bytes).unwrap_err();
    assert_eq!(error.kind(), "checksum_mismatch");
}

#[test]
fn an_oversized_message_is_refused_from_its_size_prelude_alone() {
    let mut decoder = Decoder::new(1024);
    let mut header = BytesMut::from(&[0x20, 0x01, 0x22][..]);
    header.put_u64(1025);
    let error = decoder.decode(&mut header).unwrap_err();
    assert_eq!(error, WireError::PayloadTooLarge { size: 1025, max: 1024 });
    assert_eq!(error.to_string(), "payload of 1025 bytes exceeds the maximum of 1024 bytes");
    // Exactly the maximum is fine.
    let mut ok = BytesMut::new();
    Frame::Message { payload_type: 1, payload: Bytes::from(vec![7u8; 1024]) }.encode(&mut ok);
    assert!(Decoder::new(1024).decode(&mut ok).unwrap().is_some());
}

#[test]
fn a_stream_cut_at_any_point_inside_a_frame_is_truncated() {
    let bytes = encode_all(&every_frame());
    let mut boundaries = vec![0];
    for frame in every_frame() {
        let mut one = BytesMut::new();
        frame.encode(&mut one);
        boundaries.push(boundaries.last().unwrap() + one.len());
    }
    for cut in 0..=bytes.len() {
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut buf = BytesMut::from(&bytes[..cut]);
        let result = loop {
            match decoder.decode_eof(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if boundaries.contains(&cut) {
            assert_eq!(result, Ok(()), "cut at frame boundary {cut}");
        } else {
            assert_eq!(result, Err(WireError::Truncated), "cut at {cut}");
        }
    }
}

#[test]
fn mid_frame_is_reported_for_the_stall_timeout() {
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::from(&[0x02, 0, 0][..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert!(decoder.is_mid_frame());
    buf.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Frame::ResponseStreamId(1)));
    assert!(!decoder.is_mid_frame());
}

#[test]
fn a_failed_decoder_stays_failed() {
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    assert!(decoder.decode(&mut BytesMut::from(&[0x99][..])).is_err());
    assert_eq!(decoder.decode(&mut BytesMut::from(&[0x01][..])), Err(WireError::UnknownMagic(0x99)));
}

#[test]
fn long_error_reasons_are_cut_on_a_character_boundary() {
    let frame = Frame::application_error("é".repeat(MAX_ERROR_REASON));
    let Frame::ProtocolError { reason, .. } = &frame else { unreachable!() };
    assert!(reason.len() <= MAX_ERROR_REASON);
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    assert_eq!(Decoder::new(DEFAULT_MAX_PAYLOAD).decode(&mut out).unwrap(), Some(frame));
}

#[test]
fn the_client_reports_refusals_errors_and_messages() {
    let mut client = ClientSession::new();
    let mut events = Vec::new();
    let mut reply = encode_all(&[
        Frame::ResponseStreamId(8),
        Frame::StreamSetupComplete,
        Frame::ServiceTypeResponse(ServiceTypeStatus::UnavailableRetryable as u8),
        Frame::Close,
    ]);
    client.receive(&mut reply, &mut events).unwrap();
    assert_eq!(events, vec![ClientEvent::Refused(ServiceTypeStatus::UnavailableRetryable), ClientEvent::Closed]);

    let mut client = ClientSession::new();
    let mut events = Vec::new();
    let mut reply = encode_all(&[
        Frame::ResponseStreamId(8),
        Frame::StreamSetupComplete,
        Frame::ServiceTypeResponse(0),
        Frame::Message { payload_type: 2, payload: Bytes::from_static(b"x") },
        Frame::ProtocolError { code: 9, reason: "stalled".into() },
        Frame::Close,
    ]);
    client.receive(&mut reply, &mut events).unwrap();
    assert_eq!(
        events,
        vec![
            ClientEvent::Ready { response_stream_id: 8, server_version: None },
            ClientEvent::Message { payload_type: 2, payload: Bytes::from_static(b"x") },
            ClientEvent::ProtocolError { code: 9, reason: "stalled".into() },
            ClientEvent::Closed,
        ]
    );

    // A message before the service is bound is a server bug the client refuses.
    let mut client = ClientSession::new();
    let mut reply = encode_all(&[Frame::Message { payload_type: 2, payload: Bytes::new() }]);
    assert_eq!(client.receive(&mut reply, &mut Vec::new()).unwrap_err().kind(), "unexpected_frame");
}

#[test]
fn a_header_claiming_a_large_payload_costs_no_memory_until_the_bytes_arrive() {
    let size = 16usize << 20;
    let mut header = BytesMut::new();
    Frame::Message { payload_type: 1, payload: Bytes::from(vec![0u8; size]) }.encode(&mut header);
    header.truncate(MESSAGE_HEADER_LEN);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&header);
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    assert_eq!(decoder.payload_remaining(0), None);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert!(buf.capacity() < 4096, "the decoder reserved {} bytes on a header's word", buf.capacity());
    assert_eq!(decoder.payload_remaining(buf.len()), Some(size));
    buf.extend_from_slice(&[0u8; 100]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert_eq!(decoder.payload_remaining(buf.len()), Some(size - 100));
}
