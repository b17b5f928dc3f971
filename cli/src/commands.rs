//! The subcommands.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use push0::cluster::{ClusterSpec, LocalCluster};
use push0::dashboard::{self, Dashboard};
use push0::report::{summary_table, table};
use push0::source::{block_hash, make_block, run_source, submit as submit_block};
use push0::watch::ProofFeed;
use push0_natsd::NatsServer;
use push0_protocol::subjects::{block_key, cursor_key, final_key, part_key, plan_key};
use push0_protocol::{
    BlockProof, BlockStatus, Cursor, DlqReason, PartRecord, Plan, ReportState, Reported,
    TeamConfig, TeamsFile,
};
use push0_prover_gateway::prover::{Prover, SimProver};
use push0_runtime::config::LogFormat;
use push0_runtime::{Bus, Registry, kv_get, shutdown_on_signal, telemetry};

use crate::{DashboardArgs, DevArgs, DlqArgs, DlqCommand, StatusArgs, SubmitArgs, VerifyArgs};

pub async fn dev(args: DevArgs) -> Result<()> {
    // In one process here: every service's spans go out as `push0-dev`'s.
    let _telemetry = telemetry::init_with_filter("dev", LogFormat::Text, false, "warn")
        .map_err(anyhow::Error::msg)?;
    let shutdown = shutdown_on_signal();
    let teams = match &args.teams {
        None if args.sim => TeamsFile::default_teams(),
        None => vec![
            TeamConfig {
                proof_system: Some("winterfell".into()),
                ..TeamConfig::single("alpha")
            },
            TeamConfig {
                proof_system: Some("plonky2".into()),
                ..TeamConfig::split("beta", 2, 2)
            },
        ],
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            TeamsFile::parse(&text)
                .map_err(|p| anyhow::anyhow!("{}:\n  {}", path.display(), p.join("\n  ")))?
        }
    };
    // Every identity signs in with its own key unless auth is off or the server is not ours.
    let keys_dir = tempfile::Builder::new().prefix("push0-keys-").tempdir()?;
    let keys = match (&args.nats_url, args.no_auth) {
        (None, false) => Some(push0_runtime::auth::Keys::open(
            &keys_dir.path().join("keys"),
        )?),
        _ => None,
    };
    let (_server, url, tls) = match &args.nats_url {
        Some(url) => (None, url.clone(), args.server_access.clone()),
        None => {
            let authorization = match &keys {
                Some(keys) => {
                    let subjects = push0_protocol::Subjects::new(&args.prefix)?;
                    Some(keys.authorization(&subjects, &teams)?)
                }
                None => None,
            };
            let server = NatsServer::start_secured(None, args.tls, authorization.as_deref())
                .context("starting nats-server")?;
            let url = server.url();
            let tls = server.tls().map(|t| t.client()).unwrap_or_default();
            match server.tls() {
                Some(t) => eprintln!(
                    "nats-server listening on {url}, TLS required and client certificates verified (CA {})",
                    t.ca.display()
                ),
                None => eprintln!("nats-server listening on {url} (data in a temporary folder)"),
            }
            if let Some(keys) = &keys {
                eprintln!(
                    "authorization on: every service, team, the block source and the dashboard sign in with their own nkey, confined to their subjects (keys in {})",
                    keys.dir().display()
                );
            }
            (Some(server), url, tls)
        }
    };
    let mut teams = teams;
    let reporter = match &args.ethproofs_url {
        None => None,
        Some(url) => Some(reporter_config(&args, url, &mut teams)?),
    };
    let sim = Prover::Sim(SimProver {
        latency: args.sim_latency.clone(),
        fail_while: None,
    });
    let mut spec = ClusterSpec::new(&url, &args.prefix, Vec::new());
    spec.reporter = reporter;
    spec.access = tls;
    spec.keys = keys;
    let mut described = Vec::new();
    for team in &teams {
        let system = team
            .proof_system
            .clone()
            .filter(|s| !args.sim && push0::provers::SYSTEMS.contains(&s.as_str()));
        match system {
            Some(system) => {
                let binary = push0::provers::ensure_built(&system)?;
                spec.teams.push(push0::provers::with_verifier(
                    team.clone(),
                    &system,
                    &binary,
                ));
                spec = spec.gateways(
                    &team.name,
                    1,
                    2,
                    push0::provers::exec_prover(&system, binary, 1),
                );
                described.push(format!(
                    "{} ({}, {system}: 1 gateway x 2 slots)",
                    team.name,
                    shape_name(team)
                ));
            }
            None => {
                let mut team = team.clone();
                team.proof_system = None;
                team.verifier.clear();
                spec.teams.push(team.clone());
                spec = spec.gateways(&team.name, args.gateways, args.slots, sim.clone());
                described.push(format!(
                    "{} ({}, simulated {}: {} gateways x {} slots)",
                    team.name,
                    shape_name(&team),
                    args.sim_latency,
                    args.gateways,
                    args.slots
                ));
            }
        }
    }
    let cluster = LocalCluster::start(spec).await?;
    eprintln!("push0 cluster up; teams: {}", described.join("; "));
    let page_stop = shutdown.child_token();
    let page = match args.no_dashboard {
        true => None,
        false => {
            let reader = cluster.connect_as("reader", "push0-dashboard").await?;
            Some(open_dashboard(&reader, args.dashboard, &page_stop).await?)
        }
    };
    let mut feed = ProofFeed::open(&cluster.bus).await?;

    let source_bus = cluster.connect_as("source", "push0-source").await?;
    let source = (args.blocks > 0).then(|| {
        let bus = source_bus;
        let (chain, first, count, rate, size) = (
            args.chain.clone(),
            args.first,
            args.blocks,
            args.rate,
            args.payload_size,
        );
        eprintln!("block source: {count} blocks of {size} bytes on chain {chain} at {rate}/s");
        tokio::spawn(async move { run_source(&bus, &chain, first, count, rate, size).await })
    });
    if args.blocks == 0 {
        eprintln!(
            "no block source: publish block/v1 messages to {} (Ctrl-C to stop)",
            cluster.bus.subjects.blocks("<chain>")
        );
    }

    let progress = Progress::new(
        &teams.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        args.blocks,
    );
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut proofs: Vec<BlockProof> = Vec::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    loop {
        if args.blocks > 0
            && teams
                .iter()
                .all(|t| counts.get(&t.name).copied().unwrap_or(0) >= args.blocks)
        {
            break;
        }
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline), if args.blocks > 0 => {
                eprintln!("timed out after {}", humantime::format_duration(args.timeout));
                break;
            }
            n = feed.next() => n?,
        };
        let Some(proof) = next else { break };
        *counts.entry(proof.team.clone()).or_default() += 1;
        progress.proved(&proof);
        proofs.push(proof);
    }
    progress.finish();
    let unreported = match &args.ethproofs_url {
        Some(url) if !shutdown.is_cancelled() => {
            let deadline = tokio::time::Instant::now() + args.timeout;
            await_reports(&cluster.bus, url, &teams, &proofs, &shutdown, deadline).await?
        }
        _ => 0,
    };
    if let Some(source) = source
        && source.is_finished()
    {
        source.await??;
    }

    println!();
    println!(
        "{}",
        summary_table(&proofs, (args.blocks > 0).then_some(args.blocks as usize))
    );
    let disorder = out_of_order(&proofs);
    println!(
        "proofs in block order per (team, chain): {}",
        if disorder == 0 {
            "yes".to_string()
        } else {
            format!("NO ({disorder} out of order)")
        }
    );
    println!("overhead = end-to-end latency minus the prover time on the block's critical path");
    if let Some(page) = &page
        && args.hold
        && !shutdown.is_cancelled()
    {
        eprintln!(
            "holding the cluster: dashboard at {} (Ctrl-C to stop)",
            page.url()
        );
        shutdown.cancelled().await;
    }
    page_stop.cancel();
    if let Some(page) = page {
        let _ = page.task.await;
    }
    cluster.stop().await?;
    let missing: Vec<String> = teams
        .iter()
        .filter(|t| args.blocks > 0 && counts.get(&t.name).copied().unwrap_or(0) < args.blocks)
        .map(|t| t.name.clone())
        .collect();
    if !missing.is_empty() {
        bail!("not every block was proved for: {}", missing.join(", "));
    }
    if unreported > 0 {
        bail!("{unreported} proved blocks were not reported to Ethproofs in time");
    }
    Ok(())
}

