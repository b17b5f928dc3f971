//! aggregator: records each proved part once (the first result wins), tells the scheduler when
//! an aggregation's inputs are complete, and publishes each block's proof exactly once, in block
//! order per (team, chain): a proof that finishes early waits for its predecessors.

use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::DlqReason;
use push0_protocol::subjects::{cursor_key, final_key, part_key, proof_msg_id};
use push0_protocol::{
    Blob, BlockProof, ChildProof, Cursor, NodeId, PartRecord, Ready, TaskOutcome, TaskResult,
    now_ms,
};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Outcome, Registry, Rejection, RuntimeError, consume,
    kv_create, kv_get, kv_update, metrics,
};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "aggregator";

/// Runs the aggregator until `shutdown`.
pub async fn run(bus: Bus, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let handler = Aggregator {
        parts: bus.kv(&bus.subjects.bucket_parts()).await?,
        cursors: bus.kv(&bus.subjects.bucket_cursors()).await?,
        bus: bus.clone(),
        registry,
    };
    let spec = bus.topology.aggregator_consumer();
    consume(
        &bus,
        &blobs,
        &spec,
        SERVICE,
        "task-result",
        &handler,
        shutdown,
    )
    .await
}

struct Aggregator {
    bus: Bus,
    registry: Registry,
    parts: kv::Store,
    cursors: kv::Store,
}

impl Handler for Aggregator {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let result: TaskResult = match delivery.decode() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.into()),
        };
        if self.registry.get(&result.team).is_none() {
            return Outcome::Reject(
                Rejection::new(
                    DlqReason::UnknownTeam,
                    format!("result for unregistered team {}", result.team),
                )
                .team(&result.team)
                .block(&result.block)
                .task(&result.task_id),
            );
        }
        if !result.workflow.contains(result.node) {
            return Outcome::Reject(
                Rejection::new(
                    DlqReason::InvalidField,
                    format!(
                        "node {} is not in workflow {:?}",
                        result.node, result.workflow
                    ),
                )
                .team(&result.team)
                .task(&result.task_id),
            );
        }
        match self.record(result).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "recording result failed, will retry");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

impl Aggregator {
    async fn record(&self, result: TaskResult) -> Result<Outcome, RuntimeError> {
        let (proof, proof_system) = match &result.outcome {
            TaskOutcome::Proved {
                proof,
                proof_system,
                ..
            } => (proof.clone(), proof_system.clone()),
            TaskOutcome::Failed { reason, detail } => {
                tracing::error!(team = %result.team, chain = %result.block.chain, number = result.block.number, node = %result.node, reason = %reason, "task failed permanently; block cannot be proved for this team");
                return Ok(Outcome::Reject(
                    Rejection::new(*reason, detail.clone())
                        .team(&result.team)
                        .block(&result.block)
                        .task(&result.task_id),
                ));
            }
        };
        let b = &result.block;
        let record = PartRecord {
            task_id: result.task_id.clone(),
            block: b.clone(),
            node: result.node,
            proof,
            proof_system,
            prove_ms: result.prove_ms,
            critical_ms: result.inputs_critical_ms + result.prove_ms,
            gateway: result.gateway.clone(),
            submitted_at_ms: result.submitted_at_ms,
            recorded_at_ms: now_ms(),
        };
        let key = part_key(&result.team, &b.chain, b.number, result.node);
        if !kv_create(&self.parts, &key, &record).await? {
            // A redelivery or a late duplicate: the first result stands. The steps below are
            // idempotent and run again in case the first handling stopped half-way.
            metrics().duplicates.with_label_values(&[SERVICE]).inc();
        }
        let record = match kv_get::<PartRecord>(&self.parts, &key).await? {
            Some((r, _)) => r,
            None => record,
        };
        if result.workflow.is_root(result.node) {
            let fkey = final_key(&result.team, &b.chain, b.number);
            kv_create(&self.parts, &fkey, &record).await?;
            self.publish_in_order(&result.team, &b.chain).await?;
        } else {
            self.signal_parent(&result, result.node).await?;
        }
        Ok(Outcome::Ack)
    }

