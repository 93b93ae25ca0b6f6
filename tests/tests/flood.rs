//! What a flood costs a real node process: an authenticated but hostile user opens a thousand
//! connections, ten thousand streams, sixteen streams that send 15 MiB of a 16 MiB payload and
//! then trickle (as does a second hostile user beside it), and a thousand frames that claim
//! 16 MiB and stall. Meanwhile another user writes and reads. The node's memory stays within its budgets, the other user is served
//! throughout, and every bound that was reached shows in the metrics. Bounded in time: every
//! phase ends by itself within the node's frame and idle timeouts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pleiades::client::cluster::{Cluster, ClusterConfig};
use pleiades::transport::tls::{CertFiles, GeneratedPaths, QuicLimits};
use pleiades_proto::identity::Identity;
use pleiades_proto::payload_type;
use pleiades_proto::v1::ReadConsistency;
use pleiades_proto::wire::{ClientSession, Service};
use pleiades_tests::TestNode;

const MIB: usize = 1 << 20;
/// Shorter than the default (two minutes) so the idle streams' end is part of the test.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(6);
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const NODE_MAX_STREAMS: usize = 9_000;
const PER_ADDRESS: usize = 200;
const KEPT_CONNECTIONS: usize = 100;

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or("0 0");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0)
}

/// The most a flood adds to the node's resident memory: sampled every 10 ms from the flood's
/// start, against what the node held then.
struct Growth {
    pid: u32,
    start: u64,
    peak: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
}

impl Growth {
    fn start(pid: u32) -> Self {
        let start = rss_kib(pid, "VmRSS:");
        let (peak, sampling) = (Arc::new(AtomicU64::new(start)), Arc::new(AtomicBool::new(true)));
        std::thread::spawn({
            let (peak, sampling) = (peak.clone(), sampling.clone());
            move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Growth { pid, start, peak, sampling }
    }

    /// Stops sampling, reports the growth and checks it.
    fn end(self, flood: &str) {
        self.sampling.store(false, Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed).max(rss_kib(self.pid, "VmRSS:"));
        let growth = peak.saturating_sub(self.start) as f64 / 1024.0;
        eprintln!("{flood}: node RSS {} MiB at the start, +{growth:.1} MiB at the peak", self.start / 1024);
        assert!(growth < 64.0, "{flood}: node RSS grew by {growth:.1} MiB");
    }
}

/// A client endpoint on source address `ip` presenting `identity`.
fn endpoint(ip: [u8; 4], ca: &std::path::Path, identity: &CertFiles) -> quinn::Endpoint {
    let limits = QuicLimits::dialler(Duration::from_secs(60));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(IpAddr::from(ip), 0)).unwrap();
    endpoint.set_default_client_config(pleiades::client::quic_config(ca, Some(identity), &limits).unwrap());
    endpoint
}

/// `count` connections from `endpoint`; the refused ones are counted, not returned.
async fn connect_many(endpoint: &quinn::Endpoint, node: SocketAddr, count: usize) -> (Vec<quinn::Connection>, usize) {
    let attempts = (0..count).map(|_| async {
        let connecting = endpoint.connect(node, "localhost").ok()?;
        tokio::time::timeout(Duration::from_secs(30), connecting).await.ok()?.ok()
    });
    let results = futures::future::join_all(attempts).await;
    let refused = results.iter().filter(|r| r.is_none()).count();
    (results.into_iter().flatten().collect(), refused)
}

/// The setup of a KV stream, pipelined.
fn kv_setup() -> BytesMut {
    ClientSession::new().pipelined_setup(Service::Kv, true)
}

/// A message header claiming a payload of `size` bytes.
fn claim(size: u64) -> BytesMut {
    let mut header = BytesMut::new();
    header.put_u8(0x20);
    header.put_u8(payload_type::kv::REQUEST);
    header.put_u8(0x22);
    header.put_u64(size);
    header.put_u8(0x21);
    header.put_u32(0);
    header
}

/// What the node sent on a stream before it ended it, or how the stream failed.
fn answer_text(answer: Result<Vec<u8>, quinn::ReadToEndError>) -> String {
    match answer {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("failed: {e}"),
    }
}

/// Latencies of the well-behaved user's operations, and its failures.
#[derive(Default)]
struct Served {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_costs_the_node_its_budgets_and_no_more_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[wire]\nmax-streams = {NODE_MAX_STREAMS}\nmax-connections-per-address = {PER_ADDRESS}\n\
             stream-idle-timeout-ms = {}\nframe-timeout-ms = {}\n",
            STREAM_IDLE_TIMEOUT.as_millis(),
            FRAME_TIMEOUT.as_millis()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = TestNode::start(&data, &["--config", config.to_str().unwrap()]).unwrap();
    let pid = node.pid().unwrap();
    let tls = GeneratedPaths::in_data_dir(&data);
    let admin = CertFiles { cert: tls.admin_cert.clone(), key: tls.admin_key.clone() };
    let user_cert = |name: &str| {
        let files =
            CertFiles { cert: dir.path().join(format!("{name}.crt")), key: dir.path().join(format!("{name}.key")) };
        tls.ca.issue(&Identity::user("local", name), &[], 30, &files.cert, &files.key).unwrap();
        files
    };
    let (flood_user, second_flood_user) = (user_cert("flood"), user_cert("flood2"));

