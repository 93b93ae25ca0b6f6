//! Authentication and authorization against real node processes: who may connect, and what
//! each identity may do on every service.

use std::path::Path;
use std::time::{Duration, Instant};

use pleiades::client::cluster::{Cluster, ClusterConfig};
use pleiades::client::{Client, ClientConfig, ClientError};
use pleiades::transport::tls::{CaFiles, CertFiles};
use pleiades_proto::identity::Identity;
use pleiades_proto::v1::{self, ReadConsistency};
use pleiades_proto::wire::Service;
use pleiades_proto::{payload_type, v1::raft_request::Rpc};
use pleiades_tests::{pleiades_binary, TestCluster, TestNode, FAST_RAFT};
use prost::Message;

/// A client certificate for `user`, issued by the cluster's CA.
fn user_cert(cluster: &TestCluster, user: &str) -> CertFiles {
    let dir = cluster.root.path().join("tls");
    let files = CertFiles { cert: dir.join(format!("{user}.crt")), key: dir.join(format!("{user}.key")) };
    CaFiles::in_dir(&dir).issue(&Identity::user("local", user), &[], 30, &files.cert, &files.key).unwrap();
    files
}

/// A node's own certificate (as generated in its data directory).
fn node_cert(node: &TestNode) -> CertFiles {
    let tls = pleiades::transport::tls::GeneratedPaths::in_data_dir(&node.data_dir);
    CertFiles { cert: tls.node_cert, key: tls.node_key }
}

async fn connect_as(node: &TestNode, identity: Option<CertFiles>) -> Result<Client, ClientError> {
    Client::connect(&ClientConfig { identity, ..node.client_config() }).await
}

async fn cluster_as(cluster: &TestCluster, identity: CertFiles) -> Cluster {
    Cluster::connect(ClusterConfig {
        seeds: cluster.nodes.iter().map(|n| n.quic.to_string()).collect(),
        server_name: None,
        ca_cert: cluster.ca_cert.clone(),
        identity: Some(identity),
        attempt_timeout: Duration::from_secs(3),
        deadline: Duration::from_secs(10),
    })
    .await
    .unwrap()
}

/// One raft-service call on a fresh stream: the answer, or the typed refusal.
async fn raft_call(client: &Client, request: &v1::RaftRequest) -> Result<v1::RaftResponse, ClientError> {
    let mut stream = client.open(Service::Raft).await?;
    stream.call_proto(payload_type::raft::REQUEST, request, payload_type::raft::RESPONSE, "RaftResponse").await
}

fn vote_request(range_id: u64, from_node: u64, candidate: u64) -> v1::RaftRequest {
    v1::RaftRequest {
        range_id,
        from_node,
        rpc: Some(Rpc::Vote(v1::VoteRequest {
            vote: Some(v1::Vote { term: 1_000_000, node_id: candidate, committed: false }),
            last_log_id: None,
        })),
    }
}

/// A gossip envelope from `from` saying `dead` is dead.
fn forged_death(from: u64, from_addr: &str, dead: u64) -> Vec<u8> {
    v1::GossipEnvelope {
        from,
        from_addr: from_addr.into(),
        message: Some(v1::gossip_envelope::Message::Gossip(v1::GossipOnly {})),
        updates: vec![v1::GossipUpdate {
            kind: Some(v1::gossip_update::Kind::Dead(v1::GossipDead { node_id: dead, incarnation: 1_000, from })),
        }],
    }
    .encode_to_vec()
}

