//! One push0 deployment under a fresh prefix: the four service binaries as child processes
//! (gateways running the simulated prover), a block source that timestamps every submission,
//! and a reader of the PROOFS stream that timestamps every arrival on the same clock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{PullConsumer, pull};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use push0_protocol::subjects::block_msg_id;
use push0_protocol::synthetic::make_block;
use push0_protocol::{
    BlockProof, MSG_ID_HEADER, SCHEMA_HEADER, TeamConfig, WireMessage, decode, encode,
};
use push0_runtime::Bus;
use push0_runtime::pull::Pull;
use tokio::sync::mpsc;

use crate::inside::{self, Scrape};
use crate::procs::{Proc, Sampler, binary, cpu_by_role};

/// A team of the deployment and its gateways.
#[derive(Clone, Debug)]
pub struct TeamSpec {
    pub config: TeamConfig,
    /// Gateway processes
    pub gateways: usize,
    /// Prover slots per gateway process
    pub slots: usize,
    /// `--sim-latency` of its gateways
    pub latency: String,
}

impl TeamSpec {
    pub fn new(config: TeamConfig, gateways: usize, slots: usize, latency: &str) -> Self {
        Self {
            config,
            gateways,
            slots,
            latency: latency.to_string(),
        }
    }
}

/// Where and what to run.
#[derive(Clone, Debug)]
pub struct Target {
    /// One URL, or a comma-separated list for a cluster
    pub url: String,
    pub replicas: u8,
    pub log_dir: PathBuf,
    pub sampler: Sampler,
    /// The nats-server processes, counted in CPU readings as role `nats-server`
    pub nats_pids: Vec<u32>,
}

/// The teams file the scheduler loads, written by hand (only the fields the harness sets).
fn teams_toml(teams: &[TeamSpec]) -> String {
    let mut out = String::new();
    for t in teams {
        let c = &t.config;
        out.push_str(&format!("[[team]]\nname = {:?}\n", c.name));
        match c.parts {
            Some(parts) => out.push_str(&format!(
                "shape = \"split\"\nparts = {parts}\narity = {}\n",
                c.arity
            )),
            None => out.push_str("shape = \"single\"\n"),
        }
        if !c.chains.is_empty() {
            let chains: Vec<String> = c.chains.iter().map(|ch| format!("{ch:?}")).collect();
            out.push_str(&format!("chains = [{}]\n", chains.join(", ")));
        }
        out.push('\n');
    }
    out
}

pub struct Deployment {
    pub prefix: String,
    pub bus: Bus,
    pub teams: Vec<TeamSpec>,
    procs: Vec<Proc>,
    /// (role, port) of each service's `/metrics`.
    metrics_ports: Vec<(String, u16)>,
    sampler: Sampler,
    nats_pids: Vec<u32>,
}

