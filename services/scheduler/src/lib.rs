//! scheduler: plans each team's workflow for every accepted block and releases the tasks to the
//! team's queues in priority order, holding back work while a queue already has enough
//! undelivered tasks. Every decision is recorded in KV, so a restarted scheduler re-releases
//! exactly what is missing.

mod oversight;
pub mod queue;
pub mod track;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use futures::StreamExt;
use push0_protocol::subjects::{block_key, cursor_key, final_key, plan_key, task_id};
use push0_protocol::{
    BlockAccepted, BlockState, BlockStatus, Cursor, DlqReason, LatePolicy, NodeId, PartRecord,
    Plan, Ready, Redo, Reorg, Task, TaskInput, TeamConfig, WireMessage, now_ms,
};
use push0_runtime::parts::recorded_children;
use push0_runtime::telemetry::{TraceContext, current_context, set_parent};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Registry, Rejection, RuntimeError, consume,
    kv_create, kv_get, kv_update, kv_update_at, kv_write, metrics, register_team,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::oversight::Withdrawal;
use crate::queue::{QueueKey, Queues};
use crate::track::{AlertConfig, CapacityView, Tracked, Tracker};

pub const SERVICE: &str = "scheduler";

#[derive(Debug, Clone)]
pub struct Config {
    /// Teams to write into the registry at start (from the teams file); None keeps the registry.
    pub teams: Option<Vec<TeamConfig>>,
    /// Most undelivered tasks a (team, class) queue may hold on the bus.
    pub max_undelivered: u64,
    /// How often a queue with held work is re-read from the server.
    pub poll_interval: Duration,
    pub alerts: AlertConfig,
    /// How often each team's status record is rewritten and its alerts judged.
    pub status_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            teams: None,
            max_undelivered: 16,
            poll_interval: Duration::from_millis(20),
            alerts: AlertConfig::default(),
            status_interval: Duration::from_secs(1),
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    if let Some(teams) = &config.teams {
        for team in teams {
            register_team(&bus, team).await?;
        }
    }
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let scheduler = Arc::new(Scheduler {
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        plans: bus.kv(&bus.subjects.bucket_plans()).await?,
        parts: bus.kv(&bus.subjects.bucket_parts()).await?,
        cursors: bus.kv(&bus.subjects.bucket_cursors()).await?,
        status: bus.kv(&bus.subjects.bucket_status()).await?,
        tracker: Mutex::new(Tracker::default()),
        capacity: Mutex::new(CapacityView::default()),
        bus: bus.clone(),
        registry,
        config,
        queues: Mutex::new(Queues::default()),
        consumers: tokio::sync::Mutex::new(HashMap::new()),
        wake: Notify::new(),
        published_from: Mutex::new(HashSet::new()),
        chains: Mutex::new(HashMap::new()),
    });
    scheduler.recover().await?;

    let releaser = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.release_loop(stop).await }
    });
    let housekeeper = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.housekeeping_loop(stop).await }
    });
    scheduler.watch_proofs(shutdown.clone()).await?;
    scheduler.watch_capacity(shutdown.clone()).await?;
    let accepted = AcceptedHandler(scheduler.clone());
    let ready = ReadyHandler(scheduler.clone());
    let poison = PoisonHandler {
        scheduler: scheduler.clone(),
        blobs: blobs.clone(),
    };
    let accepted_spec = bus.topology.scheduler_consumer();
    let ready_spec = bus.topology.scheduler_ready_consumer();
    let advisory_spec = bus.topology.scheduler_advisory_consumer();
    let stop = || shutdown.clone();
    let (a, r, p) = tokio::join!(
        consume(
            &bus,
            &blobs,
            &accepted_spec,
            SERVICE,
            "block-accepted",
            &accepted,
            stop()
        ),
        consume(&bus, &blobs, &ready_spec, SERVICE, "ready", &ready, stop()),
        consume(
            &bus,
            &blobs,
            &advisory_spec,
            SERVICE,
            "advisory",
            &poison,
            stop()
        ),
    );
    shutdown.cancel();
    let _ = releaser.await;
    let _ = housekeeper.await;
    a.and(r).and(p)
}

