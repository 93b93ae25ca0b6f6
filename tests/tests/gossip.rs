//! Gossip between real node processes on loopback (QUIC datagrams and streams on PWP service
//! 0x01): a constellation forms from one seed, a query reaches every node, a paused node is
//! suspected and refutes when it resumes, and a killed node is declared dead and reported to
//! replication, which rebuilds its replicas elsewhere without losing an acknowledged write.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use pleiades_proto::v1;
use pleiades_tests::{pleiades_binary, TestCluster, TestNode, FAST_RAFT};

/// Each node's view: node id -> (state, incarnation).
async fn view(node: &TestNode) -> anyhow::Result<BTreeMap<u64, (String, u64)>> {
    let client = node.client().await?;
    let members = client.system().await?.members().await?;
    client.close().await;
    Ok(members.members.into_iter().map(|m| (m.node_id, (m.state, m.incarnation))).collect())
}

/// Polls until `done` holds for the views of `observers`, or fails with the last views.
async fn wait_for_views(
    nodes: &[&TestNode],
    limit: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<u64, (String, u64)>) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for node in nodes {
            views.push(view(node).await.unwrap_or_default());
        }
        if views.iter().all(&done) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            anyhow::bail!("{what}: not within {limit:?}; views: {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn logged(node: &TestNode, message: &str, node_id: Option<u64>) -> bool {
    node.logs().iter().any(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|event| {
            event["message"] == message && node_id.is_none_or(|id| event["node_id"].as_u64() == Some(id))
        })
    })
}

