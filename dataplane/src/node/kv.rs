//! The KV service (PWP 0x03): routes each request to the local replica of the key's range,
//! proposes writes through raft and serves reads after a ReadIndex barrier (linearizable) or
//! straight from the local replica (stale). A request for a range this node does not host, or
//! routed by an outdated descriptor, gets `RANGE_MISMATCH` with the descriptor this node knows;
//! one that reaches a follower gets `NOT_LEADER` naming the leader, so the client redirects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use pleiades_proto::v1::{
    self, command, kv_request::Op, kv_response::Result as KvResult, ErrorCode, KvError, KvRequest, KvResponse,
    ReadConsistency,
};
use prost::Message;
use tracing::warn;

use super::auth::{check_auth_record, is_auth_key, Authorizer};
use super::live::LiveKvLimits;
use crate::clock::{Hlc, Timestamp};
use crate::observe::{KvLabels, LimitLabels, Metrics, RangeLabels};
use crate::raft::proposals::ProposeError;
use crate::raft::Outcome;
use crate::range::store::Replica;
use crate::range::Ranges;
use crate::storage::{ScanCut, ScanLimit, ScanPage, StorageError, VersionedValue};
use crate::transport::peer::{Denials, Peer};

/// A request slower than this is logged.
const SLOW_REQUEST: Duration = Duration::from_secs(1);
/// How long a linearizable read waits to confirm leadership.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KvService {
    ranges: Arc<Ranges>,
    hlc: Arc<Hlc>,
    limits: Arc<LiveKvLimits>,
    metrics: Arc<Metrics>,
    authorizer: Arc<Authorizer>,
    denials: Denials,
    /// Set when the node starts leaving: new requests are refused as not served.
    draining: std::sync::atomic::AtomicBool,
}

