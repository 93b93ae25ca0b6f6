//! QUIC transport (quinn) carrying the Pleiades Wire Protocol. The protocol itself is the sans-IO
//! codec in `pleiades_proto::wire`; this layer only moves bytes and enforces time limits.

pub mod budget;
pub mod inbound;
pub mod peer;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;

use crate::observe::{FrameLabels, Metrics};

/// Counts a frame in `pleiades_pwp_frames{direction, frame}`.
pub(crate) fn count_frame(metrics: &Metrics, direction: &'static str, frame: &'static str) {
    metrics.frames.get_or_create(&FrameLabels { direction, frame }).inc();
}
