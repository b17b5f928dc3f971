//! `push0-loadtest`: starts nats-server (or a 3-node cluster) and the real service binaries
//! as child processes, drives them with a block source and simulated provers, and reports the
//! same-run JetStream floor, orchestration overhead, throughput, scaling efficiency, a
//! realistic workload and memory — as markdown on stdout, JSON and SVG in a results folder.
//! `BENCHMARKS.md` at the repository root describes the method and the latest figures.

mod deploy;
mod floor;
mod inside;
mod phases;
mod procs;
mod report;
mod stats;
mod tap;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use push0_natsd::{NatsCluster, NatsServer};

use crate::deploy::{Target, ensure_dir};
use crate::procs::Sampler;
use crate::report::{Machine, Report, Section};
use crate::stats::ratio;

const SECTIONS: &[&str] = &[
    "latency",
    "sweep",
    "burst",
    "scaling",
    "realistic",
    "memory",
    "cluster",
];

/// push0 load harness: floor, overhead, throughput, scaling, realistic workload, memory, R3
#[derive(Parser, Debug)]
#[command(name = "push0-loadtest", version)]
struct Args {
    /// Small sizes for the test suite: finishes in well under a minute, no R3 cluster
    #[arg(long)]
    quick: bool,
    /// Sections to run, comma-separated, from: latency, sweep, burst, scaling, realistic,
    /// memory, cluster (default all; with --quick all but cluster)
    #[arg(long, value_delimiter = ',')]
    sections: Vec<String>,
    /// Attach to this NATS server for the R1 figures instead of starting one
    #[arg(long, env = "PUSH0_NATS_URL")]
    nats_url: Option<String>,
    /// Closed-loop samples per latency series [default: 300, quick 60]
    #[arg(long)]
    samples: Option<usize>,
    /// Work-queue hops in the floor chain: BLOCKS → ACCEPTED → TASKS → RESULTS → PROOFS is 4
    #[arg(long, default_value_t = 4)]
    hops: usize,
    /// Block payload bytes
    #[arg(long, default_value_t = 256)]
    payload_size: usize,
    /// Offered loads of the open-loop sweep, blocks/s [default: 100,300,1000,2000,4000,8000;
    /// quick 200,1000]
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Seconds per sweep point [default: 3, quick 1]
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Blocks of the saturation burst (8 tasks each) [default: 2000, quick 200]
    #[arg(long)]
    burst_blocks: Option<u64>,
    /// Slot counts of the scaling runs [default: 1,8,32,256,1024; quick 1,32,1024]
    #[arg(long, value_delimiter = ',')]
    slots: Vec<usize>,
    /// Tasks per slot in each scaling run [default: 4, quick 2]
    #[arg(long)]
    rounds: Option<usize>,
    /// Blocks of the realistic workload [default: 3, quick 2]
    #[arg(long)]
    realistic_blocks: Option<u64>,
    /// Block interval of the realistic workload [default: 12s, quick 1200ms]
    #[arg(long, value_parser = humantime::parse_duration)]
    realistic_interval: Option<Duration>,
    /// Prover latency of the realistic workload [default: lognormal:7s,0.3; quick
    /// lognormal:700ms,0.3]
    #[arg(long)]
    realistic_latency: Option<String>,
    /// Blocks in flight for the memory reading [default: 10000, quick 1000]
    #[arg(long)]
    in_flight_blocks: Option<u64>,
    /// Slot counts of the scaling runs on the R3 cluster [default: 1,32,256]
    #[arg(long, value_delimiter = ',')]
    cluster_slots: Vec<usize>,
    /// Where the JSON, SVG and service logs go [default: loadtest/results in the repository]
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        if self.sections.is_empty() {
            return !(self.quick && section == "cluster");
        }
        self.sections.iter().any(|s| s == section)
    }

    fn pick<T: Clone>(&self, given: &Option<T>, full: T, quick: T) -> T {
        given
            .clone()
            .unwrap_or(if self.quick { quick } else { full })
    }

    fn list<T: Clone>(&self, given: &[T], full: &[T], quick: &[T]) -> Vec<T> {
        if !given.is_empty() {
            given.to_vec()
        } else if self.quick {
            quick.to_vec()
        } else {
            full.to_vec()
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for s in &args.sections {
        anyhow::ensure!(
            SECTIONS.contains(&s.as_str()),
            "unknown section {s:?} (known: {})",
            SECTIONS.join(", ")
        );
    }
    let results = ensure_dir(
        &args
            .results_dir
            .clone()
            .unwrap_or_else(|| push0_natsd::repo_root().join("loadtest/results")),
    )?;
    let logs = results.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    ensure_dir(&logs)?;
    let sampler = Sampler::start();
    let mut report = Report {
        started_at: now_utc(),
        // Before this run writes its results into the tree.
        commit: commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::detect(),
        ..Default::default()
    };

    let (server, url) = match &args.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let s = NatsServer::start()?;
            let u = s.url();
            (Some(s), u)
        }
    };
    let nats_pids: Vec<u32> = server
        .as_ref()
        .and_then(NatsServer::pid)
        .into_iter()
        .collect();
    for pid in &nats_pids {
        sampler.watch("nats-server", *pid);
    }
    let target = Target {
        url,
        replicas: 1,
        log_dir: logs.clone(),
        sampler: sampler.clone(),
        nats_pids,
    };
    eprintln!(
        "R1: one nats-server, services as processes (logs in {})",
        logs.display()
    );
    let r1 = run_section(&args, &target, "R1: one nats-server", false).await?;
    drop(server);
    report.sections.push(r1);

    if args.wants("cluster") {
        eprintln!("R3: a 3-node nats-server cluster, streams and buckets with 3 replicas");
        let cluster = NatsCluster::start()?;
        for pid in &target.nats_pids {
            sampler.unwatch(*pid);
        }
        for pid in cluster.pids() {
            sampler.watch("nats-server", pid);
        }
        let target = Target {
            url: cluster.url(),
            replicas: 3,
            nats_pids: cluster.pids(),
            ..target.clone()
        };
        match run_section(&args, &target, "R3: 3-node nats-server cluster", true).await {
            Ok(r3) => report.sections.push(r3),
            // The R1 figures still stand; say what failed instead of losing them.
            Err(e) => {
                eprintln!("R3 section failed: {e:#}");
                report.r3_error = Some(format!("{e:#}"));
            }
        }
    }

    let r1 = &report.sections[0];
    report.summary = report::summary_line(r1);
    let json = results.join("latest.json");
    let svg = results.join("latest.svg");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&svg, report::svg(&report))?;

    // The whole report, printed and kept as this run's file beside the JSON.
    let mut md = format!(
        "# push0 load harness — {}, commit {}\n\n`{}`\n\n",
        report.started_at, report.commit, report.command
    );
    let m = &report.machine;
    md += &format!(
        "Machine: {} cores ({}), {} MiB, kernel {}, {}.\n\n",
        m.cores, m.cpu, m.memory_mb, m.kernel, m.nats_server
    );
    for s in &report.sections {
        md += &format!("{}\n", report::section_markdown(s));
    }
    if let Some(e) = &report.r3_error {
        md += &format!("## R3: 3-node nats-server cluster\n\nFailed: {e}\n\n");
    }
    md += &format!(
        "## Targets (R1)\n\n{}\n{}\n",
        report::targets_markdown(r1),
        report.summary
    );
    let runs = ensure_dir(&results.join("runs"))?;
    let stamp: String = report
        .started_at
        .trim_end_matches(" UTC")
        .chars()
        .filter(|c| *c != ':')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect();
    let run_file = runs.join(format!("{stamp}.md"));
    std::fs::write(&run_file, &md)?;
    print!("{md}");
    println!(
        "\nWritten: {}, {} and {}\n",
        json.display(),
        svg.display(),
        run_file.display()
    );
    println!("{}", report.summary);
    Ok(())
}

