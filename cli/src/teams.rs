//! `push0 team add|remove|list` and the per-team overview of `push0 status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use push0::report::table;
use push0_protocol::auth::Identity;
use push0_protocol::topology::CAPACITY_TTL;
use push0_protocol::{
    Capacity, LatePolicy, Mode, Shape, TeamConfig, TeamStatus, TeamsFile, WireMessage, decode,
    now_ms,
};
use push0_runtime::auth::Keys;
use push0_runtime::{Bus, register_team, remove_team, topology};

use crate::Connection;

/// How long `push0 team add` waits for a new team's object store to be created and led.
const TEAM_STORE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct TeamArgs {
    #[command(flatten)]
    conn: Connection,
    /// Keys folder of the cluster's identities (`push0 auth --keys`): `add` makes each added
    /// team's credentials there, `remove` deletes the team's
    #[arg(long, env = "PUSH0_KEYS", requires = "authorization")]
    keys: Option<PathBuf>,
    /// The authorization file nats-server includes: rewritten from the registered teams after
    /// the change (then reload the server)
    #[arg(long, env = "PUSH0_AUTHORIZATION", requires = "keys")]
    authorization: Option<PathBuf>,
    #[command(subcommand)]
    command: TeamCommand,
}

#[derive(clap::Subcommand, Debug)]
// Parsed once per run from the command line: its size is of no concern.
#[allow(clippy::large_enum_variant)]
pub enum TeamCommand {
    /// Register a team (or replace its settings); it is planned from the next block on
    Add(AddArgs),
    /// Remove a team: it stops receiving work and its queued tasks are withdrawn
    Remove { name: String },
    /// List the registered teams with their live capacity
    List,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Team name; not needed with --file
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// Register every team of a teams file (TOML, `[[team]]` tables) instead
    #[arg(long, conflicts_with = "name")]
    file: Option<PathBuf>,
    /// single | split
    #[arg(long, default_value = "single")]
    shape: String,
    /// Leaves of a split workflow
    #[arg(long)]
    parts: Option<u32>,
    /// Children per aggregation node
    #[arg(long, default_value_t = 2)]
    arity: u32,
    /// sequential | realtime
    #[arg(long, default_value = "sequential")]
    mode: String,
    /// Realtime: deadline after submission
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    slot: Duration,
    /// Realtime: prove only blocks whose number is a multiple of this
    #[arg(long, default_value_t = 1)]
    sample_every: u64,
    /// Realtime: drop | finish-late
    #[arg(long, default_value = "drop")]
    late_policy: String,
    /// The team's cluster id at Ethproofs: push0-reporter reports its blocks under it
    #[arg(long)]
    ethproofs_cluster_id: Option<u64>,
    /// Task class of leaf proofs
    #[arg(long, default_value = "prove")]
    leaf_class: String,
    /// Task class of aggregation proofs
    #[arg(long, default_value = "prove")]
    aggregate_class: String,
    /// Chains the team proves, comma-separated; default: all
    #[arg(long, value_delimiter = ',')]
    chains: Vec<String>,
    /// Ack deadline of a task, renewed by gateway heartbeats
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// Deliveries (and invalid proofs) of one task before it is dead-lettered
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// Proof system the team's provers produce
    #[arg(long)]
    proof_system: Option<String>,
    /// Verifier command run on every sub-proof, space-separated
    #[arg(long, value_delimiter = ' ')]
    verifier: Vec<String>,
}

fn team_from_flags(a: &AddArgs, name: &str) -> Result<TeamConfig> {
    let shape = match a.shape.as_str() {
        "single" => Shape::Single,
        "split" => Shape::Split,
        other => bail!("--shape must be single or split, not {other:?}"),
    };
    let mode = match a.mode.as_str() {
        "sequential" => Mode::Sequential,
        "realtime" => Mode::Realtime,
        other => bail!("--mode must be sequential or realtime, not {other:?}"),
    };
    let late_policy = match a.late_policy.as_str() {
        "drop" => LatePolicy::Drop,
        "finish-late" => LatePolicy::FinishLate,
        other => bail!("--late-policy must be drop or finish-late, not {other:?}"),
    };
    Ok(TeamConfig {
        shape,
        parts: a.parts,
        arity: a.arity,
        chains: a.chains.clone(),
        leaf_class: a.leaf_class.clone(),
        aggregate_class: a.aggregate_class.clone(),
        ack_wait_ms: a.ack_wait.as_millis() as u64,
        max_deliver: a.max_deliver,
        proof_system: a.proof_system.clone(),
        verifier: a.verifier.clone(),
        mode,
        slot_ms: a.slot.as_millis() as u64,
        sample_every: a.sample_every,
        late_policy,
        ethproofs_cluster_id: a.ethproofs_cluster_id,
        ..TeamConfig::single(name)
    })
}

