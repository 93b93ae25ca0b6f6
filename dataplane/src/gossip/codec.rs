//! The gossip state machine's messages as protobuf (`pleiades.v1.Gossip*`), with every field a
//! peer sends checked: an envelope without a message, an update without a kind, a node id of
//! 0, an address that is no `host:port`, or more updates or sync entries than allowed is a clear
//! error, never a panic.

use pleiades_proto::v1;
use prost::Message as _;

use super::swim::{Envelope, Message, Update};
use super::vivaldi::Coordinate;

/// Most updates piggybacked on one envelope.
pub const MAX_UPDATES: usize = 64;
/// Most members in one sync (a constellation larger than this syncs in several rounds).
pub const MAX_SYNC_MEMBERS: usize = 20_000;
/// Longest `host:port` accepted.
pub const MAX_ADDR_LEN: usize = 255;
/// Most coordinate dimensions accepted (Vivaldi itself checks the exact count and finiteness).
pub const MAX_DIMENSIONS: usize = 16;

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

fn update_to_proto(update: &Update) -> v1::GossipUpdate {
    use v1::gossip_update::Kind;
    let kind = match update.clone() {
        Update::Alive { id, incarnation, addr } => Kind::Alive(v1::GossipAlive { node_id: id, incarnation, addr }),
        Update::Suspect { id, incarnation, from } => {
            Kind::Suspect(v1::GossipSuspect { node_id: id, incarnation, from })
        }
        Update::Dead { id, incarnation, from } => Kind::Dead(v1::GossipDead { node_id: id, incarnation, from }),
    };
    v1::GossipUpdate { kind: Some(kind) }
}

fn update_from_proto(update: v1::GossipUpdate) -> Result<Update, CodecError> {
    use v1::gossip_update::Kind;
    Ok(match update.kind.ok_or(CodecError::NoKind)? {
        Kind::Alive(a) => {
            Update::Alive { id: check_id(a.node_id)?, incarnation: a.incarnation, addr: check_addr(a.addr)? }
        }
        Kind::Suspect(s) => {
            Update::Suspect { id: check_id(s.node_id)?, incarnation: s.incarnation, from: check_id(s.from)? }
        }
        Kind::Dead(d) => Update::Dead { id: check_id(d.node_id)?, incarnation: d.incarnation, from: check_id(d.from)? },
    })
}

pub fn to_proto(envelope: &Envelope) -> v1::GossipEnvelope {
    use v1::gossip_envelope::Message as M;
    let message = match &envelope.message {
        Message::Ping { seq, target } => M::Ping(v1::GossipPing { seq: *seq, target: *target }),
        Message::PingReq { seq, target, target_addr } => {
            M::PingReq(v1::GossipPingReq { seq: *seq, target: *target, target_addr: target_addr.clone() })
        }
        Message::Ack { seq, coordinate } => M::Ack(v1::GossipAck {
            seq: *seq,
            coordinate: coordinate.as_ref().map(|c| v1::GossipCoordinate {
                vec: c.vec.clone(),
                error: c.error,
                adjustment: c.adjustment,
                height: c.height,
            }),
        }),
        Message::Nack { seq } => M::Nack(v1::GossipNack { seq: *seq }),
        Message::Gossip => M::Gossip(v1::GossipOnly {}),
        Message::Sync { members, reply } => {
            M::Sync(v1::GossipSync { members: members.iter().map(update_to_proto).collect(), reply: *reply })
        }
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
        M::Ack(a) => {
            let coordinate = match a.coordinate {
                Some(c) => {
                    check_count("coordinate dimensions", c.vec.len(), MAX_DIMENSIONS)?;
                    Some(Coordinate { vec: c.vec, error: c.error, adjustment: c.adjustment, height: c.height })
                }
                None => None,
            };
            Message::Ack { seq: a.seq, coordinate }
        }
        M::Nack(n) => Message::Nack { seq: n.seq },
        M::Gossip(_) => Message::Gossip,
        M::Sync(s) => {
            check_count("sync members", s.members.len(), MAX_SYNC_MEMBERS)?;
            let members = s.members.into_iter().map(update_from_proto).collect::<Result<_, _>>()?;
            Message::Sync { members, reply: s.reply }
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
            ],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let sync = Message::Sync { members: envelope(Message::Gossip).updates, reply: true };
        for message in [
            Message::Ping { seq: 1, target: 3 },
            Message::PingReq { seq: 2, target: 3, target_addr: "[::1]:7400".into() },
            Message::Ack { seq: u32::MAX, coordinate: None },
            Message::Ack {
                seq: 3,
                coordinate: Some(Coordinate { vec: vec![0.001; 8], error: 0.4, adjustment: -0.0002, height: 0.00001 }),
            },
            Message::Nack { seq: 4 },
            Message::Gossip,
            sync,
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

        let mut proto = to_proto(&envelope(Message::Ack { seq: 1, coordinate: None }));
        proto.message = Some(v1::gossip_envelope::Message::Ack(v1::GossipAck {
            seq: 1,
            coordinate: Some(v1::GossipCoordinate { vec: vec![0.0; 1000], ..Default::default() }),
        }));
        assert!(matches!(
            decode(&proto.encode_to_vec()),
            Err(CodecError::TooMany { what: "coordinate dimensions", .. })
        ));

        assert!(matches!(decode(&[0xff, 0xff, 0xff]), Err(CodecError::Decode(_))));
        for cut in 0..encode(&envelope(Message::Nack { seq: 9 })).len() {
            let bytes = encode(&envelope(Message::Nack { seq: 9 }));
            let _ = decode(&bytes[..cut]);
        }
    }
}
