//! Failure domains for placement: the operator copies the zone and region labels of the
//! Kubernetes node each pod runs on (`topology.kubernetes.io/zone`, `/region`) into the pod's
//! annotations, where the pod reads them through a downward-API file and announces them in
//! gossip. A pod cannot read its node's labels itself (that needs rights over cluster-scoped
//! Nodes, which the pods' accounts should not hold), and the downward API offers no node labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde_json::{json, Value};

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Read by the node (`dataplane/src/node/kubernetes/topology.rs`).
pub const ZONE_ANNOTATION: &str = "pleiades.io/zone";
pub const REGION_ANNOTATION: &str = "pleiades.io/region";

/// The annotations a pod on `node` should carry: its zone and region, each when labelled.
pub fn annotations_for(node: &Node) -> BTreeMap<String, String> {
    let labels = node.labels();
    [(ZONE_LABEL, ZONE_ANNOTATION), (REGION_LABEL, REGION_ANNOTATION)]
        .into_iter()
        .filter_map(|(label, annotation)| labels.get(label).map(|value| (annotation.to_string(), value.clone())))
        .collect()
}

/// The merge patch that makes `pod` carry exactly `wanted` of the topology annotations (a label
/// the node lost is removed), or `None` when it already does.
pub fn patch_for(pod: &Pod, wanted: &BTreeMap<String, String>) -> Option<Value> {
    let current = pod.annotations();
    let mut changes = serde_json::Map::new();
    for key in [ZONE_ANNOTATION, REGION_ANNOTATION] {
        match (current.get(key), wanted.get(key)) {
            (a, b) if a == b => {}
            (_, Some(value)) => {
                changes.insert(key.into(), json!(value));
            }
            (Some(_), None) => {
                changes.insert(key.into(), Value::Null);
            }
            (None, None) => {}
        }
    }
    (!changes.is_empty()).then(|| json!({"metadata": {"annotations": changes}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        node
    }

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        pod
    }

    #[test]
    fn a_pod_gets_its_nodes_zone_and_region_once() {
        let wanted = annotations_for(&node(&[(ZONE_LABEL, "eu-west-1a"), (REGION_LABEL, "eu-west-1"), ("x", "y")]));
        assert_eq!(wanted.len(), 2);
        let patch = patch_for(&pod(&[("prometheus.io/port", "7480")]), &wanted).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {ZONE_ANNOTATION: "eu-west-1a", REGION_ANNOTATION: "eu-west-1"}}})
        );
        let labelled = pod(&[(ZONE_ANNOTATION, "eu-west-1a"), (REGION_ANNOTATION, "eu-west-1")]);
        assert_eq!(patch_for(&labelled, &wanted), None, "nothing to change");
    }

    #[test]
    fn a_label_the_node_lost_is_removed_from_the_pod() {
        let wanted = annotations_for(&node(&[(ZONE_LABEL, "b")]));
        let patch = patch_for(&pod(&[(ZONE_ANNOTATION, "a"), (REGION_ANNOTATION, "r")]), &wanted).unwrap();
        assert_eq!(patch, json!({"metadata": {"annotations": {ZONE_ANNOTATION: "b", REGION_ANNOTATION: null}}}));
        assert_eq!(patch_for(&pod(&[]), &annotations_for(&node(&[]))), None);
    }
}
