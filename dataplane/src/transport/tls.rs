//! TLS for every PWP connection, mutual: a node presents a certificate naming its node id, a
//! client one naming its user (`pleiades_proto::identity`), and each side checks the other's
//! against the constellation's CA. Certificates come from files (`pleiades cert …`, the
//! operator) or, for a node started alone with no configuration, from a local CA it creates in
//! its data directory on first start, with an `admin` client certificate beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleiades_proto::certificate::Certified;
use pleiades_proto::identity::{Identity, Subject};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of PWP version 1.
pub const ALPN_PWP1: &[u8] = b"pwp/1";

/// Names every generated node certificate carries, so local clients can verify it.
const DEFAULT_SUBJECT_ALT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Lifetime of certificates issued without an explicit one.
pub const DEFAULT_CERT_DAYS: u32 = 365;
const CA_DAYS: u32 = 10 * 365;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable PEM {what}: {detail}")]
    Pem { path: PathBuf, what: &'static str, detail: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    #[error("certificate {path}: {detail}")]
    Certificate { path: PathBuf, detail: String },
}

/// A certificate chain and its private key.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// What a certificate says about itself, as far as Pleiades cares.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub renew_at: SystemTime,
    /// Every `pleiades://` SAN URI, parsed.
    pub identities: Vec<Identity>,
}

impl CertificateInfo {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let certified = Certified::from_der(der)?;
        let at = |unix: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or_default());
        Ok(CertificateInfo {
            not_before: at(certified.not_before),
            not_after: at(certified.not_after),
            renew_at: at(certified.renew_at()),
            identities: certified.identities()?,
        })
    }

    /// The one Pleiades identity the certificate names.
    pub fn identity(&self) -> Result<&Identity, String> {
        match self.identities.as_slice() {
            [one] => Ok(one),
            [] => Err("the certificate names no pleiades:// identity".into()),
            _ => Err("the certificate names more than one pleiades:// identity".into()),
        }
    }

    /// Past two thirds of its lifetime (or already expired): time to issue a new one.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at
    }

    /// Seconds until expiry; negative once expired.
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }
}

/// A certificate file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        load_certified_key(&self.cert, &self.key)
    }
}

pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(cert)?;
    let key_pem = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })?;
    Ok(CertifiedKey { chain, key })
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let pem_error = |detail: String| TlsError::Pem { path: path.to_owned(), what: "certificate", detail };
    let chain =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error("no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// The parsed leaf certificate of a PEM file.
pub fn certificate_info(path: &Path) -> Result<CertificateInfo, TlsError> {
    let chain = load_certificates(path)?;
    CertificateInfo::parse(&chain[0]).map_err(|detail| TlsError::Certificate { path: path.to_owned(), detail })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Writes through a temporary file and a rename, so a reader never sees half a certificate.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(&temporary).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&temporary, path).map_err(err)
}

