//! Helpers for push0's end-to-end tests: a real nats-server per test, an in-process cluster
//! on a random prefix, readers for the proof and dead-letter streams, and the expected
//! simulated proof of a block (so tests check the data flow, not just counts).

pub mod chaos;

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use push0::cluster::{ClusterSpec, LocalCluster};
use push0::watch::ProofFeed;
pub use push0_natsd::{NatsServer, eventually, random_prefix};
use push0_protocol::{
    Blob, BlockProof, BlockRef, DeadLetter, NodeId, PartRecord, Ready, SCHEMA_HEADER, TaskOutcome,
    TaskResult, TeamConfig, WireMessage, Workflow, decode,
};
use push0_prover_gateway::latency::Latency;
use push0_prover_gateway::prover::{Prover, SimProver, sim_aggregate_proof, sim_leaf_proof};
use push0_runtime::Bus;

pub fn sim(latency: &str) -> Prover {
    Prover::Sim(SimProver {
        latency: latency.parse::<Latency>().expect("valid latency"),
        fail_while: None,
    })
}

/// A real server, a fresh prefix and a connection for the test's own use.
pub struct Env {
    pub server: NatsServer,
    pub prefix: String,
    pub bus: Bus,
}

impl Env {
    pub async fn new() -> Result<Self> {
        Self::start(None).await
    }

    /// As [`Env::new`], the server's log kept among `logs`.
    pub async fn with_logs(logs: &Logs) -> Result<Self> {
        Self::start(Some(logs.dir.join("nats.log"))).await
    }

    async fn start(log: Option<std::path::PathBuf>) -> Result<Self> {
        let server = NatsServer::start_logged(log)?;
        let prefix = random_prefix();
        let bus = Bus::connect(&server.url(), &prefix, "test").await?;
        push0_runtime::topology::apply(&bus, 1, Duration::from_secs(60)).await?;
        Ok(Self {
            server,
            prefix,
            bus,
        })
    }

    pub fn spec(&self, teams: Vec<TeamConfig>) -> ClusterSpec {
        ClusterSpec::new(&self.server.url(), &self.prefix, teams)
    }

    /// A cluster with `gateways` gateways of `slots` simulated provers for every team.
    pub async fn cluster(
        &self,
        teams: Vec<TeamConfig>,
        gateways: usize,
        slots: usize,
        latency: &str,
    ) -> Result<LocalCluster> {
        let mut spec = self.spec(teams.clone());
        for t in &teams {
            spec = spec.gateways(&t.name, gateways, slots, sim(latency));
        }
        LocalCluster::start(spec).await
    }
}

/// Reads proofs until `count` have arrived or `timeout` passes (then fails with what came).
pub async fn collect_proofs(bus: &Bus, count: usize, timeout: Duration) -> Result<Vec<BlockProof>> {
    let mut feed = ProofFeed::open(bus).await?;
    let mut proofs = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while proofs.len() < count {
        match tokio::time::timeout_at(deadline, feed.next()).await {
            Ok(Ok(Some(p))) => proofs.push(p),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("only {} of {count} proofs after {timeout:?}", proofs.len()),
        }
    }
    Ok(proofs)
}

/// Every proof on the stream right now (waits `settle` for stragglers first).
pub async fn all_proofs(bus: &Bus, settle: Duration) -> Result<Vec<BlockProof>> {
    tokio::time::sleep(settle).await;
    read_all(
        bus,
        &bus.subjects.stream_proofs(),
        &bus.subjects.proofs_all(),
    )
    .await
}

/// Every join signal on the ready stream right now (the redos there are left out).
pub async fn ready_signals(bus: &Bus) -> Result<Vec<Ready>> {
    read_all(bus, &bus.subjects.stream_ready(), &bus.subjects.ready_all()).await
}

/// Every dead letter on the stream right now.
pub async fn dead_letters(bus: &Bus) -> Result<Vec<DeadLetter>> {
    read_all(bus, &bus.subjects.stream_dlq(), &bus.subjects.dlq_all()).await
}

