//! Per-hop timing: a core NATS subscription on the deployment's whole prefix sees every
//! publish (block, accepted, task, result, proof) the moment the server routes it, on the
//! harness's clock, so the gap between consecutive messages of one block is the time spent in
//! the service between them (its receive, its KV round trips, its publish and ack).

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use push0_protocol::{
    BlockAccepted, BlockProof, BlockSubmission, SCHEMA_HEADER, Task, TaskResult, WireMessage,
    decode,
};
use push0_runtime::Bus;

/// The moments one block's messages of a `single` workflow were seen.
#[derive(Default, Clone, Debug)]
pub struct Hops {
    pub block: Option<Instant>,
    pub accepted: Option<Instant>,
    pub task: Option<Instant>,
    pub result: Option<Instant>,
    pub proof: Option<Instant>,
    pub prove_ms: u64,
    pub queue_wait_ms: u64,
}

impl Hops {
    /// (submit, ingest, scheduler, gateway minus proving, aggregator, deliver) in µs, if all
    /// were seen: the block was published by the harness at `sent` and its proof reached the
    /// harness at `arrived`.
    pub fn stages(&self, sent: Instant, arrived: Instant) -> Option<[u64; 6]> {
        let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
        let (b, a, t, r, p) = (
            self.block?,
            self.accepted?,
            self.task?,
            self.result?,
            self.proof?,
        );
        Some([
            us(sent, b),
            us(b, a),
            us(a, t),
            us(t, r).saturating_sub(self.prove_ms * 1000),
            us(r, p),
            us(p, arrived),
        ])
    }
}

enum Stage {
    Block,
    Accepted,
    Task,
    /// The prover's time and the task's wait in the queue, ms
    Result(u64, u64),
    Proof,
}

/// Decodes a message of type `M` and names the block and stage it belongs to.
fn read<M: WireMessage>(
    schema: Option<&str>,
    body: &[u8],
    key: impl FnOnce(M) -> (String, u64, Stage),
) -> Option<(String, u64, Stage)> {
    decode::<M>(schema, body).ok().map(key)
}

pub struct Tap {
    task: tokio::task::JoinHandle<HashMap<(String, u64), Hops>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Tap {
    /// Starts recording every message of `chain` under the bus's prefix.
    pub async fn start(bus: &Bus, chain: &str) -> anyhow::Result<Self> {
        let mut sub = bus
            .client
            .subscribe(format!("{}.>", bus.subjects.prefix()))
            .await?;
        let chain = chain.to_string();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seen: HashMap<(String, u64), Hops> = HashMap::new();
            loop {
                let m = tokio::select! {
                    _ = &mut stopped => return seen,
                    m = sub.next() => match m { Some(m) => m, None => return seen },
                };
                let at = Instant::now();
                let schema = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(SCHEMA_HEADER))
                    .map(|v| v.as_str().to_string());
                let Some(schema) = schema else { continue };
                let s = Some(schema.as_str());
                let p = &m.payload;
                let found = match schema.as_str() {
                    BlockSubmission::SCHEMA => {
                        read(s, p, |b: BlockSubmission| (b.chain, b.number, Stage::Block))
                    }
                    BlockAccepted::SCHEMA => read(s, p, |b: BlockAccepted| {
                        (b.block.chain, b.block.number, Stage::Accepted)
                    }),
                    Task::SCHEMA => {
                        read(s, p, |t: Task| (t.block.chain, t.block.number, Stage::Task))
                    }
                    TaskResult::SCHEMA => read(s, p, |r: TaskResult| {
                        let stage = Stage::Result(r.prove_ms, r.queue_wait_ms);
                        (r.block.chain, r.block.number, stage)
                    }),
                    BlockProof::SCHEMA => {
                        read(s, p, |b: BlockProof| (b.chain, b.number, Stage::Proof))
                    }
                    _ => None,
                };
                let Some((c, n, stage)) = found else { continue };
                if c == chain {
                    let h = seen.entry((c, n)).or_default();
                    match stage {
                        Stage::Block => h.block = Some(at),
                        Stage::Accepted => h.accepted = Some(at),
                        Stage::Task => h.task = Some(at),
                        Stage::Result(prove, wait) => {
                            h.result = Some(at);
                            h.prove_ms = prove;
                            h.queue_wait_ms = wait;
                        }
                        Stage::Proof => h.proof = Some(at),
                    }
                }
            }
        });
        Ok(Self { task, stop })
    }

    pub async fn finish(self) -> HashMap<(String, u64), Hops> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
