//! A range's raft log and hard state on the node's RocksDB (`raft_log` and `raft_state` column
//! families under the range's id).
// openraft's StorageError is what its storage traits return; the helpers pass it on as is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote};
use pleiades_proto::v1;
use prost::Message;

use super::codec::{self, CodecError};
use super::{io_error, Entry, LogId, NodeId, RaftStorageError, TypeConfig, WalSyncer};
use crate::storage::{RaftStateTag, Storage};

/// The log of one range. Clones share everything; openraft's replication tasks read through
/// clones while the raft core appends.
#[derive(Clone)]
pub struct RangeLog {
    range_id: u64,
    storage: Storage,
    syncer: WalSyncer,
}

impl RangeLog {
    pub fn new(range_id: u64, storage: Storage, syncer: WalSyncer) -> Self {
        RangeLog { range_id, storage, syncer }
    }

    fn read_state<T: Message + Default>(&self, tag: RaftStateTag) -> Result<Option<T>, RaftStorageError> {
        let subject = if tag == RaftStateTag::Vote { ErrorSubject::Vote } else { ErrorSubject::Store };
        let Some(bytes) = self
            .storage
            .get_raft_state(self.range_id, tag)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        T::decode(bytes.as_slice()).map(Some).map_err(|e| io_error(subject, ErrorVerb::Read, e))
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry, RaftStorageError> {
        let proto = v1::Entry::decode(bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        codec::entry_from_proto(proto).map_err(|e: CodecError| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogReader<TypeConfig> for RangeLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self
            .storage
            .raft_log_entries(self.range_id, from, to)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter().map(|(_, bytes)| Self::decode_entry(bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for RangeLog {
    type LogReader = RangeLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id =
            self.read_state::<v1::LogId>(RaftStateTag::LastPurgedLogId)?.map(|id| codec::log_id_from_proto(&id));
        let last = self
            .storage
            .last_raft_log_entry(self.range_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(Self::decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let bytes = codec::vote_to_proto(vote).encode_to_vec();
        self.storage
            .put_raft_state(self.range_id, RaftStateTag::Vote, &bytes, true)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        match self.read_state::<v1::Vote>(RaftStateTag::Vote)? {
            Some(vote) => codec::vote_from_proto(Some(&vote))
                .map(Some)
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }

    /// Saved so a restarted replica re-applies up to what was committed before serving reads.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let Some(committed) = committed else { return Ok(()) };
        let bytes = codec::log_id_to_proto(&committed).encode_to_vec();
        self.storage
            .put_raft_state(self.range_id, RaftStateTag::Committed, &bytes, false)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.read_state::<v1::LogId>(RaftStateTag::Committed)?.map(|id| codec::log_id_from_proto(&id)))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, codec::entry_to_proto(&entry).encode_to_vec()))
            .collect();
        self.storage
            .append_raft_log(self.range_id, &encoded)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Readable now; acknowledged once the shared WAL sync has made it durable.
        self.syncer.flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.storage
            .truncate_raft_log_from(self.range_id, log_id.index)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let point = codec::log_id_to_proto(&log_id).encode_to_vec();
        self.storage
            .purge_raft_log_upto(self.range_id, log_id.index, &point)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
