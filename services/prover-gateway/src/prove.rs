//! One task, start to end: skip withdrawn work, fetch the input, run the prover under its
//! class's limits with heartbeats beside it, store the proof and publish the result. Every
//! path ends in an [`Outcome`]; only a durable result is acked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use push0_protocol::{BlockRef, DlqReason, Task, TaskInput, TaskOutcome, TaskResult, now_ms};
use push0_runtime::{Delivery, Outcome, RuntimeError, metrics};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::prover::{ProofOutput, ProveError, ProverInput};
use crate::{EXHAUSTED_RECHECK, Gateway, Running};

/// How a prover run ended.
enum Proving {
    Done(Result<ProofOutput, ProveError>),
    /// Its block was withdrawn: the prover was stopped.
    Withdrawn,
    /// The gateway is shutting down and the grace period ran out.
    Interrupted,
}

/// Renews a task's ack deadline on a task of its own (a busy or stuck prover cannot starve
/// it) until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(delivery: &Arc<Delivery>, ack_wait: Duration) -> Self {
        let d = delivery.clone();
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if d.message.ack_with(AckKind::Progress).await.is_err() {
                    tracing::debug!("heartbeat not sent");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Gateway {
    /// Proves one task and publishes its result: `Ack` once a proved result is durable,
    /// `Terminate` once a failed one is, a retry for anything transient.
    pub(crate) async fn prove_task(
        &self,
        delivery: &Arc<Delivery>,
        task: Task,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let m = metrics();
        if self.is_withdrawn(&task.block) {
            m.tasks_cancelled.with_label_values(&[&task.team]).inc();
            tracing::info!("task of withdrawn work skipped");
            return Outcome::Ack;
        }
        let limits = self.team.limits(&task.class);
        if delivery.delivered > limits.max_deliver {
            // Its last delivery ended unreported (a gateway died, or its notice was lost).
            self.report_exhausted(&task, delivery, limits.max_deliver)
                .await;
            return Outcome::Retry(EXHAUSTED_RECHECK);
        }
        let queue_wait_ms = now_ms().saturating_sub(delivery.published_ms);
        m.queue_wait
            .with_label_values(&[&task.team])
            .observe(queue_wait_ms as f64 / 1000.0);
        let _heartbeat = Heartbeat::start(delivery, limits.ack_wait);

        let input = match self.fetch_input(&task).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read task input, retrying");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        let started = Instant::now();
        let proved = match self
            .run_prover(&task, input, limits.time_limit, shutdown)
            .await
        {
            Proving::Done(r) => r,
            Proving::Withdrawn => {
                // Acked, so nobody proves it again.
                m.tasks_cancelled.with_label_values(&[&task.team]).inc();
                tracing::info!("prover stopped; task withdrawn");
                return Outcome::Ack;
            }
            Proving::Interrupted => {
                tracing::info!("shutting down mid-proof; task handed back");
                return Outcome::Retry(Duration::ZERO);
            }
        };
        let prove_ms = started.elapsed().as_millis() as u64;
        m.prove_time
            .with_label_values(&[&task.team])
            .observe(prove_ms as f64 / 1000.0);

        let outcome = match proved {
            Ok(proof) => match self.blobs.put(proof.proof).await {
                Ok(blob) => TaskOutcome::Proved {
                    proof: blob,
                    proof_system: proof.proof_system,
                    report: proof.report,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store proof, retrying");
                    return Outcome::Retry(Duration::from_secs(1));
                }
            },
            Err(ProveError::Invalid(detail)) => TaskOutcome::Failed {
                reason: DlqReason::InvalidInput,
                detail,
            },
            Err(ProveError::Retryable(detail)) => {
                return self
                    .retry_later(&task, delivery, limits.max_deliver, &detail)
                    .await;
            }
        };
        self.publish_result(task, delivery, outcome, prove_ms, queue_wait_ms)
            .await
    }

    fn is_withdrawn(&self, block: &BlockRef) -> bool {
        self.withdrawn
            .lock()
            .expect("withdrawn lock")
            .contains(block)
    }

    /// Runs the prover (or the bundler, for an aggregation without recursion) until it ends,
    /// its block is withdrawn, or shutdown's grace period runs out. Past the class's time
    /// limit, on top of the prover's own timeout, the prover is dropped (a child process is
    /// killed) and the run counts as a retryable failure.
    async fn run_prover(
        &self,
        task: &Task,
        input: ProverInput,
        time_limit: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Proving {
        let running = self.register(task);
        let proving = async {
            match (&self.config.bundler, &input) {
                (Some(bundler), ProverInput::Aggregate(children)) => bundler.bundle(children).await,
                _ => self.config.prover.prove(task, input).await,
            }
        }
        .instrument(tracing::info_span!("prover", otel.name = "prover.run"));
        let proving = async {
            match time_limit {
                Some(limit) => tokio::time::timeout(limit, proving)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ProveError::Retryable(format!(
                            "killed past the class time limit of {limit:?}"
                        )))
                    }),
                None => proving.await,
            }
        };
        // On the heap so that dropping it really drops the prover, before `running` goes.
        let mut proving = Box::pin(proving);
        tokio::select! {
            r = &mut proving => Proving::Done(r),
            _ = running.token.cancelled() => {
                // Dropping the prover stops it (a child process is killed).
                drop(proving);
                Proving::Withdrawn
            }
            _ = shutdown.cancelled() => {
                // In-flight work gets its grace period, then goes back at once.
                match tokio::time::timeout(self.config.grace, &mut proving).await {
                    Ok(r) => Proving::Done(r),
                    Err(_) => Proving::Interrupted,
                }
            }
        }
    }

    /// A prover failure worth another try: recorded in the task's history, then handed back
    /// with a delay that grows with each delivery, or reported exhausted on its last.
    async fn retry_later(
        &self,
        task: &Task,
        delivery: &Delivery,
        max_deliver: i64,
        detail: &str,
    ) -> Outcome {
        let delay = Duration::from_secs((delivery.delivered.max(1) as u64).min(10));
        tracing::warn!(detail = %detail, retry_in = ?delay, "prover failed, retrying");
        self.report_attempt(&task.task_id, delivery.delivered, detail)
            .await;
        if delivery.delivered >= max_deliver {
            self.report_exhausted(task, delivery, max_deliver).await;
            return Outcome::Retry(EXHAUSTED_RECHECK);
        }
        Outcome::Retry(delay)
    }

    /// Publishes the task's result and waits for its ack: only then may the task go.
    async fn publish_result(
        &self,
        task: Task,
        delivery: &Delivery,
        outcome: TaskOutcome,
        prove_ms: u64,
        queue_wait_ms: u64,
    ) -> Outcome {
        let inputs_critical_ms = match &task.input {
            TaskInput::Leaf { .. } => 0,
            TaskInput::Aggregate { children } => {
                children.iter().map(|c| c.critical_ms).max().unwrap_or(0)
            }
        };
        let failed = matches!(outcome, TaskOutcome::Failed { .. });
        // One result per task id: a repeat after a lost ack is dropped by the server.
        let msg_id = format!("result/{}", task.task_id);
        let subject = self.bus.subjects.results(&task.team);
        let result = TaskResult {
            task_id: task.task_id,
            team: task.team,
            block: task.block,
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
        if let Err(e) = self.bus.publish(subject, &result, Some(&msg_id)).await {
            tracing::warn!(error = %e, "result not published; the task will be redelivered");
            return Outcome::Retry(Duration::ZERO);
        }
        tracing::info!(prove_ms, failed, "task done");
        if failed {
            Outcome::Terminate
        } else {
            Outcome::Ack
        }
    }

    fn register(&self, task: &Task) -> Running<'_> {
        metrics().slots_busy.with_label_values(&[&task.team]).inc();
        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("running lock")
            .insert(task.task_id.clone(), (task.block.clone(), token.clone()));
        Running {
            gateway: self,
            team: task.team.clone(),
            task_id: task.task_id.clone(),
            token,
        }
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
