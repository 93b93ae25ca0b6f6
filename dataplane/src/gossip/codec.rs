//! The gossip state machine's messages as protobuf (`pleiades.v1.Gossip*`), with every field a
//! peer sends checked: an envelope without a message, an update without a kind, a node id of
//! 0, an address that is no `host:port`, or more updates or sync entries than allowed is a clear
//! error, never a panic.

use pleiades_proto::v1;
use prost::Message as _;

use super::events::{Cre, CreKind, Tags};
use super::swim::{Envelope, Message, Update};
use super::vivaldi::Coordinate;

/// Most updates piggybacked on one envelope.
pub const MAX_UPDATES: usize = 64;
/// Most entries in one sync: each member's state and its tags (a constellation larger than
/// this syncs in several rounds).
pub const MAX_SYNC_MEMBERS: usize = 50_000;
/// Longest `host:port` accepted.
pub const MAX_ADDR_LEN: usize = 255;
/// Most coordinate dimensions accepted (Vivaldi itself checks the exact count and finiteness).
pub const MAX_DIMENSIONS: usize = 16;
/// Tags per member, and the longest key and value.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_KEY: usize = 64;
pub const MAX_TAG_VALUE: usize = 256;
/// All keys and values of one member's tags together, so a tag event fits a datagram.
pub const MAX_TAGS_BYTES: usize = 384;
/// Longest query name, and the largest query payload (a query rides a datagram) and answer
/// (sent directly, on a stream when large).
pub const MAX_QUERY_NAME: usize = 64;
pub const MAX_QUERY_PAYLOAD: usize = 256;
pub const MAX_ANSWER_PAYLOAD: usize = 16 * 1024;
/// Incarnations and Lamport times at or above this are refused: no honest node gets there, and
/// the arithmetic on them must never overflow.
pub const MAX_COUNTER: u64 = 1 << 62;
/// Longest query deadline.
pub const MAX_QUERY_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed gossip message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("gossip envelope has no message")]
    NoMessage,
    #[error("gossip update has no kind")]
    NoKind,
    #[error("node id 0 in a gossip message")]
    ZeroNodeId,
    #[error("address {0:?} is not host:port (at most 255 bytes)")]
    Addr(String),
    #[error("{what}: {count} entries, at most {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("gossip event has no kind")]
    NoEventKind,
    #[error("tag {key:?}: keys are 1 to 64 bytes, values at most 256")]
    Tag { key: String },
    #[error("query name {0:?} is not 1 to 64 bytes")]
    QueryName(String),
    #[error("query timeout {0} ms is not 1 to 60000")]
    QueryTimeout(u64),
    #[error("{what} {value} is implausibly large")]
    Counter { what: &'static str, value: u64 },
}

fn check_counter(what: &'static str, value: u64) -> Result<u64, CodecError> {
    if value >= MAX_COUNTER {
        Err(CodecError::Counter { what, value })
    } else {
        Ok(value)
    }
}

fn check_addr(addr: String) -> Result<String, CodecError> {
    let valid = addr.len() <= MAX_ADDR_LEN
        && addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(addr)
    } else {
        Err(CodecError::Addr(addr))
    }
}

fn check_id(id: u64) -> Result<u64, CodecError> {
    if id == 0 {
        Err(CodecError::ZeroNodeId)
    } else {
        Ok(id)
    }
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), CodecError> {
    if count > max {
        Err(CodecError::TooMany { what, count, max })
    } else {
        Ok(())
    }
}