impl Deployment {
    /// Starts ingest, scheduler, aggregator and every team's gateways, and waits until the
    /// teams are registered and every gateway slot is waiting for work.
    pub async fn start(
        target: &Target,
        teams: Vec<TeamSpec>,
        max_undelivered: u64,
    ) -> Result<Self> {
        let prefix = push0_natsd::random_prefix();
        let mut bus = Bus::connect(&target.url, &prefix, "push0-loadtest").await?;
        bus.replicas = usize::from(target.replicas);
        // The harness owns the topology, as `push0 topology apply` does in a deployment.
        push0_runtime::topology::apply(&bus, bus.replicas, Duration::from_secs(120)).await?;
        let teams_file = target.log_dir.join(format!("{prefix}-teams.toml"));
        std::fs::write(&teams_file, teams_toml(&teams))?;
        let common = || -> Vec<String> {
            vec![
                "--nats-url".into(),
                target.url.clone(),
                "--prefix".into(),
                prefix.clone(),
                "--metrics-addr".into(),
                "127.0.0.1:0".into(),
                "--replicas".into(),
                target.replicas.to_string(),
            ]
        };
        let mut launches: Vec<(&str, String, &str, Vec<String>)> = vec![
            ("ingest", "ingest".into(), "push0-ingest", common()),
            (
                "scheduler",
                "scheduler".into(),
                "push0-scheduler",
                [
                    common(),
                    vec![
                        "--teams".into(),
                        teams_file.display().to_string(),
                        "--max-undelivered".into(),
                        max_undelivered.to_string(),
                    ],
                ]
                .concat(),
            ),
            (
                "aggregator",
                "aggregator".into(),
                "push0-aggregator",
                common(),
            ),
        ];
        for t in &teams {
            for g in 0..t.gateways {
                let name = format!("gateway-{}-{g}", t.config.name);
                let args = [
                    common(),
                    vec![
                        "--team".into(),
                        t.config.name.clone(),
                        "--slots".into(),
                        t.slots.to_string(),
                        "--prover".into(),
                        "sim".into(),
                        "--sim-latency".into(),
                        t.latency.clone(),
                        "--gateway-id".into(),
                        name.clone(),
                        "--shutdown-grace".into(),
                        "0s".into(),
                    ],
                ]
                .concat();
                launches.push(("gateway", name, "push0-prover-gateway", args));
            }
        }
        let mut procs = Vec::new();
        let mut metrics_ports = Vec::new();
        for (role, name, bin, mut args) in launches {
            // A port known here, so the services' metrics can be read (`scrape`).
            let port = push0_natsd::free_port()?;
            if let Some(at) = args.iter().position(|a| a == "--metrics-addr") {
                args[at + 1] = format!("127.0.0.1:{port}");
            }
            metrics_ports.push((role.to_string(), port));
            let log = target.log_dir.join(format!("{prefix}-{name}.log"));
            let proc = Proc::spawn(role, &name, &binary(bin)?, &args, &log)?;
            target.sampler.watch(role, proc.pid());
            procs.push(proc);
        }
        let mut deployment = Self {
            prefix,
            bus,
            teams,
            procs,
            metrics_ports,
            sampler: target.sampler.clone(),
            nats_pids: target.nats_pids.clone(),
        };
        deployment
            .wait_ready(Duration::from_secs(60))
            .await
            .with_context(|| format!("deployment {} did not come up", deployment.prefix))?;
        Ok(deployment)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let teams_bucket = self.bus.kv(&self.bus.subjects.bucket_teams()).await?;
        loop {
            for p in &mut self.procs {
                p.check_running()?;
            }
            let mut registered = 0;
            if let Ok(mut keys) = teams_bucket.keys().await {
                while let Some(Ok(_)) = keys.next().await {
                    registered += 1;
                }
            }
            let mut waiting_ok = registered >= self.teams.len();
            for t in &self.teams {
                if !waiting_ok {
                    break;
                }
                let spec = self
                    .bus
                    .topology
                    .task_consumer(&t.config, &t.config.leaf_class);
                let waiting = match self.bus.js.get_stream(&spec.stream).await {
                    Ok(s) => s
                        .consumer_info(&spec.durable)
                        .await
                        .map(|i| i.num_waiting)
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                // A consumer holds at most 512 waiting pull requests (the server's default).
                waiting_ok = waiting as usize >= (t.gateways * t.slots).min(512);
            }
            if waiting_ok {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every service's step timings as its metrics have them now (see [`crate::inside`]).
    pub fn scrape(&self) -> Scrape {
        inside::scrape(&self.metrics_ports)
    }

    /// The service processes as (role, pid).
    pub fn pids(&self) -> impl Iterator<Item = (&str, u32)> {
        self.procs.iter().map(|p| (p.role.as_str(), p.pid()))
    }

    /// CPU ticks per role, the NATS server(s) included.
    pub fn cpu(&self) -> BTreeMap<String, u64> {
        let nats = self.nats_pids.iter().map(|p| ("nats-server", *p));
        cpu_by_role(self.pids().chain(nats))
    }

    pub fn stop(self) {
        for p in &self.procs {
            self.sampler.unwatch(p.pid());
        }
        drop(self.procs);
    }
}

/// A proof as the harness saw it arrive.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub team: String,
    /// Submission (before the publish call) to arrival at the harness's proof reader
    pub e2e_us: u64,
    /// Prover time on the block's critical path, as the gateways measured it
    pub proving_us: u64,
    pub at: Instant,
}

impl Arrival {
    pub fn overhead_us(&self) -> u64 {
        self.e2e_us.saturating_sub(self.proving_us)
    }
}

/// Submits blocks and collects their proofs.
pub struct Driver {
    bus: Bus,
    payload_size: usize,
    submitted: HashMap<(String, u64), Instant>,
    arrivals: mpsc::UnboundedReceiver<(BlockProof, Instant)>,
    reader: tokio::task::JoinHandle<()>,
    pub first_submit: Option<Instant>,
}

impl Driver {
    /// Reads proofs with a durable pull consumer, pulling as the floor's last hop and push0's
    /// services do (requests of up to 64 messages read from their own inbox), so the two
    /// measurements end alike. (An ordered consumer stalled on the 3-node cluster.)
    pub async fn new(bus: &Bus, payload_size: usize) -> Result<Self> {
        let consumer: PullConsumer = bus
            .js
            .get_stream(bus.subjects.stream_proofs())
            .await?
            .get_or_create_consumer(
                "loadtest",
                pull::Config {
                    durable_name: Some("loadtest".into()),
                    filter_subject: bus.subjects.proofs_all(),
                    num_replicas: bus.replicas,
                    ..Default::default()
                },
            )
            .await?;
        let (tx, arrivals) = mpsc::unbounded_channel();
        let reading = bus.clone();
        let reader = tokio::spawn(async move {
            loop {
                let request = Pull::request(&reading, &consumer, 64, None, Duration::from_secs(2));
                let Ok(mut pull) = request.await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    let m = match pull.next().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        // A leader change or the like: pull again shortly.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    };
                    let at = Instant::now();
                    let schema = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(SCHEMA_HEADER))
                        .map(|v| v.as_str().to_string());
                    let _ = m.ack().await;
                    let Ok(proof) = decode::<BlockProof>(schema.as_deref(), &m.payload) else {
                        continue;
                    };
                    if tx.send((proof, at)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            bus: bus.clone(),
            payload_size,
            submitted: HashMap::new(),
            arrivals,
            reader,
            first_submit: None,
        })
    }

    /// Publishes `block/v1` as a foreign client would and returns the publish-ack future, so
    /// callers choose between one at a time and a pipeline.
    async fn publish(
        &mut self,
        chain: &str,
        number: u64,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture> {
        let block = make_block(chain, number, self.payload_size);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SCHEMA_HEADER, push0_protocol::BlockSubmission::SCHEMA);
        headers.insert(
            MSG_ID_HEADER,
            block_msg_id(chain, number, &block.hash).as_str(),
        );
        let payload = Bytes::from(encode(&block));
        let now = Instant::now();
        self.first_submit.get_or_insert(now);
        self.submitted.insert((chain.to_string(), number), now);
        self.bus
            .js
            .publish_with_headers(self.bus.subjects.blocks(chain), headers, payload)
            .await
            .context("publish block")
    }

    /// One block, waiting for the stream's ack.
    pub async fn submit(&mut self, chain: &str, number: u64) -> Result<()> {
        self.publish(chain, number).await?.await?;
        Ok(())
    }

    /// Blocks `numbers` of `chain`, at `rate` per second (0: as fast as acks allow), with up to
    /// `window` unacknowledged publishes.
    pub async fn submit_many(
        &mut self,
        chain: &str,
        numbers: std::ops::Range<u64>,
        rate: f64,
        window: usize,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut acks = FuturesUnordered::new();
        for (i, n) in numbers.enumerate() {
            if rate > 0.0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                // Acks are collected while waiting for the next slot.
                while Instant::now() < due {
                    tokio::select! {
                        Some(ack) = acks.next(), if !acks.is_empty() => { let _: async_nats::jetstream::publish::PublishAck = ack?; }
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                }
            }
            while acks.len() >= window {
                if let Some(ack) = acks.next().await {
                    ack?;
                }
            }
            acks.push(self.publish(chain, n).await?.into_future());
            if let Some(p) = progress {
                p.inc(1);
            }
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        Ok(())
    }

    /// Waits for `count` proofs (of any team) or fails after `timeout` saying how many came.
    pub async fn collect(
        &mut self,
        count: usize,
        timeout: Duration,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Vec<Arrival>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let next = tokio::time::timeout_at(deadline, self.arrivals.recv()).await;
            let Ok(Some((proof, at))) = next else {
                anyhow::bail!(
                    "only {} of {count} proofs arrived within {timeout:?}",
                    out.len()
                );
            };
            let Some(sent) = self.submitted.get(&(proof.chain.clone(), proof.number)) else {
                continue;
            };
            out.push(Arrival {
                e2e_us: at.duration_since(*sent).as_micros() as u64,
                proving_us: proof.proving_ms * 1000,
                team: proof.team,
                at,
            });
            if let Some(p) = progress {
                p.inc(1);
            }
        }
        Ok(out)
    }

    /// Forgets submission times (between series of one deployment).
    pub fn reset(&mut self) {
        self.submitted.clear();
        self.first_submit = None;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A progress bar on stderr for a long phase (plain lines when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Creates `dir` (and parents) and returns it.
pub fn ensure_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}
