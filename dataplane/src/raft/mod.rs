//! Replication: one openraft group per range, many groups per node, all sharing the node's
//! RocksDB ([`log`], [`state_machine`]) and QUIC endpoint ([`network`]).
//!
//! openraft is pinned to 0.9.25, the maintained stable line: its storage-v2 traits let the
//! log append return before the fsync (so one WAL sync covers every range's appends), and its
//! API is stable where 0.10's alphas still move weekly.

pub mod codec;
pub mod log;
pub mod network;
pub mod proposals;
pub mod state_machine;

use std::sync::mpsc;

use openraft::storage::LogFlushed;
use openraft::BasicNode;
use pleiades_proto::v1;
use tracing::error;

use crate::clock::Timestamp;
use crate::storage::{Storage, VersionedValue};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Pleiades' raft types: protobuf commands, snapshots as SST files on disk.
    pub TypeConfig:
        D = v1::Command,
        R = Outcome,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// What applying one command did; the leader returns it to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Blank and membership entries.
    Nothing,
    Written {
        version: u32,
        timestamp: Timestamp,
    },
    CompareFailed {
        current: Option<VersionedValue>,
    },
    /// Refused deterministically on every replica (e.g. a key outside the range).
    Refused(String),
    /// A split: the range's new self and the right half.
    Split {
        left: pleiades_proto::v1::RangeDescriptor,
        right: pleiades_proto::v1::RangeDescriptor,
    },
    /// A range id handed out by the meta range.
    Allocated(u64),
    /// A merge begun or abandoned: the range as it is now.
    Range(pleiades_proto::v1::RangeDescriptor),
    /// The range froze for a merge at this log index.
    Frozen {
        descriptor: pleiades_proto::v1::RangeDescriptor,
        index: u64,
    },
    /// The range subsumed its right-hand neighbour: its new self and the neighbour's tombstone.
    Merged {
        left: pleiades_proto::v1::RangeDescriptor,
        right: pleiades_proto::v1::RangeDescriptor,
    },
    /// A batch of client writes: each one's outcome, in order.
    Batch(Vec<Outcome>),
}

/// Makes buffered raft log appends durable: one thread, one WAL fsync per batch of waiting
/// appends from every range — the group commit that keeps fsyncs per second flat as ranges grow.
#[derive(Clone)]
pub struct WalSyncer {
    queue: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl WalSyncer {
    pub fn start(storage: Storage) -> std::io::Result<Self> {
        let (queue, waiting) = mpsc::channel::<LogFlushed<TypeConfig>>();
        std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            crate::realtime::apply_to_current_thread();
            while let Ok(first) = waiting.recv() {
                let mut batch = vec![first];
                batch.extend(waiting.try_iter());
                let result = storage.sync_wal();
                if let Err(e) = &result {
                    error!(error = %e, "WAL sync failed; the appends waiting on it fail");
                }
                for flushed in batch {
                    let result = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
                    flushed.log_io_completed(result);
                }
            }
        })?;
        Ok(WalSyncer { queue })
    }

    pub fn flush(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(callback)) = self.queue.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("the WAL sync thread has stopped")));
        }
    }
}

fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: impl std::error::Error + 'static,
) -> RaftStorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&error)).into()
}