pub struct Scheduler {
    bus: Bus,
    registry: Registry,
    config: Config,
    blocks: kv::Store,
    plans: kv::Store,
    parts: kv::Store,
    cursors: kv::Store,
    status: kv::Store,
    tracker: Mutex<Tracker>,
    capacity: Mutex<CapacityView>,
    queues: Mutex<Queues>,
    consumers: tokio::sync::Mutex<HashMap<QueueKey, PullConsumer>>,
    wake: Notify,
    /// (team, chain)s whose cursor has published: planning never moves it again (a reorg's
    /// rewind keeps the count), so it is not read for their blocks.
    published_from: Mutex<HashSet<(String, String)>>,
    /// Per chain: blocks being planned hold it shared, a reorg notice alone (see
    /// [`AcceptedHandler`]).
    chains: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

fn leaf_task(team: &TeamConfig, plan: &Plan, node: NodeId) -> Task {
    let a = &plan.accepted;
    let (offset, len) = plan.workflow.leaf_range(a.payload.len(), node.index);
    Task {
        task_id: task_id(
            &team.name,
            &a.block.chain,
            a.block.number,
            &a.block.hash,
            node,
        ),
        team: team.name.clone(),
        class: team.class_of(node.level).to_string(),
        block: a.block.clone(),
        node,
        workflow: plan.workflow,
        input: TaskInput::Leaf {
            payload: a.payload.clone(),
            offset,
            len,
        },
        submitted_at_ms: a.submitted_at_ms,
        deadline_ms: plan.deadline_ms,
    }
}

fn aggregate_task(team: &TeamConfig, ready: &Ready) -> Task {
    let b = &ready.block;
    Task {
        task_id: task_id(&team.name, &b.chain, b.number, &b.hash, ready.node),
        team: team.name.clone(),
        class: team.class_of(ready.node.level).to_string(),
        block: b.clone(),
        node: ready.node,
        workflow: ready.workflow,
        input: TaskInput::Aggregate {
            children: ready.children.clone(),
        },
        submitted_at_ms: ready.submitted_at_ms,
        deadline_ms: ready.deadline_ms,
    }
}

impl Scheduler {
    fn enqueue(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let trace = current_context();
        let mut queues = self.queues.lock().expect("queues lock");
        for task in tasks {
            queues.push(task, trace.clone());
        }
        drop(queues);
        self.wake.notify_one();
    }

    /// The lock that orders `chain`'s reorg notices against the blocks planned around them.
    fn chain_lock(&self, chain: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.chains
            .lock()
            .expect("chains lock")
            .entry(chain.to_string())
            .or_default()
            .clone()
    }

    /// The first, synchronous step of planning `accepted` for `team`, taken while the block
    /// still holds its chain's place (see [`AcceptedHandler`]): the fresh plan, and on
    /// `team`'s leaf queue either room on the bus for its leaves (they go out while the plan
    /// is created) or a place in line that keeps the chain's later tasks back until they are
    /// queued. None if the team does not sample the block.
    fn arrive(
        &self,
        team: &TeamConfig,
        accepted: &BlockAccepted,
        redelivered: bool,
    ) -> Option<Arrival<'_>> {
        let b = &accepted.block;
        if !team.samples(b.number) {
            return None;
        }
        let fresh = Plan {
            team: team.name.clone(),
            accepted: accepted.clone(),
            workflow: team.workflow(),
            released: Vec::new(),
            planned_at_ms: now_ms(),
            failed: None,
            deadline_ms: team.deadline_for(accepted.submitted_at_ms, accepted.deadline_ms),
            withdrawn: None,
            finalized: false,
        };
        // Realtime proofs are published as they come, and a redelivery comes out of chain
        // order anyway: neither keeps a place.
        if redelivered || team.is_realtime() {
            return Some(Arrival {
                fresh,
                express: None,
                place: None,
            });
        }
        let key: QueueKey = (team.name.clone(), team.class_of(0).to_string());
        let n = fresh.workflow.leaves().count() as u64;
        let bound = self.config.max_undelivered;
        let express = {
            let mut queues = self.queues.lock().expect("queues lock");
            let q = queues.queues.entry(key.clone()).or_default();
            let room = q
                .undelivered
                .filter(|u| q.open_to(&b.chain) && u + n <= bound);
            q.arrive(&b.chain, b.number);
            room.map(|u| q.undelivered = Some(u + n)).is_some()
        };
        let express = express.then(|| {
            fresh
                .workflow
                .leaves()
                .map(|node| leaf_task(team, &fresh, node))
                .collect()
        });
        Some(Arrival {
            fresh,
            express,
            place: Some(Place {
                queues: &self.queues,
                wake: &self.wake,
                key,
                chain: b.chain.clone(),
                number: b.number,
            }),
        })
    }

