//! Certificates on Kubernetes, as pure functions. Each pod makes its own key, which never leaves
//! the pod, and asks for a certificate with a CSR in its status entry. The operator issues it
//! from what it knows about the pod — the identity URI of its ordinal's node id and its DNS
//! names — never from the names the CSR asks for, signed by the constellation's CA (kept in a
//! Secret only the operator reads) or, when configured, by cert-manager. The CA certificate is
//! public and goes to a ConfigMap every pod mounts.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use pleiades_crds::{Constellation, IssuerRef};
use pleiades_proto::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::desired::{meta, Names};

/// The client certificate the operator issues for the user, in the Secret `<name>-admin-tls`.
pub const ADMIN_USER: &str = "admin";
const CA_LIFETIME: Duration = Duration::days(3650);
/// Certificates start a little in the past: a node whose clock lags the operator's must still
/// accept a fresh one.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA Secret {secret} is unusable: {detail}")]
    BadCa { secret: String, detail: String },
}

/// What a pod's certificate names: decided by the operator from the pod's ordinal.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSubject {
    pub pod: String,
    pub uri: String,
    pub dns_names: Vec<String>,
}

/// The subject of pod `pod`, when it is `<constellation>-<ordinal>` with an ordinal below `pods`.
pub fn node_subject(names: &Names, pod: &str, pods: i32, retired: &[i64]) -> Option<NodeSubject> {
    let ordinal = crate::plan::ordinal(names, pod).filter(|o| (0..pods).contains(o))?;
    let node_id = pleiades_crds::node_id_for(ordinal, retired);
    Some(NodeSubject {
        pod: pod.into(),
        uri: Identity::node(&identity_constellation(names), node_id).uri(),
        dns_names: pleiades_crds::node_dns_names(pod, &names.peer_service(), &names.client_service(), &names.namespace),
    })
}

pub fn admin_uri(names: &Names) -> String {
    Identity::user(&identity_constellation(names), ADMIN_USER).uri()
}

fn identity_constellation(names: &Names) -> String {
    pleiades_crds::identity_constellation(&names.constellation, &names.namespace)
}

/// A pod's signing request whose self-signature checked out.
pub struct Csr {
    request: CertificateSigningRequestParams,
    /// The DER SubjectPublicKeyInfo: what a certificate must carry to answer this request.
    pub public_key: Vec<u8>,
}

/// Parses a PEM CSR and verifies its self-signature (proof the pod holds the key).
pub fn parse_csr(pem: &str) -> Result<Csr, String> {
    let request = CertificateSigningRequestParams::from_pem(pem).map_err(|e| format!("not a valid signed CSR: {e}"))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not a PEM CSR: {e}"))?;
    let (_, parsed) = X509CertificationRequest::from_der(&block.contents).map_err(|e| format!("not a DER CSR: {e}"))?;
    Ok(Csr { public_key: parsed.certification_request_info.subject_pki.raw.to_vec(), request })
}

impl Csr {
    /// cert-manager signs a CSR as it stands, so on that path the CSR must ask for exactly the
    /// names the operator would issue itself, and nothing else.
    pub fn asks_for_exactly(&self, subject: &NodeSubject) -> Result<(), String> {
        let mut uris = BTreeSet::new();
        let mut dns = BTreeSet::new();
        for name in &self.request.params.subject_alt_names {
            match name {
                SanType::URI(uri) => uris.insert(uri.as_str().to_string()),
                SanType::DnsName(name) => dns.insert(name.as_str().to_string()),
                other => return Err(format!("asks for {other:?}, which a node certificate never carries")),
            };
        }
        if uris != BTreeSet::from([subject.uri.clone()]) {
            return Err(format!("asks for URIs {uris:?}, not [{:?}]", subject.uri));
        }
        let expected: BTreeSet<String> = subject.dns_names.iter().cloned().collect();
        if dns != expected {
            return Err(format!("asks for DNS names {dns:?}, not {expected:?}"));
        }
        Ok(())
    }
}

/// The parts of an issued certificate the operator decides on.
pub type CertInfo = pleiades_proto::certificate::Certified;

pub fn inspect_certificate(pem: &str) -> Option<CertInfo> {
    CertInfo::from_pem(pem).ok()
}

/// Renew at two thirds of the lifetime: a third is left to retry through an outage.
pub fn renewal_due(info: &CertInfo, now: OffsetDateTime) -> bool {
    now.unix_timestamp() >= info.renew_at()
}

pub fn lifetime(cst: &Constellation) -> Duration {
    Duration::days(i64::from(cst.spec.tls.certificate_lifetime_days.max(1)))
}

