//! This pod's own certificate. The pod makes its key on its data volume (it never leaves the
//! pod), puts a CSR in its member entry of the Constellation's status, and waits for the
//! operator (or cert-manager, through the operator) to write a certificate for that key into the
//! same entry. The certificate is checked — this key, this node's identity URI, signed by the
//! constellation's CA, in its validity period — before it is used. It is renewed the same way at
//! two thirds of its lifetime.
//!
//! On disk, under `<data-dir>/tls/`, `node.crt` and `node.key` are symlinks into `current/`,
//! itself a symlink to the directory holding the pair in use; a renewal writes a new directory
//! and swaps `current` with one rename, so a reader never sees a new key with an old certificate
//! (the kubelet updates mounted Secrets the same way). `pending.key` is the key waiting for its
//! certificate, kept across restarts so a certificate issued meanwhile still fits.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use pleiades_crds::Constellation;
use pleiades_proto::certificate::{signed_by, Certified};
use pleiades_proto::identity::Identity;
use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
use tracing::{info, warn};

use super::Pod;
use crate::config::{KubernetesConfig, NodeConfig};

/// How often the pod looks for its certificate while it waits.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How often the CSR is applied again while waiting (an entry dropped meanwhile is recreated),
/// and a waiting line logged.
const REMIND_EVERY: Duration = Duration::from_secs(30);
/// How long a starting node waits for its first certificate before it gives up (and the pod
/// restarts, which shows in its status).
const FIRST_CERTIFICATE_TIMEOUT: Duration = Duration::from_secs(600);
/// A running node checks its certificate at least this often (a CA change, a clock jump).
const RECHECK_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no Kubernetes API access to request a certificate: {0}")]
    Api(#[from] kube::Error),
    #[error("certificate files in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("making a key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no valid certificate for this pod after {0:?}; the Constellation's CertificatesReady condition says why")]
    Timeout(Duration),
}

/// Where the node's certificate, key and trusted CA are.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: PathBuf,
}

impl CertPaths {
    fn in_dir(dir: &Path, ca_cert: PathBuf) -> CertPaths {
        CertPaths { cert: dir.join("node.crt"), key: dir.join("node.key"), ca_cert }
    }
}

/// Checks that `cert_pem` certifies `key`, names `uri`, is valid at `now` (unix seconds) and,
/// when the CA is known, was signed by it.
pub fn check(cert_pem: &str, key: &KeyPair, uri: &str, ca_pem: Option<&str>, now: i64) -> Result<Certified, String> {
    let info = Certified::from_pem(cert_pem)?;
    if info.public_key != key.subject_public_key_info() {
        return Err("it certifies another key".into());
    }
    if info.uris != [uri] {
        return Err(format!("it names {:?}, not {uri}", info.uris));
    }
    if now < info.not_before || now >= info.not_after {
        return Err("it is not valid now".into());
    }
    if let Some(ca_pem) = ca_pem {
        signed_by(cert_pem, ca_pem)?;
    }
    Ok(info)
}

/// A CSR for `key` asking for exactly what the operator issues this pod (cert-manager signs a
/// CSR as it stands, so it must be exact).
pub fn csr(key: &KeyPair, uri: &str, dns_names: Vec<String>) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(dns_names)?;
    params.subject_alt_names.push(SanType::URI(uri.to_string().try_into()?));
    params.serialize_request(key)?.pem()
}

/// Keeps this pod's certificate: obtains it before the node serves, renews it while it runs.
pub struct Certifier {
    pod: Pod,
    constellation: String,
    uri: String,
    dns_names: Vec<String>,
    store: Store,
    api: Api<Constellation>,
}

/// The certificate files under `<data-dir>/tls/`.
struct Store {
    dir: PathBuf,
    paths: CertPaths,
}