    /// Plans a block for `team` after [`Scheduler::arrive`]: records the plan once, then
    /// queues the leaves not yet released. On a first delivery whose leaves would be released
    /// at once anyway, they go out while the plan is created (see
    /// [`Scheduler::plan_express`]). A redelivery queues every leaf again: a plan may record a
    /// leaf as released whose publish failed, and a repeat of one that went out is dropped by
    /// its msg-id.
    async fn plan(
        &self,
        team: &TeamConfig,
        arrival: Arrival<'_>,
        redelivered: bool,
    ) -> Result<(), RuntimeError> {
        let Arrival {
            fresh,
            express,
            mut place,
        } = arrival;
        let b = fresh.accepted.block.clone();
        let key = plan_key(&team.name, &b.chain, b.number);
        let created = match express {
            Some(leaves) => {
                if self
                    .plan_express(team, &key, &fresh, leaves, place.take())
                    .await?
                {
                    return Ok(());
                }
                false
            }
            None => kv_create(&self.plans, &key, &fresh).await?.is_some(),
        };
        let mut plan = if created {
            fresh.clone()
        } else {
            match kv_get::<Plan>(&self.plans, &key).await? {
                Some((existing, _)) => existing,
                None => fresh.clone(),
            }
        };
        if plan.accepted.block.hash != b.hash {
            let Some(replaced) = self.replace_orphan(team, plan, fresh).await? else {
                tracing::info!(team = %team.name, chain = %b.chain, number = b.number, "block is off the chain; not planned");
                return Ok(());
            };
            plan = replaced;
        }
        if plan.withdrawn.is_some() || plan.failed.is_some() {
            return Ok(());
        }
        self.track(team, &plan);
        // The first block planned for (team, chain) starts its publication order; a lower block
        // arriving before anything was published moves the start down. Realtime proofs are
        // published as they come: no order to keep.
        if !team.is_realtime() {
            self.start_cursor(team, &b).await?;
        }
        self.ensure_queue(team).await?;
        self.enqueue_leaves(team, &plan, redelivered);
        // Queued: the chain's later tasks may go out now.
        drop(place);
        Ok(())
    }

    /// Publishes `leaves` (their room taken by [`Scheduler::arrive`]) while creating
    /// `fresh`'s plan with them recorded as released: one round trip where queueing costs two
    /// and a plan write. The block's message is acked only after both, so if a publish fails
    /// the redelivery queues the leaves again. The block's `place` in line is given up once
    /// the leaves are on the connection (so they reach the server before anything sent
    /// after). True if the plan was created; false if one was there (an earlier delivery's or
    /// another block's at the height), which the caller reads and follows as usual (repeating
    /// a leaf that went out is harmless).
    async fn plan_express(
        &self,
        team: &TeamConfig,
        key: &str,
        fresh: &Plan,
        leaves: Vec<Task>,
        place: Option<Place<'_>>,
    ) -> Result<bool, RuntimeError> {
        let queue: QueueKey = (team.name.clone(), team.class_of(0).to_string());
        // The count taken for them is not right any more: the next release reads the bus.
        let forget = || {
            let mut queues = self.queues.lock().expect("queues lock");
            if let Some(q) = queues.queues.get_mut(&queue) {
                q.undelivered = None;
            }
        };
        // The aggregator counts on the cursor existing before a chain's first task.
        let ready = async {
            self.start_cursor(team, &fresh.accepted.block).await?;
            self.ensure_queue(team).await
        };
        if let Err(e) = ready.await {
            forget();
            return Err(e);
        }
        let recorded = Plan {
            released: leaves.iter().map(|t| t.node).collect(),
            ..fresh.clone()
        };
        let trace = current_context();
        let mut acks = Vec::with_capacity(leaves.len());
        for task in &leaves {
            acks.push(self.send_task(task, trace.clone()).await);
        }
        drop(place);
        let (created, sent) = tokio::join!(
            kv_create(&self.plans, key, &recorded),
            futures::future::join_all(acks)
        );
        if let Some(e) = sent.into_iter().find_map(Result::err) {
            forget();
            return Err(e);
        }
        // Out, so counted as released whatever the plan write did.
        let created = created.map(|c| c.is_some());
        if matches!(created, Ok(true)) {
            self.track(team, &recorded);
        }
        self.count_released(&leaves);
        created
    }