async fn run_section(args: &Args, target: &Target, label: &str, cluster: bool) -> Result<Section> {
    let payload = args.payload_size;
    let mut s = Section {
        label: label.to_string(),
        replicas: target.replicas,
        floor_hops: args.hops,
        ..Default::default()
    };
    target.sampler.take_phase();
    if args.wants("latency") {
        let samples = args.pick(&args.samples, 300, 60);
        eprintln!(
            "floor: {samples} samples through {} chained work-queue hops",
            args.hops
        );
        let measured =
            floor::latencies(&target.url, target.replicas, args.hops, samples, true).await?;
        let floor = stats::Pct::of(measured.whole);
        s.floor_legs = measured.legs.into_iter().map(stats::Pct::of).collect();
        s.split_hops = phases::split_hops();
        eprintln!(
            "floor: {samples} samples through {} hops (a split block's path)",
            s.split_hops
        );
        let split = floor::latencies(&target.url, target.replicas, s.split_hops, samples, false)
            .await?
            .whole;
        let split_floor = stats::Pct::of(split);
        eprintln!("latency: {samples} blocks per series, one at a time");
        let lat = phases::latency(target, samples, payload).await?;
        s.overhead_p50_x = Some(ratio(lat.task.p50, floor.p50));
        s.overhead_p99_x = Some(ratio(lat.task.p99, floor.p99));
        s.block_p50_x = Some(ratio(lat.block_split.p50, split_floor.p50));
        s.floor = Some(floor);
        s.split_floor = Some(split_floor);
        s.latency = Some(lat);
    }
    if args.wants("sweep") && !cluster {
        let rates = args.list(
            &args.rates,
            &[100.0, 300.0, 1000.0, 2000.0, 4000.0, 8000.0],
            &[200.0, 1000.0],
        );
        let secs = args.pick(&args.rate_secs, 3.0, 1.0);
        eprintln!("sweep: offered loads {rates:?} blocks/s for {secs} s each");
        s.sweep = phases::sweep(target, &rates, secs, payload).await?;
        s.saturation_per_s = Some(phases::saturation(&s.sweep));
    }
    if args.wants("burst") {
        let blocks = args.pick(&args.burst_blocks, 2000, 200);
        eprintln!("burst: {blocks} blocks at once, 8 tasks each");
        let b = phases::burst(target, blocks, payload).await?;
        eprintln!("  {:.0} tasks/s", b.tasks_per_s);
        s.burst = Some(b);
    }
    if args.wants("scaling") {
        let slots = if cluster {
            args.list(&args.cluster_slots, &[1, 32, 256], &[1, 32])
        } else {
            args.list(&args.slots, &[1, 8, 32, 256, 1024], &[1, 32, 1024])
        };
        let rounds = args.pick(&args.rounds, 4, 2);
        eprintln!("scaling: 1 s provers at {slots:?} slots, {rounds} tasks per slot");
        s.scaling = phases::scaling(target, &slots, rounds, payload).await?;
    }
    if args.wants("realistic") && !cluster {
        let blocks = args.pick(&args.realistic_blocks, 3, 2);
        let interval = args.pick(
            &args.realistic_interval,
            Duration::from_secs(12),
            Duration::from_millis(1200),
        );
        let latency = args.pick(
            &args.realistic_latency,
            "lognormal:7s,0.3".to_string(),
            "lognormal:700ms,0.3".to_string(),
        );
        eprintln!("realistic: {blocks} blocks every {interval:?}, 3 teams, provers {latency}");
        s.realistic = phases::realistic(target, blocks, interval, &latency, payload).await?;
    }
    if args.wants("memory") && !cluster {
        let blocks = args.pick(&args.in_flight_blocks, 10_000, 1000);
        eprintln!("memory: {blocks} blocks in flight");
        s.in_flight = Some(phases::in_flight(target, blocks, payload).await?);
    }
    s.rss_peak_mb = target.sampler.take_phase();
    Ok(s)
}

/// UTC time as `YYYY-MM-DD HH:MM:SS UTC`, from the system clock (no date library needed).
/// The checked-out commit the harness was built from, as `git` names it (`+changes` when the
/// tree differs from it), or `unknown`.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(push0_natsd::repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--untracked-files=no"]),
    ) {
        (Some(head), Some(changes)) if !changes.is_empty() => format!("{head}+changes"),
        (Some(head), _) => head,
        _ => "unknown".into(),
    }
}

fn now_utc() -> String {
    // RFC 3339 to the second ("2026-12-06T10:59:27Z"), written as "2026-12-06 10:59:27 UTC".
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}
