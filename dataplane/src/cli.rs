//! The `pleiades` command line: `node` runs a node; the other commands talk to one over PWP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, NodeConfig};

#[derive(Debug, Parser)]
#[command(name = "pleiades", version, about = "Pleiades: a constellation-mesh key-value database")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Node(Box<NodeArgs>),
    /// Show a node's identity, version and addresses.
    Info(ClientArgs),
    /// Show a node's health.
    Health(ClientArgs),
    /// Measure PWP round trips to a node (small system requests, or wire-level latency tests).
    Ping(PingArgs),
    /// Read and write keys (routed to the right range's leader).
    Kv(KvArgs),
    /// Start a local constellation of node processes on loopback; Ctrl-C stops them cleanly.
    Up(UpArgs),
    /// Show the constellation: members, ranges, leaders and applied indexes.
    Status(StatusArgs),
    /// Show the gossip membership as one node sees it: state, incarnation, estimated RTT, tags.
    Members(MembersArgs),
    /// List the ranges (span, size, keys, load, replicas, leader, zones), or reshape one by
    /// hand: split, relocate, transfer its leadership.
    Ranges(RangesArgs),
    /// Ask the constellation (a query runtime event) and print every answer.
    Query(QueryArgs),
    /// Measure throughput and latency with a closed-loop workload.
    Bench(BenchArgs),
    /// Deterministic in-process simulations of the constellation's protocols.
    Sim(SimArgs),
    /// Manage users (authenticated by client certificates naming them); needs the admin role.
    User(UserArgs),
    /// Manage roles: read or readwrite permissions on key prefixes or spans; needs the admin role.
    Role(RoleArgs),
    /// Create a CA, node certificates and client certificates.
    Cert(CertArgs),
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, optionally with roles.
    Add {
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Delete a user (its certificate then grants nothing).
    Delete { name: String },
    /// List users and their roles.
    List,
    /// Give a user a role.
    Grant { name: String, role: String },
    /// Take a role from a user.
    Revoke { name: String, role: String },
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: RoleCommand,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PermissionArg {
    Read,
    Readwrite,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role with no permissions.
    Add { name: String },
    /// Delete a role.
    Delete { name: String },
    /// List roles and their permissions.
    List,
    /// Let a role read (or read and write) the keys starting with PREFIX, or [PREFIX, END).
    Grant {
        name: String,
        permission: PermissionArg,
        prefix: String,
        #[arg(long)]
        end: Option<String>,
    },
    /// Take a permission given by `grant` away.
    Revoke {
        name: String,
        prefix: String,
        #[arg(long)]
        end: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a CA (ca.crt, ca.key) in DIR unless one is there.
    CreateCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "local")]
        constellation: String,
    },
    /// Issue a node certificate (node.crt, node.key in --out) naming the node id.
    CreateNode {
        /// The directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, default_value = "local")]
        constellation: String,
        #[arg(long)]
        node_id: u64,
        /// DNS names or IP addresses clients reach the node by; repeat for several.
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long, default_value_t = crate::transport::tls::DEFAULT_CERT_DAYS)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a client certificate (<user>.crt, <user>.key in --out) naming a user.
    CreateClient {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, default_value = "local")]
        constellation: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = crate::transport::tls::DEFAULT_CERT_DAYS)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(subcommand)]
    pub what: SimCommand,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// SWIM/Lifeguard gossip and Vivaldi: convergence, detection, false positives, traffic.
    Gossip {
        /// Nodes in the simulated constellation (each holds every member: memory grows as the
        /// square; the dissemination model covers larger sizes).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_000))]
        nodes: u64,
        /// Fraction of messages lost (the false-positive comparison uses at least 0.1).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the convergence plot here, as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// The range planner over a simulated constellation: from ranges placed unevenly and
    /// zone-blind, then with a fifth more nodes, then with zone 0 lost; rounds, moves, balance.
    Placement {
        /// Nodes in the simulated constellation at the start, spread over the zones in turn.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(3..=10_000))]
        nodes: u64,
        /// Data ranges, three replicas each.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        ranges: u64,
        /// Zones (failure domains) the nodes are spread over; losing one needs at least two.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
        zones: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the balance plot (busiest node over mean, per round) here, as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

/// `pleiades node` actions other than running one.
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Move every replica off a node (safely: each replica is added elsewhere before it is
    /// removed, so no range loses quorum), so the node can be removed.
    Decommission {
        /// The node to decommission.
        node_id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Where the constellation lives; reused on the next run.
    #[arg(long, default_value = "pleiades-constellation")]
    pub data_dir: PathBuf,
    /// First QUIC port; node i listens on base+i and serves HTTP on base+80+i.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Data ranges at bootstrap (plus the meta range).
    #[arg(long, default_value_t = 4)]
    pub initial_ranges: u32,
    /// Log filter for the nodes (their logs go to <data-dir>/node-<i>/node.log).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RangesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<RangesAction>,
}

#[derive(Debug, Subcommand)]
pub enum RangesAction {
    /// Split the range holding KEY at KEY (KEY becomes the right half's first key).
    Split { key: String },
    /// Merge RANGE with its right-hand neighbour.
    Merge { range: u64 },
    /// Put RANGE's replicas on exactly these nodes, one move at a time.
    Relocate {
        range: u64,
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<u64>,
    },
    /// Hand RANGE's leadership to NODE, which holds one of its replicas.
    TransferLeader { range: u64, node: u64 },
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only the living members nearest the node by estimated round trip (Vivaldi), at most this many.
    #[arg(long)]
    pub nearest: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The query: `ping` (each node's id) or `capacity` (replicas held and tags).
    pub name: String,
    /// Bytes passed to every node's handler.
    #[arg(long, default_value = "")]
    pub payload: String,
    /// How long answers are collected.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub deadline_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts only.
    Write,
    /// Gets only (the keys are loaded first).
    Read,
    /// 50 % gets, 50 % puts, uniform keys.
    Mixed,
    /// YCSB-A: 50 % reads, 50 % updates, zipfian keys.
    YcsbA,
    /// YCSB-B: 95 % reads, 5 % updates, zipfian keys.
    YcsbB,
    /// YCSB-C: reads only, zipfian keys.
    YcsbC,
    /// A new connection per request, closed again: the cost of the QUIC and TLS handshake
    /// (with the client certificate, if one is given).
    Connect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    Linearizable,
    Stale,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchAction>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_enum, default_value_t = Workload::Write)]
    pub workload: Workload,
    /// Requests in flight (closed loop: each worker waits for its answer).
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Read consistency of the workload's gets.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Skip loading the keys before a read workload (they are already there).
    #[arg(long)]
    pub no_load: bool,
    /// Put every key under this prefix (one hot span, which splits by load) instead of spreading
    /// keys over the whole keyspace.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub fn shape(&self) -> crate::bench::Shape {
        crate::bench::Shape {
            workload: self.workload,
            consistency: self.consistency,
            concurrency: self.concurrency,
            keys: self.keys,
            value_size: self.value_size,
            duration: self.duration,
            load: !self.no_load,
            prefix: self.prefix.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchAction {
    /// Start a 3-member etcd cluster and a 3-node constellation on loopback, one after the other,
    /// drive both with the same closed-loop workloads, and print one table per value size.
    Compare(Box<CompareArgs>),
}

/// A workload of `bench compare`, with its read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompareWorkload {
    /// Puts only.
    Write,
    /// Linearizable gets.
    Read,
    /// Pleiades stale gets against etcd serializable ones: each served from a member's own state.
    Stale,
    /// 50 % linearizable gets, 50 % puts.
    Mixed,
    YcsbA,
    YcsbB,
    YcsbC,
}

impl CompareWorkload {
    pub const ALL: [CompareWorkload; 7] = [
        CompareWorkload::Write,
        CompareWorkload::Read,
        CompareWorkload::Stale,
        CompareWorkload::Mixed,
        CompareWorkload::YcsbA,
        CompareWorkload::YcsbB,
        CompareWorkload::YcsbC,
    ];

    pub fn workload(self) -> (Workload, Consistency) {
        match self {
            CompareWorkload::Write => (Workload::Write, Consistency::Linearizable),
            CompareWorkload::Read => (Workload::Read, Consistency::Linearizable),
            CompareWorkload::Stale => (Workload::Read, Consistency::Stale),
            CompareWorkload::Mixed => (Workload::Mixed, Consistency::Linearizable),
            CompareWorkload::YcsbA => (Workload::YcsbA, Consistency::Linearizable),
            CompareWorkload::YcsbB => (Workload::YcsbB, Consistency::Linearizable),
            CompareWorkload::YcsbC => (Workload::YcsbC, Consistency::Linearizable),
        }
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The etcd server binary (Debian's etcd-server, which scripts/setup.sh installs).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// A short run (256-byte values; writes and linearizable reads; 4 s each) that finishes in
    /// under three minutes. Flags given as well override its choices.
    #[arg(long)]
    pub quick: bool,
    /// Value sizes in bytes [default: 64,256,4096].
    #[arg(long, value_delimiter = ',')]
    pub value_sizes: Vec<usize>,
    /// Requests in flight [default: 1,16,64,256].
    #[arg(long, value_delimiter = ',')]
    pub concurrencies: Vec<u32>,
    /// [default: every one]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub workloads: Vec<CompareWorkload>,
    /// Seconds of measurement per system, workload, value size and concurrency [default: 10].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Distinct keys, written before the first workload that reads [default: 10000].
    #[arg(long)]
    pub keys: Option<u64>,
    /// Where both systems keep their data and logs [default: a temporary directory, removed at
    /// the end].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First port: Pleiades nodes listen from here, etcd members from here + 200.
    #[arg(long, default_value_t = 7600)]
    pub base_port: u16,
    /// Where the chart (throughput against p99, by concurrency) goes.
    #[arg(long, default_value = "bench-compare.svg")]
    pub svg: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Node settings. Precedence: flags, then environment variables, then the config file, then
/// defaults.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    /// TOML configuration file.
    #[arg(long, env = "PLEIADES_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "PLEIADES_NODE_ID")]
    pub node_id: Option<u64>,
    /// QUIC (PWP) listen address.
    #[arg(long, env = "PLEIADES_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Observability HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "PLEIADES_HTTP")]
    pub http: Option<SocketAddr>,
    #[arg(long, env = "PLEIADES_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "PLEIADES_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `pleiades=debug,info`.
    #[arg(long, env = "PLEIADES_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// PEM certificate chain (with --tls-key); without both, a local CA and certificate are generated.
    #[arg(long, env = "PLEIADES_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PLEIADES_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Largest PWP message payload accepted, in bytes.
    #[arg(long, env = "PLEIADES_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<u64>,
    /// Close a stream whose frame does not arrive whole within this many milliseconds of its
    /// first byte.
    #[arg(long, env = "PLEIADES_FRAME_TIMEOUT_MS")]
    pub frame_timeout_ms: Option<u64>,
    /// CA certificate(s) trusted for connections to other nodes.
    #[arg(long, env = "PLEIADES_TLS_CA_CERT")]
    pub tls_ca_cert: Option<PathBuf>,
    /// Founding members, `id=host:port`, comma-separated; the same list on every founder.
    #[arg(long, env = "PLEIADES_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Join a running constellation through this node (`host:port`).
    #[arg(long, env = "PLEIADES_JOIN")]
    pub join: Option<String>,
    /// Gossip seeds, `host:port`, comma-separated; DNS names are re-resolved until joined
    /// (default: the founders and the join address).
    #[arg(long, env = "PLEIADES_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Address other nodes reach this one at (default: the listen address).
    #[arg(long, env = "PLEIADES_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data ranges the keyspace is cut into at bootstrap.
    #[arg(long, env = "PLEIADES_INITIAL_RANGES")]
    pub initial_ranges: Option<u32>,
    /// A TOML file re-read while the node runs (`log-level`, `[kv]` limits), applied on change.
    #[arg(long, env = "PLEIADES_LIVE_CONFIG")]
    pub live_config: Option<PathBuf>,
    /// The constellation's name, as its certificates name it.
    #[arg(long, env = "PLEIADES_CONSTELLATION")]
    pub constellation: Option<String>,
    /// Turn authentication off: callers need no certificate and may do anything. Experiments
    /// only; every log line and /readyz say so.
    #[arg(long)]
    pub insecure: bool,
}

impl NodeArgs {
    pub fn into_config(self) -> Result<NodeConfig, crate::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if self.node_id.is_some() {
            config.node_id = self.node_id;
        }
        macro_rules! override_with {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(value) = self.$flag { config.$($field).+ = value; })*
            };
        }
        override_with! {
            listen => listen,
            http => http,
            data_dir => data_dir,
            log_format => log_format,
            log_level => log_level,
            max_payload_bytes => wire.max_payload_bytes,
            frame_timeout_ms => wire.frame_timeout_ms,
        }
        if self.tls_cert.is_some() {
            config.tls.cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls.key = self.tls_key;
        }
        if self.tls_ca_cert.is_some() {
            config.tls.ca_cert = self.tls_ca_cert;
        }
        if !self.peers.is_empty() {
            config.constellation.peers = self.peers;
        }
        if self.join.is_some() {
            config.constellation.join = self.join;
        }
        if !self.seeds.is_empty() {
            config.gossip.seeds = self.seeds;
        }
        if self.advertise.is_some() {
            config.constellation.advertise = self.advertise;
        }
        if let Some(ranges) = self.initial_ranges {
            config.constellation.initial_ranges = ranges;
        }
        if self.live_config.is_some() {
            config.live_config = self.live_config;
        }
        if let Some(name) = self.constellation {
            config.constellation.name = name;
        }
        config.insecure |= self.insecure;
        if let Some(path) = &config.live_config {
            let text = std::fs::read_to_string(path)
                .map_err(|source| crate::config::ConfigError::Read { path: path.clone(), source })?;
            crate::config::LiveConfig::parse(path, &text)?.apply_to(&mut config);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Checks `host:port` (resolved only when dialled): a port, and a host that is a DNS name or
/// an IP address (IPv6 in brackets).
fn parse_host_port(value: &str) -> Result<String, String> {
    let (host, port) =
        value.rsplit_once(':').ok_or_else(|| format!("{value:?} is not host:port (e.g. demo.db.svc:7400)"))?;
    port.parse::<u16>().map_err(|e| format!("{value:?}: the port {port:?} is not a port number: {e}"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
    let is_name = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !is_ip && !is_name || bare.contains(':') && !host.starts_with('[') {
        return Err(format!("{value:?}: {host:?} is neither a DNS name nor an IP address (IPv6 goes in brackets)"));
    }
    Ok(value.to_string())
}

/// How to reach a node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The node's QUIC (PWP) address, `host:port`: a DNS name (a Kubernetes Service, a pod's
    /// stable name) or an IP address.
    #[arg(long, env = "PLEIADES_ADDR", default_value = "127.0.0.1:7400", global = true, value_parser = parse_host_port)]
    pub addr: String,
    /// CA certificate that signed the node's certificate (a generated one is <data-dir>/tls/ca.crt).
    #[arg(long, env = "PLEIADES_CA_CERT", default_value = "pleiades-data/tls/ca.crt", global = true)]
    pub ca_cert: PathBuf,
    /// Name the node's certificate must carry (default: the host of `--addr` when it is a DNS
    /// name, else `localhost`, which locally generated certificates name).
    #[arg(long, env = "PLEIADES_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
    /// Client certificate naming the user (default: admin.crt beside the CA certificate, which
    /// `pleiades up` and a lone node generate).
    // Own ids: `key` is also the name of the kv commands' positional argument.
    #[arg(id = "client_cert", long = "cert", env = "PLEIADES_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (default: admin.key beside the CA certificate).
    #[arg(id = "client_key", long = "key", env = "PLEIADES_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Give up on a request after this many milliseconds.
    #[arg(long, env = "PLEIADES_TIMEOUT_MS", default_value_t = 5_000, global = true)]
    pub timeout_ms: u64,
}

impl ClientArgs {
    pub fn client_config(&self) -> crate::client::ClientConfig {
        crate::client::ClientConfig {
            addr: self.addr.clone(),
            server_name: Some(self.server_name()),
            ca_cert: self.ca_cert.clone(),
            identity: self.identity(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }

    /// The name the node's certificate must carry.
    pub fn server_name(&self) -> String {
        let host = crate::transport::stream::host_of(&self.addr);
        match &self.server_name {
            Some(name) => name.clone(),
            None if host.parse::<std::net::IpAddr>().is_err() => host.to_string(),
            None => "localhost".to_string(),
        }
    }

    /// The client certificate: as given, else the `admin` one beside the CA certificate when it
    /// is there, else none (only an `--insecure` node takes that).
    pub fn identity(&self) -> Option<crate::transport::tls::CertFiles> {
        let beside_ca = |name: &str| self.ca_cert.parent().map(|dir| dir.join(name)).filter(|path| path.exists());
        let cert = self.cert.clone().or_else(|| beside_ca("admin.crt"))?;
        let key = self.key.clone().or_else(|| beside_ca("admin.key"))?;
        Some(crate::transport::tls::CertFiles { cert, key })
    }
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Round trips to measure.
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// Use PWP LATENCY_TEST frames instead of system health requests.
    #[arg(long)]
    pub wire: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write a value; prints the new version.
    Put { key: String, value: String },
    /// Read the latest value, or a given version.
    Get {
        key: String,
        #[arg(long)]
        version: Option<u32>,
        /// Read from any replica, possibly stale, without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Compare-and-swap: write VALUE only if the key holds --expect (or is absent).
    Cas {
        key: String,
        /// The new value (omit with --delete).
        value: Option<String>,
        /// The value the key must hold now.
        #[arg(long, conflicts_with = "expect_absent", required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// Require the key to be absent.
        #[arg(long)]
        expect_absent: bool,
        /// Delete the key instead of writing a value.
        #[arg(long, conflicts_with = "value", required_unless_present = "value")]
        delete: bool,
    },
    /// Delete a key (older versions stay readable until vacuumed).
    Del { key: String },
    /// List keys and values in [start, end).
    Scan {
        #[arg(default_value = "")]
        start: String,
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Newest key first.
        #[arg(long)]
        reverse: bool,
        #[arg(long)]
        stale: bool,
    },
    /// List a key's versions, newest first.
    Versions { key: String },
    /// Show a key's descriptor.
    Describe { key: String },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Clap checks argument definitions only when a command is parsed: a clash (such as a global
    /// `--key` against the kv commands' `key`) would otherwise surface as a panic at a user's prompt.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
        let parsed = Cli::try_parse_from(["pleiades", "kv", "put", "k", "v", "--cert", "a.crt", "--key", "a.key"]);
        let Ok(Cli { command: Command::Kv(args) }) = parsed else { panic!("{parsed:?}") };
        assert_eq!(args.client.key, Some(PathBuf::from("a.key")));
        assert!(matches!(args.command, KvCommand::Put { ref key, .. } if key == "k"));
    }

    #[test]
    fn addresses_take_host_names_and_the_server_name_follows_them() {
        let args = |argv: &[&str]| match Cli::try_parse_from(argv) {
            Ok(Cli { command: Command::Kv(args) }) => Ok(args.client),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let by_name = args(&["pleiades", "kv", "get", "k", "--addr", "demo.db.svc:7400"]).unwrap();
        assert_eq!(by_name.client_config().server_name.as_deref(), Some("demo.db.svc"));
        let by_ip = args(&["pleiades", "kv", "get", "k", "--addr", "127.0.0.1:7400"]).unwrap();
        assert_eq!(by_ip.server_name(), "localhost", "local certificates name localhost");
        let v6 = args(&["pleiades", "kv", "get", "k", "--addr", "[::1]:7400", "--server-name", "demo.db.svc"]).unwrap();
        assert_eq!(v6.server_name(), "demo.db.svc");
        for bad in ["demo.db.svc", "demo.db.svc:http", "::1:7400", "de mo:7400", ":7400", "x-.svc:1"] {
            let error = args(&["pleiades", "kv", "get", "k", "--addr", bad]).unwrap_err();
            assert!(error.contains("--addr"), "{bad}: {error}");
        }
    }
}
