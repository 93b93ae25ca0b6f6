//! Property tests of the PWP codec: any frame sequence round-trips in any chunking, and no byte
//! sequence makes the decoder or a session panic.

use bytes::{Bytes, BytesMut};
use pleiades_proto::wire::{
    Decoder, Frame, ServerSession, Service, ServiceDirectory, ServiceHealth, ServiceTypeStatus, SessionConfig,
    DEFAULT_MAX_PAYLOAD, MAX_ERROR_REASON,
};
use proptest::prelude::*;

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        Just(Frame::Hello),
        any::<u64>().prop_map(Frame::ResponseStreamId),
        Just(Frame::StreamSetupComplete),
        any::<u8>().prop_map(Frame::ServerVersionRequest),
        any::<u8>().prop_map(Frame::ServerVersionResponse),
        any::<u8>().prop_map(Frame::ServiceTypeRequest),
        any::<u8>().prop_map(Frame::ServiceTypeResponse),
        any::<u8>().prop_map(Frame::ServiceStatusRequest),
        any::<u8>().prop_map(Frame::ServiceStatusResponse),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(payload_type, payload)| Frame::Message { payload_type, payload: Bytes::from(payload) }),
        any::<u64>().prop_map(Frame::LatencyTestStart),
        any::<u64>().prop_map(Frame::LatencyTestStop),
        Just(Frame::Heartbeat),
        any::<u8>().prop_map(Frame::HeartbeatFrequency),
        (any::<u8>(), "\\PC{0,64}").prop_map(|(code, reason)| Frame::ProtocolError { code, reason }),
        Just(Frame::Close),
    ]
}

struct AllReady;

impl ServiceDirectory for AllReady {
    fn service_type_status(&self, _: Service) -> ServiceTypeStatus {
        ServiceTypeStatus::Ready
    }
    fn service_health(&self, _: Service) -> ServiceHealth {
        ServiceHealth::Healthy
    }
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(frame(), 0..40),
        chunk in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoder.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn garbage_never_panics_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0u64..4096) {
        let mut decoder = Decoder::new(max);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match decoder.decode_eof(&mut buf) {
                Ok(Some(Frame::Message { payload, .. })) => prop_assert!(payload.len() as u64 <= max),
                Ok(Some(Frame::ProtocolError { reason, .. })) => prop_assert!(reason.len() <= MAX_ERROR_REASON),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn garbage_never_panics_a_session(prefix in any::<bool>(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut session = ServerSession::new(0, SessionConfig::new(1024));
        let mut buf = BytesMut::new();
        if prefix {
            buf.extend_from_slice(&[0x01, 0x03, 0x10, 0x05]);
        }
        buf.extend_from_slice(&bytes);
        let mut actions = Vec::new();
        if session.receive(&mut buf, &AllReady, &mut actions).is_ok() {
            let _ = session.receive_eof(&mut buf, &AllReady, &mut actions);
        }
    }
}
