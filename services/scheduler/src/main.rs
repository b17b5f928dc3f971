//! `push0-scheduler`: plans workflows and releases tasks in priority order.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// push0 scheduler: plans each team's workflow per block and releases tasks in priority order
#[derive(Parser, Debug)]
#[command(name = "push0-scheduler", version)]
struct Args {
    #[command(flatten)]
    common: push0_runtime::CommonArgs,

    /// Teams file (TOML) written into the team registry at start; without it the registry in
    /// NATS is used as it is
    #[arg(long, env = "PUSH0_TEAMS")]
    teams: Option<PathBuf>,

    /// Most undelivered tasks one (team, class) queue holds on the bus; more urgent work
    /// waits in the scheduler so provers see the priority order
    #[arg(long, env = "PUSH0_MAX_UNDELIVERED", default_value_t = 16)]
    max_undelivered: u64,

    /// Most tasks one team's work holds in the scheduler's memory; blocks arriving past it
    /// are planned and recorded, and wait in their plans on the bus until half of it is left
    #[arg(long, env = "PUSH0_MAX_HELD", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_held: u64,

    /// How often a queue with held work is re-read from the server
    #[arg(long, env = "PUSH0_POLL_INTERVAL", default_value = "20ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,

    /// Raise `no_live_prover` when a team has pending work and no live gateway for this long
    #[arg(long, env = "PUSH0_ALERT_NO_PROVER_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    alert_no_prover_after: Duration,

    /// Raise `deadline_misses` when the share of deadlines missed in the window exceeds this
    #[arg(long, env = "PUSH0_ALERT_MISS_RATE", default_value_t = 0.5)]
    alert_miss_rate: f64,

    /// Window of the deadline miss rate
    #[arg(long, env = "PUSH0_ALERT_MISS_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    alert_miss_window: Duration,

    /// Monitoring URLs of the NATS servers (comma-separated, such as http://nats:8222): their
    /// JetStream storage use and limit, from `/jsz`, are exported as metrics
    #[arg(long, env = "PUSH0_NATS_MONITOR_URL", value_delimiter = ',')]
    nats_monitor_url: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let teams = match &args.teams {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => fail(&format!("cannot read teams file {}: {e}", path.display())),
            Ok(text) => match push0_protocol::TeamsFile::parse(&text) {
                Ok(teams) => Some(teams),
                Err(problems) => fail(&format!(
                    "teams file {}:\n  {}",
                    path.display(),
                    problems.join("\n  ")
                )),
            },
        },
    };
    let config = push0_scheduler::Config {
        teams,
        max_undelivered: args.max_undelivered,
        max_held: args.max_held as usize,
        poll_interval: args.poll_interval,
        alerts: push0_scheduler::track::AlertConfig {
            no_prover_after: args.alert_no_prover_after,
            miss_rate: args.alert_miss_rate,
            miss_window: args.alert_miss_window,
            ..Default::default()
        },
        monitor_urls: args.nats_monitor_url,
        ..Default::default()
    };
    push0_runtime::service::main(
        push0_scheduler::SERVICE,
        &args.common,
        |bus, shutdown| async move {
            // One active scheduler; any others stand by for its lease.
            push0_runtime::lease::while_leader(&bus, "scheduler", shutdown, |active| {
                push0_scheduler::run(bus.clone(), config.clone(), active)
            })
            .await
        },
    );
}

fn fail(message: &str) -> ! {
    eprintln!("push0-scheduler: {message}");
    std::process::exit(64);
}
