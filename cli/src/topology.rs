//! `push0 topology apply|check`: the one step that declares the JetStream topology, and a
//! read-only look at it (what every service does at start).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use push0::report::table;
use push0_runtime::Bus;
use push0_runtime::topology::{self, Action};

use crate::Connection;

#[derive(clap::Args, Debug)]
pub struct TopologyArgs {
    #[command(subcommand)]
    command: TopologyCommand,
}

/// Where the topology is and at how many replicas.
#[derive(clap::Args, Debug)]
pub struct Target {
    #[command(flatten)]
    conn: Connection,
    /// Replicas of every stream, bucket and the object store: 1 on a single server, 3 on a
    /// 3-node cluster (services are started with the same `--replicas`)
    #[arg(long, env = "PUSH0_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
}

#[derive(clap::Subcommand, Debug)]
pub enum TopologyCommand {
    /// Create every stream, bucket and object store (the shared one and each team's), or
    /// bring each to its declared settings (saying what changed); returns once all are led
    /// and their replicas current. Idempotent; safe to run from several places at once
    Apply {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (a cluster electing leaders or a node catching up)
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Teams file whose teams get their own object store, as every registered team does
        #[arg(long, env = "PUSH0_TEAMS")]
        teams: Option<PathBuf>,
        /// More teams, by name, that get their own object store (comma-separated)
        #[arg(long, env = "PUSH0_TEAM_STORES", value_delimiter = ',', value_parser = team_name)]
        team_stores: Vec<String>,
    },
    /// Check the topology without changing it: present, as declared, led. Exits 1 if not
    Check {
        #[command(flatten)]
        target: Target,
    },
}

fn team_name(name: &str) -> Result<String, String> {
    push0_protocol::names::validate_token("team", name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

async fn connect(target: &Target) -> Result<Bus> {
    let mut bus = target.conn.bus("push0-topology").await?;
    bus.replicas = usize::from(target.replicas);
    Ok(bus)
}

pub async fn topology(args: TopologyArgs) -> Result<()> {
    match args.command {
        TopologyCommand::Apply {
            target,
            timeout,
            teams,
            team_stores,
        } => {
            let bus = connect(&target).await?;
            let mut applied = topology::apply(&bus, bus.replicas, timeout).await?;
            let mut names: BTreeSet<String> = crate::teams::registered(&bus)
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            names.extend(team_stores);
            if let Some(path) = &teams {
                names.extend(
                    crate::teams::read_teams_file(path)?
                        .into_iter()
                        .map(|t| t.name),
                );
            }
            let names: Vec<String> = names.into_iter().collect();
            applied.extend(topology::apply_team_stores(&bus, &names, bus.replicas, timeout).await?);
            let mut rows = vec![vec!["kind".into(), "name".into(), "action".into()]];
            for a in &applied {
                let action = match &a.action {
                    Action::Created => "created".to_string(),
                    Action::Unchanged => "as declared".to_string(),
                    Action::Updated(changes) => format!("updated: {}", changes.join("; ")),
                };
                rows.push(vec![a.kind.to_string(), a.name.clone(), action]);
            }
            print!("{}", table(&rows));
            let changed = applied
                .iter()
                .filter(|a| a.action != Action::Unchanged)
                .count();
            println!(
                "topology applied: {} streams at {} replica(s), {changed} created or changed, all led",
                applied.len(),
                bus.replicas
            );
        }
        TopologyCommand::Check { target } => {
            let bus = connect(&target).await?;
            let problems = topology::check(&bus, bus.replicas).await;
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                bail!(
                    "{} problem(s); fix: {}",
                    problems.len(),
                    topology::fix_command(&bus, &target.conn.nats_url, bus.replicas)
                );
            }
            println!("topology ready: as declared and led");
        }
    }
    Ok(())
}
