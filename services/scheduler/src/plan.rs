//! Planning: a block's workflow per team, recorded once, its leaves queued or sent at once;
//! the joins the aggregator signals, queued as aggregation tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use push0_protocol::subjects::{block_key, cursor_key, plan_key, task_id};
use push0_protocol::{
    BlockAccepted, BlockState, BlockStatus, Cursor, DlqReason, NodeId, Plan, Ready, Redo, Reorg,
    Task, TaskInput, TeamConfig, WireMessage, now_ms,
};
use push0_runtime::telemetry::current_context;
use push0_runtime::{
    Delivery, Handler, Order, Outcome, Rejection, RuntimeError, kv_create, kv_get, kv_update,
    kv_write, metrics, retry_after_error,
};
use tokio::sync::Notify;

use crate::oversight::Withdrawal;
use crate::queue::{ChainKey, QueueKey, Queues};
use crate::track::Tracked;
use crate::{SERVICE, Scheduler};

/// (team, chain)s remembered as past their first publication (see `Scheduler::start_cursor`).
const PUBLISHED_FROM_MAX: usize = 4096;

impl Scheduler {
    pub(crate) fn enqueue(&self, tasks: Vec<Task>) {
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

    /// Holds the lock that orders `chain`'s reorg notices against the blocks planned around
    /// them: shared while a block is planned, `alone` for a reorg notice.
    pub(crate) async fn hold_chain(&self, chain: &str, alone: bool) -> ChainHold<'_> {
        let lock = self
            .chains
            .lock()
            .expect("chains lock")
            .entry(chain.to_string())
            .or_default()
            .clone();
        let guard: Box<dyn Send> = match alone {
            true => Box::new(lock.write_owned().await),
            false => Box::new(lock.read_owned().await),
        };
        ChainHold {
            scheduler: self,
            chain: chain.to_string(),
            guard: Some(guard),
        }
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
        let deferred = {
            let mut queues = self.queues.lock().expect("queues lock");
            queues.defer(&team.name, &b.chain, b.number, self.config.max_held)
        };
        if deferred {
            return Some(Arrival {
                fresh,
                express: None,
                place: None,
                deferred: Some(Moving {
                    queues: &self.queues,
                    key: (team.name.clone(), b.chain.clone()),
                    number: b.number,
                    waiting: None,
                }),
            });
        }
        // Realtime proofs are published as they come, and a redelivery comes out of chain
        // order anyway: neither keeps a place.
        if redelivered || team.is_realtime() {
            return Some(Arrival {
                fresh,
                express: None,
                place: None,
                deferred: None,
            });
        }
        let key: QueueKey = (team.name.clone(), team.class_of(0).to_string());
        let n = fresh.workflow.leaves().count() as u64;
        let bound = self.config.max_undelivered;
        let express = {
            let mut queues = self.queues.lock().expect("queues lock");
            let q = queues.queues.entry(key.clone()).or_default();
            let room = q.take_room(n, bound, q.open_to(&b.chain));
            q.arrive(&b.chain, b.number);
            if !room {
                queues.promise(&team.name, n as usize);
            }
            room
        };
        let promised = if express { 0 } else { n as usize };
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
                promised,
            }),
            deferred: None,
        })
    }

    /// Plans a block for `team` after [`Scheduler::arrive`]: records the plan once, then
    /// queues the leaves not yet released, or (deferred) leaves them in the plan until the
    /// team's held work drains. On a first delivery whose leaves would be released at once
    /// anyway, they go out while the plan is created (see [`Scheduler::plan_express`]). A redelivery queues every leaf again: a plan may record a
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
            deferred,
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
            None => {
                let created = kv_create(&self.plans, &key, &fresh).await?;
                // Its leaves are queued below, and their release records them in it.
                if let Some(revision) = created
                    && deferred.is_none()
                {
                    self.created.keep(key.clone(), (fresh.clone(), revision));
                }
                created.is_some()
            }
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
        // The first block planned for (team, chain) starts its publication order, deferred or
        // not; a lower block arriving before anything was published moves the start down.
        // Realtime proofs are published as they come: no order to keep.
        if !team.is_realtime() {
            self.start_cursor(team, &b).await?;
        }
        if let Some(mut deferred) = deferred {
            self.tracker
                .lock()
                .expect("tracker lock")
                .team(&team.name)
                .deferred(&b.chain, b.number);
            let leaves = plan.workflow.leaves().count() as u64;
            deferred.waiting = Some((leaves, redelivered));
            metrics()
                .blocks_deferred
                .with_label_values(&[&team.name])
                .inc();
            return Ok(());
        }
        self.track(team, &plan);
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
            let mut known = self.published_from.lock().expect("cursor lock");
            // A cache of settled cursors: emptied when full, it only costs reads again.
            if known.len() >= PUBLISHED_FROM_MAX {
                known.clear();
            }
            known.insert(lane);
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
    pub(crate) fn track(&self, team: &TeamConfig, plan: &Plan) {
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

    pub(crate) async fn ensure_queue(&self, team: &TeamConfig) -> Result<(), RuntimeError> {
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
}

pub(crate) fn leaf_task(team: &TeamConfig, plan: &Plan, node: NodeId) -> Task {
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

pub(crate) fn aggregate_task(team: &TeamConfig, ready: &Ready) -> Task {
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

/// A hold on a chain's lock. When the last hold of a chain ends (no other held or awaited),
/// the chain's lock is dropped: the map keeps the chains with a block being planned or a reorg
/// being handled, whatever chain names sources use.
pub(crate) struct ChainHold<'a> {
    scheduler: &'a Scheduler,
    chain: String,
    /// The read or write guard.
    guard: Option<Box<dyn Send>>,
}

impl Drop for ChainHold<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Every other holder or waiter keeps a clone of the lock: only the map's is left.
        let mut chains = self.scheduler.chains.lock().expect("chains lock");
        if chains
            .get(&self.chain)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            chains.remove(&self.chain);
        }
    }
}

