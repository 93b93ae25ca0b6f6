//! A replicated constellation of real node processes on loopback (RocksDB on disk, QUIC):
//! reads and writes across ranges, leader kills, full restarts, snapshot catch-up, joins,
//! decommissions, paused minorities, stale reads and bad requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pleiades::client::cluster::Cluster;
use pleiades::client::ClientError;
use pleiades_proto::v1::{self, kv_request::Op, kv_response::Result as KvResult, ErrorCode, ReadConsistency};
use pleiades_tests::{TestCluster, TestNode, FAST_RAFT};

const LINEARIZABLE: ReadConsistency = ReadConsistency::Linearizable;

/// Keys whose first bytes fall in every initial range.
fn spread_key(i: usize) -> Vec<u8> {
    pleiades::bench::bench_key(i as u64)
}

/// Writes keys; returns the acknowledged ones. A put whose outcome is unknown (its node died
/// mid-request) is sent again with the same value until one attempt is acknowledged.
async fn write_keys(client: &Cluster, range: std::ops::Range<usize>, tag: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut acked = BTreeMap::new();
    for i in range {
        let (key, value) = (spread_key(i), format!("{tag}-{i}").into_bytes());
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.put(&key, &value).await {
                Ok(_) => break,
                Err(ClientError::Uncertain(_)) if attempts < 10 => continue,
                Err(e) => panic!("put {i}: {e}"),
            }
        }
        acked.insert(key, value);
    }
    acked
}

async fn assert_all_readable(client: &Cluster, acked: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (key, value) in acked {
        let found = client.get(key, 0, LINEARIZABLE).await.unwrap_or_else(|e| panic!("get {key:?}: {e}"));
        assert_eq!(found.map(|v| v.value).as_ref(), Some(value), "acknowledged write of {key:?} lost");
    }
}

/// One KV request to one node, bypassing routing; a KV error is a result, anything else an error.
async fn try_ask(node: &TestNode, op: Op) -> Result<KvResult, ClientError> {
    let client = pleiades::client::Client::connect(&node.client_config()).await?;
    let mut kv = client.kv().await?;
    let result = kv.request(op).await;
    client.close().await;
    match result {
        Err(ClientError::Kv { code, message }) => {
            Ok(KvResult::Error(v1::KvError { code: code.into(), message, ..Default::default() }))
        }
        other => other,
    }
}

async fn ask(node: &TestNode, op: Op) -> v1::KvResponse {
    let result = try_ask(node, op).await.unwrap_or_else(|e| panic!("request to node {}: {e}", node.node_id));
    v1::KvResponse { request_id: 0, result: Some(result) }
}

async fn stale_get(node: &TestNode, key: &[u8]) -> Option<Vec<u8>> {
    let get = v1::GetRequest { key: key.to_vec(), consistency: ReadConsistency::Stale.into(), ..Default::default() };
    match ask(node, Op::Get(get)).await.result {
        Some(KvResult::Get(found)) => found.value.map(|v| v.value),
        other => panic!("stale get on node {}: {other:?}", node.node_id),
    }
}

