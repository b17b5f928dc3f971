//! Recovery: a restarted scheduler rebuilds the held work from KV, and a rejected proof's
//! task is rebuilt from its plan and recorded inputs.

use futures::StreamExt;
use push0_protocol::subjects::{final_key, plan_key};
use push0_protocol::{NodeId, PartRecord, Plan, Ready, Redo, Task, TeamConfig};
use push0_runtime::parts::recorded_children;
use push0_runtime::{RuntimeError, kv_get};

use crate::Scheduler;
use crate::plan::{aggregate_task, leaf_task};

impl Scheduler {
    /// Rebuilds the held work from KV after a restart: leaves never released, and aggregation
    /// nodes whose children are all proved but which were never released.
    pub(crate) async fn recover(&self) -> Result<(), RuntimeError> {
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
}
