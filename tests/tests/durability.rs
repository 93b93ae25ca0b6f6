//! Durability of a node process: every acknowledged write survives `kill -9`, a clean SIGTERM
//! shutdown flushes and exits 0, and the clock never reissues time across restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleiades::client::ClientError;
use pleiades::clock::Timestamp;
use pleiades_tests::TestNode;

/// Writers keep writing while the node is killed; everything acknowledged must be readable after
/// the restart, with the acknowledged version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]).unwrap();
    let acknowledged: Arc<Mutex<HashMap<String, (String, u32)>>> = Arc::default();
    let client = Arc::new(node.client().await.unwrap());

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let Ok(mut kv) = client.kv().await else { return };
                // Bounded: stops by itself even if the node is never killed.
                for i in 0..5_000 {
                    let key = format!("writer{writer}/key{:03}", i % 200);
                    let value = format!("value {i} from writer {writer}");
                    match kv.put(key.as_bytes(), value.as_bytes()).await {
                        Ok(put) => {
                            acknowledged.lock().unwrap().insert(key, (value, put.version));
                        }
                        Err(_) => return, // the node died mid-request: unacknowledged
                    }
                }
            })
        })
        .collect();

    // Let the writers build up a history, then pull the plug mid-stream.
    while acknowledged.lock().unwrap().len() < 600 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 600);

    node.restart().unwrap();
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    for (key, (value, version)) in &acknowledged {
        let found = kv.get(key.as_bytes(), 0).await.unwrap().unwrap_or_else(|| panic!("{key} lost after kill -9"));
        // A put may have been applied without its ack reaching us, so the version can only be newer.
        assert!(found.version >= *version, "{key}: version {} < acknowledged {version}", found.version);
        if found.version == *version {
            assert_eq!(String::from_utf8_lossy(&found.value), *value, "{key}");
        }
        let at_ack = kv.get(key.as_bytes(), *version).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&at_ack.value), *value, "{key} version {version}");
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_restart_keeps_data_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]).unwrap();
    let node_id = node.node_id;
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    let mut last = Timestamp::MIN;
    for i in 0..50 {
        let put = kv.put(b"counter", format!("{i}").as_bytes()).await.unwrap();
        last = put.timestamp.unwrap().into();
    }
    client.close().await;

    let status = node.signal_and_wait(libc::SIGTERM, Duration::from_secs(20)).unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let logs = node.logs().join("\n");
    assert!(logs.contains("node stopped"), "no clean stop in logs:\n{logs}");

    node.restart().unwrap();
    assert_eq!(node.node_id, node_id, "the node id is kept in the data directory");
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    let found = kv.get(b"counter", 0).await.unwrap().unwrap();
    assert_eq!(found.value, b"49");
    assert_eq!(found.version, 50);
    let put = kv.put(b"counter", b"after restart").await.unwrap();
    let after: Timestamp = put.timestamp.unwrap().into();
    assert!(after > last, "time went backwards across a restart: {after} <= {last}");
    assert_eq!(kv.versions(b"counter").await.unwrap().len(), 51);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_stops_the_node_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]).unwrap();
    let status = node.signal_and_wait(libc::SIGINT, Duration::from_secs(20)).unwrap();
    assert!(status.success(), "SIGINT exit: {status:?}");
    // The node refuses new connections once stopped.
    let refused = pleiades::client::Client::connect(&pleiades::client::ClientConfig {
        timeout: Duration::from_millis(500),
        ..node.client_config()
    })
    .await;
    assert!(matches!(refused, Err(ClientError::Timeout(_) | ClientError::Connect { .. })));
}