fn range_holding(cluster_status: &[v1::RangeStatusResponse], key: &[u8]) -> v1::RangeDescriptor {
    cluster_status
        .iter()
        .flat_map(|s| s.replicas.iter())
        .filter_map(|r| r.descriptor.clone())
        .find(|d| pleiades::range::table::descriptor_contains(d, key))
        .expect("a range holds every key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_puts_gets_scans_and_cas_across_ranges() {
    let cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    let leaders = cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    assert_eq!(leaders.len(), 5, "meta + 4 data ranges: {leaders:?}");
    let client = cluster.client().await.unwrap();
    let acked = write_keys(&client, 0..200, "v").await;
    let status = cluster.status().await;
    let ranges: std::collections::BTreeSet<u64> = acked.keys().map(|k| range_holding(&status, k).range_id).collect();
    assert_eq!(ranges.len(), 4, "the keys cover every data range");
    let streams = || cluster.nodes.iter().map(|n| n.metric("pleiades_pwp_streams_accepted_total")).sum::<f64>();
    let streams_before = streams();
    assert_all_readable(&client, &acked).await;
    // Each linearizable get confirms leadership with both followers; the raft streams those
    // rounds use are reused, not opened per round (which would be 400 streams here).
    let opened = streams() - streams_before;
    assert!(opened < 100.0, "200 linearizable gets opened {opened} streams");

    // A scan across every range sees every key once, in order, at one timestamp.
    let rows = client.scan(b"", b"", 0, false, LINEARIZABLE).await.unwrap();
    let keys: Vec<Vec<u8>> = rows.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, acked.keys().cloned().collect::<Vec<_>>());
    let limited = client.scan(b"", b"", 7, false, LINEARIZABLE).await.unwrap();
    assert_eq!(limited.len(), 7);
    // Reverse, across every range, and a bounded reverse page in the middle.
    let reversed = client.scan(b"", b"", 0, true, LINEARIZABLE).await.unwrap();
    let mut expected: Vec<Vec<u8>> = acked.keys().cloned().collect();
    expected.reverse();
    assert_eq!(reversed.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), expected);
    let (low, high) = (b"5".to_vec(), b"c".to_vec());
    let window = client.scan(&low, &high, 0, true, LINEARIZABLE).await.unwrap();
    let expected: Vec<Vec<u8>> = acked.keys().filter(|k| **k >= low && **k < high).rev().cloned().collect();
    assert!(expected.len() > 10);
    assert_eq!(window.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), expected);

    // Compare-and-swap: absent → a, a → b wins, a → c loses and reports b.
    let swapped = client.cas(b"cas-key", None, Some(b"a")).await.unwrap();
    assert!(swapped.succeeded);
    assert!(client.cas(b"cas-key", Some(b"a"), Some(b"b")).await.unwrap().succeeded);
    let lost = client.cas(b"cas-key", Some(b"a"), Some(b"c")).await.unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.current.unwrap().value, b"b");
    assert!(client.cas(b"cas-key", Some(b"b"), None).await.unwrap().succeeded, "a CAS can delete");
    assert_eq!(client.get(b"cas-key", 0, LINEARIZABLE).await.unwrap(), None);
    assert_eq!(client.get(b"cas-key", 2, LINEARIZABLE).await.unwrap().unwrap().value, b"b", "versions survive");

    // Every replica holds every write (stale reads on each node).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in &cluster.nodes {
        assert_eq!(stale_get(node, &spread_key(3)).await, acked.get(&spread_key(3)).cloned());
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_leader_loses_no_acknowledged_write_and_a_full_restart_keeps_everything() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    let mut acked = write_keys(&client, 0..100, "before").await;
    // Kill the leader of every range, one node at a time, writing between kills.
    let mut round = 0;
    loop {
        let leaders = cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
        let Some((&range, &victim)) = leaders.iter().nth(round) else { break };
        round += 1;
        cluster.node(victim).kill9();
        let written = write_keys(&client, 1000 * round..1000 * round + 30, &format!("after-kill-{round}")).await;
        acked.extend(written);
        assert_all_readable(&client, &acked).await;
        let survivors_leaders = cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
        assert_ne!(survivors_leaders.get(&range), Some(&victim), "range {range} has a new leader");
        cluster.node(victim).restart().unwrap();
    }
    assert!(round >= 3, "every range's leader was killed once");

    // Everything down at once (kill -9), then everything up again.
    for node in cluster.nodes.iter_mut() {
        node.kill9();
    }
    for node in cluster.nodes.iter_mut() {
        node.restart().unwrap();
    }
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    assert_all_readable(&client, &acked).await;
    client.put(b"after-restart", b"ok").await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_purged_log_catches_up_by_snapshot() {
    let config = format!("{FAST_RAFT}snapshot-after-entries = 40\nkeep-entries-after-snapshot = 5\n");
    let mut cluster = TestCluster::start(3, &config).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    cluster.node(3).kill9();
    let acked = write_keys(&client, 0..400, "while-down").await;
    // The leaders have snapshotted and purged what node 3 missed.
    let status = cluster.status().await;
    assert!(status.iter().flat_map(|s| s.replicas.iter()).any(|r| r.purged_index > 0), "logs were purged: {status:?}");
    cluster.node(3).restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let node3 = &cluster.nodes[2];
    loop {
        let (_, metrics) = node3.http_get("/metrics").unwrap();
        let received =
            metrics.lines().any(|l| l.starts_with("pleiades_raft_snapshots_received_total") && !l.ends_with(" 0"));
        let mut all = true;
        for key in acked.keys().step_by(37) {
            if stale_get(node3, key).await.as_ref() != acked.get(key) {
                all = false;
            }
        }
        if received && all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up by snapshot; received={received}; its log:\n{}",
            node3
                .logs()
                .iter()
                .filter(|l| !l.contains("\"INFO\""))
                .rev()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (key, value) in &acked {
        assert_eq!(stale_get(node3, key).await.as_ref(), Some(value));
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_takes_replicas_then_is_decommissioned_without_loss() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    let mut acked = write_keys(&client, 0..100, "before-join").await;
    cluster.join(4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let hosted_on_4 = loop {
        let status = cluster.status().await;
        let on_4: Vec<u64> = status
            .iter()
            .filter(|s| s.node_id == 4)
            .flat_map(|s| s.replicas.iter())
            .filter(|r| r.role == "follower" || r.role == "leader")
            .filter_map(|r| r.descriptor.as_ref().map(|d| d.range_id))
            .collect();
        if on_4.len() >= 3 {
            break on_4;
        }
        assert!(Instant::now() < deadline, "node 4 took no fair share of replicas: {on_4:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    acked.extend(write_keys(&client, 100..150, "after-join").await);
    assert_all_readable(&client, &acked).await;
    // Node 4 holds real copies: stale reads of keys in its ranges come from its own replica.
    let status = cluster.status().await;
    let node4 = cluster.nodes.iter().find(|n| n.node_id == 4).unwrap();
    let mut checked = 0;
    for (key, value) in &acked {
        if hosted_on_4.contains(&range_holding(&status, key).range_id) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while stale_get(node4, key).await.as_ref() != Some(value) {
                assert!(Instant::now() < deadline, "node 4's replica lacks {key:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            checked += 1;
        }
    }
    assert!(checked > 0);

    // Decommission node 1 (a founder) through node 2, writing all along.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write_keys(&client, 5000..5100, "during-decommission").await })
    };
    let node2 = cluster.nodes.iter().find(|n| n.node_id == 2).unwrap();
    let admin = pleiades::client::Client::connect(&pleiades::client::ClientConfig {
        timeout: Duration::from_secs(300),
        ..node2.client_config()
    })
    .await
    .unwrap();
    let answer = admin.system().await.unwrap().decommission(1).await.unwrap();
    admin.close().await;
    assert!(answer.error.is_empty(), "{}", answer.error);
    assert!(!answer.moves.is_empty());
    acked.extend(writer.await.unwrap());
    // Followers learn the final membership with the leader's next append: wait for them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.status().await;
        let lagging: Vec<v1::RangeDescriptor> = status
            .iter()
            .filter(|s| s.node_id != 1)
            .flat_map(|s| s.replicas.iter().filter_map(|r| r.descriptor.clone()))
            .filter(|d| d.replicas.contains(&1) || d.replicas.len() != 3)
            .collect();
        if lagging.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "ranges still list node 1 or lost a replica: {lagging:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With node 1 gone entirely, everything is still there.
    cluster.node(1).kill9();
    assert_all_readable(&client, &acked).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_minority_cannot_commit_while_the_majority_serves_and_stale_reads_go_on() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    let acked = write_keys(&client, 0..50, "v").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One node paused: the majority elects leaders where needed and keeps serving.
    let paused = cluster.node(1).pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on a child we spawned and still own.
    unsafe { libc::kill(paused, libc::SIGSTOP) };
    let more = write_keys(&client, 50..80, "while-paused").await;
    assert_all_readable(&client, &more).await;
    unsafe { libc::kill(paused, libc::SIGCONT) };

    // Two nodes paused: node 3 alone is a minority and must not commit anything.
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let pids: Vec<libc::pid_t> = [1, 2].iter().map(|id| cluster.node(*id).pid().unwrap() as libc::pid_t).collect();
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    let lonely = cluster.nodes.iter().find(|n| n.node_id == 3).unwrap();
    let put = v1::PutRequest { key: spread_key(7), value: b"minority".to_vec() };
    match try_ask(lonely, Op::Put(put)).await {
        Ok(KvResult::Error(e)) => {
            assert!(matches!(e.code(), ErrorCode::NotLeader | ErrorCode::Uncertain | ErrorCode::Unavailable), "{e:?}")
        }
        Ok(other) => panic!("a minority committed a write: {other:?}"),
        Err(ClientError::Timeout(_)) => {} // no answer at all is no commit either
        Err(e) => panic!("{e}"),
    }
    let linearizable = v1::GetRequest { key: spread_key(7), ..Default::default() };
    match try_ask(lonely, Op::Get(linearizable)).await {
        Ok(KvResult::Error(_)) | Err(ClientError::Timeout(_)) => {}
        other => panic!("a minority served a linearizable read: {other:?}"),
    }
    // Stale reads are still served by the lone replica.
    for key in acked.keys().take(10) {
        assert_eq!(stale_get(lonely, key).await.as_ref(), acked.get(key));
    }
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    // The minority's write was never acknowledged, but raft may commit it once the majority is
    // back (it was in the lone leader's log): either outcome is correct, nothing else is.
    let after = client.get(&spread_key(7), 0, LINEARIZABLE).await.unwrap().unwrap().value;
    assert!(after == acked[&spread_key(7)] || after == b"minority", "{after:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_clear_errors() {
    let cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    let big_key = vec![b'k'; 64 * 1024 + 1];
    match client.put(&big_key, b"v").await {
        Err(ClientError::Kv { code: ErrorCode::KeyTooLarge, message }) => {
            assert!(message.contains("65537"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let big_value = vec![0u8; 8 * 1024 * 1024 + 1];
    match client.put(b"k", &big_value).await {
        Err(ClientError::Kv { code: ErrorCode::ValueTooLarge, .. }) => {}
        other => panic!("{other:?}"),
    }
    let node = &cluster.nodes[0];
    let client1 = node.client().await.unwrap();
    let mut kv = client1.kv().await.unwrap();
    match kv.request(Op::Scan(v1::ScanRequest { limit: 1_000_000, ..Default::default() })).await {
        Err(ClientError::Kv { code: ErrorCode::ScanLimitExceeded, .. }) => {}
        other => panic!("{other:?}"),
    }
    client1.close().await;
    // Raw garbage where a KvRequest belongs.
    let client1 = node.client().await.unwrap();
    let mut stream = client1.open(pleiades_proto::wire::Service::Kv).await.unwrap();
    let (kind, payload) = stream
        .call(pleiades_proto::payload_type::kv::REQUEST, bytes::Bytes::from_static(&[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    assert_eq!(kind, pleiades_proto::payload_type::kv::RESPONSE);
    let response = <v1::KvResponse as prost::Message>::decode(payload).unwrap();
    match response.result {
        Some(KvResult::Error(e)) => assert_eq!(e.code(), ErrorCode::InvalidArgument),
        other => panic!("{other:?}"),
    }
    client1.close().await;
    // The constellation is unharmed.
    client.put(b"still", b"fine").await.unwrap();
    client.close().await;
}
