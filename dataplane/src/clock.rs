//! Hybrid logical clock with CockroachDB semantics.

/// A hybrid-logical-clock timestamp: physical wall time in nanoseconds since the Unix epoch plus
/// a logical counter that orders events within the same wall time. Ordered by (wall, logical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub wall_nanos: u64,
    pub logical: u32,
}

impl Timestamp {
    pub const MIN: Timestamp = Timestamp { wall_nanos: 0, logical: 0 };
    pub const MAX: Timestamp = Timestamp { wall_nanos: u64::MAX, logical: u32::MAX };
    /// Size of [`Timestamp::to_be_bytes`].
    pub const ENCODED_LEN: usize = 12;

    pub const fn new(wall_nanos: u64, logical: u32) -> Self {
        Timestamp { wall_nanos, logical }
    }

    /// The smallest timestamp after this one.
    pub fn next(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Timestamp { wall_nanos: self.wall_nanos, logical },
            None => Timestamp { wall_nanos: self.wall_nanos.saturating_add(1), logical: 0 },
        }
    }

    /// Big-endian (wall, logical): byte order equals timestamp order.
    pub fn to_be_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.wall_nanos.to_be_bytes());
        out[8..].copy_from_slice(&self.logical.to_be_bytes());
        out
    }

    pub fn from_be_bytes(bytes: [u8; 12]) -> Self {
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&bytes[..8]);
        let mut logical = [0u8; 4];
        logical.copy_from_slice(&bytes[8..]);
        Timestamp { wall_nanos: u64::from_be_bytes(wall), logical: u32::from_be_bytes(logical) }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09},{}", self.wall_nanos / 1_000_000_000, self.wall_nanos % 1_000_000_000, self.logical)
    }
}

impl From<Timestamp> for pleiades_proto::v1::Timestamp {
    fn from(ts: Timestamp) -> Self {
        pleiades_proto::v1::Timestamp { wall_nanos: ts.wall_nanos, logical: ts.logical }
    }
}

impl From<pleiades_proto::v1::Timestamp> for Timestamp {
    fn from(ts: pleiades_proto::v1::Timestamp) -> Self {
        Timestamp { wall_nanos: ts.wall_nanos, logical: ts.logical }
    }
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CockroachDB's default tolerated clock offset between nodes.
pub const DEFAULT_MAX_OFFSET: Duration = Duration::from_millis(500);
/// How far ahead of the clock the persisted wall-time upper bound is written.
pub const DEFAULT_PERSIST_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(
        "remote timestamp {remote} is {ahead:?} ahead of the local clock, beyond the maximum offset {max_offset:?}"
    )]
    RemoteTooFarAhead { remote: Timestamp, ahead: Duration, max_offset: Duration },
    #[error("cannot persist the clock's wall-time upper bound: {0}")]
    Persist(String),
    #[error("{0}: this node issues no timestamps and serves nothing until its clock is corrected")]
    Fenced(String),
    #[error("clock fault injection: {0}")]
    Fault(String),
}

/// The physical time source, injectable so tests can move time (even backwards).
pub trait PhysicalClock: Send + Sync {
    /// Nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_nanos(&self) -> u64 {
        // A clock before 1970 reads as 0; the HLC then relies on its persisted bound.
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }
}

/// The operating system's wall clock moved by a fixed amount: fault injection for clock-skew
/// tests and chaos runs ([`FAULT_CLOCK_OFFSET_ENV`]); never set in production.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    pub offset_nanos: i64,
}