/// Waits until the dead-letter stream holds at least one record, then returns them all.
pub async fn dead_letters_appear(bus: &Bus, timeout: Duration) -> Result<Vec<DeadLetter>> {
    crate::eventually(timeout, "a dead letter", || async {
        let r = dead_letters(bus).await.ok()?;
        (!r.is_empty()).then_some(r)
    })
    .await
}

async fn read_all<M: push0_protocol::WireMessage>(
    bus: &Bus,
    stream: &str,
    filter: &str,
) -> Result<Vec<M>> {
    let total = bus.stored_on(stream, filter).await? as usize;
    let stream = bus.js.get_stream(stream).await?;
    let mut out = Vec::new();
    if total == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .context("reading stream")?
            .context("stream ended")??;
        let schema = m
            .headers
            .as_ref()
            .and_then(|h| h.get(SCHEMA_HEADER))
            .map(|v| v.as_str().to_string());
        // Another kind sharing the stream (a redo beside the join signals) is not asked for.
        if schema.as_deref().is_some_and(|s| s != M::SCHEMA) {
            continue;
        }
        out.push(decode(schema.as_deref(), &m.payload)?);
    }
    Ok(out)
}

/// Block `number` of chain `eth`, its hash the number repeated.
pub fn eth_block(number: u64) -> BlockRef {
    BlockRef {
        chain: "eth".into(),
        number,
        hash: vec![number as u8; 32],
    }
}

/// The proved root of `block`'s `single` workflow as a gateway of `team` reports it, with
/// `proof` inline.
pub fn proved_root(team: &str, block: BlockRef, proof: Vec<u8>) -> TaskResult {
    let root = NodeId { level: 0, index: 0 };
    proved_node(team, block, root, Workflow::SINGLE, proof)
}

/// The proved `node` of `block`'s `workflow` as a gateway of `team` reports it, with `proof`
/// inline.
pub fn proved_node(
    team: &str,
    block: BlockRef,
    node: NodeId,
    workflow: Workflow,
    proof: Vec<u8>,
) -> TaskResult {
    TaskResult {
        task_id: format!("{team}/{}/{}/{node}", block.chain, block.number),
        team: team.into(),
        block,
        node,
        workflow,
        outcome: TaskOutcome::Proved {
            proof: Blob::Inline(proof),
            proof_system: "sim".into(),
            report: None,
        },
        gateway: "g".into(),
        attempt: 1,
        prove_ms: 1,
        inputs_critical_ms: 0,
        queue_wait_ms: 0,
        submitted_at_ms: 0,
        deadline_ms: None,
    }
}

/// The simulated block proof of `payload` under `workflow`, computed independently of push0:
/// leaves hash their slice, aggregations hash their children's proofs in order.
pub fn expected_sim_proof(payload: &[u8], workflow: Workflow) -> Vec<u8> {
    fn node_proof(payload: &[u8], w: &Workflow, node: NodeId) -> Vec<u8> {
        if node.level == 0 {
            let (offset, len) = w.leaf_range(payload.len() as u64, node.index);
            return sim_leaf_proof(&payload[offset as usize..(offset + len) as usize]);
        }
        let children: Vec<Vec<u8>> = w
            .children(node)
            .into_iter()
            .map(|c| node_proof(payload, w, c))
            .collect();
        sim_aggregate_proof(children.iter().map(Vec::as_slice))
    }
    node_proof(payload, &workflow, workflow.root())
}

/// Every proved node recorded in the parts bucket (a root under its block's final key; invalid
/// markers left out), in the order they were recorded.
pub async fn part_records(bus: &Bus) -> Result<Vec<PartRecord>> {
    let parts = bus.kv(&bus.subjects.bucket_parts()).await?;
    let mut keys = parts.keys().await?;
    let mut records = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if key.ends_with(".invalid") {
            continue;
        }
        if let Some(entry) = parts.get(&key).await? {
            records.push(decode::<PartRecord>(Some(PartRecord::SCHEMA), &entry)?);
        }
    }
    records.sort_by_key(|r| r.recorded_at_ms);
    Ok(records)
}

