//! The node's certificate files: which ones, checked to name this node, and reloaded when they
//! change on disk (an operator or cert-manager renewal, `pleiades cert` by hand) without a
//! restart: new connections use the new files, open ones carry on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleiades_proto::identity::Identity;
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use super::NodeError;
use crate::config::NodeConfig;
use crate::observe::{CertificateLabels, Metrics};
use crate::transport::pool::Peers;
use crate::transport::tls::{self, CertFiles, CertificateInfo, ClientAuth, GeneratedPaths, QuicLimits, TlsError};

/// How often the files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

pub struct NodeTls {
    identity: Identity,
    files: CertFiles,
    ca: PathBuf,
    /// Limits of accepted connections and of those dialled to peers.
    limits: QuicLimits,
    peer_limits: QuicLimits,
    insecure: bool,
}

/// The loaded files, checked.
pub struct Material {
    node: CertFiles,
    trusted: Vec<CertificateDer<'static>>,
    /// Modification times of (cert, key, ca), to notice a change.
    stamps: [Option<SystemTime>; 3],
}

impl NodeTls {
    /// The configured files, or the generated local CA and certificate (created or renewed now).
    pub fn resolve(
        config: &NodeConfig,
        node_id: u64,
        limits: QuicLimits,
        peer_limits: QuicLimits,
    ) -> Result<Self, NodeError> {
        let identity = Identity::node(&config.constellation.name, node_id);
        let generated = GeneratedPaths::in_data_dir(&config.data_dir);
        let files = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => CertFiles { cert: cert.clone(), key: key.clone() },
            _ => {
                tls::ensure_generated(&generated, &identity, &config.tls.subject_alt_names)?;
                CertFiles { cert: generated.node_cert.clone(), key: generated.node_key.clone() }
            }
        };
        let ca = config.tls.ca_cert.clone().unwrap_or(generated.ca.cert);
        Ok(NodeTls { identity, files, ca, limits, peer_limits, insecure: config.insecure })
    }

    fn stamps(&self) -> [Option<SystemTime>; 3] {
        let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        [modified(&self.files.cert), modified(&self.files.key), modified(&self.ca)]
    }

    /// Loads the files and checks that the certificate names this node of this constellation.
    pub fn load(&self) -> Result<Material, NodeError> {
        let stamps = self.stamps();
        let node = self.files.load()?;
        let info = CertificateInfo::parse(&node.chain[0])
            .map_err(|detail| TlsError::Certificate { path: self.files.cert.clone(), detail })?;
        let named =
            info.identity().map_err(|detail| TlsError::Certificate { path: self.files.cert.clone(), detail })?;
        if *named != self.identity {
            return Err(TlsError::Certificate {
                path: self.files.cert.clone(),
                detail: format!("it names {named}, but this node is {}", self.identity),
            }
            .into());
        }
        let trusted = tls::load_certificates(&self.ca)?;
        Ok(Material { node: self.files.clone(), trusted, stamps })
    }

    /// Sets `pleiades_tls_certificate_expiry_seconds` for the node certificate and the CA.
    pub fn export_expiry(&self, metrics: &Metrics) {
        let now = SystemTime::now();
        for (certificate, path) in [("node", &self.files.cert), ("ca", &self.ca)] {
            if let Ok(info) = tls::certificate_info(path) {
                metrics
                    .tls_certificate_expiry_seconds
                    .get_or_create(&CertificateLabels { certificate })
                    .set(info.seconds_left(now));
            }
        }
    }

    /// Checks the files every few seconds; when they changed and load cleanly, the endpoint
    /// and the peer pool take them for every new connection (accepted and dialled). Half-written or mismatched
    /// files are refused with a warning and the old ones stay in use.
    pub async fn watch(
        self,
        mut current: Material,
        endpoint: quinn::Endpoint,
        peers: Arc<Peers>,
        metrics: Arc<Metrics>,
    ) {
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        loop {
            tick.tick().await;
            self.export_expiry(&metrics);
            if self.stamps() == current.stamps {
                continue;
            }
            let reloaded = self.load().and_then(|material| {
                let server = self.server_config(&material)?;
                let client = self.client_config(&material)?;
                Ok((material, server, client))
            });
            match reloaded {
                Ok((material, server, client)) => {
                    endpoint.set_server_config(Some(server));
                    peers.set_client_config(client);
                    current = material;
                    metrics.tls_reloads.inc();
                    info!(cert = %self.files.cert.display(), "certificate files reloaded");
                }
                Err(e) => {
                    // Try again only after the next change.
                    current.stamps = self.stamps();
                    warn!(error = %e, "changed certificate files are unusable; keeping the previous ones");
                }
            }
        }
    }

    pub fn server_config(&self, material: &Material) -> Result<quinn::ServerConfig, NodeError> {
        let client_auth = if self.insecure { ClientAuth::Optional } else { ClientAuth::Required };
        Ok(tls::server_config(material.node.load()?, &material.trusted, client_auth, &self.limits)?)
    }

    /// For connections to other nodes.
    pub fn client_config(&self, material: &Material) -> Result<quinn::ClientConfig, NodeError> {
        Ok(tls::client_config(&material.trusted, Some(material.node.load()?), &self.peer_limits)?)
    }
}