    /// Metrics and deadline tracking of tasks just published.
    fn count_released(&self, tasks: &[Task]) {
        let now = now_ms();
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for t in tasks {
            metrics().tasks_released.with_label_values(&[&t.team]).inc();
            tracker
                .team(&t.team)
                .released(&t.block.chain, t.block.number, now);
        }
    }

    /// A block arrived at a height where another one is planned. If ingest holds the new one
    /// as the chain's block there, the planned one was orphaned by a reorg: its work stops and
    /// the new plan takes its key. Otherwise the arrival is the stale one (a redelivery from
    /// before the reorg) and None is returned.
    async fn replace_orphan(
        &self,
        team: &TeamConfig,
        planned: Plan,
        fresh: Plan,
    ) -> Result<Option<Plan>, RuntimeError> {
        let b = &fresh.accepted.block;
        let canonical = kv_get::<BlockStatus>(&self.blocks, &block_key(&b.chain, b.number))
            .await?
            .is_some_and(|(s, _)| s.block.hash == b.hash && s.state != BlockState::Orphaned);
        if !canonical {
            return Ok(None);
        }
        let old = planned.accepted.block;
        self.withdraw(team, &old, Withdrawal::Orphaned).await?;
        let key = plan_key(&team.name, &b.chain, b.number);
        let written = kv_update::<Plan, _>(&self.plans, &key, |p| match p {
            Some(p) if p.accepted.block.hash == old.hash => Some(fresh.clone()),
            _ => None,
        })
        .await?;
        Ok(written.filter(|p| p.accepted.block.hash == b.hash))
    }

    /// A reorg notice: every orphaned block's work stops for every team, and a sequential
    /// team whose publication had passed the fork goes back to it, so the new branch's blocks
    /// are published in order there.
    async fn reorg(&self, reorg: &Reorg) -> Result<(), RuntimeError> {
        let chain = &reorg.block.chain;
        let Some(fork) = reorg.orphaned.iter().map(|o| o.number).min() else {
            return Ok(());
        };
        for team in self.registry.all() {
            if !team.proves_chain(chain) {
                continue;
            }
            for orphan in &reorg.orphaned {
                self.withdraw(&team, orphan, Withdrawal::Orphaned).await?;
            }
            if team.is_realtime() {
                continue;
            }
            // Written even when the cursor is not past the fork: a walk that read it before
            // ingest marked the orphans may be publishing a run past the fork right now. The
            // new revision fails that walk's cursor write, and it reads the cursor again.
            let mut rewound = false;
            kv_write::<Cursor, _>(&self.cursors, &cursor_key(&team.name, chain), |c| {
                let c = c?;
                rewound = c.next > fork;
                Some(Cursor {
                    next: c.next.min(fork),
                    published: c.published,
                })
            })
            .await?;
            if rewound {
                tracing::warn!(team = %team.name, chain, fork, "publication goes back to the fork height");
            }
        }
        Ok(())
    }

    async fn start_cursor(
        &self,
        team: &TeamConfig,
        b: &push0_protocol::BlockRef,
    ) -> Result<(), RuntimeError> {
        let lane = (team.name.clone(), b.chain.clone());
        if self
            .published_from
            .lock()
            .expect("cursor lock")
            .contains(&lane)
        {
            return Ok(());
        }
        let cursor = kv_update::<Cursor, _>(
            &self.cursors,
            &cursor_key(&team.name, &b.chain),
            |c| match c {
                None => Some(Cursor {
                    next: b.number,
                    published: 0,
                }),
                Some(c) if c.published == 0 && b.number < c.next => Some(Cursor {
                    next: b.number,
                    published: 0,
                }),
                Some(_) => None,
            },
        )
        .await?;
        if cursor.is_some_and(|c| c.published > 0) {
            self.published_from
                .lock()
                .expect("cursor lock")
                .insert(lane);
        }
        Ok(())
    }

