//! A range's state machine: its MVCC data in `range_data`, its applied state beside the data
//! (one batch per command, so they never disagree), snapshots as SST files exported from and
//! ingested into RocksDB — streamed through a file, never copied whole into memory.
// openraft's StorageError is what its storage traits return; the helpers pass it on as is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use pleiades_proto::v1::{self, command::Op};
use prost::Message;
use tracing::{debug, info};

use super::codec;
use super::{io_error, Entry, LogId, NodeId, Outcome, RaftStorageError, TypeConfig};
use crate::clock::{Hlc, Timestamp};
use crate::storage::keys::{system_key, SYSTEM_APPLIED_STATE, SYSTEM_RANGE_DESCRIPTOR, SYSTEM_RANGE_ID_COUNTER};
use crate::storage::{MvccBatch, RaftStateTag, SpanBounds, Storage, StorageError};

/// Where a range's records live, and whether it is the meta range.
#[derive(Debug, Clone)]
pub struct RangeSpan {
    pub range_id: u64,
    pub start_key: Vec<u8>,
    pub end_key: Vec<u8>,
    pub meta: bool,
}

impl RangeSpan {
    pub fn of(descriptor: &v1::RangeDescriptor) -> RangeSpan {
        RangeSpan {
            range_id: descriptor.range_id,
            start_key: descriptor.start_key.clone(),
            end_key: descriptor.end_key.clone(),
            meta: descriptor.meta,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        !self.meta && key >= self.start_key.as_slice() && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    pub fn bounds(&self) -> SpanBounds {
        let applied = system_key(SYSTEM_APPLIED_STATE, self.range_id);
        if self.meta {
            // The meta range's data is the descriptor records.
            SpanBounds {
                start: system_key(SYSTEM_RANGE_DESCRIPTOR, 0),
                end: Some(system_key(SYSTEM_RANGE_DESCRIPTOR + 1, 0)),
                system_keys: vec![applied, system_key(SYSTEM_RANGE_ID_COUNTER, 0)],
            }
        } else {
            SpanBounds::new(&self.start_key, &self.end_key, vec![applied])
        }
    }
}

/// The range as its replica applied it. Splits change the span and membership changes the
/// replicas at apply, and routing reads it on every request, so the state machine and the
/// hosting replica share it.
#[derive(Debug, Clone)]
pub struct SharedDescriptor(Arc<RwLock<v1::RangeDescriptor>>);

impl SharedDescriptor {
    pub fn new(descriptor: v1::RangeDescriptor) -> Self {
        SharedDescriptor(Arc::new(RwLock::new(descriptor)))
    }

    pub fn get(&self) -> v1::RangeDescriptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn span(&self) -> RangeSpan {
        RangeSpan::of(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let descriptor = self.0.read().unwrap_or_else(|p| p.into_inner());
        !descriptor.meta
            && key >= descriptor.start_key.as_slice()
            && (descriptor.end_key.is_empty() || key < descriptor.end_key.as_slice())
    }

    fn set(&self, descriptor: v1::RangeDescriptor) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = descriptor;
    }
}

/// The log id every replica of a range born from a split starts at: as if it had been
/// initialized and its first entry applied and purged, so any replica added later gets a
/// snapshot (the split's data never was in this range's log).
pub fn split_origin() -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(0, 0), 0)
}

/// Reads the descriptors the meta range holds on this node.
pub fn read_descriptors(storage: &Storage) -> Result<Vec<v1::RangeDescriptor>, StorageError> {
    let bounds = RangeSpan { range_id: 0, start_key: vec![], end_key: vec![], meta: true }.bounds();
    let end = bounds.end.unwrap_or_default();
    storage
        .system_records(&bounds.start, &end)?
        .into_iter()
        .map(|(_, value)| {
            v1::RangeDescriptor::decode(value.as_slice())
                .map_err(|e| StorageError::Corrupt { what: "range descriptor", detail: e.to_string() })
        })
        .collect()
}

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The range's current snapshot: an SST file plus its meta in `raft_state`.
struct SnapshotStore {
    range_id: u64,
    dir: PathBuf,
    storage: Storage,
    /// Serialises building and installing, which openraft may run concurrently.
    lock: Mutex<()>,
}

