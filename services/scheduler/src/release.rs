//! Release: held tasks go out to their team's queue on the bus, most urgent first, while the
//! queue has fewer undelivered tasks than the bound; each release is recorded in its plan.

use std::collections::HashMap;
use std::sync::Mutex;

use push0_protocol::subjects::{plan_key, task_id};
use push0_protocol::{Blob, LatePolicy, NodeId, Plan, Task, TeamConfig, now_ms};
use push0_runtime::kept::Kept;
use push0_runtime::telemetry::{TraceContext, set_parent, task_span};
use push0_runtime::{RuntimeError, kv_get, kv_update, kv_update_at, metrics};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::oversight::Withdrawal;
use crate::queue::{QueueKey, Queues};
use crate::{SERVICE, Scheduler};

impl Scheduler {
    pub(crate) async fn release_loop(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
            let (keys, stale): (Vec<QueueKey>, Vec<QueueKey>) = {
                let queues = self.queues.lock().expect("queues lock");
                let half = self.config.max_undelivered / 2;
                let keys = queues.queues.iter().filter(|(_, q)| q.held() > 0);
                // Blocks send their leaves themselves while the count leaves room; the count
                // only grows with their releases, so it is read again here, off their path,
                // once it passes half the bound (and nothing held will read it anyway).
                let stale = queues
                    .queues
                    .iter()
                    .filter(|(_, q)| q.idle() && q.undelivered.is_some_and(|u| u > half));
                (
                    keys.map(|(k, _)| k.clone()).collect(),
                    stale.map(|(k, _)| k.clone()).collect(),
                )
            };
            // Queues are independent: one team's slow publish does not hold up another's.
            let releases = keys.iter().map(|key| async move {
                if let Err(e) = self.release(key).await {
                    tracing::warn!(team = %key.0, class = %key.1, error = %e, kind = e.kind().as_str(), "release failed, will retry");
                }
            });
            let readings = stale.iter().map(|key| async move {
                if let Err(e) = self.read_undelivered(key).await {
                    tracing::debug!(team = %key.0, class = %key.1, error = %e, "reading the queue's undelivered tasks failed");
                }
            });
            futures::future::join(
                futures::future::join_all(releases),
                futures::future::join_all(readings),
            )
            .await;
        }
    }

    /// Releases the queue's most urgent tasks while the bus holds fewer undelivered tasks than
    /// the bound.
    async fn release(&self, key: &QueueKey) -> Result<(), RuntimeError> {
        if let Some(team) = self.registry.get(&key.0)
            && team.is_realtime()
        {
            return self.release_on_demand(&team, key).await;
        }
        let bound = self.config.max_undelivered;
        let known = {
            let queues = self.queues.lock().expect("queues lock");
            queues.queues.get(key).and_then(|q| q.undelivered)
        };
        let read = || self.read_undelivered(key);
        let mut fresh = known.is_none_or(|n| n >= bound);
        if fresh {
            read().await?;
        }
        loop {
            let (batch, held) = {
                let mut queues = self.queues.lock().expect("queues lock");
                let Some(q) = queues.queues.get_mut(key) else {
                    return Ok(());
                };
                let room = bound.saturating_sub(q.undelivered.unwrap_or(bound));
                let mut batch = Vec::new();
                while (batch.len() as u64) < room {
                    let Some(popped) = q.pop_ready() else { break };
                    batch.push(popped);
                }
                q.count_released(batch.len() as u64);
                if !batch.is_empty() {
                    // Until sent, no block's leaves skip past them.
                    q.sending += 1;
                }
                let m = metrics();
                m.tasks_held
                    .with_label_values(&[&key.0, &key.1])
                    .set(q.held() as i64);
                if let Some(queued) = q.undelivered {
                    m.tasks_queued
                        .with_label_values(&[&key.0, &key.1])
                        .set(queued as i64);
                }
                (batch, q.held())
            };
            if batch.is_empty() {
                // The releases since the last reading used up the room, with work still
                // held: most of those tasks may be delivered by now, so the bus is read again
                // at once rather than at the next poll.
                if held > 0 && !fresh {
                    fresh = true;
                    read().await?;
                    continue;
                }
                return Ok(());
            }
            let sending = Sending {
                queues: &self.queues,
                key,
            };
            self.release_batch(key, batch, Some(sending)).await?;
        }
    }

    /// Realtime queues release only into waiting pull requests, so a task starts the moment
    /// it leaves the scheduler and the decision to start it is made with the freshest
    /// knowledge: a block that can no longer meet its deadline is not started while a newer
    /// block waits (under the `drop` policy).
    async fn release_on_demand(
        &self,
        team: &TeamConfig,
        key: &QueueKey,
    ) -> Result<(), RuntimeError> {
        let consumer = {
            let consumers = self.consumers.lock().await;
            let Some(c) = consumers.get(key) else {
                return Ok(());
            };
            c.clone()
        };
        let info = consumer
            .get_info()
            .await
            .map_err(|e| RuntimeError::nats(format!("consumer info {}", key.0), e))?;
        if info.num_pending > 0 {
            return Ok(());
        }
        let mut free = info.num_waiting;
        while free > 0 {
            let popped = {
                let mut queues = self.queues.lock().expect("queues lock");
                let Some(q) = queues.queues.get_mut(key) else {
                    return Ok(());
                };
                q.pop_ready()
            };
            let Some((task, trace)) = popped else {
                return Ok(());
            };
            let b = &task.block;
            let hopeless = team.late_policy == LatePolicy::Drop && {
                let mut tracker = self.tracker.lock().expect("tracker lock");
                tracker
                    .team(&team.name)
                    .hopeless(&b.chain, b.number, now_ms())
            };
            if hopeless {
                self.withdraw(team, b, Withdrawal::Missed("cannot meet its deadline"))
                    .await?;
                continue;
            }
            // A task of work withdrawn meanwhile is dropped there and takes no pull.
            let sent = self.release_batch(key, vec![(task, trace)], None).await?;
            free = free.saturating_sub(sent);
        }
        Ok(())
    }

    /// Reads the queue's undelivered tasks from the bus, counting the releases made meanwhile.
    async fn read_undelivered(&self, key: &QueueKey) -> Result<(), RuntimeError> {
        let from = {
            let queues = self.queues.lock().expect("queues lock");
            queues.queues.get(key).map(|q| q.reading())
        };
        let Some(from) = from else { return Ok(()) };
        let on_bus = self.undelivered_on_bus(key).await?;
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.queues.get_mut(key) {
            q.read(on_bus, from);
        }
        Ok(())
    }

    async fn undelivered_on_bus(&self, key: &QueueKey) -> Result<u64, RuntimeError> {
        // Not held across the request: other queues release meanwhile.
        let Some(consumer) = self.consumers.lock().await.get(key).cloned() else {
            return Ok(0);
        };
        let info = consumer
            .get_info()
            .await
            .map_err(|e| RuntimeError::nats(format!("consumer info {}", key.0), e))?;
        Ok(info.num_pending)
    }

    /// Sends `task` and returns once it is on the connection (what is sent after reaches the
    /// server after it), with its ack to await.
    pub(crate) async fn send_task<'a>(
        &'a self,
        task: &'a Task,
        trace: TraceContext,
    ) -> impl Future<Output = Result<(), RuntimeError>> + 'a {
        let span = task_span("scheduler.release", task);
        set_parent(&span, trace);
        let subject = self.bus.subjects.tasks(&task.team, &task.class);
        let acked = self
            .bus
            .publish_sent(subject, task, Some(&task.task_id))
            .instrument(span.clone())
            .await;
        async move {
            acked.instrument(span.clone()).await?;
            tracing::debug!(parent: &span, "task released");
            Ok(())
        }
    }

    /// Sends a join (an aggregation whose children are proved) at once, skipping the queue
    /// and the plan read of a release, when that changes nothing: its queue holds no task (so
    /// nothing more urgent waits), has room on the bus, and this scheduler tracks the block as
    /// planned and unproven with this hash (not withdrawn, failed or replaced: each of those
    /// ends the tracking here; one racing with this send leaves a task the gateway drops on
    /// the cancellation, or whose proof the aggregator does not publish, as a release that
    /// read the plan just before the withdrawal would). A join signalled twice is settled by
    /// the task's msg-id. The plan records the release after the send, before the signal is
    /// acked. False if the join must take the queue.
    pub(crate) async fn express_join(
        &self,
        team: &TeamConfig,
        task: &Task,
        trace: TraceContext,
    ) -> Result<bool, RuntimeError> {
        if team.is_realtime() {
            return Ok(false);
        }
        let b = &task.block;
        let tracked = {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            let track = tracker.team(&team.name);
            track
                .blocks
                .get(&(b.chain.clone(), b.number))
                .is_some_and(|t| t.hash == b.hash)
        };
        if !tracked {
            return Ok(false);
        }
        let key: QueueKey = (team.name.clone(), task.class.clone());
        let bound = self.config.max_undelivered;
        let room = {
            let mut queues = self.queues.lock().expect("queues lock");
            let q = queues.queues.entry(key.clone()).or_default();
            let room = q.take_room(1, bound, q.idle());
            if room {
                q.sending += 1;
            }
            room
        };
        if !room {
            return Ok(false);
        }
        let sending = Sending {
            queues: &self.queues,
            key: &key,
        };
        let acked = self.send_task(task, trace.clone()).await;
        drop(sending);
        if let Err(e) = acked.await {
            // The count is not right any more; the queue sends it again.
            tracing::debug!(task = %task.task_id, error = %e, "join not sent; queued");
            let mut queues = self.queues.lock().expect("queues lock");
            if let Some(q) = queues.queues.get_mut(&key) {
                q.undelivered = None;
                q.push(task.clone(), trace);
            }
            drop(queues);
            self.wake.notify_one();
            return Ok(true);
        }
        self.count_released(std::slice::from_ref(task));
        let plan = plan_key(&team.name, &b.chain, b.number);
        self.record_released(plan, b.hash.clone(), None, vec![task.node])
            .await?;
        Ok(true)
    }

    /// Publishes `batch` (taken from `key`'s queue) and records it as released in the blocks'
    /// plans. A plan with an aggregation in the batch is read first, once for the batch: a
    /// task of a withdrawn block, of a block a reorg replaced, or already released (a join
    /// signalled twice) is dropped. Leaves, planned moments ago, go out without that read on
    /// their way. The tasks go out at once (msg-id = task id, so a repeat after a crash is
    /// dropped by the server), then each plan is written once (at the revision read, if it
    /// was). A task not published goes back to its queue. `sending` is the batch's turn on
    /// the queue, given up once every task is on the connection. Returns how many were
    /// published.
    async fn release_batch(
        &self,
        key: &QueueKey,
        batch: Released,
        sending: Option<Sending<'_>>,
    ) -> Result<usize, RuntimeError> {
        // By plan and block (after a reorg one batch may hold tasks of both blocks at a
        // height), in the order the batch first names them: the most urgent first, as popped.
        let mut by_plan: Vec<((String, Vec<u8>), Released)> = Vec::new();
        let mut index: HashMap<(String, Vec<u8>), usize> = HashMap::new();
        for (task, trace) in batch {
            let plan = (
                plan_key(&task.team, &task.block.chain, task.block.number),
                task.block.hash.clone(),
            );
            let at = *index.entry(plan.clone()).or_insert_with(|| {
                by_plan.push((plan, Vec::new()));
                by_plan.len() - 1
            });
            by_plan[at].1.push((task, trace));
        }
        // Read: the plan as it stands (None if not read, or gone).
        let reads = by_plan.iter().map(|((plan, _), tasks)| async move {
            match tasks.iter().any(|(t, _)| t.node.level > 0) {
                true => kv_get::<Plan>(&self.plans, plan).await,
                false => Ok(None),
            }
        });
        let read = futures::future::join_all(reads).await;
        let mut failure = None;
        let mut unpop = Vec::new();
        let mut dropped = 0u64;
        // Per plan: the plan as read (None if it is gone) and the tasks to publish.
        let mut planned = Vec::new();
        for (((pkey, hash), tasks), read) in by_plan.into_iter().zip(read) {
            let plan = match read {
                Ok(plan) => plan,
                Err(e) => {
                    unpop.extend(tasks);
                    failure = Some(e);
                    continue;
                }
            };
            let live = |t: &Task| match &plan {
                Some((p, _)) => {
                    p.accepted.block.hash == hash
                        && p.withdrawn.is_none()
                        && !(p.released.contains(&t.node) && t.task_id == first_task_id(t))
                }
                None => true,
            };
            let (keep, drop): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|(t, _)| live(t));
            if !drop.is_empty() {
                dropped += drop.len() as u64;
                metrics()
                    .duplicates
                    .with_label_values(&[SERVICE])
                    .inc_by(drop.len() as u64);
                tracing::debug!(plan = %pkey, tasks = drop.len(), "tasks of withdrawn or released work not published");
            }
            planned.push((pkey, hash, plan, keep));
        }
        let mut acks = Vec::new();
        for (task, trace) in planned.iter().flat_map(|(_, _, _, tasks)| tasks) {
            acks.push(self.send_task(task, trace.clone()).await);
        }
        // On the connection in the order popped: the caller's turn to send is over.
        drop(sending);
        let mut sent = futures::future::join_all(acks).await.into_iter();
        let mut writes = Vec::new();
        let mut released = Vec::new();
        for (pkey, hash, plan, tasks) in planned {
            let mut nodes = Vec::new();
            for (task, trace) in tasks {
                match sent.next().expect("one outcome per task") {
                    Ok(()) => {
                        nodes.push(task.node);
                        released.push(task);
                    }
                    Err(e) => {
                        unpop.push((task, trace));
                        failure = Some(e);
                    }
                }
            }
            if !nodes.is_empty() {
                writes.push(self.record_released(pkey, hash, plan, nodes));
            }
        }
        let written = futures::future::join_all(writes).await;
        {
            let mut queues = self.queues.lock().expect("queues lock");
            if let Some(q) = queues.queues.get_mut(key) {
                q.undelivered = q.undelivered.map(|n| n.saturating_sub(dropped));
                if !unpop.is_empty() {
                    q.undelivered = None;
                }
                for (task, trace) in unpop {
                    q.unpop(task, trace);
                }
            }
        }
        self.count_released(&released);
        for w in written {
            w?;
        }
        failure.map_or(Ok(released.len()), Err)
    }

    /// Adds `nodes` (just published) to the plan's released ones: at the revision `read` was
    /// read at, or, if it changed since or was not read, as read now. Only this block's own
    /// live plan: after a reorg another block's plan may hold the key, and a withdrawn block's
    /// work is not tracked any more.
    ///
    /// A plan not read for the release (its leaves, queued when it was planned) is written at
    /// the revision this scheduler created it at, or last wrote it at, when that is still
    /// kept: the write is a compare-and-set, so if anything wrote the plan since (a
    /// withdrawal, a reorg's replacement, another instance) it fails and the plan is read, as
    /// it always is otherwise. In a burst, when most leaves wait in the queue, this saves a
    /// read per plan on the server.
    async fn record_released(
        &self,
        key: String,
        hash: Vec<u8>,
        read: Option<(Plan, u64)>,
        nodes: Vec<NodeId>,
    ) -> Result<(), RuntimeError> {
        let add = |p: &Plan| {
            let mut new: Vec<NodeId> = nodes
                .iter()
                .filter(|n| !p.released.contains(n))
                .copied()
                .collect();
            // A join signalled twice may be in the batch twice: recorded once.
            new.sort_unstable();
            new.dedup();
            if p.accepted.block.hash != hash || p.withdrawn.is_some() || new.is_empty() {
                return None;
            }
            let mut p = p.clone();
            p.released.extend(new);
            Some(p)
        };
        let read = read.or_else(|| {
            self.created
                .take(&key)
                .filter(|(p, _)| p.accepted.block.hash == hash)
        });
        if let Some((plan, revision)) = read {
            let Some(next) = add(&plan) else {
                return Ok(());
            };
            if let Some(written) = kv_update_at(&self.plans, &key, &next, revision).await? {
                // Leaves still to go (a batch took only some): their release writes here.
                if next.released.len() < next.workflow.leaves().count() {
                    self.created.keep(key, (next, written));
                }
                return Ok(());
            }
        }
        kv_update::<Plan, _>(&self.plans, &key, |p| add(p?)).await?;
        Ok(())
    }

    /// Metrics and deadline tracking of tasks just published.
    pub(crate) fn count_released(&self, tasks: &[Task]) {
        let now = now_ms();
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for t in tasks {
            metrics().tasks_released.with_label_values(&[&t.team]).inc();
            tracker
                .team(&t.team)
                .released(&t.block.chain, t.block.number, now);
        }
    }
}

/// The plans kept for their leaves' release (see `Scheduler::record_released`): a few
/// thousand in a burst (one per planned block whose leaves wait in a queue), so the bounds
/// only matter for large inline payloads, which every plan carries with its block.
pub(crate) fn created_plans() -> Kept<(Plan, u64)> {
    Kept::new(32 << 20, 65_536, |key, (plan, _)| {
        let payload = match &plan.accepted.payload {
            Blob::Inline(bytes) => bytes.len(),
            Blob::Stored(_) => 128,
        };
        key.len() + payload + 512
    })
}

/// Tasks taken from a queue to be released, with their trace contexts.
type Released = Vec<(Task, TraceContext)>;

/// The id a task of `task`'s node has when first released; a re-run's differs.
fn first_task_id(task: &Task) -> String {
    let b = &task.block;
    task_id(&task.team, &b.chain, b.number, &b.hash, task.node)
}

/// A release batch's turn on its queue: no block's leaves skip past it until it is sent.
struct Sending<'a> {
    queues: &'a Mutex<Queues>,
    key: &'a QueueKey,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        if let Some(q) = queues.queues.get_mut(self.key) {
            q.sending = q.sending.saturating_sub(1);
        }
    }
}
