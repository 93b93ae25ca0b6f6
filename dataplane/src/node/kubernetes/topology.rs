//! The pod's failure domain on Kubernetes. The operator copies the `topology.kubernetes.io/zone`
//! and `/region` labels of the Kubernetes node a pod runs on into the pod's annotations
//! (`pleiades.io/zone`, `pleiades.io/region`); the pod sees its annotations through a
//! downward-API file, which the kubelet rewrites when they change. This reads that file now and
//! then and hands the zone and region to gossip, which announces them, so placement spreads
//! replicas over zones with no configuration per pod.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::range::members::{MemberView, Topology};

pub const ZONE_ANNOTATION: &str = "pleiades.io/zone";
pub const REGION_ANNOTATION: &str = "pleiades.io/region";

/// How often the annotations file is read: the kubelet refreshes it about once a minute.
const READ_EVERY: Duration = Duration::from_secs(10);
/// The file is a few lines; anything far larger is not what the kubelet writes.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// Parses the downward API's annotations file: one `key="value"` per line, the value quoted as
/// Go's `%q` does. Lines that are not of that shape are skipped.
pub fn parse_annotations(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, quoted) = line.split_once('=')?;
            let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
            Some((key.trim().to_string(), unquote(inner)?))
        })
        .collect()
}

/// Undoes Go's `%q` escaping for the escapes that labels and zone names can hold.
fn unquote(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            other @ ('"' | '\\') => out.push(other),
            // \x, \u and the like never appear in a zone name: refuse the value.
            _ => return None,
        }
    }
    Some(out)
}

/// The failure domain the annotations name.
pub fn topology_of(annotations: &BTreeMap<String, String>) -> Topology {
    let get = |key: &str| annotations.get(key).cloned().unwrap_or_default();
    Topology { zone: get(ZONE_ANNOTATION), region: get(REGION_ANNOTATION) }
}

/// Reads `path` until the task is aborted and teaches `members` the zone and region it names.
pub async fn follow(path: PathBuf, members: Arc<MemberView>) {
    let mut tick = tokio::time::interval(READ_EVERY);
    let mut warned = false;
    loop {
        tick.tick().await;
        let path = path.clone();
        let read = tokio::task::spawn_blocking(move || read_bounded(&path)).await;
        let text = match read {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                if !warned {
                    warn!(error = %e, "cannot read the pod's annotations; the zone stays unknown for now");
                    warned = true;
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "reading the pod's annotations failed");
                continue;
            }
        };
        let topology = topology_of(&parse_annotations(&text));
        if members.learn_own_topology(topology.clone()) {
            info!(zone = %topology.zone, region = %topology.region, "learned this pod's failure domain");
        }
    }
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downward_api_file_gives_zone_and_region() {
        let text = "kubernetes.io/config.seen=\"2026-11-30T01:00:00Z\"\n\
                    pleiades.io/region=\"eu-west-1\"\n\
                    pleiades.io/zone=\"eu-west-1a\"\n\
                    odd=\"a \\\"quoted\\\" \\\\ value\"\n\
                    not a pair\n\
                    bad=\"\\x41\"\n";
        let annotations = parse_annotations(text);
        assert_eq!(topology_of(&annotations), Topology { zone: "eu-west-1a".into(), region: "eu-west-1".into() });
        assert_eq!(annotations["odd"], "a \"quoted\" \\ value");
        assert!(!annotations.contains_key("bad") && !annotations.contains_key("not a pair"));
        assert_eq!(topology_of(&parse_annotations("")), Topology::default());
    }
}
