//! A 3-member etcd cluster on loopback for `bench compare`: real etcd processes, data under the
//! bench's directory, fsync on (etcd's default), stopped when the bench ends.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Members; the same as the constellation's nodes.
const MEMBERS: u16 = 3;

pub struct EtcdCluster {
    /// Client URLs, one per member.
    pub endpoints: Vec<String>,
    children: Vec<tokio::process::Child>,
}

impl EtcdCluster {
    /// Starts the members (client ports from `base_port + 1`, peer ports from `base_port + 11`)
    /// and waits until each reports itself healthy.
    pub async fn start(binary: &Path, dir: &Path, base_port: u16) -> anyhow::Result<Self> {
        anyhow::ensure!(base_port < u16::MAX - 20, "--base-port {base_port} leaves no room for etcd's ports");
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let initial_cluster: Vec<String> = (1..=MEMBERS).map(|m| format!("m{m}={}", url(base_port + 10 + m))).collect();
        let mut children = Vec::new();
        for m in 1..=MEMBERS {
            let (client, peer) = (url(base_port + m), url(base_port + 10 + m));
            let data = dir.join(format!("m{m}"));
            std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
            let log = std::fs::File::create(dir.join(format!("m{m}.log")))?;
            let child = tokio::process::Command::new(binary)
                .arg(format!("--name=m{m}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=pleiades-bench")
                // Room for the 4 KiB runs' history, kept small by compaction as a production
                // cluster would be (Pleiades collects its MVCC history too).
                .arg("--quota-backend-bytes=8589934592")
                .arg("--auto-compaction-mode=revision")
                .arg("--auto-compaction-retention=100000")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start etcd ({}); scripts/setup.sh installs Debian's etcd-server, or pass --etcd-bin",
                        binary.display()
                    )
                })?;
            children.push(child);
        }
        let mut cluster = EtcdCluster { endpoints: (1..=MEMBERS).map(|m| url(base_port + m)).collect(), children };
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in 1..=MEMBERS {
            let addr = format!("127.0.0.1:{}", base_port + m);
            loop {
                if let Some(status) = cluster.children[usize::from(m - 1)].try_wait()? {
                    anyhow::bail!(
                        "etcd member m{m} exited with {status}; see {}",
                        dir.join(format!("m{m}.log")).display()
                    );
                }
                if crate::local::http_status(&addr, "/health").await.ok() == Some(200) {
                    break;
                }
                if Instant::now() > deadline {
                    cluster.stop().await;
                    anyhow::bail!(
                        "etcd member m{m} not healthy within 30 s; see {}",
                        dir.join(format!("m{m}.log")).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    pub async fn stop(&mut self) {
        crate::local::stop_all(&mut self.children).await;
    }
}