/// Checks tags against the codec's limits, less `reserved` tags and `reserved_bytes` left for
/// tags the node adds itself.
pub fn check_tag_limits<'a>(
    tags: impl ExactSizeIterator<Item = (&'a String, &'a String)> + Clone,
    reserved: usize,
    reserved_bytes: usize,
) -> Result<(), CodecError> {
    check_count("tags", tags.len(), MAX_TAGS - reserved)?;
    check_count("tag bytes", tags.clone().map(|(k, v)| k.len() + v.len()).sum(), MAX_TAGS_BYTES - reserved_bytes)?;
    for (key, value) in tags {
        if key.is_empty() || key.len() > MAX_TAG_KEY || value.len() > MAX_TAG_VALUE {
            return Err(CodecError::Tag { key: key.chars().take(MAX_TAG_KEY).collect() });
        }
    }
    Ok(())
}

/// Checks a query's name, payload size and deadline.
pub fn check_query(name: &str, payload_len: usize, timeout_ms: u64) -> Result<(), CodecError> {
    if name.is_empty() || name.len() > MAX_QUERY_NAME {
        return Err(CodecError::QueryName(name.chars().take(MAX_QUERY_NAME).collect()));
    }
    if timeout_ms == 0 || timeout_ms > MAX_QUERY_TIMEOUT_MS {
        return Err(CodecError::QueryTimeout(timeout_ms));
    }
    check_count("query payload bytes", payload_len, MAX_QUERY_PAYLOAD)
}

fn check_tags(tags: std::collections::HashMap<String, String>) -> Result<Tags, CodecError> {
    check_tag_limits(tags.iter(), 0, 0)?;
    Ok(tags.into_iter().collect())
}

fn tags_to_proto(tags: &Tags) -> v1::GossipTags {
    v1::GossipTags { tags: tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect() }
}

fn cre_to_proto(cre: &Cre) -> v1::GossipCre {
    use v1::gossip_cre::Kind;
    let kind = match &cre.kind {
        CreKind::Join { tags } => Kind::Join(tags_to_proto(tags)),
        CreKind::Leave => Kind::Leave(v1::GossipLeave {}),
        CreKind::Update { tags } => Kind::Update(tags_to_proto(tags)),
        CreKind::Query { name, payload, reply_to, timeout } => Kind::Query(v1::GossipQuery {
            name: name.clone(),
            payload: payload.clone(),
            reply_to: reply_to.clone(),
            timeout_ms: *timeout,
        }),
    };
    v1::GossipCre { origin: cre.origin, ltime: cre.ltime, ack: cre.ack, kind: Some(kind) }
}

fn cre_from_proto(cre: v1::GossipCre) -> Result<Cre, CodecError> {
    use v1::gossip_cre::Kind;
    let kind = match cre.kind.ok_or(CodecError::NoEventKind)? {
        Kind::Join(t) => CreKind::Join { tags: check_tags(t.tags)? },
        Kind::Leave(_) => CreKind::Leave,
        Kind::Update(t) => CreKind::Update { tags: check_tags(t.tags)? },
        Kind::Query(q) => {
            check_query(&q.name, q.payload.len(), q.timeout_ms)?;
            CreKind::Query {
                name: q.name,
                payload: q.payload,
                reply_to: check_addr(q.reply_to)?,
                timeout: q.timeout_ms,
            }
        }
    };
    Ok(Cre { origin: check_id(cre.origin)?, ltime: check_counter("lamport time", cre.ltime)?, ack: cre.ack, kind })
}

fn coordinate_to_proto(c: &Coordinate) -> v1::GossipCoordinate {
    v1::GossipCoordinate { vec: c.vec.clone(), error: c.error, adjustment: c.adjustment, height: c.height }
}

fn coordinate_from_proto(c: Option<v1::GossipCoordinate>) -> Result<Option<Coordinate>, CodecError> {
    let Some(c) = c else { return Ok(None) };
    check_count("coordinate dimensions", c.vec.len(), MAX_DIMENSIONS)?;
    Ok(Some(Coordinate { vec: c.vec, error: c.error, adjustment: c.adjustment, height: c.height }))
}

