//! Which namespaces the operator reconciles: every namespace (the chart's ClusterRole), or only
//! those listed in `--watch-namespaces` (the chart's `watchNamespaces`, with a Role in each),
//! so a namespaced install needs no cluster-wide rights at all.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    /// Never empty: no namespaces means the whole cluster.
    Namespaces(BTreeSet<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("--watch-namespaces: {0:?} is not a namespace name (at most 63 lowercase letters, digits and '-')")]
    InvalidNamespace(String),
}

impl Scope {
    /// The namespaces to watch, as given on the command line; blanks are skipped (an empty
    /// environment variable means every namespace) and duplicates merged.
    pub fn new<I, S>(namespaces: I) -> Result<Scope, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut watched = BTreeSet::new();
        for namespace in namespaces {
            let namespace = namespace.as_ref().trim();
            if namespace.is_empty() {
                continue;
            }
            if !is_dns_label(namespace) {
                return Err(ScopeError::InvalidNamespace(namespace.to_string()));
            }
            watched.insert(namespace.to_string());
        }
        Ok(if watched.is_empty() { Scope::Cluster } else { Scope::Namespaces(watched) })
    }

    /// One entry per controller to run: `None` for all namespaces, else one per namespace.
    pub fn namespaces(&self) -> Vec<Option<&str>> {
        match self {
            Scope::Cluster => vec![None],
            Scope::Namespaces(namespaces) => namespaces.iter().map(|ns| Some(ns.as_str())).collect(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("all namespaces"),
            Scope::Namespaces(namespaces) => {
                write!(f, "namespaces {}", namespaces.iter().cloned().collect::<Vec<_>>().join(","))
            }
        }
    }
}

/// An API over one namespace, or over all of them.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// RFC 1123 label, what Kubernetes requires of a namespace name.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespaces_means_the_whole_cluster() {
        assert_eq!(Scope::new(Vec::<String>::new()), Ok(Scope::Cluster));
        assert_eq!(Scope::new([""]), Ok(Scope::Cluster), "an empty environment variable");
        assert_eq!(Scope::Cluster.namespaces(), vec![None]);
        assert_eq!(Scope::Cluster.to_string(), "all namespaces");
    }

    #[test]
    fn listed_namespaces_are_trimmed_deduplicated_and_sorted() {
        let scope = Scope::new(["team-b", " team-a", "team-b", ""]).unwrap();
        assert_eq!(scope.namespaces(), vec![Some("team-a"), Some("team-b")]);
        assert_eq!(scope.to_string(), "namespaces team-a,team-b");
    }

    #[test]
    fn names_kubernetes_would_refuse_are_refused_at_start() {
        for bad in ["Team", "team_a", "-team", "team-", "a/b", &"a".repeat(64)] {
            assert_eq!(Scope::new([bad]), Err(ScopeError::InvalidNamespace(bad.to_string())), "{bad}");
        }
        assert!(Scope::new([&"a".repeat(63)]).is_ok());
    }
}
