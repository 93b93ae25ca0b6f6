//! A real node process served over QUIC/PWP: system and KV requests through the client library
//! and through the `pleiades` CLI, observability endpoints, and configuration precedence.

use std::process::Command;

use pleiades::client::ClientError;
use pleiades_proto::v1::{ErrorCode, HealthStatus};
use pleiades_tests::{pleiades_binary, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_service_reports_identity_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--node-id", "42"]).unwrap();
    let client = node.client().await.unwrap();
    let mut system = client.system().await.unwrap();
    let info = system.node_info().await.unwrap();
    assert_eq!(info.node_id, 42);
    assert_eq!(info.protocol_version, 1);
    assert_eq!(info.listen_address, node.quic.to_string());
    assert_eq!(info.http_address, node.http.to_string());
    assert_eq!(info.services, vec![0x05, 0x03, 0x02, 0x01]);
    assert!(info.now.unwrap().wall_nanos > 0);
    let health = system.health().await.unwrap();
    assert_eq!(health.status(), HealthStatus::Serving);
    let rtt = system.0.latency_test(7).await.unwrap();
    assert!(rtt.as_secs() < 10);
    system.0.close().await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_versions_scan_and_limits_over_pwp() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();

    for (i, value) in ["one", "two", "three"].iter().enumerate() {
        let put = kv.put(b"k", value.as_bytes()).await.unwrap();
        assert_eq!(put.version as usize, i + 1);
    }
    assert_eq!(kv.get(b"k", 0).await.unwrap().unwrap().value, b"three");
    assert_eq!(kv.get(b"k", 1).await.unwrap().unwrap().value, b"one");
    let versions = kv.versions(b"k").await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![3, 2, 1]);
    let descriptor = kv.describe(b"k").await.unwrap().unwrap();
    assert_eq!((descriptor.version_count, descriptor.latest_version, descriptor.retention), (3, 3, 255));
    assert!(descriptor.first_write.unwrap().wall_nanos <= descriptor.last_write.unwrap().wall_nanos);

    for key in ["a", "b", "c", "d"] {
        kv.put(key.as_bytes(), key.to_uppercase().as_bytes()).await.unwrap();
    }
    kv.delete(b"b").await.unwrap();
    assert_eq!(kv.get(b"b", 0).await.unwrap(), None);
    assert_eq!(kv.get(b"b", 1).await.unwrap().unwrap().value, b"B", "older versions stay readable");
    let scan = kv.scan(b"a", b"k", 2).await.unwrap();
    let keys: Vec<_> = scan.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(scan.resume_key, b"d");

    let too_long_key = vec![b'x'; 64 * 1024 + 1];
    match kv.put(&too_long_key, b"v").await {
        Err(ClientError::Kv { code: ErrorCode::KeyTooLarge, message }) => {
            assert!(message.contains("65537"), "{message}")
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    let too_big_value = vec![0u8; 8 * 1024 * 1024 + 1];
    match kv.put(b"big", &too_big_value).await {
        Err(ClientError::Kv { code: ErrorCode::ValueTooLarge, .. }) => {}
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    match kv.scan(b"", b"", 1_000_000).await {
        Err(ClientError::Kv { code: ErrorCode::ScanLimitExceeded, .. }) => {}
        other => panic!("expected ScanLimitExceeded, got {other:?}"),
    }
    // The stream is still usable after refused requests.
    assert_eq!(kv.get(b"a", 0).await.unwrap().unwrap().value, b"A");
    client.close().await;
}

fn cli(node: &TestNode, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(pleiades_binary())
        .args(args)
        .env("PLEIADES_ADDR", node.quic.to_string())
        .env("PLEIADES_CA_CERT", node.data_dir.join("tls/ca.crt"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trips_requests_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let (ok, out, err) = cli(&node, &["kv", "put", "greeting", "hello"]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("OK version 1"), "{out}");
    let (ok, out, _) = cli(&node, &["kv", "get", "greeting"]);
    assert!(ok);
    assert_eq!(out, "hello\n");
    let (ok, out, _) = cli(&node, &["info"]);
    assert!(ok);
    assert!(out.contains(&format!("node id          {}", node.node_id)), "{out}");
    let (ok, out, _) = cli(&node, &["health"]);
    assert!(ok);
    assert!(out.starts_with("HEALTH_STATUS_SERVING"), "{out}");
    let (ok, out, _) = cli(&node, &["ping", "--count", "20", "--json"]);
    assert!(ok, "{out}");
    let figures: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(figures["count"], 20);
    let (ok, _, err) = cli(&node, &["kv", "get", "missing"]);
    assert!(!ok);
    assert!(err.contains("missing: not found"), "{err}");
    // A wrong CA is a clear TLS failure, not a hang or a panic.
    let other = tempfile::tempdir().unwrap();
    let other_node = TestNode::start(other.path(), &[]).unwrap();
    let output = Command::new(pleiades_binary())
        .args(["info", "--addr", &node.quic.to_string(), "--timeout-ms", "3000"])
        .arg("--ca-cert")
        .arg(other_node.data_dir.join("tls/ca.crt"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("cannot reach the node"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    kv.put(b"m", b"v").await.unwrap();
    kv.get(b"m", 0).await.unwrap();

    assert_eq!(node.http_get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(node.http_get("/readyz").unwrap(), (200, "ready\n".into()));
    let (status, metrics) = node.http_get("/metrics").unwrap();
    assert_eq!(status, 200);
    for expected in [
        "pleiades_quic_connections_open 1",
        "pleiades_pwp_streams_accepted_total",
        "pleiades_pwp_received_bytes_total",
        "pleiades_pwp_sent_bytes_total",
        "pleiades_pwp_frames_total{direction=\"in\",frame=\"HELLO\"}",
        "pleiades_pwp_frames_total{direction=\"out\",frame=\"RESPONSE_STREAM_ID_INCOMING\"}",
        "pleiades_kv_request_seconds_count{op=\"put\",consistency=\"none\",outcome=\"ok\"} 1",
        "pleiades_kv_request_seconds_count{op=\"get\",consistency=\"linearizable\",outcome=\"ok\"} 1",
        "pleiades_raft_proposals_total{range=",
        "pleiades_raft_proposal_seconds_count{range=",
        "pleiades_raft_read_index_seconds_count{range=",
        "pleiades_raft_term{range=\"1\"}",
        "pleiades_raft_is_leader{range=\"1\"} 1",
        "pleiades_raft_applied_index{range=",
        "pleiades_raft_log_entries{range=",
        "pleiades_raft_replication_lag_entries{range=",
        "pleiades_storage_wal_sync_seconds_count",
        "pleiades_storage_write_seconds_count",
        "pleiades_storage_read_seconds_count",
        "pleiades_rocksdb_memtable_bytes",
        "pleiades_rocksdb_sst_bytes",
        "pleiades_rocksdb_pending_compaction_bytes",
        "pleiades_hlc_offset_rejections_total 0",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in:\n{metrics}");
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "node-id = 5\n[kv]\nmax-key-bytes = 8\n").unwrap();
    let node =
        TestNode::start(&dir.path().join("data"), &["--config", config.to_str().unwrap(), "--node-id", "9"]).unwrap();
    assert_eq!(node.node_id, 9, "the flag wins over the file");
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    kv.put(b"12345678", b"fits").await.unwrap();
    match kv.put(b"123456789", b"too long").await {
        Err(ClientError::Kv { code: ErrorCode::KeyTooLarge, .. }) => {}
        other => panic!("the file's key limit must apply: {other:?}"),
    }
    client.close().await;
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmax-payload = 3\n").unwrap();
    let output = Command::new(pleiades_binary()).args(["node", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("invalid config file") && err.contains("unknown field `max-payload`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let output = Command::new(pleiades_binary()).args(["node", "--listen", "nowhere"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'nowhere'"));
}

/// Writers racing on one key must all succeed: a write that took its timestamp before a racer
/// committed is retried with a fresh one, never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_one_key_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let client = std::sync::Arc::new(node.client().await.unwrap());
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut kv = client.kv().await.unwrap();
                let mut versions = Vec::new();
                for i in 0..50 {
                    let put = kv.put(b"hot", format!("{writer}-{i}").as_bytes()).await.unwrap();
                    versions.push(put.version);
                }
                versions
            })
        })
        .collect();
    let mut versions = Vec::new();
    for writer in writers {
        versions.extend(writer.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=400).collect::<Vec<_>>(), "every write got its own version");
}

/// A certificate and key given as files (as Kubernetes secrets will be) instead of generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_certificate_loaded_from_files() {
    use pleiades::transport::tls::{CaFiles, CertFiles};
    use pleiades_proto::identity::Identity;
    let dir = tempfile::tempdir().unwrap();
    let issuer = dir.path().join("issuer");
    let ca = CaFiles::in_dir(&issuer);
    ca.create("local").unwrap();
    let names = ["localhost".to_string()];
    ca.issue(&Identity::node("local", 7), &names, 30, &issuer.join("node.crt"), &issuer.join("node.key")).unwrap();
    ca.issue(&Identity::user("local", "admin"), &[], 30, &issuer.join("admin.crt"), &issuer.join("admin.key")).unwrap();
    let data_dir = dir.path().join("node");
    let args = [
        ("--tls-cert", issuer.join("node.crt")),
        ("--tls-key", issuer.join("node.key")),
        ("--tls-ca-cert", ca.cert.clone()),
    ];
    let mut flags: Vec<String> = vec!["--node-id".into(), "7".into()];
    for (flag, path) in &args {
        flags.push(flag.to_string());
        flags.push(path.display().to_string());
    }
    let node = TestNode::start(&data_dir, &flags.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(!data_dir.join("tls").exists(), "no identity may be generated when one is given");
    let config = pleiades::client::ClientConfig {
        ca_cert: ca.cert.clone(),
        identity: Some(CertFiles { cert: issuer.join("admin.crt"), key: issuer.join("admin.key") }),
        ..node.client_config()
    };
    let client = pleiades::client::Client::connect(&config).await.unwrap();
    client.system().await.unwrap().health().await.unwrap();
    client.close().await;

    // A certificate naming another node is no identity for this one: the node refuses to start.
    let wrong = TestNode::start(
        &dir.path().join("other"),
        &{
            let mut wrong = flags.clone();
            wrong[1] = "8".into();
            wrong
        }
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    let error = wrong.err().expect("node 8 cannot start with node 7's certificate").to_string();
    assert!(error.contains("names pleiades://local/node/7, but this node is pleiades://local/node/8"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_settings_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.toml");
    std::fs::write(
        &live,
        "log-level = \"info\"\n[kv]\nmax-key-bytes = 16\nmax-value-bytes = 1024\nmax-scan-limit = 100\n",
    )
    .unwrap();
    let node = TestNode::start(&dir.path().join("node"), &["--live-config", live.to_str().unwrap()]).unwrap();
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    let long_key = [b'k'; 32];
    match kv.put(&long_key, b"v").await {
        Err(ClientError::Kv { code: ErrorCode::KeyTooLarge, .. }) => {}
        other => panic!("the live file's 16-byte key limit did not apply at start: {other:?}"),
    }

    // The operator's ConfigMap changes: the running node picks it up.
    std::fs::write(
        &live,
        "log-level = \"debug\"\n[kv]\nmax-key-bytes = 64\nmax-value-bytes = 1024\nmax-scan-limit = 100\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while kv.put(&long_key, b"v").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the new key limit never applied");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(node.logs().iter().any(|l| l.contains("applied live configuration")));

    // A broken file is refused and the node keeps its settings.
    std::fs::write(&live, "[kv]\nmax-key-bytes = \"lots\"\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !node.logs().iter().any(|l| l.contains("ignoring invalid live configuration")) {
        assert!(std::time::Instant::now() < deadline, "the invalid file was not reported");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    kv.put(&long_key, b"still accepted").await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_scheduling_is_applied_or_clearly_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rt.toml");
    std::fs::write(&config, "[realtime]\npriority = 10\n").unwrap();
    let node = TestNode::start(&dir.path().join("node"), &["--config", config.to_str().unwrap()]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (applied, refused, logs) = loop {
        let logs = node.logs().join("\n");
        let applied = logs.contains("runtime threads run SCHED_FIFO");
        let refused = logs.contains("realtime scheduling requested but refused");
        if applied || refused || std::time::Instant::now() > deadline {
            break (applied, refused, logs);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(applied ^ refused, "no clear word on real-time scheduling:\n{logs}");
    if applied {
        // Some thread of the node really runs SCHED_FIFO (policy 1 in /proc/<pid>/task/*/stat).
        let pid = node.pid().unwrap();
        let fifo = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().any(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
            fields.get(38) == Some(&"1")
        });
        assert!(fifo, "the node said SCHED_FIFO but no thread runs it");
    }
    let client = node.client().await.unwrap();
    client.kv().await.unwrap().put(b"rt", b"ok").await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_larger_than_a_message_comes_back_in_pages_that_the_cli_prints_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let client = node.client().await.unwrap();
    let mut kv = client.kv().await.unwrap();
    const VALUE: usize = 5 << 20;
    for i in 0..4u8 {
        kv.put(format!("big/{i}").as_bytes(), &vec![b'a' + i; VALUE]).await.unwrap();
    }
    // 20 MiB of values, messages of at most 16 MiB, answers of at most 12 MiB: pages of two,
    // each ending with the exact key to resume from.
    let first = kv.scan(b"big/", b"big0", 0).await.unwrap();
    let keys = |page: &pleiades_proto::v1::ScanResponse| page.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&first), [b"big/0".to_vec(), b"big/1".to_vec()]);
    assert_eq!(first.resume_key, b"big/2");
    let second = kv.scan(&first.resume_key, b"big0", 0).await.unwrap();
    assert_eq!(keys(&second), [b"big/2".to_vec(), b"big/3".to_vec()]);
    assert!(second.resume_key.is_empty(), "the last page");
    let (_, metrics) = node.http_get("/metrics").unwrap();
    assert!(metrics.contains("pleiades_limit_reached_total{limit=\"scan_bytes\"} 1"), "the bound is counted");
    client.close().await;

    let (ok, out, err) = cli(&node, &["kv", "scan", "big/", "big0"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "every page is printed");
    for (i, line) in lines.iter().enumerate() {
        let (key, value) = line.split_once('\t').unwrap();
        assert_eq!(key, format!("big/{i}"));
        assert_eq!(value.len(), VALUE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_says_which_ranges_name_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).unwrap();
    let (status, body) = node.http_get(&format!("/replicas/{}", node.node_id)).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["node_id"], node.node_id);
    assert_eq!(answer["ranges"].as_array().unwrap().len(), 5, "a lone node holds the meta range and four data ranges");
    let (_, stranger) = node.http_get("/replicas/999").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stranger).unwrap()["ranges"], serde_json::json!([]));
}
