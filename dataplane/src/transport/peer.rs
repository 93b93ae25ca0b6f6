//! Who is at the other end of a connection, from its verified certificate, and the bookkeeping
//! of refusals (counted always, logged at most once a second per peer).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use pleiades_proto::identity::Subject;
use rustls::pki_types::CertificateDer;
use tracing::warn;

use super::tls::CertificateInfo;
use crate::observe::{Metrics, ServiceLabels};

/// The authenticated caller of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Node(u64),
    User(String),
    /// No certificate, accepted only by a node run with `--insecure`: allowed everything.
    Insecure,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(id) => write!(f, "node {id}"),
            Peer::User(name) => write!(f, "user {name}"),
            Peer::Insecure => write!(f, "an unauthenticated caller (--insecure)"),
        }
    }
}

/// Why a connection's certificate gives it no identity here.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("{0}")]
    Certificate(String),
    #[error("the certificate belongs to constellation {found:?}, not {expected:?}")]
    OtherConstellation { found: String, expected: String },
}

/// Reads the identity from a connection's verified certificate chain (rustls already checked
/// the chain against the CA, the validity period and the key usage during the handshake).
pub fn authenticate(connection: &quinn::Connection, constellation: &str, insecure: bool) -> Result<Peer, AuthError> {
    match leaf_certificate(connection) {
        Some(leaf) => identify(&leaf, constellation),
        None if insecure => Ok(Peer::Insecure),
        None => Err(AuthError::NoCertificate),
    }
}

/// The DER of the certificate the other end presented, if any.
pub fn leaf_certificate(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let chain = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|leaf| leaf.as_ref().to_vec())
}

/// The peer a leaf certificate names within `constellation`.
pub fn identify(leaf: &[u8], constellation: &str) -> Result<Peer, AuthError> {
    let info = CertificateInfo::parse(leaf).map_err(AuthError::Certificate)?;
    let identity = info.identity().map_err(AuthError::Certificate)?;
    if identity.constellation != constellation {
        return Err(AuthError::OtherConstellation {
            found: identity.constellation.clone(),
            expected: constellation.into(),
        });
    }
    Ok(match &identity.subject {
        Subject::Node(id) => Peer::Node(*id),
        Subject::User(name) => Peer::User(name.clone()),
    })
}

/// How many peers' last refusal times are remembered before the table starts afresh (a flood of
/// identities must not grow it without bound; forgetting only means one more log line).
const DENIAL_LOG_PEERS: usize = 4_096;

/// Counts refusals in `pleiades_permission_denied_total{service}` and logs each peer's at most
/// once a second.
#[derive(Default)]
pub struct Denials {
    last_logged: Mutex<HashMap<Peer, Instant>>,
}

impl Denials {
    pub fn record(&self, metrics: &Metrics, service: &'static str, peer: &Peer, reason: &str) {
        metrics.permission_denied.get_or_create(&ServiceLabels { service }).inc();
        let now = Instant::now();
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= DENIAL_LOG_PEERS {
            last.clear();
        }
        let due = last.get(peer).is_none_or(|at| now.duration_since(*at).as_secs() >= 1);
        if due {
            last.insert(peer.clone(), now);
            drop(last);
            warn!(%peer, service, reason, "permission denied");
        }
    }
}
