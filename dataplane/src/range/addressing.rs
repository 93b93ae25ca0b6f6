//! Addressing at scale: how many descriptors, meta ranges and lookups a constellation of a given
//! size needs, for the two-level meta layout (CockroachDB's meta1/meta2) that the single meta
//! range grows into.
//!
//! Today one meta range holds every descriptor, every node keeps a table of them (filled from
//! meta: a node without a meta replica reads it through one that has), and a client caches at
//! most `MAX_CACHED_RANGES` of them, refreshed on `RANGE_MISMATCH`. That holds to about 2.8
//! million ranges — 1.4 PiB at the default range size — before the meta range passes its own
//! split size. Past that, meta splits like any range: meta2 ranges hold the data ranges'
//! descriptors (keyed by end key), and one meta1 range holds the meta2 ranges' descriptors. A
//! lookup then reads meta1 (cached by every client and node: it is tiny and changes only when
//! meta2 splits) and one meta2 range; a warm cache needs no lookup at all. [`plan`] computes
//! the figures; the tests pin them for 1 EiB.

/// Bytes one descriptor takes in meta: the protobuf (id, two keys, three replicas, generation)
/// plus the MVCC key, for keys of `key_bytes`.
pub fn descriptor_bytes(key_bytes: u64, replicas: u64) -> u64 {
    let protobuf = 2 + 10 + 2 * (2 + key_bytes) + 2 + replicas * 10 + 2 + 10;
    let mvcc_key = key_bytes + 2 + 12;
    protobuf + mvcc_key + 16
}

/// The meta layout of a constellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaLayout {
    pub data_ranges: u64,
    pub meta2_bytes: u64,
    pub meta2_ranges: u64,
    pub meta1_bytes: u64,
    /// Range lookups a request needs with a cold cache (meta1 cached, as it always is).
    pub cold_lookups: u64,
    /// Descriptors a client caches to reach every range without a lookup.
    pub descriptors_for_a_warm_cache: u64,
}

/// The layout for `total_bytes` of data in ranges of `range_bytes`, keys of `key_bytes`.
pub fn plan(total_bytes: u128, range_bytes: u64, key_bytes: u64, replicas: u64) -> MetaLayout {
    let data_ranges = total_bytes.div_ceil(u128::from(range_bytes.max(1))) as u64;
    let per_descriptor = descriptor_bytes(key_bytes, replicas);
    let meta2_bytes = data_ranges.saturating_mul(per_descriptor);
    let meta2_ranges = meta2_bytes.div_ceil(range_bytes.max(1)).max(1);
    MetaLayout {
        data_ranges,
        meta2_bytes,
        meta2_ranges,
        meta1_bytes: meta2_ranges * per_descriptor,
        cold_lookups: if meta2_ranges > 1 { 2 } else { 1 },
        descriptors_for_a_warm_cache: data_ranges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const EIB: u128 = 1 << 60;

    #[test]
    fn an_exabyte_needs_two_levels_of_meta_and_two_lookups_at_most() {
        let layout = plan(EIB, 512 << 20, 32, 3);
        // 2^60 / 2^29 data ranges.
        assert_eq!(layout.data_ranges, 1 << 31);
        let per = descriptor_bytes(32, 3);
        assert!((100..200).contains(&per), "a descriptor is about {per} bytes");
        // meta2 is a few hundred GiB: hundreds of ranges, spread like any other.
        assert!(layout.meta2_bytes > 200 * GIB && layout.meta2_bytes < 400 * GIB, "{layout:?}");
        assert!((400..800).contains(&layout.meta2_ranges), "{layout:?}");
        // meta1 fits in one range many times over, and never splits.
        assert!(layout.meta1_bytes < (512 << 20) / 1000, "{layout:?}");
        assert_eq!(layout.cold_lookups, 2);
    }

    #[test]
    fn one_meta_range_serves_until_half_a_petabyte() {
        let small = plan(512u128 << 40, 512 << 20, 32, 3);
        assert_eq!(small.data_ranges, 1 << 20);
        assert_eq!(small.meta2_ranges, 1, "a million ranges' descriptors fit in one meta range: {small:?}");
        assert_eq!(small.cold_lookups, 1);
        let big = plan(2048u128 << 40, 512 << 20, 32, 3);
        assert!(big.meta2_ranges > 1, "{big:?}");
    }
}