impl SnapshotStore {
    fn path_of(&self, snapshot_id: &str) -> PathBuf {
        self.dir.join(format!("{snapshot_id}.sst"))
    }

    fn current(&self) -> Result<Option<(Meta, PathBuf)>, RaftStorageError> {
        let read_err = |e: &dyn std::fmt::Display| {
            io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, std::io::Error::other(e.to_string()))
        };
        let Some(bytes) =
            self.storage.get_raft_state(self.range_id, RaftStateTag::SnapshotMeta).map_err(|e| read_err(&e))?
        else {
            return Ok(None);
        };
        let proto = v1::SnapshotMeta::decode(bytes.as_slice()).map_err(|e| read_err(&e))?;
        let meta = codec::snapshot_meta_from_proto(Some(&proto)).map_err(|e| read_err(&e))?;
        let path = self.path_of(&meta.snapshot_id);
        Ok(path.exists().then_some((meta, path)))
    }

    /// Makes `file` the current snapshot and drops the older ones.
    fn keep(&self, meta: &SnapshotMeta<NodeId, BasicNode>, file: &Path) -> Result<(), RaftStorageError> {
        let write_err =
            |e: std::io::Error| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e);
        let path = self.path_of(&meta.snapshot_id);
        std::fs::rename(file, &path).map_err(write_err)?;
        let bytes = codec::snapshot_meta_to_proto(meta).encode_to_vec();
        self.storage
            .put_raft_state(self.range_id, RaftStateTag::SnapshotMeta, &bytes, true)
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
        for old in std::fs::read_dir(&self.dir).map_err(write_err)?.flatten() {
            if old.path() != path && old.path().extension().is_some_and(|e| e == "sst") {
                let _ = std::fs::remove_file(old.path());
            }
        }
        Ok(())
    }
}

/// Told what a range applies that the node must act on. Called on the apply path: keep it quick.
pub trait RangeObserver: Send + Sync + 'static {
    /// The meta range applied (or installed) a descriptor.
    fn descriptor_applied(&self, descriptor: v1::RangeDescriptor);
    /// A range's own descriptor changed (a membership or a snapshot): remember it.
    fn range_changed(&self, descriptor: v1::RangeDescriptor);
    /// A range split: `left` is its new self; `right`, when this node hosts it now, was created
    /// in the same write and must be opened.
    fn range_split(&self, left: v1::RangeDescriptor, right: Option<v1::RangeDescriptor>);
    /// A range subsumed its right-hand neighbour: `left` is its new self, `right` the
    /// neighbour's tombstone; this node's replica of the neighbour must stop, keeping its data.
    fn range_merged(&self, left: v1::RangeDescriptor, right: v1::RangeDescriptor);
}

pub struct RangeStateMachine {
    descriptor: SharedDescriptor,
    range_id: u64,
    storage: Storage,
    hlc: Arc<Hlc>,
    snapshots: Arc<SnapshotStore>,
    applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    incoming: Option<PathBuf>,
    observer: Arc<dyn RangeObserver>,
}

impl RangeStateMachine {
    pub fn open(
        descriptor: SharedDescriptor,
        storage: Storage,
        hlc: Arc<Hlc>,
        snapshot_root: &Path,
        observer: Arc<dyn RangeObserver>,
    ) -> Result<Self, RaftStorageError> {
        let range_id = descriptor.get().range_id;
        let dir = snapshot_root.join(format!("range-{range_id}"));
        std::fs::create_dir_all(&dir).map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let snapshots = Arc::new(SnapshotStore { range_id, dir, storage: storage.clone(), lock: Mutex::new(()) });
        let mut machine = RangeStateMachine {
            descriptor,
            range_id,
            storage,
            hlc,
            snapshots,
            applied: None,
            membership: StoredMembership::default(),
            incoming: None,
            observer,
        };
        machine.load_applied_state()?;
        Ok(machine)
    }

    fn applied_key(&self) -> Vec<u8> {
        system_key(SYSTEM_APPLIED_STATE, self.range_id)
    }

    fn span(&self) -> RangeSpan {
        self.descriptor.span()
    }

