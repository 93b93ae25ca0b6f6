//! `pleiades up`: a local constellation of node processes on loopback, with each node's config,
//! certificate, data and log under `<data-dir>/node-<i>`. The CA (with its key) and the `admin`
//! client certificate stay in `<data-dir>/tls`; no node directory holds the CA's key. A rerun
//! reuses everything, renewing certificates past two thirds of their lifetime.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::UpArgs;
use pleiades_proto::identity::Identity;

use crate::transport::tls::{is_current, CaFiles, DEFAULT_CERT_DAYS};

/// The name `pleiades up` gives its constellation in certificates.
const CONSTELLATION: &str = "local";

/// One node of the local constellation.
pub struct LocalNode {
    pub id: u32,
    pub dir: PathBuf,
    pub quic: String,
    pub http: String,
}

/// The file that fixes a constellation's size, so a rerun cannot silently change its founders.
const SHAPE_FILE: &str = "constellation.toml";

pub fn plan(args: &UpArgs) -> anyhow::Result<Vec<LocalNode>> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be 1 to 9 for a local constellation");
    anyhow::ensure!(
        u32::from(args.base_port) + 80 + args.nodes < u32::from(u16::MAX),
        "--base-port {} leaves no room for {} nodes",
        args.base_port,
        args.nodes
    );
    Ok((1..=args.nodes)
        .map(|id| LocalNode {
            id,
            dir: args.data_dir.join(format!("node-{id}")),
            quic: format!("127.0.0.1:{}", u32::from(args.base_port) + id),
            http: format!("127.0.0.1:{}", u32::from(args.base_port) + 80 + id),
        })
        .collect())
}

/// Creates (or checks) the constellation directory: the shared CA, and each node's config.
pub fn prepare(args: &UpArgs, nodes: &[LocalNode]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let shape = args.data_dir.join(SHAPE_FILE);
    let expected = format!("nodes = {}\ninitial-ranges = {}\n", args.nodes, args.initial_ranges);
    match std::fs::read_to_string(&shape) {
        Ok(existing) if existing != expected => anyhow::bail!(
            "{} holds a constellation made with\n{existing}which differs from this run's\n{expected}use the same \
             --nodes and --initial-ranges, or another --data-dir",
            args.data_dir.display()
        ),
        Ok(_) => {}
        Err(_) => std::fs::write(&shape, &expected).with_context(|| format!("cannot write {}", shape.display()))?,
    }
    let tls_dir = args.data_dir.join("tls");
    let ca = CaFiles::in_dir(&tls_dir);
    ca.create(CONSTELLATION)?;
    let admin = Identity::user(CONSTELLATION, "admin");
    let (admin_cert, admin_key) = (tls_dir.join("admin.crt"), tls_dir.join("admin.key"));
    if !is_current(&admin_cert, &admin) {
        ca.issue(&admin, &[], DEFAULT_CERT_DAYS, &admin_cert, &admin_key)?;
    }
    let peers: Vec<String> = nodes.iter().map(|n| format!("\"{}={}\"", n.id, n.quic)).collect();
    for node in nodes {
        let identity = Identity::node(CONSTELLATION, u64::from(node.id));
        let (cert, key) = (node.dir.join("tls/node.crt"), node.dir.join("tls/node.key"));
        if !is_current(&cert, &identity) {
            let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
            ca.issue(&identity, &names, DEFAULT_CERT_DAYS, &cert, &key)
                .with_context(|| format!("cannot issue the certificate of node {}", node.id))?;
        }
        let config = format!(
            "node-id = {id}\nlisten = \"{quic}\"\nhttp = \"{http}\"\ndata-dir = \"{dir}\"\nlog-level = \"{level}\"\n\n\
             [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca-cert = \"{ca}\"\n\n\
             [constellation]\nname = \"{CONSTELLATION}\"\npeers = [{peers}]\ninitial-ranges = {ranges}\n\n\
             [gossip]\nprofile = \"local\"\n",
            id = node.id,
            quic = node.quic,
            http = node.http,
            dir = node.dir.display(),
            level = args.log_level,
            peers = peers.join(", "),
            ranges = args.initial_ranges,
            cert = cert.display(),
            key = key.display(),
            ca = ca.cert.display(),
        );
        std::fs::write(node.dir.join("pleiades.toml"), config)
            .with_context(|| format!("cannot write the config of node {}", node.id))?;
    }
    Ok(ca.cert)
}

