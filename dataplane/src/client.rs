//! The Rust client: [`Client`] is one QUIC connection to one node with PWP streams bound to a
//! service on it; [`cluster::Cluster`] routes requests across a constellation.

pub mod cluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pleiades_proto::payload_type;
use pleiades_proto::v1::{self, kv_request::Op, kv_response::Result as KvResult, KvRequest, KvResponse};
use pleiades_proto::wire::Service;

pub use crate::transport::stream::{dial, ClientError, PwpStream};
use crate::transport::tls::{self, CertFiles, QuicLimits};

pub struct ClientConfig {
    /// The node, as `host:port`.
    pub addr: String,
    /// Name the node's certificate must carry (default: the host part of `addr`).
    pub server_name: Option<String>,
    /// CA certificate(s) to trust, PEM.
    pub ca_cert: PathBuf,
    /// The client certificate naming the user, and its key; none only for a node run with
    /// `--insecure`.
    pub identity: Option<CertFiles>,
    /// Deadline of each request.
    pub timeout: Duration,
}

/// The QUIC client configuration trusting the CA in `ca_cert` and presenting `identity`.
pub fn quic_config(
    ca_cert: &std::path::Path,
    identity: Option<&CertFiles>,
    limits: &QuicLimits,
) -> Result<quinn::ClientConfig, ClientError> {
    let trusted = tls::load_certificates(ca_cert)?;
    let identity = identity.map(CertFiles::load).transpose()?;
    Ok(tls::client_config(&trusted, identity, limits)?)
}

/// A client endpoint on an ephemeral port, of the address family `addr` is most likely in.
pub fn client_endpoint(addr: &str) -> Result<quinn::Endpoint, ClientError> {
    let ipv6 = addr.starts_with('[');
    let bind: SocketAddr = if ipv6 { ([0u16; 8], 0).into() } else { ([0, 0, 0, 0], 0).into() };
    crate::transport::endpoint(bind, None)
        .map_err(|e| ClientError::Connect { addr: addr.to_string(), detail: format!("no local endpoint: {e}") })
}

/// A connection to one node.
pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    timeout: Duration,
}

impl Client {
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let limits = QuicLimits::dialler(Duration::from_secs(30));
        let quic = quic_config(&config.ca_cert, config.identity.as_ref(), &limits)?;
        let endpoint = client_endpoint(&config.addr)?;
        let connection = dial(&endpoint, quic, &config.addr, config.server_name.as_deref(), config.timeout).await?;
        Ok(Client { endpoint, connection, timeout: config.timeout })
    }

    /// Opens a stream bound to `service`, pipelining the whole setup (with a version check).
    pub async fn open(&self, service: Service) -> Result<PwpStream, ClientError> {
        PwpStream::open(&self.connection, service, self.timeout).await
    }

    pub async fn system(&self) -> Result<SystemClient, ClientError> {
        Ok(SystemClient(self.open(Service::System).await?))
    }

    /// The QUIC connection itself (for datagrams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    pub async fn kv(&self) -> Result<KvClient, ClientError> {
        Ok(KvClient { stream: self.open(Service::Kv).await?, next_request_id: 1 })
    }

    pub async fn close(self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// System service calls.
pub struct SystemClient(pub PwpStream);

impl SystemClient {
    pub async fn node_info(&mut self) -> Result<v1::NodeInfoResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(NODE_INFO_REQUEST, &v1::NodeInfoRequest {}, NODE_INFO_RESPONSE, "NodeInfoResponse").await
    }

    pub async fn range_status(&mut self) -> Result<v1::RangeStatusResponse, ClientError> {
        use payload_type::system::*;
        let request = v1::RangeStatusRequest {};
        self.0.call_proto(RANGE_STATUS_REQUEST, &request, RANGE_STATUS_RESPONSE, "RangeStatusResponse").await
    }

    pub async fn decommission(&mut self, node_id: u64) -> Result<v1::DecommissionResponse, ClientError> {
        use payload_type::system::*;
        let request = v1::DecommissionRequest { node_id };
        self.0.call_proto(DECOMMISSION_REQUEST, &request, DECOMMISSION_RESPONSE, "DecommissionResponse").await
    }

    /// Splits, relocates or moves the leadership of a range; answered when done.
    pub async fn range_admin(
        &mut self,
        request: &v1::RangeAdminRequest,
    ) -> Result<v1::RangeAdminResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(RANGE_ADMIN_REQUEST, request, RANGE_ADMIN_RESPONSE, "RangeAdminResponse").await
    }

    pub async fn health(&mut self) -> Result<v1::HealthResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(HEALTH_REQUEST, &v1::HealthRequest {}, HEALTH_RESPONSE, "HealthResponse").await
    }

    /// The gossip membership as the node sees it.
    pub async fn members(&mut self) -> Result<v1::MembersResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(MEMBERS_REQUEST, &v1::MembersRequest {}, MEMBERS_RESPONSE, "MembersResponse").await
    }

    /// Raises a query event through the node; answers arrive when it closes (allow `timeout`).
    pub async fn query(&mut self, request: &v1::QueryRequest) -> Result<v1::QueryResponse, ClientError> {
        use payload_type::system::*;
        self.0.call_proto(QUERY_REQUEST, request, QUERY_RESPONSE, "QueryResponse").await
    }
}