    fn load_applied_state(&mut self) -> Result<(), RaftStorageError> {
        let read_err = |e: String| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, std::io::Error::other(e));
        let Some(bytes) = self.storage.get_system(&self.applied_key()).map_err(|e| read_err(e.to_string()))? else {
            return Ok(());
        };
        let state = v1::AppliedState::decode(bytes.as_slice()).map_err(|e| read_err(e.to_string()))?;
        self.applied = codec::opt_log_id_from_proto(state.last_applied.as_ref());
        self.membership =
            codec::stored_membership_from_proto(state.membership.as_ref()).map_err(|e| read_err(e.to_string()))?;
        // Written by every apply since splits exist; older data keeps the recorded descriptor.
        if let Some(descriptor) = state.descriptor.filter(|d| d.range_id == self.range_id) {
            self.descriptor.set(descriptor);
        }
        Ok(())
    }

    /// A membership entry makes the voters the range's replicas, with a new generation: past
    /// the entry's index (as before splits existed) and past the generation the range had, so a
    /// range born from a split, whose log starts again at 0, still moves forward.
    fn adopt_membership(&self, log_id: &LogId) {
        let mut descriptor = self.descriptor.get();
        descriptor.replicas = self.membership.membership().voter_ids().collect();
        descriptor.generation = (descriptor.generation + 1).max(log_id.index + 1);
        self.descriptor.set(descriptor.clone());
        self.observer.range_changed(descriptor);
    }

    fn applied_record(&self) -> (Vec<u8>, Vec<u8>) {
        (self.applied_key(), self.encode_applied_state(self.applied.as_ref(), &self.membership, self.descriptor.get()))
    }

    fn encode_applied_state(
        &self,
        applied: Option<&LogId>,
        membership: &StoredMembership<NodeId, BasicNode>,
        descriptor: v1::RangeDescriptor,
    ) -> Vec<u8> {
        v1::AppliedState {
            last_applied: codec::opt_log_id_to_proto(applied),
            membership: Some(codec::stored_membership_to_proto(membership)),
            descriptor: Some(descriptor),
        }
        .encode_to_vec()
    }

    /// Applies one command with the applied-state record in the same batch.
    fn apply_command(&mut self, command: v1::Command) -> Result<Outcome, StorageError> {
        let record = [self.applied_record()];
        let ts: Timestamp = command.timestamp.map(Timestamp::from).unwrap_or_default();
        if let Err(e) = self.hlc.update(ts) {
            debug!(error = %e, "a command's timestamp is far ahead of this node's clock");
        }
        let refuse = |storage: &Storage, why: String| -> Result<Outcome, StorageError> {
            storage.put_system(&record)?;
            Ok(Outcome::Refused(why))
        };
        let key_of = |op: &Op| match op {
            Op::Put(p) => Some(p.key.clone()),
            Op::Delete(d) => Some(d.key.clone()),
            Op::Cas(c) => Some(c.key.clone()),
            Op::SetDescriptor(_)
            | Op::AllocateRangeId(_)
            | Op::Split(_)
            | Op::BeginMerge(_)
            | Op::FreezeForMerge(_)
            | Op::Merge(_)
            | Op::AbandonMerge(_)
            | Op::Batch(_) => None,
        };
        let changes_the_range = |op: &Op| {
            matches!(op, Op::Split(_) | Op::BeginMerge(_) | Op::FreezeForMerge(_) | Op::Merge(_) | Op::AbandonMerge(_))
        };
        let Some(op) = command.op else { return refuse(&self.storage, "a command without an operation".into()) };
        let span = self.span();
        let frozen = self.descriptor.get().merging_into != 0;
        match key_of(&op) {
            Some(key) => {
                if let Some(why) = write_refusal(&span, frozen, &key) {
                    return refuse(&self.storage, why);
                }
            }
            // Each write of a batch is judged on its own.
            None if matches!(op, Op::Batch(_)) => {}
            None if !span.meta && !changes_the_range(&op) => {
                return refuse(&self.storage, "descriptors live in the meta range".into())
            }
            None if span.meta && changes_the_range(&op) => {
                return refuse(&self.storage, "the meta range neither splits nor merges".into())
            }
            _ => {}
        }
        let mut batch = MvccBatch::default();
        match op {
            Op::Put(put) => {
                batch.put(put.key, put.value);
            }
            Op::Delete(delete) => {
                batch.delete(delete.key);
            }
            Op::Cas(cas) => {
                let current = self.storage.get_latest(&cas.key)?;
                let matches = match &current {
                    None => cas.expect_absent,
                    Some(found) => !cas.expect_absent && found.value == cas.expected,
                };
                if !matches {
                    self.storage.put_system(&record)?;
                    return Ok(Outcome::CompareFailed { current });
                }
                if cas.delete {
                    batch.delete(cas.key);
                } else {
                    batch.put(cas.key, cas.value);
                }
            }
            Op::SetDescriptor(descriptor) => {
                let key = system_key(SYSTEM_RANGE_DESCRIPTOR, descriptor.range_id);
                self.storage.put_system(&[record[0].clone(), (key, descriptor.encode_to_vec())])?;
                self.observer.descriptor_applied(descriptor);
                return Ok(Outcome::Nothing);
            }
            Op::AllocateRangeId(_) => {
                let allocated = self.next_range_id()?;
                let counter = (system_key(SYSTEM_RANGE_ID_COUNTER, 0), (allocated + 1).to_be_bytes().to_vec());
                self.storage.put_system(&[record[0].clone(), counter])?;
                return Ok(Outcome::Allocated(allocated));
            }
            Op::Split(split) => return self.apply_split(split, &record[0]),
            Op::BeginMerge(begin) => return self.apply_begin_merge(begin.right_range_id, &record[0]),
            Op::FreezeForMerge(freeze) => return self.apply_freeze(freeze, &record[0]),
            Op::Merge(merge) => return self.apply_merge(merge.right.unwrap_or_default()),
            Op::AbandonMerge(abandon) => return self.apply_abandon_merge(abandon),
            Op::Batch(batch) => return self.apply_batch(batch, ts, &record),
        }
        let (timestamp, versions) = self.storage.write_replicated(batch, ts, &record)?;
        Ok(Outcome::Written { version: versions.first().copied().unwrap_or_default(), timestamp })
    }
}

