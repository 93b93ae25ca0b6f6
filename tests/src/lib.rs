//! Harness for tests that run real `pleiades` node processes on loopback.

pub mod linearizability;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pleiades::client::{Client, ClientConfig};
use pleiades::transport::tls::{CaFiles, CertFiles};

/// The `pleiades` binary that `cargo test --workspace` builds next to this test executable (for
/// the dataplane crate's own integration tests). Run these tests through the workspace, e.g.
/// `scripts/test.sh`, so the binary is current.
pub fn pleiades_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            // Test executables live in <target>/<profile>/deps; binaries one level up.
            let exe = std::env::current_exe().expect("current test executable");
            let binary = exe.parent().and_then(Path::parent).expect("target profile directory").join("pleiades");
            assert!(
                binary.exists(),
                "{} is missing: run `cargo test --workspace` (or `cargo build --bin pleiades`) first",
                binary.display()
            );
            binary
        })
        .clone()
}

/// A child process started in its own process group, killed with everything it started when
/// dropped: a failing test must not leave a `pleiades up` and its nodes running (they would
/// hold the test runner's output open and keep their ports).
pub struct ProcessGroup(pub Child);

impl ProcessGroup {
    pub fn spawn(command: &mut Command) -> std::io::Result<ProcessGroup> {
        use std::os::unix::process::CommandExt;
        command.process_group(0).spawn().map(ProcessGroup)
    }