/// Asserts that each of `teams` teams published exactly one proof of every block `1..=last`,
/// in block order; `logs` is named in the failure message.
pub fn assert_once_in_order(
    proofs: &[BlockProof],
    teams: usize,
    last: u64,
    logs: &std::path::Path,
) {
    assert_eq!(
        proofs.len(),
        teams * last as usize,
        "one proof per (team, block); logs in {}",
        logs.display()
    );
    let by_team = numbers_by_team(proofs);
    assert_eq!(by_team.len(), teams, "every team published");
    for (team, numbers) in by_team {
        assert_eq!(
            numbers,
            (1..=last).collect::<Vec<u64>>(),
            "team {team}: in order, none lost"
        );
    }
}

/// Block numbers per team, in publication order.
pub fn numbers_by_team(proofs: &[BlockProof]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut m: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for p in proofs {
        m.entry(p.team.clone()).or_default().push(p.number);
    }
    m
}

/// The real service binaries, as the test command builds them (`cargo build --release --bins`):
/// they sit beside this test's own profile folder.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<tool> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("executable folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("profile folder");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --release --bins, as tests/run does)",
        path.display()
    );
    path
}

/// A service binary running as a child process.
pub struct ServiceProcess {
    pub name: String,
    pub child: std::process::Child,
}

impl ServiceProcess {
    /// Starts `binary` with the common flags and `args`; its log goes to `<log_dir>/<name>.log`.
    pub fn start(
        binary_name: &str,
        name: &str,
        nats_url: &str,
        prefix: &str,
        args: &[&str],
        log_dir: &std::path::Path,
    ) -> Result<Self> {
        Self::start_on(binary_name, name, nats_url, prefix, 0, args, log_dir)
    }

    /// [`ServiceProcess::start`], serving its metrics on loopback `metrics_port` (0: any).
    pub fn start_on(
        binary_name: &str,
        name: &str,
        nats_url: &str,
        prefix: &str,
        metrics_port: u16,
        args: &[&str],
        log_dir: &std::path::Path,
    ) -> Result<Self> {
        let command = Self::command(binary_name, nats_url, prefix, metrics_port, args);
        Self::spawn(name, command, log_dir)
    }

