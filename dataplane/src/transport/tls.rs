//! TLS for every PWP connection: a node identity loaded from PEM files or, on first start, a
//! generated local CA plus a node certificate signed by it (so clients and, later, peers trust
//! one CA file rather than each node's certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// ALPN protocol id of PWP version 1.
pub const ALPN_PWP1: &[u8] = b"pwp/1";

/// Names every generated node certificate carries, so local clients can verify it.
const DEFAULT_SUBJECT_ALT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

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
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// A node's certificate chain and private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Where a generated identity lives inside the data directory.
pub struct GeneratedPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl GeneratedPaths {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        GeneratedPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
        }
    }
}

/// Loads the configured identity, or the generated one (creating it on first start).
pub fn node_identity(config: &TlsConfig, data_dir: &Path) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return load_identity(cert, key);
    }
    let paths = GeneratedPaths::in_data_dir(data_dir);
    if !paths.node_cert.exists() || !paths.node_key.exists() {
        generate_identity(&paths, &config.subject_alt_names)?;
    }
    load_identity(&paths.node_cert, &paths.node_key)
}

pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = load_certificates(cert)?;
    let key_pem = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })?;
    Ok(Identity { chain, key })
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

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Creates a local CA (reused if present) and a node certificate signed by it.
pub fn generate_identity(paths: &GeneratedPaths, extra_names: &[String]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    if let Some(dir) = paths.ca_cert.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
    }
    // Signing needs only the CA's name and key, so an existing CA is rebuilt from its key
    // rather than parsed from its certificate.
    let ca_params = || -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "Pleiades local CA");
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        Ok(params)
    };
    let ca_issuer = if paths.ca_cert.exists() && paths.ca_key.exists() {
        let key_pem = String::from_utf8_lossy(&read(&paths.ca_key)?).into_owned();
        Issuer::new(ca_params()?, KeyPair::from_pem(&key_pem)?)
    } else {
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        write(&paths.ca_key, &key.serialize_pem(), true)?;
        write(&paths.ca_cert, &cert.pem(), false)?;
        Issuer::new(params, key)
    };
    let mut names: Vec<String> = DEFAULT_SUBJECT_ALT_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "pleiades node");
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_issuer)?;
    write(&paths.node_key, &key.serialize_pem(), true)?;
    write(&paths.node_cert, &cert.pem(), false)
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings shared by the node and its clients.
pub struct QuicLimits {
    pub max_streams: u32,
    pub idle_timeout: Duration,
}

fn transport_config(limits: &QuicLimits) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout).map_err(|e| TlsError::Quic(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(limits.idle_timeout / 3));
    Ok(Arc::new(transport))
}

pub fn server_config(identity: Identity, limits: &QuicLimits) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN_PWP1.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(limits)?);
    Ok(config)
}

/// A client configuration that trusts exactly the given CA certificates.
pub fn client_config(
    trusted: &[CertificateDer<'static>],
    limits: &QuicLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
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
    fn generated_identity_is_reused_and_signed_by_a_stable_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_identity(&TlsConfig::default(), dir.path()).unwrap();
        let paths = GeneratedPaths::in_data_dir(dir.path());
        let ca = load_certificates(&paths.ca_cert).unwrap();
        let again = node_identity(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(first.chain, again.chain, "a restart must keep the node's identity");
        let limits = QuicLimits { max_streams: 8, idle_timeout: Duration::from_secs(5) };
        client_config(&ca, &limits).unwrap();
        server_config(again, &limits).unwrap();
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let err = load_certificates(&bad).unwrap_err();
        assert!(err.to_string().contains("no usable PEM certificate"), "{err}");
        let err = load_identity(&bad, &bad).err().expect("garbage is no identity");
        assert!(err.to_string().contains("bad.pem"), "{err}");
    }
}
