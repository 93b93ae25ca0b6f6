use super::*;

fn ts(n: u64) -> Timestamp {
    Timestamp::new(1_000_000 + n, 0)
}

fn open(dir: &tempfile::TempDir) -> Storage {
    Storage::open(dir.path(), &StorageConfig::default()).unwrap()
}

#[test]
fn versions_latest_version_n_list_and_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    assert_eq!(storage.get_latest(b"k").unwrap(), None);
    assert_eq!(storage.descriptor(b"k").unwrap(), None);
    for (i, value) in ["a", "bb", "ccc"].iter().enumerate() {
        assert_eq!(storage.put(b"k", value.as_bytes(), ts(i as u64 + 1)).unwrap(), i as u32 + 1);
    }
    let latest = storage.get_latest(b"k").unwrap().unwrap();
    assert_eq!((latest.version, latest.ts, latest.value.as_slice()), (3, ts(3), &b"ccc"[..]));
    assert_eq!(storage.get_version(b"k", 2).unwrap().unwrap().value, b"bb");
    assert_eq!(storage.get_version(b"k", 4).unwrap(), None);
    let list = storage.list_versions(b"k").unwrap();
    assert_eq!(list.iter().map(|v| (v.version, v.value_len)).collect::<Vec<_>>(), vec![(3, 3), (2, 2), (1, 1)]);
    let d = storage.descriptor(b"k").unwrap().unwrap();
    assert_eq!(
        d,
        KeyDescriptor {
            version_count: 3,
            latest_version: 3,
            first_write: ts(1),
            last_write: ts(3),
            vacuumable: false,
            retention: 255,
            deleted: false,
        }
    );
    // Neighbouring keys, including ones sharing a prefix or holding zero bytes, stay apart.
    storage.put(b"k\0", b"zero", ts(10)).unwrap();
    storage.put(b"kk", b"longer", ts(11)).unwrap();
    storage.put(b"", b"empty", ts(12)).unwrap();
    assert_eq!(storage.list_versions(b"k").unwrap().len(), 3);
    assert_eq!(storage.get_latest(b"k\0").unwrap().unwrap().value, b"zero");
    assert_eq!(storage.get_latest(b"").unwrap().unwrap().value, b"empty");
}

#[test]
fn get_at_reads_the_past_and_writes_must_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"k", b"v1", ts(10)).unwrap();
    storage.put(b"k", b"v2", ts(20)).unwrap();
    assert_eq!(storage.get_at(b"k", ts(9)).unwrap(), None);
    assert_eq!(storage.get_at(b"k", ts(10)).unwrap().unwrap().value, b"v1");
    assert_eq!(storage.get_at(b"k", ts(19)).unwrap().unwrap().value, b"v1");
    assert_eq!(storage.get_at(b"k", ts(25)).unwrap().unwrap().value, b"v2");
    let err = storage.put(b"k", b"late", ts(20)).unwrap_err();
    assert!(matches!(err, StorageError::TimestampNotAfterLatest { .. }), "{err}");
    assert_eq!(storage.list_versions(b"k").unwrap().len(), 2);
}

#[test]
fn tombstones_hide_the_key_but_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"k", b"v", ts(1)).unwrap();
    assert_eq!(storage.delete(b"k", ts(2)).unwrap(), 2);
    assert_eq!(storage.get_latest(b"k").unwrap(), None);
    assert_eq!(storage.get_at(b"k", ts(1)).unwrap().unwrap().value, b"v");
    assert_eq!(storage.get_version(b"k", 2).unwrap(), None);
    let d = storage.descriptor(b"k").unwrap().unwrap();
    assert!(d.deleted);
    assert!(storage.list_versions(b"k").unwrap()[0].tombstone);
    storage.put(b"k", b"again", ts(3)).unwrap();
    assert!(!storage.descriptor(b"k").unwrap().unwrap().deleted);
}

#[test]
fn retention_at_255_drops_the_oldest_version() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    for i in 1..=256u64 {
        storage.put(b"k", format!("v{i}").as_bytes(), ts(i)).unwrap();
    }
    let d = storage.descriptor(b"k").unwrap().unwrap();
    assert_eq!((d.version_count, d.latest_version), (255, 256));
    assert_eq!(storage.get_version(b"k", 1).unwrap(), None, "version 1 must be gone");
    assert_eq!(storage.get_version(b"k", 2).unwrap().unwrap().value, b"v2");
    assert_eq!(storage.get_version(b"k", 256).unwrap().unwrap().value, b"v256");
    let list = storage.list_versions(b"k").unwrap();
    assert_eq!(list.len(), 255);
    assert_eq!((list[0].version, list[254].version), (256, 2));
}

