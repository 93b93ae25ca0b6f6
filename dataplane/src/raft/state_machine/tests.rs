//! Commands as every replica applies them. Merges: the freeze stops writes, the merge takes the
//! span, and the left's log decides between a merge and its abandonment, one attempt at a time.
//! Batches: each write judged on its own, all written at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use openraft::{CommittedLeaderId, EntryPayload, Membership};

use super::*;
use crate::clock::{SystemClock, DEFAULT_MAX_OFFSET};
use crate::storage::keys::{node_local_range_key, REMOVED_RECORD_PREFIX};
use crate::storage::StorageConfig;

#[derive(Default)]
struct Seen(Mutex<Vec<(u64, u64)>>);

impl RangeObserver for Seen {
    fn descriptor_applied(&self, _: v1::RangeDescriptor) {}
    fn range_changed(&self, _: v1::RangeDescriptor) {}
    fn range_split(&self, _: v1::RangeDescriptor, _: Option<v1::RangeDescriptor>) {}
    fn range_merged(&self, left: v1::RangeDescriptor, right: v1::RangeDescriptor) {
        self.0.lock().unwrap().push((left.range_id, right.range_id));
    }
}

/// One node's replicas of two neighbouring ranges, on one storage.
struct Node {
    _dir: tempfile::TempDir,
    storage: Storage,
    hlc: Arc<Hlc>,
    seen: Arc<Seen>,
    left: RangeStateMachine,
    right: RangeStateMachine,
    index: u64,
}

fn range(range_id: u64, start: &str, end: &str) -> v1::RangeDescriptor {
    v1::RangeDescriptor {
        range_id,
        start_key: start.into(),
        end_key: end.into(),
        replicas: vec![1, 2, 3],
        generation: 3,
        ..Default::default()
    }
}

impl Node {
    async fn new(right_voters: &[NodeId]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db"), &StorageConfig::default()).unwrap();
        let hlc = Arc::new(Hlc::new(Arc::new(SystemClock), DEFAULT_MAX_OFFSET));
        let seen = Arc::new(Seen::default());
        let open = |descriptor| {
            let shared = SharedDescriptor::new(descriptor);
            RangeStateMachine::open(shared, storage.clone(), hlc.clone(), &dir.path().join("snapshots"), seen.clone())
                .unwrap()
        };
        let mut node = Node {
            left: open(range(2, "", "m")),
            right: open(range(3, "m", "")),
            storage: storage.clone(),
            hlc: hlc.clone(),
            seen: seen.clone(),
            _dir: dir,
            index: 0,
        };
        node.settle_membership(true, &[1, 2, 3]).await;
        node.settle_membership(false, right_voters).await;
        node
    }

    fn entry(&mut self, payload: EntryPayload<TypeConfig>) -> Entry {
        self.index += 1;
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index), payload }
    }

    async fn settle_membership(&mut self, left: bool, voters: &[NodeId]) {
        let nodes: BTreeMap<NodeId, BasicNode> = voters.iter().map(|id| (*id, BasicNode::new("x"))).collect();
        let ids: BTreeSet<NodeId> = voters.iter().copied().collect();
        let entry = self.entry(EntryPayload::Membership(Membership::new(vec![ids], nodes)));
        let machine = if left { &mut self.left } else { &mut self.right };
        machine.apply([entry]).await.unwrap();
    }

    async fn apply(&mut self, left: bool, op: Op) -> Outcome {
        let command = v1::Command { timestamp: Some(self.hlc.now().unwrap().into()), op: Some(op) };
        let entry = self.entry(EntryPayload::Normal(command));
        let machine = if left { &mut self.left } else { &mut self.right };
        machine.apply([entry]).await.unwrap().remove(0)
    }

    async fn begin(&mut self) -> u64 {
        match self.apply(true, Op::BeginMerge(v1::BeginMerge { right_range_id: 3 })).await {
            Outcome::Range(descriptor) => descriptor.merge_epoch,
            other => panic!("{other:?}"),
        }
    }

    async fn freeze(&mut self, epoch: u64) -> v1::RangeDescriptor {
        match self.apply(false, Op::FreezeForMerge(v1::FreezeForMerge { into_range_id: 2, epoch })).await {
            Outcome::Frozen { descriptor, .. } => descriptor,
            other => panic!("{other:?}"),
        }
    }

    async fn abandon(&mut self, left: bool, epoch: u64) -> v1::RangeDescriptor {
        match self.apply(left, Op::AbandonMerge(v1::AbandonMerge { right_range_id: 3, epoch })).await {
            Outcome::Range(descriptor) => descriptor,
            other => panic!("{other:?}"),
        }
    }

    async fn merge(&mut self, right: v1::RangeDescriptor) -> Outcome {
        self.apply(true, Op::Merge(v1::MergeRanges { right: Some(right) })).await
    }
}

fn put(key: &str) -> Op {
    Op::Put(v1::CommandPut { key: key.into(), value: b"v".to_vec() })
}

