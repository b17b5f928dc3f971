//! Block proofs out, exactly once: in block order per (team, chain) by a walk that moves the
//! team's cursor, or at once for a realtime team.

use std::collections::HashMap;

use push0_protocol::subjects::{block_key, cursor_key, final_key, plan_key, proof_msg_id};
use push0_protocol::{Blob, BlockProof, BlockRef, BlockStatus, Cursor, PartRecord, Plan, now_ms};
use push0_runtime::{RuntimeError, kv_get, kv_update, kv_update_at, metrics};

use crate::order::{
    AtHeight, Walk, at_height, finalized, known_root, on_chain, planned_block, run_limit,
};
use crate::{Aggregator, Head};

impl Aggregator {
    /// `team`'s publication cursor on `block`'s chain and `block`'s status, read at once.
    pub(crate) async fn read_head(
        &self,
        team: &str,
        block: &BlockRef,
    ) -> Result<Head, RuntimeError> {
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
    pub(crate) async fn publish_in_order(
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
            let max_run = run_limit(&at);
            let mut number = at.next;
            let mut run = 0;
            // The status of block `number`, when read ahead.
            let mut ahead: Option<Option<BlockStatus>> = None;
            while run < max_run {
                if !known.contains_key(&number) {
                    known.extend(walk.take_handed().map(|r| (r.block.number, r)));
                }
                let status = match (ahead.take(), guessed.take()) {
                    // Read beside the publish of the block before, which can take seconds to be
                    // acked while a stream's leader is elected: a block whose root is in hand
                    // was not unknown to ingest, so "no record" then is read again, or the
                    // walk would end holding a root whose result is acked, and no walk would
                    // come back for it until the team's next result.
                    (Some(None), _) if known.contains_key(&number) => {
                        self.status(chain, number).await?
                    }
                    (Some(read), _) => read,
                    (None, Some(s)) if s.block.number == number => Some(s),
                    _ => self.status(chain, number).await?,
                };
                let block = match at_height(status) {
                    AtHeight::Block(block) => block,
                    AtHeight::Orphaned => break,
                    AtHeight::Unrecorded => {
                        let plan = kv_get::<Plan>(&self.plans, &plan_key(team, chain, number))
                            .await?
                            .map(|(p, _)| p);
                        match planned_block(plan) {
                            Some(block) => block,
                            None => break,
                        }
                    }
                };
                let root = match known_root(known.remove(&number), &block) {
                    Some(r) => r,
                    None => {
                        match kv_get::<PartRecord>(&self.parts, &final_key(team, &block)).await? {
                            Some((root, _)) => root,
                            None => break,
                        }
                    }
                };
                let (sent, next) = tokio::join!(
                    self.publish_proof(team, &root),
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
    /// the block first ([`finalized`] settles that race).
    pub(crate) async fn publish_now(
        &self,
        team: &str,
        root: &PartRecord,
    ) -> Result<(), RuntimeError> {
        let (chain, number) = (root.block.chain.as_str(), root.block.number);
        let status = kv_get::<BlockStatus>(&self.blocks, &block_key(chain, number)).await?;
        if !on_chain(status.as_ref().map(|(s, _)| s), &root.block) {
            tracing::info!(
                team,
                chain,
                number,
                "proof of a block off the chain is not published"
            );
            return Ok(());
        }
        let plan = kv_update::<Plan, _>(&self.plans, &plan_key(team, chain, number), |p| {
            finalized(p, &root.block)
        })
        .await?;
        match plan {
            Some(p) if p.finalized && p.accepted.block.hash == root.block.hash => {
                self.publish_proof(team, root).await
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

    /// Publishes `root`'s block proof for `team` (once: its msg-id names team and block).
    async fn publish_proof(&self, team: &str, root: &PartRecord) -> Result<(), RuntimeError> {
        let (chain, number) = (root.block.chain.as_str(), root.block.number);
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
