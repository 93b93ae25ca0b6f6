//! Harness for tests that run real `pleiades` node processes on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pleiades::client::{Client, ClientConfig};

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

/// A node process with its data directory.
pub struct TestNode {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    extra_args: Vec<String>,
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
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(pleiades_binary())
            .args(["node", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
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

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            addr: self.quic,
            server_name: "localhost".into(),
            ca_cert: self.data_dir.join("tls/ca.crt"),
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

    /// A GET against the node's observability listener: (status, body).
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.http, path)
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
