//! Bad input on the wire against a running node: each case gets a clear PROTOCOL_ERROR and
//! CLOSE on its own stream, while the connection and the node go on serving other streams.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pleiades::transport::tls::QuicLimits;
use pleiades_proto::payload_type;
use pleiades_proto::v1::{kv_response, ErrorCode, HealthResponse, KvResponse};
use pleiades_proto::wire::{Decoder, Frame, DEFAULT_MAX_PAYLOAD};
use pleiades_tests::TestNode;
use prost::Message;

const SETUP_SYSTEM: [u8; 4] = [0x01, 0x03, 0x10, 0x05];
const SETUP_KV: [u8; 4] = [0x01, 0x03, 0x10, 0x03];

async fn connect(node: &TestNode) -> (quinn::Endpoint, quinn::Connection) {
    let config = node.client_config();
    let limits = QuicLimits { max_streams: 16, idle_timeout: Duration::from_secs(30) };
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        pleiades::client::quic_config(&config.ca_cert, config.identity.as_ref(), &limits).unwrap(),
    );
    let connection = endpoint.connect(node.quic, "localhost").unwrap().await.unwrap();
    (endpoint, connection)
}

fn decode_all(mut bytes: BytesMut) -> Vec<Frame> {
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut bytes).expect("the node must send valid PWP") {
        frames.push(frame);
    }
    assert!(bytes.is_empty(), "the node left a partial frame: {bytes:?}");
    frames
}

/// Sends `bytes` on a new stream (finishing our side when `finish`) and returns every frame the
/// node sends until it ends the stream.
async fn exchange(connection: &quinn::Connection, bytes: &[u8], finish: bool) -> Vec<Frame> {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let received = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(64 << 20))
        .await
        .expect("the node must end a bad stream")
        .unwrap();
    decode_all(BytesMut::from(&received[..]))
}

fn message(payload_type: u8, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    Frame::Message { payload_type, payload: bytes::Bytes::copy_from_slice(payload) }.encode(&mut out);
    out
}

/// The stream ended with PROTOCOL_ERROR whose reason contains `expected`, then CLOSE.
fn assert_protocol_error(frames: &[Frame], expected: &str) {
    match frames {
        [.., Frame::ProtocolError { reason, .. }, Frame::Close] => {
            assert!(reason.contains(expected), "reason {reason:?} does not mention {expected:?}")
        }
        other => panic!("expected PROTOCOL_ERROR({expected}) then CLOSE, got {other:?}"),
    }
}