/// The in-process reporter's settings. Teams without a cluster id are not reported; the
/// default teams (no teams file) are given ids 1, 2, … in order.
fn reporter_config(
    args: &DevArgs,
    url: &str,
    teams: &mut [TeamConfig],
) -> Result<push0_reporter::Config> {
    let key = push0_reporter::api_key(args.ethproofs_key_file.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("--ethproofs-url needs a key: set ETHPROOFS_API_KEY or --ethproofs-key-file")?;
    if args.teams.is_none() {
        for (i, team) in teams.iter_mut().enumerate() {
            team.ethproofs_cluster_id.get_or_insert(i as u64 + 1);
        }
    }
    if teams.iter().all(|t| t.ethproofs_cluster_id.is_none()) {
        bail!("--ethproofs-url: no team has an ethproofs_cluster_id in the teams file");
    }
    let reported: Vec<String> = teams
        .iter()
        .filter_map(|t| Some(format!("{} as cluster {}", t.name, t.ethproofs_cluster_id?)))
        .collect();
    eprintln!("reporting to {url}: {}", reported.join(", "));
    Ok(push0_reporter::Config {
        api: push0_reporter::ApiConfig {
            base_url: url.to_string(),
            key,
            dry_run: false,
            rate: args.ethproofs_rate,
        },
    })
}

/// Waits until the API has answered the `proved` report of every proof of a reported team
/// (the reporter's `reports` bucket says so), showing the backlog; the number still
/// unreported when `deadline` or a shutdown came.
async fn await_reports(
    bus: &Bus,
    url: &str,
    teams: &[TeamConfig],
    proofs: &[BlockProof],
    shutdown: &tokio_util::sync::CancellationToken,
    deadline: tokio::time::Instant,
) -> Result<usize> {
    let reported: HashSet<&str> = teams
        .iter()
        .filter(|t| t.ethproofs_cluster_id.is_some())
        .map(|t| t.name.as_str())
        .collect();
    let mut waiting: Vec<String> = proofs
        .iter()
        .filter(|p| reported.contains(p.team.as_str()))
        .map(|p| plan_key(&p.team, &p.chain, p.number))
        .collect();
    let reports = bus.kv(&bus.subjects.bucket_reports()).await?;
    let total = waiting.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:32.cyan/blue}] {pos:>4}/{len} reported  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("ethproofs");
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = Instant::now();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for key in waiting {
            let answered = kv_get::<Reported>(&reports, &key).await?;
            if answered.is_none_or(|(r, _)| r.state != ReportState::Proved) {
                still.push(key);
            }
        }
        waiting = still;
        bar.set_position(total - waiting.len() as u64);
        bar.set_message(format!("backlog {}", waiting.len()));
        if bar.is_hidden() && (last_line.elapsed() >= Duration::from_secs(1) || waiting.is_empty())
        {
            eprintln!(
                "reported to {url}: {}/{total}",
                total - waiting.len() as u64
            );
            last_line = Instant::now();
        }
        if waiting.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    bar.finish();
    println!(
        "reported to Ethproofs: {}/{total} proved blocks",
        total - waiting.len() as u64
    );
    Ok(waiting.len())
}