pub(crate) struct AcceptedHandler(pub(crate) Arc<Scheduler>);

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
            let _alone = self.0.hold_chain(&reorg.block.chain, true).await;
            return match self.0.reorg(&reorg).await {
                Ok(()) => Outcome::Ack,
                Err(e) => {
                    retry_after_error(SERVICE, "handling a reorg", &e, Duration::from_millis(200))
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
        let _planning = s.hold_chain(&accepted.block.chain, false).await;
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
                let _team = tracing::info_span!("plan", team = %team.name).entered();
                outcome = retry_after_error(SERVICE, "planning", &e, Duration::from_millis(500));
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
    /// The team holds all it may: the block is planned, its work left in the plan.
    deferred: Option<Moving<'a>>,
}

/// A deferred block on its way into the waiting ones (its plan being written) or out of them
/// (its plan being read back into the queues); settled when dropped, as waiting if `waiting`
/// is set (see [`Queues::defer`]).
pub(crate) struct Moving<'a> {
    pub(crate) queues: &'a Mutex<Queues>,
    pub(crate) key: ChainKey,
    pub(crate) number: u64,
    /// Its leaves and whether all go out again.
    pub(crate) waiting: Option<(u64, bool)>,
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.settle(&self.key, self.number, self.waiting);
        }
    }
}

/// A block's place on its team's leaf queue while it is on its way there: the chain's later
/// tasks wait behind it. Given up when dropped, and the releaser woken.
struct Place<'a> {
    queues: &'a Mutex<Queues>,
    wake: &'a Notify,
    key: QueueKey,
    chain: String,
    number: u64,
    /// Leaves promised to the team's queues (see [`Queues::promise`]): none if they go out
    /// at once.
    promised: usize,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        queues.delivered(&self.key.0, self.promised);
        if let Some(q) = queues.queues.get_mut(&self.key)
            && q.arrived(&self.chain, self.number)
        {
            self.wake.notify_one();
        }
    }
}

pub(crate) struct ReadyHandler(pub(crate) Arc<Scheduler>);

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
                    return retry_after_error(SERVICE, "the queue", &e, Duration::from_millis(500));
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
            Err(e) => retry_after_error(
                SERVICE,
                "rebuilding the task",
                &e,
                Duration::from_millis(500),
            ),
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
            return retry_after_error(SERVICE, "the queue", &e, Duration::from_millis(500));
        }
        let task = aggregate_task(&team, &ready);
        match s.express_join(&team, &task, current_context()).await {
            Ok(true) => Outcome::Ack,
            Ok(false) => {
                s.enqueue(vec![task]);
                Outcome::Ack
            }
            Err(e) => retry_after_error(SERVICE, "the join", &e, Duration::from_millis(500)),
        }
    }
}
