//! The chaos drill: a 3-node NATS cluster (R3 everywhere) and the real service binaries as
//! processes — two schedulers, two aggregators, ingest and seven gateways for three teams
//! (`alpha` single, `beta` split 4 / arity 2, `gamma` single) — fed a chain of blocks while
//! gateways are SIGKILLed every couple of seconds, the active scheduler and the active
//! aggregator are SIGKILLed, a NATS node is SIGKILLed and later restarted, a reorg replaces
//! three blocks and a poison block makes `gamma`'s prover fail until an operator "fixes" it and
//! replays the dead letter. At the end it checks that every team published exactly one proof
//! of every block on the chain, in order, none of an orphan, and that only the poison block was
//! dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use push0::source::{block_hash, make_block, submit};
use push0_natsd::NatsCluster;
use push0_protocol::wire::WireMessage;
use push0_protocol::{
    BlockProof, BlockSubmission, DlqReason, SCHEMA_HEADER, TaskResult, TeamConfig, Workflow, decode,
};
use push0_prover_gateway::prover::SIM_POISON_MARKER;
use push0_runtime::Bus;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::{ServiceProcess, all_proofs, binary, dead_letters, expected_sim_proof, random_prefix};

pub const CHAIN: &str = "eth";
const ACK_WAIT: Duration = Duration::from_secs(3);
/// Target for a dead gateway's task to start again elsewhere: the ack wait and a second.
const REASSIGN_BOUND: Duration = Duration::from_secs(4);
const POISON_TEAM: &str = "gamma";

/// The drill's teams: every one with a 3 s ack deadline.
pub const CHAOS_TEAMS: &str = r#"
[[team]]
name = "alpha"
ack_wait_ms = 3000

[[team]]
name = "beta"
shape = "split"
parts = 4
arity = 2
ack_wait_ms = 3000

[[team]]
name = "gamma"
ack_wait_ms = 3000
max_deliver = 3
"#;

/// Gateways per team (each with two prover slots).
const GATEWAYS: [(&str, usize); 3] = [("alpha", 2), ("beta", 3), ("gamma", 2)];

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub blocks: u64,
    /// Blocks submitted per second.
    pub rate: f64,
    pub gateway_kill_every: Duration,
    pub sim_latency: String,
    pub payload_size: usize,
    /// How long after the last submission every proof must be out.
    pub drain_timeout: Duration,
    /// Service logs go here.
    pub logs: PathBuf,
}

impl ChaosConfig {
    pub fn new(blocks: u64, logs: PathBuf) -> Self {
        Self {
            blocks,
            rate: 10.0,
            gateway_kill_every: Duration::from_secs(2),
            sim_latency: "uniform:60ms..200ms".into(),
            payload_size: 2048,
            drain_timeout: Duration::from_secs(180),
            logs,
        }
    }
}

/// What happened and what was found.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub blocks: u64,
    pub teams: usize,
    pub expected: usize,
    pub proofs: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub disorder: usize,
    pub orphans: usize,
    /// Proofs whose bytes are not the simulated proof of their block's payload.
    pub wrong_content: usize,
    /// Dead letters, and how many of them are not about the poison block.
    pub dead_letters: usize,
    pub stray_dead_letters: usize,
    /// Service processes that exited without being killed (each restarted, as a supervisor
    /// would, but a service must not die of anything the drill does).
    pub unexpected_exits: usize,
    pub per_team: Vec<TeamRow>,
    pub reassign_ms: Vec<u64>,
    pub longest_stall_ms: u64,
    pub events: Vec<(Duration, String)>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct TeamRow {
    pub team: String,
    pub expected: usize,
    pub proved: usize,
    pub duplicates: usize,
    pub disorder: usize,
    pub orphans: usize,
    /// Proofs of blocks later orphaned, published before the reorg was recorded.
    pub proved_before_reorg: usize,
}