fn update_to_proto(update: &Update) -> v1::GossipUpdate {
    use v1::gossip_update::Kind;
    let kind = match update.clone() {
        Update::Alive { id, incarnation, addr } => Kind::Alive(v1::GossipAlive { node_id: id, incarnation, addr }),
        Update::Suspect { id, incarnation, from } => {
            Kind::Suspect(v1::GossipSuspect { node_id: id, incarnation, from })
        }
        Update::Dead { id, incarnation, from } => Kind::Dead(v1::GossipDead { node_id: id, incarnation, from }),
        Update::Cre(cre) => Kind::Cre(cre_to_proto(&cre)),
    };
    v1::GossipUpdate { kind: Some(kind) }
}

/// What piggybacking `update` adds to an envelope's encoded size.
pub fn piggybacked_len(update: &Update) -> usize {
    prost::encoding::message::encoded_len(9, &update_to_proto(update))
}

fn update_from_proto(update: v1::GossipUpdate) -> Result<Update, CodecError> {
    use v1::gossip_update::Kind;
    Ok(match update.kind.ok_or(CodecError::NoKind)? {
        Kind::Alive(a) => Update::Alive {
            id: check_id(a.node_id)?,
            incarnation: check_counter("incarnation", a.incarnation)?,
            addr: check_addr(a.addr)?,
        },
        Kind::Suspect(s) => Update::Suspect {
            id: check_id(s.node_id)?,
            incarnation: check_counter("incarnation", s.incarnation)?,
            from: check_id(s.from)?,
        },
        Kind::Dead(d) => Update::Dead {
            id: check_id(d.node_id)?,
            incarnation: check_counter("incarnation", d.incarnation)?,
            from: check_id(d.from)?,
        },
        Kind::Cre(cre) => Update::Cre(cre_from_proto(cre)?),
    })
}

pub fn to_proto(envelope: &Envelope) -> v1::GossipEnvelope {
    use v1::gossip_envelope::Message as M;
    let message = match &envelope.message {
        Message::Ping { seq, target } => M::Ping(v1::GossipPing { seq: *seq, target: *target }),
        Message::PingReq { seq, target, target_addr } => {
            M::PingReq(v1::GossipPingReq { seq: *seq, target: *target, target_addr: target_addr.clone() })
        }
        Message::Ack { seq, coordinate, wall_nanos } => M::Ack(v1::GossipAck {
            seq: *seq,
            coordinate: coordinate.as_ref().map(coordinate_to_proto),
            wall_nanos: wall_nanos.unwrap_or(0),
        }),
        Message::Nack { seq } => M::Nack(v1::GossipNack { seq: *seq }),
        Message::Gossip => M::Gossip(v1::GossipOnly {}),
        Message::Sync { members, reply } => {
            M::Sync(v1::GossipSync { members: members.iter().map(update_to_proto).collect(), reply: *reply })
        }
        Message::CreAck { ltime } => M::CreAck(v1::GossipCreAck { ltime: *ltime }),
        Message::Answer { ltime, payload, coordinate } => M::Answer(v1::GossipAnswer {
            ltime: *ltime,
            payload: payload.clone(),
            coordinate: coordinate.as_ref().map(coordinate_to_proto),
        }),
    };
    v1::GossipEnvelope {
        from: envelope.from,
        from_addr: envelope.from_addr.clone(),
        message: Some(message),
        updates: envelope.updates.iter().map(update_to_proto).collect(),
    }
}

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    to_proto(envelope).encode_to_vec()
}