#[test]
fn retention_is_configurable_per_node_and_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { default_retention: 3, ..Default::default() };
    let storage = Storage::open(dir.path(), &config).unwrap();
    for i in 1..=5 {
        storage.put(b"node-default", b"v", ts(i)).unwrap();
    }
    assert_eq!(
        storage.list_versions(b"node-default").unwrap().iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    storage.put(b"own", b"v", ts(10)).unwrap();
    assert!(storage.set_retention(b"own", 1).unwrap());
    storage.put(b"own", b"w", ts(11)).unwrap();
    assert_eq!(storage.list_versions(b"own").unwrap().len(), 1);
    assert!(storage.set_retention(b"own", 0).is_err());
    assert!(!storage.set_retention(b"absent", 2).unwrap());
    assert!(StorageConfig { default_retention: 0, ..Default::default() }.validate().is_err());
}

#[test]
fn vacuum_collects_past_retention_vacuumable_and_deleted_keys_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(&dir);
        for key in [&b"a"[..], b"b", b"c", b"d"] {
            for i in 1..=6 {
                storage.put(key, b"v", ts(i)).unwrap();
            }
        }
        storage.set_vacuumable(b"b", true).unwrap();
        storage.delete(b"c", ts(7)).unwrap();
        storage.close().unwrap();
    }
    // Reopen with a lower default retention: the vacuum trims what the old default kept.
    let storage = Storage::open(dir.path(), &StorageConfig { default_retention: 2, ..Default::default() }).unwrap();
    let first = storage.vacuum(&VacuumOptions { max_keys_per_pass: 2, start: Vec::new() }).unwrap();
    assert_eq!(first.keys_scanned, 2);
    assert_eq!(first.resume_key.as_deref(), Some(&b"c"[..]));
    let second = storage.vacuum(&VacuumOptions { max_keys_per_pass: 2, start: first.resume_key.unwrap() }).unwrap();
    assert_eq!(second.resume_key, None);
    assert_eq!(first.versions_removed + second.versions_removed, 4 + 5 + 7 + 4);
    assert_eq!(second.keys_removed, 1);
    assert_eq!(storage.list_versions(b"a").unwrap().len(), 2);
    assert_eq!(storage.list_versions(b"b").unwrap().len(), 1);
    assert_eq!(storage.descriptor(b"c").unwrap(), None, "a deleted key vanishes entirely");
    assert!(storage.list_versions(b"c").unwrap().is_empty());
    assert_eq!(storage.descriptor(b"d").unwrap().unwrap().version_count, 2);
    assert_eq!(storage.get_latest(b"d").unwrap().unwrap().version, 6);
    let idle = storage.vacuum(&VacuumOptions::default()).unwrap();
    assert_eq!((idle.keys_scanned, idle.versions_removed), (3, 0));
}

#[test]
fn batches_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"stale", b"v", ts(50)).unwrap();
    let mut batch = MvccBatch::default();
    batch.put(&b"x"[..], &b"1"[..]).put(&b"y"[..], &b"2"[..]).delete(&b"stale"[..]);
    // `stale` was written later than this batch's timestamp: nothing may be applied.
    let err = storage.write(batch, ts(10)).unwrap_err();
    assert!(matches!(err, StorageError::TimestampNotAfterLatest { .. }));
    assert_eq!(storage.get_latest(b"x").unwrap(), None);
    assert_eq!(storage.get_latest(b"y").unwrap(), None);

    let mut batch = MvccBatch::default();
    batch.put(&b"x"[..], &b"1"[..]).put(&b"y"[..], &b"2"[..]).delete(&b"stale"[..]);
    assert_eq!(storage.write(batch, ts(60)).unwrap(), vec![1, 1, 2]);
    assert_eq!(storage.get_latest(b"y").unwrap().unwrap().ts, ts(60));
    assert_eq!(storage.get_latest(b"stale").unwrap(), None);

    let mut duplicate = MvccBatch::default();
    duplicate.put(&b"x"[..], &b"1"[..]).put(&b"x"[..], &b"2"[..]);
    assert!(matches!(storage.write(duplicate, ts(70)), Err(StorageError::DuplicateKeyInBatch)));
}