impl ChaosReport {
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.disorder == 0
            && self.orphans == 0
            && self.wrong_content == 0
            && self.stray_dead_letters == 0
            && self.dead_letters > 0
            && self.unexpected_exits == 0
            && self
                .reassign_percentile(0.99)
                .is_some_and(|v| u128::from(v) <= REASSIGN_BOUND.as_millis())
    }

    pub fn reassign_percentile(&self, q: f64) -> Option<u64> {
        let mut v = self.reassign_ms.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        Some(v[i])
    }

    pub fn summary_line(&self) -> String {
        format!(
            "chaos: blocks={} teams={} proofs={} lost={} duplicates={} disorder={} orphans={} reassign_p99_ms={}",
            self.blocks,
            self.teams,
            self.proofs,
            self.lost,
            self.duplicates,
            self.disorder,
            self.orphans,
            self.reassign_percentile(0.99)
                .map_or("-".to_string(), |v| v.to_string())
        )
    }

    /// The report as markdown tables, ending with the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ok = |b: bool| if b { "yes" } else { "**NO**" };
        out.push_str(&format!(
            "chaos drill: {} blocks x {} teams on a 3-node R3 cluster, {:.0} s\n\n",
            self.blocks,
            self.teams,
            self.elapsed.as_secs_f64()
        ));
        out.push_str("| time s | event |\n|---|---|\n");
        for (at, what) in &self.events {
            out.push_str(&format!("| {:.1} | {what} |\n", at.as_secs_f64()));
        }
        out.push_str("\n| team | expected | proved | duplicates | out of order | orphan proofs | proved before the reorg |\n|---|---|---|---|---|---|---|\n");
        for t in &self.per_team {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                t.team,
                t.expected,
                t.proved,
                t.duplicates,
                t.disorder,
                t.orphans,
                t.proved_before_reorg
            ));
        }
        let p = |q| {
            self.reassign_percentile(q)
                .map_or("-".to_string(), |v| v.to_string())
        };
        let bound = REASSIGN_BOUND.as_millis();
        let p99_ok = self
            .reassign_percentile(0.99)
            .is_some_and(|v| u128::from(v) <= bound);
        out.push_str("\n| invariant | target | measured | holds |\n|---|---|---|---|\n");
        let none = |what: &'static str, n: usize| (what, "0".to_string(), n.to_string(), n == 0);
        let rows = [
            (
                "blocks x teams proved",
                self.expected.to_string(),
                (self.expected - self.lost).to_string(),
                self.lost == 0,
            ),
            none("duplicate proofs", self.duplicates),
            none("out-of-order publications", self.disorder),
            none(
                "proofs of orphaned blocks (published after the reorg was recorded)",
                self.orphans,
            ),
            none("proofs not of their block's payload", self.wrong_content),
            none(
                "service processes that exited on their own",
                self.unexpected_exits,
            ),
            (
                "dead letters not of the poison block",
                "0".into(),
                format!("{} (of {})", self.stray_dead_letters, self.dead_letters),
                self.stray_dead_letters == 0 && self.dead_letters > 0,
            ),
            (
                "task reassignment after a gateway kill, p50 / p99 / max ms",
                format!("p99 <= {bound}"),
                format!(
                    "{} / {} / {} (n = {})",
                    p(0.5),
                    p(0.99),
                    p(1.0),
                    self.reassign_ms.len()
                ),
                p99_ok,
            ),
            (
                "longest stall of a team (no proof published), ms",
                "-".into(),
                self.longest_stall_ms.to_string(),
                true,
            ),
        ];
        for (what, target, measured, holds) in rows {
            out.push_str(&format!(
                "| {what} | {target} | {measured} | {} |\n",
                ok(holds)
            ));
        }
        out.push('\n');
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }
}

/// Block `number` of fork `branch` of the test chain, whose first block is `from` (its parent
/// the main chain's block `from - 1`); its payload differs from the main chain's block.
pub fn fork_block(branch: &str, from: u64, number: u64, payload_size: usize) -> BlockSubmission {
    let hash = |n: u64| Sha256::digest(format!("fork/{branch}/{n}").as_bytes()).to_vec();
    let mut block = make_block(CHAIN, number, payload_size);
    block.payload.reverse();
    block.hash = hash(number);
    block.parent_hash = if number == from {
        block_hash(CHAIN, number - 1)
    } else {
        hash(number - 1)
    };
    block
}

/// The chain the drill feeds: which blocks get submitted and which end up on the chain.
struct Chain {
    /// In submission order.
    submissions: Vec<BlockSubmission>,
    canonical: BTreeMap<u64, Vec<u8>>,
    orphans: HashSet<Vec<u8>>,
    reorg_at: u64,
    poison: u64,
}