/// The constellation's CA: its certificate and the key that signs the pods' certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn generate(names: &Names, now: OffsetDateTime) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Pleiades CA {}/{}", names.namespace, names.constellation));
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca { cert_pem, key_pem, issuer: Issuer::new(params, key) })
    }

    pub fn from_secret(secret: &Secret, name: &str) -> Result<Ca, CertError> {
        let bad = |detail: &str| CertError::BadCa { secret: name.into(), detail: detail.into() };
        let data = secret.data.as_ref().ok_or_else(|| bad("no data"))?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
                .ok_or_else(|| bad(&format!("no {key}")))
        };
        let (cert_pem, key_pem) = (text("tls.crt")?, text("tls.key")?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&format!("tls.key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&format!("tls.crt: {e}")))?;
        Ok(Ca { cert_pem, key_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The Secret `<name>-ca`: the CA's key, readable by the operator alone.
    pub fn secret(&self, cst: &Constellation, names: &Names) -> Secret {
        Secret {
            metadata: meta(cst, names.ca()),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(self.cert_pem.clone().into_bytes())),
                ("tls.key".to_string(), ByteString(self.key_pem.clone().into_bytes())),
            ])),
            ..Default::default()
        }
    }

    /// A certificate for the key in `csr` naming `subject`; whatever else the CSR asks for is ignored.
    pub fn issue_node(
        &self,
        subject: &NodeSubject,
        csr: &Csr,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<String, CertError> {
        let mut params = CertificateParams::new(subject.dns_names.clone())?;
        params.subject_alt_names.push(SanType::URI(subject.uri.clone().try_into()?));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject.pod.clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &csr.request.public_key, lifetime, now)
    }

    /// The `admin` client certificate and its key (which goes to the user's Secret).
    pub fn issue_admin(
        &self,
        names: &Names,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(String, String), CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names.push(SanType::URI(admin_uri(names).try_into()?));
        params.distinguished_name.push(DnType::CommonName, ADMIN_USER);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        Ok((self.sign(params, &key, lifetime, now)?, key.serialize_pem()))
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<String, CertError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }
}

/// The ConfigMap `<name>-ca` the pods mount: the CA certificate they trust their peers by.
pub fn ca_config_map(cst: &Constellation, names: &Names, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(cst, names.ca()),
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// The Secret `<name>-admin-tls` the user reads the `admin` client certificate from.
pub fn admin_secret(cst: &Constellation, names: &Names, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    Secret {
        metadata: meta(cst, names.admin_secret()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(ca_pem)),
            ("tls.crt".to_string(), bytes(cert_pem)),
            ("tls.key".to_string(), bytes(key_pem)),
        ])),
        ..Default::default()
    }
}

pub fn certificate_request_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    )
}

pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

/// One request per CSR: a new CSR (a renewal) gets a new name, as a request's spec is immutable.
pub fn certificate_request_name(pod: &str, csr_pem: &str) -> String {
    let digest = Sha256::digest(csr_pem.as_bytes());
    let suffix: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("{pod}-{suffix}")
}

fn duration(lifetime: Duration) -> String {
    format!("{}h", lifetime.whole_hours())
}

fn issuer(issuer: &IssuerRef) -> serde_json::Value {
    json!({"name": issuer.name, "kind": issuer.kind, "group": issuer.group})
}

/// A cert-manager CertificateRequest carrying the pod's own CSR (already checked to ask for
/// exactly the pod's names).
pub fn certificate_request(cst: &Constellation, pod: &str, csr_pem: &str, issuer_ref: &IssuerRef) -> DynamicObject {
    let name = certificate_request_name(pod, csr_pem);
    let mut object = DynamicObject::new(&name, &certificate_request_resource()).data(json!({
        "spec": {
            "request": ByteString(csr_pem.as_bytes().to_vec()),
            "issuerRef": issuer(issuer_ref),
            "duration": duration(lifetime(cst)),
            "usages": ["digital signature", "server auth", "client auth"],
        }
    }));
    object.metadata = meta(cst, name);
    object.metadata.labels.get_or_insert_default().insert(MEMBER_LABEL.into(), pod.into());
    object
}

/// The label naming the member a CertificateRequest is for.
pub const MEMBER_LABEL: &str = "pleiades.io/member";

