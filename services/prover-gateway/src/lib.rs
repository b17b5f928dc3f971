//! prover-gateway: joins a team's consumer groups, runs one prover per free slot, renews the
//! task's ack deadline with heartbeats that proving cannot starve, publishes the result (and
//! waits for its ack) before acking the task.

pub mod latency;
pub mod prover;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use push0_protocol::{DlqReason, Task, TaskInput, TaskOutcome, TaskResult, TeamConfig, now_ms};
use push0_runtime::consume::dead_letter;
use push0_runtime::{BlobStore, Bus, Delivery, Registry, Rejection, RuntimeError, metrics};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::prover::{Bundler, ProveError, Prover, ProverInput};

pub const SERVICE: &str = "prover-gateway";

#[derive(Debug, Clone)]
pub struct Config {
    pub team: String,
    /// Task classes to serve; empty means every class of the team's workflow.
    pub classes: Vec<String>,
    /// Concurrent provers per class.
    pub slots: usize,
    pub prover: Prover,
    /// When set, aggregation tasks are bundled instead of proved (systems without recursion).
    pub bundler: Option<Bundler>,
    /// On shutdown, in-flight tasks get this long to finish before they are nak'ed.
    pub grace: Duration,
    /// Name of this gateway in results and logs.
    pub id: String,
    pub inline_threshold: usize,
}

/// Runs the gateway until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let Some(team) = wait_for_team(&registry, &config.team, &shutdown).await else {
        return Ok(());
    };
    let blobs = BlobStore::open(&bus, config.inline_threshold).await?;
    let classes = if config.classes.is_empty() {
        team.classes()
    } else {
        config.classes.clone()
    };
    let gateway = Arc::new(Gateway {
        bus: bus.clone(),
        blobs,
        config: config.clone(),
        heartbeat: Duration::from_millis(team.ack_wait_ms / 3).max(Duration::from_millis(100)),
    });
    let mut slots = Vec::new();
    for class in &classes {
        let spec = bus.topology.task_consumer(&team, class);
        let consumer = bus.ensure_consumer(&spec).await?;
        for slot in 0..config.slots {
            let g = gateway.clone();
            let c = consumer.clone();
            let stop = shutdown.clone();
            slots.push(tokio::spawn(
                async move { g.slot_loop(c, slot, stop).await },
            ));
        }
    }
    tracing::info!(team = %team.name, classes = ?classes, slots = config.slots, gateway = %config.id, "gateway serving");
    for s in slots {
        let _ = s.await;
    }
    // Acks and naks are fire-and-forget: flush them before exit (NATS.md pitfall 3).
    bus.client
        .flush()
        .await
        .map_err(|e| RuntimeError::nats("flush on shutdown", e))?;
    tracing::info!(gateway = %config.id, "gateway stopped");
    Ok(())
}

