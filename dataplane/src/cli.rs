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
    Node(NodeArgs),
    /// Show a node's identity, version and addresses.
    Info(ClientArgs),
    /// Show a node's health.
    Health(ClientArgs),
    /// Measure PWP round trips to a node (small system requests, or wire-level latency tests).
    Ping(PingArgs),
    /// Read and write keys.
    Kv(KvArgs),
}

/// Node settings. Precedence: flags, then environment variables, then the config file, then
/// defaults.
#[derive(Debug, Args)]
pub struct NodeArgs {
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
    /// Close a stream that stops mid-frame for this many milliseconds.
    #[arg(long, env = "PLEIADES_STALL_TIMEOUT_MS")]
    pub stall_timeout_ms: Option<u64>,
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
            stall_timeout_ms => wire.stall_timeout_ms,
        }
        if self.tls_cert.is_some() {
            config.tls.cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls.key = self.tls_key;
        }
        config.validate()?;
        Ok(config)
    }
}

/// How to reach a node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The node's QUIC (PWP) address.
    #[arg(long, env = "PLEIADES_ADDR", default_value = "127.0.0.1:7400", global = true)]
    pub addr: SocketAddr,
    /// CA certificate that signed the node's certificate (a generated one is <data-dir>/tls/ca.crt).
    #[arg(long, env = "PLEIADES_CA_CERT", default_value = "pleiades-data/tls/ca.crt", global = true)]
    pub ca_cert: PathBuf,
    /// Name the node's certificate must carry.
    #[arg(long, env = "PLEIADES_SERVER_NAME", default_value = "localhost", global = true)]
    pub server_name: String,
    /// Give up on a request after this many milliseconds.
    #[arg(long, env = "PLEIADES_TIMEOUT_MS", default_value_t = 5_000, global = true)]
    pub timeout_ms: u64,
}

impl ClientArgs {
    pub fn client_config(&self) -> crate::client::ClientConfig {
        crate::client::ClientConfig {
            addr: self.addr,
            server_name: self.server_name.clone(),
            ca_cert: self.ca_cert.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
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
    },
    /// List a key's versions, newest first.
    Versions { key: String },
    /// Show a key's descriptor.
    Describe { key: String },
}