#[tokio::test]
async fn a_frozen_range_takes_no_write_and_the_merge_takes_its_span() {
    let mut node = Node::new(&[1, 2, 3]).await;
    assert!(matches!(node.apply(false, put("p")).await, Outcome::Written { .. }));
    let epoch = node.begin().await;
    let frozen = node.freeze(epoch).await;
    assert!(matches!(node.apply(false, put("q")).await, Outcome::Refused(_)), "frozen: no write");
    assert!(matches!(node.apply(true, put("q")).await, Outcome::Refused(_)), "not the left's key yet");
    let Outcome::Merged { left, right } = node.merge(frozen).await else { panic!("not merged") };
    assert_eq!((left.start_key.as_slice(), left.end_key.as_slice()), (&b""[..], &b""[..]));
    assert!(left.generation > 3 && right.generation == left.generation && right.merged_into == 2);
    assert_eq!(*node.seen.0.lock().unwrap(), vec![(2, 3)]);
    assert!(matches!(node.apply(true, put("q")).await, Outcome::Written { .. }), "the merged range writes there");
    assert!(node.storage.get_latest(b"p").unwrap().is_some(), "the right's data stayed where it was");
    let tombstone = node_local_range_key(REMOVED_RECORD_PREFIX, 3);
    assert!(node.storage.get_local(&tombstone).unwrap().is_some(), "a restart does not reopen the right");
}

#[tokio::test]
async fn an_abandoned_attempt_never_merges_and_its_thaw_spares_a_newer_attempt() {
    let mut node = Node::new(&[1, 2, 3]).await;
    let first = node.begin().await;
    let frozen_first = node.freeze(first).await;
    assert_eq!(node.abandon(true, first).await.absorbing, 0);
    assert!(matches!(node.merge(frozen_first.clone()).await, Outcome::Refused(_)), "abandoned in the left's log first");
    assert_eq!(node.abandon(false, first).await.merging_into, 0, "the right thaws");
    assert!(matches!(node.apply(false, put("q")).await, Outcome::Written { .. }));

    let second = node.begin().await;
    assert_ne!(first, second);
    let frozen_second = node.freeze(second).await;
    // The first attempt's thaw, arriving late, leaves the second attempt's freeze alone.
    assert_eq!(node.abandon(false, first).await.merging_into, 2);
    assert!(matches!(node.merge(frozen_first).await, Outcome::Refused(_)), "an old attempt's copy");
    assert!(matches!(node.merge(frozen_second).await, Outcome::Merged { .. }));
}

#[tokio::test]
async fn ranges_on_different_nodes_do_not_merge() {
    let mut node = Node::new(&[1, 2, 4]).await;
    let epoch = node.begin().await;
    let frozen = node.freeze(epoch).await;
    assert!(matches!(node.merge(frozen).await, Outcome::Refused(_)));
    assert_eq!(node.left.descriptor.get().absorbing, 0, "a refused merge ends its attempt");
    assert!(node.seen.0.lock().unwrap().is_empty());
}

fn batch(ops: Vec<Op>) -> Op {
    Op::Batch(v1::CommandBatch {
        commands: ops.into_iter().map(|op| v1::Command { timestamp: None, op: Some(op) }).collect(),
    })
}

#[tokio::test]
async fn a_batch_gives_each_write_its_own_outcome_and_writes_them_at_once() {
    let mut node = Node::new(&[1, 2, 3]).await;
    assert!(matches!(node.apply(true, put("a")).await, Outcome::Written { version: 1, .. }));
    let cas = |key: &str, expected: &str| {
        Op::Cas(v1::CommandCompareAndSwap {
            key: key.into(),
            expected: expected.into(),
            value: b"swapped".to_vec(),
            ..Default::default()
        })
    };
    let ops = vec![
        put("a"),
        put("b"),
        Op::Delete(v1::CommandDelete { key: b"c".to_vec() }),
        cas("d", "absent"),
        put("x"),
        put("b"),
        Op::AllocateRangeId(v1::AllocateRangeId {}),
    ];
    let Outcome::Batch(outcomes) = node.apply(true, batch(ops)).await else { panic!("not a batch outcome") };
    assert!(matches!(outcomes[0], Outcome::Written { version: 2, .. }), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Outcome::Written { version: 1, .. }), "{:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Outcome::Written { version: 1, .. }), "a delete writes a tombstone");
    assert!(matches!(outcomes[3], Outcome::CompareFailed { current: None }), "{:?}", outcomes[3]);
    assert!(matches!(&outcomes[4], Outcome::Refused(why) if why.contains("outside")), "{:?}", outcomes[4]);
    assert!(matches!(&outcomes[5], Outcome::Refused(why) if why.contains("twice")), "{:?}", outcomes[5]);
    assert!(matches!(outcomes[6], Outcome::Refused(_)), "only client writes batch");
    assert_eq!(outcomes.len(), 7);
    assert_eq!(node.storage.get_latest(b"b").unwrap().map(|v| v.value), Some(b"v".to_vec()));
    assert_eq!(node.storage.get_latest(b"d").unwrap(), None, "a failed cas writes nothing");

    // A frozen range refuses every write of a batch.
    let epoch = node.begin().await;
    node.freeze(epoch).await;
    let Outcome::Batch(outcomes) = node.apply(false, batch(vec![put("p"), put("q")])).await else { panic!() };
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Refused(why) if why.contains("frozen"))), "{outcomes:?}");
}