async fn wait_for_team(
    registry: &Registry,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<TeamConfig> {
    let mut warned = false;
    loop {
        if let Some(team) = registry.get(name) {
            return Some(team);
        }
        if !warned {
            tracing::warn!(team = name, "team not registered yet; waiting");
            warned = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

struct Gateway {
    bus: Bus,
    blobs: BlobStore,
    config: Config,
    heartbeat: Duration,
}

/// How long one pull request waits for a task before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

impl Gateway {
    /// One prover slot: pull exactly one task, prove it, repeat. One-message `batch` pulls
    /// never stall (NATS.md pitfall 1) and hold no task a free prover elsewhere could take
    /// (pitfall 7).
    async fn slot_loop(&self, consumer: PullConsumer, slot: usize, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            let batch = consumer
                .batch()
                .max_messages(1)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(slot, error = %e, "pull failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let next = tokio::select! {
                n = batch.next() => n,
                _ = shutdown.cancelled() => {
                    // A task may still arrive for this pull: hand it straight back.
                    if let Ok(Some(Ok(m))) = tokio::time::timeout(PULL_EXPIRES, batch.next()).await {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
            };
            match next {
                Some(Ok(message)) => {
                    backoff = Duration::from_millis(50);
                    self.process(Delivery::new(message), &shutdown).await;
                }
                Some(Err(e)) => {
                    tracing::debug!(slot, error = %e, "pull ended with an error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                None => {}
            }
        }
    }

    async fn process(&self, delivery: Delivery, shutdown: &CancellationToken) {
        let delivery = Arc::new(delivery);
        let task: Task = match delivery.decode() {
            Ok(t) => t,
            Err(e) => {
                let rejection = Rejection::from(e);
                self.reject(&delivery, rejection).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "prove",
            otel.name = "gateway.prove",
            team = %task.team,
            chain = %task.block.chain,
            number = task.block.number,
            node = %task.node,
            attempt = delivery.delivered,
        );
        push0_runtime::telemetry::set_parent_from(&span, delivery.message.headers.as_ref());
        self.prove_task(delivery, task, shutdown)
            .instrument(span)
            .await;
    }

    async fn reject(&self, delivery: &Delivery, rejection: Rejection) {
        tracing::warn!(reason = %rejection.reason, detail = %rejection.detail, "dead-lettering task");
        let outcome = match dead_letter(&self.bus, &self.blobs, SERVICE, &rejection, delivery).await
        {
            Ok(()) => AckKind::Term,
            Err(e) => {
                tracing::error!(error = %e, "dead letter not recorded, will retry");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        let _ = delivery.message.ack_with(outcome).await;
    }

    async fn prove_task(&self, delivery: Arc<Delivery>, task: Task, shutdown: &CancellationToken) {
        let m = metrics();
        let queue_wait_ms = now_ms().saturating_sub(delivery.published_ms);
        m.queue_wait
            .with_label_values(&[&task.team])
            .observe(queue_wait_ms as f64 / 1000.0);

        // Heartbeats run on their own task: a busy or stuck prover cannot starve them.
        let heartbeat = {
            let d = delivery.clone();
            let every = self.heartbeat;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if d.message.ack_with(AckKind::Progress).await.is_err() {
                        tracing::debug!("heartbeat not sent");
                    }
                }
            })
        };
        let _stop_heartbeat = AbortOnDrop(heartbeat);

        let input = match self.fetch_input(&task).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read task input, retrying");
                let _ = delivery
                    .message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };

        m.slots_busy.with_label_values(&[&task.team]).inc();
        let started = Instant::now();
        let proving = async {
            match (&self.config.bundler, &input) {
                (Some(bundler), ProverInput::Aggregate(children)) => bundler.bundle(children).await,
                _ => self.config.prover.prove(&task, input).await,
            }
        };
        tokio::pin!(proving);
        let outcome = tokio::select! {
            r = &mut proving => Some(r),
            _ = shutdown.cancelled() => {
                // Give in-flight work its grace period, then hand it back at once.
                tokio::time::timeout(self.config.grace, &mut proving).await.ok()
            }
        };
        m.slots_busy.with_label_values(&[&task.team]).dec();
        let Some(outcome) = outcome else {
            tracing::info!("shutting down mid-proof; task handed back");
            let _ = delivery.message.ack_with(AckKind::Nak(None)).await;
            return;
        };
        let prove_ms = started.elapsed().as_millis() as u64;
        m.prove_time
            .with_label_values(&[&task.team])
            .observe(prove_ms as f64 / 1000.0);

        let inputs_critical_ms = match &task.input {
            TaskInput::Leaf { .. } => 0,
            TaskInput::Aggregate { children } => {
                children.iter().map(|c| c.critical_ms).max().unwrap_or(0)
            }
        };
        let outcome = match outcome {
            Ok(proof) => match self.blobs.put(proof.proof).await {
                Ok(blob) => TaskOutcome::Proved {
                    proof: blob,
                    proof_system: proof.proof_system,
                    report: proof.report,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store proof, retrying");
                    let _ = delivery
                        .message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return;
                }
            },
            Err(ProveError::Invalid(detail)) => TaskOutcome::Failed {
                reason: DlqReason::InvalidInput,
                detail,
            },
            Err(ProveError::Retryable(detail)) => {
                let delay = Duration::from_secs((delivery.delivered.max(1) as u64).min(10));
                tracing::warn!(detail = %detail, retry_in = ?delay, "prover failed, retrying");
                let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        let failed = matches!(outcome, TaskOutcome::Failed { .. });
        let result = TaskResult {
            task_id: task.task_id.clone(),
            team: task.team.clone(),
            block: task.block.clone(),
            node: task.node,
            workflow: task.workflow,
            outcome,
            gateway: self.config.id.clone(),
            attempt: delivery.delivered.max(1) as u64,
            prove_ms,
            inputs_critical_ms,
            queue_wait_ms,
            submitted_at_ms: task.submitted_at_ms,
            deadline_ms: task.deadline_ms,
        };
        // One result per task id: a repeat after a lost ack is dropped by the server.
        let msg_id = format!("result/{}", task.task_id);
        if let Err(e) = self
            .bus
            .publish(
                self.bus.subjects.results(&task.team),
                &result,
                Some(&msg_id),
            )
            .await
        {
            tracing::warn!(error = %e, "result not published; the task will be redelivered");
            let _ = delivery.message.ack_with(AckKind::Nak(None)).await;
            return;
        }
        // The result is durable: only now may the task go.
        let ack = if failed { AckKind::Term } else { AckKind::Ack };
        if let Err(e) = delivery.message.ack_with(ack).await {
            tracing::warn!(error = %e, "ack not sent; a redelivery will find the result recorded");
        }
        tracing::info!(prove_ms, failed, "task done");
    }

    async fn fetch_input(&self, task: &Task) -> Result<ProverInput, RuntimeError> {
        match &task.input {
            TaskInput::Leaf {
                payload,
                offset,
                len,
            } => {
                let bytes = self.blobs.get(payload).await?;
                let total = bytes.len() as u64;
                let part_ranges = task
                    .workflow
                    .leaves()
                    .map(|leaf| task.workflow.leaf_range(total, leaf.index))
                    .collect();
                Ok(ProverInput::Leaf {
                    payload: bytes,
                    range: (*offset, *len),
                    part_ranges,
                })
            }
            TaskInput::Aggregate { children } => {
                let mut proofs = Vec::with_capacity(children.len());
                for c in children {
                    proofs.push((c.proof_system.clone(), self.blobs.get(&c.proof).await?));
                }
                Ok(ProverInput::Aggregate(proofs))
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