/// The cert-manager Certificate that keeps `<name>-admin-tls` current (cert-manager renews it).
pub fn admin_certificate(cst: &Constellation, names: &Names, issuer_ref: &IssuerRef) -> DynamicObject {
    let name = names.admin_secret();
    let lifetime = lifetime(cst);
    let mut object = DynamicObject::new(&name, &certificate_resource()).data(json!({
        "spec": {
            "secretName": name,
            "commonName": ADMIN_USER,
            "uris": [admin_uri(names)],
            "duration": duration(lifetime),
            "renewBefore": duration(lifetime / 3),
            "usages": ["digital signature", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": issuer(issuer_ref),
        }
    }));
    object.metadata = meta(cst, name);
    object
}

#[cfg(test)]
pub(crate) mod tests {
    use pleiades_crds::ConstellationSpec;
    use x509_parser::prelude::GeneralName;

    use super::*;

    fn names() -> Names {
        Names { constellation: "demo".into(), namespace: "db".into() }
    }

    /// A CSR as a pod makes it: its own key, asking for `names`.
    pub(crate) fn csr(names: Vec<String>, uri: &str) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.to_string().try_into().unwrap()));
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    #[test]
    fn a_node_certificate_names_the_pod_from_its_ordinal_not_from_the_csr() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate(&names(), now).unwrap();
        let (pem, key) = csr(vec!["evil.example".into()], "pleiades://demo.db/user/admin");
        let request = parse_csr(&pem).unwrap();
        let subject = node_subject(&names(), "demo-1", 3, &[]).unwrap();
        let cert = ca.issue_node(&subject, &request, Duration::days(90), now).unwrap();
        let info = inspect_certificate(&cert).unwrap();
        assert_eq!(info.uris, ["pleiades://demo.db/node/2"]);
        assert_eq!(info.public_key, request.public_key);
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), info.public_key);
        assert!(!cert.is_empty() && info.not_after - info.not_before > 89 * 86400);
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let parsed = block.parse_x509().unwrap();
        let dns: Vec<String> = parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect();
        assert!(dns.contains(&"demo-1.demo-peers.db.svc".to_string()), "{dns:?}");
        assert!(!dns.iter().any(|d| d.contains("evil")), "{dns:?}");
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        parsed.verify_signature(Some(ca_block.parse_x509().unwrap().public_key())).unwrap();
    }

    #[test]
    fn pods_outside_the_stateful_set_get_no_subject() {
        assert!(node_subject(&names(), "demo-3", 3, &[]).is_none());
        assert!(node_subject(&names(), "other-0", 3, &[]).is_none());
        assert_eq!(node_subject(&names(), "demo-0", 3, &[]).unwrap().uri, "pleiades://demo.db/node/1");
        // A retired id is never issued again: the pod's next member gets the next one up.
        assert_eq!(node_subject(&names(), "demo-0", 3, &[1]).unwrap().uri, "pleiades://demo.db/node/10001");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let (pem, _) = csr(vec![], "pleiades://demo.db/node/1");
        // The last base64 characters encode the end of the signature.
        let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
        let body = lines.len() - 2;
        let flip = lines[body].trim_end_matches('=').len() - 2;
        let replacement = if &lines[body][flip..=flip] == "A" { "B" } else { "A" };
        lines[body].replace_range(flip..=flip, replacement);
        let error = parse_csr(&lines.join("\n")).err().unwrap();
        assert!(error.contains("not a valid signed CSR"), "{error}");
        assert!(parse_csr("hello").is_err());
    }

    #[test]
    fn cert_manager_requests_must_ask_for_exactly_the_pods_names() {
        let subject = node_subject(&names(), "demo-0", 3, &[]).unwrap();
        let (exact, _) = csr(subject.dns_names.clone(), &subject.uri);
        parse_csr(&exact).unwrap().asks_for_exactly(&subject).unwrap();
        let (other_node, _) = csr(subject.dns_names.clone(), "pleiades://demo.db/node/2");
        assert!(parse_csr(&other_node).unwrap().asks_for_exactly(&subject).unwrap_err().contains("URIs"));
        let mut more = subject.dns_names.clone();
        more.push("evil.example".into());
        let (extra, _) = csr(more, &subject.uri);
        assert!(parse_csr(&extra).unwrap().asks_for_exactly(&subject).unwrap_err().contains("DNS"));
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let info = CertInfo { public_key: vec![], uris: vec![], not_before: 0, not_after: 90 };
        assert!(!renewal_due(&info, OffsetDateTime::from_unix_timestamp(59).unwrap()));
        assert!(renewal_due(&info, OffsetDateTime::from_unix_timestamp(60).unwrap()));
    }

    #[test]
    fn the_ca_round_trips_through_its_secret_and_issues_admin() {
        let mut cst = Constellation::new("demo", ConstellationSpec::default());
        cst.metadata.namespace = Some("db".into());
        cst.metadata.uid = Some("uid".into());
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate(&names(), now).unwrap();
        let secret = ca.secret(&cst, &names());
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-ca"));
        assert_eq!(secret.metadata.owner_references.as_ref().unwrap()[0].kind, "Constellation");
        let loaded = Ca::from_secret(&secret, "demo-ca").unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let (cert, key) = loaded.issue_admin(&names(), lifetime(&cst), now).unwrap();
        assert_eq!(inspect_certificate(&cert).unwrap().uris, ["pleiades://demo.db/user/admin"]);
        assert!(key.contains("PRIVATE KEY"));
        assert!(Ca::from_secret(&Secret::default(), "demo-ca").is_err());
    }
}
