//! Byte layouts of the node's RocksDB keys.
//!
//! Range data (column family `range_data`) is keyed by the *user key*, not by range: ranges
//! are spans of one ordered keyspace, so splitting or merging a range moves no data. A user key
//! is escaped order-preservingly and prefix-free (0x00 → 0x00 0xFF, terminated by 0x00 0x01):
//!
//! ```text
//! escape(key)                        -> key descriptor (sorts just before the versions)
//! escape(key) ++ !ts (12 bytes, BE)  -> one version; inverted so the newest sorts first
//! ```
//!
//! Raft state keeps the seed's `/<rangeId>/raft/...` namespacing as fixed-width prefixes:
//!
//! ```text
//! raft_log:   rangeId u64 BE ++ index u64 BE   (the seed's /<rangeId>/raft/logs/<index>)
//! raft_state: rangeId u64 BE ++ tag u8         (/<rangeId>/raft/vote, .../committed, ...)
//! ```

use crate::clock::Timestamp;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// Appends the order-preserving, prefix-free encoding of `key`.
pub fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    out.reserve(key.len() + 2 + Timestamp::ENCODED_LEN);
    for &byte in key {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

/// The key of `key`'s descriptor, which is also the prefix of all its versions.
pub fn descriptor_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    escape_into(key, &mut out);
    out
}

/// The key of `key`'s version written at `ts`.
pub fn version_key(key: &[u8], ts: Timestamp) -> Vec<u8> {
    let mut out = descriptor_key(key);
    push_inverted(&mut out, ts);
    out
}

pub fn push_inverted(out: &mut Vec<u8>, ts: Timestamp) {
    out.extend(ts.to_be_bytes().iter().map(|b| !b));
}

/// Past every version of the key whose descriptor key is `prefix`, before the next user key.
pub fn after_versions(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + Timestamp::ENCODED_LEN + 1);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&[0xFF; Timestamp::ENCODED_LEN + 1]);
    out
}

/// A decoded `range_data` key.
#[derive(Debug, PartialEq, Eq)]
pub struct DataKey {
    pub user_key: Vec<u8>,
    /// Length of the escaped user key, i.e. of the descriptor key.
    pub prefix_len: usize,
    /// `None` for the descriptor, the version's timestamp otherwise.
    pub version: Option<Timestamp>,
}

/// Decodes a `range_data` key; `None` if the bytes are not one (corruption).
pub fn decode_data_key(raw: &[u8]) -> Option<DataKey> {
    let mut user_key = Vec::with_capacity(raw.len());
    let mut i = 0;
    loop {
        let byte = *raw.get(i)?;
        if byte != ESCAPE {
            user_key.push(byte);
            i += 1;
            continue;
        }
        match *raw.get(i + 1)? {
            ESCAPED_ZERO => {
                user_key.push(ESCAPE);
                i += 2;
            }
            TERMINATOR => break,
            _ => return None,
        }
    }
    let prefix_len = i + 2;
    let version = match raw.len() - prefix_len {
        0 => None,
        Timestamp::ENCODED_LEN => {
            let mut bytes = [0u8; Timestamp::ENCODED_LEN];
            for (out, b) in bytes.iter_mut().zip(&raw[prefix_len..]) {
                *out = !b;
            }
            Some(Timestamp::from_be_bytes(bytes))
        }
        _ => return None,
    };
    Some(DataKey { user_key, prefix_len, version })
}

/// A per-range system record in `range_data`. `0x00 0x00` begins no escaped user key (a user
/// 0x00 is always followed by 0xFF or 0x01), so these never collide with data and sort first.
pub fn system_key(kind: u8, range_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(11);
    key.extend_from_slice(&[ESCAPE, ESCAPE, kind]);
    key.extend_from_slice(&range_id.to_be_bytes());
    key
}

