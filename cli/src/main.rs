//! `push0`: the operator tool. `push0 dev` runs a whole local cluster and proves blocks;
//! `push0 submit` publishes a block; `push0 status` shows what happened to blocks.

mod commands;

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
    /// Show the status of a chain, or of one block
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct Connection {
    /// NATS server URL; a comma-separated list for a cluster
    #[arg(long, env = "PUSH0_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix
    #[arg(long, env = "PUSH0_PREFIX", default_value = "push0")]
    prefix: String,
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
    /// Blocks per second from the source (0 = all at once)
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Chain the source publishes
    #[arg(long, default_value = "devnet")]
    chain: String,
    /// First block number of the source
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Payload bytes per block
    #[arg(long, default_value_t = 64 * 1024)]
    payload_size: usize,
    /// Teams file (TOML); default: team `alpha` (single) and team `beta` (split into 4, arity 2)
    #[arg(long)]
    teams: Option<PathBuf>,
    /// Gateways per team
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Prover slots per gateway
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Simulated prover latency: fixed:D, uniform:A..B or lognormal:MEDIAN,SIGMA
    #[arg(long, default_value = "lognormal:200ms,0.25")]
    sim_latency: Latency,
    /// Give up waiting for proofs after this long
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
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
    /// Chain id
    chain: String,
    /// Block number; without it, the chain's overview
    number: Option<u64>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => commands::dev(args).await,
        Command::Submit(args) => commands::submit(args).await,
        Command::Status(args) => commands::status(args).await,
    };
    if let Err(e) = result {
        eprintln!("push0: {e:#}");
        std::process::exit(1);
    }
}
