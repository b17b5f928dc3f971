//! `push0`: the operator tool. `push0 dev` runs a whole local cluster and proves blocks;
//! `push0 submit` publishes a block; `push0 status` shows what happened to blocks.

mod auth;
mod commands;
mod teams;
mod topology;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use push0_prover_gateway::latency::Latency;

/// push0: orchestrates zero-knowledge proof generation for blockchains
#[derive(Parser, Debug)]
#[command(name = "push0", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole local cluster (nats-server, the four services, provers, a block source) and
    /// prove blocks, with live progress and a summary
    Dev(DevArgs),
    /// Submit one block
    Submit(SubmitArgs),
    /// Show each team's provers, queues, deadlines and alerts; with a chain, its blocks
    Status(StatusArgs),
    /// Serve a live page of the cluster: recent blocks per team, throughput, queues, alerts,
    /// dead letters
    Dashboard(DashboardArgs),
    /// Verify a block proof: a saved block-proof/v1 message, or one fetched from the PROOFS stream
    Verify(VerifyArgs),
    /// Inspect and replay dead letters
    Dlq(DlqArgs),
    /// Add, remove or list proving teams at runtime
    Team(teams::TeamArgs),
    /// Make the identities' nkeys and render the nats-server authorization block that confines
    /// each to the subjects its work needs
    Auth(auth::AuthArgs),
    /// Declare the streams, buckets and object store (the only step that creates or changes
    /// them), or check them
    Topology(topology::TopologyArgs),
    /// GET a URL and exit 0 if it answers 2xx, 1 otherwise: a health check for images with no
    /// HTTP client (`push0 probe http://127.0.0.1:9090/readyz`)
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    conn: Connection,
    /// Address to serve the page on (loopback by default: the page has no login)
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: std::net::SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The URL to GET, such as a service's /readyz or /healthz
    url: String,
    /// How long to wait for the answer
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (oldest first)
    List {
        /// Only this reason (e.g. max_deliveries, malformed)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one dead letter in full
    Show {
        /// Its sequence number in the DLQ stream (first column of `list`)
        seq: u64,
    },
    /// Publish a dead letter's original message again, to its original subject
    Replay {
        /// Its sequence number in the DLQ stream
        seq: u64,
    },
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A block-proof/v1 message saved as its MessagePack bytes
    #[arg(long, conflicts_with_all = ["team", "chain", "number"])]
    file: Option<PathBuf>,
    /// NATS server to fetch the proof from (with --team, --chain, --number) or its stored bytes
    #[arg(long, env = "PUSH0_NATS_URL")]
    nats_url: Option<String>,
    /// Subject prefix
    #[arg(long, env = "PUSH0_PREFIX", default_value = "push0")]
    prefix: String,
    #[command(flatten)]
    access: push0_runtime::BusAccess,
    /// Team whose proof to fetch
    #[arg(long, requires = "nats_url")]
    team: Option<String>,
    /// Chain of the block
    #[arg(long, requires = "team")]
    chain: Option<String>,
    /// Block number
    #[arg(long, requires = "team")]
    number: Option<u64>,
    /// Verifier command (program and arguments, space-separated); default: the reference
    /// prover of the proof's system
    #[arg(long, value_delimiter = ' ')]
    verifier: Option<Vec<String>>,
}

#[derive(clap::Args, Debug)]
pub struct Connection {
    /// NATS server URL; a comma-separated list for a cluster
    #[arg(long, env = "PUSH0_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix
    #[arg(long, env = "PUSH0_PREFIX", default_value = "push0")]
    prefix: String,
    #[command(flatten)]
    access: push0_runtime::BusAccess,
}