/// GETs `path` from an HTTP/1.1 server; returns the status code.
pub async fn http_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))
}

/// A local constellation whose node processes this process started.
pub struct Running {
    pub nodes: Vec<LocalNode>,
    /// The CA certificate, with the `admin` client certificate and key beside it.
    pub ca: PathBuf,
    children: Vec<tokio::process::Child>,
}

/// Starts the nodes and waits until each is ready.
pub async fn start(args: &UpArgs) -> anyhow::Result<Running> {
    let nodes = plan(args)?;
    let ca = prepare(args, &nodes)?;
    let binary = std::env::current_exe().context("cannot find the pleiades binary")?;
    let mut children = Vec::new();
    for node in &nodes {
        let log = std::fs::File::create(node.dir.join("node.log"))
            .with_context(|| format!("cannot create the log of node {}", node.id))?;
        let child = tokio::process::Command::new(&binary)
            .arg("node")
            .arg("--config")
            .arg(node.dir.join("pleiades.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {}", node.id))?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (node, child) in nodes.iter().zip(children.iter_mut()) {
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("node {} exited with {status}; see {}", node.id, node.dir.join("node.log").display());
            }
            if http_status(&node.http, "/readyz").await.ok() == Some(200) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "node {} not ready within 60 s", node.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Running { nodes, ca, children })
}

impl Running {
    /// The `admin` client certificate beside the CA.
    pub fn admin(&self) -> crate::transport::tls::CertFiles {
        let dir = self.ca.parent().map(PathBuf::from).unwrap_or_default();
        crate::transport::tls::CertFiles { cert: dir.join("admin.crt"), key: dir.join("admin.key") }
    }

    /// Runs until `stop` resolves, reporting a node that exits meanwhile.
    pub async fn watch(&mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut exited = vec![false; self.children.len()];
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    for ((node, child), seen) in self.nodes.iter().zip(self.children.iter_mut()).zip(exited.iter_mut()) {
                        if !*seen {
                            if let Some(status) = child.try_wait()? {
                                *seen = true;
                                eprintln!("node {} exited with {status}; see {}", node.id, node.dir.join("node.log").display());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stops every node cleanly.
    pub async fn stop(mut self) {
        stop_all(&mut self.children).await;
    }
}

/// Starts the nodes, waits until each is ready, runs until `stop` resolves, then stops them.
pub async fn up(args: &UpArgs, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let mut running = start(args).await?;
    let (nodes, ca) = (&running.nodes, &running.ca);
    println!("constellation of {} nodes is up ({}):", nodes.len(), args.data_dir.display());
    println!("  {:<4} {:<18} {:<34} LOG", "NODE", "QUIC", "METRICS");
    for node in nodes {
        println!(
            "  {:<4} {:<18} {:<34} {}",
            node.id,
            node.quic,
            format!("http://{}/metrics", node.http),
            node.dir.join("node.log").display()
        );
    }
    println!("\ntry:\n  pleiades kv put hello world --addr {} --ca-cert {}", nodes[0].quic, ca.display());
    println!("  pleiades status --addr {} --ca-cert {}", nodes[0].quic, ca.display());
    println!("Ctrl-C stops the constellation; rerun with the same --data-dir to restart it.");
    let watched = running.watch(stop).await;
    println!("stopping {} nodes…", running.nodes.len());
    running.stop().await;
    println!("stopped");
    watched
}

/// SIGTERM to every child, then up to 20 s for clean exits before SIGKILL.
pub async fn stop_all(children: &mut [tokio::process::Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