fn metric(node: &TestNode, line_prefix: &str) -> f64 {
    let (_, body) = node.http_get("/metrics").unwrap();
    body.lines().filter(|l| l.starts_with(line_prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn is_denied<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::PermissionDenied(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_may_speak_raft_and_gossip_and_only_for_themselves() {
    let cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let node1 = &cluster.nodes[0];

    // No certificate: the handshake fails, nothing is served.
    let anonymous = async {
        let client = connect_as(node1, None).await?;
        client.system().await?.health().await
    }
    .await;
    assert!(anonymous.is_err(), "a connection without a client certificate must be refused: {anonymous:?}");

    // A valid user certificate, even the admin's, is no node.
    let admin = connect_as(node1, Some(cluster.admin.clone())).await.unwrap();
    let denied = raft_call(&admin, &vote_request(1, 2, 2)).await;
    assert!(is_denied(&denied), "{denied:?}");
    let remove =
        v1::RaftRequest { range_id: 1, from_node: 2, rpc: Some(Rpc::RemoveReplica(v1::RemoveReplicaRequest {})) };
    assert!(is_denied(&raft_call(&admin, &remove).await));
    let record =
        v1::RaftRequest { range_id: 0, from_node: 2, rpc: Some(Rpc::RecordDescriptor(v1::RangeDescriptor::default())) };
    assert!(is_denied(&raft_call(&admin, &record).await));
    let mut gossip = admin.open(Service::Gossip).await.unwrap();
    let streamed = gossip.call(payload_type::gossip::ENVELOPE, forged_death(2, "127.0.0.1:1", 3).into()).await;
    assert!(is_denied(&streamed), "{streamed:?}");
    // Gossip datagrams from a user change nobody's state.
    let before = metric(node1, "pleiades_permission_denied_total{service=\"gossip\"}");
    for _ in 0..5 {
        let mut datagram = vec![u8::from(Service::Gossip)];
        datagram.extend(forged_death(2, &cluster.nodes[1].quic.to_string(), 3));
        admin.connection().send_datagram(datagram.into()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(node1, "pleiades_permission_denied_total{service=\"gossip\"}") < before + 5.0 {
        assert!(Instant::now() < deadline, "the forged datagrams were not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let members = admin.system().await.unwrap().members().await.unwrap();
    let node3 = members.members.iter().find(|m| m.node_id == 3).expect("node 3 is a member");
    assert_eq!(node3.state, "alive", "a user's forged death must not count");
    admin.close().await;

    // Node 2's certificate speaks for node 2 only.
    let node2 = connect_as(node1, Some(node_cert(&cluster.nodes[1]))).await.unwrap();
    let as_node3 = raft_call(&node2, &vote_request(1, 3, 3)).await;
    assert!(is_denied(&as_node3), "{as_node3:?}");
    let vote_for_3 = raft_call(&node2, &vote_request(1, 2, 3)).await.unwrap();
    let Some(v1::raft_response::Result::Error(error)) = vote_for_3.result else { panic!("{vote_for_3:?}") };
    assert_eq!(error.kind(), v1::RaftErrorKind::PermissionDenied, "{error:?}");
    let mut gossip = node2.open(Service::Gossip).await.unwrap();
    assert!(is_denied(&gossip.call(payload_type::gossip::ENVELOPE, forged_death(3, "x:1", 1).into()).await));
    // Even a real member may not flood: past its rate, its gossip is dropped, and the other
    // members' probes still get through (nobody is suspected).
    let chatter = v1::GossipEnvelope {
        from: 2,
        from_addr: cluster.nodes[1].quic.to_string(),
        message: Some(v1::gossip_envelope::Message::Gossip(v1::GossipOnly {})),
        updates: Vec::new(),
    };
    let mut datagram = vec![u8::from(Service::Gossip)];
    datagram.extend(chatter.encode_to_vec());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(node1, "pleiades_gossip_rate_limited_total") == 0.0 {
        assert!(Instant::now() < deadline, "a flood of a member's gossip was never limited");
        for _ in 0..200 {
            let _ = node2.connection().send_datagram(datagram.clone().into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node2.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = connect_as(node1, Some(cluster.admin.clone())).await.unwrap();
    let members = admin.system().await.unwrap().members().await.unwrap();
    assert!(members.members.iter().all(|m| m.state == "alive"), "{:?}", members.members);
    admin.close().await;
    assert!(metric(node1, "pleiades_permission_denied_total") >= 8.0);

    // Leadership was never disturbed by the forged votes (term 1,000,000 would depose anyone).
    cluster.wait_for_leaders(Duration::from_secs(5)).await.unwrap();
    for status in cluster.status().await {
        assert!(status.replicas.iter().all(|r| r.term < 1_000_000), "a forged vote changed a term");
    }
}

/// Runs the CLI as the cluster's admin.
fn cli(cluster: &TestCluster, args: &[&str]) -> String {
    let output = std::process::Command::new(pleiades_binary())
        .args(args)
        .arg("--addr")
        .arg(cluster.nodes[0].quic.to_string())
        .arg("--ca-cert")
        .arg(&cluster.ca_cert)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "pleiades {args:?} failed:\n{out}\n{err}");
    out.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_grant_key_prefixes_and_a_revoke_holds_everywhere_within_seconds() {
    let cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let admin = cluster.client().await.unwrap();
    admin.put(b"a/x", b"for readers").await.unwrap();
    admin.put(b"b/y", b"secret").await.unwrap();

    cli(&cluster, &["role", "add", "reader"]);
    cli(&cluster, &["role", "grant", "reader", "read", "a/"]);
    cli(&cluster, &["user", "add", "alice", "--role", "reader"]);
    assert!(cli(&cluster, &["user", "list"]).contains("alice\treader"));
    assert!(cli(&cluster, &["role", "list"]).contains("read [\"a/\", \"a0\")"));

    let alice_cert = user_cert(&cluster, "alice");
    let alice = cluster_as(&cluster, alice_cert.clone()).await;
    // Grants spread within a refresh; wait for them rather than for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match alice.get(b"a/x", 0, ReadConsistency::Linearizable).await {
            Ok(found) => {
                assert_eq!(found.unwrap().value, b"for readers");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the grant never took effect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let write = alice.put(b"a/x", b"mine now").await;
    assert!(matches!(&write, Err(ClientError::Kv { code: v1::ErrorCode::PermissionDenied, .. })), "{write:?}");
    let other = alice.get(b"b/y", 0, ReadConsistency::Linearizable).await;
    assert!(matches!(&other, Err(ClientError::Kv { code: v1::ErrorCode::PermissionDenied, .. })), "{other:?}");
    let system = alice.scan(b"\xff\xff", b"", 10, false, ReadConsistency::Linearizable).await;
    assert!(system.is_err(), "users never read the system keyspace: {system:?}");
    // A user is no admin: no user management, no decommission.
    let mut system_client =
        connect_as(&cluster.nodes[0], Some(alice_cert.clone())).await.unwrap().system().await.unwrap();
    assert!(is_denied(&system_client.decommission(3).await));
    alice.close().await;

    cli(&cluster, &["user", "revoke", "alice", "reader"]);
    let revoked = Instant::now();
    for node in &cluster.nodes {
        let client = connect_as(node, Some(alice_cert.clone())).await.unwrap();
        let mut kv = client.kv().await.unwrap();
        loop {
            let read = kv.request(v1::kv_request::Op::Get(v1::GetRequest {
                key: b"a/x".to_vec(),
                consistency: ReadConsistency::Stale.into(),
                ..Default::default()
            }));
            match read.await {
                Err(ClientError::Kv { code: v1::ErrorCode::PermissionDenied, .. }) => break,
                // A node not hosting the range may answer RANGE_MISMATCH until it refreshes: only
                // a refusal for want of permission counts.
                _ => assert!(revoked.elapsed() < Duration::from_secs(5), "node {} still lets alice read", node.node_id),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.close().await;
    }
    let within = revoked.elapsed();
    assert!(within < Duration::from_secs(5), "{within:?}");
}

fn expired_client_cert(ca_dir: &Path, user: &str) -> CertFiles {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let uri = Identity::user("local", user).uri();
    params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now - time::Duration::days(1);
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(), ca_key).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files =
        CertFiles { cert: ca_dir.join(format!("{user}-expired.crt")), key: ca_dir.join(format!("{user}-expired.key")) };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused_and_replaced_files_are_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]).unwrap();
    let tls = pleiades::transport::tls::GeneratedPaths::in_data_dir(&node.data_dir);

    let expired = expired_client_cert(tls.ca.cert.parent().unwrap(), "admin");
    let refused = async {
        let client = connect_as(&node, Some(expired)).await?;
        client.system().await?.health().await
    }
    .await;
    assert!(refused.is_err(), "an expired certificate must be refused: {refused:?}");

    // A client connected before the files change keeps working after they do.
    let before =
        connect_as(&node, Some(CertFiles { cert: tls.admin_cert.clone(), key: tls.admin_key.clone() })).await.unwrap();
    let mut system = before.system().await.unwrap();
    system.health().await.unwrap();
    let old_der = peer_certificate(&before);
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let identity = Identity::node("local", node.node_id);
    tls.ca.issue(&identity, &names, 30, &tls.node_cert, &tls.node_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "pleiades_tls_reloads_total") < 1.0 {
        assert!(Instant::now() < deadline, "the node did not reload its certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.health().await.expect("the open connection outlives the reload");
    let after =
        connect_as(&node, Some(CertFiles { cert: tls.admin_cert.clone(), key: tls.admin_key.clone() })).await.unwrap();
    after.system().await.unwrap().health().await.unwrap();
    let new_der = peer_certificate(&after);
    assert_ne!(old_der, new_der, "a new connection must see the new certificate");
    let on_disk = pleiades::transport::tls::load_certificates(&tls.node_cert).unwrap();
    assert_eq!(new_der, on_disk[0].as_ref());
    assert!(metric(&node, "pleiades_tls_certificate_expiry_seconds{certificate=\"node\"}") > 29.0 * 86_400.0);
    before.close().await;
    after.close().await;
}

fn peer_certificate(client: &Client) -> Vec<u8> {
    pleiades::transport::peer::leaf_certificate(client.connection()).expect("the node presented a certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_is_loud_and_takes_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &["--insecure"]).unwrap();
    let (status, body) = node.http_get("/readyz").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("INSECURE"), "{body}");
    let logs = node.logs();
    assert!(!logs.is_empty());
    for line in &logs {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["insecure"], true, "every log line names --insecure: {line}");
    }
    let client = connect_as(&node, None).await.unwrap();
    client.kv().await.unwrap().put(b"k", b"v").await.unwrap();
    client.close().await;
}
