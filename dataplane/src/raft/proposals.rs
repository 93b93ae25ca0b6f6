//! Batched proposals: the client writes that reach a range's leader while earlier ones are in
//! flight become one raft entry, so appends, WAL fsyncs, replication messages and applies scale
//! with time, not with writes (etcd's and TiKV's batching). A lone write goes out at once; a
//! crowd waits at most one proposal round.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use pleiades_proto::v1;
use pleiades_proto::v1::command::Op;
use tokio::sync::oneshot;

use super::{NodeId, Outcome, Raft};
use crate::clock::{ClockError, Hlc};

/// Proposals of one range in flight at once. Measured with `bench compare` (256-byte writes):
/// two overlapped an append with a replication round but split the crowd into batches half the
/// size, and on CPU-bound nodes one did more, 2,537 -> 3,542 puts/s at concurrency 16.
const IN_FLIGHT: usize = 1;
/// Writes per batch, and their bytes: far under the wire's payload limit, so an entry (and a
/// message of several) always fits.
const MAX_WRITES: usize = 512;
const MAX_BYTES: usize = 1 << 20;
/// A proposal's outcome is awaited this long before the write is reported uncertain.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Refused before it was appended, or its entry was truncated: it never applies.
    #[error("not the leader")]
    NotLeader(ForwardToLeader<NodeId, BasicNode>),
    #[error("{0}")]
    Clock(String),
    #[error("{0}")]
    Refused(String),
    #[error("the range stopped while the write was in flight ({0}); it may or may not apply")]
    Stopped(String),
    #[error("no outcome within {WRITE_TIMEOUT:?}; the write may or may not apply")]
    TimedOut,
}

impl From<ClockError> for ProposeError {
    fn from(e: ClockError) -> Self {
        ProposeError::Clock(e.to_string())
    }
}

struct Waiting {
    op: Op,
    answer: oneshot::Sender<Result<Outcome, ProposeError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

/// One range's proposal queue, on every replica (only a leader's is used).
#[derive(Default)]
pub struct Proposals {
    queue: Mutex<Queue>,
}

/// The key a client write touches (none for other commands, which the state machine refuses
/// in a batch; only client writes are proposed here).
fn key_of(op: &Op) -> &[u8] {
    match op {
        Op::Put(put) => &put.key,
        Op::Delete(delete) => &delete.key,
        Op::Cas(cas) => &cas.key,
        _ => &[],
    }
}

fn size_of(op: &Op) -> usize {
    match op {
        Op::Put(put) => put.key.len() + put.value.len(),
        Op::Delete(delete) => delete.key.len(),
        Op::Cas(cas) => cas.key.len() + cas.expected.len() + cas.value.len(),
        _ => 0,
    }
}

impl Queue {
    /// The next batch: waiting writes in arrival order, each on a key no earlier one in the
    /// batch touches (a later write to such a key waits for the next batch, keeping its order).
    fn next_batch(&mut self) -> Vec<Waiting> {
        let mut batch = Vec::new();
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        let (mut bytes, mut kept) = (0, VecDeque::new());
        while let Some(waiting) = self.waiting.pop_front() {
            let size = size_of(&waiting.op);
            let full = batch.len() >= MAX_WRITES || (!batch.is_empty() && bytes + size > MAX_BYTES);
            if full {
                self.waiting.push_front(waiting);
                break;
            }
            let key = key_of(&waiting.op);
            if keys.contains(key) {
                kept.push_back(waiting);
            } else {
                keys.insert(key.to_vec());
                bytes += size;
                batch.push(waiting);
            }
        }
        kept.append(&mut self.waiting);
        self.waiting = kept;
        batch
    }
}

impl Proposals {
    /// Proposes a client write (put, delete or cas) and waits until it is applied.
    pub async fn propose(self: &Arc<Self>, raft: &Raft, hlc: &Arc<Hlc>, op: Op) -> Result<Outcome, ProposeError> {
        let (answer, outcome) = oneshot::channel();
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push_back(Waiting { op, answer });
            if queue.in_flight < IN_FLIGHT {
                queue.in_flight += 1;
                tokio::spawn(self.clone().drive(raft.clone(), hlc.clone()));
            }
        }
        match outcome.await {
            Ok(result) => result,
            // The driver always answers; a dropped answer means its task was cancelled.
            Err(_) => Err(ProposeError::Stopped("the proposal task ended".into())),
        }
    }

