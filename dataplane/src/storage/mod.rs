//! Node storage: one RocksDB per node, column families by kind of data (never one per range, so
//! a node with thousands of ranges has four memtables, not thousands, and splits move nothing).
//!
//! Range data is MVCC: every write adds a version keyed by HLC timestamp (see [`keys`]). The
//! seed's versioned keys are served from those versions: latest, version N, the list, a per-key
//! descriptor, a retention count (at most 255) enforced by deleting the oldest version in the
//! same batch — no cascading renames — and a vacuum pass.
//!
//! Durability: every write is one `WriteBatch` written with `sync = true`. Concurrent writers
//! are group-committed by RocksDB itself: its write thread makes one writer the leader of a
//! group, appends the group's batches to the WAL and fsyncs once for all of them.

pub mod keys;
mod records;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRawIterator, FlushOptions,
    Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};
use serde::Deserialize;

use crate::clock::{Hlc, Timestamp};
pub use keys::RaftStateTag;
use records::{Descriptor, VersionRecord};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_RANGE_DATA: &str = "range_data";
pub const CF_NODE_LOCAL: &str = "node_local";
const COLUMN_FAMILIES: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_RANGE_DATA, CF_NODE_LOCAL];

/// Raw key-value records, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The seed's maximum number of versions per key.
pub const MAX_RETENTION: u8 = 255;
/// Stripes of the per-key write locks.
const LOCK_STRIPES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("a write at {ts} is not after the key's latest version at {latest}")]
    TimestampNotAfterLatest { ts: Timestamp, latest: Timestamp },
    #[error("key {key:02x?} has reached version {}, the last a key can have", u32::MAX)]
    VersionsExhausted { key: Vec<u8> },
    #[error("a key appears more than once in one batch")]
    DuplicateKeyInBatch,
    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),
    #[error("clock: {0}")]
    Clock(#[from] crate::clock::ClockError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// Block cache shared by all column families.
    pub block_cache_bytes: u64,
    /// Memtable (write buffer) size per column family.
    pub memtable_bytes: u64,
    /// All memtables together: past this RocksDB flushes early. Charged to the block cache, so
    /// the two stay within `block-cache-bytes` together, however many column families fill.
    pub memtable_budget_bytes: u64,
    pub compression: Compression,
    /// Versions kept per key unless the key says otherwise (1 to 255).
    pub default_retention: u8,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            block_cache_bytes: 128 << 20,
            memtable_bytes: 32 << 20,
            memtable_budget_bytes: 64 << 20,
            compression: Compression::Lz4,
            default_retention: MAX_RETENTION,
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.default_retention == 0 {
            return Err(StorageError::InvalidConfig("storage.default-retention must be 1 to 255".into()));
        }
        if self.memtable_bytes < (1 << 20) {
            return Err(StorageError::InvalidConfig("storage.memtable-bytes must be at least 1 MiB".into()));
        }
        Ok(())
    }
}

/// A value as stored, with its version number and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedValue {
    pub version: u32,
    pub ts: Timestamp,
    pub value: Vec<u8>,
}

/// How much one scan returns: entries and bytes (keys and values, plus a little per entry for
/// their framing). The first entry is returned whatever its size, so a scan always advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimit {
    pub entries: usize,
    pub bytes: usize,
}

impl ScanLimit {
    /// Bytes counted per entry beyond its key and value: the version, timestamp and framing of
    /// the answer.
    pub const ENTRY_OVERHEAD: usize = 32;

    pub fn entries(entries: usize) -> Self {
        ScanLimit { entries, bytes: usize::MAX }
    }
}

/// Which limit ended a scan page early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanCut {
    Entries,
    Bytes,
}

/// One page of a scan.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub rows: Vec<(Vec<u8>, VersionedValue)>,
    /// Set when a limit cut the page and more keys follow: where the next page starts (forward)
    /// or ends, exclusively (reverse).
    pub resume: Option<Vec<u8>>,
    pub cut: Option<ScanCut>,
    bytes: usize,
}

impl ScanPage {
    /// Whether a row of this key and value length would exceed `limit`, and which part of it.
    fn full(&self, limit: &ScanLimit, key: &[u8], value_len: usize) -> Option<ScanCut> {
        let size = key.len() + value_len + ScanLimit::ENTRY_OVERHEAD;
        if self.rows.len() >= limit.entries {
            Some(ScanCut::Entries)
        } else if !self.rows.is_empty() && self.bytes.saturating_add(size) > limit.bytes {
            Some(ScanCut::Bytes)
        } else {
            None
        }
    }

    fn push(&mut self, key: Vec<u8>, value: VersionedValue) {
        self.bytes += key.len() + value.value.len() + ScanLimit::ENTRY_OVERHEAD;
        self.rows.push((key, value));
    }

    fn cut(&mut self, cut: ScanCut, resume: Vec<u8>) {
        self.cut = Some(cut);
        self.resume = Some(resume);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u32,
    pub ts: Timestamp,
    pub tombstone: bool,
    pub value_len: usize,
}

/// What the node knows about one key, without reading its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescriptor {
    pub version_count: u32,
    pub latest_version: u32,
    pub first_write: Timestamp,
    pub last_write: Timestamp,
    /// The key's older versions may be garbage-collected by [`Storage::vacuum`].
    pub vacuumable: bool,
    /// Versions kept (the node's default unless set for this key).
    pub retention: u8,
    /// The latest version is a delete.
    pub deleted: bool,
}

/// Writes applied atomically by [`Storage::write`].
#[derive(Debug, Default)]
pub struct MvccBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl MvccBatch {
    /// Takes owned buffers so a request's key and value move in without a copy.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((key.into(), Some(value.into())));
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((key.into(), None));
        self
    }
}

/// The latest of a batch's timestamp and its keys' (pushed past a key's latest version), and
/// the versions.
fn latest((batch_ts, written): (Timestamp, Vec<(Timestamp, u32)>)) -> (Timestamp, Vec<u32>) {
    let at = written.iter().map(|(ts, _)| *ts).fold(batch_ts, Timestamp::max);
    (at, written.into_iter().map(|(_, version)| version).collect())
}