    /// The command line of service `binary_name` on `nats_url` under `prefix`, serving its
    /// metrics on loopback `metrics_port` (0: any), with `args` after: to add to (an
    /// environment, say) before [`ServiceProcess::spawn`].
    pub fn command(
        binary_name: &str,
        nats_url: &str,
        prefix: &str,
        metrics_port: u16,
        args: &[&str],
    ) -> std::process::Command {
        let mut command = std::process::Command::new(binary(binary_name));
        command
            .args(["--nats-url", nats_url, "--prefix", prefix, "--metrics-addr"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(args);
        command
    }

    /// Starts `command` as the process `name`, its output in `name.log` under `log_dir`.
    pub fn spawn(
        name: &str,
        mut command: std::process::Command,
        log_dir: &std::path::Path,
    ) -> Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        Ok(())
    }

    /// Waits for the process to exit, up to `bound`; returns its exit status and how long it took.
    pub fn wait_bounded(
        &mut self,
        bound: Duration,
    ) -> Result<(std::process::ExitStatus, Duration)> {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > bound {
                let _ = self.child.kill();
                anyhow::bail!("{} did not exit within {bound:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh folder for a test's logs and files (kept after the test, for reading the logs).
pub fn temp_dir(test: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("push0-{test}-{}", random_prefix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The folder where a process-level test keeps every service's and server's log (`*.log`),
/// kept after the test. A test run through [`Logs::report`] that fails names the folder and
/// prints the last lines of each log with the failure.
pub struct Logs {
    pub dir: std::path::PathBuf,
}

/// Lines of each log printed with a failure.
const TAIL_LINES: usize = 30;

impl Logs {
    pub fn new(test: &str) -> Result<Self> {
        Ok(Self {
            dir: temp_dir(test)?,
        })
    }

    /// The last `lines` lines of every log in the folder, each under its file name.
    pub fn tails(&self, lines: usize) -> String {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        let mut out = String::new();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "---- {} (last {} of {} lines)\n",
                path.display(),
                all.len() - from,
                all.len()
            ));
            for line in &all[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Runs a test's body; when it fails (an error or a panic), prints where the logs are and
    /// the tail of each before passing the failure on.
    pub async fn report<F>(&self, body: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        use futures::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
        let failed = !matches!(outcome, Ok(Ok(())));
        if failed {
            eprintln!(
                "\ntest failed; logs kept in {}\n{}",
                self.dir.display(),
                self.tails(TAIL_LINES)
            );
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Applies the topology at `replicas` on the server(s) at `url`, as `push0 topology apply`
/// does: process-level tests start the service binaries, which only check it.
pub async fn apply_topology(url: &str, prefix: &str, replicas: usize) -> Result<()> {
    let mut bus = Bus::connect(url, prefix, "topology").await?;
    bus.replicas = replicas;
    push0_runtime::topology::apply(&bus, replicas, Duration::from_secs(120)).await?;
    Ok(())
}

/// The teams file a [`System`] expects: `alpha` (single) and `beta` (split 3, arity 2).
pub const SYSTEM_TEAMS: &str = r#"
[[team]]
name = "alpha"

[[team]]
name = "beta"
shape = "split"
parts = 3
arity = 2
"#;

/// [`SYSTEM_TEAMS`] with both teams reported to Ethproofs: `alpha` as cluster 11, `beta` as 22.
pub const SYSTEM_TEAMS_REPORTED: &str = r#"
[[team]]
name = "alpha"
ethproofs_cluster_id = 11

[[team]]
name = "beta"
shape = "split"
parts = 3
arity = 2
ethproofs_cluster_id = 22
"#;

/// How a [`System`] runs its gateways, and flags every service gets.
pub struct SystemOptions<'a> {
    pub sim_latency: &'a str,
    pub grace: &'a str,
    /// Added to every service's command line (for example `--replicas 3`).
    pub extra: &'a [&'a str],
    /// Scheduler and aggregator processes each: one is active, the others stand by.
    pub instances: usize,
}

/// The whole push0 as processes: scheduler, ingest, aggregator, and two 2-slot gateways for
/// each of teams `alpha` and `beta` (the teams file must define both).
pub struct System {
    pub processes: Vec<ServiceProcess>,
}

impl System {
    pub fn start(
        url: &str,
        prefix: &str,
        teams: &std::path::Path,
        logs: &std::path::Path,
        round: u32,
        options: &SystemOptions,
    ) -> Result<Self> {
        let teams = teams.to_str().context("teams path")?;
        let with_extra = |args: &[&str]| {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend(options.extra.iter().map(|a| a.to_string()));
            all
        };
        let start = |binary: &str, name: String, args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServiceProcess::start(binary, &name, url, prefix, &args, logs)
        };
        let mut processes = vec![start(
            "push0-ingest",
            format!("ingest-{round}"),
            with_extra(&[]),
        )?];
        for i in 0..options.instances.max(1) {
            processes.push(start(
                "push0-scheduler",
                format!("scheduler-{round}-{i}"),
                with_extra(&["--teams", teams]),
            )?);
            processes.push(start(
                "push0-aggregator",
                format!("aggregator-{round}-{i}"),
                with_extra(&[]),
            )?);
        }
        for team in ["alpha", "beta"] {
            for i in 0..2 {
                processes.push(start(
                    "push0-prover-gateway",
                    format!("gateway-{team}-{i}-{round}"),
                    with_extra(&[
                        "--team",
                        team,
                        "--slots",
                        "2",
                        "--sim-latency",
                        options.sim_latency,
                        "--shutdown-grace",
                        options.grace,
                    ]),
                )?);
            }
        }
        Ok(Self { processes })
    }
}

/// Serves `app` on a free loopback port for the rest of the test; its base URL.
pub async fn serve_http(app: axum::Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}
