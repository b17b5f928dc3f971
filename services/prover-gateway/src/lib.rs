//! prover-gateway: joins a team's consumer groups, runs one prover per free slot, renews the
//! task's ack deadline with heartbeats that proving cannot starve, publishes the result (and
//! waits for its ack) before acking the task.

pub mod latency;
pub mod prover;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use push0_protocol::subjects::attempt_key;
use push0_protocol::topology::{CAPACITY_TTL, TIER_GROUP};
use push0_protocol::{
    Attempt, BlockRef, Cancel, Capacity, DlqReason, Task, TaskInput, TaskOutcome, TaskResult,
    TeamConfig, encode, now_ms,
};
use push0_runtime::consume::dead_letter;
use push0_runtime::pull::{PullInbox, Tier};
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
    /// Pull priority within the team's consumer group, 0 (served first) to 9: a slow tier set
    /// higher gets work only while every faster prover is busy.
    pub priority: u8,
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
        team: team.clone(),
        running: Mutex::new(HashMap::new()),
        withdrawn: Mutex::new(VecDeque::new()),
    });
    gateway.listen_for_cancels(shutdown.clone()).await?;
    let advertiser = tokio::spawn({
        let g = gateway.clone();
        let classes = classes.clone();
        let stop = shutdown.clone();
        async move { g.advertise_capacity(classes, stop).await }
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
    let _ = advertiser.await;
    // Acks and naks are fire-and-forget: flush them before exit.
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
    /// The team as it was at start: each task's class limits (ack wait, deliveries, time
    /// limit) come from it.
    team: TeamConfig,
    /// Tasks proving now, by task id: their block and the token that stops them.
    running: Mutex<HashMap<String, (BlockRef, CancellationToken)>>,
    /// Blocks recently withdrawn (newest last, at most `WITHDRAWN_KEPT`): their tasks still
    /// queued on the bus are acked without proving when they come.
    withdrawn: Mutex<VecDeque<BlockRef>>,
}

const WITHDRAWN_KEPT: usize = 4096;

/// A task proving now: registered (and counted busy) while it lives, unregistered when its
/// proving ends, however it ends.
struct Running<'a> {
    gateway: &'a Gateway,
    team: String,
    task_id: String,
    token: CancellationToken,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.gateway
            .running
            .lock()
            .expect("running lock")
            .remove(&self.task_id);
        metrics().slots_busy.with_label_values(&[&self.team]).dec();
    }
}

/// How long one pull request waits for a task before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long a task reported exhausted is handed back for before it is reported again.
const EXHAUSTED_RECHECK: Duration = Duration::from_secs(5);

impl Gateway {
    /// Stops running provers named by a cancellation (a withdrawn block or a removed team).
    async fn listen_for_cancels(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let g = self.clone();
        self.bus
            .follow(self.bus.subjects.cancel(), shutdown, move |cancel: Cancel| {
                if cancel.team != g.config.team {
                    return;
                }
                if let Some(b) = &cancel.block {
                    let mut withdrawn = g.withdrawn.lock().expect("withdrawn lock");
                    if withdrawn.len() == WITHDRAWN_KEPT {
                        withdrawn.pop_front();
                    }
                    withdrawn.push_back(b.clone());
                }
                let running = g.running.lock().expect("running lock");
                for (task_id, (block, token)) in running.iter() {
                    let hit = cancel.block.as_ref().is_none_or(|b| {
                        b.chain == block.chain && b.number == block.number && b.hash == block.hash
                    });
                    if hit {
                        tracing::info!(task = %task_id, reason = %cancel.reason, "stopping prover: work withdrawn");
                        token.cancel();
                    }
                }
            })
            .await
    }

