//! aggregator: records each proved part once (the first result wins), tells the scheduler when
//! an aggregation's inputs are complete, and publishes each block's proof exactly once, in block
//! order per (team, chain): a proof that finishes early waits for its predecessors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::DlqReason;
use push0_protocol::bundle::bundled_system;
use push0_protocol::subjects::{
    block_key, cursor_key, final_key, part_key, plan_key, proof_msg_id, short_hash,
};
use push0_protocol::{
    Blob, BlockProof, BlockRef, BlockState, BlockStatus, Cursor, InvalidCount, PartRecord, Plan,
    Ready, Redo, TaskOutcome, TaskResult, TeamConfig, now_ms,
};
use push0_runtime::parts::recorded_children;
use push0_runtime::verifier::{run_verifier, verify_bundle};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Registry, Rejection, RuntimeError, consume,
    kv_create, kv_get, kv_update, kv_update_at, metrics,
};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "aggregator";

/// A publication cursor and a block's status, each with its revision, as read.
type Head = (Option<(Cursor, u64)>, Option<(BlockStatus, u64)>);

/// A verifier taking longer than this is treated as a failure of the verifier, not the proof.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Proofs a walk publishes before it writes the cursor: what a crash may publish again.
const MAX_RUN: u64 = 32;

/// Runs the aggregator until `shutdown`.
pub async fn run(bus: Bus, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let handler = Aggregator {
        blobs: blobs.clone(),
        parts: bus.kv(&bus.subjects.bucket_parts()).await?,
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        cursors: bus.kv(&bus.subjects.bucket_cursors()).await?,
        plans: bus.kv(&bus.subjects.bucket_plans()).await?,
        bus: bus.clone(),
        registry,
        walks: Walks::default(),
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
    blobs: BlobStore,
    registry: Registry,
    parts: kv::Store,
    blocks: kv::Store,
    cursors: kv::Store,
    plans: kv::Store,
    walks: Walks,
}

impl Handler for Aggregator {
    // Results are handled as they come: a part is recorded by a create (the first stands), a
    // join is signalled under a msg-id by whichever sibling sees all of them recorded, and the
    // publication walk moves its cursor by compare-and-set.
    const ORDER: Order = Order::Unordered;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let result: TaskResult = match delivery.decode() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let Some(team) = self.registry.get(&result.team) else {
            return Outcome::Reject(
                Rejection::unknown_team(&result.team, &result.block).task(&result.task_id),
            );
        };
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
        match self.record(&team, result).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "recording result failed, will retry");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

impl Aggregator {
    async fn record(&self, team: &TeamConfig, result: TaskResult) -> Result<Outcome, RuntimeError> {
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
        // A root is recorded once, under the block's final key: what the publication walk
        // reads. Every other node under its part key, where its parent's join looks.
        let root = result.workflow.is_root(result.node);
        let key = match root {
            true => final_key(&result.team, b),
            false => part_key(&result.team, b, result.node),
        };
        // The first recorded result of a node stands; only a new one is verified. A team that
        // checks nothing goes straight to the create, which settles duplicates by itself.
        let mut head = None;
        let first = match team.checks_proofs() {
            true => kv_get::<PartRecord>(&self.parts, &key)
                .await?
                .map(|(r, _)| r),
            false => None,
        };
        let record = match first {
            Some(first) => {
                metrics().duplicates.with_label_values(&[SERVICE]).inc();
                first
            }
            None => {
                if let Some(reason) = self.check_proof(team, &record).await? {
                    return self.reject_proof(team, &result, &key, reason).await;
                }
                // The head of the publication order is read while a root is written: the walk
                // starts from it instead of reading it after. Not while a walk of the cursor
                // runs here: the root is handed to that one, which has the head.
                let walking = self.walks.running(&cursor_key(&result.team, &b.chain));
                let read_head = root && !team.is_realtime() && !walking;
                let (created, read) = tokio::join!(kv_create(&self.parts, &key, &record), async {
                    match read_head {
                        true => Some(self.read_head(&result.team, b).await),
                        false => None,
                    }
                });
                head = read.transpose()?;
                if created?.is_some() {
                    record
                } else {
                    // A redelivery or a late duplicate. The steps below are idempotent and run
                    // again in case the first handling stopped half-way.
                    metrics().duplicates.with_label_values(&[SERVICE]).inc();
                    kv_get::<PartRecord>(&self.parts, &key)
                        .await?
                        .map_or(record, |(r, _)| r)
                }
            }
        };
        if !root {
            self.signal_parent(&result, &record).await?;
        } else if team.is_realtime() {
            self.publish_now(&result.team, &b.chain, b.number, &record)
                .await?;
        } else {
            self.publish_in_order(&result.team, &b.chain, &record, head)
                .await?;
        }
        Ok(Outcome::Ack)
    }

    /// Why a proof is not acceptable, or None if it is: the team's proof system, then the
    /// team's verifier (when one is configured).
    async fn check_proof(
        &self,
        team: &TeamConfig,
        record: &PartRecord,
    ) -> Result<Option<String>, RuntimeError> {
        let bundle = bundled_system(&record.proof_system);
        if let Some(expected) = &team.proof_system
            && *expected != record.proof_system
            && bundle != Some(expected.as_str())
        {
            return Ok(Some(format!(
                "proof system {} where {expected} is expected",
                record.proof_system
            )));
        }
        if team.verifier.is_empty() {
            return Ok(None);
        }
        let bytes = self.blobs.get(&record.proof).await?;
        let verdict = match bundle {
            Some(_) => verify_bundle(&team.verifier, &bytes, VERIFY_TIMEOUT).await?,
            None => run_verifier(&team.verifier, &bytes, VERIFY_TIMEOUT).await?,
        };
        Ok((!verdict.valid).then_some(verdict.detail))
    }

    /// A proof failed verification: count it against its gateway and have the task run again,
    /// or, past the team's retry limit, dead-letter it (the block fails for this team).
    async fn reject_proof(
        &self,
        team: &TeamConfig,
        result: &TaskResult,
        key: &str,
        reason: String,
    ) -> Result<Outcome, RuntimeError> {
        metrics()
            .invalid_proofs
            .with_label_values(&[&result.team, &result.gateway])
            .inc();
        // Results are handled concurrently: if a valid result of the node was recorded
        // meanwhile, it stands, and the node needs no new run.
        if kv_get::<PartRecord>(&self.parts, key).await?.is_some() {
            tracing::warn!(team = %result.team, gateway = %result.gateway, task = %result.task_id, reason = %reason, "proof rejected; the node has a valid one");
            return Ok(Outcome::Ack);
        }
        let counted = kv_update::<InvalidCount, _>(&self.parts, &format!("{key}.invalid"), |c| {
            Some(InvalidCount {
                count: c.map_or(0, |c| c.count) + 1,
            })
        })
        .await?;
        let attempt = counted.map_or(1, |c| c.count);
        tracing::warn!(team = %result.team, gateway = %result.gateway, task = %result.task_id, attempt, reason = %reason, "proof rejected");
        let max_deliver = team.limits(team.class_of(result.node.level)).max_deliver;
        if attempt >= max_deliver.max(1) as u64 {
            tracing::error!(team = %result.team, chain = %result.block.chain, number = result.block.number, node = %result.node, "no valid proof after {attempt} attempts; block fails for this team");
            return Ok(Outcome::Reject(
                Rejection::new(
                    DlqReason::InvalidProof,
                    format!(
                        "{attempt} invalid proofs, last from gateway {}: {reason}",
                        result.gateway
                    ),
                )
                .team(&result.team)
                .block(&result.block)
                .task(&result.task_id),
            ));
        }
        let redo = Redo {
            team: result.team.clone(),
            block: result.block.clone(),
            node: result.node,
            workflow: result.workflow,
            attempt,
            reason,
            gateway: result.gateway.clone(),
        };
        self.bus
            .publish(
                self.bus.subjects.ready(&result.team),
                &redo,
                Some(&format!("redo/{key}/{attempt}")),
            )
            .await?;
        Ok(Outcome::Ack)
    }

    /// If every sibling of the node `recorded` proves is proved too, tells the scheduler to
    /// release their parent. `recorded` is the node's record as it stands, so only its
    /// siblings are read.
    async fn signal_parent(
        &self,
        result: &TaskResult,
        recorded: &PartRecord,
    ) -> Result<(), RuntimeError> {
        let w = result.workflow;
        let Some(parent) = w.parent(recorded.node) else {
            return Ok(());
        };
        let b = &result.block;
        let Some(children) =
            recorded_children(&self.parts, &result.team, b, w, parent, Some(recorded)).await?
        else {
            return Ok(());
        };
        let ready = Ready {
            team: result.team.clone(),
            block: b.clone(),
            node: parent,
            workflow: w,
            children,
            submitted_at_ms: result.submitted_at_ms,
            deadline_ms: result.deadline_ms,
        };
        let msg_id = format!(
            "ready/{}/{}/{}/{}/{}",
            result.team,
            b.chain,
            b.number,
            short_hash(&b.hash),
            parent
        );
        self.bus
            .publish(self.bus.subjects.ready(&result.team), &ready, Some(&msg_id))
            .await?;
        Ok(())
    }

    /// `team`'s publication cursor on `block`'s chain and `block`'s status, read at once.
    async fn read_head(&self, team: &str, block: &BlockRef) -> Result<Head, RuntimeError> {
        let (ckey, bkey) = (
            cursor_key(team, &block.chain),
            block_key(&block.chain, block.number),
        );
        let (cursor, status) = tokio::join!(
            kv_get::<Cursor>(&self.cursors, &ckey),
            kv_get::<BlockStatus>(&self.blocks, &bkey)
        );
        Ok((cursor?, status?))
    }

    /// Walks (team, chain)'s publication order, unless a walk of it is running here already:
    /// then the root just recorded is handed to that walk, which looks for it before it ends.
    /// Either way the root is durable before its result is acked, and the walk that publishes
    /// it is owed to a result not yet acked (redelivered if this process dies).
    async fn publish_in_order(
        &self,
        team: &str,
        chain: &str,
        recorded: &PartRecord,
        head: Option<Head>,
    ) -> Result<(), RuntimeError> {
        let Some(mut walk) = self.walks.start(cursor_key(team, chain), recorded) else {
            return Ok(());
        };
        let (cursor, status) = match head {
            Some(head) => head,
            None => self.read_head(team, &recorded.block).await?,
        };
        let status = status.map(|(s, _)| s);
        self.walk(team, chain, &mut walk, cursor, recorded, status)
            .await
    }

    /// Publishes every finished block at the head of (team, chain)'s cursor, in runs: each
    /// block's proof is published while the next block's status is read, and the cursor moves
    /// once per run of up to [`MAX_RUN`], by compare-and-set. The proofs' msg-ids make a run
    /// repeated after a crash before its cursor write harmless. `recorded` is the root just
    /// recorded, with its block's status as read alongside (most often the block at the
    /// cursor). Roots recorded here while the walk runs are handed to it: they are not read
    /// back, and the walk goes on with them before it writes the cursor. A block neither
    /// handed over nor found recorded ends the run; the walk ends when no root came in
    /// meanwhile.
    async fn walk(
        &self,
        team: &str,
        chain: &str,
        walk: &mut Walk<'_>,
        mut cursor: Option<(Cursor, u64)>,
        recorded: &PartRecord,
        mut guessed: Option<BlockStatus>,
    ) -> Result<(), RuntimeError> {
        let ckey = cursor_key(team, chain);
        let mut known: HashMap<u64, PartRecord> = HashMap::new();
        known.insert(recorded.block.number, recorded.clone());
        loop {
            let (at, revision) = match cursor.take() {
                Some(c) => c,
                // The scheduler creates the cursor before releasing any task of the chain.
                None => match kv_get::<Cursor>(&self.cursors, &ckey).await? {
                    Some(c) => c,
                    None => {
                        tracing::warn!(team, chain, "no publication cursor; nothing published");
                        return Ok(());
                    }
                },
            };
            known.retain(|n, _| *n >= at.next);
            // Until a proof is out, the scheduler may still move the start down (a lower block
            // planned late): the first proof is written to the cursor on its own.
            let max_run = if at.published == 0 { 1 } else { MAX_RUN };
            let mut number = at.next;
            let mut run = 0;
            // The status of block `number`, when read ahead.
            let mut ahead: Option<Option<BlockStatus>> = None;
            while run < max_run {
                if !known.contains_key(&number) {
                    known.extend(walk.take_handed().map(|r| (r.block.number, r)));
                }
                let status = match (ahead.take(), guessed.take()) {
                    (Some(read), _) => read,
                    (None, Some(s)) if s.block.number == number => Some(s),
                    _ => self.status(chain, number).await?,
                };
                // The block on the chain at the cursor, as ingest records it: after a reorg
                // only the new block's root is looked for, so an orphan's proof is never
                // published.
                let block = match status {
                    Some(s) if s.state == BlockState::Orphaned => break,
                    Some(s) => s.block,
                    // The record expired (a block that waited a day): the plan names it.
                    None => {
                        match kv_get::<Plan>(&self.plans, &plan_key(team, chain, number)).await? {
                            Some((p, _)) if p.withdrawn.is_none() => p.accepted.block,
                            _ => break,
                        }
                    }
                };
                let root = match known.remove(&number) {
                    Some(r) if r.block == block => r,
                    _ => match kv_get::<PartRecord>(&self.parts, &final_key(team, &block)).await? {
                        Some((root, _)) => root,
                        None => break,
                    },
                };
                let (sent, next) = tokio::join!(
                    self.publish_proof(team, chain, number, &root),
                    self.status(chain, number + 1)
                );
                sent?;
                ahead = Some(next?);
                number += 1;
                run += 1;
            }
            if run > 0 {
                // At the revision read above; if another writer moved it meanwhile (a
                // concurrent walk, a reorg's rewind), it is read again.
                let next = Cursor {
                    next: number,
                    published: at.published + run,
                };
                cursor = kv_update_at(&self.cursors, &ckey, &next, revision)
                    .await?
                    .map(|revision| (next, revision));
                if cursor.is_none() || run == max_run {
                    continue;
                }
            } else {
                cursor = Some((at, revision));
            }
            // Nothing more to publish now: the walk ends, unless a root came in meanwhile.
            match walk.more() {
                Some(handed) => known.extend(handed.map(|r| (r.block.number, r))),
                None => return Ok(()),
            }
        }
    }

    /// The status ingest recorded for `chain`'s block `number`.
    async fn status(&self, chain: &str, number: u64) -> Result<Option<BlockStatus>, RuntimeError> {
        Ok(
            kv_get::<BlockStatus>(&self.blocks, &block_key(chain, number))
                .await?
                .map(|(s, _)| s),
        )
    }

    /// Realtime teams: the proof goes out as soon as it exists, unless the scheduler withdrew
    /// the block first. Marking the plan finalized (compare-and-set) settles that race: a block
    /// is either withdrawn or published, never both.
    async fn publish_now(
        &self,
        team: &str,
        chain: &str,
        number: u64,
        root: &PartRecord,
    ) -> Result<(), RuntimeError> {
        // Not a block a reorg took off the chain, even if the scheduler has not heard yet.
        let on_chain = kv_get::<BlockStatus>(&self.blocks, &block_key(chain, number))
            .await?
            .is_some_and(|(s, _)| {
                s.block.hash == root.block.hash && s.state != BlockState::Orphaned
            });
        if !on_chain {
            tracing::info!(
                team,
                chain,
                number,
                "proof of a block off the chain is not published"
            );
            return Ok(());
        }
        let plan = kv_update::<Plan, _>(&self.plans, &plan_key(team, chain, number), |p| {
            let p = p?;
            if p.accepted.block.hash != root.block.hash || p.finalized || p.withdrawn.is_some() {
                return None;
            }
            let mut p = p.clone();
            p.finalized = true;
            Some(p)
        })
        .await?;
        match plan {
            Some(p) if p.finalized && p.accepted.block.hash == root.block.hash => {
                self.publish_proof(team, chain, number, root).await
            }
            Some(p) if p.withdrawn.is_some() => {
                tracing::info!(
                    team,
                    chain,
                    number,
                    "proof of a withdrawn block is not published"
                );
                Ok(())
            }
            _ => {
                tracing::warn!(
                    team,
                    chain,
                    number,
                    "no plan for a proved block; not published"
                );
                Ok(())
            }
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
                Some(&proof_msg_id(team, &root.block)),
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

/// The publication walks running in this process, by cursor key, each with the roots recorded
/// meanwhile and not yet taken by it.
#[derive(Default)]
struct Walks(Mutex<HashMap<String, Vec<PartRecord>>>);

impl Walks {
    /// Whether a walk of `key` is running (it may end at any moment).
    fn running(&self, key: &str) -> bool {
        self.0.lock().expect("walks lock").contains_key(key)
    }

    /// Starts the walk of `key`, or hands `recorded` to the running one and returns None.
    fn start(&self, key: String, recorded: &PartRecord) -> Option<Walk<'_>> {
        let mut walks = self.0.lock().expect("walks lock");
        if let Some(handed) = walks.get_mut(&key) {
            handed.push(recorded.clone());
            return None;
        }
        walks.insert(key.clone(), Vec::new());
        Some(Walk {
            walks: self,
            key,
            ended: false,
        })
    }
}

/// A running walk; it ends when [`Walk::more`] says so, or (on an error) when dropped.
struct Walk<'a> {
    walks: &'a Walks,
    key: String,
    ended: bool,
}

impl Walk<'_> {
    /// The roots handed over since the last call; the walk goes on either way.
    fn take_handed(&mut self) -> impl Iterator<Item = PartRecord> + use<> {
        let mut walks = self.walks.0.lock().expect("walks lock");
        let handed = walks.get_mut(&self.key).map(std::mem::take);
        handed.unwrap_or_default().into_iter()
    }

    /// The roots handed over since the last call, if any; if none, the walk ends here, in the
    /// same step, so no root can be handed over in between and be missed.
    fn more(&mut self) -> Option<impl Iterator<Item = PartRecord> + use<>> {
        let mut walks = self.walks.0.lock().expect("walks lock");
        match walks.get_mut(&self.key) {
            Some(handed) if !handed.is_empty() => Some(std::mem::take(handed).into_iter()),
            _ => {
                walks.remove(&self.key);
                self.ended = true;
                None
            }
        }
    }
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.walks.0.lock().expect("walks lock").remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use push0_protocol::{Blob, BlockRef, NodeId, PartRecord};

    use super::Walks;

    fn root(number: u64) -> PartRecord {
        PartRecord {
            task_id: format!("t-{number}"),
            block: BlockRef {
                chain: "eth".into(),
                number,
                hash: vec![number as u8; 32],
            },
            node: NodeId { level: 0, index: 0 },
            proof: Blob::Inline(vec![1]),
            proof_system: "sim".into(),
            prove_ms: 0,
            critical_ms: 0,
            gateway: "g".into(),
            submitted_at_ms: 0,
            recorded_at_ms: 0,
        }
    }

    #[test]
    fn roots_recorded_while_a_walk_runs_are_handed_to_it_then_it_ends() {
        let walks = Walks::default();
        let mut walk = walks
            .start("t.eth".into(), &root(1))
            .expect("no walk runs yet");
        assert!(
            walks.start("t.eth".into(), &root(2)).is_none(),
            "one walk per cursor"
        );
        assert!(
            walks.start("u.eth".into(), &root(1)).is_some(),
            "other cursors walk apart"
        );
        let taken: Vec<u64> = walk.take_handed().map(|r| r.block.number).collect();
        assert_eq!(taken, vec![2], "the root recorded meanwhile is handed over");
        assert!(walk.take_handed().next().is_none(), "and only once");
        assert!(walks.start("t.eth".into(), &root(3)).is_none());
        let more: Vec<u64> = walk
            .more()
            .expect("a root came in")
            .map(|r| r.block.number)
            .collect();
        assert_eq!(more, vec![3]);
        assert!(walk.more().is_none(), "nothing came in: the walk ends");
        let next = walks.start("t.eth".into(), &root(4));
        assert!(next.is_some(), "an ended walk makes room for the next");
    }

    #[test]
    fn a_failed_walk_makes_room_when_dropped() {
        let walks = Walks::default();
        let walk = walks.start("t.eth".into(), &root(1));
        assert!(walk.is_some());
        drop(walk);
        assert!(walks.start("t.eth".into(), &root(1)).is_some());
    }
}