/// Why a client write to `key` is refused on this range, if it is: outside its span, or the
/// range is frozen (its data is final; the range subsuming it serves its keys next).
fn write_refusal(span: &RangeSpan, frozen: bool, key: &[u8]) -> Option<String> {
    if !span.contains(key) {
        Some(format!("key {key:02x?} is outside range {}", span.range_id))
    } else if frozen {
        Some(format!("range {} is frozen for a merge", span.range_id))
    } else {
        None
    }
}

impl RangeStateMachine {
    /// Applies a batch of client writes in one atomic write at `ts`, each judged as it would be
    /// alone: outside the span, frozen, or on a key an earlier write of the batch took (which
    /// a leader never proposes), it is refused; a cas compares against the stored value, which
    /// no earlier write of the batch touched.
    fn apply_batch(
        &mut self,
        batch: v1::CommandBatch,
        ts: Timestamp,
        record: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Outcome, StorageError> {
        let span = self.span();
        let frozen = self.descriptor.get().merging_into != 0;
        let mut writes = MvccBatch::default();
        // Each command's outcome; `None` for a write, known once the batch is written.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.commands.len());
        let mut taken = std::collections::HashSet::new();
        for command in batch.commands {
            let (key, value) = match command.op {
                Some(Op::Put(put)) => (put.key, Some(put.value)),
                Some(Op::Delete(delete)) => (delete.key, None),
                Some(Op::Cas(cas)) => {
                    if write_refusal(&span, frozen, &cas.key).is_none() && !taken.contains(&cas.key) {
                        let current = self.storage.get_latest(&cas.key)?;
                        let matches = match &current {
                            None => cas.expect_absent,
                            Some(found) => !cas.expect_absent && found.value == cas.expected,
                        };
                        if !matches {
                            taken.insert(cas.key);
                            outcomes.push(Some(Outcome::CompareFailed { current }));
                            continue;
                        }
                    }
                    (cas.key, (!cas.delete).then_some(cas.value))
                }
                _ => {
                    outcomes.push(Some(Outcome::Refused("a batch holds puts, deletes and cas only".into())));
                    continue;
                }
            };
            let refusal = write_refusal(&span, frozen, &key)
                .or_else(|| taken.contains(&key).then(|| format!("key {key:02x?} is written twice in one batch")));
            if let Some(why) = refusal {
                outcomes.push(Some(Outcome::Refused(why)));
                continue;
            }
            taken.insert(key.clone());
            match value {
                Some(value) => writes.put(key, value),
                None => writes.delete(key),
            };
            outcomes.push(None);
        }
        let mut written = self.storage.write_replicated_each(writes, ts, record)?.into_iter();
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(outcome) => outcome,
                None => match written.next() {
                    Some((timestamp, version)) => Outcome::Written { version, timestamp },
                    None => Outcome::Refused("the batch wrote fewer keys than it holds".into()),
                },
            })
            .collect();
        Ok(Outcome::Batch(outcomes))
    }

    /// The meta range's next unused range id: the stored counter, or past every descriptor.
    fn next_range_id(&self) -> Result<u64, StorageError> {
        if let Some(bytes) = self.storage.get_system(&system_key(SYSTEM_RANGE_ID_COUNTER, 0))? {
            let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                what: "range id counter",
                detail: format!("{} bytes", bytes.len()),
            })?;
            return Ok(u64::from_be_bytes(bytes));
        }
        Ok(read_descriptors(&self.storage)?.iter().map(|d| d.range_id).max().unwrap_or(0) + 1)
    }

    /// Cuts the range at the split key, in one write: this range's applied state with the left
    /// half, and — unless this node already has (or had) the right half — the right half's
    /// applied state (its raft group starts at [`split_origin`] on the same voters) and its
    /// node-local record. Every replica decides the same way from the same state.
    fn apply_split(&mut self, split: v1::SplitRange, record: &(Vec<u8>, Vec<u8>)) -> Result<Outcome, StorageError> {
        let parent = self.descriptor.get();
        let refuse = |storage: &Storage, why: String| -> Result<Outcome, StorageError> {
            storage.put_system(std::slice::from_ref(record))?;
            Ok(Outcome::Refused(why))
        };
        let inside = split.split_key > parent.start_key
            && (parent.end_key.is_empty() || split.split_key < parent.end_key)
            && !split.split_key.is_empty();
        if parent.meta || !inside {
            return refuse(
                &self.storage,
                format!("range {} cannot split at {:02x?}", parent.range_id, split.split_key),
            );
        }
        if split.new_range_id == 0 || split.new_range_id == parent.range_id {
            return refuse(&self.storage, format!("no valid id for the right half: {}", split.new_range_id));
        }
        if self.membership.membership().get_joint_config().len() > 1 {
            return refuse(&self.storage, format!("range {} is changing its membership", parent.range_id));
        }
        if parent.merging_into != 0 || parent.absorbing != 0 {
            return refuse(&self.storage, format!("range {} is in a merge", parent.range_id));
        }
        let generation = parent.generation + 1;
        let left = v1::RangeDescriptor { end_key: split.split_key.clone(), generation, ..parent.clone() };
        let right = v1::RangeDescriptor {
            range_id: split.new_range_id,
            start_key: split.split_key,
            end_key: parent.end_key.clone(),
            replicas: parent.replicas.clone(),
            generation,
            sticky: split.sticky,
            ..Default::default()
        };
        let left_state = self.encode_applied_state(self.applied.as_ref(), &self.membership, left.clone());
        let voters: BTreeMap<NodeId, BasicNode> = self
            .membership
            .membership()
            .nodes()
            .filter(|(id, _)| right.replicas.contains(id))
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let voter_ids = voters.keys().copied().collect::<std::collections::BTreeSet<_>>();
        let origin = split_origin();
        let membership = StoredMembership::new(Some(origin), openraft::Membership::new(vec![voter_ids], voters));
        let right_state = self.encode_applied_state(Some(&origin), &membership, right.clone());
        let hosts_right = self.storage.write_split(
            &[(self.applied_key(), left_state)],
            &right,
            &[(system_key(SYSTEM_APPLIED_STATE, right.range_id), right_state)],
        )?;
        self.descriptor.set(left.clone());
        let right_here = hosts_right.then(|| right.clone());
        self.observer.range_split(left.clone(), right_here);
        info!(range_id = left.range_id, right = right.range_id, "range split");
        Ok(Outcome::Split { left, right })
    }
}

