//! `push0-loadtest`: measures, in one run on one server, the JetStream floor (a chain of k
//! work-queue hops, the same k as push0's path from submission to proof) and push0's
//! end-to-end latency with a zero-time prover, and reports the overhead as a ratio to the floor.
//!
//! This is the first part of the load harness: the services run in-process (the same library
//! code as the binaries); throughput, scaling, memory and cluster runs are still to come.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use clap::Parser;
use futures::StreamExt;
use push0::cluster::{ClusterSpec, LocalCluster};
use push0::report::{percentile, table};
use push0::source::{make_block, submit};
use push0::watch::ProofFeed;
use push0_protocol::TeamConfig;
use push0_prover_gateway::prover::{Prover, SimProver};
use push0_testkit::NatsServer;

/// push0 load harness (floor vs orchestration overhead)
#[derive(Parser, Debug)]
#[command(name = "push0-loadtest", version)]
struct Args {
    /// Attach to this NATS server instead of starting one
    #[arg(long, env = "PUSH0_NATS_URL")]
    nats_url: Option<String>,
    /// Measurements per series
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Work-queue hops in the floor chain: BLOCKS → ACCEPTED → TASKS → RESULTS → PROOFS is 4
    #[arg(long, default_value_t = 4)]
    hops: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (_server, url) = match &args.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let s = NatsServer::start()?;
            let u = s.url();
            (Some(s), u)
        }
    };
    eprintln!(
        "measuring the floor: {} samples through {} chained work-queue hops",
        args.samples, args.hops
    );
    let floor = floor_latencies(&url, args.hops, args.samples).await?;
    eprintln!(
        "measuring push0: {} blocks, one at a time, team `single` with a 0 ms simulated prover",
        args.samples
    );
    let e2e = push0_latencies(&url, args.samples).await?;

    let us = |v: &[u64], q: f64| percentile(v, q);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let mut rows = vec![vec![
        "series".to_string(),
        "p50".into(),
        "p90".into(),
        "p99".into(),
        "max".into(),
    ]];
    for (name, v) in [("floor (µs)", &floor), ("push0 end-to-end (µs)", &e2e)] {
        rows.push(vec![
            name.to_string(),
            us(v, 0.5).to_string(),
            us(v, 0.9).to_string(),
            us(v, 0.99).to_string(),
            v.last().copied().unwrap_or(0).to_string(),
        ]);
    }
    println!("{}", table(&rows));
    let (p50x, p99x) = (
        ratio(us(&e2e, 0.5), us(&floor, 0.5)),
        ratio(us(&e2e, 0.99), us(&floor, 0.99)),
    );
    println!(
        "overhead = push0 end-to-end with a 0 ms prover; ratio to the same-run floor: p50 {p50x:.2}x, p99 {p99x:.2}x"
    );
    println!(
        "loadtest: floor_p50_us={} floor_p99_us={} overhead_p50_us={} overhead_p99_us={} overhead_p50_x={p50x:.2} overhead_p99_x={p99x:.2}",
        us(&floor, 0.5),
        us(&floor, 0.99),
        us(&e2e, 0.5),
        us(&e2e, 0.99)
    );
    Ok(())
}

/// One message at a time through `hops` chained work-queue hops: each hop is a durable pull
/// consumer whose handler republishes to the next subject (awaiting the publish ack) and acks.
async fn floor_latencies(url: &str, hops: usize, samples: usize) -> Result<Vec<u64>> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let prefix = push0_testkit::random_prefix();
    let name = format!("FLOOR_{prefix}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.hop.*")],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    let stream = js.get_stream(&name).await?;
    let mut workers = Vec::new();
    for hop in 0..=hops {
        let consumer: PullConsumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("hop{hop}")),
                filter_subject: format!("{prefix}.hop.{hop}"),
                ..Default::default()
            })
            .await?;
        let js = js.clone();
        let next = (hop < hops).then(|| format!("{prefix}.hop.{}", hop + 1));
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        workers.push(done_rx);
        tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(64)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| anyhow::anyhow!(e))?;
                if let Some(next) = &next {
                    js.publish(next.clone(), m.payload.clone()).await?.await?;
                } else {
                    let _ = done_tx.send(Instant::now());
                }
                m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
            anyhow::Ok(())
        });
    }
    let mut done = workers.pop().context("final hop")?;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let start = Instant::now();
        js.publish(
            format!("{prefix}.hop.0"),
            bytes::Bytes::from(vec![0u8; 128]),
        )
        .await?
        .await?;
        let end = tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await?
            .context("floor chain stopped")?;
        if i >= 20 {
            latencies.push(end.duration_since(start).as_micros() as u64);
        }
    }
    js.delete_stream(&name).await?;
    latencies.sort_unstable();
    Ok(latencies)
}

/// Blocks submitted one at a time to an in-process push0 with a 0 ms prover; the latency from
/// the submit call to the proof's arrival at a subscriber, on one clock.
async fn push0_latencies(url: &str, samples: usize) -> Result<Vec<u64>> {
    let prefix = push0_testkit::random_prefix();
    let prover = Prover::Sim(SimProver {
        latency: "fixed:0ms".parse().map_err(anyhow::Error::msg)?,
    });
    let spec = ClusterSpec::new(url, &prefix, vec![TeamConfig::single("bench")])
        .gateways("bench", 1, 4, prover);
    let cluster = LocalCluster::start(spec).await?;
    let mut feed = ProofFeed::open(&cluster.bus).await?;
    let mut latencies = Vec::with_capacity(samples);
    for n in 1..=(samples + 20) as u64 {
        let block = make_block("bench", n, 256);
        let start = Instant::now();
        submit(&cluster.bus, &block).await?;
        let proof = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await??
            .context("proof feed ended")?;
        anyhow::ensure!(
            proof.number == n,
            "proof of block {} while waiting for {n}",
            proof.number
        );
        if n > 20 {
            latencies.push(start.elapsed().as_micros() as u64);
        }
    }
    cluster.stop().await?;
    latencies.sort_unstable();
    Ok(latencies)
}
