//! The one consume loop: pull from a durable consumer, hand each message to a handler, and turn
//! the handler's outcome into an ack kind. Rejections become dead-letter records before the
//! message is terminated, so bad input is never lost and never blocks the stream.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use push0_protocol::topology::SERVICE_ACK_WAIT;
use push0_protocol::wire::{DecodeError, WireMessage, decode};
use push0_protocol::{BlockRef, ConsumerSpec, DeadLetter, DlqReason, SCHEMA_HEADER, now_ms};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::blobs::BlobStore;
use crate::bus::{Bus, RuntimeError};
use crate::metrics::metrics;
use crate::pull::Pull;
use crate::telemetry;

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Outcome {
    /// Done: its durable side effects are written.
    Ack,
    /// Not now (a transient failure): redeliver after the delay.
    Retry(Duration),
    /// Never: file a dead letter with the reason, then terminate the message.
    Reject(Rejection),
    /// Done for good, its outcome recorded by the handler itself (a task whose prover found
    /// its input invalid has published a failed result): terminate without a dead letter.
    Terminate,
}

/// Why a message is dead-lettered, with what is known about it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: DlqReason,
    pub detail: String,
    pub team: Option<String>,
    pub block: Option<BlockRef>,
    pub task_id: Option<String>,
    pub history: Vec<push0_protocol::Attempt>,
}

impl Rejection {
    pub fn new(reason: DlqReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            team: None,
            block: None,
            task_id: None,
            history: Vec::new(),
        }
    }
    /// A message about a team the registry does not know (never registered, or removed).
    pub fn unknown_team(team: &str, block: &BlockRef) -> Self {
        Rejection::new(
            DlqReason::UnknownTeam,
            format!("team {team} is not registered"),
        )
        .team(team)
        .block(block)
    }

    pub fn team(mut self, team: &str) -> Self {
        self.team = Some(team.to_string());
        self
    }
    pub fn block(mut self, block: &BlockRef) -> Self {
        self.block = Some(block.clone());
        self
    }
    pub fn task(mut self, task_id: &str) -> Self {
        self.task_id = Some(task_id.to_string());
        self
    }
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Self {
        Rejection::new(e.reason(), e.to_string())
    }
}

/// One received message with the metadata handlers need.
pub struct Delivery {
    pub message: jetstream::Message,
    pub subject: String,
    pub schema: Option<String>,
    pub stream_sequence: u64,
    /// How many times the server delivered it, this time included.
    pub delivered: i64,
    /// When the message reached its stream, unix ms.
    pub published_ms: u64,
    /// Lets the next message of this one's lane start: see [`Delivery::release_lane`].
    lane: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    /// Its stream time to now, as it was taken up here.
    lag: Option<Duration>,
}

impl Delivery {
    pub fn new(message: jetstream::Message) -> Self {
        let schema = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SCHEMA_HEADER))
            .map(|v| v.as_str().to_string());
        let (stream_sequence, delivered, published_ms, lag) = match message.info() {
            Ok(info) => {
                let published_ns = info.published.unix_timestamp_nanos();
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128);
                let lag = u64::try_from(now_ns - published_ns).ok();
                (
                    info.stream_sequence,
                    info.delivered,
                    (published_ns / 1_000_000) as u64,
                    lag.map(Duration::from_nanos),
                )
            }
            Err(_) => (0, 1, now_ms(), None),
        };
        Self {
            subject: message.subject.to_string(),
            schema,
            stream_sequence,
            delivered,
            published_ms,
            message,
            lane: std::sync::Mutex::new(None),
            lag,
        }
    }

    /// Lets the next message on this one's subject start now, under [`Order::PerSubject`] (a
    /// no-op under any other order), while this one's handling finishes: for a handler whose remaining steps the next
    /// message's handling does not depend on. Its ack still follows its own side effects.
    pub fn release_lane(&self) {
        if let Some(free) = self.lane.lock().expect("lane lock").take() {
            let _ = free.send(());
        }
    }

    pub fn decode<M: WireMessage>(&self) -> Result<M, DecodeError> {
        decode(self.schema.as_deref(), &self.message.payload)
    }

    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }
}

/// Which messages of a consumer may be handled at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// One at a time, in stream order.
    Stream,
    /// In stream order per subject, different subjects concurrently. For streams whose subject
    /// names the domain an order matters in (a chain's blocks, a team's results).
    PerSubject,
    /// Concurrently, in no order: for handlers whose records settle races themselves.
    Unordered,
}

