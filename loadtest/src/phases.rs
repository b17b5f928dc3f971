//! The experiments, each on its own deployment (fresh prefix, fresh processes) so one's
//! backlog never leaks into the next.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Result;
use push0_protocol::TeamConfig;
use serde::Serialize;

use crate::deploy::{Deployment, Driver, Target, TeamSpec, progress};
use crate::inside::{self, Step};
use crate::procs::{cpu_seconds, rss_kb};
use crate::stats::Pct;
use crate::tap::Tap;

fn team(config: TeamConfig, chains: &[&str]) -> TeamConfig {
    TeamConfig {
        chains: chains.iter().map(|c| c.to_string()).collect(),
        ..config
    }
}

/// Core utilisation per role (percent of one core) over `secs`.
fn cpu_pct(spent: &BTreeMap<String, f64>, secs: f64) -> BTreeMap<String, f64> {
    spent
        .iter()
        .map(|(r, s)| (r.clone(), 100.0 * s / secs.max(1e-9)))
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct HopStats {
    pub samples: usize,
    /// The harness's publish of the submission → the submission seen on the bus
    pub submit: Pct,
    /// Submission published → `block-accepted` published
    pub ingest: Pct,
    /// `block-accepted` → `task` published
    pub scheduler: Pct,
    /// `task` → `task-result` published, minus the prover's own time
    pub gateway: Pct,
    /// `task-result` → `block-proof` published
    pub aggregator: Pct,
    /// `block-proof` seen on the bus → its delivery to the harness's durable consumer
    pub deliver: Pct,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Team `single` (one task per block): overhead of one task, submission to proof
    pub task: Pct,
    /// Team `split` into 4, arity 2 (7 tasks, 3 on the critical path): overhead per block
    pub block_split: Pct,
    pub hops: HopStats,
    /// Inside the hops of the per-hop series, from the services' metrics.
    pub steps: Vec<Step>,
}

/// The latency section's split team: 4 leaves, arity 2 (7 tasks over 3 levels).
fn split_team() -> TeamConfig {
    team(TeamConfig::split("t7", 4, 2), &["c7"])
}

/// The hops a block of the latency section's split team takes from submission to proof:
/// ingest's (submission → notice), then for each level of its tree the scheduler's (notice or
/// join signal → task), the gateway's (task → result) and the aggregator's (result → join
/// signal, or the proof at the root). The same count of work-queue hops is its floor.
pub fn split_hops() -> usize {
    1 + 3 * split_team().workflow().level_widths().len()
}

/// Closed loop: one block at a time, so nothing queues and the figures are pure overhead.
pub async fn latency(target: &Target, samples: usize, payload: usize) -> Result<Latency> {
    let teams = vec![
        TeamSpec::new(team(TeamConfig::single("t1"), &["c1"]), 1, 4, "fixed:0ms"),
        TeamSpec::new(split_team(), 1, 8, "fixed:0ms"),
    ];
    let deployment = Deployment::start(target, teams, 16).await?;
    let mut driver = Driver::new(&deployment.bus, payload).await?;
    let warmup = 20;
    let bar = progress(
        (warmup + samples + samples / 2) as u64,
        "latency (closed loop)",
    );
    let (mut task, mut split) = (Vec::new(), Vec::new());
    let mut n = 0;
    for i in 0..warmup + samples {
        n += 1;
        for (chain, out) in [("c1", &mut task), ("c7", &mut split)] {
            driver.submit(chain, n).await?;
            let a = driver.collect(1, Duration::from_secs(20), None).await?;
            if i >= warmup {
                out.push(a[0].overhead_us());
            }
        }
        bar.inc(1);
    }
    // A second series on `c1` with every publish observed, for the per-hop split (the tap's
    // extra subscriber costs the server a little, so it is kept out of the series above).
    let tap = Tap::start(&deployment.bus, "c1").await?;
    let before = deployment.scrape();
    let mut ends = HashMap::new();
    for _ in 0..samples / 2 {
        n += 1;
        let sent = Instant::now();
        driver.submit("c1", n).await?;
        let arrived = driver.collect(1, Duration::from_secs(20), None).await?;
        ends.insert(n, (sent, arrived[0].at));
        bar.inc(1);
    }
    // The proof reaches the tap at the same time as the reader; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = tap.finish().await;
    let steps = inside::steps(&before, &deployment.scrape(), samples / 2);
    bar.finish_and_clear();
    let stages: Vec<[u64; 6]> = seen
        .iter()
        .filter_map(|((_, n), h)| {
            let (sent, arrived) = ends.get(n)?;
            h.stages(*sent, *arrived)
        })
        .collect();
    let col = |i: usize| Pct::of(stages.iter().map(|s| s[i]).collect());
    let hops = HopStats {
        samples: stages.len(),
        submit: col(0),
        ingest: col(1),
        scheduler: col(2),
        gateway: col(3),
        aggregator: col(4),
        deliver: col(5),
    };
    deployment.stop();
    Ok(Latency {
        task: Pct::of(task),
        block_split: Pct::of(split),
        hops,
        steps,
    })
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepPoint {
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub blocks: usize,
    /// Overhead per task (open loop: includes queueing)
    pub overhead: Pct,
    /// Percent of one core per role while the point ran
    pub cpu_pct: BTreeMap<String, f64>,
}

/// Open loop: team `single` with 0 ms provers, blocks offered at each rate for `secs`; stops
/// after the first rate the deployment cannot keep up with.
pub async fn sweep(
    target: &Target,
    rates: &[f64],
    secs: f64,
    payload: usize,
) -> Result<Vec<SweepPoint>> {
    let teams = vec![TeamSpec::new(TeamConfig::single("t1"), 2, 32, "fixed:0ms")];
    let deployment = Deployment::start(target, teams, 256).await?;
    let mut driver = Driver::new(&deployment.bus, payload).await?;
    let mut next = 1;
    driver
        .submit_many("c1", next..next + 20, 0.0, 64, None)
        .await?;
    driver.collect(20, Duration::from_secs(30), None).await?;
    next += 20;
    let mut points = Vec::new();
    for &rate in rates {
        driver.reset();
        let count = ((rate * secs).round() as u64).max(1);
        let bar = progress(count, &format!("sweep {rate:.0} blocks/s"));
        let cpu_before = deployment.cpu();
        let started = Instant::now();
        driver
            .submit_many("c1", next..next + count, rate, 4096, Some(&bar))
            .await?;
        next += count;
        let timeout = Duration::from_secs_f64(secs + 60.0);
        let arrivals = driver.collect(count as usize, timeout, None).await?;
        bar.finish_and_clear();
        let wall = started.elapsed().as_secs_f64();
        let first = driver.first_submit.unwrap_or(started);
        let last = arrivals.iter().map(|a| a.at).max().unwrap_or(first);
        let span = last.duration_since(first).as_secs_f64();
        let achieved = count as f64 / span.max(1e-6);
        let point = SweepPoint {
            offered_per_s: rate,
            achieved_per_s: achieved,
            blocks: count as usize,
            overhead: Pct::of(arrivals.iter().map(|a| a.overhead_us()).collect()),
            cpu_pct: cpu_pct(&cpu_seconds(&cpu_before, &deployment.cpu()), wall),
        };
        eprintln!(
            "  offered {rate:.0}/s: achieved {achieved:.0}/s, overhead p50 {:.2} ms p99 {:.2} ms",
            point.overhead.p50 as f64 / 1000.0,
            point.overhead.p99 as f64 / 1000.0
        );
        let saturated = achieved < 0.8 * rate;
        points.push(point);
        if saturated {
            break;
        }
    }
    deployment.stop();
    Ok(points)
}

/// The highest offered rate the deployment sustained (achieved ≥ 95 % of offered).
pub fn saturation(points: &[SweepPoint]) -> f64 {
    points
        .iter()
        .filter(|p| p.achieved_per_s >= 0.95 * p.offered_per_s)
        .map(|p| p.offered_per_s)
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct Burst {
    pub blocks: usize,
    pub tasks: usize,
    pub secs: f64,
    pub tasks_per_s: f64,
    pub blocks_per_s: f64,
    /// Percent of one core per role over the burst
    pub cpu_pct: BTreeMap<String, f64>,
    /// CPU microseconds per task per role
    pub cpu_us_per_task: BTreeMap<String, f64>,
}

/// Saturation throughput: `blocks` submitted at once to two teams on one chain (`single`: 1
/// task per block, `split` 4/2: 7 tasks), 0 ms provers; sustained = tasks / (last proof −
/// first submission).
pub async fn burst(target: &Target, blocks: u64, payload: usize) -> Result<Burst> {
    let teams = vec![
        TeamSpec::new(TeamConfig::single("t1"), 1, 32, "fixed:0ms"),
        TeamSpec::new(TeamConfig::split("t7", 4, 2), 1, 32, "fixed:0ms"),
    ];
    let tasks_per_block = 8;
    let deployment = Deployment::start(target, teams, 256).await?;
    let mut driver = Driver::new(&deployment.bus, payload).await?;
    driver.submit_many("c1", 1..6, 0.0, 64, None).await?;
    driver.collect(10, Duration::from_secs(30), None).await?;
    driver.reset();
    let bar = progress(2 * blocks, &format!("burst of {blocks} blocks"));
    let cpu_before = deployment.cpu();
    let started = Instant::now();
    let submit = driver.submit_many("c1", 6..6 + blocks, 0.0, 2048, None);
    submit.await?;
    let timeout = Duration::from_secs(60 + blocks / 20);
    let arrivals = driver
        .collect(2 * blocks as usize, timeout, Some(&bar))
        .await?;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let spent = cpu_seconds(&cpu_before, &deployment.cpu());
    let first = driver.first_submit.unwrap_or(started);
    let last = arrivals.iter().map(|a| a.at).max().unwrap_or(first);
    let secs = last.duration_since(first).as_secs_f64().max(1e-6);
    let tasks = blocks as usize * tasks_per_block;
    deployment.stop();
    Ok(Burst {
        blocks: blocks as usize,
        tasks,
        secs,
        tasks_per_s: tasks as f64 / secs,
        blocks_per_s: blocks as f64 / secs,
        cpu_pct: cpu_pct(&spent, wall),
        cpu_us_per_task: spent
            .iter()
            .map(|(r, s)| (r.clone(), s * 1e6 / tasks as f64))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScalePoint {
    pub slots: usize,
    pub teams: usize,
    pub gateway_processes: usize,
    pub tasks: usize,
    pub secs: f64,
    pub tasks_per_s: f64,
    /// throughput(N) / (N × throughput(1)), percent
    pub efficiency_pct: f64,
}

/// 1 s simulated provers at each slot count: `rounds` tasks per slot submitted at once,
/// throughput = tasks / (last proof − first submission). Slots are split over up to four
/// teams (each block is one task per team) and over gateway processes of at most 128 slots.
pub async fn scaling(
    target: &Target,
    slot_counts: &[usize],
    rounds: usize,
    payload: usize,
) -> Result<Vec<ScalePoint>> {
    let mut points: Vec<ScalePoint> = Vec::new();
    for &n in slot_counts {
        let teams_n = n.clamp(1, 4);
        let per_team = (n / teams_n).max(1);
        let procs = per_team.div_ceil(128);
        let per_proc = per_team / procs;
        let teams: Vec<TeamSpec> = (0..teams_n)
            .map(|i| {
                TeamSpec::new(
                    TeamConfig::single(&format!("s{i}")),
                    procs,
                    per_proc,
                    "fixed:1s",
                )
            })
            .collect();
        let slots = teams_n * procs * per_proc;
        let deployment = Deployment::start(target, teams, per_team.max(16) as u64).await?;
        let mut driver = Driver::new(&deployment.bus, payload).await?;
        driver.submit("c1", 1).await?;
        driver
            .collect(teams_n, Duration::from_secs(30), None)
            .await?;
        driver.reset();
        let blocks = (rounds * per_proc * procs) as u64;
        let tasks = blocks as usize * teams_n;
        let bar = progress(tasks as u64, &format!("scaling {slots} slots"));
        driver
            .submit_many("c1", 2..2 + blocks, 0.0, 4096, None)
            .await?;
        let timeout = Duration::from_secs(60 + 3 * rounds as u64);
        let arrivals = driver.collect(tasks, timeout, Some(&bar)).await?;
        bar.finish_and_clear();
        let first = driver.first_submit.unwrap_or_else(Instant::now);
        let last = arrivals.iter().map(|a| a.at).max().unwrap_or(first);
        let secs = last.duration_since(first).as_secs_f64().max(1e-6);
        let thr = tasks as f64 / secs;
        let base = points
            .first()
            .map_or(thr / slots as f64, |p| p.tasks_per_s / p.slots as f64);
        let eff = 100.0 * thr / (slots as f64 * base);
        eprintln!("  {slots} slots: {thr:.1} tasks/s, efficiency {eff:.1} %");
        points.push(ScalePoint {
            slots,
            teams: teams_n,
            gateway_processes: teams_n * procs,
            tasks,
            secs,
            tasks_per_s: thr,
            efficiency_pct: eff,
        });
        deployment.stop();
    }
    Ok(points)
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct RealisticTeam {
    pub team: String,
    pub workflow: String,
    pub blocks: usize,
    pub proving: Pct,
    pub overhead: Pct,
    /// Overhead as a fraction of the block's proving time, percent (p50, p99)
    pub overhead_pct_p50: f64,
    pub overhead_pct_p99: f64,
}

/// Several teams proving one chain whose blocks arrive every `interval`, provers drawn from
/// `latency` (the paper's typical proof takes ~7 s).
pub async fn realistic(
    target: &Target,
    blocks: u64,
    interval: Duration,
    latency: &str,
    payload: usize,
) -> Result<Vec<RealisticTeam>> {
    let teams = vec![
        TeamSpec::new(TeamConfig::single("r1"), 1, 4, latency),
        TeamSpec::new(TeamConfig::split("r4", 4, 2), 1, 8, latency),
        TeamSpec::new(TeamConfig::split("r8", 8, 4), 2, 8, latency),
    ];
    let shapes: BTreeMap<String, String> = teams
        .iter()
        .map(|t| {
            let shape = match t.config.parts {
                Some(p) => format!("split {p}, arity {}", t.config.arity),
                None => "single".to_string(),
            };
            (t.config.name.clone(), shape)
        })
        .collect();
    let deployment = Deployment::start(target, teams, 16).await?;
    let mut driver = Driver::new(&deployment.bus, payload).await?;
    let expected = blocks as usize * shapes.len();
    let bar = progress(expected as u64, "realistic workload");
    let rate = 1.0 / interval.as_secs_f64();
    driver
        .submit_many("c1", 1..1 + blocks, rate, 16, None)
        .await?;
    let timeout = Duration::from_secs(120) + interval * 2;
    let arrivals = driver.collect(expected, timeout, Some(&bar)).await?;
    bar.finish_and_clear();
    deployment.stop();
    let mut out = Vec::new();
    for (name, workflow) in shapes {
        let mine: Vec<_> = arrivals.iter().filter(|a| a.team == name).collect();
        let mut fractions: Vec<u64> = mine
            .iter()
            .map(|a| (a.overhead_us() as f64 / a.proving_us.max(1) as f64 * 1e6) as u64)
            .collect();
        fractions.sort_unstable();
        let f = Pct::of(fractions);
        out.push(RealisticTeam {
            team: name,
            workflow,
            blocks: mine.len(),
            proving: Pct::of(mine.iter().map(|a| a.proving_us).collect()),
            overhead: Pct::of(mine.iter().map(|a| a.overhead_us()).collect()),
            overhead_pct_p50: f.p50 as f64 / 1e4,
            overhead_pct_p99: f.p99 as f64 / 1e4,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct InFlight {
    pub blocks: usize,
    pub secs_to_accept: f64,
    /// Peak RSS per process role (MiB) with every block accepted and planned, none proved
    pub rss_mb: BTreeMap<String, f64>,
}

/// `blocks` blocks in flight: submitted to two teams whose provers never finish (1 h), until
/// the scheduler has planned them all; then the services' RSS.
pub async fn in_flight(target: &Target, blocks: u64, payload: usize) -> Result<InFlight> {
    let teams = vec![
        TeamSpec::new(TeamConfig::single("m1"), 1, 4, "fixed:1h"),
        TeamSpec::new(TeamConfig::split("m7", 4, 2), 1, 4, "fixed:1h"),
    ];
    let deployment = Deployment::start(target, teams, 16).await?;
    let mut driver = Driver::new(&deployment.bus, payload).await?;
    let bar = progress(blocks, &format!("{blocks} blocks in flight"));
    let started = Instant::now();
    driver
        .submit_many("c1", 1..1 + blocks, 0.0, 2048, Some(&bar))
        .await?;
    bar.finish_and_clear();
    let bus = &deployment.bus;
    let spec = bus.topology.scheduler_consumer();
    let deadline = Instant::now() + Duration::from_secs(120 + blocks / 50);
    loop {
        let mut accepted = bus.js.get_stream(bus.subjects.stream_accepted()).await?;
        let stored = accepted.info().await?.state.messages;
        let planned = match accepted.consumer_info(&spec.durable).await {
            Ok(i) => i.num_pending == 0 && i.num_ack_pending == 0,
            Err(_) => false,
        };
        if stored >= blocks && planned {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {stored} of {blocks} blocks accepted and planned in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs_to_accept = started.elapsed().as_secs_f64();
    let mut rss_mb: BTreeMap<String, f64> = BTreeMap::new();
    for _ in 0..10 {
        for (role, pid) in deployment.pids() {
            let mb = rss_kb(pid).unwrap_or(0) as f64 / 1024.0;
            let e = rss_mb.entry(role.to_string()).or_default();
            *e = e.max(mb);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(driver);
    deployment.stop();
    Ok(InFlight {
        blocks: blocks as usize,
        secs_to_accept,
        rss_mb,
    })
}