#[derive(Debug, Clone)]
pub struct VacuumOptions {
    /// Keys examined per pass; a pass resumes where the last one stopped.
    pub max_keys_per_pass: usize,
    pub start: Vec<u8>,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        VacuumOptions { max_keys_per_pass: 10_000, start: Vec::new() }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VacuumReport {
    pub keys_scanned: usize,
    pub versions_removed: usize,
    pub keys_removed: usize,
    /// Where the next pass starts; `None` when the keyspace was covered.
    pub resume_key: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EngineStats {
    pub memtable_bytes: u64,
    pub sst_bytes: u64,
    pub pending_compaction_bytes: u64,
}

/// Storage latency histograms.
#[derive(Clone)]
pub struct StorageMetrics {
    pub write_seconds: Histogram,
    pub read_seconds: Histogram,
    pub wal_sync_seconds: Histogram,
}

impl StorageMetrics {
    fn new() -> Self {
        StorageMetrics {
            write_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            read_seconds: Histogram::new(exponential_buckets(0.000_001, 2.0, 20)),
            wal_sync_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pleiades_storage");
        r.register("write_seconds", "Write latency (synced and buffered)", self.write_seconds.clone());
        r.register("wal_sync_seconds", "WAL fsync latency (raft log group commit)", self.wal_sync_seconds.clone());
        r.register("read_seconds", "Read latency", self.read_seconds.clone());
    }
}

#[derive(Clone, Copy)]
enum Durability {
    Synced,
    Buffered,
}

/// Whether a write applies a committed raft command, and the range records that go with it.
enum Replicated<'a> {
    No,
    Yes(&'a [(Vec<u8>, Vec<u8>)]),
}

struct Inner {
    db: DB,
    sync_write: WriteOptions,
    /// For writes a later WAL sync covers: replicated applies (the raft log can replay them)
    /// and raft log appends (made durable by [`Storage::sync_wal`] before they are acknowledged).
    buffered_write: WriteOptions,
    default_retention: u8,
    key_locks: Vec<Mutex<()>>,
    /// Held while a replica record is checked and written: a split creating the right half and
    /// a leader creating the same replica must not both think they were first.
    replica_records: Mutex<()>,
    metrics: StorageMetrics,
}

/// The node's storage. Cheap to clone; RocksDB closes when the last clone is dropped.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

fn lock(mutex: &Mutex<()>) -> MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Storage {
    pub fn open(path: &Path, config: &StorageConfig) -> Result<Storage, StorageError> {
        config.validate()?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes as usize);
        let cf_options = |bloom: bool| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if bloom {
                table.set_bloom_filter(10.0, false);
            }
            let mut options = Options::default();
            options.set_block_based_table_factory(&table);
            options.set_write_buffer_size(config.memtable_bytes as usize);
            match config.compression {
                Compression::None => options.set_compression_type(DBCompressionType::None),
                Compression::Lz4 => {
                    // Fast on the hot levels, dense on the bottom one where most data lives.
                    options.set_compression_type(DBCompressionType::Lz4);
                    options.set_bottommost_compression_type(DBCompressionType::Zstd);
                }
                Compression::Zstd => options.set_compression_type(DBCompressionType::Zstd),
            }
            options
        };
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(4);
        // Without a cap, WAL files live until every column family has flushed past them, and the
        // busy raft log keeps the quiet ones from flushing: gigabytes of WAL and slow restarts.
        db_options.set_max_total_wal_size(256 << 20);
        db_options.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
            config.memtable_budget_bytes as usize,
            false,
            cache.clone(),
        ));
        let descriptors = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(*name == CF_RANGE_DATA)))
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)?;
        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        Ok(Storage {
            inner: Arc::new(Inner {
                db,
                sync_write,
                buffered_write: WriteOptions::default(),
                default_retention: config.default_retention,
                key_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                replica_records: Mutex::new(()),
                metrics: StorageMetrics::new(),
            }),
        })
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.inner.metrics
    }

    /// Flushes the WAL and memtables, so the next open replays nothing, and drops this handle.
    pub fn close(self) -> Result<(), StorageError> {
        let db = &self.inner.db;
        db.flush_wal(true)?;
        let handles: Vec<&ColumnFamily> = COLUMN_FAMILIES.iter().map(|name| self.cf(name)).collect();
        db.flush_cfs_opt(&handles, &FlushOptions::default())?;
        Ok(())
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        // Every column family is created at open (create_missing_column_families).
        self.inner.db.cf_handle(name).unwrap_or_else(|| unreachable!("column family {name} opened with the db"))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.commit_with(batch, Durability::Synced)
    }

    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let started = Instant::now();
        let options = match durability {
            Durability::Synced => &self.inner.sync_write,
            Durability::Buffered => &self.inner.buffered_write,
        };
        self.inner.db.write_opt(batch, options)?;
        self.inner.metrics.write_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes every write so far durable with one fsync of the WAL: the group commit of all
    /// ranges' buffered raft log appends.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        self.inner.db.flush_wal(true)?;
        self.inner.metrics.wal_sync_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn timed_read<T>(&self, read: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
        let started = Instant::now();
        let result = read();
        self.inner.metrics.read_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    fn stripe(&self, key: &[u8]) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() as usize) % LOCK_STRIPES
    }

    /// Locks the stripes of `keys` in ascending order, so concurrent batches cannot deadlock.
    fn lock_keys<'a>(&'a self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = keys.map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| lock(&self.inner.key_locks[s])).collect()
    }

    fn data_iter(&self) -> DBRawIterator<'_> {
        self.inner.db.raw_iterator_cf(self.cf(CF_RANGE_DATA))
    }

    fn read_descriptor(&self, key: &[u8]) -> Result<Option<Descriptor>, StorageError> {
        self.inner
            .db
            .get_pinned_cf(self.cf(CF_RANGE_DATA), keys::descriptor_key(key))?
            .map(|bytes| Descriptor::decode(&bytes))
            .transpose()
    }

    fn retention_of(&self, descriptor: &Descriptor) -> u8 {
        if descriptor.retention == 0 {
            self.inner.default_retention
        } else {
            descriptor.retention
        }
    }

    /// Writes `value` as the key's next version at `ts`; returns the version number.
    pub fn put(&self, key: &[u8], value: &[u8], ts: Timestamp) -> Result<u32, StorageError> {
        let mut batch = MvccBatch::default();
        batch.put(key, value);
        Ok(self.write(batch, ts)?[0])
    }

    /// Writes a delete (tombstone) version; older versions stay readable until vacuumed.
    pub fn delete(&self, key: &[u8], ts: Timestamp) -> Result<u32, StorageError> {
        let mut batch = MvccBatch::default();
        batch.delete(key);
        Ok(self.write(batch, ts)?[0])
    }

    /// Applies every operation of `batch` at `ts`, all or nothing, in one synced WriteBatch.
    /// Returns each operation's new version number.
    pub fn write(&self, batch: MvccBatch, ts: Timestamp) -> Result<Vec<u32>, StorageError> {
        Ok(latest(self.apply(batch, || Ok(ts), &Replicated::No)?).1)
    }

    /// Applies a committed raft command: at `ts`, or just after a key's latest version when
    /// that is not earlier (a deterministic rule, so every replica writes the same versions),
    /// with the range's `system` records in the same batch. Buffered: the raft log replays it.
    pub fn write_replicated(
        &self,
        batch: MvccBatch,
        ts: Timestamp,
        system: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(Timestamp, Vec<u32>), StorageError> {
        self.apply(batch, || Ok(ts), &Replicated::Yes(system)).map(latest)
    }

    /// [`Storage::write_replicated`], with each key's own timestamp and version.
    pub fn write_replicated_each(
        &self,
        batch: MvccBatch,
        ts: Timestamp,
        system: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<(Timestamp, u32)>, StorageError> {
        Ok(self.apply(batch, || Ok(ts), &Replicated::Yes(system))?.1)
    }

    /// Writes system records (a range's applied state) alone, buffered like a replicated apply.
    pub fn put_system(&self, system: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        for (key, value) in system {
            write.put_cf(self.cf(CF_RANGE_DATA), key, value);
        }
        self.commit_with(write, Durability::Buffered)
    }

    /// A system record of `range_data` (see [`keys::system_key`]).
    pub fn get_system(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.db.get_cf(self.cf(CF_RANGE_DATA), key)?)
    }

    /// Like [`Storage::write`], at a timestamp read from `clock` once the batch's keys are
    /// locked: it is after every version already written to them, so racing writers to one key
    /// all succeed in the clock's order. Returns the timestamp and the version numbers.
    pub fn write_now(&self, batch: MvccBatch, clock: &Hlc) -> Result<(Timestamp, Vec<u32>), StorageError> {
        self.apply(batch, || Ok(clock.now()?), &Replicated::No).map(latest)
    }

    /// Writes the batch; returns its timestamp, and each key's own timestamp and version in the
    /// batch's order.
    fn apply(
        &self,
        batch: MvccBatch,
        timestamp: impl FnOnce() -> Result<Timestamp, StorageError>,
        replicated: &Replicated<'_>,
    ) -> Result<(Timestamp, Vec<(Timestamp, u32)>), StorageError> {
        let mut distinct: Vec<&[u8]> = batch.ops.iter().map(|(k, _)| k.as_slice()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != batch.ops.len() {
            return Err(StorageError::DuplicateKeyInBatch);
        }
        let _guards = self.lock_keys(batch.ops.iter().map(|(k, _)| k.as_slice()));
        let batch_ts = timestamp()?;
        let cf = self.cf(CF_RANGE_DATA);
        let mut write = WriteBatch::default();
        let mut versions = Vec::with_capacity(batch.ops.len());
        for (key, value) in &batch.ops {
            let mut ts = batch_ts;
            let mut descriptor = match self.read_descriptor(key)? {
                Some(d) if d.last_write >= ts => match replicated {
                    Replicated::No => return Err(StorageError::TimestampNotAfterLatest { ts, latest: d.last_write }),
                    Replicated::Yes(_) => {
                        ts = d.last_write.next();
                        d
                    }
                },
                Some(d) => d,
                None => Descriptor::new(ts),
            };
            // A refusal, not a wrap: a wrapped number would reorder the key's versions.
            descriptor.latest_version = descriptor
                .latest_version
                .checked_add(1)
                .ok_or_else(|| StorageError::VersionsExhausted { key: key.clone() })?;
            descriptor.last_write = ts;
            descriptor.deleted = value.is_none();
            let record = VersionRecord { version: descriptor.latest_version, tombstone: value.is_none() };
            write.put_cf(cf, keys::version_key(key, ts), record.encode(value.as_deref().unwrap_or_default()));
            // Retention: drop the oldest versions in this same batch instead of renaming any.
            let retention = u32::from(self.retention_of(&descriptor));
            let excess = descriptor.version_count().saturating_sub(retention);
            if excess > 0 {
                self.delete_oldest_versions(key, excess as usize, &mut write)?;
                descriptor.oldest_version += excess;
            }
            write.put_cf(cf, keys::descriptor_key(key), descriptor.encode());
            versions.push((ts, descriptor.latest_version));
        }
        match replicated {
            Replicated::No => self.commit(write)?,
            Replicated::Yes(system) => {
                for (key, value) in *system {
                    write.put_cf(cf, key, value);
                }
                self.commit_with(write, Durability::Buffered)?;
            }
        }
        Ok((batch_ts, versions))
    }

    /// Adds deletes of the key's `count` oldest versions (which sort last) to `write`.
    fn delete_oldest_versions(&self, key: &[u8], count: usize, write: &mut WriteBatch) -> Result<(), StorageError> {
        let prefix = keys::descriptor_key(key);
        let mut it = self.data_iter();
        it.seek_for_prev(keys::after_versions(&prefix));
        for _ in 0..count {
            match it.key() {
                Some(raw) if raw.starts_with(&prefix) && raw.len() == prefix.len() + Timestamp::ENCODED_LEN => {
                    write.delete_cf(self.cf(CF_RANGE_DATA), raw);
                }
                _ => break,
            }
            it.prev();
        }
        it.status()?;
        Ok(())
    }

    /// The newest version at or before `ts` (`None` if absent or deleted at `ts`).
    pub fn get_at(&self, key: &[u8], ts: Timestamp) -> Result<Option<VersionedValue>, StorageError> {
        self.timed_read(|| {
            let prefix_len = keys::descriptor_key(key).len();
            let mut it = self.data_iter();
            let seek = keys::version_key(key, ts);
            it.seek(&seek);
            match (it.key(), it.value()) {
                (Some(raw), Some(value)) if raw.len() == seek.len() && raw[..prefix_len] == seek[..prefix_len] => {
                    let (record, value) = VersionRecord::decode(value)?;
                    let ts = version_ts(raw)?;
                    Ok((!record.tombstone).then(|| VersionedValue {
                        version: record.version,
                        ts,
                        value: value.to_vec(),
                    }))
                }
                _ => {
                    it.status()?;
                    Ok(None)
                }
            }
        })
    }

    /// The latest version: one seek.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<VersionedValue>, StorageError> {
        self.get_at(key, Timestamp::MAX)
    }

    /// Version number `version` of the key, if retained and not a delete. Reads version headers
    /// newest first and copies only the matching value.
    pub fn get_version(&self, key: &[u8], version: u32) -> Result<Option<VersionedValue>, StorageError> {
        let mut found = None;
        self.visit_versions(key, |info, value| {
            // Version numbers fall as the iteration goes back in time.
            if info.version > version {
                return ControlFlow::Continue(());
            }
            if info.version == version && !info.tombstone {
                found = Some(VersionedValue { version, ts: info.ts, value: value.to_vec() });
            }
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// Every retained version, newest first, without copying any value.
    pub fn list_versions(&self, key: &[u8]) -> Result<Vec<VersionInfo>, StorageError> {
        let mut out = Vec::new();
        self.visit_versions(key, |info, _| {
            out.push(info);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Calls `visit` with each retained version of `key`, newest first, until it breaks.
    fn visit_versions(
        &self,
        key: &[u8],
        mut visit: impl FnMut(VersionInfo, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        self.timed_read(|| {
            let prefix = keys::descriptor_key(key);
            let mut it = self.data_iter();
            it.seek(keys::version_key(key, Timestamp::MAX));
            while let (Some(raw), Some(value)) = (it.key(), it.value()) {
                if !(raw.starts_with(&prefix) && raw.len() == prefix.len() + Timestamp::ENCODED_LEN) {
                    break;
                }
                let (record, value) = VersionRecord::decode(value)?;
                let info = VersionInfo {
                    version: record.version,
                    ts: version_ts(raw)?,
                    tombstone: record.tombstone,
                    value_len: value.len(),
                };
                if visit(info, value).is_break() {
                    return Ok(());
                }
                it.next();
            }
            Ok(it.status()?)
        })
    }

    pub fn descriptor(&self, key: &[u8]) -> Result<Option<KeyDescriptor>, StorageError> {
        self.timed_read(|| {
            Ok(self.read_descriptor(key)?.map(|d| KeyDescriptor {
                version_count: d.version_count(),
                latest_version: d.latest_version,
                first_write: d.first_write,
                last_write: d.last_write,
                vacuumable: d.vacuumable,
                retention: self.retention_of(&d),
                deleted: d.deleted,
            }))
        })
    }

    /// Marks whether the key's older versions may be vacuumed. Returns false if the key is absent.
    pub fn set_vacuumable(&self, key: &[u8], vacuumable: bool) -> Result<bool, StorageError> {
        self.update_descriptor(key, |d| d.vacuumable = vacuumable)
    }

    /// Sets how many versions the key keeps (1 to 255); excess versions go at the next write or
    /// vacuum. Returns false if the key is absent.
    pub fn set_retention(&self, key: &[u8], retention: u8) -> Result<bool, StorageError> {
        if retention == 0 {
            return Err(StorageError::InvalidConfig("a key's retention must be 1 to 255".into()));
        }
        self.update_descriptor(key, |d| d.retention = retention)
    }

    fn update_descriptor(&self, key: &[u8], change: impl FnOnce(&mut Descriptor)) -> Result<bool, StorageError> {
        let _guard = self.lock_keys(std::iter::once(key));
        let Some(mut descriptor) = self.read_descriptor(key)? else { return Ok(false) };
        change(&mut descriptor);
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(CF_RANGE_DATA), keys::descriptor_key(key), descriptor.encode());
        self.commit(write)?;
        Ok(true)
    }

    /// Keys in `[start, end)` with their newest version at or before `ts`, deleted keys skipped,
    /// up to `limit`. Older versions are skipped by seeking, never iterated.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: ScanLimit,
        ts: Timestamp,
    ) -> Result<ScanPage, StorageError> {
        self.timed_read(|| {
            let mut page = ScanPage::default();
            let mut it = self.data_iter();
            it.seek(keys::descriptor_key(start));
            while let Some(raw) = it.key() {
                let decoded = decode(raw)?;
                if end.is_some_and(|end| decoded.user_key.as_slice() >= end) {
                    break;
                }
                let prefix = raw[..decoded.prefix_len].to_vec();
                let mut seek = prefix.clone();
                keys::push_inverted(&mut seek, ts);
                it.seek(&seek);
                if let (Some(raw), Some(value)) = (it.key(), it.value()) {
                    if raw.starts_with(&prefix) && raw.len() == prefix.len() + Timestamp::ENCODED_LEN {
                        let (record, value) = VersionRecord::decode(value)?;
                        if !record.tombstone {
                            if let Some(cut) = page.full(&limit, &decoded.user_key, value.len()) {
                                // A forward scan resumes at the first key it did not return.
                                page.cut(cut, decoded.user_key);
                                break;
                            }
                            let version =
                                VersionedValue { version: record.version, ts: version_ts(raw)?, value: value.to_vec() };
                            page.push(decoded.user_key, version);
                        }
                    }
                }
                it.seek(keys::after_versions(&prefix));
            }
            it.status()?;
            Ok(page)
        })
    }

    /// Like [`Storage::scan`], newest key first: keys in `[start, end)` from the end down.
    pub fn scan_reverse(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: ScanLimit,
        ts: Timestamp,
    ) -> Result<ScanPage, StorageError> {
        self.timed_read(|| {
            let lower = keys::descriptor_key(start);
            let mut page = ScanPage::default();
            let mut it = self.data_iter();
            match end {
                // The last record before `end`'s descriptor is a version of the key before `end`.
                Some(end) => it.seek_for_prev(keys::descriptor_key(end)),
                None => it.seek_to_last(),
            }
            if let (Some(end), Some(raw)) = (end, it.key()) {
                if raw == keys::descriptor_key(end).as_slice() {
                    it.prev();
                }
            }
            while let Some(raw) = it.key() {
                if raw < lower.as_slice() {
                    break;
                }
                let decoded = decode(raw)?;
                if let Some(found) = self.get_at(&decoded.user_key, ts)? {
                    if let Some(cut) = page.full(&limit, &decoded.user_key, found.value.len()) {
                        // A reverse scan resumes below the last key it returned.
                        let last = page.rows.last().map(|(key, _)| key.clone()).unwrap_or_default();
                        page.cut(cut, last);
                        break;
                    }
                    page.push(decoded.user_key, found);
                }
                // Step to the previous user key: before this key's descriptor.
                let prefix = raw[..decoded.prefix_len].to_vec();
                it.seek_for_prev(&prefix);
                if it.key() == Some(prefix.as_slice()) {
                    it.prev();
                }
            }
            it.status()?;
            Ok(page)
        })
    }

    /// Garbage-collects versions past each key's retention, all but the latest version of
    /// vacuumable keys, and whole keys whose latest version is a delete. Bounded and resumable.
    pub fn vacuum(&self, options: &VacuumOptions) -> Result<VacuumReport, StorageError> {
        let mut report = VacuumReport::default();
        let mut next = keys::descriptor_key(&options.start);
        loop {
            if report.keys_scanned == options.max_keys_per_pass {
                report.resume_key = self.user_key_at_or_after(&next)?;
                return Ok(report);
            }
            let Some(key) = self.user_key_at_or_after(&next)? else { return Ok(report) };
            next = keys::after_versions(&keys::descriptor_key(&key));
            report.keys_scanned += 1;
            self.vacuum_key(&key, &mut report)?;
        }
    }

    fn user_key_at_or_after(&self, from: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut it = self.data_iter();
        it.seek(from);
        match it.key() {
            Some(raw) => Ok(Some(decode(raw)?.user_key)),
            None => {
                it.status()?;
                Ok(None)
            }
        }
    }

    fn vacuum_key(&self, key: &[u8], report: &mut VacuumReport) -> Result<(), StorageError> {
        let _guard = self.lock_keys(std::iter::once(key));
        let Some(mut descriptor) = self.read_descriptor(key)? else { return Ok(()) };
        let cf = self.cf(CF_RANGE_DATA);
        let mut write = WriteBatch::default();
        let count = descriptor.version_count();
        if descriptor.deleted {
            self.delete_oldest_versions(key, count as usize, &mut write)?;
            write.delete_cf(cf, keys::descriptor_key(key));
            report.versions_removed += count as usize;
            report.keys_removed += 1;
        } else {
            let keep = if descriptor.vacuumable { 1 } else { u32::from(self.retention_of(&descriptor)) };
            let excess = count.saturating_sub(keep);
            if excess == 0 {
                return Ok(());
            }
            self.delete_oldest_versions(key, excess as usize, &mut write)?;
            descriptor.oldest_version += excess;
            write.put_cf(cf, keys::descriptor_key(key), descriptor.encode());
            report.versions_removed += excess as usize;
        }
        self.commit(write)
    }

    /// An iterator over one range's raft log. The bounds matter: purged and truncated entries
    /// stay in the memtable under range tombstones, and an unbounded iterator stepping past a
    /// range's last entry would walk every deleted entry of the next range.
    fn raft_log_iter(&self, range_id: u64, upper: Option<Vec<u8>>) -> DBRawIterator<'_> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(keys::raft_log_key(range_id, 0).to_vec());
        options.set_iterate_upper_bound(upper.unwrap_or_else(|| keys::raft_log_key_after(range_id, u64::MAX)));
        self.inner.db.raw_iterator_cf_opt(self.cf(CF_RAFT_LOG), options)
    }

    /// Appends entries, buffered: they are readable at once and durable after [`Storage::sync_wal`].
    pub fn append_raft_log(&self, range_id: u64, entries: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        for (index, entry) in entries {
            write.put_cf(self.cf(CF_RAFT_LOG), keys::raft_log_key(range_id, *index), entry);
        }
        self.commit_with(write, Durability::Buffered)
    }

    /// Entries with index in `[from, to)`, in order.
    pub fn raft_log_entries(&self, range_id: u64, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.timed_read(|| {
            let end = keys::raft_log_key(range_id, to);
            let mut it = self.raft_log_iter(range_id, Some(end.to_vec()));
            it.seek(keys::raft_log_key(range_id, from));
            let mut out = Vec::new();
            while let (Some(raw), Some(value)) = (it.key(), it.value()) {
                if raw >= end.as_slice() {
                    break;
                }
                let index = raw
                    .get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StorageError::Corrupt { what: "raft log key", detail: format!("{raw:02x?}") })?;
                out.push((index, value.to_vec()));
                it.next();
            }
            it.status()?;
            Ok(out)
        })
    }

    /// Removes entries from `index` on (a conflicting suffix). Buffered: the WAL keeps order, so
    /// the sync of the appends that follow makes it durable before they are acknowledged.
    pub fn truncate_raft_log_from(&self, range_id: u64, index: u64) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        write.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            &keys::raft_log_key(range_id, index)[..],
            &keys::raft_log_key_after(range_id, u64::MAX)[..],
        );
        self.commit_with(write, Durability::Buffered)
    }

    /// Removes entries up to and including `index` (after a snapshot).
    pub fn purge_raft_log_upto(&self, range_id: u64, index: u64, last_purged: &[u8]) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        // The purge point goes in the same batch, so no restart sees a hole without knowing why.
        write.put_cf(
            self.cf(CF_RAFT_STATE),
            keys::raft_state_key(range_id, RaftStateTag::LastPurgedLogId),
            last_purged,
        );
        write.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            &keys::raft_log_key(range_id, 0)[..],
            &keys::raft_log_key_after(range_id, index)[..],
        );
        self.commit(write)
    }

    /// Writes a raft state record; `synced` for what must be on disk before raft goes on (the
    /// vote), buffered for what a later WAL sync may cover (the committed index).
    pub fn put_raft_state(
        &self,
        range_id: u64,
        tag: RaftStateTag,
        value: &[u8],
        synced: bool,
    ) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(CF_RAFT_STATE), keys::raft_state_key(range_id, tag), value);
        self.commit_with(write, if synced { Durability::Synced } else { Durability::Buffered })
    }

    /// The raft log's last entry of a range, if any.
    pub fn last_raft_log_entry(&self, range_id: u64) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut it = self.raft_log_iter(range_id, None);
        it.seek_for_prev(keys::raft_log_key(range_id, u64::MAX));
        match (it.key(), it.value()) {
            (Some(raw), Some(value)) if raw.len() == 16 && raw[..8] == range_id.to_be_bytes() => {
                let mut index = [0u8; 8];
                index.copy_from_slice(&raw[8..]);
                Ok(Some((u64::from_be_bytes(index), value.to_vec())))
            }
            _ => {
                it.status()?;
                Ok(None)
            }
        }
    }

    pub fn get_raft_state(&self, range_id: u64, tag: RaftStateTag) -> Result<Option<Vec<u8>>, StorageError> {
        self.timed_read(|| Ok(self.inner.db.get_cf(self.cf(CF_RAFT_STATE), keys::raft_state_key(range_id, tag))?))
    }

    /// Records a replica as hosted here, unless it is already (a replica this node removed
    /// may come back: its tombstone goes). Whether it recorded it.
    pub fn record_replica(&self, descriptor: &pleiades_proto::v1::RangeDescriptor) -> Result<bool, StorageError> {
        let _records = lock(&self.inner.replica_records);
        let key = keys::node_local_range_key(keys::REPLICA_RECORD_PREFIX, descriptor.range_id);
        if self.get_local(&key)?.is_some() {
            return Ok(false);
        }
        let (key, value) = replica_record(descriptor);
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(CF_NODE_LOCAL), key, value);
        write.delete_cf(
            self.cf(CF_NODE_LOCAL),
            keys::node_local_range_key(keys::REMOVED_RECORD_PREFIX, descriptor.range_id),
        );
        self.commit(write)?;
        Ok(true)
    }

    /// A split's write: `parent` (the left half's system records) always; `right` (its system
    /// records) with its replica record only if this node never hosted that range — neither
    /// hosts it now (a leader may have created it already) nor removed it. One buffered write
    /// (the raft log replays it if lost). Whether the right half was created.
    pub fn write_split(
        &self,
        parent: &[(Vec<u8>, Vec<u8>)],
        right: &pleiades_proto::v1::RangeDescriptor,
        right_system: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<bool, StorageError> {
        let _records = lock(&self.inner.replica_records);
        let mut known = false;
        for prefix in [keys::REPLICA_RECORD_PREFIX, keys::REMOVED_RECORD_PREFIX] {
            known |= self.get_local(&keys::node_local_range_key(prefix, right.range_id))?.is_some();
        }
        let mut write = WriteBatch::default();
        let system =
            if known { parent.iter().collect::<Vec<_>>() } else { parent.iter().chain(right_system).collect() };
        for (key, value) in system {
            write.put_cf(self.cf(CF_RANGE_DATA), key, value);
        }
        if !known {
            let (key, value) = replica_record(right);
            write.put_cf(self.cf(CF_NODE_LOCAL), key, value);
        }
        self.commit_with(write, Durability::Buffered)?;
        Ok(!known)
    }

    /// A merge applied on the left-hand range: its new applied state, and the right-hand
    /// range's replica here retired in the same write (a tombstone, no replica record), so a
    /// restart never opens it again. Its data stays: it is the left-hand range's now.
    pub fn write_merge(&self, left: &[(Vec<u8>, Vec<u8>)], right_range_id: u64) -> Result<(), StorageError> {
        let _records = lock(&self.inner.replica_records);
        let mut write = WriteBatch::default();
        for (key, value) in left {
            write.put_cf(self.cf(CF_RANGE_DATA), key, value);
        }
        write.put_cf(
            self.cf(CF_NODE_LOCAL),
            keys::node_local_range_key(keys::REMOVED_RECORD_PREFIX, right_range_id),
            b"",
        );
        write
            .delete_cf(self.cf(CF_NODE_LOCAL), keys::node_local_range_key(keys::REPLICA_RECORD_PREFIX, right_range_id));
        self.commit_with(write, Durability::Buffered)
    }

    /// Node metadata (node id, the clock's persisted bound), synced.
    pub fn put_local(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(CF_NODE_LOCAL), key, value);
        self.commit(write)
    }

    pub fn delete_local(&self, key: &[u8]) -> Result<(), StorageError> {
        let mut write = WriteBatch::default();
        write.delete_cf(self.cf(CF_NODE_LOCAL), key);
        self.commit(write)
    }

    /// Node-local records whose key starts with `prefix`.
    pub fn local_records(&self, prefix: &[u8]) -> Result<Records, StorageError> {
        let mut it = self.inner.db.raw_iterator_cf(self.cf(CF_NODE_LOCAL));
        it.seek(prefix);
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub fn get_local(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.timed_read(|| Ok(self.inner.db.get_cf(self.cf(CF_NODE_LOCAL), key)?))
    }

    /// Engine sizes summed over the column families.
    pub fn engine_stats(&self) -> Result<EngineStats, StorageError> {
        let mut stats = EngineStats::default();
        for name in COLUMN_FAMILIES {
            let property = |p: &str| -> Result<u64, StorageError> {
                Ok(self.inner.db.property_int_value_cf(self.cf(name), p)?.unwrap_or(0))
            };
            stats.memtable_bytes += property("rocksdb.cur-size-all-mem-tables")?;
            stats.sst_bytes += property("rocksdb.total-sst-files-size")?;
            stats.pending_compaction_bytes += property("rocksdb.estimate-pending-compaction-bytes")?;
        }
        Ok(stats)
    }
}

