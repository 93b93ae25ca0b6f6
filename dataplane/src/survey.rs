//! `pleiades ranges`: what every node says of the ranges it hosts, put together — each range's
//! span, size, keys and load from its leader, its replicas and their zones — and the hand-made
//! range changes, sent to the node given by `--addr`.

use std::collections::BTreeMap;

use anyhow::bail;
use pleiades_proto::v1;

use crate::cli::{RangesAction, RangesArgs};
use crate::client::cluster::Cluster;

/// One range as the constellation reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RangeRow {
    pub range_id: u64,
    pub meta: bool,
    pub start: String,
    pub end: String,
    pub generation: u64,
    pub replicas: Vec<u64>,
    pub leader: Option<u64>,
    pub bytes: u64,
    pub keys: u64,
    pub reads_per_second: f64,
    pub writes_per_second: f64,
    /// The zones of its replicas, in replica order ("?" where a node announces none).
    pub zones: Vec<String>,
}

/// Asks every node for its replicas; the leader's report stands for the range.
pub async fn collect(cluster: &Cluster, addr: &str) -> anyhow::Result<Vec<RangeRow>> {
    let zones: BTreeMap<u64, String> = match cluster.system(addr).await {
        Ok(mut system) => system
            .members()
            .await
            .map(|view| {
                view.members.into_iter().map(|m| (m.node_id, m.tags.get("zone").cloned().unwrap_or_default())).collect()
            })
            .unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    };
    let mut rows: BTreeMap<u64, RangeRow> = BTreeMap::new();
    let mut from_leader: std::collections::BTreeSet<u64> = Default::default();
    for (node, node_addr) in cluster.nodes() {
        let Ok(mut system) = cluster.system(&node_addr).await else { continue };
        let Ok(status) = system.range_status().await else { continue };
        for replica in status.replicas {
            let Some(descriptor) = replica.descriptor else { continue };
            let leads = replica.role == "leader";
            // The leader's view wins; among followers, the newest generation.
            let known_generation = rows.get(&descriptor.range_id).map(|k| k.generation);
            if !leads
                && (from_leader.contains(&descriptor.range_id)
                    || known_generation.is_some_and(|g| g >= descriptor.generation))
            {
                continue;
            }
            if leads {
                from_leader.insert(descriptor.range_id);
            }
            let load = replica.load.unwrap_or_default();
            let zone = |id: &u64| zones.get(id).filter(|z| !z.is_empty()).cloned().unwrap_or_else(|| "?".into());
            rows.insert(
                descriptor.range_id,
                RangeRow {
                    range_id: descriptor.range_id,
                    meta: descriptor.meta,
                    start: String::from_utf8_lossy(&descriptor.start_key).into_owned(),
                    end: String::from_utf8_lossy(&descriptor.end_key).into_owned(),
                    generation: descriptor.generation,
                    zones: descriptor.replicas.iter().map(zone).collect(),
                    replicas: descriptor.replicas,
                    leader: (replica.leader_node != 0).then_some(replica.leader_node).or(leads.then_some(node)),
                    bytes: load.bytes,
                    keys: load.live_keys,
                    reads_per_second: load.reads_per_second,
                    writes_per_second: load.writes_per_second,
                },
            );
        }
    }
    Ok(rows.into_values().collect())
}

pub async fn ranges(cluster: &Cluster, args: &RangesArgs) -> anyhow::Result<()> {
    if let Some(action) = &args.action {
        return change(cluster, args, action).await;
    }
    let rows = collect(cluster, &args.client.addr).await?;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<7} {:<24} {:>4} {:>10} {:>9} {:>9} {:>9} {:<14} {:>6}  ZONES",
        "RANGE", "SPAN", "GEN", "BYTES", "KEYS", "READS/S", "WRITES/S", "REPLICAS", "LEADER"
    );
    for row in &rows {
        let span = if row.meta { "(meta)".to_string() } else { format!("[{},{})", row.start, row.end) };
        let replicas: Vec<String> = row.replicas.iter().map(u64::to_string).collect();
        let distinct: std::collections::BTreeSet<&String> = row.zones.iter().collect();
        println!(
            "{:<7} {:<24} {:>4} {:>10} {:>9} {:>9.0} {:>9.0} {:<14} {:>6}  {} ({} of {})",
            row.range_id,
            span,
            row.generation,
            row.bytes,
            row.keys,
            row.reads_per_second,
            row.writes_per_second,
            replicas.join(","),
            row.leader.map(|l| l.to_string()).unwrap_or("-".into()),
            row.zones.join(","),
            distinct.len(),
            row.zones.len()
        );
    }
    Ok(())
}

async fn change(cluster: &Cluster, args: &RangesArgs, action: &RangesAction) -> anyhow::Result<()> {
    use v1::range_admin_request::Action;
    let (range_id, action) = match action {
        RangesAction::Split { key } => (0, Action::SplitAt(key.as_bytes().to_vec())),
        RangesAction::Merge { range } => (*range, Action::Merge(true)),
        RangesAction::Relocate { range, to } => (*range, Action::RelocateTo(v1::NodeList { nodes: to.clone() })),
        RangesAction::TransferLeader { range, node } => (*range, Action::TransferLeaderTo(*node)),
    };
    let request = v1::RangeAdminRequest { range_id, action: Some(action) };
    let response = cluster.system(&args.client.addr).await?.range_admin(&request).await?;
    for line in &response.done {
        println!("{line}");
    }
    if !response.error.is_empty() {
        bail!("{}", response.error);
    }
    Ok(())
}
