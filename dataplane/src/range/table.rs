//! The descriptor table: every range descriptor this node knows, newest generation first. The
//! meta range's replicas fill it from what meta applies; every other node from reads of meta
//! (`range::meta`), from the replicas it hosts, and from the answers of moves and splits.

use std::collections::BTreeMap;
use std::sync::RwLock;

use pleiades_proto::v1;

use super::META_RANGE_ID;
use crate::raft::NodeId;

pub fn descriptor_contains(descriptor: &v1::RangeDescriptor, key: &[u8]) -> bool {
    !descriptor.meta
        && descriptor.merged_into == 0
        && key >= descriptor.start_key.as_slice()
        && (descriptor.end_key.is_empty() || key < descriptor.end_key.as_slice())
}

#[derive(Default)]
pub struct DescriptorTable {
    ranges: RwLock<BTreeMap<u64, v1::RangeDescriptor>>,
}

impl DescriptorTable {
    /// Keeps `descriptor` unless a newer generation of the range is known.
    pub fn learn(&self, descriptor: v1::RangeDescriptor) {
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        match ranges.get(&descriptor.range_id) {
            Some(known) if known.generation >= descriptor.generation => {}
            _ => {
                ranges.insert(descriptor.range_id, descriptor);
            }
        }
    }

    pub fn get(&self, range_id: u64) -> Option<v1::RangeDescriptor> {
        self.read().get(&range_id).cloned()
    }

    pub fn meta(&self) -> Option<v1::RangeDescriptor> {
        self.get(META_RANGE_ID)
    }

    /// The range holding `key`; while a split is learned half-way (the right half before the
    /// left's new span), the newest generation that contains it.
    pub fn for_key(&self, key: &[u8]) -> Option<v1::RangeDescriptor> {
        self.read().values().filter(|d| descriptor_contains(d, key)).max_by_key(|d| d.generation).cloned()
    }

    /// The ranges that exist (not the tombstones of merged ones).
    pub fn descriptors(&self) -> Vec<v1::RangeDescriptor> {
        self.read().values().filter(|d| d.merged_into == 0).cloned().collect()
    }

    /// Every descriptor, with the tombstones of merged ranges: what meta must record.
    pub fn with_tombstones(&self) -> Vec<v1::RangeDescriptor> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().values().filter(|d| d.merged_into == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ranges with a replica on `node`.
    pub fn held_by(&self, node: NodeId) -> usize {
        self.read().values().filter(|d| d.replicas.contains(&node)).count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, v1::RangeDescriptor>> {
        self.ranges.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(range_id: u64, start: &[u8], end: &[u8], generation: u64) -> v1::RangeDescriptor {
        v1::RangeDescriptor {
            range_id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            replicas: vec![1, 2, 3],
            generation,
            ..Default::default()
        }
    }

    #[test]
    fn a_split_learned_half_way_routes_by_the_newest_generation() {
        let table = DescriptorTable::default();
        table.learn(range(2, b"", b"", 1));
        // The right half arrives before the left's new span.
        table.learn(range(7, b"m", b"", 2));
        assert_eq!(table.for_key(b"x").unwrap().range_id, 7);
        assert_eq!(table.for_key(b"a").unwrap().range_id, 2);
        table.learn(range(2, b"", b"m", 2));
        table.learn(range(2, b"", b"", 1));
        assert_eq!(table.get(2).unwrap().end_key, b"m", "an older generation never replaces a newer one");
    }
}