/// A healthy request on a fresh stream of the same connection.
async fn still_serves(connection: &quinn::Connection) {
    let mut request = BytesMut::from(&SETUP_SYSTEM[..]);
    request.extend_from_slice(&message(payload_type::system::HEALTH_REQUEST, &[]));
    request.put_u8(0xFF);
    let frames = exchange(connection, &request, true).await;
    let health = frames
        .iter()
        .find_map(|f| match f {
            Frame::Message { payload_type: payload_type::system::HEALTH_RESPONSE, payload } => {
                Some(HealthResponse::decode(payload.clone()).unwrap())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no health response in {frames:?}"));
    assert_eq!(health.status, 1);
    assert!(matches!(frames.last(), Some(Frame::Close)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_18_byte_pipelined_setup() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let (_endpoint, connection) = connect(&node).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let stream_id = quinn::VarInt::from(send.id()).into_inner();
    // HELLO, STREAM_SETUP_COMPLETE, SERVER_VERSION_REQUEST(1), SERVICE_TYPE_REQUEST(system):
    // one write, nothing awaited.
    send.write_all(&[0x01, 0x03, 0x05, 0x01, 0x10, 0x05]).await.unwrap();
    let mut reply = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut reply)).await.unwrap().unwrap();
    let mut expected = vec![0x02];
    expected.extend_from_slice(&stream_id.to_be_bytes());
    expected.extend_from_slice(&[0x03, 0x06, 0x01, 0x11, 0x00]);
    assert_eq!(reply.to_vec(), expected);
    assert_eq!(6 + 14, 20, "the seed counts 18: it leaves out the server's 2-byte version answer");
    // The stream is bound to the system service and answers at once.
    send.write_all(&message(payload_type::system::HEALTH_REQUEST, &[])).await.unwrap();
    send.write_all(&[0xFF]).await.unwrap();
    send.finish().unwrap();
    let rest = recv.read_to_end(1 << 20).await.unwrap();
    let frames = decode_all(BytesMut::from(&rest[..]));
    assert!(matches!(&frames[..], [Frame::Message { payload_type: 0x04, .. }, Frame::Close]), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_costs_only_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--frame-timeout-ms", "500"]).unwrap();
    let (_endpoint, connection) = connect(&node).await;

    // Garbage (an HTTP request sent to the QUIC port's stream).
    let frames = exchange(&connection, b"GET / HTTP/1.1\r\n\r\n", true).await;
    assert_protocol_error(&frames, "0x47");
    still_serves(&connection).await;

    // An unknown magic byte after a good setup.
    let frames = exchange(&connection, &[0x01, 0x03, 0x10, 0x05, 0x77], true).await;
    assert_protocol_error(&frames, "0x77");
    still_serves(&connection).await;

    // An unknown service.
    let frames = exchange(&connection, &[0x01, 0x03, 0x10, 0x09], true).await;
    assert_protocol_error(&frames, "service");
    still_serves(&connection).await;

    // An unsupported protocol version: the node says what it speaks, then refuses.
    let frames = exchange(&connection, &[0x01, 0x03, 0x05, 0x02], true).await;
    assert!(frames.contains(&Frame::ServerVersionResponse(1)), "{frames:?}");
    assert_protocol_error(&frames, "version");
    still_serves(&connection).await;

    // A CRC-32C mismatch.
    let mut corrupt = BytesMut::from(&SETUP_SYSTEM[..]);
    let mut health = message(payload_type::system::HEALTH_REQUEST, b"\x00\x00");
    let last = health.len() - 1;
    health[last] ^= 0xFF;
    corrupt.extend_from_slice(&health);
    let frames = exchange(&connection, &corrupt, true).await;
    assert_protocol_error(&frames, "checksum");
    still_serves(&connection).await;

    // A size over the maximum is refused as soon as the size prelude arrives.
    let mut oversize = BytesMut::from(&SETUP_SYSTEM[..]);
    oversize.put_u8(0x20);
    oversize.put_u8(payload_type::system::HEALTH_REQUEST);
    oversize.put_u8(0x22);
    oversize.put_u64(DEFAULT_MAX_PAYLOAD + 1);
    let frames = exchange(&connection, &oversize, false).await;
    assert_protocol_error(&frames, "exceeds");
    still_serves(&connection).await;

    // A truncated payload: the client ends its side mid-message.
    let mut truncated = BytesMut::from(&SETUP_SYSTEM[..]);
    let full = message(payload_type::system::HEALTH_REQUEST, &[0u8; 100]);
    truncated.extend_from_slice(&full[..full.len() - 40]);
    let frames = exchange(&connection, &truncated, true).await;
    assert_protocol_error(&frames, "truncated");
    still_serves(&connection).await;

    // A stream that stalls mid-frame is closed after the frame timeout.
    let started = Instant::now();
    let frames = exchange(&connection, &truncated, false).await;
    assert_protocol_error(&frames, "whole within");
    assert!(started.elapsed() >= Duration::from_millis(450), "closed before the frame timeout");
    still_serves(&connection).await;

    // A trickle of one byte every 100 ms does not restart the frame timeout: it runs from the
    // frame's first byte.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&truncated[..truncated.len() - 50]).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for byte in &truncated[truncated.len() - 50..] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if send.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    };
    let answer = async { recv.read_to_end(1 << 20).await.unwrap_or_default() };
    let (_, answer) = tokio::join!(trickle, answer);
    assert_protocol_error(&decode_all(BytesMut::from(&answer[..])), "whole within");
    assert!(started.elapsed() < Duration::from_millis(2_000), "the trickle kept the frame open");
    still_serves(&connection).await;

    // A message before any service is bound.
    let mut unbound = BytesMut::from(&[0x01, 0x03][..]);
    unbound.extend_from_slice(&message(1, b""));
    let frames = exchange(&connection, &unbound, true).await;
    assert_protocol_error(&frames, "");
    still_serves(&connection).await;

    // A payload type the service does not know.
    let mut unknown_type = BytesMut::from(&SETUP_SYSTEM[..]);
    unknown_type.extend_from_slice(&message(0x7E, b""));
    let frames = exchange(&connection, &unknown_type, true).await;
    assert_protocol_error(&frames, "0x7e");
    still_serves(&connection).await;

    // A malformed KV request is answered with INVALID_ARGUMENT and the stream goes on.
    let mut malformed = BytesMut::from(&SETUP_KV[..]);
    malformed.extend_from_slice(&message(payload_type::kv::REQUEST, b"\xff\xff\xff\xff"));
    malformed.put_u8(0xFF);
    let frames = exchange(&connection, &malformed, true).await;
    let response = frames
        .iter()
        .find_map(|f| match f {
            Frame::Message { payload_type: payload_type::kv::RESPONSE, payload } => {
                KvResponse::decode(payload.clone()).ok()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no KV response in {frames:?}"));
    match response.result {
        Some(kv_response::Result::Error(e)) => {
            assert_eq!(e.code(), ErrorCode::InvalidArgument);
            assert!(e.message.contains("malformed KvRequest"), "{}", e.message);
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(matches!(frames.last(), Some(Frame::Close)), "{frames:?}");

    // The node is still whole: a fresh connection works and the errors were counted by kind.
    let client = node.client().await.unwrap();
    client.system().await.unwrap().health().await.unwrap();
    let (_, metrics) = node.http_get("/metrics").unwrap();
    for (kind, count) in [
        ("unknown_magic", 2),
        ("unknown_service", 1),
        ("unsupported_version", 1),
        ("checksum_mismatch", 1),
        ("payload_too_large", 1),
        ("truncated", 1),
        ("frame_timeout", 2),
        ("unexpected_frame", 1),
        ("unknown_payload_type", 1),
    ] {
        let line = format!("pleiades_pwp_errors_total{{kind=\"{kind}\"}} {count}");
        assert!(metrics.contains(&line), "{kind} not counted {count} times:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_misses_its_promised_heartbeats_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let (_endpoint, connection) = connect(&node).await;
    // Promise a heartbeat every second, then say nothing.
    let mut promise = BytesMut::from(&SETUP_SYSTEM[..]);
    Frame::HeartbeatFrequency(1).encode(&mut promise);
    let started = Instant::now();
    let frames = exchange(&connection, &promise, false).await;
    assert_protocol_error(&frames, "no heartbeat");
    assert!(started.elapsed() >= Duration::from_millis(2_900), "closed before three missed heartbeats");

    // Heartbeats keep a stream alive past that window.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&promise).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        send.write_all(&[0xE0]).await.unwrap();
    }
    let mut request = message(payload_type::system::HEALTH_REQUEST, &[]);
    request.put_u8(0xFF);
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    let frames = decode_all(BytesMut::from(&recv.read_to_end(1 << 20).await.unwrap()[..]));
    assert!(matches!(frames.as_slice(), [.., Frame::Message { payload_type: 0x04, .. }, Frame::Close]), "{frames:?}");
}