    /// Queues the plan's leaves not recorded as released, or (`all`) every one.
    fn enqueue_leaves(&self, team: &TeamConfig, plan: &Plan, all: bool) {
        let tasks = plan
            .workflow
            .leaves()
            .filter(|n| all || !plan.released.contains(n))
            .map(|n| leaf_task(team, plan, n))
            .collect();
        self.enqueue(tasks);
    }

    /// Follows a planned block until its proof appears or its work stops.
    fn track(&self, team: &TeamConfig, plan: &Plan) {
        let b = &plan.accepted.block;
        let mut tracker = self.tracker.lock().expect("tracker lock");
        tracker.team(&team.name).planned(
            &b.chain,
            b.number,
            Tracked {
                hash: b.hash.clone(),
                deadline_ms: plan.deadline_ms,
                submitted_at_ms: plan.accepted.submitted_at_ms,
                first_release_ms: (!plan.released.is_empty()).then_some(plan.planned_at_ms),
            },
        );
    }

    /// The task of `redo.node` as first planned: a leaf from the plan, an aggregation from its
    /// children's recorded proofs. None if the plan or an input is missing.
    async fn rebuild_task(
        &self,
        team: &TeamConfig,
        redo: &Redo,
    ) -> Result<Option<Task>, RuntimeError> {
        let b = &redo.block;
        let Some((plan, _)) =
            kv_get::<Plan>(&self.plans, &plan_key(&team.name, &b.chain, b.number)).await?
        else {
            return Ok(None);
        };
        if plan.accepted.block.hash != b.hash || plan.withdrawn.is_some() {
            return Ok(None);
        }
        if redo.node.level == 0 {
            return Ok(Some(leaf_task(team, &plan, redo.node)));
        }
        self.aggregation_from_records(team, &plan, redo.node).await
    }

    /// The aggregation task of `node` with its children's recorded proofs; None while a child
    /// is unproved.
    async fn aggregation_from_records(
        &self,
        team: &TeamConfig,
        plan: &Plan,
        node: NodeId,
    ) -> Result<Option<Task>, RuntimeError> {
        let b = &plan.accepted.block;
        let Some(children) =
            recorded_children(&self.parts, &team.name, b, plan.workflow, node, None).await?
        else {
            return Ok(None);
        };
        let ready = Ready {
            team: team.name.clone(),
            block: b.clone(),
            node,
            workflow: plan.workflow,
            children,
            submitted_at_ms: plan.accepted.submitted_at_ms,
            deadline_ms: plan.accepted.deadline_ms,
        };
        Ok(Some(aggregate_task(team, &ready)))
    }

    async fn ensure_queue(&self, team: &TeamConfig) -> Result<(), RuntimeError> {
        let mut consumers = self.consumers.lock().await;
        for class in team.classes() {
            let key = (team.name.clone(), class.clone());
            if consumers.contains_key(&key) {
                continue;
            }
            let spec = self.bus.topology.task_consumer(team, &class);
            let consumer = self.bus.ensure_consumer(&spec).await?;
            consumers.insert(key, consumer);
        }
        Ok(())
    }

