//! Durable write throughput with RocksDB group commit.
//! `cargo bench -p pleiades --bench storage_write [-- WRITERS... [SECONDS]]` (default: 1 and 64
//! writers, 5 s each). Every put is a synced WriteBatch of a 100-byte value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleiades::clock::{Hlc, SystemClock};
use pleiades::storage::{Storage, StorageConfig};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (writers, seconds) = match args.as_slice() {
        [] => (vec![1, 64], 5),
        [one] => (vec![*one], 5),
        [many @ .., seconds] => (many.to_vec(), *seconds),
    };
    for n in writers {
        run(n as usize, Duration::from_secs(seconds));
    }
}

fn run(writers: usize, duration: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path(), &StorageConfig::default()).expect("open storage");
    let clock = Arc::new(Hlc::new(Arc::new(SystemClock), Duration::from_millis(500)));
    let stop = Arc::new(AtomicBool::new(false));
    let value = [0x5Au8; 100];
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (storage, clock, stop) = (storage.clone(), clock.clone(), stop.clone());
            std::thread::spawn(move || {
                // Explicit bounds: an auto-sized histogram would clamp at its initial 2 ms maximum.
                let mut latencies =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w:03}/k{:08}", i % 100_000);
                    let started = Instant::now();
                    // Each writer owns its keys, so no write can be refused for its timestamp.
                    if let Err(e) = storage.put(key.as_bytes(), &value, clock.now().expect("clock")) {
                        panic!("write failed: {e}");
                    }
                    latencies.saturating_record(started.elapsed().as_micros().max(1) as u64);
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for thread in threads {
        all.add(thread.join().expect("writer")).expect("merge");
    }
    println!(
        "writers={writers:<3} durable puts/s={:>8.0}  mean={:.0}µs p10={}µs p50={}µs p90={}µs p99={}µs max={}µs  (n={})",
        all.len() as f64 / duration.as_secs_f64(),
        all.mean(),
        all.value_at_quantile(0.1),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.9),
        all.value_at_quantile(0.99),
        all.max(),
        all.len()
    );
}
