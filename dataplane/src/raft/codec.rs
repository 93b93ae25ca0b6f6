//! Protobuf forms of openraft's types. Everything decoded here came from a peer or from disk,
//! so every conversion checks what it needs and fails with a [`CodecError`], never a panic.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};
use pleiades_proto::v1;

use super::{Entry, LogId, NodeId, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct CodecError {
    pub what: &'static str,
    pub detail: String,
}

fn missing(what: &'static str, field: &str) -> CodecError {
    CodecError { what, detail: format!("{field} is missing") }
}

pub fn log_id_to_proto(id: &LogId) -> v1::LogId {
    v1::LogId { term: id.leader_id.term, leader_node: id.leader_id.node_id, index: id.index }
}

pub fn log_id_from_proto(id: &v1::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.leader_node), id.index)
}

pub fn opt_log_id_to_proto(id: Option<&LogId>) -> Option<v1::LogId> {
    id.map(log_id_to_proto)
}

pub fn opt_log_id_from_proto(id: Option<&v1::LogId>) -> Option<LogId> {
    id.map(log_id_from_proto)
}

pub fn vote_to_proto(vote: &Vote<NodeId>) -> v1::Vote {
    v1::Vote { term: vote.leader_id.term, node_id: vote.leader_id.node_id, committed: vote.committed }
}

pub fn vote_from_proto(vote: Option<&v1::Vote>) -> Result<Vote<NodeId>, CodecError> {
    let vote = vote.ok_or_else(|| missing("vote", "vote"))?;
    Ok(if vote.committed { Vote::new_committed(vote.term, vote.node_id) } else { Vote::new(vote.term, vote.node_id) })
}

pub fn membership_to_proto(membership: &Membership<NodeId, BasicNode>) -> v1::Membership {
    v1::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|voters| v1::VoterSet { node_ids: voters.iter().copied().collect() })
            .collect(),
        nodes: membership.nodes().map(|(id, node)| v1::MemberNode { node_id: *id, addr: node.addr.clone() }).collect(),
    }
}

pub fn membership_from_proto(membership: &v1::Membership) -> Result<Membership<NodeId, BasicNode>, CodecError> {
    let configs: Vec<BTreeSet<NodeId>> =
        membership.configs.iter().map(|set| set.node_ids.iter().copied().collect()).collect();
    if configs.is_empty() || configs.len() > 2 || configs.iter().any(|c| c.is_empty()) {
        return Err(CodecError {
            what: "membership",
            detail: format!("{} voter sets; one or two non-empty sets expected", configs.len()),
        });
    }
    let nodes: BTreeMap<NodeId, BasicNode> =
        membership.nodes.iter().map(|n| (n.node_id, BasicNode::new(n.addr.clone()))).collect();
    if let Some(voter) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
        return Err(CodecError { what: "membership", detail: format!("voter {voter} has no address") });
    }
    Ok(Membership::new(configs, nodes))
}

pub fn stored_membership_to_proto(stored: &StoredMembership<NodeId, BasicNode>) -> v1::StoredMembership {
    v1::StoredMembership {
        log_id: opt_log_id_to_proto(stored.log_id().as_ref()),
        membership: Some(membership_to_proto(stored.membership())),
    }
}

pub fn stored_membership_from_proto(
    stored: Option<&v1::StoredMembership>,
) -> Result<StoredMembership<NodeId, BasicNode>, CodecError> {
    match stored {
        None => Ok(StoredMembership::default()),
        Some(stored) => {
            let membership = match &stored.membership {
                Some(m) => membership_from_proto(m)?,
                None => Membership::default(),
            };
            Ok(StoredMembership::new(opt_log_id_from_proto(stored.log_id.as_ref()), membership))
        }
    }
}

pub fn entry_to_proto(entry: &Entry) -> v1::Entry {
    use v1::entry::Payload;
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(true),
        EntryPayload::Normal(command) => Payload::Normal(command.clone()),
        EntryPayload::Membership(membership) => Payload::Membership(membership_to_proto(membership)),
    };
    v1::Entry { log_id: Some(log_id_to_proto(&entry.log_id)), payload: Some(payload) }
}