impl PhysicalClock for OffsetClock {
    fn now_nanos(&self) -> u64 {
        let moved = i128::from(SystemClock.now_nanos()) + i128::from(self.offset_nanos);
        moved.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Moves a node's wall clock by this many milliseconds (signed) when set. Process-wide tools
/// such as libfaketime cannot do it: they deadlock jemalloc's start-up.
pub const FAULT_CLOCK_OFFSET_ENV: &str = "PLEIADES_FAULT_CLOCK_OFFSET_MS";

/// The physical clock a node runs on: the system's, or the system's moved by
/// [`FAULT_CLOCK_OFFSET_ENV`] when `offset_ms` (its value) is given.
pub fn node_physical_clock(offset_ms: Option<&str>) -> Result<Arc<dyn PhysicalClock>, String> {
    match offset_ms {
        None => Ok(Arc::new(SystemClock)),
        Some(value) => {
            let ms: i64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{FAULT_CLOCK_OFFSET_ENV}={value:?} is not a whole number of milliseconds"))?;
            let offset_nanos =
                ms.checked_mul(1_000_000).ok_or_else(|| format!("{FAULT_CLOCK_OFFSET_ENV}={ms} is out of range"))?;
            Ok(Arc::new(OffsetClock { offset_nanos }))
        }
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(nanos: u64) -> Self {
        ManualClock(AtomicU64::new(nanos))
    }
    pub fn set(&self, nanos: u64) {
        self.0.store(nanos, Ordering::SeqCst);
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Durable home of the wall-time upper bound (the node keeps it in its node-local storage).
pub trait UpperBoundStore: Send + Sync {
    fn load(&self) -> Result<Option<u64>, ClockError>;
    /// Must be durable when it returns.
    fn persist(&self, wall_nanos: u64) -> Result<(), ClockError>;
}

struct Persistence {
    store: Arc<dyn UpperBoundStore>,
    window: u64,
    /// Every issued timestamp has a wall time strictly below this persisted value.
    upper_bound: AtomicU64,
    /// Serialises writes so a slower, lower write can never land after a higher one.
    write_lock: Mutex<()>,
}

impl Persistence {
    /// Persists `target` unless a higher bound is already durable.
    fn raise_to(&self, target: u64) -> Result<(), ClockError> {
        let _serialised = lock(&self.write_lock);
        if target <= self.upper_bound.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.store.persist(target)?;
        self.upper_bound.store(target, Ordering::SeqCst);
        Ok(())
    }
}

/// A hybrid logical clock (CockroachDB semantics): `now()` never repeats or goes backwards, even
/// across restarts when an [`UpperBoundStore`] is attached and the system clock jumps back.
pub struct Hlc {
    physical: Arc<dyn PhysicalClock>,
    max_offset: Duration,
    last: Mutex<Timestamp>,
    persistence: Option<Persistence>,
    offset_rejections: AtomicU64,
    /// Set while the clock is known to be too far from the other nodes' (by gossip's offset
    /// measurements): why, for every refusal.
    fence: std::sync::RwLock<Option<String>>,
    fenced: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data that are valid after any panic mid-update.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hlc {
    /// A clock without persistence: monotonic only within this process.
    pub fn new(physical: Arc<dyn PhysicalClock>, max_offset: Duration) -> Self {
        Hlc {
            physical,
            max_offset,
            last: Mutex::new(Timestamp::MIN),
            persistence: None,
            offset_rejections: AtomicU64::new(0),
            fence: std::sync::RwLock::new(None),
            fenced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A clock that persists a wall-time upper bound `window` ahead of the time it hands out and
    /// starts above the bound it finds, so no timestamp is reissued after a restart.
    pub fn with_persistence(
        physical: Arc<dyn PhysicalClock>,
        max_offset: Duration,
        store: Arc<dyn UpperBoundStore>,
        window: Duration,
    ) -> Result<Self, ClockError> {
        let persisted = store.load()?.unwrap_or(0);
        let mut clock = Hlc::new(physical, max_offset);
        // Everything issued before the restart had wall < persisted.
        *clock.last.get_mut().unwrap_or_else(|p| p.into_inner()) = Timestamp::new(persisted, 0);
        clock.persistence = Some(Persistence {
            store,
            window: (window.as_nanos() as u64).max(1),
            upper_bound: AtomicU64::new(persisted),
            write_lock: Mutex::new(()),
        });
        Ok(clock)
    }

    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// Remote timestamps rejected by [`Hlc::update`] since start.
    pub fn offset_rejections(&self) -> u64 {
        self.offset_rejections.load(Ordering::Relaxed)
    }

    /// The physical clock's reading, nanoseconds since the Unix epoch.
    pub fn physical_now(&self) -> u64 {
        self.physical.now_nanos()
    }

    /// Fences the clock (`Some(why)`): from now on [`Hlc::now`] refuses, so nothing is stamped
    /// with a time the other nodes would not accept; `None` lifts the fence.
    pub fn set_fence(&self, why: Option<String>) {
        let mut fence = self.fence.write().unwrap_or_else(|p| p.into_inner());
        self.fenced.store(why.is_some(), Ordering::SeqCst);
        *fence = why;
    }

    /// Why the clock is fenced, if it is.
    pub fn fenced(&self) -> Option<String> {
        if !self.fenced.load(Ordering::SeqCst) {
            return None;
        }
        self.fence.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A timestamp greater than every timestamp this clock has issued or observed.
    pub fn now(&self) -> Result<Timestamp, ClockError> {
        if let Some(why) = self.fenced() {
            return Err(ClockError::Fenced(why));
        }
        let physical = self.physical.now_nanos();
        let mut last = lock(&self.last);
        *last = if physical > last.wall_nanos { Timestamp::new(physical, 0) } else { tick(*last) };
        self.ensure_bound_covers(last.wall_nanos)?;
        Ok(*last)
    }

    /// The latest timestamp issued or observed, without advancing the clock.
    pub fn last(&self) -> Timestamp {
        *lock(&self.last)
    }

    /// Merges a timestamp received from another node. One more than `max_offset` ahead of the
    /// local physical clock is rejected: accepting it would drag this clock into the future.
    pub fn update(&self, remote: Timestamp) -> Result<(), ClockError> {
        let physical = self.physical.now_nanos();
        let ahead = remote.wall_nanos.saturating_sub(physical);
        if ahead > self.max_offset.as_nanos() as u64 {
            self.offset_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(ClockError::RemoteTooFarAhead {
                remote,
                ahead: Duration::from_nanos(ahead),
                max_offset: self.max_offset,
            });
        }
        let mut last = lock(&self.last);
        if remote > *last {
            *last = remote;
            self.ensure_bound_covers(last.wall_nanos)?;
        }
        Ok(())
    }

    /// Background upkeep: keeps the persisted bound a window ahead of physical time so `now()`
    /// almost never has to persist on the request path. Call it every `window / 2` or so.
    pub fn persist_ahead(&self) -> Result<(), ClockError> {
        let Some(p) = &self.persistence else { return Ok(()) };
        let floor = self.physical.now_nanos().max(self.last().wall_nanos);
        if floor.saturating_add(p.window / 2) >= p.upper_bound.load(Ordering::SeqCst) {
            p.raise_to(floor.saturating_add(p.window))?;
        }
        Ok(())
    }

    fn ensure_bound_covers(&self, wall: u64) -> Result<(), ClockError> {
        match &self.persistence {
            Some(p) if wall >= p.upper_bound.load(Ordering::SeqCst) => p.raise_to(wall.saturating_add(p.window)),
            _ => Ok(()),
        }
    }
}

/// The next timestamp after `ts` at the same wall time (or the next nanosecond on the very
/// unlikely logical overflow).
fn tick(ts: Timestamp) -> Timestamp {
    match ts.logical.checked_add(1) {
        Some(logical) => Timestamp::new(ts.wall_nanos, logical),
        None => Timestamp::new(ts.wall_nanos.saturating_add(1), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct MemoryBound {
        value: Mutex<Option<u64>>,
        writes: AtomicU64,
    }

    impl UpperBoundStore for MemoryBound {
        fn load(&self) -> Result<Option<u64>, ClockError> {
            Ok(*lock(&self.value))
        }
        fn persist(&self, wall_nanos: u64) -> Result<(), ClockError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            *lock(&self.value) = Some(wall_nanos);
            Ok(())
        }
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn now_is_strictly_monotonic_when_physical_time_stalls_or_goes_back() {
        let physical = Arc::new(ManualClock::new(100 * SECOND));
        let hlc = Hlc::new(physical.clone(), DEFAULT_MAX_OFFSET);
        let a = hlc.now().unwrap();
        let b = hlc.now().unwrap();
        assert_eq!(b, Timestamp::new(100 * SECOND, 1));
        physical.set(50 * SECOND);
        let c = hlc.now().unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(c.wall_nanos, 100 * SECOND);
        physical.set(200 * SECOND);
        assert_eq!(hlc.now().unwrap(), Timestamp::new(200 * SECOND, 0));
    }

    #[test]
    fn a_fault_offset_moves_the_node_clock_and_a_bad_one_is_refused() {
        let system = SystemClock.now_nanos();
        let ahead = node_physical_clock(Some("2000")).unwrap().now_nanos();
        assert!(ahead >= system + 2 * SECOND && ahead < system + 3 * SECOND);
        let behind = node_physical_clock(Some("-2000")).unwrap().now_nanos();
        assert!(behind < system);
        assert!(node_physical_clock(None).unwrap().now_nanos() >= system);
        let refused = node_physical_clock(Some("two seconds")).err().unwrap();
        assert!(refused.contains("PLEIADES_FAULT_CLOCK_OFFSET_MS") && refused.contains("milliseconds"), "{refused}");
        assert!(node_physical_clock(Some(&i64::MAX.to_string())).is_err());
    }

    #[test]
    fn a_fenced_clock_issues_nothing_until_the_fence_is_lifted() {
        let hlc = Hlc::new(Arc::new(ManualClock::new(100 * SECOND)), DEFAULT_MAX_OFFSET);
        let before = hlc.now().unwrap();
        hlc.set_fence(Some("2s ahead of 2 of the 2 members".into()));
        let refused = hlc.now().unwrap_err();
        assert!(matches!(&refused, ClockError::Fenced(why) if why.contains("2s ahead")), "{refused}");
        assert!(refused.to_string().contains("until its clock is corrected"));
        hlc.set_fence(None);
        assert!(hlc.now().unwrap() > before);
    }

    #[test]
    fn now_is_unique_across_threads() {
        let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(SECOND)), DEFAULT_MAX_OFFSET));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let hlc = hlc.clone();
                std::thread::spawn(move || (0..10_000).map(|_| hlc.now().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let issued = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), issued, "a timestamp was issued twice");
    }

    #[test]
    fn update_merges_a_remote_within_max_offset() {
        let physical = Arc::new(ManualClock::new(100 * SECOND));
        let hlc = Hlc::new(physical, DEFAULT_MAX_OFFSET);
        let remote = Timestamp::new(100 * SECOND + 400_000_000, 7);
        hlc.update(remote).unwrap();
        assert!(hlc.now().unwrap() > remote);
        assert_eq!(hlc.offset_rejections(), 0);
    }

    #[test]
    fn update_rejects_a_remote_beyond_max_offset_and_keeps_the_clock() {
        let physical = Arc::new(ManualClock::new(100 * SECOND));
        let hlc = Hlc::new(physical, Duration::from_millis(500));
        let before = hlc.now().unwrap();
        let remote = Timestamp::new(100 * SECOND + 500_000_001, 0);
        let err = hlc.update(remote).unwrap_err();
        assert!(matches!(err, ClockError::RemoteTooFarAhead { .. }));
        assert!(err.to_string().contains("maximum offset"), "{err}");
        assert_eq!(hlc.offset_rejections(), 1);
        assert_eq!(hlc.now().unwrap(), tick(before), "a rejected remote must not move the clock");
        // Exactly max_offset ahead is still accepted.
        hlc.update(Timestamp::new(100 * SECOND + 500_000_000, 0)).unwrap();
    }

    #[test]
    fn restart_with_a_backwards_system_clock_never_reissues_time() {
        let store = Arc::new(MemoryBound::default());
        let physical = Arc::new(ManualClock::new(10_000 * SECOND));
        let window = Duration::from_secs(1);
        let hlc = Hlc::with_persistence(physical.clone(), DEFAULT_MAX_OFFSET, store.clone(), window).unwrap();
        let mut last_before_crash = Timestamp::MIN;
        for _ in 0..100 {
            physical.advance(Duration::from_millis(30));
            last_before_crash = hlc.now().unwrap();
        }
        drop(hlc);
        // The system clock jumps an hour back while the node is down.
        physical.set(10_000 * SECOND - 3_600 * SECOND);
        let restarted = Hlc::with_persistence(physical, DEFAULT_MAX_OFFSET, store, window).unwrap();
        let first = restarted.now().unwrap();
        assert!(first > last_before_crash, "{first} <= {last_before_crash}");
    }

    #[test]
    fn persist_ahead_keeps_persistence_off_the_request_path() {
        let store = Arc::new(MemoryBound::default());
        let physical = Arc::new(ManualClock::new(10 * SECOND));
        let hlc =
            Hlc::with_persistence(physical.clone(), DEFAULT_MAX_OFFSET, store.clone(), Duration::from_secs(1)).unwrap();
        hlc.persist_ahead().unwrap();
        let writes = store.writes.load(Ordering::SeqCst);
        for _ in 0..1_000 {
            hlc.now().unwrap();
        }
        physical.advance(Duration::from_millis(400));
        hlc.now().unwrap();
        assert_eq!(store.writes.load(Ordering::SeqCst), writes, "now() persisted although the bound was ahead");
        assert!(store.load().unwrap().unwrap() > hlc.last().wall_nanos);
    }
}