/// Reorg depth: blocks `reorg_at .. reorg_at + REORG_DEPTH` are replaced.
const REORG_DEPTH: u64 = 3;

fn chain(blocks: u64, payload_size: usize) -> Chain {
    let reorg_at = (blocks * 3 / 10).max(2);
    let poison = (blocks / 2).max(reorg_at + REORG_DEPTH + 1);
    let fork_top = reorg_at + REORG_DEPTH - 1;
    let mut submissions = Vec::new();
    let mut canonical = BTreeMap::new();
    let mut orphans = HashSet::new();
    for n in 1..=blocks {
        let mut block = make_block(CHAIN, n, payload_size);
        if n == fork_top + 1 {
            block.parent_hash = fork_block("chaos", reorg_at, fork_top, payload_size).hash;
        }
        if n == poison {
            block.payload[..SIM_POISON_MARKER.len()].copy_from_slice(SIM_POISON_MARKER);
        }
        if (reorg_at..=fork_top).contains(&n) {
            orphans.insert(block.hash.clone());
        } else {
            canonical.insert(n, block.hash.clone());
        }
        submissions.push(block);
        // The new branch comes right after the old one's last block: the old blocks are
        // orphaned while their work is still queued or proving.
        if n == fork_top {
            for f in reorg_at..=fork_top {
                let block = fork_block("chaos", reorg_at, f, payload_size);
                canonical.insert(f, block.hash.clone());
                submissions.push(block);
            }
        }
    }
    Chain {
        submissions,
        canonical,
        orphans,
        reorg_at,
        poison,
    }
}

/// The service processes of the drill, by name, restartable.
struct Fleet {
    url: String,
    prefix: String,
    teams_file: PathBuf,
    logs: PathBuf,
    poison_marker: PathBuf,
    sim_latency: String,
    processes: HashMap<String, ServiceProcess>,
    restarts: u32,
}

impl Fleet {
    fn args(&self, name: &str) -> (&'static str, Vec<String>) {
        let mut common = vec!["--replicas".to_string(), "3".to_string()];
        let role = name.split('-').next().unwrap_or_default();
        let binary = match role {
            "ingest" => "push0-ingest",
            "scheduler" => {
                common.extend(["--teams".into(), self.teams_file.display().to_string()]);
                "push0-scheduler"
            }
            "aggregator" => "push0-aggregator",
            _ => {
                let team = name.split('-').nth(1).unwrap_or_default();
                common.extend(
                    [
                        "--team",
                        team,
                        "--slots",
                        "2",
                        "--sim-latency",
                        &self.sim_latency,
                        "--shutdown-grace",
                        "1s",
                    ]
                    .map(String::from),
                );
                if team == POISON_TEAM {
                    common.extend([
                        "--sim-fail-while".to_string(),
                        self.poison_marker.display().to_string(),
                    ]);
                }
                "push0-prover-gateway"
            }
        };
        (binary, common)
    }

    fn start(&mut self, name: &str) -> Result<()> {
        let (binary, args) = self.args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.restarts += 1;
        let log_name = format!("{name}.{}", self.restarts);
        let mut process = ServiceProcess::start(
            binary,
            &log_name,
            &self.url,
            &self.prefix,
            &args,
            &self.logs,
        )?;
        process.name = name.to_string();
        self.processes.insert(name.to_string(), process);
        Ok(())
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.processes.remove(name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// The process whose pid holds the lease of `role`.
    async fn active(&self, bus: &Bus, role: &str) -> Option<String> {
        let kv = bus.kv(&bus.subjects.bucket_leases()).await.ok()?;
        let holder = kv.get(role).await.ok()??;
        let pid: u32 = String::from_utf8_lossy(&holder)
            .rsplit('/')
            .next()?
            .parse()
            .ok()?;
        self.processes
            .iter()
            .find(|(_, p)| p.child.id() == pid)
            .map(|(name, _)| name.clone())
    }

    /// Processes that exited without being killed, removed from the fleet, with how they ended.
    fn exited(&mut self) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, p) in &mut self.processes {
            if let Ok(Some(status)) = p.child.try_wait() {
                gone.push((name.clone(), status.to_string()));
            }
        }
        for (name, _) in &gone {
            self.processes.remove(name);
        }
        gone.sort();
        gone
    }