    /// Records a failed delivery for the task's history (best effort: a dead letter without
    /// it still says how many deliveries there were).
    async fn report_attempt(&self, task_id: &str, delivery: i64, error: &str) {
        let record = Attempt {
            delivery: delivery.max(1) as u64,
            gateway: self.config.id.clone(),
            error: error.chars().take(500).collect(),
            at_ms: now_ms(),
        };
        let key = attempt_key(task_id, record.delivery);
        let stored = match self.bus.kv(&self.bus.subjects.bucket_attempts()).await {
            Ok(kv) => kv
                .put(&key, Bytes::from(encode(&record)))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, key, "attempt not recorded");
        }
    }

    /// A task has had its deliveries: say so durably, in the shape of the server's own
    /// max-deliveries advisory and on its subject (which the advisories stream keeps), and hand
    /// the task back for a while. The scheduler files it as a dead letter and deletes it from
    /// the work queue; until it has, every redelivery is reported again, so a notice lost with
    /// a NATS node or a gateway that dies before sending it costs one `EXHAUSTED_RECHECK`. The
    /// msg-id names the message and delivery: a retried publish is dropped, the next
    /// delivery's report is not, nor is a replayed task's (a new message of the same task id);
    /// a report of a task already filed finds it gone and changes nothing.
    async fn report_exhausted(&self, task: &Task, delivery: &Delivery, max_deliver: i64) {
        let consumer = self.bus.subjects.task_consumer(&task.team, &task.class);
        let notice = serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": self.bus.subjects.stream_tasks(),
            "consumer": consumer,
            "stream_seq": delivery.stream_sequence,
            "deliveries": max_deliver,
            "reported_by": self.config.id,
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            push0_protocol::MSG_ID_HEADER,
            format!(
                "exhausted/{}/{}/{}",
                task.task_id, delivery.stream_sequence, delivery.delivered
            )
            .as_str(),
        );
        let subject = self.bus.subjects.max_deliveries_advisory(&consumer);
        let payload = Bytes::from(notice.to_string());
        match self.bus.publish_raw(subject, headers, payload).await {
            Ok(_) => tracing::warn!(
                deliveries = delivery.delivered,
                "task out of deliveries; reported for the dead-letter queue"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "exhausted task not reported; its next delivery will be")
            }
        }
        let _ = delivery
            .message
            .ack_with(AckKind::Nak(Some(EXHAUSTED_RECHECK)))
            .await;
    }

    /// Keeps this gateway's capacity record alive while it runs and removes it on the way out.
    async fn advertise_capacity(&self, classes: Vec<String>, shutdown: CancellationToken) {
        let kv = match self.bus.kv(&self.bus.subjects.bucket_capacity()).await {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!(error = %e, "capacity bucket unavailable; not advertising");
                return;
            }
        };
        let key = capacity_key(&self.config.team, &self.config.id);
        let started_at_ms = now_ms();
        loop {
            let record = Capacity {
                gateway: self.config.id.clone(),
                team: self.config.team.clone(),
                classes: classes.clone(),
                slots: self.config.slots as u32,
                busy: self.running.lock().expect("running lock").len() as u32,
                priority: self.config.priority,
                started_at_ms,
                updated_at_ms: now_ms(),
            };
            if let Err(e) = kv.put(&key, Bytes::from(encode(&record))).await {
                tracing::debug!(error = %e, "capacity not advertised");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(CAPACITY_TTL / 3) => {}
            }
        }
        let _ = kv.delete(&key).await;
    }

    /// One prover slot: pull exactly one task, prove it, repeat. One-message pull requests
    /// never stall (the client's `stream()` miscounts outstanding messages and can stop
    /// receiving until the pull expires), hold no task a free prover elsewhere could take (a
    /// batch holds tasks whose ack clocks run), and carry this gateway's tier priority. A
    /// proved task's ack carries the slot's next pull request, once its result is durable.
    async fn slot_loop(&self, consumer: PullConsumer, slot: usize, shutdown: CancellationToken) {
        let tier = Tier {
            group: TIER_GROUP,
            priority: self.config.priority,
        };
        let mut backoff = Duration::from_millis(50);
        let mut inbox = PullInbox::new(&self.bus);
        // A proved task whose ack is still to send, with the next pull on it.
        let mut done: Option<Arc<Delivery>> = None;
        while !shutdown.is_cancelled() {
            let sent = match done.take() {
                Some(d) => match inbox.ack_next(&d.message, Some(tier), PULL_EXPIRES).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // The ack on its own, then; the pull is retried below.
                        tracing::debug!(error = %e, "ack with the next pull not sent");
                        ack_proved(&d).await;
                        Err(e)
                    }
                },
                None => inbox.request(&consumer, Some(tier), PULL_EXPIRES).await,
            };
            if let Err(e) = sent {
                tracing::warn!(slot, error = %e, "pull failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            let next = tokio::select! {
                n = inbox.next() => n,
                _ = shutdown.cancelled() => {
                    // A task may still arrive for this pull: hand it straight back.
                    if let Ok(Some(m)) = inbox.next().await {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
            };
            match next {
                Ok(Some(message)) => {
                    backoff = Duration::from_millis(50);
                    done = self.process(Delivery::new(message), &shutdown).await;
                }
                Err(e) => {
                    tracing::debug!(slot, error = %e, "pull ended with an error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Ok(None) => {}
            }
        }
        if let Some(d) = done {
            ack_proved(&d).await;
        }
    }

    /// Handles one task; returns it if it was proved and its result is durable, for the caller
    /// to ack (every other outcome is acked, nak'ed or terminated here).
    async fn process(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Option<Arc<Delivery>> {
        let delivery = Arc::new(delivery);
        let task: Task = match delivery.decode() {
            Ok(t) => t,
            Err(e) => {
                let rejection = Rejection::from(e);
                self.reject(&delivery, rejection).await;
                return None;
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
            .await
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

    /// Proves one task and publishes its result; returns the delivery if the caller is to ack
    /// it (proved, result durable), as `process` says.
    async fn prove_task(
        &self,
        delivery: Arc<Delivery>,
        task: Task,
        shutdown: &CancellationToken,
    ) -> Option<Arc<Delivery>> {
        let m = metrics();
        let withdrawn = self
            .withdrawn
            .lock()
            .expect("withdrawn lock")
            .contains(&task.block);
        if withdrawn {
            m.tasks_cancelled.with_label_values(&[&task.team]).inc();
            let _ = delivery.message.ack_with(AckKind::Ack).await;
            tracing::info!("task of withdrawn work skipped");
            return None;
        }
        let limits = self.team.limits(&task.class);
        if delivery.delivered > limits.max_deliver {
            // Its last delivery ended unreported (a gateway died, or its notice was lost).
            self.report_exhausted(&task, &delivery, limits.max_deliver)
                .await;
            return None;
        }
        let queue_wait_ms = now_ms().saturating_sub(delivery.published_ms);
        m.queue_wait
            .with_label_values(&[&task.team])
            .observe(queue_wait_ms as f64 / 1000.0);

        // Heartbeats run on their own task: a busy or stuck prover cannot starve them.
        let heartbeat = {
            let d = delivery.clone();
            let every = (limits.ack_wait / 3).max(Duration::from_millis(100));
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
                return None;
            }
        };

        let running = self.register(&task);
        let started = Instant::now();
        let proving = async {
            match (&self.config.bundler, &input) {
                (Some(bundler), ProverInput::Aggregate(children)) => bundler.bundle(children).await,
                _ => self.config.prover.prove(&task, input).await,
            }
        };
        // The class's time limit, on top of the prover's own timeout: past it the prover is
        // dropped (a child process is killed) and the delivery counts as a failure.
        let proving = async {
            match limits.time_limit {
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
        // On the heap so that dropping it below really drops the prover (a future pinned on the
        // stack would live on until this function returns, after the ack).
        let mut proving = Box::pin(proving);
        let outcome = tokio::select! {
            r = &mut proving => Some(r),
            _ = running.token.cancelled() => {
                // Withdrawn: the prover stops (dropping it kills a child process) and the task
                // goes, so nobody proves it again.
                drop(proving);
                drop(running);
                m.tasks_cancelled.with_label_values(&[&task.team]).inc();
                let _ = delivery.message.ack_with(AckKind::Ack).await;
                tracing::info!("prover stopped; task withdrawn");
                return None;
            }
            _ = shutdown.cancelled() => {
                // Give in-flight work its grace period, then hand it back at once.
                tokio::time::timeout(self.config.grace, &mut proving).await.ok()
            }
        };
        drop(running);
        let Some(outcome) = outcome else {
            tracing::info!("shutting down mid-proof; task handed back");
            let _ = delivery.message.ack_with(AckKind::Nak(None)).await;
            return None;
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
                    return None;
                }
            },
            Err(ProveError::Invalid(detail)) => TaskOutcome::Failed {
                reason: DlqReason::InvalidInput,
                detail,
            },
            Err(ProveError::Retryable(detail)) => {
                let delay = Duration::from_secs((delivery.delivered.max(1) as u64).min(10));
                tracing::warn!(detail = %detail, retry_in = ?delay, "prover failed, retrying");
                self.report_attempt(&task.task_id, delivery.delivered, &detail)
                    .await;
                if delivery.delivered >= limits.max_deliver {
                    self.report_exhausted(&task, &delivery, limits.max_deliver)
                        .await;
                } else {
                    let _ = delivery.message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                return None;
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
            return None;
        }
        tracing::info!(prove_ms, failed, "task done");
        // The result is durable: only now may the task go.
        if !failed {
            return Some(delivery);
        }
        if let Err(e) = delivery.message.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "{ACK_LOST}");
        }
        None
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

/// KV key of a gateway's capacity record; characters a key cannot hold become `_`.
fn capacity_key(team: &str, gateway: &str) -> String {
    let id: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{team}.{id}")
}

/// What a lost ack of a task with a published result leads to.
const ACK_LOST: &str = "ack not sent; the task is redelivered after its ack wait and run again, \
    and its repeat result is dropped (its msg-id, the aggregator's first-wins record)";

/// Acks a proved task whose result is durable.
async fn ack_proved(delivery: &Delivery) {
    if let Err(e) = delivery.message.ack_with(AckKind::Ack).await {
        tracing::warn!(error = %e, "{ACK_LOST}");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
