//! The constellation client: reaches any node, caches range descriptors and leaders, routes
//! each request to the range's leader (or any replica for stale reads), and retries with
//! backoff on leader changes and `RANGE_MISMATCH` until a deadline. Requests share one QUIC
//! connection per node and run concurrently on a pool of PWP streams.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleiades_proto::payload_type;
use pleiades_proto::v1::{
    self, kv_request::Op, kv_response::Result as KvResult, ErrorCode, KvRequest, KvResponse, ReadConsistency,
};
use pleiades_proto::wire::Service;

use super::{ClientError, PwpStream};
use crate::transport::tls::{CertFiles, QuicLimits};

pub struct ClusterConfig {
    /// Nodes to start from, as `host:port`; any one that answers is enough.
    pub seeds: Vec<String>,
    /// Name the seeds' certificates must carry (default: each seed's host). The nodes found
    /// through them are checked against the host of the address they advertise.
    pub server_name: Option<String>,
    pub ca_cert: PathBuf,
    /// The user's client certificate (none only against `--insecure` nodes).
    pub identity: Option<CertFiles>,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Deadline of a request across its retries.
    pub deadline: Duration,
}

/// What a request may do on a failure: reads can be retried anywhere; a write is retried only
/// when the node said it was not proposed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read(ReadConsistency),
}