    /// If every sibling of `node` is proved, tells the scheduler to release their parent.
    async fn signal_parent(&self, result: &TaskResult, node: NodeId) -> Result<(), RuntimeError> {
        let w = result.workflow;
        let Some(parent) = w.parent(node) else {
            return Ok(());
        };
        let b = &result.block;
        let mut children = Vec::new();
        for child in w.children(parent) {
            let key = part_key(&result.team, &b.chain, b.number, child);
            let Some((rec, _)) = kv_get::<PartRecord>(&self.parts, &key).await? else {
                return Ok(());
            };
            children.push(ChildProof {
                node: child,
                proof: rec.proof,
                proof_system: rec.proof_system,
                critical_ms: rec.critical_ms,
            });
        }
        let ready = Ready {
            team: result.team.clone(),
            block: b.clone(),
            node: parent,
            workflow: w,
            children,
            submitted_at_ms: result.submitted_at_ms,
            deadline_ms: result.deadline_ms,
        };
        let msg_id = format!("ready/{}/{}/{}/{}", result.team, b.chain, b.number, parent);
        self.bus
            .publish(self.bus.subjects.ready(&result.team), &ready, Some(&msg_id))
            .await?;
        Ok(())
    }

    /// Publishes every finished block at the head of (team, chain)'s cursor, moving the cursor
    /// with compare-and-set after each publication. The proof's msg-id makes a publication
    /// repeated after a crash between the two steps harmless.
    async fn publish_in_order(&self, team: &str, chain: &str) -> Result<(), RuntimeError> {
        let ckey = cursor_key(team, chain);
        loop {
            let Some((cursor, _)) = kv_get::<Cursor>(&self.cursors, &ckey).await? else {
                // The scheduler creates the cursor before releasing any task of the chain.
                return Ok(());
            };
            let number = cursor.next;
            let Some((root, _)) =
                kv_get::<PartRecord>(&self.parts, &final_key(team, chain, number)).await?
            else {
                return Ok(());
            };
            self.publish_proof(team, chain, number, &root).await?;
            kv_update::<Cursor, _>(&self.cursors, &ckey, |c| match c {
                Some(c) if c.next == number => Some(Cursor {
                    next: number + 1,
                    published: c.published + 1,
                }),
                _ => None,
            })
            .await?;
        }
    }

    async fn publish_proof(
        &self,
        team: &str,
        chain: &str,
        number: u64,
        root: &PartRecord,
    ) -> Result<(), RuntimeError> {
        let published_at_ms = now_ms();
        let latency_ms = published_at_ms.saturating_sub(root.submitted_at_ms);
        let (proof, proof_ref) = match &root.proof {
            Blob::Inline(bytes) => (Some(bytes.clone()), None),
            Blob::Stored(r) => (None, Some(r.clone())),
        };
        let message = BlockProof {
            team: team.to_string(),
            chain: chain.to_string(),
            number,
            hash: root.block.hash.clone(),
            proof,
            proof_ref,
            proof_system: root.proof_system.clone(),
            proving_ms: root.critical_ms,
            latency_ms,
            submitted_at_ms: root.submitted_at_ms,
            published_at_ms,
        };
        let ack = self
            .bus
            .publish(
                self.bus.subjects.proofs(team, chain),
                &message,
                Some(&proof_msg_id(team, chain, number)),
            )
            .await?;
        if ack.duplicate {
            return Ok(());
        }
        let m = metrics();
        m.blocks_finalized.with_label_values(&[team]).inc();
        m.block_latency
            .with_label_values(&[team])
            .observe(latency_ms as f64 / 1000.0);
        let overhead_ms = latency_ms.saturating_sub(root.critical_ms);
        m.overhead
            .with_label_values(&[team])
            .observe(overhead_ms as f64 / 1000.0);
        tracing::info!(
            team,
            chain,
            number,
            latency_ms,
            proving_ms = root.critical_ms,
            overhead_ms,
            "block proof published"
        );
        Ok(())
    }
}
