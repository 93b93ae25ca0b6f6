//! Many clients doing puts, gets and compare-and-swaps on a few keys while range leaders are
//! killed and restarted; the recorded history must be linearizable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleiades_proto::v1::ReadConsistency;
use pleiades_tests::linearizability::{check, Input, Operation, Output};
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
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while epoch.elapsed() < RUN {
                n += 1;
                let key = pleiades::bench::bench_key((client_id as u64 + n) % KEYS);
                let value = format!("c{client_id}-{n}").into_bytes();
                let call = epoch.elapsed().as_nanos() as u64;
                let (input, output) = match n % 3 {
                    0 => match client.put(&key, &value).await {
                        Ok(_) => (Input::Put(value), Output::Done),
                        Err(_) => (Input::Put(value), Output::Unknown),
                    },
                    1 => match client.get(&key, 0, ReadConsistency::Linearizable).await {
                        Ok(found) => (Input::Get, Output::Value(found.map(|v| v.value))),
                        // A failed read had no effect: leave it out.
                        Err(_) => continue,
                    },
                    _ => {
                        // Swap from what this client last saw to a fresh value.
                        let expected =
                            client.get(&key, 0, ReadConsistency::Stale).await.ok().flatten().map(|v| v.value);
                        let call = epoch.elapsed().as_nanos() as u64;
                        let input = Input::Cas { expected: expected.clone(), new: Some(value.clone()) };
                        let output = match client.cas(&key, expected.as_deref(), Some(&value)).await {
                            Ok(swapped) => Output::Swapped(swapped.succeeded),
                            Err(_) => Output::Unknown,
                        };
                        let ret = (output != Output::Unknown).then(|| epoch.elapsed().as_nanos() as u64);
                        history.lock().unwrap().push(Operation { client: client_id, key, input, output, call, ret });
                        continue;
                    }
                };
                let ret = (output != Output::Unknown).then(|| epoch.elapsed().as_nanos() as u64);
                history.lock().unwrap().push(Operation { client: client_id, key, input, output, call, ret });
            }
            client.close().await;
        }));
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