struct Node {
    connection: quinn::Connection,
    streams: Mutex<Vec<PwpStream>>,
    /// Requests in flight on the connection, each on its own stream: at most what a node grants
    /// a user's connection (`wire.max-streams-per-connection`, 128 by default). More wait here
    /// for a pooled stream rather than for stream credit that pooled streams never give back.
    lanes: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Routing {
    /// Data ranges by start key.
    ranges: BTreeMap<Vec<u8>, v1::RangeDescriptor>,
    nodes: HashMap<u64, String>,
    leaders: HashMap<u64, String>,
    /// Nodes that failed a request recently, and when: tried last for a while.
    failed: HashMap<String, Instant>,
}

/// How many attempt timeouts a node that failed a request is tried only after the others: longer
/// than one attempt, so a dead node is not retried by every next attempt.
const FAILED_NODE_PENALTY_ATTEMPTS: u32 = 5;

struct Inner {
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    seeds: Vec<String>,
    server_name: Option<String>,
    attempt_timeout: Duration,
    deadline: Duration,
    connections: tokio::sync::Mutex<HashMap<String, Arc<Node>>>,
    routing: Mutex<Routing>,
    next_request_id: std::sync::atomic::AtomicU64,
}

/// A handle to a constellation. Cheap to clone; clones share connections and caches.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClientError> {
        // Keep-alives every third of the idle timeout: a dead node's connection closes quickly.
        let limits = QuicLimits::dialler(Duration::from_secs(5));
        let endpoint = super::client_endpoint(config.seeds.first().map_or("", String::as_str))?;
        let quic = super::quic_config(&config.ca_cert, config.identity.as_ref(), &limits)?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                endpoint,
                quic,
                seeds: config.seeds,
                server_name: config.server_name,
                attempt_timeout: config.attempt_timeout,
                deadline: config.deadline,
                connections: tokio::sync::Mutex::new(HashMap::new()),
                routing: Mutex::new(Routing::default()),
                next_request_id: std::sync::atomic::AtomicU64::new(1),
            }),
        };
        cluster.refresh_ranges().await?;
        Ok(cluster)
    }

    pub async fn close(&self) {
        self.inner.endpoint.close(quinn::VarInt::from_u32(0), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    async fn node(&self, addr: &str) -> Result<Arc<Node>, ClientError> {
        if let Some(node) = self.inner.connections.lock().await.get(addr) {
            if node.connection.close_reason().is_none() {
                return Ok(node.clone());
            }
        }
        let server_name = self.inner.server_name.as_deref().filter(|_| self.inner.seeds.iter().any(|s| s == addr));
        let connection =
            super::dial(&self.inner.endpoint, self.inner.quic.clone(), addr, server_name, self.inner.attempt_timeout)
                .await?;
        let node = Arc::new(Node {
            connection,
            streams: Mutex::new(Vec::new()),
            lanes: tokio::sync::Semaphore::new(crate::config::DEFAULT_MAX_STREAMS_PER_CONNECTION as usize),
        });
        self.inner.connections.lock().await.insert(addr.to_string(), node.clone());
        Ok(node)
    }

    /// Sends one KV request to the node at `addr` on a pooled stream.
    async fn send(&self, addr: &str, request: &KvRequest) -> Result<KvResponse, ClientError> {
        let node = self.node(addr).await?;
        // Bounded as a whole too: a stalled send counts as a slow answer.
        let timeout = self.inner.attempt_timeout;
        let result = tokio::time::timeout(timeout, self.exchange(&node, request))
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)));
        // A broken connection is dialled afresh next time. A slow answer (timeout) or a stream
        // not granted in time leaves it be: other requests in flight on it would be lost with
        // it, and a dead node's connection idles out within seconds.
        let keep = |e: &ClientError| {
            matches!(e, ClientError::Timeout(_) | ClientError::NoStream(_) | ClientError::Overloaded(_))
        };
        if result.as_ref().is_err_and(|e| !keep(e)) {
            let mut connections = self.inner.connections.lock().await;
            if connections.get(addr).is_some_and(|n| n.connection.stable_id() == node.connection.stable_id()) {
                connections.remove(addr);
            }
            node.connection.close(quinn::VarInt::from_u32(0), b"request failed");
        }
        result
    }

    async fn exchange(&self, node: &Node, request: &KvRequest) -> Result<KvResponse, ClientError> {
        let timeout = self.inner.attempt_timeout;
        let _lane = match tokio::time::timeout(timeout, node.lanes.acquire()).await {
            Ok(Ok(lane)) => lane,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::NoStream(timeout)),
        };
        let pooled = {
            let mut streams = lock(&node.streams);
            std::iter::from_fn(|| streams.pop()).find(PwpStream::is_fresh)
        };
        let mut stream = match pooled {
            Some(stream) => stream,
            None => PwpStream::open(&node.connection, Service::Kv, self.inner.attempt_timeout).await?,
        };
        let response: KvResponse =
            stream.call_proto(payload_type::kv::REQUEST, request, payload_type::kv::RESPONSE, "KvResponse").await?;
        if response.request_id != request.request_id {
            return Err(ClientError::Read(format!(
                "answer to request {} arrived for {}",
                response.request_id, request.request_id
            )));
        }
        // Only a stream that completed its exchange cleanly goes back to the pool.
        lock(&node.streams).push(stream);
        Ok(response)
    }

    fn next_id(&self) -> u64 {
        self.inner.next_request_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the seeds and known nodes for descriptors; keeps the newest generation of each.
    pub async fn refresh_ranges(&self) -> Result<(), ClientError> {
        let mut candidates: Vec<String> = self.inner.seeds.clone();
        candidates.extend(lock(&self.inner.routing).nodes.values().cloned());
        candidates.dedup();
        let mut last_error = ClientError::Read("no node to ask for the ranges".into());
        let mut learned = false;
        for addr in candidates {
            let request = KvRequest {
                request_id: self.next_id(),
                op: Some(Op::Ranges(v1::RangesRequest {})),
                ..Default::default()
            };
            match self.send(&addr, &request).await {
                Ok(KvResponse { result: Some(KvResult::Ranges(answer)), .. }) => {
                    let mut routing = lock(&self.inner.routing);
                    for node in answer.nodes {
                        routing.nodes.insert(node.node_id, node.addr);
                    }
                    for range in answer.ranges {
                        learn(&mut routing, range);
                    }
                    // Known leaders spare the first requests a guess (and a dead node's timeout).
                    for known in answer.leaders {
                        if let Some(leader) = known.leader {
                            routing.nodes.insert(leader.node_id, leader.addr.clone());
                            routing.leaders.entry(known.range_id).or_insert(leader.addr);
                        }
                    }
                    learned = true;
                    // One answer is enough unless it knew no data ranges.
                    if !routing.ranges.is_empty() {
                        return Ok(());
                    }
                }
                Ok(other) => last_error = ClientError::Read(format!("unexpected answer {other:?}")),
                Err(e) => last_error = e,
            }
        }
        if learned {
            return Ok(());
        }
        Err(last_error)
    }

    /// The cached descriptor of the range holding the keys just below `end` (empty: the last).
    fn range_before(&self, end: &[u8]) -> Option<v1::RangeDescriptor> {
        let routing = lock(&self.inner.routing);
        if end.is_empty() {
            return routing.ranges.values().find(|d| d.end_key.is_empty()).cloned();
        }
        routing.ranges.range(..end.to_vec()).next_back().map(|(_, d)| d.clone())
    }

    /// The cached descriptor of the range holding `key`.
    fn range_for(&self, key: &[u8]) -> Option<v1::RangeDescriptor> {
        let routing = lock(&self.inner.routing);
        routing
            .ranges
            .range(..=key.to_vec())
            .next_back()
            .map(|(_, d)| d.clone())
            .filter(|d| key >= d.start_key.as_slice() && (d.end_key.is_empty() || key < d.end_key.as_slice()))
    }

    /// Where to send a request for `range`: the leader when known, else its replicas in turn.
    fn targets(&self, range: &v1::RangeDescriptor, kind: Kind, attempt: usize) -> Vec<String> {
        let routing = lock(&self.inner.routing);
        let mut replicas: Vec<String> = range.replicas.iter().filter_map(|id| routing.nodes.get(id).cloned()).collect();
        if !replicas.is_empty() {
            let len = replicas.len();
            replicas.rotate_left(attempt % len);
        }
        // Recently failed nodes go last (stable sort keeps the order otherwise)...
        let penalty = self.inner.attempt_timeout * FAILED_NODE_PENALTY_ATTEMPTS;
        replicas.sort_by_key(|addr| routing.failed.get(addr).is_some_and(|at| at.elapsed() < penalty));
        match (kind, routing.leaders.get(&range.range_id)) {
            (Kind::Read(ReadConsistency::Stale), _) | (_, None) => replicas,
            // ...but a known leader goes first all the same: it was learned (from an answer or
            // a hint) after the failure, or the failure would have forgotten it.
            (_, Some(leader)) => {
                let mut targets = vec![leader.clone()];
                targets.extend(replicas.into_iter().filter(|r| r != leader));
                targets
            }
        }
    }

    /// Forgets `addr` as the leader of any range and tries it last for a while: the node failed
    /// a request (or is leaving), and only a live replica's hint makes it a leader again.
    fn mark_failed(&self, addr: &str) {
        let mut routing = lock(&self.inner.routing);
        routing.leaders.retain(|_, leader| leader != addr);
        routing.failed.insert(addr.to_string(), Instant::now());
    }

    /// Sends `op` for `key` to the right node, retrying as the failure allows until the deadline.
    async fn call(&self, key: &[u8], op: Op, kind: Kind) -> Result<KvResult, ClientError> {
        self.call_routed(Route::Key(key), op, kind).await
    }

    async fn call_routed(&self, route: Route<'_>, op: Op, kind: Kind) -> Result<KvResult, ClientError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(5);
        let mut attempt = 0usize;
        let mut last_error = ClientError::Read("no attempt made".into());
        while started.elapsed() < self.inner.deadline {
            attempt += 1;
            let lookup = || match route {
                Route::Key(key) => self.range_for(key),
                Route::Before(end) => self.range_before(end),
            };
            let Some(range) = lookup() else {
                if let Err(e) = self.refresh_ranges().await {
                    last_error = e;
                }
                if lookup().is_none() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                continue;
            };
            let Some(target) = self.targets(&range, kind, attempt).into_iter().next() else {
                last_error = ClientError::Read(format!("no address for the replicas of range {}", range.range_id));
                let _ = self.refresh_ranges().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            };
            let request = KvRequest {
                request_id: self.next_id(),
                op: Some(op.clone()),
                range_id: range.range_id,
                range_generation: range.generation,
            };
            let response = match self.send(&target, &request).await {
                Ok(response) => response,
                // Not connected, or not handled by a draining node: any request may go elsewhere.
                Err(e @ (ClientError::Connect { .. } | ClientError::Tls(_) | ClientError::Draining)) => {
                    self.mark_failed(&target);
                    last_error = e;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
                // Refused before it was read, or no stream to send it on: not sent either, and
                // the node is alive.
                Err(e @ (ClientError::Overloaded(_) | ClientError::NoStream(_))) => {
                    last_error = e;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
                Err(e) if kind == Kind::Write => {
                    self.mark_failed(&target);
                    return Err(ClientError::Uncertain(format!("the connection to {target} failed mid-request: {e}")));
                }
                Err(e) => {
                    self.mark_failed(&target);
                    last_error = e;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            let error = match response.result {
                Some(KvResult::Error(error)) => error,
                Some(result) => {
                    let mut routing = lock(&self.inner.routing);
                    routing.failed.remove(&target);
                    if kind != Kind::Read(ReadConsistency::Stale) {
                        routing.leaders.insert(range.range_id, target);
                    }
                    return Ok(result);
                }
                None => return Err(ClientError::Decode { message: "KvResponse", detail: "no result".into() }),
            };
            match error.code() {
                ErrorCode::NotLeader => {
                    let go_now = {
                        let mut routing = lock(&self.inner.routing);
                        let penalty = self.inner.attempt_timeout * FAILED_NODE_PENALTY_ATTEMPTS;
                        match &error.leader {
                            // The hint is followed even to a node that failed us lately (it may
                            // have failed for another range, or be back): a live replica's
                            // word beats an old failure. Only the pace differs: a hint at a
                            // node that just failed may be stale (an election is under way),
                            // so it is followed after the backoff, not at once.
                            Some(leader) if leader.addr != target => {
                                routing.nodes.insert(leader.node_id, leader.addr.clone());
                                routing.leaders.insert(range.range_id, leader.addr.clone());
                                routing.failed.get(&leader.addr).is_none_or(|at| at.elapsed() >= penalty)
                            }
                            _ => {
                                routing.leaders.remove(&range.range_id);
                                false
                            }
                        }
                    };
                    if go_now {
                        continue;
                    }
                }
                ErrorCode::RangeMismatch => {
                    let learned = {
                        let mut routing = lock(&self.inner.routing);
                        routing.leaders.remove(&range.range_id);
                        match error.range.clone() {
                            Some(newer) if newer.generation > range.generation || newer.range_id != range.range_id => {
                                learn(&mut routing, newer);
                                true
                            }
                            _ => false,
                        }
                    };
                    if learned {
                        continue;
                    }
                    let _ = self.refresh_ranges().await;
                }
                // The whole node is leaving: nothing more goes there.
                ErrorCode::Unavailable if error.node_draining => self.mark_failed(&target),
                // The node is alive but cannot serve this range now (a leadership hand-over,
                // a leadership it cannot confirm, a merge): another replica may, and the node
                // stays a fine choice for its other ranges.
                ErrorCode::Unavailable => {
                    lock(&self.inner.routing).leaders.remove(&range.range_id);
                }
                code => return Err(ClientError::Kv { code, message: error.message }),
            }
            last_error = ClientError::Kv { code: error.code(), message: error.message };
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(ClientError::Deadline { after: self.inner.deadline, last: Box::new(last_error) })
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<v1::PutResponse, ClientError> {
        let op = Op::Put(v1::PutRequest { key: key.to_vec(), value: value.to_vec() });
        match self.call(key, op, Kind::Write).await? {
            KvResult::Put(r) => Ok(r),
            _ => Err(mismatched("put")),
        }
    }

    pub async fn delete(&self, key: &[u8]) -> Result<v1::DeleteResponse, ClientError> {
        match self.call(key, Op::Delete(v1::DeleteRequest { key: key.to_vec() }), Kind::Write).await? {
            KvResult::Delete(r) => Ok(r),
            _ => Err(mismatched("delete")),
        }
    }

    /// Sets `key` to `new` (`None` deletes) if it holds `expected` (`None`: if it is absent).
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<v1::CompareAndSwapResponse, ClientError> {
        let op = Op::Cas(v1::CompareAndSwapRequest {
            key: key.to_vec(),
            expected: expected.unwrap_or_default().to_vec(),
            expect_absent: expected.is_none(),
            value: new.unwrap_or_default().to_vec(),
            delete: new.is_none(),
        });
        match self.call(key, op, Kind::Write).await? {
            KvResult::Cas(r) => Ok(r),
            _ => Err(mismatched("cas")),
        }
    }

    /// The latest value (`version` 0) or a given version.
    pub async fn get(
        &self,
        key: &[u8],
        version: u32,
        consistency: ReadConsistency,
    ) -> Result<Option<v1::VersionedValue>, ClientError> {
        let op = Op::Get(v1::GetRequest { key: key.to_vec(), version, at: None, consistency: consistency.into() });
        match self.call(key, op, Kind::Read(consistency)).await? {
            KvResult::Get(r) => Ok(r.value),
            _ => Err(mismatched("get")),
        }
    }

    /// Keys in `[start, end)` (empty end: to the end), across ranges, at one timestamp; in
    /// descending order with `reverse`. `limit` 0 means every key.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
        reverse: bool,
        consistency: ReadConsistency,
    ) -> Result<Vec<v1::KeyValue>, ClientError> {
        let mut out = Vec::new();
        let (mut from, mut to) = (start.to_vec(), end.to_vec());
        let mut at = None;
        loop {
            let remaining = limit.saturating_sub(out.len() as u32);
            if limit != 0 && remaining == 0 {
                return Ok(out);
            }
            let op = Op::Scan(v1::ScanRequest {
                start: from.clone(),
                end: to.clone(),
                limit: remaining,
                at,
                consistency: consistency.into(),
                reverse,
            });
            let route = if reverse { Route::Before(&to) } else { Route::Key(&from) };
            let page = match self.call_routed(route, op, Kind::Read(consistency)).await? {
                KvResult::Scan(page) => page,
                _ => return Err(mismatched("scan")),
            };
            out.extend(page.entries);
            // Later pages read at the first page's time: one consistent snapshot.
            at = at.or(page.read_at);
            let resume = page.resume_key;
            let done = resume.is_empty()
                || if reverse { resume.as_slice() <= start } else { !end.is_empty() && resume.as_slice() >= end };
            if done {
                return Ok(out);
            }
            if reverse {
                to = resume;
            } else {
                from = resume;
            }
        }
    }

    pub async fn versions(&self, key: &[u8]) -> Result<Vec<v1::VersionInfo>, ClientError> {
        let op = Op::ListVersions(v1::ListVersionsRequest { key: key.to_vec(), consistency: 0 });
        match self.call(key, op, Kind::Read(ReadConsistency::Linearizable)).await? {
            KvResult::ListVersions(r) => Ok(r.versions),
            _ => Err(mismatched("list_versions")),
        }
    }

    pub async fn describe(&self, key: &[u8]) -> Result<Option<v1::KeyDescriptor>, ClientError> {
        let op = Op::Describe(v1::DescribeKeyRequest { key: key.to_vec(), consistency: 0 });
        match self.call(key, op, Kind::Read(ReadConsistency::Linearizable)).await? {
            KvResult::Describe(r) => Ok(r.descriptor),
            _ => Err(mismatched("describe")),
        }
    }

    /// Every node the client knows, by id.
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        lock(&self.inner.routing).nodes.iter().map(|(id, addr)| (*id, addr.clone())).collect()
    }

    /// Every data range the client knows.
    pub fn ranges(&self) -> Vec<v1::RangeDescriptor> {
        lock(&self.inner.routing).ranges.values().cloned().collect()
    }

    /// A system-service stream to the node at `addr`.
    pub async fn system(&self, addr: &str) -> Result<super::SystemClient, ClientError> {
        let node = self.node(addr).await?;
        Ok(super::SystemClient(PwpStream::open(&node.connection, Service::System, self.inner.attempt_timeout).await?))
    }
}

/// How a request finds its range: by a key in it, or (reverse scans) by the end it lies below.
#[derive(Clone, Copy)]
enum Route<'a> {
    Key(&'a [u8]),
    Before(&'a [u8]),
}

/// Range descriptors a client keeps at most.
const MAX_CACHED_RANGES: usize = 100_000;

fn learn(routing: &mut Routing, range: v1::RangeDescriptor) {
    if range.meta {
        return;
    }
    let before = |key: &[u8], end: &[u8]| end.is_empty() || key < end;
    let overlaps = |known: &v1::RangeDescriptor| {
        before(&known.start_key, &range.end_key) && before(&range.start_key, &known.end_key)
    };
    // Splits give both halves the parent's generation plus one, and moves raise it: a cached
    // range of a higher generation over the same keys is newer than this one.
    let stale = routing.ranges.values().any(|known| match known.range_id == range.range_id {
        true => known.generation >= range.generation,
        false => overlaps(known) && known.generation > range.generation,
    });
    if stale {
        return;
    }
    // A newer descriptor replaces whatever overlapped it.
    routing.ranges.retain(|_, known| known.range_id != range.range_id && !overlaps(known));
    // Bounded: past the cap, the cache forgets the range after this one (it is looked up
    // again when needed), so a client of a huge constellation does not hold every descriptor.
    if routing.ranges.len() >= MAX_CACHED_RANGES {
        let evict = routing
            .ranges
            .range(range.start_key.clone()..)
            .next()
            .or_else(|| routing.ranges.iter().next())
            .map(|(start, _)| start.clone());
        if let Some(start) = evict {
            routing.ranges.remove(&start);
        }
    }
    routing.ranges.insert(range.start_key.clone(), range);
}

fn mismatched(op: &'static str) -> ClientError {
    ClientError::Decode { message: "KvResponse", detail: format!("the answer to a {op} is of another operation") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(range_id: u64, start: &[u8], end: &[u8], generation: u64) -> v1::RangeDescriptor {
        v1::RangeDescriptor { range_id, start_key: start.into(), end_key: end.into(), generation, ..Default::default() }
    }

    #[test]
    fn the_cache_follows_a_split_and_ignores_the_parent_seen_late() {
        let mut routing = Routing::default();
        learn(&mut routing, range(2, b"", b"", 1));
        learn(&mut routing, range(7, b"m", b"", 2));
        learn(&mut routing, range(2, b"", b"m", 2));
        // A node that has not heard of the split answers with the parent.
        learn(&mut routing, range(2, b"", b"", 1));
        let cached: Vec<(u64, Vec<u8>)> = routing.ranges.values().map(|d| (d.range_id, d.end_key.clone())).collect();
        assert_eq!(cached, vec![(2, b"m".to_vec()), (7, Vec::new())]);
    }
}
