//! Observability: Prometheus metrics (`prometheus-client`), `/healthz`, `/readyz`, and logging.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::LogFormat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// `in` or `out`.
    pub direction: &'static str,
    pub frame: &'static str,
}

/// One `kind` label: an error's kind, an event's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Which bound was reached, for `pleiades_limit_reached_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

impl LimitLabels {
    pub const NODE_STREAMS: LimitLabels = LimitLabels { limit: "node_streams" };
    pub const CONNECTION_STREAMS: LimitLabels = LimitLabels { limit: "connection_streams" };
    pub const SCAN_BYTES: LimitLabels = LimitLabels { limit: "scan_bytes" };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    pub op: &'static str,
    /// `linearizable`, `stale`, or `none` for writes.
    pub consistency: &'static str,
    /// `ok` or the error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `node`, `ca`.
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RangeLabels {
    pub range: u64,
}

/// Latency buckets from 10 µs to ~5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// The node's metrics. Counters are cheap atomics, safe to bump on hot paths.
pub struct Metrics {
    pub quic_connections_open: Gauge,
    pub quic_connections_accepted: Counter,
    pub pwp_streams_open: Gauge,
    pub pwp_streams_accepted: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub frames: Family<FrameLabels, Counter>,
    pub wire_errors: Family<KindLabels, Counter>,
    pub kv_request_seconds: Family<KvLabels, Histogram>,
    pub raft_proposals: Family<RangeLabels, Counter>,
    pub raft_proposal_seconds: Family<RangeLabels, Histogram>,
    pub raft_read_index_seconds: Family<RangeLabels, Histogram>,
    pub raft_leader_changes: Family<RangeLabels, Counter>,
    pub raft_term: Family<RangeLabels, Gauge>,
    pub raft_is_leader: Family<RangeLabels, Gauge>,
    pub raft_last_log_index: Family<RangeLabels, Gauge>,
    pub raft_applied_index: Family<RangeLabels, Gauge>,
    pub raft_log_entries: Family<RangeLabels, Gauge>,
    pub raft_replication_lag_entries: Family<RangeLabels, Gauge>,
    pub raft_snapshots_sent: Family<RangeLabels, Counter>,
    pub raft_snapshots_received: Family<RangeLabels, Counter>,
    pub system_request_seconds: Family<OperationLabels, Histogram>,
    pub hlc_offset_rejections: Counter,
    pub rocksdb_memtable_bytes: Gauge,
    pub rocksdb_sst_bytes: Gauge,
    pub rocksdb_pending_compaction_bytes: Gauge,
    pub permission_denied: Family<ServiceLabels, Counter>,
    pub connections_refused: Family<KindLabels, Counter>,
    pub limits_reached: Family<LimitLabels, Counter>,
    pub wire_buffered_bytes: Gauge,
    pub tls_certificate_expiry_seconds: Family<CertificateLabels, Gauge>,
    pub tls_reloads: Counter,
    pub range_splits: Counter,
    pub range_merges: Counter,
    pub range_rebalances: Counter,
    pub range_leader_transfers: Counter,
    pub range_count: Gauge,
    pub range_leader_count: Gauge,
    pub range_bytes: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let metrics = Metrics {
            quic_connections_open: Gauge::default(),
            quic_connections_accepted: Counter::default(),
            pwp_streams_open: Gauge::default(),
            pwp_streams_accepted: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            frames: Family::default(),
            wire_errors: Family::default(),
            kv_request_seconds: Family::new_with_constructor(latency_histogram),
            raft_proposals: Family::default(),
            raft_proposal_seconds: Family::new_with_constructor(latency_histogram),
            raft_read_index_seconds: Family::new_with_constructor(latency_histogram),
            raft_leader_changes: Family::default(),
            raft_term: Family::default(),
            raft_is_leader: Family::default(),
            raft_last_log_index: Family::default(),
            raft_applied_index: Family::default(),
            raft_log_entries: Family::default(),
            raft_replication_lag_entries: Family::default(),
            raft_snapshots_sent: Family::default(),
            raft_snapshots_received: Family::default(),
            system_request_seconds: Family::new_with_constructor(latency_histogram),
            hlc_offset_rejections: Counter::default(),
            rocksdb_memtable_bytes: Gauge::default(),
            rocksdb_sst_bytes: Gauge::default(),
            rocksdb_pending_compaction_bytes: Gauge::default(),
            permission_denied: Family::default(),
            connections_refused: Family::default(),
            limits_reached: Family::default(),
            wire_buffered_bytes: Gauge::default(),
            tls_certificate_expiry_seconds: Family::default(),
            tls_reloads: Counter::default(),
            range_splits: Counter::default(),
            range_merges: Counter::default(),
            range_rebalances: Counter::default(),
            range_leader_transfers: Counter::default(),
            range_count: Gauge::default(),
            range_leader_count: Gauge::default(),
            range_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("pleiades");
        r.register("quic_connections_open", "Open QUIC connections", metrics.quic_connections_open.clone());
        r.register("quic_connections_accepted", "QUIC connections accepted", metrics.quic_connections_accepted.clone());
        r.register("pwp_streams_open", "Open PWP streams", metrics.pwp_streams_open.clone());
        r.register("pwp_streams_accepted", "PWP streams accepted", metrics.pwp_streams_accepted.clone());
        r.register("pwp_received_bytes", "Bytes received on PWP streams", metrics.bytes_received.clone());
        r.register("pwp_sent_bytes", "Bytes sent on PWP streams", metrics.bytes_sent.clone());
        r.register("pwp_frames", "PWP frames by direction and type", metrics.frames.clone());
        r.register("pwp_errors", "PWP stream errors by kind", metrics.wire_errors.clone());
        r.register(
            "kv_request_seconds",
            "KV request latency by operation, read consistency and outcome",
            metrics.kv_request_seconds.clone(),
        );
        let raft = r.sub_registry_with_prefix("raft");
        raft.register("proposals", "Commands proposed by this node as leader", metrics.raft_proposals.clone());
        raft.register(
            "proposal_seconds",
            "Time from proposal to applied (commit and apply) on the leader",
            metrics.raft_proposal_seconds.clone(),
        );
        raft.register(
            "read_index_seconds",
            "Time to confirm leadership for a linearizable read (ReadIndex)",
            metrics.raft_read_index_seconds.clone(),
        );
        raft.register("leader_changes", "Leader changes seen by this replica", metrics.raft_leader_changes.clone());
        raft.register("term", "Current raft term", metrics.raft_term.clone());
        raft.register("is_leader", "1 when this replica leads its range", metrics.raft_is_leader.clone());
        raft.register("last_log_index", "Index of the last log entry", metrics.raft_last_log_index.clone());
        raft.register("applied_index", "Index of the last applied entry", metrics.raft_applied_index.clone());
        raft.register("log_entries", "Entries in the log (last index minus purged)", metrics.raft_log_entries.clone());
        raft.register(
            "replication_lag_entries",
            "On a leader, how far the slowest follower's matched index trails the log",
            metrics.raft_replication_lag_entries.clone(),
        );
        raft.register("snapshots_sent", "Snapshots streamed to followers", metrics.raft_snapshots_sent.clone());
        raft.register(
            "snapshots_received",
            "Snapshots installed from a leader",
            metrics.raft_snapshots_received.clone(),
        );
        let range = r.sub_registry_with_prefix("range");
        range.register("splits", "Ranges split by this node as their leader", metrics.range_splits.clone());
        range.register("merges", "Ranges merged by this node as their leader", metrics.range_merges.clone());
        range.register(
            "rebalances",
            "Replicas moved by this node as the coordinator (rebalancing, repairs, decommissions)",
            metrics.range_rebalances.clone(),
        );
        range.register(
            "leader_transfers",
            "Leaderships this node handed over on request",
            metrics.range_leader_transfers.clone(),
        );
        // Not `count`/`leader_count`: Prometheus keeps the `_count` suffix for histograms.
        range.register("replicas", "Replicas this node hosts", metrics.range_count.clone());
        range.register("leaders", "Ranges this node leads", metrics.range_leader_count.clone());
        range.register("bytes", "Bytes of the ranges this node hosts, as last sized", metrics.range_bytes.clone());
        r.register(
            "system_request_seconds",
            "System service request latency by operation",
            metrics.system_request_seconds.clone(),
        );
        r.register(
            "hlc_offset_rejections",
            "Remote timestamps rejected for exceeding the maximum clock offset",
            metrics.hlc_offset_rejections.clone(),
        );
        r.register("rocksdb_memtable_bytes", "RocksDB memtable size", metrics.rocksdb_memtable_bytes.clone());
        r.register("rocksdb_sst_bytes", "RocksDB SST files size", metrics.rocksdb_sst_bytes.clone());
        r.register(
            "rocksdb_pending_compaction_bytes",
            "RocksDB estimated bytes pending compaction",
            metrics.rocksdb_pending_compaction_bytes.clone(),
        );
        r.register(
            "permission_denied",
            "Calls refused because the caller's identity may not make them, by service",
            metrics.permission_denied.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed after the handshake or before it, by reason",
            metrics.connections_refused.clone(),
        );
        r.register(
            "limit_reached",
            "Times a bound on what a peer may cost was reached: connection and node buffer budgets \
             (the reader waited), node streams (refused), streams per connection, frame, idle and \
             answer timeouts, scan bytes (pleiades_gossip_rate_limited counts the gossip rate)",
            metrics.limits_reached.clone(),
        );
        r.register(
            "wire_buffered_bytes",
            "Received bytes not yet handled and answers not yet sent, reserved from the node's budget",
            metrics.wire_buffered_bytes.clone(),
        );
        r.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the certificate expires (negative once expired)",
            metrics.tls_certificate_expiry_seconds.clone(),
        );
        r.register("tls_reloads", "Certificate files reloaded after they changed on disk", metrics.tls_reloads.clone());
        Arc::new(metrics)
    }
}