/// A request not served, with what the client needs to act on it.
struct Refusal {
    code: ErrorCode,
    message: String,
    // Boxed: refusals travel in every Result of the request path, which should stay small.
    range: Option<Box<v1::RangeDescriptor>>,
    leader: Option<Box<v1::MemberNode>>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into(), range: None, leader: None }
    }
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        let code = match e {
            StorageError::Clock(_) => ErrorCode::Unavailable,
            // The client's key has no version numbers left: its request, not the node, is at fault.
            StorageError::VersionsExhausted { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<crate::clock::ClockError> for Refusal {
    fn from(e: crate::clock::ClockError) -> Self {
        Refusal::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// A user or role record must be one, or it would lock users out.
fn check_system_value(key: &[u8], value: &[u8]) -> Result<(), Refusal> {
    if is_auth_key(key) {
        check_auth_record(key, value).map_err(|e| Refusal::new(ErrorCode::InvalidArgument, e))?;
    }
    Ok(())
}

/// A range frozen for a merge neither writes nor answers linearizable reads: once the merge
/// applies, the range that subsumed it takes writes for its keys, and a read here could miss
/// them. Clients retry and, after the merge, find the subsuming range.
fn frozen(replica: &Replica) -> Result<(), Refusal> {
    match replica.descriptor().merging_into {
        0 => Ok(()),
        into => Err(Refusal::new(
            ErrorCode::Unavailable,
            format!("range {} is merging into range {into}: not served", replica.range_id),
        )),
    }
}

fn not_leader(replica: &Replica, forward: ForwardToLeader<u64, BasicNode>) -> Refusal {
    let leader = match (forward.leader_id, forward.leader_node) {
        (Some(node_id), Some(node)) => Some(v1::MemberNode { node_id, addr: node.addr }),
        _ => replica.leader(),
    };
    let message = match &leader {
        Some(leader) => format!("range {} is led by node {} at {}", replica.range_id, leader.node_id, leader.addr),
        None => format!("range {} has no known leader (an election may be running)", replica.range_id),
    };
    Refusal {
        code: ErrorCode::NotLeader,
        message,
        range: Some(Box::new(replica.descriptor())),
        leader: leader.map(Box::new),
    }
}

impl KvService {
    pub fn new(
        ranges: Arc<Ranges>,
        hlc: Arc<Hlc>,
        limits: Arc<LiveKvLimits>,
        metrics: Arc<Metrics>,
        authorizer: Arc<Authorizer>,
    ) -> Self {
        KvService {
            ranges,
            hlc,
            limits,
            metrics,
            authorizer,
            denials: Denials::default(),
            draining: Default::default(),
        }
    }

    /// From now on every request that reads or writes data is answered `UNAVAILABLE` without
    /// being served, so the client sends it elsewhere knowing it had no effect. Routing
    /// questions are still answered.
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Why this node serves no data now, if it does not: it is draining, or its clock is fenced
    /// (reads too: a linearizable read here could miss writes another leader stamped within
    /// this node's clock error).
    fn unserved(&self) -> Option<String> {
        if self.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Some("the node is draining: not served".into());
        }
        self.hlc.fenced().map(|why| format!("{why}: not served until its clock is corrected"))
    }

    /// Decodes one request from `peer` and answers it; a malformed request gets an
    /// `INVALID_ARGUMENT` answer, one the peer may not make `PERMISSION_DENIED`.
    pub async fn handle(&self, peer: &Peer, payload: Bytes) -> KvResponse {
        let request = match KvRequest::decode(payload) {
            Ok(request) => request,
            Err(e) => {
                return error_response(0, Refusal::new(ErrorCode::InvalidArgument, format!("malformed KvRequest: {e}")))
            }
        };
        let request_id = request.request_id;
        let Some(mut op) = request.op else {
            return error_response(
                request_id,
                Refusal::new(ErrorCode::InvalidArgument, "KvRequest names no operation"),
            );
        };
        if let Err(reason) = self.authorizer.authorize_kv(peer, &mut op) {
            self.denials.record(&self.metrics, "kv", peer, &reason);
            return error_response(request_id, Refusal::new(ErrorCode::PermissionDenied, reason));
        }
        if let Some(why) = self.unserved().filter(|_| !matches!(op, Op::Ranges(_))) {
            let mut response = error_response(request_id, Refusal::new(ErrorCode::Unavailable, why));
            // The client sends it elsewhere, knowing it had no effect.
            if let Some(KvResult::Error(error)) = response.result.as_mut() {
                error.node_draining = true;
            }
            return response;
        }
        let (name, consistency) = labels(&op);
        let started = Instant::now();
        let result = self.execute(request.range_id, request.range_generation, op).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(refusal) => refusal.code.as_str_name(),
        };
        let took = started.elapsed();
        if took >= SLOW_REQUEST {
            // Past the clients' usual attempt timeout: worth a line (CockroachDB logs slow
            // requests the same way).
            warn!(op = name, range_id = request.range_id, outcome, ?took, "slow request");
        }
        self.metrics
            .kv_request_seconds
            .get_or_create(&KvLabels { op: name, consistency, outcome })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => KvResponse { request_id, result: Some(result) },
            Err(refusal) => error_response(request_id, refusal),
        }
    }

    async fn execute(&self, range_id: u64, generation: u64, op: Op) -> Result<KvResult, Refusal> {
        match op {
            Op::Ranges(_) => {
                // A node with no meta replica answers from a fresh read of meta.
                self.ranges.refresh_for_lookup().await;
                let hosted = self.ranges.store.hosted();
                Ok(KvResult::Ranges(v1::RangesResponse {
                    ranges: self.ranges.table.descriptors(),
                    nodes: self.ranges.members(),
                    leaders: hosted
                        .iter()
                        .filter_map(|r| {
                            r.leader().map(|leader| v1::RangeLeader { range_id: r.range_id, leader: Some(leader) })
                        })
                        .collect(),
                    loads: hosted
                        .iter()
                        .filter(|r| r.is_leader())
                        .map(|r| r.load.report(r.range_id, r.term()))
                        .collect(),
                }))
            }
            Op::Put(put) => {
                self.check_key(&put.key)?;
                self.check_value(&put.value)?;
                check_system_value(&put.key, &put.value)?;
                let replica = self.route(&put.key, range_id, generation)?;
                replica.load.wrote(&put.key, put.key.len() + put.value.len());
                let outcome =
                    self.propose(&replica, command::Op::Put(v1::CommandPut { key: put.key, value: put.value })).await?;
                let (version, timestamp) = written(outcome)?;
                Ok(KvResult::Put(v1::PutResponse { version, timestamp: Some(timestamp.into()) }))
            }
            Op::Delete(delete) => {
                self.check_key(&delete.key)?;
                let replica = self.route(&delete.key, range_id, generation)?;
                replica.load.wrote(&delete.key, delete.key.len());
                let outcome =
                    self.propose(&replica, command::Op::Delete(v1::CommandDelete { key: delete.key })).await?;
                let (_, timestamp) = written(outcome)?;
                Ok(KvResult::Delete(v1::DeleteResponse { timestamp: Some(timestamp.into()) }))
            }
            Op::Cas(cas) => {
                self.check_key(&cas.key)?;
                self.check_value(&cas.expected)?;
                self.check_value(&cas.value)?;
                if !cas.delete {
                    check_system_value(&cas.key, &cas.value)?;
                }
                let replica = self.route(&cas.key, range_id, generation)?;
                replica.load.wrote(&cas.key, cas.key.len() + cas.value.len());
                let command = command::Op::Cas(v1::CommandCompareAndSwap {
                    key: cas.key,
                    expected: cas.expected,
                    expect_absent: cas.expect_absent,
                    value: cas.value,
                    delete: cas.delete,
                });
                match self.propose(&replica, command).await? {
                    Outcome::CompareFailed { current } => Ok(KvResult::Cas(v1::CompareAndSwapResponse {
                        succeeded: false,
                        current: current.map(versioned),
                    })),
                    outcome => {
                        let (version, timestamp) = written(outcome)?;
                        let current =
                            v1::VersionedValue { value: Vec::new(), version, timestamp: Some(timestamp.into()) };
                        Ok(KvResult::Cas(v1::CompareAndSwapResponse { succeeded: true, current: Some(current) }))
                    }
                }
            }
            Op::Get(get) => {
                self.check_key(&get.key)?;
                let replica = self.route(&get.key, range_id, generation)?;
                self.read_barrier(&replica, get.consistency()).await?;
                self.still_holds(&replica, &get.key)?;
                replica.load.read(&get.key);
                let storage = self.ranges.store.storage();
                let found = match (get.version, get.at) {
                    (0, None) => storage.get_latest(&get.key)?,
                    (0, Some(at)) => storage.get_at(&get.key, at.into())?,
                    (version, None) => storage.get_version(&get.key, version)?,
                    (_, Some(_)) => {
                        return Err(Refusal::new(ErrorCode::InvalidArgument, "give a version or a timestamp, not both"))
                    }
                };
                Ok(KvResult::Get(v1::GetResponse { value: found.map(versioned) }))
            }
            Op::Scan(scan) => {
                let limit = match scan.limit {
                    0 => self.limits.get().max_scan_limit,
                    n if n > self.limits.get().max_scan_limit => {
                        return Err(Refusal::new(
                            ErrorCode::ScanLimitExceeded,
                            format!("scan limit {n} exceeds the maximum of {}", self.limits.get().max_scan_limit),
                        ))
                    }
                    n => n,
                };
                self.check_key(&scan.start)?;
                self.check_key(&scan.end)?;
                let replica = if scan.reverse {
                    self.route_before(&scan.end, range_id, generation)?
                } else {
                    self.route(&scan.start, range_id, generation)?
                };
                self.read_barrier(&replica, scan.consistency()).await?;
                if scan.reverse {
                    self.still_holds_before(&replica, &scan.end)?;
                } else {
                    self.still_holds(&replica, &scan.start)?;
                }
                replica.load.read(&scan.start);
                let at = match scan.at {
                    Some(at) => at.into(),
                    None => self.hlc.now()?,
                };
                if scan.reverse {
                    return self.scan_reverse(&replica, scan, limit, at);
                }
                // This range's part of the scan; the client continues in the next range.
                let range_end = replica.span().end_key;
                let cut_by_range = !range_end.is_empty() && (scan.end.is_empty() || range_end < scan.end);
                let end = if cut_by_range { range_end.clone() } else { scan.end.clone() };
                let end = (!end.is_empty()).then_some(end.as_slice());
                let page = self.ranges.store.storage().scan(&scan.start, end, self.scan_limit(limit), at)?;
                Ok(self.scan_response(page, cut_by_range.then_some(range_end), at))
            }
            Op::ListVersions(list) => {
                self.check_key(&list.key)?;
                let replica = self.route(&list.key, range_id, generation)?;
                self.read_barrier(&replica, list.consistency()).await?;
                self.still_holds(&replica, &list.key)?;
                let versions = self
                    .ranges
                    .store
                    .storage()
                    .list_versions(&list.key)?
                    .into_iter()
                    .map(|v| v1::VersionInfo {
                        version: v.version,
                        timestamp: Some(v.ts.into()),
                        tombstone: v.tombstone,
                        value_len: v.value_len as u64,
                    })
                    .collect();
                Ok(KvResult::ListVersions(v1::ListVersionsResponse { versions }))
            }
            Op::Describe(describe) => {
                self.check_key(&describe.key)?;
                let replica = self.route(&describe.key, range_id, generation)?;
                self.read_barrier(&replica, describe.consistency()).await?;
                self.still_holds(&replica, &describe.key)?;
                let descriptor = self.ranges.store.storage().descriptor(&describe.key)?.map(|d| v1::KeyDescriptor {
                    version_count: d.version_count,
                    latest_version: d.latest_version,
                    first_write: Some(d.first_write.into()),
                    last_write: Some(d.last_write.into()),
                    vacuumable: d.vacuumable,
                    retention: d.retention.into(),
                    deleted: d.deleted,
                });
                Ok(KvResult::Describe(v1::DescribeKeyResponse { descriptor }))
            }
        }
    }

    /// This range's part of a reverse scan, down to its start; the client continues below it.
    fn scan_reverse(
        &self,
        replica: &Replica,
        scan: v1::ScanRequest,
        limit: u32,
        at: Timestamp,
    ) -> Result<KvResult, Refusal> {
        let range_start = replica.span().start_key;
        let cut_by_range = range_start > scan.start;
        let start = if cut_by_range { range_start.clone() } else { scan.start.clone() };
        let end = (!scan.end.is_empty()).then_some(scan.end.as_slice());
        let page = self.ranges.store.storage().scan_reverse(&start, end, self.scan_limit(limit), at)?;
        Ok(self.scan_response(page, cut_by_range.then_some(range_start), at))
    }

    /// A scan answer stays within the payload limit: its bytes are bounded as well as its
    /// entries, and the client continues from the resume key.
    fn scan_limit(&self, entries: u32) -> ScanLimit {
        ScanLimit { entries: entries as usize, bytes: self.limits.get().max_scan_bytes.unwrap_or(usize::MAX) }
    }

    /// The answer for one page; `range_edge` is where this range's part of the scan ends, if
    /// the range ends before the scan does.
    fn scan_response(&self, page: ScanPage, range_edge: Option<Vec<u8>>, at: Timestamp) -> KvResult {
        if page.cut == Some(ScanCut::Bytes) {
            self.metrics.limit_reached(LimitLabels::SCAN_BYTES);
        }
        let resume_key = page.resume.or(range_edge).unwrap_or_default();
        let entries =
            page.rows.into_iter().map(|(key, value)| v1::KeyValue { key, value: Some(versioned(value)) }).collect();
        KvResult::Scan(v1::ScanResponse { entries, resume_key, read_at: Some(at.into()) })
    }

    /// The local replica holding the keys just below `end` (the last range for an empty end).
    fn route_before(&self, end: &[u8], range_id: u64, generation: u64) -> Result<Arc<Replica>, Refusal> {
        let holder = self.ranges.store.hosted().into_iter().find(|r| holds_before(&r.span(), end));
        match holder {
            Some(replica) => self.check_routing(replica, range_id, generation),
            None => Err(Refusal {
                code: ErrorCode::RangeMismatch,
                message: format!("node {} hosts no replica of the range before this key", self.ranges.node_id),
                range: None,
                leader: None,
            }),
        }
    }

    /// The local replica that must serve `key`, checked against the client's routing.
    fn route(&self, key: &[u8], range_id: u64, generation: u64) -> Result<Arc<Replica>, Refusal> {
        let Some(replica) = self.ranges.store.for_key(key) else {
            return Err(self.mismatch(key));
        };
        self.check_routing(replica, range_id, generation)
    }

    fn mismatch(&self, key: &[u8]) -> Refusal {
        Refusal {
            code: ErrorCode::RangeMismatch,
            message: format!("node {} hosts no replica of the range holding this key", self.ranges.node_id),
            range: self.ranges.table.for_key(key).map(Box::new),
            leader: None,
        }
    }

    /// After a read's barrier: the replica still holds `key`. A split applied meanwhile hands
    /// the key to the right half, whose replica here may lag its leader; reading it here would
    /// not be linearizable.
    fn still_holds(&self, replica: &Replica, key: &[u8]) -> Result<(), Refusal> {
        match replica.descriptor.contains(key) {
            true => Ok(()),
            false => Err(self.mismatch(key)),
        }
    }

    /// Like [`KvService::still_holds`], for the keys just below `end` (a reverse scan).
    fn still_holds_before(&self, replica: &Replica, end: &[u8]) -> Result<(), Refusal> {
        match holds_before(&replica.span(), end) {
            true => Ok(()),
            false => Err(Refusal {
                code: ErrorCode::RangeMismatch,
                message: format!("range {} no longer holds the keys before the scan's end", replica.range_id),
                range: None,
                leader: None,
            }),
        }
    }

    fn check_routing(&self, replica: Arc<Replica>, range_id: u64, generation: u64) -> Result<Arc<Replica>, Refusal> {
        let descriptor = replica.descriptor();
        if range_id != 0 && (range_id != descriptor.range_id || generation < descriptor.generation) {
            return Err(Refusal {
                code: ErrorCode::RangeMismatch,
                message: format!(
                    "the key is in range {} generation {}, not range {range_id} generation {generation}",
                    descriptor.range_id, descriptor.generation
                ),
                range: Some(Box::new(descriptor)),
                leader: None,
            });
        }
        Ok(replica)
    }

    /// Proposes a command at a fresh HLC time and waits until it is applied.
    async fn propose(&self, replica: &Replica, op: command::Op) -> Result<Outcome, Refusal> {
        frozen(replica)?;
        let Some(_admitted) = replica.writes.admit() else {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("range {} is handing its leadership over: not served", replica.range_id),
            ));
        };
        let labels = RangeLabels { range: replica.range_id };
        let started = Instant::now();
        match replica.proposals.propose(&replica.raft, &self.hlc, op).await {
            Ok(outcome) => {
                self.metrics.raft_proposals.get_or_create(&labels).inc();
                self.metrics.raft_proposal_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                Ok(outcome)
            }
            Err(ProposeError::NotLeader(forward)) => Err(not_leader(replica, forward)),
            Err(e @ ProposeError::Clock(_)) => Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
            Err(e @ ProposeError::Refused(_)) => Err(Refusal::new(ErrorCode::Internal, e.to_string())),
            Err(e @ (ProposeError::Stopped(_) | ProposeError::TimedOut)) => {
                Err(Refusal::new(ErrorCode::Uncertain, format!("range {}: {e}", replica.range_id)))
            }
        }
    }

    /// Waits until a read on this replica is linearizable (or not at all for stale reads).
    async fn read_barrier(&self, replica: &Replica, consistency: ReadConsistency) -> Result<(), Refusal> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        frozen(replica)?;
        let started = Instant::now();
        let confirm = async { replica.raft.ensure_linearizable().await.map(|_| ()) };
        match tokio::time::timeout(READ_INDEX_TIMEOUT, replica.read_barrier.confirm(confirm)).await {
            Ok(Ok(())) => {
                self.metrics
                    .raft_read_index_seconds
                    .get_or_create(&RangeLabels { range: replica.range_id })
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(not_leader(replica, forward))
            }
            Ok(Err(e)) => Err(Refusal::new(ErrorCode::Unavailable, format!("cannot confirm leadership: {e}"))),
            Err(_) => Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("range {} could not confirm its leadership within {READ_INDEX_TIMEOUT:?}", replica.range_id),
            )),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        if key.len() > self.limits.get().max_key_bytes {
            return Err(Refusal::new(
                ErrorCode::KeyTooLarge,
                format!("key of {} bytes exceeds the limit of {} bytes", key.len(), self.limits.get().max_key_bytes),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Refusal> {
        if value.len() > self.limits.get().max_value_bytes {
            return Err(Refusal::new(
                ErrorCode::ValueTooLarge,
                format!(
                    "value of {} bytes exceeds the limit of {} bytes",
                    value.len(),
                    self.limits.get().max_value_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `span` holds the keys just below `end` (the last range for an empty end).
fn holds_before(span: &crate::raft::state_machine::RangeSpan, end: &[u8]) -> bool {
    !span.meta
        && (end.is_empty() && span.end_key.is_empty()
            || !end.is_empty()
                && span.start_key.as_slice() < end
                && (span.end_key.is_empty() || end <= span.end_key.as_slice()))
}

fn written(outcome: Outcome) -> Result<(u32, Timestamp), Refusal> {
    match outcome {
        Outcome::Written { version, timestamp } => Ok((version, timestamp)),
        Outcome::Refused(why) => Err(Refusal::new(ErrorCode::RangeMismatch, why)),
        other => Err(Refusal::new(ErrorCode::Internal, format!("unexpected outcome {other:?}"))),
    }
}

fn versioned(value: VersionedValue) -> v1::VersionedValue {
    v1::VersionedValue { value: value.value, version: value.version, timestamp: Some(value.ts.into()) }
}

fn error_response(request_id: u64, refusal: Refusal) -> KvResponse {
    let error = KvError {
        code: refusal.code.into(),
        message: refusal.message,
        range: refusal.range.map(|r| *r),
        leader: refusal.leader.map(|l| *l),
        node_draining: false,
    };
    KvResponse { request_id, result: Some(KvResult::Error(error)) }
}

fn consistency_label(consistency: ReadConsistency) -> &'static str {
    match consistency {
        ReadConsistency::Stale => "stale",
        _ => "linearizable",
    }
}

fn labels(op: &Op) -> (&'static str, &'static str) {
    match op {
        Op::Put(_) => ("put", "none"),
        Op::Get(get) => ("get", consistency_label(get.consistency())),
        Op::Delete(_) => ("delete", "none"),
        Op::Scan(scan) => ("scan", consistency_label(scan.consistency())),
        Op::ListVersions(list) => ("list_versions", consistency_label(list.consistency())),
        Op::Describe(describe) => ("describe", consistency_label(describe.consistency())),
        Op::Cas(_) => ("cas", "none"),
        Op::Ranges(_) => ("ranges", "none"),
    }
}
