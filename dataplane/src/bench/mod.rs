//! `pleiades bench`: a closed-loop load generator. Each worker sends one request, waits for the
//! answer, records its latency in an HDR histogram, repeats. It drives a constellation through
//! its client, or etcd through `etcd-client` for `bench compare`, with the same loop.

pub mod compare;
pub mod etcd;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pleiades_proto::v1::ReadConsistency;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::{Consistency, Workload};
use crate::client::cluster::Cluster;
use crate::client::{Client, ClientConfig};

/// What one run does: the workload and its shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub workload: Workload,
    pub consistency: Consistency,
    /// Requests in flight.
    pub concurrency: u32,
    pub keys: u64,
    pub value_size: usize,
    /// Seconds of measurement.
    pub duration: u64,
    /// Write every key before a workload that reads.
    pub load: bool,
    /// All keys under this prefix instead of spread over the keyspace.
    pub prefix: Option<String>,
}

/// The system under load.
#[derive(Clone)]
pub enum Target {
    /// A constellation, through its client; `connect` is what the connect workload dials.
    Pleiades { cluster: Cluster, connect: Arc<ClientConfig> },
    /// Boxed: a tonic client is large, and workers clone targets.
    Etcd(Box<etcd_client::KvClient>),
}

impl Target {
    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Target::Pleiades { cluster, .. } => drop(cluster.put(key, value).await?),
            Target::Etcd(kv) => drop(kv.put(key, value, None).await?),
        }
        Ok(())
    }

    /// A get; stale reads are etcd's serializable ones (served by any member from its own state).
    async fn get(&mut self, key: &[u8], consistency: Consistency) -> anyhow::Result<()> {
        match (self, consistency) {
            (Target::Pleiades { cluster, .. }, Consistency::Linearizable) => {
                drop(cluster.get(key, 0, ReadConsistency::Linearizable).await?)
            }
            (Target::Pleiades { cluster, .. }, Consistency::Stale) => {
                drop(cluster.get(key, 0, ReadConsistency::Stale).await?)
            }
            (Target::Etcd(kv), Consistency::Linearizable) => drop(kv.get(key, None).await?),
            (Target::Etcd(kv), Consistency::Stale) => {
                drop(kv.get(key, Some(etcd_client::GetOptions::new().with_serializable())).await?)
            }
        }
        Ok(())
    }

    /// Opens a new connection: the QUIC and TLS handshake.
    async fn connect(&self) -> anyhow::Result<Client> {
        match self {
            Target::Pleiades { connect, .. } => Ok(Client::connect(connect).await?),
            Target::Etcd(_) => anyhow::bail!("the connect workload measures Pleiades only"),
        }
    }
}

/// Latency percentiles of one operation kind, in microseconds.
#[derive(Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub workload: Workload,
    pub consistency: Consistency,
    pub concurrency: u32,
    pub keys: u64,
    pub value_size: usize,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub errors: u64,
    /// Every operation of the run, whatever its kind.
    pub overall: Option<LatencySummary>,
    pub writes: Option<LatencySummary>,
    pub reads: Option<LatencySummary>,
    /// New connections: QUIC and TLS 1.3 handshake, with the client certificate if one is given.
    pub connects: Option<LatencySummary>,
    /// The first few error messages, for diagnosis.
    pub sample_errors: Vec<String>,
    /// Operations completed in each second of the run, to see throughput change as ranges split.
    pub per_second: Vec<u64>,
}

fn summary(histogram: &Histogram<u64>) -> Option<LatencySummary> {
    (!histogram.is_empty()).then(|| LatencySummary {
        count: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    })
}

/// The bench's key for index `i`: a first byte spread evenly over the bytes the initial
/// split points cover ('0'..'z'), so load reaches every range, then the index.
pub fn bench_key(i: u64) -> Vec<u8> {
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let mut key = vec![b'0' + (mixed % 75) as u8];
    key.extend_from_slice(format!("bench{i:012}").as_bytes());
    key
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"), constant 0.99, over `0..items`.
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(items: u64) -> Self {
        let theta = 0.99;
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(items.max(1));
        let zeta2 = zeta(2.min(items.max(1)));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items.max(1) as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { items: items.max(1), theta, alpha, zetan, eta }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        ((self.items as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64 % self.items
    }
}

/// What one request of the workload is.
#[derive(Clone, Copy)]
enum Operation {
    Write = 0,
    Read = 1,
    Connect = 2,
}

/// Share of reads in the workload.
fn read_share(workload: Workload) -> f64 {
    match workload {
        Workload::Write | Workload::Connect => 0.0,
        Workload::Read | Workload::YcsbC => 1.0,
        Workload::Mixed | Workload::YcsbA => 0.5,
        Workload::YcsbB => 0.95,
    }
}

/// The bench's key for index `i` under `prefix` (all in one span), or spread ([`bench_key`]).
fn key_under(prefix: Option<&str>, i: u64) -> Vec<u8> {
    match prefix {
        Some(prefix) => format!("{prefix}bench{i:012}").into_bytes(),
        None => bench_key(i),
    }
}

/// Writes every key once, `concurrency` at a time.
pub async fn load(
    target: &Target,
    keys: u64,
    value_size: usize,
    concurrency: u32,
    prefix: Option<&str>,
) -> anyhow::Result<()> {
    let prefix: Option<Arc<str>> = prefix.map(Into::into);
    let next = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'v'; value_size]);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut target, next, value, prefix) = (target.clone(), next.clone(), value.clone(), prefix.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), anyhow::Error>(());
                }
                target.put(&key_under(prefix.as_deref(), i), &value).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