    /// Rebuilds the held work from KV after a restart: leaves never released, and aggregation
    /// nodes whose children are all proved but which were never released.
    async fn recover(&self) -> Result<(), RuntimeError> {
        let mut keys = match self.plans.keys().await {
            Ok(k) => k,
            Err(e) => return Err(RuntimeError::nats("list plans", e)),
        };
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            names.push(k.map_err(|e| RuntimeError::nats("list plans", e))?);
        }
        let mut recovered = 0usize;
        for key in names {
            let Some((plan, _)) = kv_get::<Plan>(&self.plans, &key).await? else {
                continue;
            };
            let Some(team) = self.registry.get(&plan.team) else {
                continue;
            };
            if plan.withdrawn.is_some() || plan.failed.is_some() {
                continue;
            }
            let b = &plan.accepted.block;
            if kv_get::<PartRecord>(&self.parts, &final_key(&team.name, b))
                .await?
                .is_some()
            {
                continue;
            }
            self.track(&team, &plan);
            self.ensure_queue(&team).await?;
            let mut tasks: Vec<Task> = plan
                .workflow
                .leaves()
                .filter(|n| !plan.released.contains(n))
                .map(|n| leaf_task(&team, &plan, n))
                .collect();
            for node in plan.workflow.nodes() {
                if node.level == 0 || plan.released.contains(&node) {
                    continue;
                }
                if let Some(task) = self.aggregation_from_records(&team, &plan, node).await? {
                    tasks.push(task);
                }
            }
            recovered += tasks.len();
            self.enqueue(tasks);
        }
        if recovered > 0 {
            tracing::info!(tasks = recovered, "recovered unreleased tasks");
        }
        Ok(())
    }

    async fn release_loop(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
            let keys: Vec<QueueKey> = {
                let queues = self.queues.lock().expect("queues lock");
                queues
                    .queues
                    .iter()
                    .filter(|(_, q)| q.held() > 0)
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            // Queues are independent: one team's slow publish does not hold up another's.
            let releases = keys.iter().map(|key| async move {
                if let Err(e) = self.release(key).await {
                    tracing::warn!(team = %key.0, class = %key.1, error = %e, "release failed, will retry");
                }
            });
            futures::future::join_all(releases).await;
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
        let read = || async {
            let undelivered = self.undelivered_on_bus(key).await?;
            let mut queues = self.queues.lock().expect("queues lock");
            if let Some(q) = queues.queues.get_mut(key) {
                q.undelivered = Some(undelivered);
            }
            Ok::<(), RuntimeError>(())
        };
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
                q.undelivered = q.undelivered.map(|n| n + batch.len() as u64);
                if !batch.is_empty() {
                    // Until sent, no block's leaves skip past them.
                    q.sending += 1;
                }
                metrics()
                    .tasks_held
                    .with_label_values(&[&key.0, &key.1])
                    .set(q.held() as i64);
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
    async fn send_task<'a>(
        &'a self,
        task: &'a Task,
        trace: TraceContext,
    ) -> impl Future<Output = Result<(), RuntimeError>> + 'a {
        let span = tracing::info_span!(
            "release",
            otel.name = "scheduler.release",
            team = %task.team,
            chain = %task.block.chain,
            number = task.block.number,
            node = %task.node,
        );
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
        if let Some((plan, revision)) = read {
            let Some(next) = add(&plan) else {
                return Ok(());
            };
            if kv_update_at(&self.plans, &key, &next, revision)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        kv_update::<Plan, _>(&self.plans, &key, |p| add(p?)).await?;
        Ok(())
    }
}

/// Tasks taken from a queue to be released, with their trace contexts.
type Released = Vec<(Task, TraceContext)>;

/// The id a task of `task`'s node has when first released; a re-run's differs.
fn first_task_id(task: &Task) -> String {
    let b = &task.block;
    task_id(&task.team, &b.chain, b.number, &b.hash, task.node)
}

struct AcceptedHandler(Arc<Scheduler>);