    // The well-behaved user: one write and one read after another, from 127.0.0.1.
    let cluster = Cluster::connect(ClusterConfig {
        seeds: vec![node.quic.to_string()],
        server_name: None,
        ca_cert: tls.ca.cert.clone(),
        identity: Some(admin),
        attempt_timeout: Duration::from_secs(20),
        deadline: Duration::from_secs(30),
    })
    .await
    .unwrap();
    for i in 0..200 {
        cluster.put(format!("warm/{i}").as_bytes(), &[1u8; 256]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(pid, "VmRSS:");
    let served = Arc::new(Mutex::new(Served::default()));
    let flooding = Arc::new(AtomicBool::new(true));
    let user = tokio::spawn({
        let (served, flooding) = (served.clone(), flooding.clone());
        async move {
            let mut i = 0u64;
            while flooding.load(Ordering::Relaxed) {
                let key = format!("served/{}", i % 1_000);
                let started = Instant::now();
                let result = async {
                    cluster.put(key.as_bytes(), &[7u8; 256]).await?;
                    cluster.get(key.as_bytes(), 0, ReadConsistency::Linearizable).await
                }
                .await;
                match result {
                    Ok(_) => served.lock().unwrap().latencies.push(started.elapsed()),
                    Err(e) => served.lock().unwrap().errors.push(e.to_string()),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // 1. A thousand connections: 250 attempts from each of five addresses, of which the node
    //    takes PER_ADDRESS.
    let flood_endpoints: Vec<_> = (3..=7).map(|last| endpoint([127, 0, 0, last], &tls.ca.cert, &flood_user)).collect();
    let growth = Growth::start(pid);
    let mut connections = Vec::new();
    for endpoint in &flood_endpoints {
        let (mut opened, refused) = connect_many(endpoint, node.quic, 250).await;
        assert_eq!((opened.len(), refused), (PER_ADDRESS, 250 - PER_ADDRESS), "the per-address bound");
        connections.append(&mut opened);
    }
    growth.end("1,000 connections");
    // The floods that follow come over a hundred of them.
    for connection in connections.drain(KEPT_CONNECTIONS..) {
        connection.close(0u32.into(), b"enough");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Ten thousand streams, each set up and then silent: 78 connections open 128 (a user
    //    connection's bound), the rest 1. The node serves at most NODE_MAX_STREAMS.
    let growth = Growth::start(pid);
    let mut streams = Vec::new();
    let setup = kv_setup().freeze();
    for (i, connection) in connections.iter().enumerate() {
        let count = if i < 78 { 128 } else { 1 };
        for _ in 0..count {
            if streams.len() == 10_000 {
                break;
            }
            let (mut send, recv) = connection.open_bi().await.unwrap();
            // Past the node's bound, the stream may be refused before this write.
            let _ = send.write_chunk(setup.clone()).await;
            streams.push((send, recv));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    growth.end("10,000 streams");
    assert!(node.metric("pleiades_limit_reached_total{limit=\"node_streams\"}") >= 900.0, "the node's stream bound");
    assert!(node.metric("pleiades_limit_reached_total{limit=\"connection_streams\"}") > 0.0);
    // The idle timeout ends them; the node's count drains.
    tokio::time::sleep(STREAM_IDLE_TIMEOUT + Duration::from_secs(2)).await;
    assert!(node.metric("pleiades_limit_reached_total{limit=\"idle_timeout\"}") >= (NODE_MAX_STREAMS - 100) as f64);
    drop(streams);

    // 3. Sixteen streams of each of two users, each on its own connection, send 15 MiB of a 16 MiB
    //    payload as fast as the node takes it, then a byte every two seconds; and a thousand
    //    frames claim 16 MiB and stall.
    let payload_size = 16 * MIB as u64 - 1024;
    // A second flooding user, so that together they spend the node's budget, not just their own.
    let second = endpoint([127, 0, 0, 8], &tls.ca.cert, &second_flood_user);
    let (second_connections, _) = connect_many(&second, node.quic, 16).await;
    let slow = connections.iter().take(16).chain(&second_connections).map(|connection| {
        let connection = connection.clone();
        let mut start = kv_setup();
        start.extend_from_slice(&claim(payload_size));
        async move {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            let write = async {
                send.write_all(&start).await?;
                let chunk = vec![0u8; 64 * 1024];
                for _ in 0..(15 * MIB / chunk.len()) {
                    send.write_all(&chunk).await?;
                }
                for _ in 0..FRAME_TIMEOUT.as_secs() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    send.write_all(&[0]).await?;
                }
                Ok::<(), quinn::WriteError>(())
            };
            // The node stops the stream when it ends the frame; the write fails, the answer is read.
            let answer = async { answer_text(recv.read_to_end(1 << 20).await) };
            tokio::join!(write, answer).1
        }
    });
    let stalled = connections.iter().skip(16).cycle().take(1_000).map(|connection| {
        let connection = connection.clone();
        let mut start = kv_setup();
        start.extend_from_slice(&claim(payload_size));
        async move {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            send.write_all(&start).await.unwrap();
            answer_text(recv.read_to_end(1 << 20).await)
        }
    });
    let growth = Growth::start(pid);
    let started = Instant::now();
    let (slow, stalled) = tokio::time::timeout(
        FRAME_TIMEOUT * 3,
        futures::future::join(futures::future::join_all(slow), futures::future::join_all(stalled)),
    )
    .await
    .expect("the node ends every slow and stalled frame by itself");
    eprintln!("slow and stalled frames ended after {:?}", started.elapsed());
    growth.end("32 slow and 1,000 stalled 16 MiB frames, from two users");
    // A frame that began is ended by the frame timeout; a stream that could not even read its
    // setup (its user's budget spent by the others) by the idle timeout.
    for (what, answers, expected) in [("slow", &slow, 32), ("stalled", &stalled, 1_000)] {
        let ended = |a: &&String| a.contains("whole within") || a.contains("no frame for");
        let others: Vec<_> = answers.iter().filter(|a| !ended(a)).take(3).collect();
        assert_eq!(
            answers.iter().filter(ended).count(),
            expected,
            "each {what} stream is ended by a timeout: {others:?}"
        );
    }
    flooding.store(false, Ordering::Relaxed);
    user.await.unwrap();

    let peak = rss_kib(pid, "VmHWM:");
    let served = served.lock().unwrap();
    let mut latencies = served.latencies.clone();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "all floods: node RSS {} MiB before, {} MiB at the highest; the other user's put+get: {} done, \
         p50 {:?}, p99 {:?}, max {:?}, {} errors",
        baseline / 1024,
        peak / 1024,
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        served.errors.len()
    );
    assert!(served.errors.is_empty(), "the other user was refused: {:?}", &served.errors[..served.errors.len().min(5)]);
    assert!(latencies.len() > 100, "the other user was served throughout");
    assert!(at(1.0) < FRAME_TIMEOUT / 2, "the other user waited for the flood's frames to time out: {:?}", at(1.0));
    for bound in ["peer_buffer", "node_buffer", "frame_timeout"] {
        assert!(
            node.metric(&format!("pleiades_limit_reached_total{{limit=\"{bound}\"}}")) > 0.0,
            "the {bound} bound shows in the metrics"
        );
    }
    assert!(node.metric("pleiades_connections_refused_total{kind=\"address_connection_limit\"}") >= 250.0);
}
