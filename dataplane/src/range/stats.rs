//! What a replica measures for the planner: requests per second over a window, with a sample
//! of the keys asked for (a split by load cuts at their median, as CockroachDB's load-based
//! splitter does), and its size, measured by the leader's upkeep (`Storage::span_stats`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pleiades_proto::v1;

use crate::storage::SpanStats;

/// Requests are counted over windows this long; the planner sees the last full one.
pub const LOAD_WINDOW: Duration = Duration::from_secs(10);
/// Keys sampled per window (reservoir sampling: each request equally likely to be kept).
const SAMPLES: usize = 64;
/// One request in this many is offered to the reservoir, so the hot path rarely takes its lock.
const OFFER_EVERY: u64 = 16;

#[derive(Default)]
pub struct ReplicaLoad {
    reads: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    /// Bytes written since the size was measured, so the upkeep measures again only when the
    /// range may have crossed a threshold.
    written_since_sized: AtomicU64,
    /// Writes since then: deletes free space their key length does not tell, so enough of
    /// them (a share of the keys) measures again too, and a range emptied by deletes merges.
    writes_since_sized: AtomicU64,
    window: Mutex<Window>,
}

/// Writes of this share of a range's keys (or at least [`MIN_WRITES_TO_RESIZE`]) make the
/// upkeep measure it again.
const RESIZE_AFTER_KEYS_DIVISOR: u64 = 8;
const MIN_WRITES_TO_RESIZE: u64 = 16;

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    samples: Vec<Vec<u8>>,
    /// Requests offered to the reservoir this window.
    offered: u64,
    /// The last full window.
    rates: Rates,
    size: Option<SpanStats>,
    split_for_load_at: Option<Instant>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Rates {
    reads_per_second: f64,
    writes_per_second: f64,
    write_bytes_per_second: f64,
    median_key: Option<Vec<u8>>,
}

impl ReplicaLoad {
    pub fn read(&self, key: &[u8]) {
        let count = self.reads.fetch_add(1, Relaxed);
        self.sample(key, count);
    }

    pub fn wrote(&self, key: &[u8], bytes: usize) {
        let count = self.writes.fetch_add(1, Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Relaxed);
        self.written_since_sized.fetch_add(bytes as u64, Relaxed);
        self.writes_since_sized.fetch_add(1, Relaxed);
        self.sample(key, count);
    }

    fn sample(&self, key: &[u8], count: u64) {
        if !count.is_multiple_of(OFFER_EVERY) {
            return;
        }
        let mut window = self.lock();
        self.roll(&mut window);
        window.offered += 1;
        if window.samples.len() < SAMPLES {
            window.samples.push(key.to_vec());
        } else {
            // Keep this one with probability SAMPLES / offered (a cheap hash of the count
            // stands in for a random number: the order of requests is arbitrary anyway).
            let slot = (window.offered.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % window.offered;
            if let Some(kept) = window.samples.get_mut(slot as usize) {
                *kept = key.to_vec();
            }
        }
    }

    /// Closes the window when it is over: its counts become the rates the planner sees.
    fn roll(&self, window: &mut Window) {
        let started = *window.started.get_or_insert_with(Instant::now);
        let elapsed = started.elapsed();
        if elapsed < LOAD_WINDOW {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let mut samples = std::mem::take(&mut window.samples);
        samples.sort_unstable();
        window.rates = Rates {
            reads_per_second: self.reads.swap(0, Relaxed) as f64 / seconds,
            writes_per_second: self.writes.swap(0, Relaxed) as f64 / seconds,
            write_bytes_per_second: self.write_bytes.swap(0, Relaxed) as f64 / seconds,
            median_key: samples.get(samples.len() / 2).cloned(),
        };
        window.offered = 0;
        window.started = Some(Instant::now());
    }

    /// Whether the size should be measured again: never measured, or enough written since to
    /// have crossed `threshold` (a fraction of the split size), or enough of its keys written.
    pub fn needs_sizing(&self, threshold: u64) -> bool {
        let Some(keys) = self.lock().size.as_ref().map(|size| size.live_keys) else { return true };
        self.written_since_sized.load(Relaxed) >= threshold
            || self.writes_since_sized.load(Relaxed) >= (keys / RESIZE_AFTER_KEYS_DIVISOR).max(MIN_WRITES_TO_RESIZE)
    }

    pub fn sized(&self, stats: SpanStats) {
        let mut window = self.lock();
        window.size = Some(stats);
        self.written_since_sized.store(0, Relaxed);
        self.writes_since_sized.store(0, Relaxed);
    }

    /// The range was just split for load (by this replica's leadership).
    pub fn split_for_load(&self) {
        self.lock().split_for_load_at = Some(Instant::now());
    }

    /// After a split the halves are sized again.
    pub fn forget_size(&self) {
        self.lock().size = None;
    }

    pub fn report(&self, range_id: u64, term: u64) -> v1::RangeLoadReport {
        let mut window = self.lock();
        self.roll(&mut window);
        let sized = window.size.is_some();
        let size = window.size.clone().unwrap_or_default();
        v1::RangeLoadReport {
            range_id,
            sized,
            bytes: size.bytes,
            live_keys: size.live_keys,
            live_bytes: size.live_bytes,
            reads_per_second: window.rates.reads_per_second,
            writes_per_second: window.rates.writes_per_second,
            write_bytes_per_second: window.rates.write_bytes_per_second,
            middle_key: size.middle_key.unwrap_or_default(),
            load_split_key: window.rates.median_key.clone().unwrap_or_default(),
            term,
            split_for_load_ms_ago: window
                .split_for_load_at
                .map(|at| (at.elapsed().as_millis() as u64).max(1))
                .unwrap_or(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}
