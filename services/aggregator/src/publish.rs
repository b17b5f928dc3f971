//! Block proofs out, exactly once: in block order per (team, chain) by a walk that moves the
//! team's cursor, or at once for a realtime team.

use std::collections::HashMap;

use push0_protocol::subjects::{block_key, cursor_key, final_key, plan_key, proof_msg_id};
use push0_protocol::{Blob, BlockProof, BlockRef, BlockStatus, Cursor, PartRecord, Plan, now_ms};
use push0_runtime::{Fenced, RuntimeError, kv_get, kv_update, kv_update_at, metrics};

use crate::order::{
    AtHeight, Tail, Walk, at_height, finalized, known_root, on_chain, planned_block, run_limit,
};
use crate::{Aggregator, Head};

/// Where a walk starts.
enum Start {
    /// From the head: the cursor (passed apart) and the status of the recorded root's block
    /// when read with it.
    Read(Option<BlockStatus>),
    /// After the block at the cursor went out on the tail: the sequence of its proof (None if
    /// a duplicate) and the next block's status, read beside it.
    After {
        last: Option<u64>,
        next: Option<BlockStatus>,
    },
}

/// What publishing a proof did.
enum Sent {
    /// Stored at this sequence of the proofs stream.
    Out(u64),
    /// Out already (its msg-id was seen).
    Duplicate,
    /// Refused by its fence.
    Refused,
}

impl Sent {
    fn sequence(&self) -> Option<u64> {
        match self {
            Sent::Out(sequence) => Some(*sequence),
            _ => None,
        }
    }
}

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
        self.walk(
            team,
            chain,
            &mut walk,
            cursor,
            recorded,
            Start::Read(status),
        )
        .await
    }

    /// Publishes `recorded`'s proof on `tail`, with no read first, while the caller writes its
    /// root, and walks on from it. The server refuses the proof if anything landed beside the
    /// team's proofs of the chain since the tail's (see [`Tail`]); then the walk starts from
    /// what it reads, as [`Aggregator::publish_in_order`]'s does. Published before its root is
    /// durable: if this process dies in between, the result is delivered again, its root
    /// written, and the cursor, not moved yet, has the walk publish the proof again, which its
    /// msg-id makes a duplicate. A second result of the root node meanwhile (a task delivered
    /// twice) finds this one's proof out under the same msg-id.
    pub(crate) async fn publish_on_tail(
        &self,
        team: &str,
        chain: &str,
        recorded: &PartRecord,
        tail: Tail,
    ) -> Result<(), RuntimeError> {
        let Some(mut walk) = self.walks.start(cursor_key(team, chain), recorded) else {
            return Ok(());
        };
        let number = recorded.block.number;
        let (sent, next) = tokio::join!(
            self.publish_proof(team, recorded, Some(tail.last)),
            self.status(chain, number + 1)
        );
        let sent = sent?;
        let outcome = match sent {
            Sent::Refused => "refused",
            _ => "out",
        };
        metrics()
            .fenced_proofs
            .with_label_values(&[team, outcome])
            .inc();
        let (cursor, start) = match sent {
            Sent::Refused => {
                tracing::debug!(
                    team,
                    chain,
                    number,
                    "proof on the tail refused; reading the head"
                );
                (None, Start::Read(None))
            }
            sent => (
                Some((tail.cursor, tail.revision)),
                Start::After {
                    last: sent.sequence(),
                    next: next?,
                },
            ),
        };
        self.walk(team, chain, &mut walk, cursor, recorded, start)
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
    ///
    /// A walk that publishes leaves its tail when it ends (see [`Tail`]): the proofs stream's
    /// sequence of its last proof, the cursor as it wrote it after that proof, and the status
    /// of the block at the cursor as read beside or after that proof's publish.
    async fn walk(
        &self,
        team: &str,
        chain: &str,
        walk: &mut Walk<'_>,
        mut cursor: Option<(Cursor, u64)>,
        recorded: &PartRecord,
        start: Start,
    ) -> Result<(), RuntimeError> {
        let ckey = cursor_key(team, chain);
        let mut known: HashMap<u64, PartRecord> = HashMap::new();
        known.insert(recorded.block.number, recorded.clone());
        let (mut guessed, mut after) = match start {
            Start::Read(status) => (status, None),
            Start::After { last, next } => (None, Some((last, next))),
        };
        // Whether this walk published, the sequence of its last proof (None if that one was a
        // duplicate), and the block at which its last run stopped, with that block's status
        // as read after the last proof went out.
        let mut published = after.is_some();
        let mut last = after.as_ref().and_then(|(l, _)| *l);
        let mut stopped_at: Option<(u64, Option<BlockStatus>)> = None;
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
            // The status of block `number`, when read ahead.
            let (mut number, mut run, mut ahead) = match after.take() {
                // The block at the cursor went out on the tail, the next one's status beside it.
                Some((_, next)) => (at.next + 1, 1, Some(next)),
                None => (at.next, 0, None),
            };
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
                let at = at_height(status.as_ref());
                // Read beside or after this walk's last proof, unless it is the head read before
                // the walk (then the walk has published nothing yet).
                stopped_at = Some((number, status));
                let block = match at {
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
                    self.publish_proof(team, &root, None),
                    self.status(chain, number + 1)
                );
                (published, last) = (true, sent?.sequence());
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
                None => {
                    if published {
                        let tail = match (last, cursor, stopped_at) {
                            (Some(last), Some((at, revision)), Some((number, status)))
                                if number == at.next =>
                            {
                                Some(Tail {
                                    cursor: at,
                                    revision,
                                    last,
                                    status,
                                })
                            }
                            _ => None,
                        };
                        self.walks.left(&ckey, tail);
                    }
                    return Ok(());
                }
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
                self.publish_proof(team, root, None).await.map(|_| ())
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

    /// Publishes `root`'s block proof for `team` (once: its msg-id names team and block);
    /// with a `fence`, only if the last proof or fence mark of (team, chain) is still there.
    async fn publish_proof(
        &self,
        team: &str,
        root: &PartRecord,
        fence: Option<u64>,
    ) -> Result<Sent, RuntimeError> {
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
        let (subject, msg_id) = (
            self.bus.subjects.proofs(team, chain),
            proof_msg_id(team, &root.block),
        );
        let ack = match fence {
            Some(last) => {
                let filter = self.bus.subjects.publication(team, chain);
                match self
                    .bus
                    .publish_fenced(subject, &message, &msg_id, &filter, last)
                    .await
                {
                    Fenced::Stored(ack) => ack,
                    Fenced::Refused => return Ok(Sent::Refused),
                }
            }
            None => self.bus.publish(subject, &message, Some(&msg_id)).await?,
        };
        if ack.duplicate {
            return Ok(Sent::Duplicate);
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
        Ok(Sent::Out(ack.sequence))
    }
}