/// Obtains a valid certificate for this pod (waiting, bounded, for the operator when there is
/// none) and points `config.tls` at it; run the returned `Certifier` to renew it.
pub async fn ensure_certificate(
    config: &mut NodeConfig,
    k8s: &KubernetesConfig,
    pod: &Pod,
) -> Result<Certifier, CertificateError> {
    let client = kube::Client::try_default().await?;
    let node_id = config.node_id.unwrap_or(u64::from(pod.ordinal) + 1);
    let dir = config.data_dir.join("tls");
    // The operator's CA, from the mounted ConfigMap; configured by the operator's node.toml.
    let ca_cert = config.tls.ca_cert.clone().unwrap_or_else(|| dir.join("ca.crt"));
    let certifier = Certifier {
        pod: pod.clone(),
        constellation: k8s.constellation.clone(),
        uri: Identity::node(&pleiades_crds::identity_constellation(&k8s.constellation, &pod.namespace), node_id).uri(),
        dns_names: pleiades_crds::node_dns_names(&pod.name, &k8s.peer_service, &k8s.client_service, &pod.namespace),
        store: Store { paths: CertPaths::in_dir(&dir, ca_cert), dir },
        api: Api::namespaced(client, &pod.namespace),
    };
    let store = &certifier.store;
    std::fs::create_dir_all(&store.dir).map_err(|source| store.io(source))?;
    match store.installed(&certifier.uri) {
        // A certificate past two thirds still serves: start with it and renew in the
        // background, so a restart during an operator outage does not take the node down.
        Ok(info) => info!(renew_at = info.renew_at(), "using this pod's certificate"),
        Err(why) => {
            info!(%why, "this pod has no usable certificate: requesting one");
            tokio::time::timeout(FIRST_CERTIFICATE_TIMEOUT, certifier.request())
                .await
                .map_err(|_| CertificateError::Timeout(FIRST_CERTIFICATE_TIMEOUT))??;
        }
    }
    config.tls.cert = Some(store.paths.cert.clone());
    config.tls.key = Some(store.paths.key.clone());
    config.tls.ca_cert = Some(store.paths.ca_cert.clone());
    Ok(certifier)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Certifier {
    /// Renews the certificate at two thirds of its lifetime, until the task is aborted.
    pub async fn run(self) {
        loop {
            let wait = match self.store.installed(&self.uri) {
                Ok(info) => Duration::from_secs(info.renew_at().saturating_sub(now()).max(0) as u64),
                Err(why) => {
                    warn!(%why, "this pod's certificate no longer fits: requesting a new one");
                    Duration::ZERO
                }
            };
            if wait > Duration::ZERO {
                tokio::time::sleep(wait.min(RECHECK_EVERY)).await;
                continue;
            }
            info!("renewing this pod's certificate");
            if let Err(error) = self.request().await {
                warn!(%error, "certificate renewal failed; retrying");
                tokio::time::sleep(REMIND_EVERY).await;
            }
        }
    }

    /// Asks for a certificate for the pending key (made now if there is none) and installs it
    /// once the operator has written one that checks out.
    async fn request(&self) -> Result<(), CertificateError> {
        let store = &self.store;
        let pending = store.dir.join("pending.key");
        let key = match read(&pending).and_then(|pem| KeyPair::from_pem(&pem).ok()) {
            Some(key) => key,
            None => {
                let key = KeyPair::generate()?;
                write_private(&pending, key.serialize_pem().as_bytes()).map_err(|source| store.io(source))?;
                key
            }
        };
        let csr = csr(&key, &self.uri, self.dns_names.clone())?;
        let params = PatchParams::apply(&format!("{}/certificate", super::field_manager(&self.pod.name))).force();
        let body =
            super::member_entry_apply(&self.constellation, serde_json::json!({"pod": self.pod.name, "csr": csr}));
        let mut last_applied: Option<tokio::time::Instant> = None;
        loop {
            if last_applied.is_none_or(|at| at.elapsed() >= REMIND_EVERY) {
                match self.api.patch_status(&self.constellation, &params, &Patch::Apply(&body)).await {
                    Ok(_) => info!("asked the operator to sign this pod's certificate; waiting"),
                    Err(error) => warn!(%error, "cannot put this pod's CSR in its status entry"),
                }
                last_applied = Some(tokio::time::Instant::now());
            }
            match self.api.get_status(&self.constellation).await {
                Ok(cst) => {
                    let members = cst.status.map(|s| s.members).unwrap_or_default();
                    let issued = members.into_iter().find(|m| m.pod == self.pod.name).and_then(|m| m.certificate);
                    if let Some(cert) = issued {
                        let ca = read(&store.paths.ca_cert);
                        match (ca, check(&cert, &key, &self.uri, None, now())) {
                            (Some(ca), Ok(_)) => match check(&cert, &key, &self.uri, Some(&ca), now()) {
                                Ok(_) => return store.install(&cert, &key, &pending),
                                Err(why) => warn!(%why, "the certificate in this pod's entry is refused"),
                            },
                            // The CA ConfigMap reaches the mount up to a minute after it changes.
                            (None, Ok(_)) => {
                                info!(ca = %store.paths.ca_cert.display(), "waiting for the CA certificate")
                            }
                            // Most likely the certificate for the previous key: the operator has
                            // not answered this CSR yet.
                            (_, Err(_)) => {}
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot read the Constellation"),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Store {
    fn io(&self, source: std::io::Error) -> CertificateError {
        CertificateError::Io { path: self.dir.clone(), source }
    }

    /// The installed certificate, if it still fits this pod.
    fn installed(&self, uri: &str) -> Result<Certified, String> {
        let cert = read(&self.paths.cert).ok_or("no certificate")?;
        let key = read(&self.paths.key).ok_or("no key")?;
        let key = KeyPair::from_pem(&key).map_err(|e| format!("unreadable key: {e}"))?;
        let ca = read(&self.paths.ca_cert);
        check(&cert, &key, uri, ca.as_deref(), now())
    }

    /// Writes the pair into a new directory and switches `current` to it with one rename.
    fn install(&self, cert: &str, key: &KeyPair, pending: &Path) -> Result<(), CertificateError> {
        let io = |source| self.io(source);
        let generation = format!("pair-{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos());
        let target = self.dir.join(&generation);
        std::fs::create_dir_all(&target).map_err(io)?;
        write_private(&target.join("node.key"), key.serialize_pem().as_bytes()).map_err(io)?;
        write_private(&target.join("node.crt"), cert.as_bytes()).map_err(io)?;
        let next = self.dir.join("current.next");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(&generation, &next).map_err(io)?;
        std::fs::rename(&next, self.dir.join("current")).map_err(io)?;
        for file in ["node.crt", "node.key"] {
            let link = self.dir.join(file);
            if std::fs::read_link(&link).is_err() {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(Path::new("current").join(file), &link).map_err(io)?;
            }
        }
        std::fs::remove_file(pending).map_err(io)?;
        // Earlier pairs are no longer referenced.
        for entry in std::fs::read_dir(&self.dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("pair-") && name != generation.as_str() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        info!(cert = %self.paths.cert.display(), "installed this pod's new certificate");
        Ok(())
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Writes a file readable by this user only, durably.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa, Issuer, KeyUsagePurpose};

    use super::*;

    const URI: &str = "pleiades://demo.db/node/2";

    struct TestCa {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { pem, issuer: Issuer::new(params, key) }
    }

    /// Signs `key` for `uri`, valid from `start` for `days`, as the operator would.
    fn issue(ca: &TestCa, key: &KeyPair, uri: &str, start: time::OffsetDateTime, days: i64) -> String {
        let mut params = CertificateParams::new(vec!["demo-1.demo-peers.db.svc".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.to_string().try_into().unwrap()));
        params.not_before = start;
        params.not_after = start + time::Duration::days(days);
        params.signed_by(key, &ca.issuer).unwrap().pem()
    }

    #[test]
    fn a_certificate_fits_only_this_key_this_node_and_this_ca() {
        let (ca, key, other_key) = (ca(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = issue(&ca, &key, URI, start, 90);
        let info = check(&cert, &key, URI, Some(&ca.pem), now()).unwrap();
        assert_eq!(info.not_after - info.not_before, 90 * 86400);

        assert!(check(&cert, &other_key, URI, Some(&ca.pem), now()).unwrap_err().contains("another key"));
        let node_3 = issue(&ca, &key, "pleiades://demo.db/node/3", start, 90);
        assert!(check(&node_3, &key, URI, Some(&ca.pem), now()).unwrap_err().contains("names"));
        assert!(check(&cert, &key, URI, Some(&self::ca().pem), now()).unwrap_err().contains("did not sign"));
        let expired = issue(&ca, &key, URI, start - time::Duration::days(100), 90);
        assert!(check(&expired, &key, URI, Some(&ca.pem), now()).unwrap_err().contains("not valid now"));
        assert!(check("junk", &key, URI, None, now()).is_err());
    }

    #[test]
    fn the_csr_asks_for_exactly_the_names_the_operator_issues() {
        let key = KeyPair::generate().unwrap();
        let names = pleiades_crds::node_dns_names("demo-1", "demo-peers", "demo", "db");
        let pem = csr(&key, URI, names.clone()).unwrap();
        let request = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        for name in &request.params.subject_alt_names {
            match name {
                SanType::DnsName(d) => dns.push(d.as_str().to_string()),
                SanType::URI(u) => uris.push(u.as_str().to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((dns, uris), (names, vec![URI.to_string()]));
        assert_eq!(rcgen::PublicKeyData::der_bytes(&request.public_key), key.der_bytes());
    }

    #[test]
    fn a_new_pair_replaces_the_old_one_in_one_step_and_keys_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::in_dir(dir.path(), dir.path().join("ca.crt"));
        let store = Store { dir: dir.path().to_path_buf(), paths: paths.clone() };
        let ca = ca();
        std::fs::write(&paths.ca_cert, &ca.pem).unwrap();
        assert!(store.installed(URI).unwrap_err().contains("no certificate"));

        let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        for round in 0..2 {
            let key = KeyPair::generate().unwrap();
            let pending = dir.path().join("pending.key");
            write_private(&pending, key.serialize_pem().as_bytes()).unwrap();
            store.install(&issue(&ca, &key, URI, start, 90), &key, &pending).unwrap();
            assert!(store.installed(URI).is_ok(), "round {round}");
            assert_eq!(std::fs::read_to_string(&paths.key).unwrap(), key.serialize_pem());
            assert!(!pending.exists());
            let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let pairs = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pair-"))
            .count();
        assert_eq!(pairs, 1, "the old pair is removed");
    }
}