impl Handler for AcceptedHandler {
    // Blocks and reorg notices arrive on their chain's subject, in order there. A block lets
    // the chain's next message start once it has taken its place on each team's leaf queue
    // (room on the bus, or a place in line: so leaves go out in block order), and plans on
    // while the next one does: blocks' plans share no record. A reorg notice waits for the
    // blocks before it to be planned and holds the chain until it is handled.
    const ORDER: Order = Order::PerSubject;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        if delivery.schema.as_deref() == Some(Reorg::SCHEMA) {
            let reorg: Reorg = match delivery.decode() {
                Ok(r) => r,
                Err(e) => return Outcome::Reject(e.into()),
            };
            let _alone = self.0.chain_lock(&reorg.block.chain).write_owned().await;
            return match self.0.reorg(&reorg).await {
                Ok(()) => Outcome::Ack,
                Err(e) => {
                    tracing::warn!(error = %e, "handling a reorg failed, will retry");
                    Outcome::Retry(Duration::from_millis(200))
                }
            };
        }
        let accepted: BlockAccepted = match delivery.decode() {
            Ok(a) => a,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let s = &self.0;
        let accepted = &accepted;
        let redelivered = delivery.delivered > 1;
        let teams = s.registry.all();
        // Never waits: a reorg notice holding the chain holds its lane too.
        let _planning = s.chain_lock(&accepted.block.chain).read_owned().await;
        let arrivals: Vec<_> = teams
            .iter()
            .filter(|team| team.proves_chain(&accepted.block.chain))
            .filter_map(|team| Some((team, s.arrive(team, accepted, redelivered)?)))
            .collect();
        delivery.release_lane();
        // Teams' plans share no record: planned at once. Plans are created once; a
        // redelivery queues the block's leaves again (see `plan`).
        let plans = arrivals
            .into_iter()
            .map(|(team, arrival)| async move { (team, s.plan(team, arrival, redelivered).await) });
        let mut outcome = Outcome::Ack;
        for (team, planned) in futures::future::join_all(plans).await {
            if let Err(e) = planned {
                tracing::warn!(team = %team.name, error = %e, "planning failed, will retry");
                outcome = Outcome::Retry(Duration::from_millis(500));
            }
        }
        outcome
    }
}

/// A block's first planning step (see [`Scheduler::arrive`]).
struct Arrival<'a> {
    fresh: Plan,
    /// Room on the bus was taken for these leaves: they go out while the plan is created.
    express: Option<Vec<Task>>,
    place: Option<Place<'a>>,
}

/// A block's place on its team's leaf queue while it is on its way there: the chain's later
/// tasks wait behind it. Given up when dropped, and the releaser woken.
struct Place<'a> {
    queues: &'a Mutex<Queues>,
    wake: &'a Notify,
    key: QueueKey,
    chain: String,
    number: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        if let Some(q) = queues.queues.get_mut(&self.key)
            && q.arrived(&self.chain, self.number)
        {
            self.wake.notify_one();
        }
    }
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

struct ReadyHandler(Arc<Scheduler>);

impl ReadyHandler {
    /// A rejected result: rebuild the node's task from KV and queue it again under a fresh
    /// task id (so neither the task nor its result is dropped as a duplicate).
    async fn redo(&self, delivery: &Delivery) -> Outcome {
        let redo: Redo = match delivery.decode() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let s = &self.0;
        let Some(team) = s.registry.get(&redo.team) else {
            return Outcome::Reject(Rejection::unknown_team(&redo.team, &redo.block));
        };
        match s.rebuild_task(&team, &redo).await {
            Ok(Some(mut task)) => {
                task.task_id = format!("{}#r{}", task.task_id, redo.attempt);
                tracing::warn!(team = %team.name, task = %task.task_id, gateway = %redo.gateway, reason = %redo.reason, "re-running a task whose proof was rejected");
                if let Err(e) = s.ensure_queue(&team).await {
                    tracing::warn!(error = %e, "queue not ready, will retry");
                    return Outcome::Retry(Duration::from_millis(500));
                }
                s.enqueue(vec![task]);
                Outcome::Ack
            }
            Ok(None) => Outcome::Reject(
                Rejection::new(
                    DlqReason::InvalidField,
                    format!("no plan or inputs for node {} of this block", redo.node),
                )
                .team(&redo.team)
                .block(&redo.block),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding task failed, will retry");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

impl Handler for ReadyHandler {
    // Joins and redos are independent of each other: each only queues a task, whose msg-id
    // settles a join signalled twice.
    const ORDER: Order = Order::Unordered;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        if delivery.schema.as_deref() == Some(Redo::SCHEMA) {
            return self.redo(delivery).await;
        }
        let ready: Ready = match delivery.decode() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let s = &self.0;
        let Some(team) = s.registry.get(&ready.team) else {
            return Outcome::Reject(Rejection::unknown_team(&ready.team, &ready.block));
        };
        // Work of a withdrawn block, or a join already released, is dropped at release, where
        // the plan is read anyway.
        if let Err(e) = s.ensure_queue(&team).await {
            tracing::warn!(error = %e, "queue not ready, will retry");
            return Outcome::Retry(Duration::from_millis(500));
        }
        s.enqueue(vec![aggregate_task(&team, &ready)]);
        Outcome::Ack
    }
}

/// Poison tasks: a task that ran out of deliveries stays in the work queue (the server only sends an advisory)
/// and is reported on the advisories stream — by the team's gateways, which keep the delivery
/// limit, again on every redelivery until it is handled, or by the server in the same shape.
/// This files the task as a dead letter with its delivery count, marks the block failed for
/// the team, and deletes the task from the queue.
struct PoisonHandler {
    scheduler: Arc<Scheduler>,
    blobs: BlobStore,
}

impl Handler for PoisonHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let advisory: serde_json::Value = match serde_json::from_slice(delivery.payload()) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Reject(Rejection::new(
                    DlqReason::Malformed,
                    format!("advisory is not JSON: {e}"),
                ));
            }
        };
        let (Some(sequence), Some(deliveries)) = (
            advisory["stream_seq"].as_u64(),
            advisory["deliveries"].as_u64(),
        ) else {
            return Outcome::Reject(Rejection::new(
                DlqReason::Malformed,
                "advisory without stream_seq or deliveries",
            ));
        };
        let consumer = advisory["consumer"].as_str().unwrap_or("?").to_string();
        match self.dead_letter_task(sequence, deliveries, &consumer).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "poison task not handled yet, will retry");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }
}