/// `system_key` kinds.
pub const SYSTEM_APPLIED_STATE: u8 = b'A';
/// A range descriptor held by the meta range.
pub const SYSTEM_RANGE_DESCRIPTOR: u8 = b'D';
/// The meta range's next unused range id (one record, range id 0).
pub const SYSTEM_RANGE_ID_COUNTER: u8 = b'N';

/// Node-local record of a hosted replica: `replica/` ++ range id (BE) → its descriptor.
pub const REPLICA_RECORD_PREFIX: &[u8] = b"replica/";
/// Node-local tombstone of a replica this node removed: `removed/` ++ range id (BE). A split
/// applied late never brings such a replica back.
pub const REMOVED_RECORD_PREFIX: &[u8] = b"removed/";

pub fn node_local_range_key(prefix: &[u8], range_id: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&range_id.to_be_bytes());
    key
}

/// What a `raft_state` record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftStateTag {
    Vote = 1,
    Committed = 2,
    LastPurgedLogId = 3,
    SnapshotMeta = 4,
}

pub fn raft_log_key(range_id: u64, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&range_id.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Just past `raft_log_key(range_id, index)`, for exclusive range ends.
pub fn raft_log_key_after(range_id: u64, index: u64) -> Vec<u8> {
    let mut key = raft_log_key(range_id, index).to_vec();
    key.push(0);
    key
}

pub fn raft_state_key(range_id: u64, tag: RaftStateTag) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&range_id.to_be_bytes());
    key[8] = tag as u8;
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaping_preserves_order_and_is_prefix_free(a in proptest::collection::vec(any::<u8>(), 0..24),
                                                        b in proptest::collection::vec(any::<u8>(), 0..24)) {
            let (ea, eb) = (descriptor_key(&a), descriptor_key(&b));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            if a != b {
                prop_assert!(!ea.starts_with(&eb) && !eb.starts_with(&ea));
            }
            let decoded = decode_data_key(&ea).unwrap();
            prop_assert_eq!(decoded.user_key, a.clone());
            prop_assert_eq!(decoded.version, None);
        }

        #[test]
        fn versions_sort_newest_first_and_stay_inside_their_key(key in proptest::collection::vec(any::<u8>(), 0..16),
                                                                 other in proptest::collection::vec(any::<u8>(), 0..16),
                                                                 t1 in any::<(u64, u32)>(), t2 in any::<(u64, u32)>()) {
            let (t1, t2) = (Timestamp::new(t1.0, t1.1), Timestamp::new(t2.0, t2.1));
            let (k1, k2) = (version_key(&key, t1), version_key(&key, t2));
            prop_assert_eq!(t1.cmp(&t2), k2.cmp(&k1));
            let prefix = descriptor_key(&key);
            prop_assert!(prefix < k1 && k1 < after_versions(&prefix));
            prop_assert_eq!(decode_data_key(&k1).unwrap().version, Some(t1));
            if other != key {
                // Another key's records never fall among this key's.
                let other_prefix = descriptor_key(&other);
                let inside = prefix <= other_prefix && other_prefix < after_versions(&prefix);
                prop_assert!(!inside);
            }
        }
    }

    #[test]
    fn corrupt_keys_are_rejected() {
        assert_eq!(decode_data_key(b"abc"), None);
        assert_eq!(decode_data_key(&[b'a', 0x00, 0x07]), None);
        let mut key = descriptor_key(b"a");
        key.push(1);
        assert_eq!(decode_data_key(&key), None);
    }

    #[test]
    fn raft_keys_group_by_range_then_index() {
        assert!(raft_log_key(1, u64::MAX) < raft_log_key(2, 0));
        assert!(raft_log_key(1, 5).as_slice() < raft_log_key_after(1, 5).as_slice());
        assert!(raft_log_key_after(1, 5).as_slice() < raft_log_key(1, 6).as_slice());
        assert_ne!(raft_state_key(1, RaftStateTag::Vote), raft_state_key(2, RaftStateTag::Vote));
    }
}
