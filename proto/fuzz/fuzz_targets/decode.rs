//! Feeds arbitrary bytes to the PWP decoder and to a server session.
//! Run: `cd proto/fuzz && cargo +nightly fuzz run decode`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pleiades_proto::wire::{
    Decoder, ServerSession, Service, ServiceDirectory, ServiceHealth, ServiceTypeStatus, SessionConfig,
};

struct AllReady;

impl ServiceDirectory for AllReady {
    fn service_type_status(&self, _: Service) -> ServiceTypeStatus {
        ServiceTypeStatus::Ready
    }
    fn service_health(&self, _: Service) -> ServiceHealth {
        ServiceHealth::Healthy
    }
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decoder.decode_eof(&mut buf) {}

    // The first byte picks a chunk size, so the session sees the input in pieces.
    let Some((&chunk, rest)) = data.split_first() else { return };
    let mut session = ServerSession::new(0, SessionConfig::new(1 << 16));
    let mut actions = Vec::new();
    let mut buf = BytesMut::new();
    for piece in rest.chunks(usize::from(chunk).max(1)) {
        buf.extend_from_slice(piece);
        if session.receive(&mut buf, &AllReady, &mut actions).is_err() {
            return;
        }
        actions.clear();
    }
    let _ = session.receive_eof(&mut buf, &AllReady, &mut actions);
});
