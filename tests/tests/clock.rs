//! Clock safety with real node processes: a node whose wall clock is moved (through the node's
//! fault hook, `PLEIADES_FAULT_CLOCK_OFFSET_MS`) beyond the tolerated offset from the others is
//! fenced — it leads no range, refuses requests and stamps no version — and serves again once
//! its clock is right.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pleiades::client::ClientError;
use pleiades_proto::v1::{self, kv_request::Op, ErrorCode};
use pleiades_proto::wire::ServiceTypeStatus;
use pleiades_tests::{TestCluster, TestNode, FAST_RAFT};

const MAX_OFFSET: Duration = Duration::from_millis(500);

fn fenced(node: &TestNode) -> bool {
    node.metric("pleiades_gossip_clock_fenced") == 1.0
}

/// The ranges each node leads, by node id.
async fn led_by(cluster: &TestCluster, node_id: u64) -> Vec<u64> {
    let status = cluster.status().await;
    status
        .iter()
        .filter(|s| s.node_id == node_id)
        .flat_map(|s| s.replicas.iter())
        .filter(|r| r.role == "leader")
        .filter_map(|r| r.descriptor.as_ref().map(|d| d.range_id))
        .collect()
}

/// One request to one node, bypassing routing.
async fn ask(node: &TestNode, op: Op) -> Result<v1::kv_response::Result, ClientError> {
    let client = pleiades::client::Client::connect(&node.client_config()).await?;
    let mut kv = client.kv().await?;
    let result = kv.request(op).await;
    client.close().await;
    result
}

fn stale_get(key: &[u8]) -> Op {
    let consistency = v1::ReadConsistency::Stale.into();
    Op::Get(v1::GetRequest { key: key.to_vec(), consistency, ..Default::default() })
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_two_seconds_ahead_is_fenced_and_serves_again_once_its_clock_is_right() {
    let config = format!("{FAST_RAFT}[clock]\nmax-offset-ms = {}\n", MAX_OFFSET.as_millis());
    let mut cluster = TestCluster::start(3, &config).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    for node in &cluster.nodes {
        assert!(!fenced(node), "node {} fenced with every clock right", node.node_id);
    }

    // Node 3 comes back with its wall clock 2 s ahead (monotonic time untouched, as a real
    // stepped clock would leave it).
    cluster.node(3).set_env(&[("PLEIADES_FAULT_CLOCK_OFFSET_MS", "2000")]);
    cluster.node(3).restart().unwrap();
    wait_until("node 3 fenced", Duration::from_secs(30), async || fenced(&cluster.nodes[2])).await;
    wait_until("node 3 leads nothing", Duration::from_secs(30), async || led_by(&cluster, 3).await.is_empty()).await;
    let reason = cluster.nodes[2].http_get("/readyz").unwrap();
    assert_ne!(reason.0, 200, "a fenced node reports itself not ready");
    assert!(reason.1.contains("clock"), "{}", reason.1);
    for node in &cluster.nodes[..2] {
        assert!(!fenced(node), "node {} was fenced for node 3's clock", node.node_id);
    }

    // It serves nothing itself: a new KV stream is turned away as from a node not ready (a
    // stream opened before the fence gets each request refused with the reason instead).
    let put = Op::Put(v1::PutRequest { key: b"to-the-fenced-node".to_vec(), value: b"v".to_vec() });
    for op in [put, stale_get(b"anything")] {
        match ask(&cluster.nodes[2], op).await {
            Err(ClientError::Refused { status, .. }) => {
                assert_eq!(status, ServiceTypeStatus::UnavailableRetryable);
            }
            Err(ClientError::Kv { code, message }) => {
                assert_eq!(code, ErrorCode::Unavailable, "{message}");
                assert!(message.contains("clock is") && message.contains("ahead of"), "{message}");
            }
            other => panic!("a fenced node answered: {other:?}"),
        }
    }
    // The constellation goes on, and no version is stamped with node 3's clock, even after it
    // sat fenced for several leadership-balancing rounds.
    let client = cluster.client().await.unwrap();
    for i in 0..40 {
        let put = client.put(format!("while-fenced-{i}").as_bytes(), b"v").await.unwrap();
        let stamped = put.timestamp.unwrap().wall_nanos;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(
            stamped <= now + MAX_OFFSET.as_nanos() as u64,
            "put {i} stamped {}ms ahead",
            (stamped - now) / 1_000_000
        );
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(led_by(&cluster, 3).await.is_empty(), "node 3 took a leadership while fenced");

    // Its clock corrected (a restart without the fake time), it serves again.
    cluster.node(3).set_env(&[]);
    cluster.node(3).restart().unwrap();
    wait_until("node 3 unfenced and serving", Duration::from_secs(30), async || {
        let found = ask(&cluster.nodes[2], stale_get(b"while-fenced-39")).await;
        !fenced(&cluster.nodes[2])
            && matches!(found, Ok(v1::kv_response::Result::Get(get)) if get.value.as_ref().is_some_and(|v| v.value == b"v"))
    })
    .await;
    assert_eq!(cluster.nodes[2].http_get("/readyz").unwrap().0, 200);
    client.close().await;
}
