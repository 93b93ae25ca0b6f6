//! The self-signed TLS Secret: a CA for the constellation and one certificate every node
//! presents, naming each pod behind the peer Service and the client Service. The CA's key never
//! leaves the operator, so pods cannot mint certificates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use pleiades_crds::Constellation;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::desired::{labels, Names};

pub fn self_signed_secret(cst: &Constellation, names: &Names) -> Result<Secret, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, format!("Pleiades CA {}/{}", names.namespace, names.constellation));
    ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut node = CertificateParams::new(names.dns_names())?;
    node.distinguished_name.push(DnType::CommonName, format!("{}.{}", names.constellation, names.namespace));
    node.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let node_key = KeyPair::generate()?;
    let node_cert = node.signed_by(&node_key, &issuer)?;

    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(names.tls_secret()),
            namespace: cst.namespace(),
            labels: Some(labels(cst)),
            owner_references: cst.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("ca.crt".to_string(), ca_cert.pem()),
            ("tls.crt".to_string(), node_cert.pem()),
            ("tls.key".to_string(), node_key.serialize_pem()),
        ])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use pleiades_crds::ConstellationSpec;

    use super::*;

    #[test]
    fn the_secret_holds_a_ca_and_a_node_certificate_for_every_pod_name() {
        let mut cst = Constellation::new("demo", ConstellationSpec::default());
        cst.metadata.namespace = Some("db".into());
        cst.metadata.uid = Some("uid".into());
        let secret = self_signed_secret(&cst, &Names::of(&cst)).unwrap();
        let data = secret.string_data.unwrap();
        assert!(data["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(data["tls.key"].contains("PRIVATE KEY"));
        assert!(!data.values().any(|v| v.contains("CA PRIVATE")), "only the node key is stored");
        assert_eq!(secret.metadata.owner_references.unwrap()[0].kind, "Constellation");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    }
}