#[test]
fn concurrent_writers_to_one_key_get_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let clock = Arc::new(crate::clock::Hlc::new(Arc::new(crate::clock::SystemClock), Default::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (storage, clock) = (storage.clone(), clock.clone());
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| {
                        let mut batch = MvccBatch::default();
                        batch.put(&b"hot"[..], &b"v"[..]);
                        storage.write_now(batch, &clock).unwrap().1[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=200).collect::<Vec<_>>());
    // A timestamp taken outside the lock can lose the race; the store refuses to reorder.
    let err = storage.put(b"hot", b"late", Timestamp::new(1, 0)).unwrap_err();
    assert!(matches!(err, StorageError::TimestampNotAfterLatest { .. }));
}

#[test]
fn scan_sees_the_snapshot_at_ts_and_skips_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        storage.put(key.as_bytes(), b"old", ts(i as u64 + 1)).unwrap();
    }
    for i in 0..10 {
        storage.put(b"b", format!("new{i}").as_bytes(), ts(100 + i)).unwrap();
    }
    storage.delete(b"c", ts(200)).unwrap();
    let now = storage.scan(b"", None, ScanLimit::entries(10), Timestamp::MAX).unwrap().rows;
    let keys: Vec<_> = now.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.value.clone())).collect();
    assert_eq!(
        keys,
        vec![
            ("a".into(), b"old".to_vec()),
            ("b".into(), b"new9".to_vec()),
            ("d".into(), b"old".to_vec()),
            ("e".into(), b"old".to_vec())
        ]
    );
    let past = storage.scan(b"b", Some(b"e"), ScanLimit::entries(10), ts(50)).unwrap().rows;
    assert_eq!(past.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![&b"b"[..], b"c", b"d"]);
    assert_eq!(past[0].1.value, b"old");
    assert_eq!(storage.scan(b"a", None, ScanLimit::entries(2), Timestamp::MAX).unwrap().rows.len(), 2);
    assert!(storage.scan(b"f", None, ScanLimit::entries(10), Timestamp::MAX).unwrap().rows.is_empty());
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(&dir);
        storage.put(b"k", b"v", ts(1)).unwrap();
        storage.put_local(b"node_id", b"7").unwrap();
        storage.append_raft_log(1, &[(1, b"e1".to_vec())]).unwrap();
        storage.put_raft_state(1, RaftStateTag::Vote, b"vote", true).unwrap();
        // No close: a crash after synced writes.
    }
    let storage = open(&dir);
    assert_eq!(storage.get_latest(b"k").unwrap().unwrap().value, b"v");
    assert_eq!(storage.get_local(b"node_id").unwrap().unwrap(), b"7");
    assert_eq!(storage.raft_log_entries(1, 0, 10).unwrap(), vec![(1, b"e1".to_vec())]);
    assert_eq!(storage.get_raft_state(1, RaftStateTag::Vote).unwrap().unwrap(), b"vote");
}

#[test]
fn raft_logs_and_state_are_kept_per_range() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    for range in [1, 2] {
        let entries: Vec<_> = (1..=10).map(|i| (i, format!("r{range}e{i}").into_bytes())).collect();
        storage.append_raft_log(range, &entries).unwrap();
        storage.put_raft_state(range, RaftStateTag::Committed, format!("c{range}").as_bytes(), false).unwrap();
    }
    storage.truncate_raft_log_from(1, 8).unwrap();
    storage.purge_raft_log_upto(1, 3, b"p3").unwrap();
    let indexes =
        |range| storage.raft_log_entries(range, 0, u64::MAX).unwrap().into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(indexes(1), vec![4, 5, 6, 7]);
    assert_eq!(indexes(2), (1..=10).collect::<Vec<_>>(), "range 2 untouched");
    assert_eq!(storage.raft_log_entries(2, 3, 5).unwrap().len(), 2);
    assert_eq!(storage.get_raft_state(2, RaftStateTag::Committed).unwrap().unwrap(), b"c2");
    assert_eq!(storage.get_raft_state(3, RaftStateTag::Committed).unwrap(), None);
}

