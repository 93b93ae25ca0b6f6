//! QUIC transport (quinn) carrying the Pleiades Wire Protocol. The protocol itself is the sans-IO
//! codec in `pleiades_proto::wire`; this layer only moves bytes and enforces time limits.

pub mod budget;
pub mod inbound;
pub mod peer;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;

use crate::observe::{FrameLabels, Metrics};

/// Socket buffers asked of the kernel for QUIC endpoints (it grants at most `net.core.rmem_max`
/// and `wmem_max`). With Linux's default of 208 KiB, bursts of answers at high concurrency
/// overflowed the receive buffer (22 to 26 datagrams dropped per 8 s at concurrency 64, each one
/// a QUIC loss and a retransmission later).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket for a quinn endpoint, bound to `addr`, with large socket buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As std's bind would leave it: an IPv6 endpoint serves IPv4 peers too where allowed.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked only means the kernel's limit applies.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on [`udp_socket`]: a server when `server` is given, else a client only.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, udp_socket(addr)?, runtime)
}

/// Counts a frame in `pleiades_pwp_frames{direction, frame}`.
pub(crate) fn count_frame(metrics: &Metrics, direction: &'static str, frame: &'static str) {
    metrics.frames.get_or_create(&FrameLabels { direction, frame }).inc();
}
