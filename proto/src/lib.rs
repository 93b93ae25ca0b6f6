//! Pleiades wire contracts: the protobuf messages of every service and the sans-IO codec of the
//! Pleiades Wire Protocol (PWP). See `WIRE.md` beside this crate for the byte-level table.

pub mod certificate;
pub mod identity;
pub mod wire;

/// Generated protobuf messages (package `pleiades.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pleiades.v1.rs"));
}

/// PWP `PAYLOAD_TYPE_INCOMING` values, which are specific to each service.
pub mod payload_type {
    /// Any service's answer to a call its caller may not make: a `PermissionDenied`.
    pub const PERMISSION_DENIED: u8 = 0x7F;
    /// System service (0x05).
    pub mod system {
        pub const NODE_INFO_REQUEST: u8 = 0x01;
        pub const NODE_INFO_RESPONSE: u8 = 0x02;
        pub const HEALTH_REQUEST: u8 = 0x03;
        pub const HEALTH_RESPONSE: u8 = 0x04;
        pub const RANGE_STATUS_REQUEST: u8 = 0x05;
        pub const RANGE_STATUS_RESPONSE: u8 = 0x06;
        pub const DECOMMISSION_REQUEST: u8 = 0x07;
        pub const DECOMMISSION_RESPONSE: u8 = 0x08;
        pub const MEMBERS_REQUEST: u8 = 0x09;
        pub const MEMBERS_RESPONSE: u8 = 0x0A;
        pub const QUERY_REQUEST: u8 = 0x0B;
        pub const QUERY_RESPONSE: u8 = 0x0C;
        pub const RANGE_ADMIN_REQUEST: u8 = 0x0D;
        pub const RANGE_ADMIN_RESPONSE: u8 = 0x0E;
    }
    /// Gossip service (0x01). Small messages travel as QUIC datagrams (the service byte, then a
    /// `GossipEnvelope`); ones too large for a datagram use a stream of this service.
    pub mod gossip {
        pub const ENVELOPE: u8 = 0x01;
        pub const RECEIVED: u8 = 0x02;
    }
    /// Raft service (0x02).
    pub mod raft {
        pub const REQUEST: u8 = 0x01;
        pub const RESPONSE: u8 = 0x02;
    }
    /// Key-value service (0x03).
    pub mod kv {
        pub const REQUEST: u8 = 0x01;
        pub const RESPONSE: u8 = 0x02;
    }
}