impl Connection {
    /// A connection to the bus, under `name`.
    async fn bus(&self, name: &str) -> anyhow::Result<push0_runtime::Bus> {
        Ok(
            push0_runtime::Bus::connect_with(&self.nats_url, &self.prefix, name, &self.access)
                .await?,
        )
    }
}

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Attach to this NATS server instead of starting one (comma-separated list for a cluster)
    #[arg(long, env = "PUSH0_NATS_URL")]
    nats_url: Option<String>,
    /// Subject prefix
    #[arg(long, env = "PUSH0_PREFIX", default_value = "push0")]
    prefix: String,
    /// Blocks the built-in source publishes; 0 = no source: prove whatever is published onto
    /// <prefix>.blocks.<chain> until SIGTERM
    #[arg(long, default_value_t = 20)]
    blocks: u64,
    /// Blocks per second from the source (0 = all at once); the default keeps the reference
    /// provers of the default teams busy without a backlog on 2 cores
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// Chain the source publishes
    #[arg(long, default_value = "devnet")]
    chain: String,
    /// First block number of the source
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Payload bytes per block (the plonky2 prover takes at most 4 KiB per part)
    #[arg(long, default_value_t = 8 * 1024)]
    payload_size: usize,
    /// Teams file (TOML); default: team `alpha` (single, winterfell STARK) and team `beta`
    /// (split into 2 parts, aggregated recursively with plonky2). A team whose
    /// `proof_system` is plonky2 or winterfell runs that reference prover; others the simulated one
    #[arg(long)]
    teams: Option<PathBuf>,
    /// Simulated provers for every team (no real proofs: fast, for load and demos)
    #[arg(long)]
    sim: bool,
    /// Gateways per team with simulated provers
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Prover slots per gateway with simulated provers (reference provers: 1 gateway, 2 slots)
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Simulated prover latency: fixed:D, uniform:A..B or lognormal:MEDIAN,SIGMA
    #[arg(long, default_value = "lognormal:200ms,0.25")]
    sim_latency: Latency,
    /// Give up waiting for proofs after this long
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Run nats-server with TLS required and client certificates verified, under a
    /// throw-away CA made for this run; every connection of the cluster uses TLS
    #[arg(long, conflicts_with = "nats_url")]
    tls: bool,
    /// Run nats-server admitting anyone (by default it admits only the cluster's
    /// identities, each with its own nkey and confined to the subjects its work needs)
    #[arg(long, conflicts_with = "nats_url")]
    no_auth: bool,
    /// TLS and credentials for a server given with --nats-url
    #[command(flatten)]
    server_access: push0_runtime::BusAccess,
    /// Address of the live dashboard (port 0: any free port; taken: any free port)
    #[arg(long, default_value = "127.0.0.1:8420")]
    dashboard: std::net::SocketAddr,
    /// Run without the dashboard
    #[arg(long, conflicts_with = "dashboard")]
    no_dashboard: bool,
    /// After the summary, keep the cluster and its dashboard running until Ctrl-C
    #[arg(long)]
    hold: bool,
    /// Report every team's blocks to this Ethproofs-compatible API (the reporter runs
    /// in-process; the default teams get cluster ids 1 and 2, a teams file's teams need
    /// `ethproofs_cluster_id`). The key comes from ETHPROOFS_API_KEY or --ethproofs-key-file
    #[arg(long, env = "PUSH0_ETHPROOFS_URL")]
    ethproofs_url: Option<String>,
    /// A file holding the API key (when ETHPROOFS_API_KEY is not set)
    #[arg(long, env = "PUSH0_ETHPROOFS_KEY_FILE", requires = "ethproofs_url")]
    ethproofs_key_file: Option<PathBuf>,
    /// The API's rate limit per key: requests per window
    #[arg(long, default_value = "60/60s", requires = "ethproofs_url")]
    ethproofs_rate: push0_reporter::Rate,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    conn: Connection,
    /// Chain id
    #[arg(long)]
    chain: String,
    /// Block number
    #[arg(long)]
    number: u64,
    /// Payload from this file
    #[arg(long, conflicts_with = "payload_size")]
    payload_file: Option<PathBuf>,
    /// Or a generated payload of this many bytes
    #[arg(long, default_value_t = 4096)]
    payload_size: usize,
    /// Block hash (64 hex digits); default: derived from chain and number
    #[arg(long)]
    hash: Option<String>,
    /// Parent hash (64 hex digits); default: the derived hash of the previous number
    #[arg(long)]
    parent_hash: Option<String>,
    /// Unix ms by which the proof is wanted
    #[arg(long)]
    deadline_ms: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Connection,
    /// Chain id; without it, only the per-team overview
    chain: Option<String>,
    /// Block number; without it, the chain's overview
    #[arg(requires = "chain")]
    number: Option<u64>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => commands::dev(args).await,
        Command::Submit(args) => commands::submit(args).await,
        Command::Status(args) => commands::status(args).await,
        Command::Dashboard(args) => commands::dashboard(args).await,
        Command::Dlq(args) => commands::dlq(args).await,
        Command::Team(args) => teams::team(args).await,
        Command::Auth(args) => auth::auth(args).await,
        Command::Topology(args) => topology::topology(args).await,
        Command::Probe(args) => match push0_runtime::http::get(&args.url, args.timeout) {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, body)) => {
                eprintln!("{}: {status} {}", args.url, body.trim());
                std::process::exit(1)
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        },
        Command::Verify(args) => match commands::verify(args).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("push0: {e:#}");
        std::process::exit(1);
    }
}