/// Handles one message. Must be idempotent: any message can arrive more than once.
pub trait Handler: Send + Sync {
    /// Whether messages on different subjects may be handled concurrently.
    const ORDER: Order = Order::Stream;
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Outcome> + Send;
}

/// Messages one pull request may deliver ahead of handling.
const PULL_BATCH: usize = 64;
/// Messages handled at once under [`Order::PerSubject`] (each on its own subject) and
/// [`Order::Unordered`].
const MAX_CONCURRENT: usize = 32;

/// The lane a message is handled in: its subject, or one lane for the whole stream (unordered
/// messages take none).
fn lane_of(message: &jetstream::Message, order: Order) -> String {
    match order {
        Order::Stream | Order::Unordered => String::new(),
        Order::PerSubject => message.subject.to_string(),
    }
}

/// Where a handled message is: its lane let go with the rest of its work still to run, or
/// finished (with its lane, if it still held it).
enum Step<'a> {
    LaneFree(String, BoxFuture<'a, Step<'a>>),
    Done(Option<String>),
}

/// Messages waiting for their subject's predecessor, and the subjects being handled.
#[derive(Default)]
struct Lanes {
    busy: HashMap<String, VecDeque<jetstream::Message>>,
    waiting: usize,
}

impl Lanes {
    /// Takes `message` into its subject's lane; returns it if the lane was free to start now.
    fn admit(&mut self, message: jetstream::Message, order: Order) -> Option<jetstream::Message> {
        if order == Order::Unordered {
            return Some(message);
        }
        let lane = lane_of(&message, order);
        match self.busy.get_mut(&lane) {
            Some(queue) => {
                queue.push_back(message);
                self.waiting += 1;
                None
            }
            None => {
                self.busy.insert(lane, VecDeque::new());
                Some(message)
            }
        }
    }

    /// The lane `lane` finished a message: its next one, or the lane closes.
    fn next(&mut self, lane: &str) -> Option<jetstream::Message> {
        let queue = self.busy.get_mut(lane)?;
        match queue.pop_front() {
            Some(m) => {
                self.waiting -= 1;
                Some(m)
            }
            None => {
                self.busy.remove(lane);
                None
            }
        }
    }

    fn drain_waiting(&mut self) -> Vec<jetstream::Message> {
        self.waiting = 0;
        self.busy.values_mut().flat_map(|q| q.drain(..)).collect()
    }
}