/// Merges: the four commands of CockroachDB's subsume, each judged by every replica from the
/// same replicated state, so all decide alike. The left-hand range's `absorbing` is the
/// arbiter: a merge applies only while it is set, and abandoning clears it, so a merge and its
/// abandonment can race and exactly one of them wins on every replica.
impl RangeStateMachine {
    /// Writes the applied state with `descriptor` as the range's own, and shares it.
    fn adopt(&self, descriptor: v1::RangeDescriptor) -> Result<(), StorageError> {
        let state = self.encode_applied_state(self.applied.as_ref(), &self.membership, descriptor.clone());
        self.storage.put_system(&[(self.applied_key(), state)])?;
        self.descriptor.set(descriptor);
        Ok(())
    }

    /// The voters, if the membership is settled (no joint configuration, no learner).
    fn settled_voters(&self) -> Option<std::collections::BTreeSet<NodeId>> {
        let membership = self.membership.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let settled = membership.get_joint_config().len() == 1 && membership.nodes().count() == voters.len();
        settled.then_some(voters)
    }

    fn apply_begin_merge(&mut self, right: u64, record: &(Vec<u8>, Vec<u8>)) -> Result<Outcome, StorageError> {
        let own = self.descriptor.get();
        let busy = own.merging_into != 0 || (own.absorbing != 0 && own.absorbing != right);
        if busy || right == 0 || right == own.range_id || own.end_key.is_empty() {
            self.storage.put_system(std::slice::from_ref(record))?;
            return Ok(Outcome::Refused(format!("range {} cannot begin to subsume range {right}", own.range_id)));
        }
        // The attempt is named by this entry's index: unique in the range's log.
        let epoch = self.applied.map_or(0, |id| id.index);
        let descriptor = v1::RangeDescriptor { absorbing: right, merge_epoch: epoch, ..own };
        self.adopt(descriptor.clone())?;
        Ok(Outcome::Range(descriptor))
    }

