//! A real Prometheus (Debian's, installed by scripts/setup.sh) scrapes a live 3-node
//! constellation: every target is up, the key series have samples from every node, each node's
//! /metrics passes `promtool check metrics`, and every node metric the Grafana dashboard
//! queries exists.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pleiades_proto::v1::ReadConsistency;
use pleiades_tests::{http_get, ProcessGroup, TestCluster, FAST_RAFT};

fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn installed(name: &str) -> String {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| panic!("{name} is not installed: scripts/setup.sh installs Debian's prometheus package"))
}

fn query(web: SocketAddr, promql: &str) -> Vec<serde_json::Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    match http_get(web, &format!("/api/v1/query?query={encoded}")) {
        Ok((200, body)) => {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            json["data"]["result"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Node metric names the dashboard queries (the operator's are checked in its own crate).
fn dashboard_node_metrics() -> Vec<String> {
    // The package's directory as cargo gives it to the running test, not as compiled in: the
    // target directory is shared between checkouts.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{dir}/../charts/pleiades-operator/dashboards/pleiades.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("pleiades_") {
                let name: String =
                    rest[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[start + name.len()..];
                if !name.starts_with("pleiades_operator_") {
                    names.push(name);
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_of_a_constellation() {
    let prometheus = installed("prometheus");
    let promtool = installed("promtool");
    let cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().await.unwrap();
    for i in 0..50 {
        client.put(format!("scraped-{i}").as_bytes(), b"yes").await.unwrap();
        client.get(format!("scraped-{i}").as_bytes(), 0, ReadConsistency::Linearizable).await.unwrap();
    }

    let targets: Vec<String> = cluster.nodes.iter().map(|n| format!("'{}'", n.http)).collect();
    let config = cluster.root.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pleiades\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = free_loopback_port();
    let _prometheus = ProcessGroup::spawn(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", cluster.root.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start prometheus");

    // Bounded wait: Prometheus starts, scrapes every second, and must then hold samples from
    // every node for every key series.
    // Series every node has (client requests go to range leaders, so not every node serves kv).
    let key_series = [
        "pleiades_raft_is_leader",
        "pleiades_raft_applied_index",
        "pleiades_storage_wal_sync_seconds_count",
        "pleiades_quic_connections_open",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = key_series
            .iter()
            .filter(|series| query(web, &format!("count by (instance) ({series})")).len() != cluster.nodes.len())
            .map(|series| series.to_string())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never held {missing:?} from every node");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, targets) = http_get(web, "/api/v1/targets").unwrap();
    let targets: serde_json::Value = serde_json::from_str(&targets).unwrap();
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 3);
    for target in active {
        assert_eq!(target["health"], "up", "{target}");
        assert_eq!(target["lastError"], "", "{target}");
    }
    // Every range has exactly one leader across the constellation, once the scrapes have caught
    // up with the leadership transfers that balance a new constellation.
    let ranges = cluster.wait_for_leaders(Duration::from_secs(10)).await.unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders = query(web, "sum(pleiades_raft_is_leader)");
        let counted = leaders.first().and_then(|l| l["value"][1].as_str()?.parse::<usize>().ok());
        if counted == Some(ranges) {
            break;
        }
        assert!(Instant::now() < deadline, "{leaders:?} leaders for {ranges} ranges");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let puts = query(web, "sum(pleiades_kv_request_seconds_count{op=\"put\",outcome=\"ok\"})");
    let puts: f64 = puts[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(puts >= 50.0, "{puts} puts recorded");
    // Every node sees all three alive through gossip, and gossip traffic flows as datagrams.
    let alive = query(web, "pleiades_gossip_members{state=\"alive\"}");
    assert_eq!(alive.len(), 3, "{alive:?}");
    assert!(alive.iter().all(|series| series["value"][1] == "3"), "{alive:?}");
    let datagrams = query(web, "sum(pleiades_gossip_messages_total{direction=\"in\",transport=\"datagram\"})");
    let datagrams: f64 = datagrams[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(datagrams > 0.0, "no gossip datagram received");

    let dashboard = dashboard_node_metrics();
    assert!(dashboard.len() >= 10, "{dashboard:?}");
    let mut expositions = String::new();
    for node in &cluster.nodes {
        let (status, exposition) = node.http_get("/metrics").unwrap();
        assert_eq!(status, 200);
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics on {}:\n{}{}",
            node.http,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        expositions.push_str(&exposition);
    }
    for name in &dashboard {
        assert!(expositions.contains(&format!("\n{name}")), "the dashboard queries {name}, which no node exports");
    }
    client.close().await;
}
