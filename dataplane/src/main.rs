//! `pleiades`: runs a node, or talks to one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pleiades::cli::{Cli, ClientArgs, Command, KvArgs, KvCommand, PingArgs};
use pleiades::client::Client;
use pleiades_proto::v1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Info(args) => info(&args).await,
            Command::Health(args) => health(&args).await,
            Command::Ping(args) => ping(&args).await,
            Command::Kv(args) => kv(args).await,
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

async fn run_node(args: pleiades::cli::NodeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    pleiades::observe::init_logging(config.log_format, &config.log_level).map_err(anyhow::Error::msg)?;
    // Registered before the node starts: a lazily created listener would leave a window after
    // "node ready" in which SIGTERM or SIGINT still kill the process without a clean shutdown.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    if let Err(e) = pleiades::node::run(config, shutdown).await {
        tracing::error!(error = %e, "node failed");
        return Err(e.into());
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

async fn kv(args: KvArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let mut kv = client.kv().await?;
    match args.command {
        KvCommand::Put { key, value } => {
            let put = kv.put(key.as_bytes(), value.as_bytes()).await?;
            println!("OK version {} at {}", put.version, show_ts(put.timestamp));
        }
        KvCommand::Get { key, version } => match kv.get(key.as_bytes(), version.unwrap_or(0)).await? {
            Some(found) => println!("{}", show(&found.value)),
            None => anyhow::bail!("{key}: not found"),
        },
        KvCommand::Del { key } => {
            let deleted = kv.delete(key.as_bytes()).await?;
            println!("OK deleted at {}", show_ts(deleted.timestamp));
        }
        KvCommand::Scan { start, end, limit } => {
            let scan = kv.scan(start.as_bytes(), end.unwrap_or_default().as_bytes(), limit).await?;
            for entry in &scan.entries {
                let value = entry.value.as_ref().map(|v| show(&v.value)).unwrap_or_default();
                println!("{}\t{}", show(&entry.key), value);
            }
            if !scan.resume_key.is_empty() {
                println!("… more from {}", show(&scan.resume_key));
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
    client.close().await;
    Ok(())
}