/// KV service calls on one stream.
pub struct KvClient {
    stream: PwpStream,
    next_request_id: u64,
}

impl KvClient {
    /// Sends one operation and returns its result; a KV error becomes [`ClientError::Kv`].
    pub async fn request(&mut self, op: Op) -> Result<KvResult, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = KvRequest { request_id, op: Some(op), ..Default::default() };
        let response: KvResponse = self
            .stream
            .call_proto(payload_type::kv::REQUEST, &request, payload_type::kv::RESPONSE, "KvResponse")
            .await?;
        if response.request_id != request_id {
            return Err(ClientError::Read(format!(
                "answer to request {} arrived for {request_id}",
                response.request_id
            )));
        }
        match response.result {
            Some(KvResult::Error(e)) => Err(ClientError::Kv { code: e.code(), message: e.message }),
            Some(result) => Ok(result),
            None => Err(ClientError::Decode { message: "KvResponse", detail: "no result".into() }),
        }
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<v1::PutResponse, ClientError> {
        match self.request(Op::Put(v1::PutRequest { key: key.to_vec(), value: value.to_vec() })).await? {
            KvResult::Put(r) => Ok(r),
            _ => Err(mismatched("put")),
        }
    }

    pub async fn get(&mut self, key: &[u8], version: u32) -> Result<Option<v1::VersionedValue>, ClientError> {
        let get = v1::GetRequest { key: key.to_vec(), version, ..Default::default() };
        match self.request(Op::Get(get)).await? {
            KvResult::Get(r) => Ok(r.value),
            _ => Err(mismatched("get")),
        }
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<v1::DeleteResponse, ClientError> {
        match self.request(Op::Delete(v1::DeleteRequest { key: key.to_vec() })).await? {
            KvResult::Delete(r) => Ok(r),
            _ => Err(mismatched("delete")),
        }
    }

    pub async fn scan(&mut self, start: &[u8], end: &[u8], limit: u32) -> Result<v1::ScanResponse, ClientError> {
        let scan = v1::ScanRequest { start: start.to_vec(), end: end.to_vec(), limit, ..Default::default() };
        match self.request(Op::Scan(scan)).await? {
            KvResult::Scan(r) => Ok(r),
            _ => Err(mismatched("scan")),
        }
    }

    pub async fn versions(&mut self, key: &[u8]) -> Result<Vec<v1::VersionInfo>, ClientError> {
        match self
            .request(Op::ListVersions(v1::ListVersionsRequest { key: key.to_vec(), ..Default::default() }))
            .await?
        {
            KvResult::ListVersions(r) => Ok(r.versions),
            _ => Err(mismatched("list_versions")),
        }
    }

    pub async fn describe(&mut self, key: &[u8]) -> Result<Option<v1::KeyDescriptor>, ClientError> {
        match self.request(Op::Describe(v1::DescribeKeyRequest { key: key.to_vec(), ..Default::default() })).await? {
            KvResult::Describe(r) => Ok(r.descriptor),
            _ => Err(mismatched("describe")),
        }
    }
}

fn mismatched(op: &'static str) -> ClientError {
    ClientError::Decode { message: "KvResponse", detail: format!("the answer to a {op} is of another operation") }
}