/// A CA's certificate and key files.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        CaFiles { cert: dir.join("ca.crt"), key: dir.join("ca.key") }
    }

    /// Creates the CA unless both files exist; returns whether it created one.
    pub fn create(&self, name: &str) -> Result<bool, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        if self.cert.exists() && self.key.exists() {
            return Ok(false);
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, format!("Pleiades CA {name}"));
        set_lifetime(&mut params, CA_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&self.key, &key.serialize_pem(), true)?;
        write(&self.cert, &cert.pem(), false)?;
        Ok(true)
    }

    fn issuer(&self) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, TlsError> {
        let key_pem = String::from_utf8_lossy(&read(&self.key)?).into_owned();
        let cert_pem = String::from_utf8_lossy(&read(&self.cert)?).into_owned();
        let key = rcgen::KeyPair::from_pem(&key_pem)?;
        Ok(rcgen::Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// Issues a certificate for `identity`, valid for `days`, that also names `dns_names` (DNS
    /// names or IP addresses, which a server certificate needs for clients to verify it).
    pub fn issue(
        &self,
        identity: &Identity,
        dns_names: &[String],
        days: u32,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), TlsError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let issuer = self.issuer()?;
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        let uri = identity.uri().try_into().map_err(|e: rcgen::Error| e)?;
        params.subject_alt_names.push(SanType::URI(uri));
        let common_name = match &identity.subject {
            Subject::Node(id) => format!("node {id}"),
            Subject::User(name) => name.clone(),
        };
        params.distinguished_name.push(DnType::CommonName, common_name);
        // Nodes both accept and dial; users only dial.
        params.extended_key_usages = match identity.subject {
            Subject::Node(_) => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Subject::User(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        set_lifetime(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(key_path, &key.serialize_pem(), true)?;
        write(cert_path, &cert.pem(), false)
    }
}

fn set_lifetime(params: &mut rcgen::CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that trail the issuer's.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Where a node started with no TLS configuration keeps what it generates.
pub struct GeneratedPaths {
    pub ca: CaFiles,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl GeneratedPaths {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        GeneratedPaths {
            ca: CaFiles::in_dir(&dir),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
        }
    }
}

/// Whether the certificate at `path` is usable for `identity`: present, naming exactly it, and
/// not yet due for renewal.
pub fn is_current(path: &Path, identity: &Identity) -> bool {
    certificate_info(path).is_ok_and(|info| {
        info.identity().is_ok_and(|named| named == identity) && !info.due_for_renewal(SystemTime::now())
    })
}

/// For a node without configured certificate files: the local CA in `<data-dir>/tls` (created on
/// first start unless a CA was placed there), a node certificate for `identity` (issued again
/// when missing, naming someone else, or due for renewal) and an `admin` client certificate.
pub fn ensure_generated(paths: &GeneratedPaths, identity: &Identity, extra_names: &[String]) -> Result<(), TlsError> {
    paths.ca.create(&identity.constellation)?;
    if !is_current(&paths.node_cert, identity) {
        let mut names: Vec<String> = DEFAULT_SUBJECT_ALT_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(extra_names.iter().cloned());
        paths.ca.issue(identity, &names, DEFAULT_CERT_DAYS, &paths.node_cert, &paths.node_key)?;
    }
    let admin = Identity::user(&identity.constellation, "admin");
    if !is_current(&paths.admin_cert, &admin) {
        paths.ca.issue(&admin, &[], DEFAULT_CERT_DAYS, &paths.admin_cert, &paths.admin_key)?;
    }
    Ok(())
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(trusted: &[CertificateDer<'static>]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Transport settings shared by the node and its clients.
#[derive(Debug, Clone, Copy)]
pub struct QuicLimits {
    /// Streams the other end may open at once. quinn keeps two table entries per allowed
    /// stream for the connection's whole life, so this is most of a connection's memory.
    pub max_streams: u32,
    pub idle_timeout: Duration,
}

impl QuicLimits {
    /// For the dialling end: PWP streams are opened only by the dialler, never towards it.
    pub fn dialler(idle_timeout: Duration) -> Self {
        QuicLimits { max_streams: 0, idle_timeout }
    }
}

/// Received stream bytes QUIC buffers before the application reads them, per stream and per
/// connection. quinn's connection window is unbounded by default, so one connection whose
/// streams stop reading (the node's buffer budget is spent) could park any amount of data in
/// the transport; these bound it, and are ample for loopback and LAN round trips.
const STREAM_RECEIVE_WINDOW: u32 = 512 * 1024;
const CONNECTION_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;
/// Sent bytes not yet acknowledged, per connection (quinn's default is 10 MB).
const SEND_WINDOW: u64 = 2 * 1024 * 1024;
/// Datagrams buffered either way; gossip reads them at once and drops what it cannot take.
const DATAGRAM_BUFFER: usize = 64 * 1024;

fn transport_config(limits: &QuicLimits) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    transport.send_window(SEND_WINDOW);
    transport.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    transport.datagram_send_buffer_size(DATAGRAM_BUFFER);
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout).map_err(|e| TlsError::Quic(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(limits.idle_timeout / 3));
    Ok(Arc::new(transport))
}

/// Whether the server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    /// `--insecure`: certificates are taken when offered, never demanded.
    Optional,
}

/// The node's server side: its certificate, and the CA its callers' certificates must chain to.
pub fn server_config(
    identity: CertifiedKey,
    trusted: &[CertificateDer<'static>],
    client_auth: ClientAuth,
    limits: &QuicLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(root_store(trusted)?, crypto_provider());
    let verifier = match client_auth {
        ClientAuth::Required => verifier.build()?,
        ClientAuth::Optional => verifier.allow_unauthenticated().build()?,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN_PWP1.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(limits)?);
    Ok(config)
}

/// A client configuration that trusts exactly the given CA certificates and presents `identity`
/// (none only for a node run with `--insecure`, or a test of refusal).
pub fn client_config(
    trusted: &[CertificateDer<'static>],
    identity: Option<CertifiedKey>,
    limits: &QuicLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(trusted)?);
    let mut tls = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN_PWP1.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(limits)?);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_reused_and_names_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let paths = GeneratedPaths::in_data_dir(dir.path());
        let identity = Identity::node("local", 3);
        ensure_generated(&paths, &identity, &[]).unwrap();
        let first = load_certificates(&paths.node_cert).unwrap();
        ensure_generated(&paths, &identity, &[]).unwrap();
        assert_eq!(first, load_certificates(&paths.node_cert).unwrap(), "a restart must keep the node's identity");
        let info = certificate_info(&paths.node_cert).unwrap();
        assert_eq!(info.identity().unwrap(), &identity);
        assert!(!info.due_for_renewal(SystemTime::now()));
        assert!(info.seconds_left(SystemTime::now()) > 300 * 86_400);
        let admin = certificate_info(&paths.admin_cert).unwrap();
        assert_eq!(admin.identity().unwrap(), &Identity::user("local", "admin"));

        // Another node id in the same directory gets a certificate of its own.
        ensure_generated(&paths, &Identity::node("local", 4), &[]).unwrap();
        assert_eq!(certificate_info(&paths.node_cert).unwrap().identity().unwrap(), &Identity::node("local", 4));

        let ca = load_certificates(&paths.ca.cert).unwrap();
        let limits = QuicLimits { max_streams: 8, idle_timeout: Duration::from_secs(5) };
        let node = load_certified_key(&paths.node_cert, &paths.node_key).unwrap();
        server_config(node, &ca, ClientAuth::Required, &limits).unwrap();
        let admin = load_certified_key(&paths.admin_cert, &paths.admin_key).unwrap();
        client_config(&ca, Some(admin), &QuicLimits::dialler(Duration::from_secs(5))).unwrap();
    }

    #[test]
    fn renewal_comes_before_expiry_which_counts_down_past_zero() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertificateInfo {
            not_before: start,
            not_after: start + Duration::from_secs(90),
            renew_at: start + Duration::from_secs(60),
            identities: vec![Identity::node("c", 1)],
        };
        assert!(!info.due_for_renewal(start + Duration::from_secs(59)));
        assert!(info.due_for_renewal(start + Duration::from_secs(60)));
        assert_eq!(info.seconds_left(start + Duration::from_secs(100)), -10);
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let err = load_certificates(&bad).unwrap_err();
        assert!(err.to_string().contains("no usable PEM certificate"), "{err}");
        let err = load_certified_key(&bad, &bad).err().expect("garbage is no identity");
        assert!(err.to_string().contains("bad.pem"), "{err}");
    }
}