/// Pulls from the consumer `spec` until `shutdown`, handling messages in stream order, one at a
/// time or (`H::ORDER`) concurrently across subjects. `kind` names the wire type for metrics.
/// Messages being handled when shutdown comes are finished; those fetched but not started are
/// then nak'ed, so they are redelivered at once rather than after the ack wait.
pub async fn consume<H: Handler>(
    bus: &Bus,
    blobs: &BlobStore,
    spec: &ConsumerSpec,
    service: &'static str,
    kind: &'static str,
    handler: &H,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let consumer = bus.ensure_consumer(spec).await?;
    crate::metrics::consumer_bound(service, kind);
    let limit = match H::ORDER {
        Order::Stream => 1,
        Order::PerSubject | Order::Unordered => MAX_CONCURRENT,
    };
    let mut lanes = Lanes::default();
    let mut running = FuturesUnordered::new();
    let start = |message: jetstream::Message| -> BoxFuture<'_, Step<'_>> {
        let lane = lane_of(&message, H::ORDER);
        Box::pin(async move {
            let (free, freed) = oneshot::channel();
            // Only a subject's lane can be let go early: under `Stream` one lane is the order.
            let free = (H::ORDER == Order::PerSubject).then_some(free);
            let mut work: BoxFuture<'_, ()> = Box::pin(handle_one(
                bus, blobs, service, kind, handler, message, free,
            ));
            tokio::select! {
                () = &mut work => Step::Done(Some(lane)),
                Ok(()) = freed => Step::LaneFree(lane, Box::pin(async move {
                    work.await;
                    Step::Done(None)
                })),
            }
        })
    };
    let mut pull: Option<Pull> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // After a failed pull, when to pull again. Waiting is a branch of the select below, so the
    // handlers already running keep going meanwhile.
    let mut resume_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let room = running.len() + lanes.waiting < limit;
        let may_pull = resume_at.is_none_or(|at| Instant::now() >= at);
        if pull.is_none() && room && may_pull {
            resume_at = None;
            // A short expiry: a pull whose answer is lost is replaced within seconds.
            match Pull::request(bus, &consumer, PULL_BATCH, None, Duration::from_secs(2)).await {
                Ok(p) => pull = Some(p),
                Err(e) => {
                    tracing::warn!(service, consumer = %spec.durable, error = %e, "pull failed");
                    resume_at = Some(Instant::now() + backoff.next_wait());
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(step) = running.next(), if !running.is_empty() => {
                let lane = match step {
                    Step::LaneFree(lane, rest) => {
                        running.push(rest);
                        Some(lane)
                    }
                    Step::Done(lane) => lane,
                };
                if let Some(m) = lane.and_then(|lane| lanes.next(&lane)) {
                    running.push(start(m));
                }
            }
            next = async { pull.as_mut().expect("pull").next().await }, if pull.is_some() && room => {
                match next {
                    Ok(Some(message)) => {
                        backoff.reset();
                        if let Some(m) = lanes.admit(message, H::ORDER) {
                            running.push(start(m));
                        }
                    }
                    Ok(None) => pull = None,
                    Err(e) => {
                        tracing::warn!(service, consumer = %spec.durable, error = %e, "pull ended with an error, re-pulling");
                        pull = None;
                        resume_at = Some(Instant::now() + backoff.next_wait());
                    }
                }
            }
            _ = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now)), if pull.is_none() && resume_at.is_some() => {}
        }
    }
    // What is being handled is finished first (each ack follows its side effects), so a
    // standby never handles a message while its predecessor on the subject is still running
    // here; then what waited, or was delivered but not started, is handed back.
    while let Some(step) = running.next().await {
        if let Step::LaneFree(_, rest) = step {
            running.push(rest);
        }
    }
    for message in lanes.drain_waiting() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    if let Some(mut p) = pull {
        nak_buffered(&mut p).await;
    }
    // Acks are fire-and-forget: flush them before the connection goes.
    bus.client
        .flush()
        .await
        .map_err(|e| RuntimeError::nats("flush on shutdown", e))
}

/// Hands back what the pull already delivered. Bounded: a nak'ed message is redelivered at
/// once, possibly into this same pull, so "until nothing arrives" could go on forever.
async fn nak_buffered(pull: &mut Pull) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    for _ in 0..PULL_BATCH {
        match tokio::time::timeout_at(deadline, pull.next()).await {
            Ok(Ok(Some(message))) => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            _ => return,
        }
    }
}

