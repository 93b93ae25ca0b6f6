//! The operator keeps its own CRD current. Helm installs a chart's `crds/` once and never
//! upgrades them, so after `helm upgrade` a new operator would read Constellations through an
//! old schema (and the API server would prune the fields it does not know). At start the
//! operator server-side-applies the CRD it was built with, unless the stored one serves a
//! version this build does not know: that is a newer operator's, and a rollback must not take
//! its version away.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use pleiades_crds::Constellation;

use crate::controller::FIELD_MANAGER;

#[derive(Debug, PartialEq, Eq)]
pub enum CrdOutcome {
    Applied {
        name: String,
    },
    /// Left as it is: it serves versions this operator does not know.
    Newer {
        name: String,
        versions: Vec<String>,
    },
}

pub async fn apply_crd(client: Client) -> Result<CrdOutcome, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let crd = Constellation::crd();
    let name = crd.name_any();
    if let Some(stored) = api.get_opt(&name).await? {
        let ours: BTreeSet<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        let unknown: Vec<String> =
            stored.spec.versions.iter().map(|v| v.name.clone()).filter(|v| !ours.contains(v.as_str())).collect();
        if !unknown.is_empty() {
            return Ok(CrdOutcome::Newer { name, versions: unknown });
        }
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
    Ok(CrdOutcome::Applied { name })
}
