//! The reconciler's certificate step: answers the pods' CSRs (with the operator's CA or through
//! cert-manager), keeps the CA ConfigMap and the admin client certificate current, and says how
//! it went as the `CertificatesReady` condition.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use pleiades_crds::{CertManagerSpec, Constellation, TlsMode};
use serde_json::json;
use time::OffsetDateTime;

use crate::controller::{publish, Context, Error, FIELD_MANAGER};
use crate::desired::Names;
use crate::tls::{self, Ca, CertInfo};

/// The field manager of the `certificate` fields in the members' entries: the pods own the
/// rest of their entries, the operator's status writes own the aggregate fields.
pub const CERTIFICATE_MANAGER: &str = "pleiades-operator-certificates";

pub const CONDITION: &str = "CertificatesReady";

/// The `CertificatesReady` condition, before its timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What became of the members' requests this pass.
#[derive(Default)]
struct Answers {
    /// (pod, certificate) for every member whose certificate is current, new ones included.
    certificates: Vec<(String, String)>,
    issued: Vec<String>,
    refused: Vec<String>,
    failed: Vec<String>,
    pending: Vec<String>,
}

impl Answers {
    /// The members' CSRs that need a certificate, each with what the operator issues that pod.
    /// Current certificates are kept as they are; CSRs from outside the StatefulSet are refused.
    fn sort_requests<'a>(
        &mut self,
        cst: &'a Constellation,
        names: &Names,
        pods: i32,
        forget: &'a [String],
    ) -> Vec<(&'a str, &'a str, tls::NodeSubject)> {
        let mut to_sign = Vec::new();
        let retired = cst.status.as_ref().map(|s| s.retired_node_ids.clone()).unwrap_or_default();
        for (pod, csr, current) in requests(cst, forget) {
            let Some(subject) = tls::node_subject(names, pod, pods, &retired) else {
                self.refused.push(format!("{pod} is not a pod of this constellation"));
                continue;
            };
            // A certificate for a node id since retired is not current, even for the same key.
            let names_subject =
                |cert: &&str| tls::inspect_certificate(cert).is_some_and(|info| info.uris.contains(&subject.uri));
            match current.filter(names_subject) {
                Some(cert) => self.certificates.push((pod.into(), cert.into())),
                None => to_sign.push((pod, csr, subject)),
            }
        }
        to_sign
    }

    fn outcome(&self, what: &str) -> Outcome {
        let list = |pods: &[String]| pods.join("; ");
        if !self.refused.is_empty() {
            Outcome { ready: false, reason: "CSRRefused", message: list(&self.refused) }
        } else if !self.failed.is_empty() {
            Outcome { ready: false, reason: "IssuerFailed", message: list(&self.failed) }
        } else if !self.pending.is_empty() {
            Outcome { ready: false, reason: "Issuing", message: format!("waiting for {}", list(&self.pending)) }
        } else {
            Outcome {
                ready: true,
                reason: "Issued",
                message: format!("{} node certificates current, {what}", self.certificates.len()),
            }
        }
    }
}

/// Runs the certificate step; `None` when the user provides a shared Secret instead.
pub async fn reconcile(
    cst: &Constellation,
    ctx: &Context,
    names: &Names,
    pods: i32,
    forget: &[String],
) -> Result<Option<Outcome>, Error> {
    if cst.spec.tls.mode == TlsMode::Secret {
        return Ok(None);
    }
    let now = OffsetDateTime::now_utc();
    let outcome = match &cst.spec.tls.cert_manager {
        None => with_own_ca(cst, ctx, names, pods, forget, now).await?,
        Some(cert_manager) => with_cert_manager(cst, ctx, names, pods, forget, cert_manager).await?,
    };
    Ok(Some(outcome))
}

/// The members that asked for a certificate and are not being forgotten, with the certificate
/// they hold if it answers their current CSR.
fn requests<'a>(
    cst: &'a Constellation,
    forget: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)> + 'a {
    let members = cst.status.as_ref().map(|s| s.members.as_slice()).unwrap_or_default();
    members.iter().filter(|m| !forget.contains(&m.pod)).filter_map(|m| {
        let csr = m.csr.as_deref()?;
        let current = m.certificate.as_deref().filter(|cert| certifies(cert, csr));
        Some((m.pod.as_str(), csr, current))
    })
}

/// Whether `cert` was issued for the key of `csr` (so a new CSR, a renewal, gets a new one).
fn certifies(cert: &str, csr: &str) -> bool {
    match (tls::inspect_certificate(cert), tls::parse_csr(csr)) {
        (Some(info), Ok(request)) => info.public_key == request.public_key,
        _ => false,
    }
}