#[test]
fn every_compression_setting_opens_and_stats_are_reported() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageConfig { compression, ..Default::default() }).unwrap();
        storage.put(b"k", &[7u8; 4096], ts(1)).unwrap();
        let stats = storage.engine_stats().unwrap();
        assert!(stats.memtable_bytes > 0, "{compression:?}");
        storage.close().unwrap();
    }
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    use super::records::{Descriptor, VersionRecord};
    assert!(Descriptor::decode(b"short").is_err());
    assert!(VersionRecord::decode(&[9, 0, 0, 0, 1]).is_err());
    assert!(VersionRecord::decode(&[0, 0]).is_err());
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"k", b"v", ts(1)).unwrap();
    let cf = storage.cf(CF_RANGE_DATA);
    storage.inner.db.put_cf(cf, keys::descriptor_key(b"k"), b"garbage").unwrap();
    let err = storage.descriptor(b"k").unwrap_err();
    assert!(err.to_string().contains("corrupt key descriptor"), "{err}");
}

#[test]
fn a_key_at_the_last_version_number_refuses_writes_instead_of_wrapping() {
    use super::records::Descriptor;
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"k", b"v", ts(1)).unwrap();
    let mut descriptor = Descriptor::new(ts(1));
    descriptor.latest_version = u32::MAX;
    descriptor.oldest_version = u32::MAX;
    descriptor.last_write = ts(1);
    storage.inner.db.put_cf(storage.cf(CF_RANGE_DATA), keys::descriptor_key(b"k"), descriptor.encode()).unwrap();
    assert_eq!(storage.descriptor(b"k").unwrap().unwrap().version_count, 1);

    let mut batch = MvccBatch::default();
    batch.put(&b"other"[..], &b"v"[..]).put(&b"k"[..], &b"w"[..]);
    let err = storage.write(batch, ts(2)).unwrap_err();
    assert!(matches!(err, StorageError::VersionsExhausted { .. }), "{err}");
    assert_eq!(storage.get_latest(b"other").unwrap(), None, "the whole batch is refused");
    assert_eq!(storage.list_versions(b"k").unwrap().len(), 1);
}

#[test]
fn get_version_finds_middle_versions_and_not_deletes_or_collected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), &StorageConfig { default_retention: 4, ..Default::default() }).unwrap();
    for i in 1..=5 {
        storage.put(b"k", format!("v{i}").as_bytes(), ts(i)).unwrap();
    }
    storage.delete(b"k", ts(6)).unwrap();
    // Retention 4 keeps versions 3..=6; 6 is the delete.
    assert_eq!(storage.get_version(b"k", 2).unwrap(), None);
    let v3 = storage.get_version(b"k", 3).unwrap().unwrap();
    assert_eq!((v3.version, v3.ts, v3.value.as_slice()), (3, ts(3), &b"v3"[..]));
    assert_eq!(storage.get_version(b"k", 5).unwrap().unwrap().value, b"v5");
    assert_eq!(storage.get_version(b"k", 6).unwrap(), None);
    assert_eq!(storage.get_version(b"k", 7).unwrap(), None);
    assert_eq!(storage.get_version(b"absent", 1).unwrap(), None);
}

#[test]
fn write_and_read_latencies_are_exported_under_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    storage.put(b"k", b"v", ts(1)).unwrap();
    storage.get_latest(b"k").unwrap();
    storage.get_latest(b"k").unwrap();
    let mut registry = Registry::default();
    storage.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("pleiades_storage_write_seconds_count 1\n"), "{text}");
    assert!(text.contains("pleiades_storage_read_seconds_count 2\n"), "{text}");
}