/// The `range_data` keys of one range: its user-key span and its system records.
#[derive(Debug, Clone)]
pub struct SpanBounds {
    /// Raw (escaped) bounds of the user keys: `[start, end)`, `end = None` for the keyspace end.
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    /// The range's own system records, which travel with its data.
    pub system_keys: Vec<Vec<u8>>,
}

/// The node-local record of a hosted replica.
pub fn replica_record(descriptor: &pleiades_proto::v1::RangeDescriptor) -> (Vec<u8>, Vec<u8>) {
    use prost::Message;
    (keys::node_local_range_key(keys::REPLICA_RECORD_PREFIX, descriptor.range_id), descriptor.encode_to_vec())
}

impl SpanBounds {
    pub fn new(start_key: &[u8], end_key: &[u8], system_keys: Vec<Vec<u8>>) -> Self {
        let end = (!end_key.is_empty()).then(|| keys::descriptor_key(end_key));
        SpanBounds { start: keys::descriptor_key(start_key), end, system_keys }
    }
}

/// Checks that the SST at `path` is one and holds nothing but the span's records: its system
/// records (which sort first) and user keys in `[start, end)`. rust-rocksdb has no SST reader, so
/// the file is linked into a scratch RocksDB beside it and read there; only the keys before the
/// start and the first one at the end are visited, whatever the file's size.
pub fn check_span_file(bounds: &SpanBounds, path: &Path) -> Result<(), StorageError> {
    let refused = |detail: String| StorageError::Corrupt { what: "range snapshot", detail };
    with_span_file(path, "check", |db| {
        let mut it = db.raw_iterator();
        it.seek_to_first();
        while let Some(key) = it.key() {
            if key >= bounds.start.as_slice() {
                break;
            }
            if !bounds.system_keys.iter().any(|k| k.as_slice() == key) {
                return Err(refused("a record lies before the range's span".into()));
            }
            it.next();
        }
        if let Some(end) = &bounds.end {
            it.seek(end);
            if it.valid() {
                return Err(refused("a record lies past the range's span".into()));
            }
        }
        it.status()?;
        Ok(())
    })
}