impl PoisonHandler {
    /// The failures gateways reported for deliveries 1..=`deliveries` of a task.
    async fn attempts(&self, task_id: &str, deliveries: u64) -> Vec<push0_protocol::Attempt> {
        let bus = &self.scheduler.bus;
        let Ok(kv) = bus.kv(&bus.subjects.bucket_attempts()).await else {
            return Vec::new();
        };
        let mut history = Vec::new();
        for delivery in 1..=deliveries {
            let key = push0_protocol::subjects::attempt_key(task_id, delivery);
            if let Ok(Some((a, _))) =
                push0_runtime::kv_get::<push0_protocol::Attempt>(&kv, &key).await
            {
                history.push(a);
            }
        }
        history
    }

    async fn dead_letter_task(
        &self,
        sequence: u64,
        deliveries: u64,
        consumer: &str,
    ) -> Result<(), RuntimeError> {
        let bus = &self.scheduler.bus;
        let stream = bus
            .js
            .get_stream(bus.subjects.stream_tasks())
            .await
            .map_err(|e| RuntimeError::nats("get task stream", e))?;
        let Ok(message) = stream.get_raw_message(sequence).await else {
            // Gone already: handled before a crash, or acked late by a slow gateway.
            return Ok(());
        };
        let schema = message
            .headers
            .get(push0_protocol::SCHEMA_HEADER)
            .map(|v| v.as_str().to_string());
        let task = push0_protocol::decode::<Task>(schema.as_deref(), &message.payload).ok();
        let detail = format!("gave up after {deliveries} deliveries to consumer {consumer}");
        let mut rejection = Rejection::new(DlqReason::MaxDeliveries, detail.clone());
        if let Some(t) = &task {
            rejection = rejection.team(&t.team).block(&t.block).task(&t.task_id);
            rejection.history = self.attempts(&t.task_id, deliveries).await;
        }
        push0_runtime::consume::file_dead_letter(
            bus,
            &self.blobs,
            SERVICE,
            &rejection,
            message.subject.as_str(),
            sequence,
            schema,
            &message.payload,
        )
        .await?;
        if let Some(t) = &task {
            tracing::error!(team = %t.team, chain = %t.block.chain, number = t.block.number, node = %t.node, deliveries, "poison task dead-lettered; the block fails for this team");
            let key = plan_key(&t.team, &t.block.chain, t.block.number);
            let reason = format!("task {} {detail}", t.task_id);
            kv_update::<Plan, _>(&self.scheduler.plans, &key, |p| {
                let p = p.filter(|p| p.accepted.block.hash == t.block.hash)?;
                let mut p = p.clone();
                p.failed = Some(reason.clone());
                Some(p)
            })
            .await?;
            let mut tracker = self.scheduler.tracker.lock().expect("tracker lock");
            tracker.team(&t.team).forget(&t.block.chain, t.block.number);
        }
        stream
            .delete_message(sequence)
            .await
            .map_err(|e| RuntimeError::nats("delete poison task", e))?;
        Ok(())
    }
}