#[test]
fn a_span_exported_to_an_sst_replaces_the_same_span_elsewhere_and_nothing_else() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, target) = (open(&source_dir), open(&target_dir));
    let applied = keys::system_key(keys::SYSTEM_APPLIED_STATE, 2);
    let bounds = SpanBounds::new(b"b", b"d", vec![applied.clone()]);
    for (key, value) in [("a", "outside"), ("b", "1"), ("c\0x", "2"), ("c", "3")] {
        source.put(key.as_bytes(), value.as_bytes(), ts(1)).unwrap();
    }
    source.put(b"c", b"3-newer", ts(2)).unwrap();
    source.put_system(&[(applied.clone(), b"applied@7".to_vec())]).unwrap();
    // The target holds stale data in the span and a neighbour outside it.
    target.put(b"b", b"stale", ts(1)).unwrap();
    target.put(b"bz", b"gone after ingest", ts(1)).unwrap();
    target.put(b"d", b"neighbour", ts(1)).unwrap();

    let sst = source_dir.path().join("span.sst");
    let exported = source.export_span(&bounds, &sst).unwrap();
    assert_eq!(exported.system, vec![(applied.clone(), b"applied@7".to_vec())]);
    target.ingest_span(&bounds, &sst).unwrap();

    assert_eq!(target.get_latest(b"b").unwrap().unwrap().value, b"1");
    assert_eq!(target.get_latest(b"bz").unwrap(), None, "the span was replaced, not merged");
    assert_eq!(target.get_latest(b"c").unwrap().unwrap().value, b"3-newer");
    assert_eq!(target.get_version(b"c", 1).unwrap().unwrap().value, b"3", "every version travels");
    assert_eq!(target.get_latest(b"c\0x").unwrap().unwrap().value, b"2");
    assert_eq!(target.get_latest(b"a").unwrap(), None, "outside the span");
    assert_eq!(target.get_latest(b"d").unwrap().unwrap().value, b"neighbour", "the end is exclusive");
    assert_eq!(target.get_system(&applied).unwrap().unwrap(), b"applied@7");

    // The last range (no end) also clears to the end of the keyspace; clear_replica empties it all.
    let tail = SpanBounds::new(b"c", b"", vec![applied.clone()]);
    target.append_raft_log(2, &[(1, b"entry".to_vec())]).unwrap();
    target.clear_replica(2, &tail, false).unwrap();
    assert_eq!(target.get_latest(b"d").unwrap(), None);
    assert_eq!(target.get_latest(b"b").unwrap().unwrap().value, b"1");
    assert_eq!(target.get_system(&applied).unwrap(), None);
    assert!(target.raft_log_entries(2, 0, u64::MAX).unwrap().is_empty());
}

#[test]
fn a_snapshot_with_keys_outside_the_span_or_no_sst_at_all_is_refused_and_writes_nothing() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, target) = (open(&source_dir), open(&target_dir));
    let applied = keys::system_key(keys::SYSTEM_APPLIED_STATE, 2);
    for key in ["a", "b", "c", "d"] {
        source.put(key.as_bytes(), b"peer's", ts(1)).unwrap();
        target.put(key.as_bytes(), b"mine", ts(1)).unwrap();
    }
    // A peer exports [a, e) and claims it is the target's range [b, d).
    let sst = source_dir.path().join("crafted.sst");
    source.export_span(&SpanBounds::new(b"a", b"e", vec![]), &sst).unwrap();
    let span = SpanBounds::new(b"b", b"d", vec![applied.clone()]);
    let err = target.ingest_span(&span, &sst).unwrap_err().to_string();
    assert!(err.contains("before the range's span"), "{err}");
    let tail = SpanBounds::new(b"a", b"c", vec![]);
    let err = target.ingest_span(&tail, &sst).unwrap_err().to_string();
    assert!(err.contains("past the range's span"), "{err}");
    // Another range's system record is no record of this range.
    let other = keys::system_key(keys::SYSTEM_APPLIED_STATE, 3);
    source.put_system(&[(other.clone(), b"x".to_vec())]).unwrap();
    source.export_span(&SpanBounds::new(b"b", b"d", vec![other]), &sst).unwrap();
    assert!(target.ingest_span(&span, &sst).is_err());
    let garbage = source_dir.path().join("garbage.sst");
    std::fs::write(&garbage, b"not an sst file at all").unwrap();
    let err = target.ingest_span(&span, &garbage).unwrap_err().to_string();
    assert!(err.contains("not a valid SST"), "{err}");
    for key in ["a", "b", "c", "d"] {
        assert_eq!(target.get_latest(key.as_bytes()).unwrap().unwrap().value, b"mine", "{key} is untouched");
    }
    // The honest file for the span still goes in.
    source.export_span(&SpanBounds::new(b"b", b"d", vec![]), &sst).unwrap();
    target.ingest_span(&span, &sst).unwrap();
    assert_eq!(target.get_latest(b"b").unwrap().unwrap().value, b"peer's");
    assert_eq!(target.get_latest(b"a").unwrap().unwrap().value, b"mine");
}

