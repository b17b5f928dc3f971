//! Recovery: a restarted scheduler rebuilds the held work from KV, deferred blocks come back
//! from their plans as the held work drains, and a rejected proof's task is rebuilt from its
//! plan and recorded inputs.

use futures::StreamExt;
use push0_protocol::subjects::{final_key, plan_key};
use push0_protocol::{NodeId, PartRecord, Plan, Ready, Redo, Task, TeamConfig};
use push0_runtime::parts::recorded_children;
use push0_runtime::{RuntimeError, kv_get, metrics};
use tokio_util::sync::CancellationToken;

use crate::Scheduler;
use crate::plan::{Moving, aggregate_task, leaf_task};

impl Scheduler {
    /// Rebuilds the held work from KV after a restart: leaves never released, and aggregation
    /// nodes whose children are all proved but which were never released. Plans are taken in
    /// (team, chain, number) order, so past a team's held bound a chain's later blocks are
    /// the ones deferred, as when they arrived.
    pub(crate) async fn recover(&self) -> Result<(), RuntimeError> {
        let mut keys = match self.plans.keys().await {
            Ok(k) => k,
            Err(e) => return Err(RuntimeError::nats("list plans", e)),
        };
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let key = k.map_err(|e| RuntimeError::nats("list plans", e))?;
            // `{team}.{chain}.{number}`: sorted by the part before the number, then by it.
            let (lane, number) = key.rsplit_once('.').unwrap_or((key.as_str(), ""));
            names.push((lane.to_string(), number.parse::<u64>().unwrap_or(0), key));
        }
        names.sort_unstable();
        let (mut recovered, mut deferred) = (0usize, 0usize);
        for (_, _, key) in names {
            let Some((plan, _)) = kv_get::<Plan>(&self.plans, &key).await? else {
                continue;
            };
            let Some(team) = self.registry.get(&plan.team) else {
                continue;
            };
            // A finalized plan's proof is published: nothing of it is left to do.
            if plan.withdrawn.is_some() || plan.failed.is_some() || plan.finalized {
                continue;
            }
            self.ensure_queue(&team).await?;
            let b = &plan.accepted.block;
            let leaves = plan.workflow.leaves().count() as u64;
            let defer = {
                let mut queues = self.queues.lock().expect("queues lock");
                let defer = queues.defer(&team.name, &b.chain, b.number, self.config.max_held);
                if defer {
                    let chain = (team.name.clone(), b.chain.clone());
                    queues.settle(&chain, b.number, Some((leaves, false)));
                }
                defer
            };
            if defer {
                let mut tracker = self.tracker.lock().expect("tracker lock");
                tracker.team(&team.name).deferred(&b.chain, b.number);
                deferred += 1;
                metrics()
                    .blocks_deferred
                    .with_label_values(&[&team.name])
                    .inc();
                continue;
            }
            let Some(tasks) = self.held_work(&team, &plan, false).await? else {
                continue;
            };
            self.track(&team, &plan);
            recovered += tasks.len();
            self.enqueue(tasks);
        }
        if recovered > 0 || deferred > 0 {
            tracing::info!(
                tasks = recovered,
                deferred_blocks = deferred,
                "recovered unreleased tasks"
            );
        }
        Ok(())
    }

    /// The work of `plan` still to release, or None if the block is proved: the leaves not
    /// recorded as released (or, `all`, every leaf) and each aggregation not released whose
    /// children are all proved. A plan with nothing released is answered without a read.
    async fn held_work(
        &self,
        team: &TeamConfig,
        plan: &Plan,
        all: bool,
    ) -> Result<Option<Vec<Task>>, RuntimeError> {
        let b = &plan.accepted.block;
        let mut tasks: Vec<Task> = plan
            .workflow
            .leaves()
            .filter(|n| all || !plan.released.contains(n))
            .map(|n| leaf_task(team, plan, n))
            .collect();
        if plan.released.is_empty() {
            return Ok(Some(tasks));
        }
        if kv_get::<PartRecord>(&self.parts, &final_key(&team.name, b))
            .await?
            .is_some()
        {
            return Ok(None);
        }
        for node in plan.workflow.nodes() {
            if node.level == 0 || plan.released.contains(&node) {
                continue;
            }
            if let Some(task) = self.aggregation_from_records(team, plan, node).await? {
                tasks.push(task);
            }
        }
        Ok(Some(tasks))
    }

    /// Brings deferred blocks back into the queues of each team whose held work drained to
    /// half its bound.
    pub(crate) async fn refill_loop(&self, shutdown: CancellationToken) {
        let max = self.config.max_held;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
            let teams: Vec<String> = {
                let queues = self.queues.lock().expect("queues lock");
                let mut teams: Vec<String> = queues
                    .deferring_teams()
                    .into_iter()
                    .filter(|team| queues.team_held(team) <= max / 2)
                    .collect();
                teams.sort_unstable();
                teams
            };
            for name in teams {
                let Some(team) = self.registry.get(&name) else {
                    continue;
                };
                if let Err(e) = self.refill(&team).await {
                    tracing::warn!(team = %name, error = %e, kind = e.kind().as_str(), "bringing deferred blocks back failed, will retry");
                }
            }
        }
    }

    /// Queues the team's deferred blocks, lowest first, until it holds its bound of tasks.
    async fn refill(&self, team: &TeamConfig) -> Result<(), RuntimeError> {
        self.ensure_queue(team).await?;
        let mut blocks = 0u64;
        loop {
            let next = {
                let mut queues = self.queues.lock().expect("queues lock");
                if queues.team_held(&team.name) >= self.config.max_held {
                    None
                } else {
                    queues.take_deferred(&team.name)
                }
            };
            let Some((key, number, leaves, all)) = next else {
                break;
            };
            // Put back if anything below fails.
            let mut moving = Moving {
                queues: &self.queues,
                key,
                number,
                waiting: Some((leaves, all)),
            };
            // Alone on the chain from the read to the queueing: a reorg notice, or a block
            // replacing this one at its height, withdraws the block either before the read
            // (seen in the plan) or after its tasks are queued (which it clears).
            let _alone = self.hold_chain(&moving.key.1, true).await;
            let key = plan_key(&team.name, &moving.key.1, number);
            let plan = kv_get::<Plan>(&self.plans, &key).await?.map(|(p, _)| p);
            let live = plan
                .as_ref()
                .filter(|p| p.withdrawn.is_none() && p.failed.is_none() && !p.finalized);
            if plan.is_none() {
                tracing::warn!(team = %team.name, plan = %key, "a deferred block's plan is gone (expired?); its work is not queued");
            }
            if let Some(plan) = live
                && let Some(tasks) = self.held_work(team, plan, all).await?
                && self.registry.get(&team.name).is_some()
            {
                self.track(team, plan);
                self.enqueue(tasks);
            }
            moving.waiting = None;
            blocks += 1;
        }
        if blocks > 0 {
            tracing::debug!(team = %team.name, blocks, "deferred blocks queued");
        }
        Ok(())
    }

    /// The task of `redo.node` as first planned: a leaf from the plan, an aggregation from its
    /// children's recorded proofs. None if the plan or an input is missing.
    pub(crate) async fn rebuild_task(
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
            recorded_children(&self.parts, &team.name, b, plan.workflow, node, &[]).await?
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
}
