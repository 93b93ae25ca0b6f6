//! `pleiades`: runs a node, or talks to one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pleiades::cli::{
    BenchAction, BenchArgs, Cli, ClientArgs, Command, CompareArgs, KvArgs, KvCommand, MembersArgs, NodeAction,
    PingArgs, QueryArgs, StatusArgs,
};
use pleiades::client::cluster::{Cluster, ClusterConfig};
use pleiades::client::Client;
use pleiades_proto::v1::{self, ReadConsistency};

/// jemalloc, for Rust and RocksDB alike: per-thread caches instead of glibc's contended arenas
/// (which, left unlimited, held over 800 MiB at 1M keys), and background threads that return
/// freed memory to the system. Chosen by measurement (README, Figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node's configuration is read before the runtime starts: real-time scheduling applies
    // to the runtime's threads as they start.
    let job = match cli.command {
        Command::Node(args) => match args.action {
            Some(NodeAction::Decommission { node_id, client }) => Job::Decommission { node_id, client },
            None => match args.into_config() {
                Ok(config) => Job::Node(Box::new(config)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            },
        },
        command => Job::Client(command),
    };
    if let Job::Node(config) = &job {
        if let Some(realtime) = &config.realtime {
            pleiades::realtime::request(realtime.priority);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Workers only (they unpark; blocking-pool threads, which open RocksDB and so start
        // its background threads, never do).
        .on_thread_unpark(pleiades::realtime::apply_to_current_thread)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let command = match job {
            Job::Node(config) => return run_node(*config).await,
            Job::Decommission { node_id, client } => return decommission(node_id, &client).await,
            Job::Client(command) => command,
        };
        match command {
            Command::Node(_) => unreachable!("node commands became jobs above"),
            Command::Up(args) => pleiades::local::up(&args, stop_signal()?).await,
            Command::Status(args) => status(&args).await,
            Command::Members(args) => members(&args).await,
            Command::Ranges(args) => {
                let cluster = cluster(&args.client).await?;
                let result = pleiades::survey::ranges(&cluster, &args).await;
                cluster.close().await;
                result
            }
            Command::Query(args) => query(&args).await,
            Command::Bench(args) => bench(&args).await,
            Command::Sim(args) => simulate(args),
            Command::Info(args) => info(&args).await,
            Command::Health(args) => health(&args).await,
            Command::Ping(args) => ping(&args).await,
            Command::Kv(args) => kv(args).await,
            Command::User(args) => {
                let cluster = cluster(&args.client).await?;
                let result = pleiades::admin::user(&cluster, args.command).await;
                cluster.close().await;
                result
            }
            Command::Role(args) => {
                let cluster = cluster(&args.client).await?;
                let result = pleiades::admin::role(&cluster, args.command).await;
                cluster.close().await;
                result
            }
            Command::Cert(args) => pleiades::admin::cert(args.command),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What this invocation does: run a node, decommission one, or any other command.
enum Job {
    Node(Box<pleiades::config::NodeConfig>),
    Decommission { node_id: u64, client: ClientArgs },
    Client(Command),
}

/// Resolves on SIGTERM or SIGINT. Registered at once: a lazily created listener would leave a
/// window in which the signal still kills the process without a clean shutdown.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

async fn run_node(config: pleiades::config::NodeConfig) -> anyhow::Result<()> {
    pleiades::observe::init_logging(config.log_format, &config.log_level, config.insecure)
        .map_err(anyhow::Error::msg)?;
    let shutdown = stop_signal()?;
    if let Err(e) = pleiades::node::run(config, shutdown).await {
        tracing::error!(error = %e, "node failed");
        return Err(e.into());
    }
    Ok(())
}

fn simulate(args: pleiades::cli::SimArgs) -> anyhow::Result<()> {
    use pleiades::cli::SimCommand;
    let (text, svg, plot) = match args.what {
        SimCommand::Gossip { nodes, loss, seed, svg } => {
            use pleiades::gossip::report::{run, ReportConfig};
            anyhow::ensure!((0.0..1.0).contains(&loss), "--loss must be at least 0 and below 1, not {loss}");
            let report = run(&ReportConfig { nodes, loss, seed });
            (report.text(), svg.map(|path| (path, report.svg())), "convergence plot          ")
        }
        SimCommand::Placement { nodes, ranges, zones, seed, svg } => {
            use pleiades::range::sim::{run, PlacementSimConfig};
            let report = run(&PlacementSimConfig { nodes, ranges, zones, seed });
            (report.text(), svg.map(|path| (path, report.svg())), "balance plot")
        }
    };
    print!("{text}");
    if let Some((path, svg)) = svg {
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        println!("  {plot} {}", path.display());
    }
    Ok(())
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    Client::connect(&args.client_config()).await.with_context(|| format!("cannot reach the node at {}", args.addr))
}

async fn info(args: &ClientArgs) -> anyhow::Result<()> {
    let client = connect(args).await?;
    let info = client.system().await?.node_info().await?;
    println!("node id          {}", info.node_id);
    println!("version          {} (PWP v{})", info.version, info.protocol_version);
    println!("listen (QUIC)    {}", info.listen_address);
    println!("http             {}", info.http_address);
    println!("uptime           {}s", info.uptime_seconds);
    if let Some(now) = info.now {
        println!("clock            {}", pleiades::clock::Timestamp::from(now));
    }
    let services: Vec<String> = info.services.iter().map(|s| format!("{s:#04x}")).collect();
    println!("services         {}", services.join(" "));
    client.close().await;
    Ok(())
}

async fn health(args: &ClientArgs) -> anyhow::Result<()> {
    let client = connect(args).await?;
    let health = client.system().await?.health().await?;
    println!("{}", health.status().as_str_name());
    for component in &health.components {
        println!("  {:<10} {} {}", component.name, component.status().as_str_name(), component.message);
    }
    client.close().await;
    anyhow::ensure!(health.status() == v1::HealthStatus::Serving, "the node is not serving");
    Ok(())
}

async fn ping(args: &PingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let client = connect(&args.client).await?;
    let mut system = client.system().await?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for id in 0..args.count {
        let rtt = if args.wire {
            system.0.latency_test(u64::from(id)).await?
        } else {
            let started = std::time::Instant::now();
            system.health().await?;
            started.elapsed()
        };
        histogram.saturating_record(rtt.as_micros().max(1) as u64);
    }
    client.close().await;
    let micros = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    let kind = if args.wire { "latency-test frames" } else { "health requests" };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kind": kind, "count": args.count,
                "p50_us": histogram.value_at_quantile(0.5), "p99_us": histogram.value_at_quantile(0.99),
                "max_us": histogram.max(),
            })
        );
    } else {
        println!(
            "{} round trips ({kind}) to {}: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            args.count,
            args.client.addr,
            micros(0.5),
            micros(0.9),
            micros(0.99),
            Duration::from_micros(histogram.max())
        );
    }
    Ok(())
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show_ts(ts: Option<v1::Timestamp>) -> String {
    ts.map(|ts| pleiades::clock::Timestamp::from(ts).to_string()).unwrap_or_default()
}

async fn cluster(args: &ClientArgs) -> anyhow::Result<Cluster> {
    let config = ClusterConfig {
        seeds: vec![args.addr.clone()],
        server_name: Some(args.server_name()),
        ca_cert: args.ca_cert.clone(),
        identity: args.identity(),
        attempt_timeout: Duration::from_millis(args.timeout_ms),
        deadline: Duration::from_millis(args.timeout_ms.saturating_mul(3)),
    };
    Cluster::connect(config).await.with_context(|| format!("cannot reach the constellation through {}", args.addr))
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

async fn kv(args: KvArgs) -> anyhow::Result<()> {
    let kv = cluster(&args.client).await?;
    match args.command {
        KvCommand::Put { key, value } => {
            let put = kv.put(key.as_bytes(), value.as_bytes()).await?;
            println!("OK version {} at {}", put.version, show_ts(put.timestamp));
        }
        KvCommand::Get { key, version, stale } => {
            match kv.get(key.as_bytes(), version.unwrap_or(0), consistency(stale)).await? {
                Some(found) => println!("{}", show(&found.value)),
                None => anyhow::bail!("{key}: not found"),
            }
        }
        KvCommand::Del { key } => {
            let deleted = kv.delete(key.as_bytes()).await?;
            println!("OK deleted at {}", show_ts(deleted.timestamp));
        }
        KvCommand::Cas { key, value, expect, expect_absent: _, delete: _ } => {
            let swapped = kv
                .cas(key.as_bytes(), expect.as_deref().map(str::as_bytes), value.as_deref().map(str::as_bytes))
                .await?;
            match (swapped.succeeded, swapped.current) {
                (true, Some(now)) => println!("OK version {} at {}", now.version, show_ts(now.timestamp)),
                (true, None) => println!("OK"),
                (false, Some(found)) => anyhow::bail!(
                    "{key} holds {:?} (version {}), not the expected value",
                    show(&found.value),
                    found.version
                ),
                (false, None) => anyhow::bail!("{key} is absent, not the expected value"),
            }
        }
        KvCommand::Scan { start, end, limit, reverse, stale } => {
            let end = end.unwrap_or_default();
            let rows = kv.scan(start.as_bytes(), end.as_bytes(), limit, reverse, consistency(stale)).await?;
            for entry in &rows {
                let value = entry.value.as_ref().map(|v| show(&v.value)).unwrap_or_default();
                println!("{}\t{}", show(&entry.key), value);
            }
        }
        KvCommand::Versions { key } => {
            println!("VERSION  {:<32} VALUE", "TIMESTAMP");
            for version in kv.versions(key.as_bytes()).await? {
                let what =
                    if version.tombstone { "(deleted)".to_string() } else { format!("{} bytes", version.value_len) };
                println!("{:>7}  {:<32} {}", version.version, show_ts(version.timestamp), what);
            }
        }
        KvCommand::Describe { key } => match kv.describe(key.as_bytes()).await? {
            Some(d) => {
                println!("versions      {} (latest {}, retention {})", d.version_count, d.latest_version, d.retention);
                println!("first write   {}", show_ts(d.first_write));
                println!("last write    {}", show_ts(d.last_write));
                println!("vacuumable    {}", d.vacuumable);
                println!("deleted       {}", d.deleted);
            }
            None => anyhow::bail!("{key}: not found"),
        },
    }
    kv.close().await;
    Ok(())
}

async fn decommission(node_id: u64, args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::connect(&pleiades::client::ClientConfig {
        // Moving replicas waits for each new one to catch up: allow minutes, not seconds.
        timeout: Duration::from_secs(600),
        ..args.client_config()
    })
    .await
    .with_context(|| format!("cannot reach the node at {}", args.addr))?;
    let answer = client.system().await?.decommission(node_id).await?;
    client.close().await;
    for line in &answer.moves {
        println!("moved {line}");
    }
    anyhow::ensure!(answer.error.is_empty(), "{}", answer.error);
    println!("node {node_id} holds no replicas; it can be stopped and removed");
    Ok(())
}

/// Microseconds as milliseconds for tables; `-` when unknown.
fn rtt_ms(us: u64) -> String {
    if us == 0 {
        "-".into()
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

async fn members(args: &MembersArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let view = client.system().await?.members().await?;
    client.close().await;
    let mut members = view.members.clone();
    if let Some(nearest) = args.nearest {
        members.retain(|m| m.node_id != view.node_id && m.state == "alive" && m.rtt_estimate_us > 0);
        members.sort_by_key(|m| (m.rtt_estimate_us, m.node_id));
        members.truncate(nearest);
    }
    if args.json {
        let members: Vec<_> = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node_id": m.node_id, "addr": m.addr, "state": m.state, "incarnation": m.incarnation,
                    "rtt_estimate_us": m.rtt_estimate_us, "coordinate": m.coordinate,
                    "coordinate_error": m.coordinate_error, "tags": m.tags,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "node_id": view.node_id, "incarnation": view.incarnation, "health_score": view.health_score,
                "coordinate": view.coordinate, "coordinate_error": view.coordinate_error,
                "lamport_time": view.lamport_time, "members": members,
            })
        );
        return Ok(());
    }
    println!(
        "node {}: incarnation {}, health score {}, coordinate error {:.3}, lamport time {}",
        view.node_id, view.incarnation, view.health_score, view.coordinate_error, view.lamport_time
    );
    println!("  {:<6} {:<22} {:<8} {:>5} {:>9}  TAGS", "NODE", "ADDRESS", "STATE", "INC", "RTT (ms)");
    for m in &members {
        let mut tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tags.sort();
        println!(
            "  {:<6} {:<22} {:<8} {:>5} {:>9}  {}",
            m.node_id,
            m.addr,
            m.state,
            m.incarnation,
            rtt_ms(m.rtt_estimate_us),
            tags.join(",")
        );
    }
    Ok(())
}

async fn query(args: &QueryArgs) -> anyhow::Result<()> {
    let mut client_args = args.client.clone();
    // The answer comes after the query's deadline.
    client_args.timeout_ms = client_args.timeout_ms.max(args.deadline_ms + 2_000);
    let client = connect(&client_args).await?;
    let request = v1::QueryRequest {
        name: args.name.clone(),
        payload: args.payload.clone().into_bytes(),
        timeout_ms: args.deadline_ms,
    };
    let response = client.system().await?.query(&request).await?;
    client.close().await;
    if !response.error.is_empty() {
        anyhow::bail!("query refused: {}", response.error);
    }
    let mut answers = response.answers;
    answers.sort_by_key(|a| a.node_id);
    if args.json {
        let answers: Vec<_> = answers
            .iter()
            .map(|a| {
                serde_json::json!({
                    "node_id": a.node_id, "rtt_estimate_us": a.rtt_estimate_us,
                    "payload": String::from_utf8_lossy(&a.payload),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "expected": response.expected, "answers": answers }));
        return Ok(());
    }
    println!("{} answers from {} members", answers.len(), response.expected);
    println!("  {:<6} {:>9}  ANSWER", "NODE", "RTT (ms)");
    for a in &answers {
        println!("  {:<6} {:>9}  {}", a.node_id, rtt_ms(a.rtt_estimate_us), String::from_utf8_lossy(&a.payload));
    }
    Ok(())
}

/// Adds `extra`'s fields to `entry` (both JSON objects).
fn merge(entry: &mut serde_json::Value, extra: &serde_json::Value) {
    if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
        entry.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let cluster = cluster(&args.client).await?;
    // Gossip's view from the node asked: every member, dead ones included.
    let gossip = match cluster.system(&args.client.addr).await {
        Ok(mut system) => system.members().await.ok(),
        Err(_) => None,
    };
    let gossip_members: std::collections::BTreeMap<u64, v1::GossipMemberStatus> =
        gossip.iter().flat_map(|g| g.members.iter().map(|m| (m.node_id, m.clone()))).collect();
    let mut nodes = cluster.nodes();
    for (id, m) in &gossip_members {
        nodes.entry(*id).or_insert_with(|| m.addr.clone());
    }
    let mut members = Vec::new();
    let mut replicas: Vec<(u64, v1::ReplicaStatus)> = Vec::new();
    for (id, addr) in nodes {
        let member = gossip_members.get(&id);
        let gossip_fields = serde_json::json!({
            "gossip_state": member.map(|m| m.state.as_str()).unwrap_or("unknown"),
            "incarnation": member.map(|m| m.incarnation),
            "rtt_estimate_us": member.map(|m| m.rtt_estimate_us),
            "coordinate": member.map(|m| m.coordinate.clone()),
        });
        if member.is_some_and(|m| m.state == "dead" || m.state == "left") {
            let mut entry = serde_json::json!({ "node_id": id, "addr": addr, "state": "down" });
            merge(&mut entry, &gossip_fields);
            members.push(entry);
            continue;
        }
        let answer = async {
            let mut system = cluster.system(&addr).await?;
            let info = system.node_info().await?;
            let ranges = system.range_status().await?;
            Ok::<_, pleiades::client::ClientError>((info, ranges))
        }
        .await;
        match answer {
            Ok((info, ranges)) => {
                let leaders = ranges.replicas.iter().filter(|r| r.role == "leader").count();
                let mut entry = serde_json::json!({
                    "node_id": id, "addr": addr, "state": "up", "version": info.version,
                    "uptime_seconds": info.uptime_seconds, "replicas": ranges.replicas.len(), "leaders": leaders,
                });
                merge(&mut entry, &gossip_fields);
                members.push(entry);
                replicas.extend(ranges.replicas.into_iter().map(|r| (id, r)));
            }
            Err(e) => {
                let mut entry = serde_json::json!({
                    "node_id": id, "addr": addr, "state": "unreachable", "error": e.to_string(),
                });
                merge(&mut entry, &gossip_fields);
                members.push(entry);
            }
        }
    }
    replicas.sort_by_key(|(node, r)| (r.descriptor.as_ref().map(|d| d.range_id).unwrap_or_default(), *node));
    cluster.close().await;
    if args.json {
        let ranges: Vec<_> = replicas
            .iter()
            .map(|(node, r)| {
                let d = r.descriptor.clone().unwrap_or_default();
                serde_json::json!({
                    "range_id": d.range_id, "meta": d.meta, "start": show(&d.start_key), "end": show(&d.end_key),
                    "generation": d.generation, "replicas": d.replicas, "node_id": node, "role": r.role,
                    "term": r.term, "leader": r.leader_node, "last_log_index": r.last_log_index,
                    "applied_index": r.applied_index, "snapshot_index": r.snapshot_index,
                })
            })
            .collect();
        let gossip = gossip.map(|g| {
            serde_json::json!({
                "node_id": g.node_id, "incarnation": g.incarnation, "health_score": g.health_score,
                "coordinate": g.coordinate, "coordinate_error": g.coordinate_error,
            })
        });
        let balance = balance(&members, &replicas);
        println!(
            "{}",
            serde_json::json!({ "gossip": gossip, "members": members, "replicas": ranges, "balance": balance })
        );
        return Ok(());
    }
    println!("MEMBERS");
    if let Some(g) = &gossip {
        println!(
            "  as node {} sees them: its health score {}, coordinate error {:.3}",
            g.node_id, g.health_score, g.coordinate_error
        );
    }
    println!(
        "  {:<6} {:<22} {:<12} {:<8} {:>5} {:>9} {:>8} {:>8}",
        "NODE", "ADDRESS", "STATE", "GOSSIP", "INC", "RTT (ms)", "REPLICAS", "LEADERS"
    );
    for m in &members {
        println!(
            "  {:<6} {:<22} {:<12} {:<8} {:>5} {:>9} {:>8} {:>8}",
            m["node_id"].as_u64().unwrap_or_default(),
            m["addr"].as_str().unwrap_or_default(),
            m["state"].as_str().unwrap_or_default(),
            m["gossip_state"].as_str().unwrap_or_default(),
            m["incarnation"].as_u64().map(|n| n.to_string()).unwrap_or("-".into()),
            rtt_ms(m["rtt_estimate_us"].as_u64().unwrap_or_default()),
            m["replicas"].as_u64().map(|n| n.to_string()).unwrap_or("-".into()),
            m["leaders"].as_u64().map(|n| n.to_string()).unwrap_or("-".into()),
        );
    }
    let b = balance(&members, &replicas);
    println!(
        "\nBALANCE  {} ranges; replicas per node {} to {} (mean {:.1}); leaders per node {} to {} (mean {:.1})",
        b["ranges"],
        b["replicas"]["min"],
        b["replicas"]["max"],
        b["replicas"]["mean"].as_f64().unwrap_or_default(),
        b["leaders"]["min"],
        b["leaders"]["max"],
        b["leaders"]["mean"].as_f64().unwrap_or_default()
    );
    println!("\nRANGES");
    println!(
        "  {:<6} {:<14} {:>4} {:<10} {:<6} {:<10} {:>6} {:>9} {:>9}",
        "RANGE", "SPAN", "GEN", "REPLICAS", "NODE", "ROLE", "TERM", "LAST LOG", "APPLIED"
    );
    for (node, r) in &replicas {
        let d = r.descriptor.clone().unwrap_or_default();
        let span = if d.meta { "(meta)".to_string() } else { format!("[{},{})", show(&d.start_key), show(&d.end_key)) };
        let replica_list: Vec<String> = d.replicas.iter().map(|n| n.to_string()).collect();
        println!(
            "  {:<6} {:<14} {:>4} {:<10} {:<6} {:<10} {:>6} {:>9} {:>9}",
            d.range_id,
            span,
            d.generation,
            replica_list.join(","),
            node,
            r.role,
            r.term,
            r.last_log_index,
            r.applied_index
        );
    }
    Ok(())
}

/// Range count and how evenly replicas and leaders spread over the nodes that answered.
fn balance(members: &[serde_json::Value], replicas: &[(u64, v1::ReplicaStatus)]) -> serde_json::Value {
    let ranges: std::collections::BTreeSet<u64> =
        replicas.iter().filter_map(|(_, r)| r.descriptor.as_ref().map(|d| d.range_id)).collect();
    let spread = |field: &str| {
        let counts: Vec<u64> = members.iter().filter_map(|m| m[field].as_u64()).collect();
        let mean = counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64;
        serde_json::json!({
            "min": counts.iter().min().copied().unwrap_or(0),
            "max": counts.iter().max().copied().unwrap_or(0),
            "mean": mean,
        })
    };
    serde_json::json!({ "ranges": ranges.len(), "replicas": spread("replicas"), "leaders": spread("leaders") })
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if let Some(BenchAction::Compare(compare)) = &args.action {
        return bench_compare(compare).await;
    }
    let cluster = cluster(&args.client).await?;
    let target = pleiades::bench::Target::Pleiades {
        cluster: cluster.clone(),
        connect: std::sync::Arc::new(args.client.client_config()),
    };
    let report = pleiades::bench::run(&target, &args.shape(), !args.json && std::io::stderr().is_terminal()).await;
    cluster.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{:?} workload, concurrency {}, {} keys, {}-byte values, {:.1} s: {:.0} ops/s, {} errors",
        report.workload,
        report.concurrency,
        report.keys,
        report.value_size,
        report.seconds,
        report.ops_per_second,
        report.errors
    );
    for (name, summary) in [("writes", &report.writes), ("reads", &report.reads), ("connects", &report.connects)] {
        if let Some(s) = summary {
            println!(
                "  {name:<8} {:>9} ops  p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs  max {:>8} µs",
                s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
            );
        }
    }
    let timeline: Vec<String> = report.per_second.iter().map(u64::to_string).collect();
    println!("  ops per second, second by second: {}", timeline.join(" "));
    for error in &report.sample_errors {
        println!("  error: {error}");
    }
    Ok(())
}

async fn bench_compare(args: &CompareArgs) -> anyhow::Result<()> {
    let comparison = pleiades::bench::compare::compare(args, !args.json).await?;
    std::fs::write(&args.svg, comparison.svg()).with_context(|| format!("cannot write {}", args.svg.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        print!("{}", comparison.tables());
        println!("\nchart: {}", args.svg.display());
    }
    Ok(())
}
