//! Day-2 operations on real node processes: nodes joining together, a node stopped with SIGTERM
//! under write load (a rollout step), and the CLI reaching a node by name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleiades::client::ClientError;
use pleiades_proto::v1::ReadConsistency;
use pleiades_tests::{pleiades_binary, TestCluster, FAST_RAFT};

/// Every range's replica count as the nodes' own descriptors say, largest first seen.
async fn replica_counts(cluster: &TestCluster) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for status in cluster.status().await {
        for replica in status.replicas {
            if let Some(descriptor) = replica.descriptor {
                let count = counts.entry(descriptor.range_id).or_default();
                *count = descriptor.replicas.len().max(*count);
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_joining_at_the_same_moment_leave_every_range_at_its_factor() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    cluster.join_together(&[4, 5]).unwrap();
    // Watch throughout: a range that settles above its factor fails even if the repairs trim it
    // later. A move's joint configuration lists four voters for the moment it takes to commit
    // (milliseconds), so only a range seen above three for over a second counts.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut above_since: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        let counts = replica_counts(&cluster).await;
        above_since.retain(|range, _| counts.get(range).is_some_and(|c| *c > 3));
        for (range, count) in &counts {
            if *count > 3 {
                let since = *above_since.entry(*range).or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(1),
                    "range {range} stayed above its replication factor of 3: {counts:?}"
                );
            }
        }
        let status = cluster.status().await;
        let held = |id: u64| status.iter().filter(|s| s.node_id == id).map(|s| s.replicas.len()).sum::<usize>();
        // 5 ranges of 3 replicas over 5 nodes: each newcomer's fair share is 3.
        if held(4) >= 3 && held(5) >= 3 && counts.values().all(|c| *c == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "the joins did not settle: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = cluster.client().await.unwrap();
    client.put(b"after-joins", b"ok").await.unwrap();
    client.close().await;
}

// Four workers: one blocks on the node's exit while the 16 writers and their QUIC connections
// run on the others; with two, the writers' side stalled for seconds in 2 of 5 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_a_leader_under_write_load_fails_no_write_and_exits_within_seconds() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    let leaders = cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let uncertain = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let (client, stop, acked, failed, uncertain) =
                (client.clone(), stop.clone(), acked.clone(), failed.clone(), uncertain.clone());
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Keys spread over every range.
                    let key = format!("{}{writer:02}-{i:06}", (b'0' + (i % 75) as u8) as char).into_bytes();
                    // A put whose outcome is unknown is sent again, as an application would: the
                    // same value, so applying it twice is harmless. It counts, and is reported.
                    let mut result = client.put(&key, b"v").await;
                    if let Err(e @ ClientError::Uncertain(_)) = &result {
                        uncertain.lock().unwrap().push(format!("{}: {e}", String::from_utf8_lossy(&key)));
                        result = client.put(&key, b"v").await;
                    }
                    match result {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(e) => failed.lock().unwrap().push(format!("{}: {e}", String::from_utf8_lossy(&key))),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The node leading the most ranges.
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for node in leaders.values() {
        *led.entry(*node).or_default() += 1;
    }
    let (&victim, &ranges_led) = led.iter().max_by_key(|(_, count)| **count).unwrap();
    let before = acked.lock().unwrap().len();
    let stopping = Instant::now();
    let node = cluster.node(victim);
    let exit = tokio::task::block_in_place(|| node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5)));
    let took = stopping.elapsed();
    let status = exit.unwrap_or_else(|e| panic!("{e}; logs:\n{}", node.logs().join("\n")));
    assert!(status.success(), "node {victim} exited with {status}");
    let handed = node
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "leaderships handed over")
        .and_then(|event| event["handed"].as_u64());
    let shutdown_logs: Vec<String> =
        node.logs().into_iter().skip_while(|line| !line.contains("shutting down")).collect();
    assert!(
        handed.is_some_and(|n| n >= 1),
        "node {victim} led {ranges_led} ranges and handed over {handed:?}:\n{}",
        shutdown_logs.join("\n")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} writes failed around the SIGTERM: {:?}\nnode {victim}'s last log lines:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        node.logs().iter().rev().take(150).rev().cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(acked.len() > before, "writes went on after node {victim} left ({before} before, {} after)", acked.len());
    let uncertain = uncertain.lock().unwrap().clone();
    eprintln!(
        "node {victim} led {ranges_led} ranges, handed {handed:?} over and exited in {took:?}; {} outcomes unknown \
         and sent again: {:?}",
        uncertain.len(),
        &uncertain[..uncertain.len().min(3)]
    );
    for key in &acked {
        let value = client.get(key, 0, ReadConsistency::Linearizable).await.unwrap();
        assert_eq!(value.map(|v| v.value), Some(b"v".to_vec()), "{}", String::from_utf8_lossy(key));
    }
    client.close().await;
}

/// Runs the CLI against `node` with `args` (plus its CA and the admin certificate).
fn cli(node: &pleiades_tests::TestNode, args: &[&str]) -> (bool, String) {
    let config = node.client_config();
    let identity = config.identity.expect("admin certificate");
    let output = std::process::Command::new(pleiades_binary())
        .args(args)
        .arg("--ca-cert")
        .arg(&config.ca_cert)
        .arg("--cert")
        .arg(&identity.cert)
        .arg("--key")
        .arg(&identity.key)
        .output()
        .expect("run pleiades");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_node_by_host_name_and_every_command_honours_server_name() {
    let cluster = TestCluster::start(1, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let node = &cluster.nodes[0];
    let by_name = format!("localhost:{}", node.quic.port());
    let by_ip = node.quic.to_string();
    let (ok, out) = cli(node, &["kv", "put", "greeting", "hello", "--addr", &by_name]);
    assert!(ok, "{out}");
    let (ok, out) = cli(node, &["kv", "get", "greeting", "--addr", &by_name]);
    assert!(ok && out.contains("hello"), "{out}");
    for command in [&["status"][..], &["info"], &["kv", "get", "greeting"], &["members"]] {
        let (ok, out) = cli(node, &[command, &["--addr", &by_ip, "--server-name", "localhost"]].concat());
        assert!(ok, "{command:?} with --server-name localhost: {out}");
        // A name the certificate does not carry is refused by every command: it was used.
        let (ok, out) = cli(node, &[command, &["--addr", &by_ip, "--server-name", "elsewhere.example"]].concat());
        assert!(!ok && out.contains("certificate"), "{command:?} with a wrong --server-name: {out}");
    }
    let (ok, out) = cli(node, &["kv", "get", "greeting", "--addr", "no-such-host.invalid:7400"]);
    assert!(!ok && out.contains("no-such-host.invalid:7400"), "{out}");
    let (ok, out) = cli(node, &["kv", "get", "greeting", "--addr", "localhost"]);
    assert!(!ok && out.contains("host:port"), "{out}");
}
