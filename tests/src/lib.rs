//! Helpers for push0's end-to-end tests: a real nats-server per test, an in-process cluster
//! on a random prefix, readers for the proof and dead-letter streams, and the expected
//! simulated proof of a block (so tests check the data flow, not just counts).

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use push0::cluster::{ClusterSpec, LocalCluster};
use push0::watch::ProofFeed;
use push0_protocol::{
    BlockProof, DeadLetter, NodeId, SCHEMA_HEADER, TeamConfig, Workflow, decode,
};
use push0_prover_gateway::latency::Latency;
use push0_prover_gateway::prover::{Prover, SimProver, sim_aggregate_proof, sim_leaf_proof};
use push0_runtime::Bus;
pub use push0_testkit::{NatsServer, eventually, random_prefix};

pub fn sim(latency: &str) -> Prover {
    Prover::Sim(SimProver {
        latency: latency.parse::<Latency>().expect("valid latency"),
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
        let server = NatsServer::start()?;
        let prefix = random_prefix();
        let bus = Bus::connect(&server.url(), &prefix, "test").await?;
        bus.ensure_topology().await?;
        Ok(Self { server, prefix, bus })
    }

    pub fn spec(&self, teams: Vec<TeamConfig>) -> ClusterSpec {
        ClusterSpec::new(&self.server.url(), &self.prefix, teams)
    }

    /// A cluster with `gateways` gateways of `slots` simulated provers for every team.
    pub async fn cluster(&self, teams: Vec<TeamConfig>, gateways: usize, slots: usize, latency: &str) -> Result<LocalCluster> {
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
    read_all(bus, &bus.subjects.stream_proofs(), &bus.subjects.proofs_all()).await
}

/// Every dead letter on the stream right now.
pub async fn dead_letters(bus: &Bus) -> Result<Vec<DeadLetter>> {
    read_all(bus, &bus.subjects.stream_dlq(), &bus.subjects.dlq_all()).await
}

async fn read_all<M: push0_protocol::WireMessage>(bus: &Bus, stream: &str, filter: &str) -> Result<Vec<M>> {
    let mut stream = bus.js.get_stream(stream).await?;
    let total = stream.info().await?.state.messages as usize;
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
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .context("reading stream")?
            .context("stream ended")??;
        let schema = m.headers.as_ref().and_then(|h| h.get(SCHEMA_HEADER)).map(|v| v.as_str().to_string());
        out.push(decode(schema.as_deref(), &m.payload)?);
    }
    Ok(out)
}

/// The simulated block proof of `payload` under `workflow`, computed independently of push0:
/// leaves hash their slice, aggregations hash their children's proofs in order.
pub fn expected_sim_proof(payload: &[u8], workflow: Workflow) -> Vec<u8> {
    fn node_proof(payload: &[u8], w: &Workflow, node: NodeId) -> Vec<u8> {
        if node.level == 0 {
            let (offset, len) = w.leaf_range(payload.len() as u64, node.index);
            return sim_leaf_proof(&payload[offset as usize..(offset + len) as usize]);
        }
        let children: Vec<Vec<u8>> = w.children(node).into_iter().map(|c| node_proof(payload, w, c)).collect();
        sim_aggregate_proof(children.iter().map(Vec::as_slice))
    }
    node_proof(payload, &workflow, workflow.root())
}

/// Block numbers per team, in publication order.
pub fn numbers_by_team(proofs: &[BlockProof]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut m: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for p in proofs {
        m.entry(p.team.clone()).or_default().push(p.number);
    }
    m
}