pub fn encoded_len(envelope: &Envelope) -> usize {
    to_proto(envelope).encoded_len()
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    use v1::gossip_envelope::Message as M;
    let proto = v1::GossipEnvelope::decode(bytes)?;
    check_count("updates", proto.updates.len(), MAX_UPDATES)?;
    let message = match proto.message.ok_or(CodecError::NoMessage)? {
        M::Ping(p) => Message::Ping { seq: p.seq, target: check_id(p.target)? },
        M::PingReq(p) => {
            Message::PingReq { seq: p.seq, target: check_id(p.target)?, target_addr: check_addr(p.target_addr)? }
        }
        M::Ack(a) => Message::Ack {
            seq: a.seq,
            coordinate: coordinate_from_proto(a.coordinate)?,
            wall_nanos: (a.wall_nanos != 0).then_some(a.wall_nanos),
        },
        M::Nack(n) => Message::Nack { seq: n.seq },
        M::Gossip(_) => Message::Gossip,
        M::Sync(s) => {
            check_count("sync members", s.members.len(), MAX_SYNC_MEMBERS)?;
            let members = s.members.into_iter().map(update_from_proto).collect::<Result<_, _>>()?;
            Message::Sync { members, reply: s.reply }
        }
        M::CreAck(a) => Message::CreAck { ltime: a.ltime },
        M::Answer(a) => {
            check_count("answer payload bytes", a.payload.len(), MAX_ANSWER_PAYLOAD)?;
            Message::Answer { ltime: a.ltime, payload: a.payload, coordinate: coordinate_from_proto(a.coordinate)? }
        }
    };
    Ok(Envelope {
        from: check_id(proto.from)?,
        from_addr: check_addr(proto.from_addr)?,
        message,
        updates: proto.updates.into_iter().map(update_from_proto).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(message: Message) -> Envelope {
        Envelope {
            from: 7,
            from_addr: "node-7.peers.db.svc:7400".into(),
            message,
            updates: vec![
                Update::Alive { id: 3, incarnation: 2, addr: "10.0.0.3:7400".into() },
                Update::Suspect { id: 4, incarnation: 1, from: 7 },
                Update::Dead { id: 5, incarnation: 9, from: 5 },
                Update::Cre(Cre {
                    origin: 3,
                    ltime: 12,
                    ack: true,
                    kind: CreKind::Update { tags: Tags::from([("zone".into(), "eu-1a".into())]) },
                }),
                Update::Cre(Cre { origin: 5, ltime: 13, ack: false, kind: CreKind::Leave }),
                Update::Cre(Cre {
                    origin: 7,
                    ltime: 14,
                    ack: true,
                    kind: CreKind::Query {
                        name: "capacity".into(),
                        payload: vec![1, 2],
                        reply_to: "10.0.0.7:7400".into(),
                        timeout: 2_000,
                    },
                }),
            ],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let sync = Message::Sync { members: envelope(Message::Gossip).updates, reply: true };
        for message in [
            Message::Ping { seq: 1, target: 3 },
            Message::PingReq { seq: 2, target: 3, target_addr: "[::1]:7400".into() },
            Message::Ack { seq: u32::MAX, coordinate: None, wall_nanos: None },
            Message::Ack {
                seq: 3,
                coordinate: Some(Coordinate { vec: vec![0.001; 8], error: 0.4, adjustment: -0.0002, height: 0.00001 }),
                wall_nanos: Some(1_764_000_000_123_456_789),
            },
            Message::Nack { seq: 4 },
            Message::Gossip,
            sync,
            Message::CreAck { ltime: 12 },
            Message::Answer { ltime: 14, payload: b"free=3".to_vec(), coordinate: None },
        ] {
            let original = envelope(message);
            assert_eq!(decode(&encode(&original)).unwrap(), original);
            assert_eq!(encode(&original).len(), encoded_len(&original));
        }
    }

    #[test]
    fn malformed_messages_are_clear_errors() {
        let mut proto = to_proto(&envelope(Message::Gossip));
        proto.message = None;
        assert_eq!(decode(&proto.encode_to_vec()), Err(CodecError::NoMessage));

        let mut proto = to_proto(&envelope(Message::Gossip));
        proto.updates.push(v1::GossipUpdate { kind: None });
        assert_eq!(decode(&proto.encode_to_vec()), Err(CodecError::NoKind));

        let mut proto = to_proto(&envelope(Message::Ping { seq: 1, target: 0 }));
        assert_eq!(decode(&proto.encode_to_vec()), Err(CodecError::ZeroNodeId));
        proto.from_addr = "no-port".into();
        proto.message = Some(v1::gossip_envelope::Message::Gossip(v1::GossipOnly {}));
        assert_eq!(decode(&proto.encode_to_vec()), Err(CodecError::Addr("no-port".into())));

        let mut proto = to_proto(&envelope(Message::Gossip));
        proto.updates = vec![proto.updates[0].clone(); MAX_UPDATES + 1];
        assert!(matches!(decode(&proto.encode_to_vec()), Err(CodecError::TooMany { what: "updates", .. })));

        let mut proto = to_proto(&envelope(Message::Ack { seq: 1, coordinate: None, wall_nanos: None }));
        proto.message = Some(v1::gossip_envelope::Message::Ack(v1::GossipAck {
            seq: 1,
            coordinate: Some(v1::GossipCoordinate { vec: vec![0.0; 1000], ..Default::default() }),
            wall_nanos: 0,
        }));
        assert!(matches!(
            decode(&proto.encode_to_vec()),
            Err(CodecError::TooMany { what: "coordinate dimensions", .. })
        ));

        let event = |kind| {
            let mut proto = to_proto(&envelope(Message::Gossip));
            proto.updates = vec![v1::GossipUpdate {
                kind: Some(v1::gossip_update::Kind::Cre(v1::GossipCre { origin: 3, ltime: 1, ack: false, kind })),
            }];
            decode(&proto.encode_to_vec())
        };
        use v1::gossip_cre::Kind;
        assert_eq!(event(None), Err(CodecError::NoEventKind));
        let tags = |key: &str, value: &str| v1::GossipTags { tags: [(key.to_string(), value.to_string())].into() };
        assert!(matches!(event(Some(Kind::Update(tags("", "x")))), Err(CodecError::Tag { .. })));
        assert!(matches!(event(Some(Kind::Join(tags("zone", &"x".repeat(300))))), Err(CodecError::Tag { .. })));
        let query = |name: &str, timeout_ms| {
            Some(Kind::Query(v1::GossipQuery {
                name: name.into(),
                payload: vec![],
                reply_to: "h:1".into(),
                timeout_ms,
            }))
        };
        assert!(matches!(event(query("", 100)), Err(CodecError::QueryName(_))));
        assert_eq!(event(query("capacity", 0)), Err(CodecError::QueryTimeout(0)));
        assert_eq!(event(query("capacity", 3_600_000)), Err(CodecError::QueryTimeout(3_600_000)));
        assert!(event(query("capacity", 100)).is_ok());
        let mut wide = std::collections::HashMap::new();
        for i in 0..20 {
            wide.insert(format!("key-{i}"), "v".repeat(30));
        }
        assert!(matches!(
            event(Some(Kind::Update(v1::GossipTags { tags: wide }))),
            Err(CodecError::TooMany { what: "tag bytes", .. })
        ));
        let mut proto = to_proto(&envelope(Message::Gossip));
        proto.updates = vec![update_to_proto(&Update::Suspect { id: 3, incarnation: u64::MAX, from: 4 })];
        assert!(matches!(decode(&proto.encode_to_vec()), Err(CodecError::Counter { what: "incarnation", .. })));
        proto.updates =
            vec![update_to_proto(&Update::Cre(Cre { origin: 3, ltime: u64::MAX, ack: false, kind: CreKind::Leave }))];
        assert!(matches!(decode(&proto.encode_to_vec()), Err(CodecError::Counter { what: "lamport time", .. })));

        assert!(matches!(decode(&[0xff, 0xff, 0xff]), Err(CodecError::Decode(_))));
        for cut in 0..encode(&envelope(Message::Nack { seq: 9 })).len() {
            let bytes = encode(&envelope(Message::Nack { seq: 9 }));
            let _ = decode(&bytes[..cut]);
        }
    }
}
