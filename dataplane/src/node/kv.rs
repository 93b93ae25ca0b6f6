//! The KV service (PWP 0x03) on this node's storage. Until replication lands, a write is
//! acknowledged once it is durable in this node's RocksDB WAL.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pleiades_proto::v1::{
    self, kv_request::Op, kv_response::Result as KvResult, ErrorCode, KvError, KvRequest, KvResponse,
};
use prost::Message;

use crate::clock::Hlc;
use crate::config::KvLimits;
use crate::observe::{Metrics, OperationLabels};
use crate::storage::{MvccBatch, Storage, StorageError, VersionedValue};

pub struct KvService {
    storage: Storage,
    hlc: Arc<Hlc>,
    limits: KvLimits,
    metrics: Arc<Metrics>,
}

/// A request refused before it touches storage, with the code the client sees.
struct Refusal(ErrorCode, String);

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        let code = match e {
            StorageError::Clock(_) => ErrorCode::Unavailable,
            // The client's key has no version numbers left: its request, not the node, is at fault.
            StorageError::VersionsExhausted { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        };
        Refusal(code, e.to_string())
    }
}

impl From<crate::clock::ClockError> for Refusal {
    fn from(e: crate::clock::ClockError) -> Self {
        Refusal(ErrorCode::Unavailable, e.to_string())
    }
}

impl KvService {
    pub fn new(storage: Storage, hlc: Arc<Hlc>, limits: KvLimits, metrics: Arc<Metrics>) -> Self {
        KvService { storage, hlc, limits, metrics }
    }

    /// Decodes one request and answers it; a malformed request gets an `INVALID_ARGUMENT` answer.
    pub async fn handle(self: &Arc<Self>, payload: Bytes) -> KvResponse {
        let request = match KvRequest::decode(payload) {
            Ok(request) => request,
            Err(e) => return error_response(0, ErrorCode::InvalidArgument, format!("malformed KvRequest: {e}")),
        };
        let request_id = request.request_id;
        let Some(op) = request.op else {
            return error_response(request_id, ErrorCode::InvalidArgument, "KvRequest names no operation".into());
        };
        let name = op_name(&op);
        let started = Instant::now();
        let service = Arc::clone(self);
        // Storage calls block on RocksDB (and fsync for writes): keep them off the async workers.
        let result = tokio::task::spawn_blocking(move || service.execute(op))
            .await
            .unwrap_or_else(|e| Err(Refusal(ErrorCode::Internal, format!("request task failed: {e}"))));
        self.metrics
            .kv_request_seconds
            .get_or_create(&OperationLabels { op: name })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => KvResponse { request_id, result: Some(result) },
            Err(Refusal(code, message)) => error_response(request_id, code, message),
        }
    }

    fn execute(&self, op: Op) -> Result<KvResult, Refusal> {
        match op {
            Op::Put(put) => {
                self.check_key(&put.key)?;
                if put.value.len() > self.limits.max_value_bytes {
                    return Err(Refusal(
                        ErrorCode::ValueTooLarge,
                        format!(
                            "value of {} bytes exceeds the limit of {} bytes",
                            put.value.len(),
                            self.limits.max_value_bytes
                        ),
                    ));
                }
                let mut batch = MvccBatch::default();
                batch.put(put.key, put.value);
                let (ts, versions) = self.storage.write_now(batch, &self.hlc)?;
                Ok(KvResult::Put(v1::PutResponse { version: versions[0], timestamp: Some(ts.into()) }))
            }
            Op::Get(get) => {
                self.check_key(&get.key)?;
                let found = match (get.version, get.at) {
                    (0, None) => self.storage.get_latest(&get.key)?,
                    (0, Some(at)) => self.storage.get_at(&get.key, at.into())?,
                    (version, None) => self.storage.get_version(&get.key, version)?,
                    (_, Some(_)) => {
                        return Err(Refusal(
                            ErrorCode::InvalidArgument,
                            "give a version or a timestamp, not both".into(),
                        ))
                    }
                };
                Ok(KvResult::Get(v1::GetResponse { value: found.map(versioned) }))
            }
            Op::Delete(delete) => {
                self.check_key(&delete.key)?;
                let mut batch = MvccBatch::default();
                batch.delete(delete.key);
                let (ts, _) = self.storage.write_now(batch, &self.hlc)?;
                Ok(KvResult::Delete(v1::DeleteResponse { timestamp: Some(ts.into()) }))
            }
            Op::Scan(scan) => {
                let limit = match scan.limit {
                    0 => self.limits.max_scan_limit,
                    n if n > self.limits.max_scan_limit => {
                        return Err(Refusal(
                            ErrorCode::ScanLimitExceeded,
                            format!("scan limit {n} exceeds the maximum of {}", self.limits.max_scan_limit),
                        ))
                    }
                    n => n,
                };
                let at = match scan.at {
                    Some(at) => at.into(),
                    None => self.hlc.now()?,
                };
                let end = (!scan.end.is_empty()).then_some(scan.end.as_slice());
                // One extra entry tells whether the limit cut the scan short.
                let mut rows = self.storage.scan(&scan.start, end, limit as usize + 1, at)?;
                let resume_key = if rows.len() > limit as usize {
                    rows.pop().map(|(key, _)| key).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let entries =
                    rows.into_iter().map(|(key, value)| v1::KeyValue { key, value: Some(versioned(value)) }).collect();
                Ok(KvResult::Scan(v1::ScanResponse { entries, resume_key }))
            }
            Op::ListVersions(list) => {
                self.check_key(&list.key)?;
                let versions = self
                    .storage
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
                let descriptor = self.storage.descriptor(&describe.key)?.map(|d| v1::KeyDescriptor {
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

    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        if key.len() > self.limits.max_key_bytes {
            return Err(Refusal(
                ErrorCode::KeyTooLarge,
                format!("key of {} bytes exceeds the limit of {} bytes", key.len(), self.limits.max_key_bytes),
            ));
        }
        Ok(())
    }
}

fn versioned(value: VersionedValue) -> v1::VersionedValue {
    v1::VersionedValue { value: value.value, version: value.version, timestamp: Some(value.ts.into()) }
}

fn error_response(request_id: u64, code: ErrorCode, message: String) -> KvResponse {
    KvResponse { request_id, result: Some(KvResult::Error(KvError { code: code.into(), message })) }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put(_) => "put",
        Op::Get(_) => "get",
        Op::Delete(_) => "delete",
        Op::Scan(_) => "scan",
        Op::ListVersions(_) => "list_versions",
        Op::Describe(_) => "describe",
    }
}
