//! A real Prometheus (Debian's, installed by scripts/setup.sh) scrapes a live node's /metrics.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pleiades_tests::{http_get, TestNode};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_node() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("prometheus is not installed: scripts/setup.sh installs Debian's package");
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]).unwrap();
    let client = node.client().await.unwrap();
    client.kv().await.unwrap().put(b"scraped", b"yes").await.unwrap();

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pleiades\n    static_configs:\n      - targets: ['{}']\n",
            node.http
        ),
    )
    .unwrap();
    let web = free_loopback_port();
    let _prometheus = KillOnDrop(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    // Bounded wait: Prometheus starts, scrapes every second, and must then hold our samples.
    let query = "/api/v1/query?query=pleiades_kv_request_seconds_count%7Bop%3D%22put%22%2Coutcome%3D%22ok%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Ok((200, body)) = http_get(web, query) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(sample) = json["data"]["result"].as_array().and_then(|r| r.first()).cloned() {
                break sample;
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never stored a sample from {}", node.http);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(result["metric"]["job"], "pleiades");
    assert_eq!(result["value"][1], "1", "{result}");

    let (_, targets) = http_get(web, "/api/v1/targets").unwrap();
    let targets: serde_json::Value = serde_json::from_str(&targets).unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
    client.close().await;
}