impl Metrics {
    /// Counts one hit of a bound in `pleiades_limit_reached_total{limit}`.
    pub fn limit_reached(&self, labels: LimitLabels) {
        self.limits_reached.get_or_create(&labels).inc();
    }
}

/// Liveness and readiness of the node, as `/healthz` and `/readyz` report them.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    not_ready_reason: Mutex<String>,
    insecure: AtomicBool,
}

/// What `/readyz` and every log line say of a node run with `--insecure`.
pub const INSECURE_WARNING: &str =
    "INSECURE: authentication is off (--insecure); anyone who reaches the port may do anything";

impl Health {
    /// Marks the node as running without authentication, which `/readyz` then says.
    pub fn set_insecure(&self) {
        self.insecure.store(true, Ordering::SeqCst);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.not_ready_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.into();
        self.ready.store(false, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn not_ready_reason(&self) -> String {
        let reason = self.not_ready_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if reason.is_empty() {
            "starting".into()
        } else {
            reason
        }
    }
}

/// What the HTTP listener serves. `refresh` runs before each scrape to update sampled gauges.
pub struct HttpState {
    pub registry: Registry,
    pub health: Arc<Health>,
    pub refresh: Box<dyn Fn() + Send + Sync>,
    /// The ranges whose descriptors (as this node knows them) name a node among their replicas.
    pub ranges_on: Box<dyn Fn(u64) -> Vec<u64> + Send + Sync>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/replicas/{node_id}", get(replicas_of))
        .with_state(state)
}

/// What one member says another holds: the operator asks a member other than the one it is
/// about to remove, rather than trust that node's own report of being empty.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplicasOf {
    pub node_id: u64,
    pub ranges: Vec<u64>,
}

async fn replicas_of(
    State(state): State<Arc<HttpState>>,
    axum::extract::Path(node_id): axum::extract::Path<u64>,
) -> impl IntoResponse {
    let answer = ReplicasOf { node_id, ranges: (state.ranges_on)(node_id) };
    match serde_json::to_string(&answer) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does); the classic text format 0.0.4
/// for everyone else (curl, `promtool check metrics`, older scrapers).
async fn metrics(State(state): State<Arc<HttpState>>, headers: header::HeaderMap) -> impl IntoResponse {
    (state.refresh)();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|accept| accept.to_str().is_ok_and(|a| a.contains("application/openmetrics-text")));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) if openmetrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            openmetrics_to_text(&body),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