    fn apply_freeze(
        &mut self,
        freeze: v1::FreezeForMerge,
        record: &(Vec<u8>, Vec<u8>),
    ) -> Result<Outcome, StorageError> {
        let (own, into) = (self.descriptor.get(), freeze.into_range_id);
        // Frozen again for a newer attempt of the same merge: the newer attempt owns the freeze.
        let busy = own.absorbing != 0 || (own.merging_into != 0 && own.merging_into != into);
        if busy || into == 0 || into == own.range_id || freeze.epoch == 0 || self.settled_voters().is_none() {
            self.storage.put_system(std::slice::from_ref(record))?;
            return Ok(Outcome::Refused(format!("range {} cannot freeze for range {into}", own.range_id)));
        }
        let descriptor = v1::RangeDescriptor { merging_into: into, merge_epoch: freeze.epoch, ..own };
        self.adopt(descriptor.clone())?;
        let index = self.applied.map_or(0, |id| id.index);
        Ok(Outcome::Frozen { descriptor, index })
    }

    fn apply_merge(&mut self, right: v1::RangeDescriptor) -> Result<Outcome, StorageError> {
        let own = self.descriptor.get();
        let right_voters: std::collections::BTreeSet<NodeId> = right.replicas.iter().copied().collect();
        let attempt = own.absorbing == right.range_id && own.merge_epoch == right.merge_epoch;
        let refusal = if own.absorbing == 0 || !attempt {
            Some(format!("range {} is not subsuming range {} in this attempt", own.range_id, right.range_id))
        } else if right.merging_into != own.range_id {
            Some(format!("range {} is not frozen for range {}", right.range_id, own.range_id))
        } else if own.end_key.is_empty() || own.end_key != right.start_key {
            Some(format!("ranges {} and {} are not neighbours", own.range_id, right.range_id))
        } else if self.settled_voters().is_none_or(|voters| voters != right_voters) {
            Some(format!("ranges {} and {} are not on the same nodes", own.range_id, right.range_id))
        } else {
            None
        };
        if let Some(why) = refusal {
            // Refused for good: the left stops expecting the merge, so the right may thaw.
            let descriptor = match attempt {
                true => v1::RangeDescriptor { absorbing: 0, merge_epoch: 0, ..own },
                false => own,
            };
            self.adopt(descriptor)?;
            return Ok(Outcome::Refused(why));
        }
        let generation = own.generation.max(right.generation) + 1;
        let left =
            v1::RangeDescriptor { end_key: right.end_key.clone(), generation, absorbing: 0, merge_epoch: 0, ..own };
        let tombstone = v1::RangeDescriptor {
            replicas: Vec::new(),
            generation,
            merged_into: left.range_id,
            merging_into: 0,
            merge_epoch: 0,
            ..right
        };
        let state = self.encode_applied_state(self.applied.as_ref(), &self.membership, left.clone());
        self.storage.write_merge(&[(self.applied_key(), state)], tombstone.range_id)?;
        self.descriptor.set(left.clone());
        self.observer.range_merged(left.clone(), tombstone.clone());
        info!(range_id = left.range_id, right = tombstone.range_id, "range merged");
        Ok(Outcome::Merged { left, right: tombstone })
    }

