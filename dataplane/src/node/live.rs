//! Settings a running node takes without a restart: it re-reads `live-config` (a file the
//! operator's ConfigMap projects into the pod, so the kubelet refreshes it in place) and applies
//! the log level and kv limits when the content changes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{KvLimits, LiveConfig};

const POLL_EVERY: Duration = Duration::from_secs(2);

/// The kv limits, read on every request and replaced whole by a live reload.
pub struct LiveKvLimits {
    max_key_bytes: AtomicUsize,
    max_value_bytes: AtomicUsize,
    max_scan_limit: AtomicU32,
    max_scan_bytes: AtomicUsize,
    /// The wire's payload limit (not live) that new limits are checked against.
    max_payload: u64,
}

impl LiveKvLimits {
    pub fn new(limits: &KvLimits, max_payload: u64) -> LiveKvLimits {
        LiveKvLimits {
            max_key_bytes: AtomicUsize::new(limits.max_key_bytes),
            max_value_bytes: AtomicUsize::new(limits.max_value_bytes),
            max_scan_limit: AtomicU32::new(limits.max_scan_limit),
            max_scan_bytes: AtomicUsize::new(limits.scan_bytes(max_payload)),
            max_payload,
        }
    }

    pub fn get(&self) -> KvLimits {
        KvLimits {
            max_key_bytes: self.max_key_bytes.load(Ordering::Relaxed),
            max_value_bytes: self.max_value_bytes.load(Ordering::Relaxed),
            max_scan_limit: self.max_scan_limit.load(Ordering::Relaxed),
            max_scan_bytes: Some(self.max_scan_bytes.load(Ordering::Relaxed)),
        }
    }

    pub fn set(&self, limits: &KvLimits) {
        self.max_key_bytes.store(limits.max_key_bytes, Ordering::Relaxed);
        self.max_value_bytes.store(limits.max_value_bytes, Ordering::Relaxed);
        self.max_scan_limit.store(limits.max_scan_limit, Ordering::Relaxed);
        self.max_scan_bytes.store(limits.scan_bytes(self.max_payload), Ordering::Relaxed);
    }
}

/// Polls `path` and applies each new valid version. An invalid file is logged and ignored: the
/// node keeps the settings it has.
pub async fn watch(path: PathBuf, kv: Arc<LiveKvLimits>) {
    let mut applied = std::fs::read_to_string(&path).ok();
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if applied.as_deref() == Some(text.as_str()) {
            continue;
        }
        match apply(&path, &text, &kv) {
            Ok(()) => info!(path = %path.display(), "applied live configuration"),
            Err(error) => warn!(path = %path.display(), %error, "ignoring invalid live configuration"),
        }
        applied = Some(text);
    }
}

fn apply(path: &std::path::Path, text: &str, kv: &LiveKvLimits) -> Result<(), String> {
    let live = LiveConfig::parse(path, text).map_err(|e| e.to_string())?;
    if let Some(limits) = &live.kv {
        limits.check(kv.max_payload)?;
    }
    if let Some(level) = &live.log_level {
        crate::observe::set_log_filter(level)?;
    }
    if let Some(limits) = &live.kv {
        kv.set(limits);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_replaces_the_limits_and_a_bad_one_changes_nothing() {
        let kv = LiveKvLimits::new(&KvLimits::default(), 16 << 20);
        let path = std::path::Path::new("live.toml");
        apply(path, "[kv]\nmax-key-bytes = 10\nmax-value-bytes = 20\nmax-scan-limit = 30\n", &kv).unwrap();
        assert_eq!((kv.get().max_key_bytes, kv.get().max_value_bytes, kv.get().max_scan_limit), (10, 20, 30));
        let too_big = "[kv]\nmax-value-bytes = 16777216\n";
        for bad in
            ["[kv]\nmax-key-bytes = 0\nmax-value-bytes = 1\nmax-scan-limit = 1\n", too_big, "surprise = 1", "[kv"]
        {
            assert!(apply(path, bad, &kv).is_err(), "{bad}");
        }
        assert_eq!(kv.get().max_key_bytes, 10);
    }
}