#[test]
fn reverse_scans_walk_keys_down_from_the_end_at_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    for (i, key) in ["a", "b", "b\0", "c", "d"].iter().enumerate() {
        storage.put(key.as_bytes(), format!("v{i}").as_bytes(), ts(10 + i as u64)).unwrap();
    }
    storage.put(b"c", b"newer", ts(50)).unwrap();
    storage.delete(b"b", ts(51)).unwrap();
    let keys = |rows: Vec<(Vec<u8>, VersionedValue)>| rows.into_iter().map(|(k, v)| (k, v.value)).collect::<Vec<_>>();
    let all = keys(storage.scan_reverse(b"", None, ScanLimit::entries(10), Timestamp::MAX).unwrap().rows);
    assert_eq!(
        all,
        vec![
            (b"d".to_vec(), b"v4".to_vec()),
            (b"c".to_vec(), b"newer".to_vec()),
            (b"b\0".to_vec(), b"v2".to_vec()),
            (b"a".to_vec(), b"v0".to_vec()),
        ]
    );
    let bounded = keys(storage.scan_reverse(b"b", Some(b"d"), ScanLimit::entries(2), ts(20)).unwrap().rows);
    assert_eq!(bounded, vec![(b"c".to_vec(), b"v3".to_vec()), (b"b\0".to_vec(), b"v2".to_vec())], "end is exclusive");
    let past = keys(storage.scan_reverse(b"a", Some(b"b\0"), ScanLimit::entries(10), ts(20)).unwrap().rows);
    assert_eq!(past, vec![(b"b".to_vec(), b"v1".to_vec()), (b"a".to_vec(), b"v0".to_vec())], "b before its delete");
}

#[test]
fn replicated_writes_at_a_past_time_land_just_after_the_latest_version() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    let system = vec![(keys::system_key(keys::SYSTEM_APPLIED_STATE, 9), b"s".to_vec())];
    let mut batch = MvccBatch::default();
    batch.put(b"k".to_vec(), b"first".to_vec());
    let (first, _) = storage.write_replicated(batch, ts(10), &system).unwrap();
    let mut batch = MvccBatch::default();
    batch.put(b"k".to_vec(), b"second".to_vec());
    // A new leader's clock may lag the old one's: the write still orders after the latest.
    let (second, versions) = storage.write_replicated(batch, ts(5), &system).unwrap();
    assert_eq!(first, ts(10));
    assert_eq!(second, ts(10).next());
    assert_eq!(versions, vec![2]);
    assert_eq!(storage.get_latest(b"k").unwrap().unwrap().value, b"second");
    assert!(matches!(storage.put(b"k", b"x", ts(5)), Err(StorageError::TimestampNotAfterLatest { .. })));
}

#[test]
fn scans_stop_at_their_byte_limit_with_the_exact_resume_key_and_always_advance() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&dir);
    for key in ["a", "b", "c", "d"] {
        storage.put(key.as_bytes(), &[7u8; 1000], ts(1)).unwrap();
    }
    storage.delete(b"c", ts(2)).unwrap();
    let limit = ScanLimit { entries: 100, bytes: 2_100 };
    let page = storage.scan(b"", None, limit, Timestamp::MAX).unwrap();
    assert_eq!(page.rows.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [&b"a"[..], b"b"]);
    assert_eq!((page.resume.as_deref(), page.cut), (Some(&b"d"[..]), Some(ScanCut::Bytes)), "c is deleted");
    let reverse = storage.scan_reverse(b"", None, limit, Timestamp::MAX).unwrap();
    assert_eq!(reverse.rows.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [&b"d"[..], b"b"]);
    assert_eq!(reverse.resume.as_deref(), Some(&b"b"[..]), "the next page ends below b");
    // One entry larger than the whole limit still comes back, alone.
    let tiny = ScanLimit { entries: 100, bytes: 10 };
    let page = storage.scan(b"b", None, tiny, Timestamp::MAX).unwrap();
    assert_eq!((page.rows.len(), page.resume.as_deref()), (1, Some(&b"d"[..])));
    // The entry limit reports itself; a page that reaches the end has no resume key.
    let page = storage.scan(b"", None, ScanLimit::entries(1), Timestamp::MAX).unwrap();
    assert_eq!((page.resume.as_deref(), page.cut), (Some(&b"b"[..]), Some(ScanCut::Entries)));
    let page = storage.scan(b"b", None, ScanLimit::entries(2), Timestamp::MAX).unwrap();
    assert_eq!((page.rows.len(), page.resume), (2, None));
}
