//! A range's state machine: its MVCC data in `range_data`, its applied state beside the data
//! (one batch per command, so they never disagree), snapshots as SST files exported from and
//! ingested into RocksDB — streamed through a file, never copied whole into memory.
// openraft's StorageError is what its storage traits return; the helpers pass it on as is.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
use crate::storage::keys::{system_key, SYSTEM_APPLIED_STATE, SYSTEM_RANGE_DESCRIPTOR};
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
                system_keys: vec![applied],
            }
        } else {
            SpanBounds::new(&self.start_key, &self.end_key, vec![applied])
        }
    }
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
    /// A range applied a membership: its voters, and the generation it defines (the entry's
    /// index + 1, the same on every replica).
    fn membership_applied(&self, range_id: u64, voters: Vec<NodeId>, generation: u64);
}

pub struct RangeStateMachine {
    span: RangeSpan,
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
        span: RangeSpan,
        storage: Storage,
        hlc: Arc<Hlc>,
        snapshot_root: &Path,
        observer: Arc<dyn RangeObserver>,
    ) -> Result<Self, RaftStorageError> {
        let dir = snapshot_root.join(format!("range-{}", span.range_id));
        std::fs::create_dir_all(&dir).map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let snapshots =
            Arc::new(SnapshotStore { range_id: span.range_id, dir, storage: storage.clone(), lock: Mutex::new(()) });
        let mut machine = RangeStateMachine {
            span,
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
        system_key(SYSTEM_APPLIED_STATE, self.span.range_id)
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
        Ok(())
    }

    fn announce_membership(&self) {
        if let Some(log_id) = self.membership.log_id() {
            let voters = self.membership.membership().voter_ids().collect();
            self.observer.membership_applied(self.span.range_id, voters, log_id.index + 1);
        }
    }

    fn applied_record(&self) -> (Vec<u8>, Vec<u8>) {
        let state = v1::AppliedState {
            last_applied: codec::opt_log_id_to_proto(self.applied.as_ref()),
            membership: Some(codec::stored_membership_to_proto(&self.membership)),
        };
        (self.applied_key(), state.encode_to_vec())
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
            Op::SetDescriptor(_) => None,
        };
        let Some(op) = command.op else { return refuse(&self.storage, "a command without an operation".into()) };
        match key_of(&op) {
            Some(key) if !self.span.contains(&key) => {
                return refuse(&self.storage, format!("key {key:02x?} is outside range {}", self.span.range_id))
            }
            None if !self.span.meta => return refuse(&self.storage, "descriptors live in the meta range".into()),
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
        }
        let (timestamp, versions) = self.storage.write_replicated(batch, ts, &record)?;
        Ok(Outcome::Written { version: versions.first().copied().unwrap_or_default(), timestamp })
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
                    self.storage.put_system(&[self.applied_record()]).map_err(apply_err)?;
                    self.announce_membership();
                    Outcome::Nothing
                }
                EntryPayload::Normal(command) => self.apply_command(command).map_err(apply_err)?,
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RangeSnapshotBuilder {
            span: self.span.clone(),
            storage: self.storage.clone(),
            snapshots: self.snapshots.clone(),
        }
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
        let (storage, bounds, snapshots, kept_meta) =
            (self.storage.clone(), self.span.bounds(), self.snapshots.clone(), meta.clone());
        // Ingesting blocks on RocksDB: off the async workers, under the snapshot lock.
        tokio::task::spawn_blocking(move || {
            let _guard = snapshots.lock.lock().unwrap_or_else(|p| p.into_inner());
            storage.ingest_span(&bounds, &path).map_err(|e| e.to_string())?;
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
        if self.span.meta {
            for descriptor in read_descriptors(&self.storage).map_err(|e| write_err(e.to_string()))? {
                self.observer.descriptor_applied(descriptor);
            }
        }
        self.announce_membership();
        info!(range_id = self.span.range_id, snapshot = %meta.snapshot_id, "installed a snapshot");
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
            let exported = storage.export_span(&bounds, &partial).map_err(|e| e.to_string())?;
            let applied_key = system_key(SYSTEM_APPLIED_STATE, range_id);
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

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
