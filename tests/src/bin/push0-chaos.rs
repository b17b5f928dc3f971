//! push0-chaos: the full chaos drill (see `push0_tests::chaos`). Prints the report and the
//! summary line; exits 1 if an invariant does not hold.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use push0_tests::chaos::{ChaosConfig, default_logs, run};

/// Kill gateways, schedulers, aggregators and a NATS node while blocks are proved, then check
/// that every block was proved exactly once per team, in order, and none of an orphan
#[derive(Parser)]
struct Args {
    /// Blocks on the chain (three more are submitted and orphaned by a reorg)
    #[arg(long, default_value_t = 500)]
    blocks: u64,
    /// Blocks submitted per second
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// A random gateway is SIGKILLed (and restarted) this often while blocks come
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    gateway_kill_every: Duration,
    /// Latency of the simulated provers
    #[arg(long, default_value = "uniform:60ms..200ms")]
    sim_latency: String,
    /// Where service logs go (default: a fresh folder under the temp dir)
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ChaosConfig::new(args.blocks, args.logs.unwrap_or_else(default_logs));
    config.rate = args.rate;
    config.gateway_kill_every = args.gateway_kill_every;
    config.sim_latency = args.sim_latency;
    eprintln!("service logs in {}", config.logs.display());
    let report = run(&config).await?;
    print!("{}", report.render());
    if !report.holds() {
        std::process::exit(1);
    }
    Ok(())
}