async fn wait_for_log(node: &TestNode, message: &str, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while !logged(node, message, None) {
        anyhow::ensure!(started.elapsed() < limit, "node {} never logged {message:?}", node.node_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constellation_forms_from_one_seed_answers_queries_and_detects_pauses_and_deaths() -> anyhow::Result<()> {
    // The first line lands in [constellation]: a dead member's replicas are rebuilt after 4 s.
    let extra = format!("replace-dead-after-ms = 4000\n[gossip]\nprofile = \"local\"\n{FAST_RAFT}");
    let mut cluster = TestCluster::start(1, &extra)?;
    for id in 2..=5 {
        cluster.join(id)?;
        wait_for_log(cluster.node(id), "joined the constellation", Duration::from_secs(60)).await?;
    }
    let everyone: Vec<&TestNode> = cluster.nodes.iter().collect();
    let formed = wait_for_views(&everyone, Duration::from_secs(30), "all five alive everywhere", |v| {
        v.len() == 5 && v.values().all(|(state, _)| state == "alive")
    })
    .await?;
    eprintln!("five nodes know each other {formed:?} after the last join");

    // Ranges founded by one node are brought up to three replicas as members arrive.
    let replicated = wait_for_ranges(&cluster, Duration::from_secs(90), |replicas| replicas.len() == 3).await?;
    eprintln!("every range has three replicas {replicated:?} later");

    let client = cluster.client().await?;
    let acked: Vec<(Vec<u8>, Vec<u8>)> =
        (0..40u64).map(|i| (pleiades::bench::bench_key(i), format!("value-{i}").into_bytes())).collect();
    for (key, value) in &acked {
        client.put(key, value).await.context("put")?;
    }

    // The command line: members nearest node 1 by estimated RTT, and a query.
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let node = &cluster.nodes[0];
        let output = std::process::Command::new(pleiades_binary())
            .args(args)
            .args(["--addr", &node.quic.to_string(), "--ca-cert"])
            .arg(node.data_dir.join("tls/ca.crt"))
            .output()?;
        anyhow::ensure!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?)
    };
    let nearest: serde_json::Value = serde_json::from_str(&cli(&["members", "--nearest", "3", "--json"])?)?;
    let listed = nearest["members"].as_array().context("members")?;
    assert_eq!(listed.len(), 3, "{nearest}");
    let rtts: Vec<u64> = listed.iter().filter_map(|m| m["rtt_estimate_us"].as_u64()).collect();
    assert!(rtts.windows(2).all(|w| w[0] <= w[1]) && rtts.len() == 3, "nearest first: {nearest}");
    assert!(listed.iter().all(|m| m["state"] == "alive" && m["node_id"] != 1));
    let table = cli(&["members"])?;
    assert_eq!(table.lines().filter(|l| l.contains("alive")).count(), 5, "{table}");
    let answers = cli(&["query", "capacity"])?;
    assert!(answers.starts_with("5 answers from 5 members"), "{answers}");
    let status = cli(&["status"])?;
    assert!(
        status.contains("GOSSIP") && status.lines().filter(|l| l.contains(" up ") && l.contains("alive")).count() == 5,
        "{status}"
    );

    // Malformed datagrams from a node are counted and dropped; the node gossips on. (A user's
    // datagrams are refused before they are read: see tests/security.rs.)
    let node2 = pleiades::transport::tls::GeneratedPaths::in_data_dir(&cluster.nodes[1].data_dir);
    let prober = pleiades::client::Client::connect(&pleiades::client::ClientConfig {
        identity: Some(pleiades::transport::tls::CertFiles { cert: node2.node_cert, key: node2.node_key }),
        ..cluster.nodes[0].client_config()
    })
    .await?;
    for datagram in [&b"\xff\xff\xff"[..], &[0x01, 0xff, 0xff, 0xff][..], &[0x07, 0x08][..], &[][..]] {
        prober.connection().send_datagram(bytes::Bytes::copy_from_slice(datagram))?;
    }
    let started = Instant::now();
    loop {
        let (_, metrics) = cluster.nodes[0].http_get("/metrics")?;
        if metrics.lines().any(|l| l == "pleiades_gossip_malformed_total 4") {
            break;
        }
        let counted: Vec<&str> = metrics.lines().filter(|l| l.starts_with("pleiades_gossip_malformed")).collect();
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "malformed datagrams not counted: {counted:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    prober.close().await;
    assert!(view(&cluster.nodes[0]).await?.values().all(|(state, _)| state == "alive"));

    // A query raised on node 2 is answered by every living node, node 2 included.
    let asker = cluster.nodes[1].client().await?;
    let request = v1::QueryRequest { name: "ping".into(), payload: Vec::new(), timeout_ms: 2_000 };
    let response = asker.system().await?.query(&request).await?;
    asker.close().await;
    let mut answered: Vec<u64> = response.answers.iter().map(|a| a.node_id).collect();
    answered.sort();
    assert_eq!(answered, vec![1, 2, 3, 4, 5], "{response:?}");
    assert!(response.answers.iter().all(|a| a.payload == a.node_id.to_string().into_bytes()));
    assert_eq!(response.expected, 5);

    // SIGSTOP: the others suspect node 4; on SIGCONT it refutes and all see it alive again.
    let paused = cluster.nodes[3].pid().context("node 4 runs")?;
    let others: Vec<&TestNode> = cluster.nodes.iter().filter(|n| n.node_id != 4).collect();
    // SAFETY: a plain signal to a child process this test started.
    unsafe { libc::kill(paused as i32, libc::SIGSTOP) };
    let suspected = wait_for_views(&others[..1], Duration::from_secs(20), "node 4 suspected", |v| {
        v.get(&4).is_some_and(|(state, _)| state != "alive")
    })
    .await;
    unsafe { libc::kill(paused as i32, libc::SIGCONT) };
    let suspected = suspected?;
    eprintln!("paused node suspected after {suspected:?}");
    let refuted = wait_for_views(&everyone, Duration::from_secs(30), "node 4 alive again", |v| {
        v.get(&4).is_some_and(|(state, incarnation)| state == "alive" && *incarnation >= 1)
    })
    .await?;
    eprintln!("resumed node refuted within {refuted:?}");
    assert!(
        logged(&cluster.nodes[3], "this node was suspected; refuted with a higher incarnation", None),
        "node 4 logged no refutation"
    );

    // kill -9: declared dead by everyone, reported to replication, replicas rebuilt elsewhere.
    cluster.node(5).kill9();
    let survivors: Vec<&TestNode> = cluster.nodes.iter().filter(|n| n.node_id != 5).collect();
    let detected = wait_for_views(&survivors, Duration::from_secs(30), "node 5 dead", |v| {
        v.get(&5).is_some_and(|(state, _)| state == "dead")
    })
    .await?;
    eprintln!("killed node declared dead everywhere after {detected:?}");
    for node in &survivors {
        assert!(
            logged(node, "replication: member reported dead", Some(5)),
            "node {} did not report node 5 to replication",
            node.node_id
        );
    }
    let rebuilt =
        wait_for_ranges(&cluster, Duration::from_secs(90), |replicas| replicas.len() == 3 && !replicas.contains(&5))
            .await?;
    eprintln!("dead node's replicas rebuilt elsewhere {rebuilt:?} later");
    client.close().await;
    let client = cluster.client().await?;
    for (key, value) in &acked {
        let read = client.get(key, 0, v1::ReadConsistency::Linearizable).await.context("get after the rebuild")?;
        assert_eq!(read.map(|v| v.value).as_ref(), Some(value), "acknowledged write lost");
    }
    client.close().await;
    Ok(())
}

/// Polls the live nodes' replica status until every range's newest descriptor satisfies `done`.
async fn wait_for_ranges(
    cluster: &TestCluster,
    limit: Duration,
    done: impl Fn(&[u64]) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut newest: BTreeMap<u64, v1::RangeDescriptor> = BTreeMap::new();
        for status in cluster.status().await {
            for descriptor in status.replicas.into_iter().filter_map(|r| r.descriptor) {
                let entry = newest.entry(descriptor.range_id).or_insert_with(|| descriptor.clone());
                if descriptor.generation > entry.generation {
                    *entry = descriptor;
                }
            }
        }
        if !newest.is_empty() && newest.values().all(|d| done(&d.replicas)) {
            return Ok(started.elapsed());
        }
        let layout: Vec<(u64, Vec<u64>)> = newest.values().map(|d| (d.range_id, d.replicas.clone())).collect();
        anyhow::ensure!(started.elapsed() < limit, "ranges not as expected within {limit:?}: {layout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
