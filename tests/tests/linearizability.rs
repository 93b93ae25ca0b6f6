//! Many clients doing puts, gets and compare-and-swaps on a few keys while range leaders are
//! killed and restarted; the recorded history must be linearizable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleiades_tests::linearizability::{check, register_client, Operation};
use pleiades_tests::{TestCluster, FAST_RAFT};

const CLIENTS: usize = 8;
const KEYS: u64 = 3;
const RUN: Duration = Duration::from_secs(24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_leader_kills_are_linearizable() {
    let mut cluster = TestCluster::start(3, FAST_RAFT).unwrap();
    cluster.wait_for_leaders(Duration::from_secs(30)).await.unwrap();
    let epoch = Instant::now();
    let history: Arc<Mutex<Vec<Operation>>> = Arc::default();
    let mut workers = Vec::new();
    for client_id in 0..CLIENTS {
        let client = cluster.client().await.unwrap();
        let history = history.clone();
        workers.push(tokio::spawn(register_client(
            client,
            client_id,
            move |n| pleiades::bench::bench_key((client_id as u64 + n) % KEYS),
            move || epoch.elapsed() < RUN,
            epoch,
            history,
        )));
    }
    // Kill the leader of the keys' ranges twice while the clients run.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let leaders = cluster.wait_for_leaders(Duration::from_secs(20)).await.unwrap();
        let victim = *leaders.values().max().unwrap();
        cluster.node(victim).kill9();
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.node(victim).restart().unwrap();
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    let done = history.iter().filter(|op| op.ret.is_some()).count();
    assert!(done > 200, "too few completed operations to mean anything: {done}");
    let started = Instant::now();
    if let Err(violation) = check(&history) {
        panic!("{violation}");
    }
    eprintln!("{} operations ({done} completed) linearizable; checked in {:?}", history.len(), started.elapsed());
}