    /// Sends `signal` to the child alone (its children are its business).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is touched.
        unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: as above, to the group the child leads (its pid is the group id).
        unsafe { libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A node process with its data directory.
pub struct TestNode {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    extra_args: Vec<String>,
    /// Environment variables of the process from its next (re)start.
    env: Vec<(String, String)>,
}

impl TestNode {
    /// Starts a node on loopback ports chosen by the OS and waits until it serves.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<TestNode> {
        let mut node = TestNode {
            child: None,
            data_dir: data_dir.to_owned(),
            node_id: 0,
            quic: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs: Arc::default(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let given = |flag: &str| self.extra_args.iter().any(|a| a == flag);
        let mut command = Command::new(pleiades_binary());
        command.args(["node", "--log-format", "json"]);
        // A constellation's founders need their addresses fixed before they start.
        if !given("--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !given("--http") {
            command.args(["--http", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn pleiades node")?;
        let stderr = child.stderr.take().context("node stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "node ready" {
                        let _ = ready_tx.send(event);
                    }
                }
                logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.child = Some(child);
        let ready = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ready) => ready,
            Err(_) => bail!("node did not become ready; logs:\n{}", self.logs().join("\n")),
        };
        let field = |name: &str| ready[name].as_str().map(str::to_owned).context("ready event field");
        self.quic = field("listen")?.parse()?;
        self.http = field("http")?.parse()?;
        self.node_id = ready["node_id"].as_u64().context("node_id")?;
        Ok(())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A client of this node as the `admin` user (the certificate the node generated).
    pub fn client_config(&self) -> ClientConfig {
        let tls = pleiades::transport::tls::GeneratedPaths::in_data_dir(&self.data_dir);
        ClientConfig {
            addr: self.quic.to_string(),
            server_name: Some("localhost".into()),
            ca_cert: tls.ca.cert,
            identity: Some(CertFiles { cert: tls.admin_cert, key: tls.admin_key }),
            timeout: Duration::from_secs(10),
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.client_config()).await?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: libc::c_int, limit: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("node not running")?;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not exit within {limit:?} of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on its data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.launch()
    }

    /// Sets the environment of the node's process from its next restart on (replacing any set
    /// before; empty for none).
    pub fn set_env(&mut self, vars: &[(&str, &str)]) {
        self.env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// A GET against the node's observability listener: (status, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.http, path)
    }

    /// The sum of the node's metric samples on lines starting with `line_prefix`.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let body = self.http_get("/metrics").map(|(_, body)| body).unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).context("status line")?.parse()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A free loopback port for `kind` (the OS picks it; it is free again when this returns).
pub fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port")
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free TCP port")
    }
}

/// Raft timing for tests: quick elections so failovers take about a second.
pub const FAST_RAFT: &str =
    "[raft]\nheartbeat-interval-ms = 50\nelection-timeout-min-ms = 500\nelection-timeout-max-ms = 1000\n";

/// A constellation of node processes on loopback sharing one CA, founded together.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub root: tempfile::TempDir,
    /// The shared CA certificate clients trust.
    pub ca_cert: PathBuf,
    /// The `admin` user's client certificate.
    pub admin: CertFiles,
    /// Extra TOML for every node's config file.
    config_extra: String,
}

impl TestCluster {
    /// Starts `count` founders (ids 1..=count); `config_extra` is appended to each config file.
    pub fn start(count: usize, config_extra: &str) -> anyhow::Result<TestCluster> {
        Self::start_each(count, config_extra, |_| String::new())
    }

    /// Like [`TestCluster::start`], with `node_extra(id)` appended to node `id`'s config after
    /// `config_extra` (per-node tags, say).
    pub fn start_each(
        count: usize,
        config_extra: &str,
        node_extra: impl Fn(u64) -> String,
    ) -> anyhow::Result<TestCluster> {
        let root = tempfile::tempdir()?;
        let ca = CaFiles::in_dir(&root.path().join("tls"));
        ca.create("local")?;
        let admin = CertFiles { cert: root.path().join("tls/admin.crt"), key: root.path().join("tls/admin.key") };
        let identity = pleiades_proto::identity::Identity::user("local", "admin");
        ca.issue(&identity, &[], 30, &admin.cert, &admin.key)?;
        let addrs: Vec<String> = (0..count).map(|_| format!("127.0.0.1:{}", free_port(true))).collect();
        let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let mut cluster =
            TestCluster { nodes: Vec::new(), ca_cert: ca.cert.clone(), admin, root, config_extra: config_extra.into() };
        let mut pending = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = (i + 1) as u64;
            let config = format!("node-id = {id}\n[constellation]\npeers = {peers:?}\n");
            pending.push(std::thread::spawn({
                let (dir, args) = cluster.prepare_node(id, addr, &config, &node_extra(id))?;
                move || TestNode::start(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
            }));
        }
        for start in pending {
            cluster.nodes.push(start.join().map_err(|_| anyhow::anyhow!("node start panicked"))??);
        }
        Ok(cluster)
    }

    /// Writes a node's directory (CA, config) and returns it with the node's arguments.
    fn prepare_node(
        &self,
        id: u64,
        addr: &str,
        config: &str,
        node_extra: &str,
    ) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let dir = self.root.path().join(format!("node-{id}"));
        // Each node issues its own certificates from the shared CA on first start.
        let tls = pleiades::transport::tls::GeneratedPaths::in_data_dir(&dir);
        std::fs::create_dir_all(tls.ca.cert.parent().context("tls dir")?)?;
        let shared = CaFiles::in_dir(&self.root.path().join("tls"));
        std::fs::copy(&shared.cert, &tls.ca.cert)?;
        std::fs::copy(&shared.key, &tls.ca.key)?;
        let config_path = dir.join("pleiades.toml");
        // Top-level keys first: TOML puts everything after a [table] header into that table.
        std::fs::write(&config_path, format!("{config}{}{node_extra}", self.config_extra))?;
        let args =
            vec!["--config".to_string(), config_path.display().to_string(), "--listen".to_string(), addr.to_string()];
        Ok((dir, args))
    }

    /// Starts one more node that joins through node 1.
    pub fn join(&mut self, id: u64) -> anyhow::Result<&TestNode> {
        self.join_together(&[id])?;
        self.nodes.last().context("just pushed")
    }

    /// Starts several nodes at the same moment, each joining through node 1.
    pub fn join_together(&mut self, ids: &[u64]) -> anyhow::Result<()> {
        let seed = self.nodes[0].quic.to_string();
        let mut pending = Vec::new();
        for id in ids {
            let addr = format!("127.0.0.1:{}", free_port(true));
            let config = format!("node-id = {id}\n[constellation]\njoin = \"{seed}\"\n");
            let (dir, args) = self.prepare_node(*id, &addr, &config, "")?;
            pending.push(std::thread::spawn(move || {
                TestNode::start(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
            }));
        }
        for start in pending {
            self.nodes.push(start.join().map_err(|_| anyhow::anyhow!("node start panicked"))??);
        }
        Ok(())
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.node_id == id).expect("a node of this cluster")
    }

    /// A constellation client seeded with every node.
    pub async fn client(&self) -> anyhow::Result<pleiades::client::cluster::Cluster> {
        let config = pleiades::client::cluster::ClusterConfig {
            seeds: self.nodes.iter().map(|n| n.quic.to_string()).collect(),
            server_name: None,
            ca_cert: self.ca_cert.clone(),
            identity: Some(self.admin.clone()),
            attempt_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(30),
        };
        Ok(pleiades::client::cluster::Cluster::connect(config).await?)
    }

    /// Each reachable node's replica status.
    pub async fn status(&self) -> Vec<pleiades_proto::v1::RangeStatusResponse> {
        let mut out = Vec::new();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(client) = node.client().await else { continue };
            if let Ok(mut system) = client.system().await {
                if let Ok(status) = system.range_status().await {
                    out.push(status);
                }
            }
            client.close().await;
        }
        out
    }

    /// Waits until every range has a leader that the nodes holding it agree on; returns
    /// range id -> leader node id.
    pub async fn wait_for_leaders(&self, limit: Duration) -> anyhow::Result<std::collections::BTreeMap<u64, u64>> {
        let deadline = Instant::now() + limit;
        loop {
            let mut leaders = std::collections::BTreeMap::new();
            let mut ranges = std::collections::BTreeSet::new();
            for status in self.status().await {
                for replica in status.replicas {
                    let range = replica.descriptor.as_ref().map(|d| d.range_id).unwrap_or_default();
                    ranges.insert(range);
                    if replica.role == "leader" {
                        leaders.insert(range, status.node_id);
                    }
                }
            }
            if !ranges.is_empty() && ranges.len() == leaders.len() {
                return Ok(leaders);
            }
            if Instant::now() > deadline {
                bail!("not every range has a leader after {limit:?}: {leaders:?} of {ranges:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