async fn handle_one<H: Handler>(
    bus: &Bus,
    blobs: &BlobStore,
    service: &'static str,
    kind: &'static str,
    handler: &H,
    message: jetstream::Message,
    lane: Option<oneshot::Sender<()>>,
) {
    let mut delivery = Delivery::new(message);
    delivery.lane = std::sync::Mutex::new(lane);
    let span = tracing::info_span!(
        "handle",
        otel.name = format!("{service}.handle"),
        service,
        subject = %delivery.subject,
        seq = delivery.stream_sequence,
        delivered = delivery.delivered,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    telemetry::set_parent_from(&span, delivery.message.headers.as_ref());
    let m = metrics();
    crate::metrics::delivered(service, kind, delivery.delivered);
    if let Some(lag) = delivery.lag {
        m.delivery_lag
            .with_label_values(&[service, kind])
            .observe(lag.as_secs_f64());
    }
    let started = std::time::Instant::now();
    let handling = handler.handle(&delivery).instrument(span.clone());
    tokio::pin!(handling);
    // A slow handler (a verifier, a KV write during a leader election) keeps its message.
    let outcome = loop {
        tokio::select! {
            outcome = &mut handling => break outcome,
            _ = tokio::time::sleep(SERVICE_ACK_WAIT / 3) => {
                let _ = delivery.message.ack_with(AckKind::Progress).await;
            }
        }
    };
    m.handle_time
        .with_label_values(&[service, kind])
        .observe(started.elapsed().as_secs_f64());
    let _entered = span.enter();
    settle(bus, blobs, service, kind, &delivery, outcome).await;
}

/// How long a message waits before its next delivery when its handler failed on something
/// that does not pass by itself (a wrong setting, a corrupt record, a missing stream): not
/// lost, and not in a hot loop while someone looks at the error count.
pub const STUCK_RETRY: Duration = Duration::from_secs(5);

/// A handler's `step` failed with `error`: counted in `push0_handler_errors_total` by kind,
/// logged, and the message delivered again after `soon` if the failure may pass with time, or
/// after [`STUCK_RETRY`] if it needs someone to act.
pub fn retry_after_error(
    service: &'static str,
    step: &str,
    error: &RuntimeError,
    soon: Duration,
) -> Outcome {
    let kind = error.kind();
    metrics()
        .handler_errors
        .with_label_values(&[service, kind.as_str()])
        .inc();
    if kind.is_transient() {
        tracing::warn!(error = %error, kind = kind.as_str(), "{step} failed, will retry");
        Outcome::Retry(soon)
    } else {
        tracing::error!(error = %error, kind = kind.as_str(), "{step} failed and will not pass by itself; retrying in {STUCK_RETRY:?}");
        Outcome::Retry(STUCK_RETRY)
    }
}

/// Turns a handler's outcome into the message's ack kind, counted by `kind` and outcome: a
/// rejection is filed as a dead letter first (and retried in a second if that fails), a
/// retry with no delay is redelivered at once. An ack that does not reach the server is
/// logged: the message is redelivered after its ack wait, and handlers are idempotent.
pub async fn settle(
    bus: &Bus,
    blobs: &BlobStore,
    service: &'static str,
    kind: &'static str,
    delivery: &Delivery,
    outcome: Outcome,
) {
    let count = |outcome| count_outcome(service, kind, outcome);
    let result = match outcome {
        Outcome::Ack => {
            count("ok");
            delivery.message.ack().await
        }
        Outcome::Retry(after) => {
            count("retry");
            let delay = (!after.is_zero()).then_some(after);
            delivery.message.ack_with(AckKind::Nak(delay)).await
        }
        Outcome::Terminate => {
            count("terminated");
            delivery.message.ack_with(AckKind::Term).await
        }
        Outcome::Reject(rejection) => {
            count("rejected");
            tracing::warn!(reason = %rejection.reason, detail = %rejection.detail, "dead-lettering message");
            telemetry::mark_error(&format!("dead letter: {}", rejection.reason));
            match dead_letter(bus, blobs, service, &rejection, delivery).await {
                Ok(()) => delivery.message.ack_with(AckKind::Term).await,
                Err(e) => {
                    tracing::error!(error = %e, "dead letter not recorded, will retry");
                    delivery
                        .message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

/// Counts one handled message by its outcome (`ok`, `retry`, `terminated`, `rejected`).
pub fn count_outcome(service: &str, kind: &str, outcome: &str) {
    metrics()
        .messages
        .with_label_values(&[service, kind, outcome])
        .inc();
}

/// Files a dead-letter record for `delivery`, keeping the original bytes, and counts it.
pub async fn dead_letter(
    bus: &Bus,
    blobs: &BlobStore,
    service: &'static str,
    rejection: &Rejection,
    delivery: &Delivery,
) -> Result<(), RuntimeError> {
    file_dead_letter(
        bus,
        blobs,
        service,
        rejection,
        &delivery.subject,
        delivery.stream_sequence,
        delivery.schema.clone(),
        delivery.payload(),
    )
    .await
}

/// Files a dead-letter record for a message known by subject and stream sequence.
#[allow(clippy::too_many_arguments)]
pub async fn file_dead_letter(
    bus: &Bus,
    blobs: &BlobStore,
    service: &'static str,
    rejection: &Rejection,
    subject: &str,
    stream_sequence: u64,
    schema: Option<String>,
    payload: &[u8],
) -> Result<(), RuntimeError> {
    let original = blobs.put(payload.to_vec()).await?;
    let record = DeadLetter {
        service: service.to_string(),
        reason: rejection.reason,
        detail: rejection.detail.clone(),
        subject: subject.to_string(),
        stream_sequence,
        schema,
        team: rejection.team.clone(),
        block: rejection.block.clone(),
        task_id: rejection.task_id.clone(),
        at_ms: now_ms(),
        original,
        history: rejection.history.clone(),
    };
    // One record per offending message, however often it is redelivered.
    let msg_id = format!("dlq/{subject}/{stream_sequence}");
    bus.publish(
        bus.subjects.dlq(service, rejection.reason.as_str()),
        &record,
        Some(&msg_id),
    )
    .await?;
    metrics()
        .dlq
        .with_label_values(&[service, rejection.reason.as_str()])
        .inc();
    Ok(())
}