pub async fn run(target: &Target, args: &Shape, progress: bool) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let reads = read_share(args.workload);
    if reads > 0.0 && args.load {
        if progress {
            eprintln!("loading {} keys of {} bytes…", args.keys, args.value_size);
        }
        load(target, args.keys, args.value_size, args.concurrency.max(16), args.prefix.as_deref()).await?;
    }
    let zipfian = matches!(args.workload, Workload::YcsbA | Workload::YcsbB | Workload::YcsbC)
        .then(|| Arc::new(Zipfian::new(args.keys)));
    let consistency = args.consistency;
    let stop = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'x'; args.value_size]);
    let prefix: Option<Arc<str>> = args.prefix.as_deref().map(Into::into);
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (mut target, stop, done_ops, value, zipfian, prefix) =
            (target.clone(), stop.clone(), done_ops.clone(), value.clone(), zipfian.clone(), prefix.clone());
        let (keys, workload) = (args.keys, args.workload);
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED ^ u64::from(worker));
            let histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
            let mut latency = [histogram.clone(), histogram.clone(), histogram];
            let (mut errors, mut sample_errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let index = match &zipfian {
                    Some(z) => z.sample(&mut rng),
                    None => rng.random_range(0..keys),
                };
                let key = key_under(prefix.as_deref(), index);
                let operation = match workload {
                    Workload::Connect => Operation::Connect,
                    _ if rng.random::<f64>() < reads => Operation::Read,
                    _ => Operation::Write,
                };
                let started = Instant::now();
                let (result, opened) = match operation {
                    Operation::Read => (target.get(&key, consistency).await, None),
                    Operation::Write => (target.put(&key, &value).await, None),
                    Operation::Connect => match target.connect().await {
                        Ok(client) => (Ok(()), Some(client)),
                        Err(e) => (Err(e), None),
                    },
                };
                let micros = started.elapsed().as_micros().max(1) as u64;
                // Closing (and the QUIC draining period) is not part of the setup measured.
                if let Some(client) = opened {
                    client.close().await;
                }
                match result {
                    Ok(()) => {
                        latency[operation as usize].saturating_record(micros);
                        done_ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        if sample_errors.len() < 3 {
                            sample_errors.push(e.to_string());
                        }
                    }
                }
            }
            (latency, errors, sample_errors)
        }));
    }
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(args.duration);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut per_second = Vec::with_capacity(args.duration as usize);
    let mut done_before = 0;
    for second in 1..=args.duration {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_secs(second))).await;
        let done = done_ops.load(Ordering::Relaxed);
        per_second.push(done - done_before);
        done_before = done;
        if let Some(bar) = &bar {
            let rate = done_ops.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            bar.set_position(second);
            bar.set_message(format!("{rate:.0} ops/s"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut latency = [histogram.clone(), histogram.clone(), histogram];
    let (mut errors, mut sample_errors) = (0, Vec::new());
    for worker in workers {
        let (worker_latency, e, samples) = worker.await?;
        for (total, part) in latency.iter_mut().zip(&worker_latency) {
            total.add(part)?;
        }
        errors += e;
        sample_errors.extend(samples);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    sample_errors.truncate(5);
    let mut overall = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for part in &latency {
        overall.add(part)?;
    }
    Ok(BenchReport {
        workload: args.workload,
        consistency: args.consistency,
        concurrency: args.concurrency,
        keys: args.keys,
        value_size: args.value_size,
        seconds,
        ops_per_second: latency.iter().map(Histogram::len).sum::<u64>() as f64 / seconds,
        errors,
        overall: summary(&overall),
        writes: summary(&latency[Operation::Write as usize]),
        reads: summary(&latency[Operation::Read as usize]),
        connects: summary(&latency[Operation::Connect as usize]),
        per_second,
        sample_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_keys_spread_over_the_initial_ranges() {
        let layout = crate::range::placement::initial_layout(&[1, 2, 3], 4, 3);
        let mut per_range = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            let key = bench_key(i);
            let range = layout.iter().find(|d| crate::range::table::descriptor_contains(d, &key)).unwrap();
            *per_range.entry(range.range_id).or_insert(0) += 1;
        }
        assert_eq!(per_range.len(), 4, "{per_range:?}");
        assert!(per_range.values().all(|n| *n > 1_500), "roughly even: {per_range:?}");
    }

    #[test]
    fn zipfian_stays_in_bounds_and_favours_low_ranks() {
        let zipf = Zipfian::new(1_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples: Vec<u64> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(samples.iter().all(|s| *s < 1_000));
        let hot = samples.iter().filter(|s| **s < 10).count();
        assert!(hot > 20_000 / 5, "the top 1 % of keys draws a large share: {hot}");
    }
}