pub fn entry_from_proto(entry: v1::Entry) -> Result<Entry, CodecError> {
    use v1::entry::Payload;
    let log_id = log_id_from_proto(entry.log_id.as_ref().ok_or_else(|| missing("log entry", "log_id"))?);
    let payload = match entry.payload.ok_or_else(|| missing("log entry", "payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(command) => EntryPayload::Normal(command),
        Payload::Membership(membership) => EntryPayload::Membership(membership_from_proto(&membership)?),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_proto(meta: &SnapshotMeta<NodeId, BasicNode>) -> v1::SnapshotMeta {
    v1::SnapshotMeta {
        last_log_id: opt_log_id_to_proto(meta.last_log_id.as_ref()),
        membership: Some(stored_membership_to_proto(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_proto(
    meta: Option<&v1::SnapshotMeta>,
) -> Result<SnapshotMeta<NodeId, BasicNode>, CodecError> {
    let meta = meta.ok_or_else(|| missing("snapshot", "meta"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_proto(meta.last_log_id.as_ref()),
        last_membership: stored_membership_from_proto(meta.membership.as_ref())?,
        snapshot_id: meta.snapshot_id.clone(),
    })
}

pub fn append_request_to_proto(rpc: &openraft::raft::AppendEntriesRequest<TypeConfig>) -> v1::AppendEntriesRequest {
    v1::AppendEntriesRequest {
        vote: Some(vote_to_proto(&rpc.vote)),
        prev_log_id: opt_log_id_to_proto(rpc.prev_log_id.as_ref()),
        entries: rpc.entries.iter().map(entry_to_proto).collect(),
        leader_commit: opt_log_id_to_proto(rpc.leader_commit.as_ref()),
    }
}

pub fn append_request_from_proto(
    rpc: v1::AppendEntriesRequest,
) -> Result<openraft::raft::AppendEntriesRequest<TypeConfig>, CodecError> {
    Ok(openraft::raft::AppendEntriesRequest {
        vote: vote_from_proto(rpc.vote.as_ref())?,
        prev_log_id: opt_log_id_from_proto(rpc.prev_log_id.as_ref()),
        entries: rpc.entries.into_iter().map(entry_from_proto).collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_proto(rpc.leader_commit.as_ref()),
    })
}

pub fn append_response_to_proto(response: &openraft::raft::AppendEntriesResponse<NodeId>) -> v1::AppendEntriesResponse {
    use openraft::raft::AppendEntriesResponse as R;
    use v1::append_entries_response::Kind;
    let mut out = v1::AppendEntriesResponse::default();
    match response {
        R::Success => out.set_kind(Kind::Success),
        R::PartialSuccess(matching) => {
            out.set_kind(Kind::PartialSuccess);
            out.matching = opt_log_id_to_proto(matching.as_ref());
        }
        R::Conflict => out.set_kind(Kind::Conflict),
        R::HigherVote(vote) => {
            out.set_kind(Kind::HigherVote);
            out.vote = Some(vote_to_proto(vote));
        }
    }
    out
}

pub fn append_response_from_proto(
    response: &v1::AppendEntriesResponse,
) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, CodecError> {
    use openraft::raft::AppendEntriesResponse as R;
    use v1::append_entries_response::Kind;
    match Kind::try_from(response.kind).unwrap_or(Kind::Unspecified) {
        Kind::Success => Ok(R::Success),
        Kind::PartialSuccess => Ok(R::PartialSuccess(opt_log_id_from_proto(response.matching.as_ref()))),
        Kind::Conflict => Ok(R::Conflict),
        Kind::HigherVote => Ok(R::HigherVote(vote_from_proto(response.vote.as_ref())?)),
        Kind::Unspecified => Err(CodecError { what: "append-entries response", detail: "no kind".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let nodes: BTreeMap<u64, BasicNode> =
            (1..=3).map(|id| (id, BasicNode::new(format!("127.0.0.1:{id}")))).collect();
        let membership = Membership::new(vec![[1, 2, 3].into()], nodes);
        let log_id = LogId::new(CommittedLeaderId::new(7, 2), 42);
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(v1::Command::default()),
            EntryPayload::Membership(membership.clone()),
        ] {
            let entry = Entry { log_id, payload };
            let back = entry_from_proto(entry_to_proto(&entry)).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", entry.payload));
        }
    }

    #[test]
    fn a_voter_without_address_is_refused() {
        let bad = v1::Membership {
            configs: vec![v1::VoterSet { node_ids: vec![1, 9] }],
            nodes: vec![v1::MemberNode { node_id: 1, addr: "a:1".into() }],
        };
        let err = membership_from_proto(&bad).unwrap_err();
        assert!(err.to_string().contains("voter 9"), "{err}");
        assert!(membership_from_proto(&v1::Membership::default()).is_err());
        let no_payload = v1::Entry { log_id: Some(v1::LogId::default()), payload: None };
        assert!(entry_from_proto(no_payload).is_err());
    }
}
