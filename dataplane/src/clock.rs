//! Hybrid logical clock with CockroachDB semantics.

/// A hybrid-logical-clock timestamp: physical wall time in nanoseconds since the Unix epoch plus
/// a logical counter that orders events within the same wall time. Ordered by (wall, logical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub wall_nanos: u64,
    pub logical: u32,
}

impl Timestamp {
    pub const MIN: Timestamp = Timestamp { wall_nanos: 0, logical: 0 };
    pub const MAX: Timestamp = Timestamp { wall_nanos: u64::MAX, logical: u32::MAX };
    /// Size of [`Timestamp::to_be_bytes`].
    pub const ENCODED_LEN: usize = 12;

    pub const fn new(wall_nanos: u64, logical: u32) -> Self {
        Timestamp { wall_nanos, logical }
    }

    /// Big-endian (wall, logical): byte order equals timestamp order.
    pub fn to_be_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.wall_nanos.to_be_bytes());
        out[8..].copy_from_slice(&self.logical.to_be_bytes());
        out
    }

    pub fn from_be_bytes(bytes: [u8; 12]) -> Self {
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&bytes[..8]);
        let mut logical = [0u8; 4];
        logical.copy_from_slice(&bytes[8..]);
        Timestamp { wall_nanos: u64::from_be_bytes(wall), logical: u32::from_be_bytes(logical) }
    }
}