pub async fn team(args: TeamArgs) -> Result<()> {
    let bus = args.conn.bus("push0-cli").await?;
    let keys = args.keys.as_deref().map(Keys::open).transpose()?;
    let changes = !matches!(args.command, TeamCommand::List);
    match args.command {
        TeamCommand::Add(a) => {
            let teams = match (&a.file, &a.name) {
                (Some(path), _) => read_teams_file(path)?,
                (None, Some(name)) => {
                    let team = team_from_flags(&a, name)?;
                    let problems = team.problems();
                    if !problems.is_empty() {
                        bail!("{}", problems.join("\n"));
                    }
                    vec![team]
                }
                (None, None) => bail!("give a team name or --file"),
            };
            // The stores first: a gateway that finds its team registered opens its store.
            let names: Vec<String> = teams.iter().map(|t| t.name.clone()).collect();
            let replicas = topology::replicas_in_use(&bus).await?;
            for applied in
                topology::apply_team_stores(&bus, &names, replicas, TEAM_STORE_TIMEOUT).await?
            {
                println!("{applied}");
            }
            for t in &teams {
                register_team(&bus, t).await?;
                println!("team {} registered ({})", t.name, describe(t));
            }
            if let Some(keys) = &keys {
                for t in &teams {
                    let path = keys.path(&Identity::team(t));
                    keys.ensure(&Identity::team(t))?;
                    println!("team {} signs in with {}", t.name, path.display());
                }
            }
        }
        TeamCommand::Remove { name } => {
            let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
            if kv.get(&name).await?.is_none() {
                bail!("no team {name:?} is registered");
            }
            remove_team(&bus, &name).await?;
            println!("team {name} removed; the scheduler withdraws its queued work");
            if topology::delete_team_store(&bus, &name).await? {
                println!(
                    "object store {} deleted",
                    bus.subjects.team_object_store(&name)
                );
            }
            if let Some(keys) = &keys {
                keys.remove(&Identity::Team {
                    name: name.clone(),
                    classes: Vec::new(),
                })?;
            }
        }
        TeamCommand::List => {
            let teams = registered(&bus).await?;
            let capacity = live_capacity(&bus).await?;
            let mut rows = vec![vec![
                "team".to_string(),
                "mode".into(),
                "workflow".into(),
                "classes".into(),
                "chains".into(),
                "live gateways".into(),
                "slots".into(),
            ]];
            for t in &teams {
                let (gateways, slots) = capacity.get(&t.name).copied().unwrap_or((0, 0));
                rows.push(vec![
                    t.name.clone(),
                    mode_name(t),
                    workflow_name(t),
                    t.classes().join(","),
                    if t.chains.is_empty() {
                        "all".into()
                    } else {
                        t.chains.join(",")
                    },
                    gateways.to_string(),
                    slots.to_string(),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    if let (Some(keys), Some(out)) = (&keys, &args.authorization)
        && changes
    {
        let teams = registered(&bus).await?;
        crate::auth::write(keys, &bus.subjects, &teams, out)?;
        println!("reload nats-server to apply it: nats-server --signal reload");
    }
    Ok(())
}

fn describe(t: &TeamConfig) -> String {
    format!("{}, {}", mode_name(t), workflow_name(t))
}

fn mode_name(t: &TeamConfig) -> String {
    match t.mode {
        Mode::Sequential => "sequential".into(),
        Mode::Realtime => {
            let mut s = format!("realtime {} ms", t.slot_ms);
            if t.sample_every > 1 {
                s.push_str(&format!(", every {}th", t.sample_every));
            }
            if t.late_policy == LatePolicy::FinishLate {
                s.push_str(", finish-late");
            }
            s
        }
    }
}

pub fn workflow_name(t: &TeamConfig) -> String {
    match t.shape {
        Shape::Single => "single".into(),
        Shape::Split => format!("split {}x, arity {}", t.parts.unwrap_or(1), t.arity),
    }
}

/// The teams of the teams file at `path`, every problem named.
pub fn read_teams_file(path: &Path) -> Result<Vec<TeamConfig>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    TeamsFile::parse(&text)
        .map_err(|problems| anyhow::anyhow!("{}:\n  {}", path.display(), problems.join("\n  ")))
}

/// Every registered team, sorted by name.
pub async fn registered(bus: &Bus) -> Result<Vec<TeamConfig>> {
    let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
    let mut keys = kv.keys().await?;
    let mut teams = Vec::new();
    while let Some(key) = keys.next().await {
        if let Some(bytes) = kv.get(key?).await?
            && let Ok(t) = rmp_serde::from_slice::<TeamConfig>(&bytes)
        {
            teams.push(t);
        }
    }
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(teams)
}

/// Live gateways and slots per team, from capacity records younger than their TTL.
async fn live_capacity(bus: &Bus) -> Result<BTreeMap<String, (u32, u32)>> {
    let kv = bus.kv(&bus.subjects.bucket_capacity()).await?;
    let mut keys = kv.keys().await?;
    let mut live: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let now = now_ms();
    while let Some(key) = keys.next().await {
        let Some(bytes) = kv.get(key?).await? else {
            continue;
        };
        let Ok(c) = decode::<Capacity>(Some(Capacity::SCHEMA), &bytes) else {
            continue;
        };
        if now.saturating_sub(c.updated_at_ms) < CAPACITY_TTL.as_millis() as u64 {
            let e = live.entry(c.team.clone()).or_default();
            e.0 += 1;
            e.1 += c.slots * c.classes.len() as u32;
        }
    }
    Ok(live)
}

/// The per-team table of `push0 status`: capacity, queues, deadlines and alerts.
pub async fn overview(bus: &Bus) -> Result<String> {
    let teams = registered(bus).await?;
    let capacity = live_capacity(bus).await?;
    let status_kv = bus.kv(&bus.subjects.bucket_status()).await?;
    let tasks = bus
        .js
        .get_stream(bus.subjects.stream_tasks())
        .await
        .context("task stream")?;
    let mut rows = vec![vec![
        "team".to_string(),
        "mode".into(),
        "live provers (slots)".into(),
        "queued by class (held+bus)".into(),
        "in flight".into(),
        "behind head".into(),
        "deadline hits".into(),
        "oldest unproven".into(),
        "alerts".into(),
    ]];
    let now = now_ms();
    for t in &teams {
        let status = match status_kv.get(&t.name).await? {
            Some(bytes) => decode::<TeamStatus>(Some(TeamStatus::SCHEMA), &bytes).ok(),
            None => None,
        };
        let (gateways, slots) = capacity.get(&t.name).copied().unwrap_or((0, 0));
        let mut queued = Vec::new();
        let mut in_flight = 0;
        for class in t.classes() {
            let held = status
                .as_ref()
                .and_then(|s| s.held.iter().find(|(c, _)| *c == class))
                .map_or(0, |(_, n)| *n);
            let durable = bus.subjects.task_consumer(&t.name, &class);
            let (pending, acking) = match tasks.consumer_info(&durable).await {
                Ok(info) => (info.num_pending, info.num_ack_pending),
                Err(_) => (0, 0),
            };
            in_flight += acking;
            queued.push(format!("{class} {held}+{pending}"));
        }
        let (behind, oldest, hits, alerts) = match &status {
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                "no scheduler status".into(),
            ),
            Some(s) => {
                let stale = now.saturating_sub(s.updated_at_ms) > 5_000;
                let behind = s
                    .chains
                    .iter()
                    .map(|c| format!("{} {}", c.chain, c.unproven))
                    .collect::<Vec<_>>()
                    .join(", ");
                let oldest = s
                    .chains
                    .iter()
                    .filter_map(|c| {
                        Some(format!(
                            "{}/{} ({:.1} s)",
                            c.chain,
                            c.oldest_unproven?,
                            c.oldest_unproven_age_ms? as f64 / 1000.0
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let decided = s.deadline_hits + s.deadline_misses;
                let hits = match (decided, s.window_hit_rate) {
                    (0, _) => "-".to_string(),
                    (_, Some(rate)) => format!(
                        "{}/{} (recent {:.0} %)",
                        s.deadline_hits,
                        decided,
                        rate * 100.0
                    ),
                    (_, None) => format!("{}/{}", s.deadline_hits, decided),
                };
                let mut alerts: Vec<&str> = s.alerts.iter().map(|a| a.as_str()).collect();
                if stale {
                    alerts.push("status stale: is the scheduler running?");
                }
                let alerts = if alerts.is_empty() {
                    "-".to_string()
                } else {
                    alerts.join(", ")
                };
                (or_dash(behind), or_dash(oldest), hits, alerts)
            }
        };
        rows.push(vec![
            t.name.clone(),
            mode_name(t),
            format!("{gateways} ({slots})"),
            queued.join(", "),
            in_flight.to_string(),
            behind,
            hits,
            oldest,
            alerts,
        ]);
    }
    Ok(table(&rows))
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}