/// The classic Prometheus text format from prometheus-client's OpenMetrics: a counter's HELP
/// and TYPE name its `_total` samples, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|rest| ("# HELP ", rest));
        let meta = meta.or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                let tail = if kind == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                text.push_str(&format!("{kind}{name} {tail}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let warning =
        if state.health.insecure.load(Ordering::SeqCst) { format!("{INSECURE_WARNING}\n") } else { String::new() };
    if state.health.is_ready() {
        (StatusCode::OK, format!("ready\n{warning}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n{warning}", state.health.not_ready_reason()))
    }
}

/// Binds the observability listener; the returned future serves until `shutdown` resolves.
pub async fn serve_http(
    addr: SocketAddr,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown);
    Ok((local, async move { serve.await }))
}

/// Installs the global `tracing` subscriber. Logs go to stderr so stdout stays for command output.
/// Libraries whose own `info` and `debug` lines drown the node's: openraft alone wrote 89 MB a
/// node in four minutes at `debug`.
const CHATTY_DEPENDENCIES: [&str; 8] = ["openraft", "quinn", "quinn_proto", "rustls", "h2", "hyper", "kube", "tower"];

/// The filter for a configured log level. A bare level (`debug`) is the node's own: its
/// dependencies stay at `warn` (or quieter, if the level is). Anything with a directive
/// (`info,openraft=debug`) is an `EnvFilter` taken as written.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let level = level.trim();
    let spec = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        let dependencies = if matches!(level, "error" | "off") { level } else { "warn" };
        std::iter::once(level.to_string())
            .chain(CHATTY_DEPENDENCIES.iter().map(|dependency| format!("{dependency}={dependencies}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| format!("invalid log filter {level:?}: {e}"))
}

pub fn init_logging(format: LogFormat, filter: &str, insecure: bool) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = log_filter(filter)?;
    // The filter sits behind a reload handle so a live configuration can change the level.
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let writer = LogWriter { format, insecure };
    let result = match format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(writer)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(writer))
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    let _ = LOG_FILTER.set(Box::new(move |filter: EnvFilter| handle.reload(filter).map_err(|e| e.to_string())));
    Ok(())
}

