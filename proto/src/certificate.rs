//! What a certificate says of its holder, read the same way by the node's transport, the node on
//! Kubernetes and the operator: its key, its SAN URIs (where identities live) and its validity.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::identity::{Identity, SCHEME};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The DER of the subject public key info.
    pub public_key: Vec<u8>,
    /// Every URI among the subject alternative names.
    pub uris: Vec<String>,
    /// Validity, in unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Certified {
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        Ok(Self::read(&cert))
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
        let cert = block.parse_x509().map_err(|e| format!("not a certificate: {e}"))?;
        Ok(Self::read(&cert))
    }

    fn read(cert: &X509Certificate<'_>) -> Self {
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Certified {
            public_key: cert.public_key().raw.to_vec(),
            uris,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        }
    }

    /// The `pleiades://` identities it names; a malformed one is an error, not skipped.
    pub fn identities(&self) -> Result<Vec<Identity>, String> {
        let ours = self.uris.iter().filter(|uri| uri.starts_with(SCHEME));
        ours.map(|uri| Identity::parse(uri).map_err(|e| e.to_string())).collect()
    }

    /// Two thirds into the lifetime (unix seconds): a third is left to renew through an outage.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// Whether the certificate in `cert_pem` was signed by the one in `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> Result<(), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("not a certificate: {e}"))?;
    let (_, ca_block) =
        x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|e| format!("the CA is not PEM: {e}"))?;
    let ca = ca_block.parse_x509().map_err(|e| format!("the CA is not a certificate: {e}"))?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| "the constellation's CA did not sign it".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let certified = Certified { public_key: Vec::new(), uris: Vec::new(), not_before: 1_000, not_after: 1_090 };
        assert_eq!(certified.renew_at(), 1_060);
    }

    #[test]
    fn identities_are_the_pleiades_uris_and_a_malformed_one_is_an_error() {
        let mut certified = Certified {
            public_key: Vec::new(),
            uris: vec!["https://example.com".into(), "pleiades://c/node/3".into()],
            not_before: 0,
            not_after: 1,
        };
        assert_eq!(certified.identities().unwrap(), [Identity::node("c", 3)]);
        certified.uris.push("pleiades://c/node/x".into());
        assert!(certified.identities().is_err());
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(Certified::from_der(b"nope").is_err());
        assert!(Certified::from_pem("nope").is_err());
    }
}