    /// Proposes batches until none is waiting.
    async fn drive(self: Arc<Self>, raft: Raft, hlc: Arc<Hlc>) {
        loop {
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let batch = queue.next_batch();
                if batch.is_empty() {
                    queue.in_flight -= 1;
                    return;
                }
                batch
            };
            let (ops, answers): (Vec<Op>, Vec<_>) = batch.into_iter().map(|w| (w.op, w.answer)).unzip();
            let outcomes = propose_batch(&raft, &hlc, ops).await;
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// Proposes `ops` as one entry (a lone one as itself) and returns each one's outcome.
async fn propose_batch(raft: &Raft, hlc: &Hlc, ops: Vec<Op>) -> Vec<Result<Outcome, ProposeError>> {
    let count = ops.len();
    let everyone = |error: ProposeError| vec![Err(error); count];
    let timestamp = match hlc.now() {
        Ok(ts) => ts,
        Err(e) => return everyone(e.into()),
    };
    let op = match <[Op; 1]>::try_from(ops) {
        Ok([lone]) => lone,
        Err(ops) => {
            let commands = ops.into_iter().map(|op| v1::Command { timestamp: None, op: Some(op) }).collect();
            Op::Batch(v1::CommandBatch { commands })
        }
    };
    let command = v1::Command { timestamp: Some(timestamp.into()), op: Some(op) };
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Ok(Ok(response)) => match response.data {
            Outcome::Batch(outcomes) if outcomes.len() == count => outcomes.into_iter().map(Ok).collect(),
            Outcome::Batch(outcomes) => everyone(ProposeError::Stopped(format!(
                "a batch of {count} writes applied with {} outcomes",
                outcomes.len()
            ))),
            // A refused batch (e.g. a frozen range) refuses every write in it.
            outcome => vec![Ok(outcome); count],
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            everyone(ProposeError::NotLeader(forward))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            everyone(ProposeError::Refused(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(e))) => everyone(ProposeError::Stopped(e.to_string())),
        Err(_) => everyone(ProposeError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Waiting {
        let op = Op::Put(v1::CommandPut { key: key.as_bytes().to_vec(), value: vec![0; 10] });
        Waiting { op, answer: oneshot::channel().0 }
    }

    fn keys(batch: &[Waiting]) -> Vec<String> {
        batch.iter().map(|w| String::from_utf8_lossy(key_of(&w.op)).into_owned()).collect()
    }

    #[test]
    fn a_batch_takes_each_key_once_and_later_writes_to_it_keep_their_order() {
        let mut queue = Queue::default();
        for key in ["a", "b", "a", "c", "a", "b"] {
            queue.waiting.push_back(put(key));
        }
        assert_eq!(keys(&queue.next_batch()), ["a", "b", "c"]);
        assert_eq!(keys(&queue.next_batch()), ["a", "b"]);
        assert_eq!(keys(&queue.next_batch()), ["a"]);
        assert!(queue.next_batch().is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_write_and_byte_limits() {
        let mut queue = Queue::default();
        for i in 0..MAX_WRITES + 3 {
            queue.waiting.push_back(put(&format!("k{i}")));
        }
        assert_eq!(queue.next_batch().len(), MAX_WRITES);
        assert_eq!(queue.next_batch().len(), 3);
        let big = |key: &str| {
            let op = Op::Put(v1::CommandPut { key: key.as_bytes().to_vec(), value: vec![0; MAX_BYTES / 2] });
            Waiting { op, answer: oneshot::channel().0 }
        };
        for key in ["x", "y", "z"] {
            queue.waiting.push_back(big(key));
        }
        assert_eq!(keys(&queue.next_batch()), ["x"], "two halves and their keys pass the limit");
        assert_eq!(keys(&queue.next_batch()), ["y"]);
        // One write larger than the limit still goes, alone.
        queue.waiting.push_back(Waiting {
            op: Op::Put(v1::CommandPut { key: b"huge".to_vec(), value: vec![0; MAX_BYTES * 2] }),
            answer: oneshot::channel().0,
        });
        assert_eq!(keys(&queue.next_batch()), ["z"]);
        assert_eq!(keys(&queue.next_batch()), ["huge"]);
    }
}