/// Standard error, with every line of an `--insecure` node marked as such (the formatter hands
/// over one whole event per write).
#[derive(Clone, Copy)]
struct LogWriter {
    format: LogFormat,
    insecure: bool,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match (self.insecure, self.format) {
            (false, _) => stderr.write_all(line)?,
            (true, LogFormat::Text) => {
                stderr.write_all(b"INSECURE ")?;
                stderr.write_all(line)?;
            }
            (true, LogFormat::Json) => match line.strip_prefix(b"{") {
                Some(rest) => {
                    stderr.write_all(b"{\"insecure\":true,")?;
                    stderr.write_all(rest)?;
                }
                None => stderr.write_all(line)?,
            },
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

type FilterReload = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: std::sync::OnceLock<FilterReload> = std::sync::OnceLock::new();

/// Replaces the log filter of a running node (a no-op before `init_logging`, as in tests).
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let parsed = log_filter(filter)?;
    match LOG_FILTER.get() {
        Some(reload) => reload(parsed),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_level_is_the_nodes_own_and_directives_are_taken_as_written() {
        let filter = super::log_filter("debug").unwrap().to_string();
        assert!(filter.contains("openraft=warn") && filter.contains("debug"), "{filter}");
        let quiet = super::log_filter("error").unwrap().to_string();
        assert!(quiet.contains("openraft=error"), "{quiet}");
        let exact = super::log_filter("info,openraft=debug").unwrap().to_string();
        assert!(exact.contains("openraft=debug") && !exact.contains("quinn"), "{exact}");
        assert!(super::log_filter("info,=bad=").is_err());
    }

    use super::*;

    #[test]
    fn openmetrics_becomes_classic_text() {
        let openmetrics = "# HELP pleiades_frames Frames.\n# TYPE pleiades_frames counter\n\
            pleiades_frames_total{dir=\"in\"} 3\n# HELP pleiades_open Open.\n# TYPE pleiades_open gauge\n\
            # UNIT pleiades_open bytes\npleiades_open 1\n# TYPE pleiades_odd unknown\npleiades_odd 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(openmetrics),
            "# HELP pleiades_frames_total Frames.\n# TYPE pleiades_frames_total counter\n\
             pleiades_frames_total{dir=\"in\"} 3\n# HELP pleiades_open Open.\n# TYPE pleiades_open gauge\n\
             pleiades_open 1\n# TYPE pleiades_odd untyped\npleiades_odd 2\n"
        );
    }
}