    /// Ends one attempt: the left stops expecting it, the right thaws (its leader proposes
    /// this only once the left has abandoned the same attempt). Another attempt is untouched.
    fn apply_abandon_merge(&mut self, abandon: v1::AbandonMerge) -> Result<Outcome, StorageError> {
        let mut descriptor = self.descriptor.get();
        let this_attempt = descriptor.merge_epoch == abandon.epoch;
        if this_attempt && descriptor.absorbing == abandon.right_range_id && descriptor.absorbing != 0 {
            descriptor.absorbing = 0;
            descriptor.merge_epoch = 0;
        }
        if this_attempt && descriptor.range_id == abandon.right_range_id && descriptor.merging_into != 0 {
            descriptor.merging_into = 0;
            descriptor.merge_epoch = 0;
        }
        self.adopt(descriptor.clone())?;
        Ok(Outcome::Range(descriptor))
    }
}

impl RaftStateMachine<TypeConfig> for RangeStateMachine {
    type SnapshotBuilder = RangeSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            let apply_err = |e: StorageError| io_error(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e);
            let outcome = match entry.payload {
                EntryPayload::Blank => {
                    self.storage.put_system(&[self.applied_record()]).map_err(apply_err)?;
                    Outcome::Nothing
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.adopt_membership(&entry.log_id);
                    self.storage.put_system(&[self.applied_record()]).map_err(apply_err)?;
                    Outcome::Nothing
                }
                EntryPayload::Normal(command) => self.apply_command(command).map_err(apply_err)?,
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RangeSnapshotBuilder { span: self.span(), storage: self.storage.clone(), snapshots: self.snapshots.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path = self.snapshots.dir.join(format!("incoming-{}.part", unique_suffix()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        if let Some(abandoned) = self.incoming.replace(path) {
            let _ = std::fs::remove_file(abandoned);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        let write_err = |e: String| {
            io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, std::io::Error::other(e))
        };
        snapshot.sync_all().await.map_err(|e| write_err(e.to_string()))?;
        drop(snapshot);
        let path = self.incoming.take().ok_or_else(|| write_err("no snapshot is being received".into()))?;
        let (storage, current, snapshots, kept_meta) =
            (self.storage.clone(), self.span(), self.snapshots.clone(), meta.clone());
        let applied_key = self.applied_key();
        // Ingesting blocks on RocksDB: off the async workers, under the snapshot lock.
        tokio::task::spawn_blocking(move || {
            let _guard = snapshots.lock.lock().unwrap_or_else(|p| p.into_inner());
            // The snapshot's span is the leader's, which a split this replica has not applied
            // may have narrowed: clearing the old span would wipe the right half's replica here.
            let span = snapshot_span(&storage, &path, &applied_key, current).map_err(|e| e.to_string())?;
            storage.ingest_span(&span.bounds(), &path).map_err(|e| e.to_string())?;
            snapshots.keep(&kept_meta, &path).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| write_err(e.to_string()))?
        .map_err(write_err)?;
        self.load_applied_state()?;
        if self.applied != meta.last_log_id {
            return Err(write_err(format!(
                "the snapshot's data is at {:?}, its meta says {:?}",
                self.applied, meta.last_log_id
            )));
        }
        let descriptor = self.descriptor.get();
        if descriptor.meta {
            for descriptor in read_descriptors(&self.storage).map_err(|e| write_err(e.to_string()))? {
                self.observer.descriptor_applied(descriptor);
            }
        }
        self.observer.range_changed(descriptor);
        info!(range_id = self.range_id, snapshot = %meta.snapshot_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let Some((meta, path)) = self.snapshots.current()? else { return Ok(None) };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

pub struct RangeSnapshotBuilder {
    span: RangeSpan,
    storage: Storage,
    snapshots: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for RangeSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let snapshots = self.snapshots.clone();
        let storage = self.storage.clone();
        let bounds = self.span.bounds();
        let range_id = self.span.range_id;
        // RocksDB iteration and SST writing block: off the async workers.
        let built = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta<NodeId, BasicNode>, String> {
            let _guard = snapshots.lock.lock().unwrap_or_else(|p| p.into_inner());
            let partial = snapshots.dir.join(format!("building-{}.part", unique_suffix()));
            let applied_key = system_key(SYSTEM_APPLIED_STATE, range_id);
            // The span as of the exported applied state: a split may apply meanwhile.
            let span_of = |system: &crate::storage::Records| {
                system
                    .iter()
                    .find(|(key, _)| *key == applied_key)
                    .and_then(|(_, value)| v1::AppliedState::decode(value.as_slice()).ok()?.descriptor)
                    .filter(|d| d.range_id == range_id && !d.meta)
                    .map(|d| RangeSpan::of(&d).bounds())
                    .unwrap_or_else(|| bounds.clone())
            };
            let exported =
                storage.export_span_as_recorded(&bounds.system_keys, span_of, &partial).map_err(|e| e.to_string())?;
            let applied = exported
                .system
                .iter()
                .find(|(key, _)| *key == applied_key)
                .map(|(_, value)| v1::AppliedState::decode(value.as_slice()))
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let last_log_id = codec::opt_log_id_from_proto(applied.last_applied.as_ref());
            let meta = SnapshotMeta {
                last_log_id,
                last_membership: codec::stored_membership_from_proto(applied.membership.as_ref())
                    .map_err(|e| e.to_string())?,
                snapshot_id: format!(
                    "{}-{}-{}",
                    last_log_id.map(|id| id.leader_id.term).unwrap_or_default(),
                    last_log_id.map(|id| id.index).unwrap_or_default(),
                    unique_suffix()
                ),
            };
            snapshots.keep(&meta, &partial).map_err(|e| e.to_string())?;
            debug!(range_id, records = exported.records, snapshot = %meta.snapshot_id, "built a snapshot");
            Ok(meta)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let meta =
            built.map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, std::io::Error::other(e)))?;
        let path = self.snapshots.path_of(&meta.snapshot_id);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

/// The span a received snapshot covers, from the applied state inside it (`current` for
/// snapshots made before the applied state carried the descriptor).
fn snapshot_span(
    storage: &Storage,
    path: &Path,
    applied_key: &[u8],
    current: RangeSpan,
) -> Result<RangeSpan, StorageError> {
    let Some(bytes) = storage.read_span_file_record(path, applied_key)? else { return Ok(current) };
    let state = v1::AppliedState::decode(bytes.as_slice())
        .map_err(|e| StorageError::Corrupt { what: "snapshot applied state", detail: e.to_string() })?;
    Ok(match state.descriptor {
        Some(descriptor) if descriptor.range_id == current.range_id && descriptor.meta == current.meta => {
            RangeSpan::of(&descriptor)
        }
        _ => current,
    })
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests;