/// Runs `read` on the SST at `path`, linked into a scratch RocksDB beside it (`suffix` names
/// the scratch directory), which is removed afterwards.
fn with_span_file<T>(
    path: &Path,
    suffix: &str,
    read: impl FnOnce(&DB) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let refused = |detail: String| StorageError::Corrupt { what: "range snapshot", detail };
    let scratch = path.with_extension(suffix);
    let _ = std::fs::remove_dir_all(&scratch);
    let result = (|| {
        std::fs::create_dir_all(&scratch).map_err(|e| refused(format!("cannot create {}: {e}", scratch.display())))?;
        let linked = scratch.join("snapshot.sst");
        if std::fs::hard_link(path, &linked).is_err() {
            std::fs::copy(path, &linked).map_err(|e| refused(format!("cannot copy {}: {e}", path.display())))?;
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, scratch.join("db"))?;
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        db.ingest_external_file_opts(&ingest, vec![&linked]).map_err(|e| refused(format!("not a valid SST: {e}")))?;
        read(&db)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// What a span holds, from [`Storage::span_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanStats {
    /// Every record of the span: all versions, tombstones and descriptors.
    pub bytes: u64,
    /// Keys whose latest version is a value, and the bytes of those values with their keys.
    pub live_keys: u64,
    pub live_bytes: u64,
    /// The first user key at or past half of `bytes` (None if the span holds under two keys).
    pub middle_key: Option<Vec<u8>>,
    /// The walk stopped at its byte limit: the span holds at least `bytes`.
    pub truncated: bool,
}

/// What [`Storage::export_span`] wrote.
pub struct Exported {
    pub records: u64,
    /// The span's system records as exported, read from the same consistent snapshot.
    pub system: Records,
}

impl Storage {
    /// Writes the span's records, as of one consistent RocksDB snapshot, to an SST file at
    /// `path`. Streams: memory use does not grow with the span.
    pub fn export_span(&self, bounds: &SpanBounds, path: &Path) -> Result<Exported, StorageError> {
        self.export_span_as_recorded(&bounds.system_keys, |_| bounds.clone(), path)
    }

    /// Like [`Storage::export_span`], for a span its own system records define (a range's
    /// applied state names its span, which a split may change at any moment): `span_of` gets
    /// the system records read from the same consistent snapshot as the data.
    pub fn export_span_as_recorded(
        &self,
        system_keys: &[Vec<u8>],
        span_of: impl FnOnce(&Records) -> SpanBounds,
        path: &Path,
    ) -> Result<Exported, StorageError> {
        let db = &self.inner.db;
        let cf = self.cf(CF_RANGE_DATA);
        let snapshot = db.snapshot();
        let options = Options::default();
        let mut writer = rocksdb::SstFileWriter::create(&options);
        writer.open(path)?;
        let mut count = 0u64;
        // System keys (0x00 0x00 ...) sort before every user key; the writer needs sorted input.
        let mut system_keys = system_keys.to_vec();
        system_keys.sort();
        let mut system = Vec::new();
        for key in system_keys {
            if let Some(value) = snapshot.get_cf(cf, &key)? {
                writer.put(&key, &value)?;
                system.push((key, value));
                count += 1;
            }
        }
        let bounds = span_of(&system);
        let mut read = rocksdb::ReadOptions::default();
        read.set_snapshot(&snapshot);
        if let Some(end) = &bounds.end {
            read.set_iterate_upper_bound(end.clone());
        }
        let mut it = db.raw_iterator_cf_opt(cf, read);
        it.seek(&bounds.start);
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            writer.put(key, value)?;
            count += 1;
            it.next();
        }
        it.status()?;
        if count == 0 {
            return Err(StorageError::Corrupt { what: "range snapshot", detail: "the range has no records".into() });
        }
        writer.finish()?;
        Ok(Exported { records: count, system })
    }

    /// Sizes the span by walking it (at most `stop_after` bytes of it, so a range far past its
    /// split size costs no more than one at it), with a key near the middle of what was walked.
    pub fn span_stats(&self, bounds: &SpanBounds, stop_after: u64) -> Result<SpanStats, StorageError> {
        let mut stats = SpanStats::default();
        // User keys at the byte offsets they start at, sparsely, to find the middle afterwards.
        let mut marks: Vec<(u64, Vec<u8>)> = Vec::new();
        let mark_every = (stop_after / 64).max(1);
        let mut it = self.data_iter();
        it.seek(&bounds.start);
        let mut prefix: Vec<u8> = Vec::new();
        let mut newest_seen = false;
        while let (Some(raw), Some(value)) = (it.key(), it.value()) {
            if bounds.end.as_ref().is_some_and(|end| raw >= end.as_slice()) {
                break;
            }
            let decoded = decode(raw)?;
            if raw[..decoded.prefix_len] != prefix[..] {
                prefix = raw[..decoded.prefix_len].to_vec();
                newest_seen = false;
                if marks.last().is_none_or(|(at, _)| stats.bytes >= at + mark_every) {
                    marks.push((stats.bytes, decoded.user_key.clone()));
                }
            }
            // Versions sort newest first, after the key's descriptor.
            if decoded.version.is_some() && !newest_seen {
                newest_seen = true;
                let (record, stored) = VersionRecord::decode(value)?;
                if !record.tombstone {
                    stats.live_keys += 1;
                    stats.live_bytes += (decoded.user_key.len() + stored.len()) as u64;
                }
            }
            stats.bytes += (raw.len() + value.len()) as u64;
            if stats.bytes >= stop_after {
                stats.truncated = true;
                break;
            }
            it.next();
        }
        it.status()?;
        let half = stats.bytes / 2;
        stats.middle_key = marks.into_iter().skip(1).find(|(at, _)| *at >= half).map(|(_, key)| key);
        Ok(stats)
    }

    /// Raw `range_data` records in `[start, end)`; for the small system spans (descriptors).
    pub fn system_records(&self, start: &[u8], end: &[u8]) -> Result<Records, StorageError> {
        let mut it = self.data_iter();
        it.seek(start);
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key >= end {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// One record of an SST file made by [`Storage::export_span`], read without ingesting it.
    pub fn read_span_file_record(&self, path: &Path, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        with_span_file(path, "peek", |db| Ok(db.get(key)?))
    }

    /// Replaces the span's records by those of an SST file made by [`Storage::export_span`].
    /// The file comes from a peer: it is checked first (see [`check_span_file`]) and nothing is
    /// written unless it is a valid SST holding only this span's records.
    pub fn ingest_span(&self, bounds: &SpanBounds, path: &Path) -> Result<(), StorageError> {
        check_span_file(bounds, path)?;
        let mut clear = WriteBatch::default();
        self.clear_span_into(bounds, &mut clear)?;
        self.commit(clear)?;
        self.inner.db.ingest_external_file_cf(self.cf(CF_RANGE_DATA), vec![path])?;
        Ok(())
    }

    /// Deletes what a replica kept: its raft log and raft state, its applied state, and its
    /// span's records unless `keep_data` (they belong to another replica here, after a merge).
    pub fn clear_replica(&self, range_id: u64, bounds: &SpanBounds, keep_data: bool) -> Result<(), StorageError> {
        let mut clear = WriteBatch::default();
        if keep_data {
            for key in &bounds.system_keys {
                clear.delete_cf(self.cf(CF_RANGE_DATA), key);
            }
        } else {
            self.clear_span_into(bounds, &mut clear)?;
        }
        clear.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            &keys::raft_log_key(range_id, 0)[..],
            &keys::raft_log_key_after(range_id, u64::MAX)[..],
        );
        clear.delete_range_cf(
            self.cf(CF_RAFT_STATE),
            &keys::raft_state_key(range_id, RaftStateTag::Vote)[..8],
            &(range_id + 1).to_be_bytes()[..],
        );
        self.commit(clear)
    }

    fn clear_span_into(&self, bounds: &SpanBounds, clear: &mut WriteBatch) -> Result<(), StorageError> {
        let cf = self.cf(CF_RANGE_DATA);
        let end = match &bounds.end {
            Some(end) => Some(end.clone()),
            // The last range: past its last key, whatever that is.
            None => {
                let mut it = self.data_iter();
                it.seek_to_last();
                it.status()?;
                it.key().filter(|last| *last >= bounds.start.as_slice()).map(|last| {
                    let mut end = last.to_vec();
                    end.push(0);
                    end
                })
            }
        };
        if let Some(end) = end {
            clear.delete_range_cf(cf, &bounds.start, &end);
        }
        for key in &bounds.system_keys {
            clear.delete_cf(cf, key);
        }
        Ok(())
    }
}

fn decode(raw: &[u8]) -> Result<keys::DataKey, StorageError> {
    keys::decode_data_key(raw)
        .ok_or_else(|| StorageError::Corrupt { what: "range data key", detail: format!("{raw:02x?}") })
}

fn version_ts(raw: &[u8]) -> Result<Timestamp, StorageError> {
    decode(raw)?
        .version
        .ok_or_else(|| StorageError::Corrupt { what: "version key", detail: format!("no timestamp in {raw:02x?}") })
}

#[cfg(test)]
mod tests;