/// Serves the dashboard on `addr`, or on any free port of its host when that one is taken.
async fn open_dashboard(
    bus: &Bus,
    addr: std::net::SocketAddr,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Dashboard> {
    let page = match dashboard::start(bus.clone(), addr, stop.clone()).await {
        Ok(page) => page,
        Err(e) if addr.port() != 0 => {
            eprintln!("dashboard: {e:#}; taking any free port");
            let any = std::net::SocketAddr::new(addr.ip(), 0);
            dashboard::start(bus.clone(), any, stop.clone()).await?
        }
        Err(e) => return Err(e),
    };
    eprintln!("dashboard: {}", page.url());
    Ok(page)
}

pub async fn dashboard(args: DashboardArgs) -> Result<()> {
    let _telemetry = telemetry::init_with_filter("dashboard", LogFormat::Text, false, "warn")
        .map_err(anyhow::Error::msg)?;
    let bus = args.conn.bus("push0-dashboard").await?;
    let shutdown = shutdown_on_signal();
    let page = dashboard::start(bus, args.listen, shutdown.clone()).await?;
    eprintln!(
        "dashboard of {:?} at {} (Ctrl-C to stop)",
        args.conn.prefix,
        page.url()
    );
    page.task.await?;
    Ok(())
}

/// Per team what Ethproofs ranks a cluster by: the share of blocks proved within 10 s of
/// submission (its real-time cohort asks 70 %), liveness (95 %), blocks stuck over 20 min.
fn ethproofs_table(model: &dashboard::model::Model) -> String {
    let share = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
    let mut rows = vec![vec![
        "team".to_string(),
        "ethproofs cluster".into(),
        "blocks".into(),
        "proved".into(),
        "proved within 10 s".into(),
        "liveness".into(),
        "stuck over 20 min".into(),
    ]];
    for (team, f) in model.figures(push0_protocol::now_ms()) {
        rows.push(vec![
            team.name.clone(),
            team.ethproofs_cluster_id
                .map_or("-".into(), |id| id.to_string()),
            f.submitted.to_string(),
            f.proved.to_string(),
            share(f.within_10s),
            share(f.liveness),
            f.stuck.to_string(),
        ]);
    }
    table(&rows)
}

fn shape_name(t: &push0_protocol::TeamConfig) -> String {
    match t.shape {
        push0_protocol::Shape::Single => "single".into(),
        push0_protocol::Shape::Split => {
            format!("split {}x, arity {}", t.parts.unwrap_or(1), t.arity)
        }
    }
}

/// Publications whose block number is not above the previous one of the same (team, chain).
pub fn out_of_order(proofs: &[BlockProof]) -> usize {
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut disorder = 0;
    for p in proofs {
        let key = (p.team.clone(), p.chain.clone());
        if let Some(prev) = last.get(&key)
            && p.number <= *prev
        {
            disorder += 1;
        }
        last.insert(key, p.number);
    }
    disorder
}

/// Live progress: a bar per team on a terminal, a line a second otherwise.
struct Progress {
    bars: BTreeMap<String, ProgressBar>,
    _multi: Option<MultiProgress>,
    counts: std::sync::Mutex<BTreeMap<String, u64>>,
    total: u64,
    last_line: std::sync::Mutex<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(teams: &[String], total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = terminal.then(MultiProgress::new);
        let style = if total > 0 {
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:32.cyan/blue}] {pos:>4}/{len} blocks  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> ")
        } else {
            ProgressStyle::with_template("{prefix:>10} {spinner} {pos} blocks  {msg}")
                .expect("valid template")
        };
        let bars = teams
            .iter()
            .map(|t| {
                let bar = ProgressBar::new(total)
                    .with_style(style.clone())
                    .with_prefix(t.clone());
                let bar = match &multi {
                    Some(m) => m.add(bar),
                    None => bar,
                };
                (t.clone(), bar)
            })
            .collect();
        Self {
            bars,
            _multi: multi,
            counts: Default::default(),
            total,
            last_line: std::sync::Mutex::new(Instant::now()),
            terminal,
        }
    }

    fn proved(&self, proof: &BlockProof) {
        if let Some(bar) = self.bars.get(&proof.team) {
            bar.inc(1);
            bar.set_message(format!(
                "#{} in {} ms (prover {} ms)",
                proof.number, proof.latency_ms, proof.proving_ms
            ));
        }
        let mut counts = self.counts.lock().expect("progress lock");
        *counts.entry(proof.team.clone()).or_default() += 1;
        let mut last = self.last_line.lock().expect("progress lock");
        if !self.terminal && last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            let line: Vec<String> = counts
                .iter()
                .map(|(t, n)| format!("{t} {n}/{}", self.total))
                .collect();
            eprintln!("proved: {}", line.join(", "));
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let bus = args.conn.bus("push0-cli").await?;
    let mut block = make_block(&args.chain, args.number, args.payload_size);
    if let Some(path) = &args.payload_file {
        block.payload =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    if let Some(h) = &args.hash {
        block.hash = parse_hash(h)?;
    } else {
        block.hash = block_hash(&args.chain, args.number);
    }
    if let Some(h) = &args.parent_hash {
        block.parent_hash = parse_hash(h)?;
    }
    block.deadline_ms = args.deadline_ms;
    let fresh = submit_block(&bus, &block).await?;
    println!(
        "{} {}/{} hash {} ({} payload bytes)",
        if fresh {
            "submitted"
        } else {
            "already submitted (duplicate ignored):"
        },
        block.chain,
        block.number,
        hex::encode(&block.hash),
        block.payload.len()
    );
    Ok(())
}

fn parse_hash(h: &str) -> Result<Vec<u8>> {
    let bytes = hex::decode(h.trim_start_matches("0x")).context("hash must be hex")?;
    if bytes.len() != 32 {
        bail!("hash must be 32 bytes (64 hex digits), got {}", bytes.len());
    }
    Ok(bytes)
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let bus = args.conn.bus("push0-cli").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let registry = Registry::watch(&bus, stop.clone())
        .await
        .with_context(|| format!("no push0 state under prefix {:?}", args.conn.prefix))?;
    let blocks = bus.kv(&bus.subjects.bucket_blocks()).await?;
    let plans = bus.kv(&bus.subjects.bucket_plans()).await?;
    let parts = bus.kv(&bus.subjects.bucket_parts()).await?;
    let cursors = bus.kv(&bus.subjects.bucket_cursors()).await?;
    print!("{}", crate::teams::overview(&bus).await?);
    let held = dashboard::read_now(&bus, registry.all()).await?;
    println!();
    println!("Ethproofs figures (the blocks the bus keeps):");
    print!("{}", ethproofs_table(&held));
    let Some(chain) = &args.chain else {
        stop.cancel();
        return Ok(());
    };
    println!();
    match args.number {
        Some(number) => {
            match kv_get::<BlockStatus>(&blocks, &block_key(chain, number)).await? {
                None => println!("block {chain}/{number}: not submitted"),
                Some((s, _)) => println!(
                    "block {chain}/{number}: {:?}, hash {}, {} payload bytes, duplicates {}",
                    s.state,
                    hex::encode(&s.block.hash),
                    s.payload_len,
                    s.duplicates
                ),
            }
            let mut rows = vec![vec![
                "team".to_string(),
                "workflow".into(),
                "released".into(),
                "proved".into(),
                "block proof".into(),
            ]];
            for team in registry.all() {
                let plan = kv_get::<Plan>(&plans, &plan_key(&team.name, chain, number)).await?;
                let Some((plan, _)) = plan else {
                    rows.push(vec![
                        team.name.clone(),
                        shape_name(&team),
                        "-".into(),
                        "-".into(),
                        "not planned".into(),
                    ]);
                    continue;
                };
                let nodes = plan.workflow.nodes();
                let block = &plan.accepted.block;
                let root = kv_get::<PartRecord>(&parts, &final_key(&team.name, block)).await?;
                // The root is recorded under the final key only.
                let mut proved = usize::from(root.is_some());
                for node in nodes.iter().filter(|n| !plan.workflow.is_root(**n)) {
                    if kv_get::<PartRecord>(&parts, &part_key(&team.name, block, *node))
                        .await?
                        .is_some()
                    {
                        proved += 1;
                    }
                }
                let cursor = kv_get::<Cursor>(&cursors, &cursor_key(&team.name, chain)).await?;
                let state = match (&plan.withdrawn, root, cursor) {
                    (Some(reason), _, _) => format!("withdrawn: {reason}"),
                    (None, Some(_), _) if plan.finalized => "published".to_string(),
                    (None, Some(_), Some((c, _))) if c.next > number => "published".to_string(),
                    (None, Some(_), _) => "proved, waiting for earlier blocks".to_string(),
                    (None, None, _) => "proving".to_string(),
                };
                rows.push(vec![
                    team.name.clone(),
                    shape_name(&team),
                    format!("{}/{}", plan.released.len(), nodes.len()),
                    format!("{proved}/{}", nodes.len()),
                    state,
                ]);
            }
            print!("{}", table(&rows));
        }
        None => {
            let mut keys = blocks.keys().await?;
            let mut numbers = Vec::new();
            let prefix = format!("{chain}.");
            while let Some(k) = keys.next().await {
                if let Some(n) = k?.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()) {
                    numbers.push(n);
                }
            }
            numbers.sort_unstable();
            match (numbers.first(), numbers.last()) {
                (Some(lo), Some(hi)) => println!(
                    "chain {chain}: {} blocks submitted, {lo}..={hi}",
                    numbers.len()
                ),
                _ => println!("chain {chain}: no blocks submitted"),
            }
            let mut rows = vec![vec![
                "team".to_string(),
                "workflow".into(),
                "published".into(),
                "next to publish".into(),
                "behind head".into(),
                "missed".into(),
            ]];
            let head = numbers.last().copied();
            for team in registry.all() {
                if team.is_realtime() {
                    // Realtime teams publish out of order and may miss blocks: count the plans.
                    let (mut published, mut missed, mut open) = (0, 0, 0);
                    for number in &numbers {
                        match kv_get::<Plan>(&plans, &plan_key(&team.name, chain, *number)).await? {
                            Some((p, _)) if p.finalized => published += 1,
                            Some((p, _)) if p.withdrawn.is_some() => missed += 1,
                            Some(_) => open += 1,
                            None => {}
                        }
                    }
                    rows.push(vec![
                        team.name.clone(),
                        shape_name(&team),
                        published.to_string(),
                        "(as proved)".into(),
                        open.to_string(),
                        missed.to_string(),
                    ]);
                    continue;
                }
                let cursor = kv_get::<Cursor>(&cursors, &cursor_key(&team.name, chain)).await?;
                let (published, next, behind) = match (cursor, head) {
                    (Some((c, _)), Some(h)) => (
                        c.published.to_string(),
                        c.next.to_string(),
                        (h + 1).saturating_sub(c.next).to_string(),
                    ),
                    (Some((c, _)), None) => {
                        (c.published.to_string(), c.next.to_string(), "-".into())
                    }
                    (None, _) => ("0".into(), "-".into(), "-".into()),
                };
                rows.push(vec![
                    team.name.clone(),
                    shape_name(&team),
                    published,
                    next,
                    behind,
                    "-".into(),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    stop.cancel();
    Ok(())
}

/// `push0 verify`: true when the proof is valid.
pub async fn verify(args: VerifyArgs) -> Result<bool> {
    let bus = match &args.nats_url {
        Some(url) => Some(Bus::connect_with(url, &args.prefix, "push0-cli", &args.access).await?),
        None => None,
    };
    let message = match (&args.file, &args.team, &args.chain, args.number, &bus) {
        (Some(path), ..) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(team), Some(chain), Some(number), Some(bus)) => {
            push0::verify::fetch_proof_message(bus, team, chain, number).await?
        }
        _ => bail!("give --file, or --nats-url with --team, --chain and --number"),
    };
    let proof = match push0::verify::decode_proof(&message) {
        Ok(p) => p,
        Err(e) => {
            println!("invalid: {e:#}");
            return Ok(false);
        }
    };
    let bytes = push0::verify::proof_bytes(&proof, bus.as_ref()).await?;
    let verdict = push0::verify::verify(&proof, &bytes, args.verifier.clone()).await?;
    println!(
        "{}: {} block proof of team {} for {}/{} (hash {}): {}",
        if verdict.valid { "valid" } else { "invalid" },
        proof.proof_system,
        proof.team,
        proof.chain,
        proof.number,
        hex::encode(&proof.hash),
        verdict.detail
    );
    Ok(verdict.valid)
}

async fn dead_letter_at(bus: &Bus, seq: u64) -> Result<push0_protocol::DeadLetter> {
    let stream = bus.js.get_stream(bus.subjects.stream_dlq()).await?;
    let message = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("no dead letter at sequence {seq}"))?;
    let schema = message
        .headers
        .get(push0_protocol::SCHEMA_HEADER)
        .map(|v| v.as_str().to_string());
    Ok(push0_protocol::decode(schema.as_deref(), &message.payload)?)
}

fn block_label(d: &push0_protocol::DeadLetter) -> String {
    d.block
        .as_ref()
        .map_or("-".to_string(), |b| format!("{}/{}", b.chain, b.number))
}

pub async fn dlq(args: DlqArgs) -> Result<()> {
    let bus = args.conn.bus("push0-cli").await?;
    match args.command {
        DlqCommand::List { reason } => {
            let stream = bus.js.get_stream(bus.subjects.stream_dlq()).await?;
            let (first, last) = {
                let mut stream = stream.clone();
                let state = stream.info().await?.state.clone();
                (state.first_sequence, state.last_sequence)
            };
            let mut rows = vec![vec![
                "seq".to_string(),
                "service".into(),
                "reason".into(),
                "team".into(),
                "block".into(),
                "detail".into(),
            ]];
            for seq in first..=last {
                let Ok(d) = dead_letter_at(&bus, seq).await else {
                    continue;
                };
                if reason.as_deref().is_some_and(|r| r != d.reason.as_str()) {
                    continue;
                }
                let mut detail = d.detail.replace('\n', " ");
                if detail.chars().count() > 70 {
                    detail = detail.chars().take(69).collect::<String>() + "…";
                }
                rows.push(vec![
                    seq.to_string(),
                    d.service.clone(),
                    d.reason.as_str().to_string(),
                    d.team.clone().unwrap_or_else(|| "-".into()),
                    block_label(&d),
                    detail,
                ]);
            }
            if rows.len() == 1 {
                println!("no dead letters");
            } else {
                print!("{}", table(&rows));
            }
        }
        DlqCommand::Show { seq } => {
            let d = dead_letter_at(&bus, seq).await?;
            println!("sequence     {seq}");
            println!("service      {}", d.service);
            println!("reason       {}", d.reason);
            println!("detail       {}", d.detail);
            println!(
                "subject      {} (stream sequence {})",
                d.subject, d.stream_sequence
            );
            println!("schema       {}", d.schema.as_deref().unwrap_or("-"));
            println!("team         {}", d.team.as_deref().unwrap_or("-"));
            println!("block        {}", block_label(&d));
            println!("task         {}", d.task_id.as_deref().unwrap_or("-"));
            println!("filed at     {} ms", d.at_ms);
            println!("original     {} bytes", d.original.len());
            for a in &d.history {
                println!(
                    "attempt {:<4} {} at {} ms: {}",
                    a.delivery, a.gateway, a.at_ms, a.error
                );
            }
        }
        DlqCommand::Replay { seq } => {
            let d = dead_letter_at(&bus, seq).await?;
            let blobs = push0_runtime::BlobStore::open(&bus, 0).await?;
            let original = blobs.get(&d.original).await?;
            let mut headers = async_nats::HeaderMap::new();
            if let Some(schema) = &d.schema {
                headers.insert(push0_protocol::SCHEMA_HEADER, schema.as_str());
            }
            // Replaying the same record twice is harmless: the stream drops the second.
            headers.insert(
                push0_protocol::MSG_ID_HEADER,
                format!("replay/{seq}").as_str(),
            );
            let ack = bus
                .publish_raw(d.subject.clone(), headers, original.into())
                .await?;
            // A replayed poison task runs again: its block is no longer failed for the team.
            if let (DlqReason::MaxDeliveries, Some(team), Some(block)) =
                (d.reason, &d.team, &d.block)
            {
                let plans = bus.kv(&bus.subjects.bucket_plans()).await?;
                let key = plan_key(team, &block.chain, block.number);
                push0_runtime::kv_update::<Plan, _>(&plans, &key, |p| {
                    let p = p.filter(|p| p.accepted.block == *block && p.failed.is_some())?;
                    let mut p = p.clone();
                    p.failed = None;
                    Some(p)
                })
                .await?;
            }
            if ack.duplicate {
                println!("dead letter {seq} was replayed before; nothing published");
            } else {
                println!(
                    "replayed dead letter {seq} ({}) to {} as {} sequence {}",
                    d.reason, d.subject, ack.stream, ack.sequence
                );
            }
        }
    }
    Ok(())
}