    fn gateways(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .processes
            .keys()
            .filter(|n| n.starts_with("gateway-"))
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// A task result as a core subscriber saw it go by.
struct SeenResult {
    team: String,
    attempt: u64,
    /// When the attempt that produced it started proving.
    started: Instant,
}

/// Runs the drill and returns its report (the caller judges it).
pub async fn run(config: &ChaosConfig) -> Result<ChaosReport> {
    let t0 = Instant::now();
    let events: Events = Arc::default();
    let log = |what: String| record(&events, t0, what);
    std::fs::create_dir_all(&config.logs)?;
    let mut cluster = NatsCluster::start_nodes(3, Some(&config.logs))?;
    let url = cluster.url();
    let prefix = random_prefix();
    let teams_file = config.logs.join("teams.toml");
    std::fs::write(&teams_file, CHAOS_TEAMS)?;
    let poison_marker = config.logs.join("poison-marker");
    std::fs::write(
        &poison_marker,
        b"gamma's prover crashes on the poison block",
    )?;
    // The topology first, at R3 as the services check for it: the drill is its owner, as
    // `push0 topology apply` is in a deployment.
    let mut bus = Bus::connect(&url, &prefix, "chaos").await?;
    bus.replicas = 3;
    push0_runtime::topology::apply(&bus, 3, Duration::from_secs(120)).await?;
    let mut fleet = Fleet {
        url: url.clone(),
        prefix: prefix.clone(),
        teams_file,
        logs: config.logs.clone(),
        poison_marker: poison_marker.clone(),
        sim_latency: config.sim_latency.clone(),
        processes: HashMap::new(),
        restarts: 0,
    };
    for name in [
        "ingest",
        "scheduler-a",
        "scheduler-b",
        "aggregator-a",
        "aggregator-b",
    ] {
        fleet.start(name)?;
    }
    for (team, count) in GATEWAYS {
        for i in 0..count {
            fleet.start(&format!("gateway-{team}-{i}"))?;
        }
    }
    log(format!(
        "started 3 NATS nodes and {} service processes (prefix {prefix})",
        fleet.processes.len()
    ));

    // Results as they go by, for reassignment latency.
    let seen: Arc<Mutex<Vec<SeenResult>>> = Arc::default();
    let mut results = bus
        .client
        .subscribe(format!("{}.results.>", bus.subjects.prefix()))
        .await?;
    let seen_writer = seen.clone();
    let watcher = tokio::spawn(async move {
        let mut ids = HashSet::new();
        while let Some(m) = results.next().await {
            let schema = m
                .headers
                .as_ref()
                .and_then(|h| h.get(SCHEMA_HEADER))
                .map(|v| v.as_str().to_string());
            let Ok(r) = decode::<TaskResult>(schema.as_deref(), &m.payload) else {
                continue;
            };
            if !ids.insert((r.task_id.clone(), r.attempt)) {
                continue;
            }
            let started = Instant::now()
                .checked_sub(Duration::from_millis(r.prove_ms))
                .unwrap_or_else(Instant::now);
            seen_writer.lock().expect("seen").push(SeenResult {
                team: r.team,
                attempt: r.attempt,
                started,
            });
        }
    });

    // Faults are timed from the moment both singletons are active.
    let ready = crate::eventually(
        Duration::from_secs(60),
        "active scheduler and aggregator",
        || async {
            let s = fleet.active(&bus, "scheduler").await?;
            let a = fleet.active(&bus, "aggregator").await?;
            Some((s, a))
        },
    )
    .await?;
    log(format!("active: {} and {}", ready.0, ready.1));

    let chain = Arc::new(chain(config.blocks, config.payload_size));
    let t1 = Instant::now();
    let feed_time = Duration::from_secs_f64(config.blocks as f64 / config.rate);
    let at = |fraction: f64| t1 + feed_time.mul_f64(fraction);
    // Apart enough that each fault's recovery is seen on its own (a lease lapses in 3 s, a
    // leader election takes 5-8 s).
    let mut kill_scheduler = Some(at(0.15));
    let mut kill_aggregator = Some(at(0.35));
    let mut kill_node = Some(at(0.55));
    let mut restart_node = at(0.8);
    let mut node_outage: Option<(Instant, Instant)> = None;
    let mut node_down: Option<usize> = None;
    let mut restart_later: Vec<(Instant, String)> = Vec::new();
    let mut next_gateway_kill = t1 + config.gateway_kill_every;
    let mut gateway_kills: Vec<(Instant, String)> = Vec::new();
    let mut poison_replayed = false;
    let mut unexpected_exits = 0;
    let mut next_poison_check = t1;
    let mut rng = rand::rng();

    let feeder = tokio::spawn(feed(
        bus.clone(),
        chain.clone(),
        Duration::from_secs_f64(1.0 / config.rate),
        events.clone(),
        t0,
    ));
    let drain_deadline = |fed: Instant| fed + config.drain_timeout;
    let mut fed_at: Option<Instant> = None;
    let expected = chain.canonical.len() * GATEWAYS.len();
    loop {
        let now = Instant::now();
        if fed_at.is_none() && feeder.is_finished() {
            fed_at = Some(now);
        }
        // Gateways: one SIGKILL every interval for the whole run, each restarted shortly after.
        if now >= next_gateway_kill {
            next_gateway_kill += config.gateway_kill_every;
            // Not the poison team's: its limit of 3 deliveries is there to dead-letter the
            // poison block, and its two gateways killed at random every second can use up a
            // healthy task's three as well (seen once in 20 runs: gamma's gateways killed 8
            // times in 13 s around the NATS outage, block 26 dead-lettered after 4
            // deliveries). Kills of alpha's and beta's gateways (limit 5) measure reassignment.
            let names: Vec<String> = fleet
                .gateways()
                .into_iter()
                .filter(|n| !n.starts_with(&format!("gateway-{POISON_TEAM}-")))
                .collect();
            if !names.is_empty() {
                let victim = names[rng.random_range(0..names.len())].clone();
                fleet.kill(&victim);
                gateway_kills.push((Instant::now(), victim.clone()));
                restart_later.push((Instant::now() + Duration::from_millis(300), victim));
            }
        }
        for (role, when) in [
            ("scheduler", &mut kill_scheduler),
            ("aggregator", &mut kill_aggregator),
        ] {
            if when.is_none_or(|t| now < t) {
                continue;
            }
            *when = None;
            match fleet.active(&bus, role).await {
                Some(active) => {
                    fleet.kill(&active);
                    log(format!("SIGKILL active {role} ({active})"));
                    restart_later.push((Instant::now() + Duration::from_secs(2), active));
                }
                None => log(format!("no active {role} found to kill")),
            }
        }
        if kill_node.is_some_and(|t| now >= t) {
            kill_node = None;
            let victim = leader_of(&bus, &bus.subjects.stream_tasks())
                .await
                .unwrap_or(1);
            cluster.kill(victim);
            node_down = Some(victim);
            node_outage = Some((Instant::now(), Instant::now()));
            restart_node = restart_node.max(Instant::now() + Duration::from_secs(5));
            log(format!(
                "SIGKILL NATS node n{victim} (the tasks stream's leader)"
            ));
        }
        if let Some(victim) = node_down
            && now >= restart_node
        {
            cluster.restart(victim)?;
            node_down = None;
            if let Some((down, _)) = node_outage {
                node_outage = Some((down, Instant::now()));
            }
            log(format!("restarted NATS node n{victim}"));
        }
        for (name, status) in fleet.exited() {
            unexpected_exits += 1;
            log(format!(
                "{name} exited on its own ({status}); restarting it"
            ));
            fleet.start(&name)?;
        }
        let due: Vec<String> = restart_later
            .iter()
            .filter(|(t, _)| now >= *t)
            .map(|(_, n)| n.clone())
            .collect();
        restart_later.retain(|(t, _)| now < *t);
        for name in due {
            fleet.start(&name)?;
        }
        // The operator: once gamma's poison task is dead-lettered, fix the prover and replay.
        if !poison_replayed
            && now >= next_poison_check
            && let Some(seq) = {
                next_poison_check = now + Duration::from_millis(500);
                // Bounded: during a node loss a read can hang until the new leader is elected.
                tokio::time::timeout(
                    Duration::from_secs(2),
                    poison_dead_letter(&bus, chain.poison),
                )
                .await
                .ok()
                .flatten()
            }
        {
            log(format!(
                "poison block {} dead-lettered (DLQ sequence {seq}); prover fixed, replaying",
                chain.poison
            ));
            std::fs::remove_file(&poison_marker)?;
            replay(&url, &prefix, seq)?;
            poison_replayed = true;
        }
        if let Some(fed) = fed_at {
            let proofs =
                tokio::time::timeout(Duration::from_secs(5), all_proofs(&bus, Duration::ZERO))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
            let proved: HashSet<_> = proofs
                .iter()
                .filter(|p| chain.canonical.get(&p.number) == Some(&p.hash))
                .map(|p| (p.team.clone(), p.number))
                .collect();
            if proved.len() >= expected && poison_replayed && node_down.is_none() {
                log(format!(
                    "all {expected} proofs published; {} gateway SIGKILLs in all",
                    gateway_kills.len()
                ));
                break;
            }
            if Instant::now() > drain_deadline(fed) {
                log(format!(
                    "gave up waiting: {} of {expected} proofs",
                    proved.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    feeder.await??;
    // Settle, so late duplicates would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let proofs = eventually_read(|| all_proofs(&bus, Duration::ZERO)).await?;
    let dlq = eventually_read(|| dead_letters(&bus)).await?;
    watcher.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let events = std::mem::take(&mut *events.lock().expect("events"));
    drop(fleet);
    let reorg_ms = tokio::time::timeout(Duration::from_secs(30), reorg_recorded_at(&bus))
        .await
        .ok()
        .flatten();
    let mut report = judge(config.blocks, &chain, &proofs, &dlq, reorg_ms);
    report.unexpected_exits = unexpected_exits;
    // A gateway killed while a NATS node is down (or just back) measures the node's failover,
    // not the redelivery: those kills' reassignments are left out.
    let in_outage = |at: Instant| {
        node_outage
            .is_some_and(|(down, up)| at + ACK_WAIT >= down && at <= up + Duration::from_secs(10))
    };
    report.reassign_ms = reassignments(&gateway_kills, &seen, in_outage);
    report.events = events;
    report.elapsed = t0.elapsed();
    Ok(report)
}

type Events = Arc<Mutex<Vec<(Duration, String)>>>;

fn record(events: &Events, t0: Instant, what: String) {
    eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    events.lock().expect("events").push((t0.elapsed(), what));
}

/// Submits the chain at `interval` per block; an orphaned block and the next go in back to
/// back, so the new branch arrives while the old one's work is queued or proving.
async fn feed(
    bus: Bus,
    chain: Arc<Chain>,
    interval: Duration,
    events: Events,
    t0: Instant,
) -> Result<()> {
    let mut next = tokio::time::Instant::now();
    for block in &chain.submissions {
        tokio::time::sleep_until(next).await;
        submit_until_stored(&bus, block).await?;
        let orphan = chain.orphans.contains(&block.hash);
        if !orphan {
            next += interval;
        }
        if block.number == chain.reorg_at {
            let what = if orphan {
                format!("submitted block {} (to be orphaned)", block.number)
            } else {
                format!(
                    "reorg: blocks {}..={} replaced by a new branch",
                    chain.reorg_at,
                    chain.reorg_at + REORG_DEPTH - 1
                )
            };
            record(&events, t0, what);
        }
        if block.number == chain.poison {
            record(
                &events,
                t0,
                format!("submitted poison block {}", chain.poison),
            );
        }
    }
    record(
        &events,
        t0,
        format!("all {} submissions stored", chain.submissions.len()),
    );
    Ok(())
}

async fn eventually_read<T, F, Fut>(read: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    crate::eventually(Duration::from_secs(30), "reading a stream", || async {
        read().await.ok()
    })
    .await
}

/// Compares what was published with the chain.
///
/// A proof of a block published before ingest recorded the reorg that orphaned it is a proof of
/// the chain as it then was (the block was canonical; nobody had seen the fork): it is counted
/// apart, as `proved_before_reorg`. Every other proof of an orphan breaks the invariant, as do
/// all of them when the reorg's time is unknown (`reorg_ms` None).
fn judge(
    blocks: u64,
    chain: &Chain,
    proofs: &[BlockProof],
    dlq: &[push0_protocol::DeadLetter],
    reorg_ms: Option<u64>,
) -> ChaosReport {
    let mut per_team = Vec::new();
    let (mut lost, mut duplicates, mut disorder, mut orphans) = (0, 0, 0, 0);
    let payloads: HashMap<&[u8], &[u8]> = chain
        .submissions
        .iter()
        .map(|b| (b.hash.as_slice(), b.payload.as_slice()))
        .collect();
    let workflows: HashMap<&str, Workflow> = [
        ("alpha", TeamConfig::single("alpha").workflow()),
        ("beta", TeamConfig::split("beta", 4, 2).workflow()),
        ("gamma", TeamConfig::single("gamma").workflow()),
    ]
    .into();
    let wrong_content = proofs
        .iter()
        .filter(|p| {
            let (Some(payload), Some(workflow)) = (
                payloads.get(p.hash.as_slice()),
                workflows.get(p.team.as_str()),
            ) else {
                return true;
            };
            p.proof.as_deref() != Some(expected_sim_proof(payload, *workflow).as_slice())
        })
        .count();
    for (team, _) in GATEWAYS {
        let mine: Vec<&BlockProof> = proofs.iter().filter(|p| p.team == team).collect();
        let mut seen = HashSet::new();
        let mut row = TeamRow {
            team: team.to_string(),
            expected: chain.canonical.len(),
            proved: 0,
            duplicates: 0,
            disorder: 0,
            orphans: 0,
            proved_before_reorg: 0,
        };
        let mut last: Option<u64> = None;
        for p in &mine {
            if chain.orphans.contains(&p.hash) {
                if reorg_ms.is_some_and(|r| p.published_at_ms < r) {
                    row.proved_before_reorg += 1;
                } else {
                    row.orphans += 1;
                }
                continue;
            }
            if chain.canonical.get(&p.number) != Some(&p.hash) {
                // Neither on the chain nor an orphan: counted as an orphan too.
                row.orphans += 1;
                continue;
            }
            if !seen.insert(p.number) {
                row.duplicates += 1;
                continue;
            }
            if last.is_some_and(|l| p.number <= l) {
                row.disorder += 1;
            }
            last = Some(p.number);
        }
        row.proved = seen.len();
        lost += row.expected - row.proved;
        duplicates += row.duplicates;
        disorder += row.disorder;
        orphans += row.orphans;
        per_team.push(row);
    }
    let stray = dlq
        .iter()
        .filter(|d| {
            !(d.reason == DlqReason::MaxDeliveries
                && d.team.as_deref() == Some(POISON_TEAM)
                && d.block.as_ref().is_some_and(|b| b.number == chain.poison))
        })
        .count();
    ChaosReport {
        blocks,
        teams: GATEWAYS.len(),
        expected: chain.canonical.len() * GATEWAYS.len(),
        proofs: proofs.len(),
        lost,
        duplicates,
        disorder,
        orphans,
        wrong_content,
        dead_letters: dlq.len(),
        stray_dead_letters: stray,
        unexpected_exits: 0,
        per_team,
        reassign_ms: Vec::new(),
        longest_stall_ms: longest_stall(proofs, chain.poison),
        events: Vec::new(),
        elapsed: Duration::ZERO,
    }
}

/// The longest time between two consecutive proof publications of one team, leaving out the
/// wait that ends with the poison block's proof (the block stands still by design until the
/// operator replays it).
fn longest_stall(proofs: &[BlockProof], poison: u64) -> u64 {
    let mut longest = 0;
    for (team, _) in GATEWAYS {
        let mine: Vec<&BlockProof> = proofs.iter().filter(|p| p.team == team).collect();
        for w in mine.windows(2) {
            if w[1].number == poison {
                continue;
            }
            longest = longest.max(w[1].published_at_ms.saturating_sub(w[0].published_at_ms));
        }
    }
    longest
}

/// For every redelivered task's result: how long after the last SIGKILL of one of its team's
/// gateways the new attempt started. Redeliveries with no such kill within twice the ack wait,
/// and those of kills `left_out`, are not counted.
fn reassignments(
    kills: &[(Instant, String)],
    seen: &[SeenResult],
    left_out: impl Fn(Instant) -> bool,
) -> Vec<u64> {
    let horizon = ACK_WAIT * 2 + Duration::from_secs(2);
    seen.iter()
        .filter(|r| r.attempt >= 2)
        .filter_map(|r| {
            let prefix = format!("gateway-{}-", r.team);
            let (at, _) = kills
                .iter()
                .filter(|(at, name)| name.starts_with(&prefix) && *at <= r.started)
                .max_by_key(|(at, _)| *at)?;
            let delay = r.started - *at;
            (delay <= horizon && !left_out(*at)).then_some(delay.as_millis() as u64)
        })
        .collect()
}

/// Submits until the cluster takes it (a publish fails while a leader is being elected); the
/// block's msg-id makes a retry after a lost ack harmless.
pub async fn submit_until_stored(bus: &Bus, block: &BlockSubmission) -> Result<()> {
    crate::eventually(Duration::from_secs(60), "block stored", || async {
        submit(bus, block).await.ok().map(|_| ())
    })
    .await
}

/// Index of the node that leads `stream` (nodes are named n0, n1, n2).
pub async fn leader_of(bus: &Bus, stream: &str) -> Result<usize> {
    let mut stream = bus.js.get_stream(stream).await?;
    let info = stream.info().await?;
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("no leader")?;
    Ok(leader.trim_start_matches('n').parse()?)
}

/// The first message of `stream`, oldest first, for which `pick` (given the message and its
/// schema header) returns something.
async fn first_in_stream<T>(
    bus: &Bus,
    stream: String,
    pick: impl Fn(&async_nats::jetstream::message::StreamMessage, Option<&str>) -> Option<T>,
) -> Option<T> {
    let mut stream = bus.js.get_stream(stream).await.ok()?;
    let last = stream.info().await.ok()?.state.last_sequence;
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let schema = m.headers.get(SCHEMA_HEADER).map(|v| v.as_str().to_string());
        if let Some(found) = pick(&m, schema.as_deref()) {
            return Some(found);
        }
    }
    None
}

/// When ingest recorded the reorg (ms since the epoch): the time the stream stored its notice,
/// published once the new block's record naming the orphans was written.
async fn reorg_recorded_at(bus: &Bus) -> Option<u64> {
    first_in_stream(bus, bus.subjects.stream_accepted(), |m, schema| {
        (schema == Some(push0_protocol::Reorg::SCHEMA))
            .then(|| u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok())
            .flatten()
    })
    .await
}

/// The DLQ sequence of gamma's poison task's dead letter, once it is there.
async fn poison_dead_letter(bus: &Bus, poison: u64) -> Option<u64> {
    first_in_stream(bus, bus.subjects.stream_dlq(), |m, schema| {
        let d = decode::<push0_protocol::DeadLetter>(schema, &m.payload).ok()?;
        (d.reason == DlqReason::MaxDeliveries
            && d.team.as_deref() == Some(POISON_TEAM)
            && d.block.as_ref().is_some_and(|b| b.number == poison))
        .then_some(m.sequence)
    })
    .await
}

fn replay(url: &str, prefix: &str, seq: u64) -> Result<()> {
    let out = std::process::Command::new(binary("push0"))
        .args(["dlq", "--nats-url", url, "--prefix", prefix, "replay"])
        .arg(seq.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "push0 dlq replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Where the drill's logs go by default.
pub fn default_logs() -> PathBuf {
    std::env::temp_dir().join(format!("push0-chaos-{}", random_prefix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_replaces_three_blocks_and_poisons_one() {
        let c = chain(100, 256);
        assert_eq!(c.canonical.len(), 100);
        assert_eq!(c.orphans.len(), REORG_DEPTH as usize);
        assert_eq!(c.submissions.len(), 100 + REORG_DEPTH as usize);
        let poison = c.submissions.iter().find(|b| b.number == c.poison).unwrap();
        assert!(poison.payload.starts_with(SIM_POISON_MARKER));
        // The block after the fork links to the new branch.
        let after = c
            .submissions
            .iter()
            .find(|b| b.number == c.reorg_at + REORG_DEPTH)
            .unwrap();
        assert_eq!(
            after.parent_hash,
            c.canonical[&(c.reorg_at + REORG_DEPTH - 1)]
        );
    }
}
