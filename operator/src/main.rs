use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use pleiades_operator::controller::{self, Context};
use pleiades_operator::leader::LeaseLock;
use pleiades_operator::metrics::Metrics;
use pleiades_operator::scope::Scope;
use prometheus_client::registry::Registry;
use tracing::info;

#[derive(Parser)]
#[command(name = "pleiades-operator", version, about = "Reconciles Pleiades Constellations on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the Constellation CRD as YAML (what `crds/constellation.yaml` holds).
    Crd,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "PLEIADES_OPERATOR_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Elect a leader through a Lease so several replicas can run; only the leader reconciles.
    #[arg(long, env = "PLEIADES_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// The operator's own namespace: where its leader Lease lives, and whose operator pods the
    /// constellations' NetworkPolicies admit to their members' HTTP port.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "pleiades-operator")]
    identity: String,
    /// Reconcile only these namespaces (comma-separated), which then need only Roles there;
    /// every namespace when empty.
    #[arg(long, env = "PLEIADES_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PLEIADES_OPERATOR_LOG_JSON")]
    log_json: bool,
    /// Server-side-apply the Constellation CRD this operator was built with at start (Helm
    /// never upgrades CRDs). `false` where an administrator manages CRDs.
    #[arg(long, env = "PLEIADES_OPERATOR_MANAGE_CRD", default_value_t = true, action = clap::ArgAction::Set)]
    manage_crd: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", pleiades_crds::crd_yaml());
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let scope = Scope::new(&args.watch_namespaces)?;
    info!(%scope, "watching");
    let client = Client::try_default().await.context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    if args.manage_crd {
        use pleiades_operator::crd::{apply_crd, CrdOutcome};
        match apply_crd(client.clone()).await {
            Ok(CrdOutcome::Applied { name }) => info!(%name, "applied the CRD this operator was built with"),
            Ok(CrdOutcome::Newer { name, versions }) => {
                tracing::warn!(%name, ?versions, "the stored CRD is newer than this operator; left as it is")
            }
            // Reconciling with the stored CRD beats not reconciling at all.
            Err(error) => tracing::warn!(%error, "cannot apply the CRD; using the one installed"),
        }
    }
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let listener = tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("bind {}", args.http))?;
    let app = axum::Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state((Arc::new(registry), metrics.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let ctx = Context::new(client.clone(), metrics.clone(), args.identity.clone(), args.lease_namespace.clone());
    metrics.set_ready(true);
    if !args.leader_elect {
        info!("reconciling (no leader election)");
        controller::run(ctx, scope, shutdown).await;
        return Ok(());
    }
    let lock = Arc::new(LeaseLock::new(
        Api::<Lease>::namespaced(client, &args.lease_namespace),
        "pleiades-operator",
        &args.identity,
    ));
    tokio::pin!(shutdown);
    tokio::select! {
        _ = lock.acquire() => {}
        _ = &mut shutdown => return Ok(()),
    }
    metrics.leader.set(1);
    info!(identity = %args.identity, "leader; reconciling");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(ctx, scope, async {
        let _ = stopped.await;
    }));
    let lost = tokio::select! {
        _ = lock.hold() => true,
        _ = &mut shutdown => false,
    };
    let _ = stop.send(());
    let _ = controller.await;
    metrics.leader.set(0);
    lock.release().await;
    anyhow::ensure!(!lost, "lost the leader lease; exiting so a fresh start rejoins the election");
    Ok(())
}

type HttpState = (Arc<Registry>, Metrics);

async fn serve_metrics(State((registry, _)): State<HttpState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => {
            ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics").into_response(),
    }
}

async fn readyz(State((_, metrics)): State<HttpState>) -> StatusCode {
    if metrics.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