async fn with_own_ca(
    cst: &Constellation,
    ctx: &Context,
    names: &Names,
    pods: i32,
    forget: &[String],
    now: OffsetDateTime,
) -> Result<Outcome, Error> {
    let ca = ensure_ca(cst, ctx, names, now).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &names.namespace);
    config_maps.patch(&names.ca(), &params, &Patch::Apply(tls::ca_config_map(cst, names, ca.cert_pem()))).await?;
    ensure_admin_secret(cst, ctx, names, &ca, now).await?;

    let mut answers = Answers::default();
    for (pod, csr, subject) in answers.sort_requests(cst, names, pods, forget) {
        match tls::parse_csr(csr) {
            Ok(request) => {
                let cert = ca.issue_node(&subject, &request, tls::lifetime(cst), now)?;
                answers.certificates.push((pod.into(), cert));
                answers.issued.push(pod.into());
            }
            Err(why) => answers.refused.push(format!("{pod}: {why}")),
        }
    }
    write_certificates(cst, ctx, names, &answers).await?;
    Ok(answers.outcome(&format!("admin certificate in Secret {}", names.admin_secret())))
}

/// Loads the CA from its Secret, creating both on first use.
async fn ensure_ca(cst: &Constellation, ctx: &Context, names: &Names, now: OffsetDateTime) -> Result<Ca, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    if let Some(secret) = secrets.get_opt(&names.ca()).await? {
        return Ok(Ca::from_secret(&secret, &names.ca())?);
    }
    let ca = Ca::generate(names, now)?;
    match secrets.create(&PostParams::default(), &ca.secret(cst, names)).await {
        Ok(_) => {
            let note = format!("created the constellation's CA in Secret {}", names.ca());
            publish(ctx, cst, EventType::Normal, "CreatedCA", note).await;
            Ok(ca)
        }
        // Another operator replica created it first: use theirs, or certificates would not verify.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets.get(&names.ca()).await?;
            Ok(Ca::from_secret(&secret, &names.ca())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reissues the admin client certificate when it is missing, past two thirds of its lifetime,
/// or from another CA.
async fn ensure_admin_secret(
    cst: &Constellation,
    ctx: &Context,
    names: &Names,
    ca: &Ca,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let existing = secrets.get_opt(&names.admin_secret()).await?;
    let field = |key: &str| {
        existing
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let current = field("tls.crt").and_then(|cert| tls::inspect_certificate(&cert));
    let fresh = current.is_some_and(|info: CertInfo| !tls::renewal_due(&info, now));
    if fresh && field("ca.crt").as_deref() == Some(ca.cert_pem()) {
        return Ok(());
    }
    let (cert, key) = ca.issue_admin(names, tls::lifetime(cst), now)?;
    let secret = tls::admin_secret(cst, names, ca.cert_pem(), &cert, &key);
    secrets.patch(&names.admin_secret(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
    let note = format!("issued the admin client certificate in Secret {}", names.admin_secret());
    publish(ctx, cst, EventType::Normal, "IssuedAdminCertificate", note).await;
    Ok(())
}

async fn with_cert_manager(
    cst: &Constellation,
    ctx: &Context,
    names: &Names,
    pods: i32,
    forget: &[String],
    cert_manager: &CertManagerSpec,
) -> Result<Outcome, Error> {
    if !cert_manager_installed(ctx).await? {
        return Ok(Outcome {
            ready: false,
            reason: "CertManagerMissing",
            message: "spec.tls.certManager is set but cert-manager (cert-manager.io/v1) is not installed".into(),
        });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let ns = names.namespace.as_str();
    let certificates: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &tls::certificate_resource());
    let admin = tls::admin_certificate(cst, names, &cert_manager.issuer_ref);
    certificates.patch(&names.admin_secret(), &params, &Patch::Apply(&admin)).await?;

    let requests_api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &tls::certificate_request_resource());
    let mut answers = Answers::default();
    let mut done = Vec::new();
    let mut ca_pem = None;
    for (pod, csr, subject) in answers.sort_requests(cst, names, pods, forget) {
        // cert-manager signs the CSR as it stands: it must already name exactly this pod.
        if let Err(why) = tls::parse_csr(csr).and_then(|request| request.asks_for_exactly(&subject)) {
            answers.refused.push(format!("{pod}: {why}"));
            continue;
        }
        let name = tls::certificate_request_name(pod, csr);
        let Some(request) = requests_api.get_opt(&name).await? else {
            let request = tls::certificate_request(cst, pod, csr, &cert_manager.issuer_ref);
            requests_api.create(&PostParams::default(), &request).await?;
            answers.pending.push(pod.into());
            continue;
        };
        match issued(&request) {
            Issued::Certificate { cert, ca } if certifies(&cert, csr) => {
                ca_pem = ca_pem.or(ca);
                answers.certificates.push((pod.into(), cert));
                answers.issued.push(pod.into());
                done.push(name);
            }
            Issued::Certificate { .. } => {
                answers.failed.push(format!("{pod}: {name} returned a certificate for another key"));
                done.push(name);
            }
            Issued::Failed(why) => {
                // cert-manager does not retry a failed request; a new one is made next pass.
                answers.failed.push(format!("{pod}: {name}: {why}"));
                done.push(name);
            }
            Issued::Pending => answers.pending.push(pod.into()),
        }
    }
    if let Some(ca_pem) = ca_pem {
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        config_maps.patch(&names.ca(), &params, &Patch::Apply(tls::ca_config_map(cst, names, &ca_pem))).await?;
    }
    write_certificates(cst, ctx, names, &answers).await?;
    for name in done {
        match requests_api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(answers.outcome(&format!("admin certificate kept by cert-manager in Secret {}", names.admin_secret())))
}

enum Issued {
    Certificate { cert: String, ca: Option<String> },
    Failed(String),
    Pending,
}

/// Reads a CertificateRequest's outcome: `Ready=True` with the certificate, or a final failure
/// (`Ready=False` with reason `Failed` or `Denied`, or `Denied=True`).
fn issued(request: &DynamicObject) -> Issued {
    let status = &request.data["status"];
    let pem = |field: &str| {
        serde_json::from_value::<ByteString>(status[field].clone())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.0).ok())
            .filter(|text| !text.is_empty())
    };
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c["type"] == type_);
    let text = |c: &serde_json::Value, key: &str| c[key].as_str().unwrap_or_default().to_string();
    if let Some(denied) = condition("Denied").filter(|c| c["status"] == "True") {
        return Issued::Failed(format!("denied: {}", text(denied, "message")));
    }
    match condition("Ready") {
        Some(ready) if ready["status"] == "True" => match pem("certificate") {
            Some(cert) => Issued::Certificate { cert, ca: pem("ca") },
            None => Issued::Failed("Ready without a certificate".into()),
        },
        Some(ready) if ready["reason"] == "Failed" || ready["reason"] == "Denied" => {
            Issued::Failed(format!("{}: {}", text(ready, "reason"), text(ready, "message")))
        }
        _ => Issued::Pending,
    }
}

async fn cert_manager_installed(ctx: &Context) -> Result<bool, Error> {
    match ctx.client.list_api_group_resources("cert-manager.io/v1").await {
        Ok(resources) => Ok(resources.resources.iter().any(|r| r.name == "certificaterequests")),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes every current certificate into its member's entry with the certificate field
/// manager. All of them, every time: server-side apply drops fields a manager stops sending.
async fn write_certificates(cst: &Constellation, ctx: &Context, names: &Names, answers: &Answers) -> Result<(), Error> {
    for pod in &answers.issued {
        publish(ctx, cst, EventType::Normal, "IssuedCertificate", format!("issued {pod} its node certificate")).await;
    }
    for why in &answers.refused {
        publish(ctx, cst, EventType::Warning, "CertificateRefused", why.clone()).await;
    }
    for why in &answers.failed {
        publish(ctx, cst, EventType::Warning, "CertificateRequestFailed", why.clone()).await;
    }
    if answers.issued.is_empty() {
        return Ok(());
    }
    let members: Vec<_> =
        answers.certificates.iter().map(|(pod, cert)| json!({"pod": pod, "certificate": cert})).collect();
    let body = json!({
        "apiVersion": Constellation::api_version(&()),
        "kind": Constellation::kind(&()),
        "metadata": {"name": cst.name_any()},
        "status": {"members": members},
    });
    let api: Api<Constellation> = Api::namespaced(ctx.client.clone(), &names.namespace);
    api.patch_status(&names.constellation, &PatchParams::apply(CERTIFICATE_MANAGER).force(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// The `CertificatesReady` condition; its transition time moves only when its status does.
pub fn condition(cst: &Constellation, outcome: &Outcome, now: k8s_openapi::jiff::Timestamp) -> Condition {
    let status = if outcome.ready { "True" } else { "False" };
    let since = cst
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION && c.status == status))
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: outcome.reason.into(),
        message: outcome.message.clone(),
        last_transition_time: since,
        observed_generation: cst.metadata.generation,
    }
}
