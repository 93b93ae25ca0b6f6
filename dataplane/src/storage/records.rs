//! Value layouts of range data records.

use crate::clock::Timestamp;

use super::StorageError;

const DESCRIPTOR_FORMAT: u8 = 1;
const DESCRIPTOR_LEN: usize = 1 + 4 + 4 + 12 + 12 + 1 + 1;
const FLAG_VACUUMABLE: u8 = 1;
const FLAG_DELETED: u8 = 2;
const VERSION_HEADER_LEN: usize = 5;
const KIND_VALUE: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

fn corrupt(what: &'static str, detail: String) -> StorageError {
    StorageError::Corrupt { what, detail }
}

/// A key's descriptor. Version numbers are contiguous from `oldest_version` to
/// `latest_version` (retention and vacuum only ever drop the oldest), so the count is derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub latest_version: u32,
    pub oldest_version: u32,
    pub first_write: Timestamp,
    pub last_write: Timestamp,
    pub vacuumable: bool,
    pub deleted: bool,
    /// 0: the node's default.
    pub retention: u8,
}

impl Descriptor {
    /// The descriptor of a key about to get its first version.
    pub fn new(first_write: Timestamp) -> Self {
        Descriptor {
            latest_version: 0,
            oldest_version: 1,
            first_write,
            last_write: Timestamp::MIN,
            vacuumable: false,
            deleted: false,
            retention: 0,
        }
    }

    pub fn version_count(&self) -> u32 {
        // Widened so a key at version u32::MAX cannot overflow; decode keeps oldest >= 1.
        (u64::from(self.latest_version) + 1).saturating_sub(u64::from(self.oldest_version)) as u32
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DESCRIPTOR_LEN);
        out.push(DESCRIPTOR_FORMAT);
        out.extend_from_slice(&self.latest_version.to_be_bytes());
        out.extend_from_slice(&self.oldest_version.to_be_bytes());
        out.extend_from_slice(&self.first_write.to_be_bytes());
        out.extend_from_slice(&self.last_write.to_be_bytes());
        let flags = if self.vacuumable { FLAG_VACUUMABLE } else { 0 } | if self.deleted { FLAG_DELETED } else { 0 };
        out.push(flags);
        out.push(self.retention);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != DESCRIPTOR_LEN || bytes[0] != DESCRIPTOR_FORMAT {
            return Err(corrupt("key descriptor", format!("{} bytes, format {:?}", bytes.len(), bytes.first())));
        }
        let u32_at = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let ts_at = |at: usize| {
            let mut ts = [0u8; 12];
            ts.copy_from_slice(&bytes[at..at + 12]);
            Timestamp::from_be_bytes(ts)
        };
        let descriptor = Descriptor {
            latest_version: u32_at(1),
            oldest_version: u32_at(5),
            first_write: ts_at(9),
            last_write: ts_at(21),
            vacuumable: bytes[33] & FLAG_VACUUMABLE != 0,
            deleted: bytes[33] & FLAG_DELETED != 0,
            retention: bytes[34],
        };
        if descriptor.oldest_version == 0 || descriptor.oldest_version > descriptor.latest_version.saturating_add(1) {
            return Err(corrupt(
                "key descriptor",
                format!("versions {}..={}", descriptor.oldest_version, descriptor.latest_version),
            ));
        }
        Ok(descriptor)
    }
}

/// The header of one stored version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u32,
    pub tombstone: bool,
}

impl VersionRecord {
    pub fn encode(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(VERSION_HEADER_LEN + value.len());
        out.push(if self.tombstone { KIND_TOMBSTONE } else { KIND_VALUE });
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// The header and the value bytes.
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8]), StorageError> {
        let (header, value) = bytes
            .split_at_checked(VERSION_HEADER_LEN)
            .ok_or_else(|| corrupt("version record", format!("{} bytes", bytes.len())))?;
        let tombstone = match header[0] {
            KIND_VALUE => false,
            KIND_TOMBSTONE => true,
            other => return Err(corrupt("version record", format!("unknown kind {other}"))),
        };
        let version = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        Ok((VersionRecord { version, tombstone }, value))
    }
}
