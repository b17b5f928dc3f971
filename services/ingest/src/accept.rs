//! A valid block's handling: its record made while its parent's is read, the decision on
//! them, and what the decision takes: a reorg, a duplicate counted, or the acceptance
//! published and recorded.

use std::time::Duration;

use push0_protocol::subjects::{block_key, block_msg_id};
use push0_protocol::{BlockAccepted, BlockRef, BlockState, BlockStatus, BlockSubmission};
use push0_runtime::{
    Delivery, Outcome, RuntimeError, kv_create, kv_get, kv_update, kv_update_at, metrics,
};

use crate::decide::{
    Decision, accepted_now, conflict, decide, fresh_status, orphaned, parent_off_chain,
};
use crate::turns::{Made, Turn};
use crate::{Ingest, SERVICE};

/// A retry for a question the next delivery answers (a record changed under us).
const SOON: Duration = Duration::from_millis(50);

impl Ingest {
    /// Handles a valid submission of `block`: every write is idempotent, and the ack follows
    /// the acceptance being published and recorded.
    pub(crate) async fn accept(
        &self,
        submission: BlockSubmission,
        block: BlockRef,
        delivery: &Delivery,
    ) -> Result<Outcome, RuntimeError> {
        let (submitted_at_ms, delivered) = (delivery.published_ms, delivery.delivered);
        let key = block_key(&block.chain, block.number);
        // Most blocks are new: their record is created while the parent's is read (one round
        // trip for both), and the block's own record is read only when one exists already.
        // The chain's next block may start now (see `Turns`).
        let mut turn = self.turns.take(&block);
        delivery.release_lane();
        let fresh = fresh_status(&submission, &block, submitted_at_ms, None);
        let (created, parent) = tokio::join!(
            kv_create(&self.blocks, &key, &fresh),
            self.parent_of(&block)
        );
        // The blocks before this one see whether it made its record (see `Turn::made_behind`).
        turn.made(match &created {
            Ok(Some(_)) => Made::Created,
            Ok(None) => Made::Found,
            Err(_) => Made::Unknown,
        });
        // Waited for before any error returns: a block that says it is done has waited for
        // every block before it, so the next one need not.
        let mut read = parent.as_ref().ok().cloned().flatten();
        let stand = turn.reads_stand(block.number, &mut read).await;
        let (mut created, mut parent) = (created?, parent.map(|_| read)?);
        if !stand {
            // A block handled meanwhile changed records (a reorg, an orphan), or the parent's
            // record may have been on its way: both are read again, and the block's own too
            // (another ingest instance's reorg may have orphaned the record just made).
            created = None;
            parent = self.parent_of(&block).await?;
        }
        // The block's own record, with the revision it was written or read at.
        let own = match created {
            Some(revision) => Some((fresh, revision)),
            None => kv_get::<BlockStatus>(&self.blocks, &key).await?,
        };
        if parent_off_chain(parent.as_ref(), &submission.parent_hash) {
            self.mark_off_chain(&block, own).await?;
            return Ok(Outcome::Reject(orphaned(&block)));
        }
        // Gone since the create found it (expired): decide on the next delivery.
        let Some((status, revision)) = own else {
            return Ok(Outcome::Retry(SOON));
        };
        let decision = decide(&status, parent.as_ref(), &block, &submission, delivered);
        let (status, revision) = match decision {
            Decision::Publish => (status, Some(revision)),
            Decision::Duplicate => {
                self.count_duplicate(&block).await?;
                turn.done(Some(&status));
                return Ok(Outcome::Ack);
            }
            Decision::Orphaned => return Ok(Outcome::Reject(orphaned(&block))),
            Decision::WaitForParent => return Ok(Outcome::Retry(Duration::from_millis(500))),
            Decision::Conflict => {
                return Ok(Outcome::Reject(conflict(
                    &block,
                    &status,
                    &submission.parent_hash,
                )));
            }
            Decision::Reorg { search } => {
                let taken = self
                    .take_height(&submission, &block, submitted_at_ms, &status, search, &turn)
                    .await?;
                match taken {
                    Some(written) => (written, None),
                    None => return Ok(Outcome::Retry(SOON)),
                }
            }
        };
        self.publish_accepted(submission, &block, status, revision, turn)
            .await
    }

    /// A block a reorg left off the chain: its record (just made, or left as received by an
    /// earlier delivery that stopped here) says so, so a resubmission is recognised and the
    /// height stays free for the new branch.
    async fn mark_off_chain(
        &self,
        block: &BlockRef,
        own: Option<(BlockStatus, u64)>,
    ) -> Result<(), RuntimeError> {
        let own =
            own.filter(|(s, _)| s.block.hash == block.hash && s.state == BlockState::Received);
        if let Some((status, revision)) = own {
            // Received may have been announced already (a delivery that stopped between its
            // notice and its record's update): marked before and after, as a reorg's changes.
            self.fence(block).await?;
            let off_chain = BlockStatus {
                state: BlockState::Orphaned,
                ..status
            };
            let key = block_key(&block.chain, block.number);
            kv_update_at(&self.blocks, &key, &off_chain, revision).await?;
            self.fence(block).await?;
        }
        Ok(())
    }

    /// A reorg at `block`'s height: its record replaces `held`'s, naming the blocks it takes
    /// off the chain (`held`'s block and its descendants, searched for when `search`). None
    /// when the next delivery must decide: the search could not tell what was there, or
    /// another ingest instance changed the record meanwhile.
    async fn take_height(
        &self,
        submission: &BlockSubmission,
        block: &BlockRef,
        submitted_at_ms: u64,
        held: &BlockStatus,
        search: bool,
        turn: &Turn,
    ) -> Result<Option<BlockStatus>, RuntimeError> {
        let replaced = match search {
            true => match self.descendants(&held.block, &block.hash, turn).await? {
                Some(replaced) => replaced,
                None => return Ok(None),
            },
            false => Vec::new(),
        };
        let mut next = fresh_status(submission, block, submitted_at_ms, Some(held));
        next.replaced = replaced;
        // The fork's height changes first: marked before it (see `fence`).
        self.fence(block).await?;
        let key = block_key(&block.chain, block.number);
        let written = kv_update::<BlockStatus, _>(&self.blocks, &key, |s| match s {
            Some(s) if s.block.hash == held.block.hash => Some(next.clone()),
            _ => None,
        })
        .await?;
        Ok(written.filter(|w| w.block.hash == block.hash))
    }

    async fn count_duplicate(&self, block: &BlockRef) -> Result<(), RuntimeError> {
        metrics().duplicates.with_label_values(&[SERVICE]).inc();
        tracing::debug!(chain = %block.chain, number = block.number, "duplicate submission");
        let key = block_key(&block.chain, block.number);
        kv_update::<BlockStatus, _>(&self.blocks, &key, |s| {
            s.map(|s| BlockStatus {
                duplicates: s.duplicates + 1,
                ..s.clone()
            })
        })
        .await?;
        Ok(())
    }

    /// Publishes `block`'s acceptance (again, if an earlier delivery stopped after it: the
    /// msg-id makes a repeat harmless) and records it accepted. `revision` is the one `status`
    /// was read or written at, when known.
    async fn publish_accepted(
        &self,
        submission: BlockSubmission,
        block: &BlockRef,
        status: BlockStatus,
        revision: Option<u64>,
        mut turn: Turn,
    ) -> Result<Outcome, RuntimeError> {
        // Whether the next block may keep what it read while this one was handled.
        let mut plain = revision.is_some();
        // The record at the fork height is the reorg's outbox: until this block is accepted,
        // every delivery (re)marks the orphans and (re)publishes the notice; both are idempotent.
        if !status.replaced.is_empty() {
            plain = false;
            self.orphan(block, &status.replaced).await?;
        }
        let payload = self.blobs.put(submission.payload).await?;
        let accepted = BlockAccepted {
            block: block.clone(),
            parent_hash: submission.parent_hash,
            timestamp_ms: submission.timestamp_ms,
            submitted_at_ms: status.submitted_at_ms,
            deadline_ms: submission.deadline_ms,
            payload,
        };
        let msg_id = block_msg_id(&block.chain, block.number, &block.hash);
        let published = self
            .bus
            .publish_sent(
                self.bus.subjects.accepted(&block.chain),
                &accepted,
                Some(&msg_id),
            )
            .await;
        // Sent, so the chain's next block may decide: its notice goes out behind this one, it
        // reads this record only as its parent's, where received and accepted mean the same,
        // and every write below is a compare-and-set that a reorg handled meanwhile wins. (If
        // this publish has to be retried, the next block's may be stored first; the scheduler
        // plans blocks in any order and the aggregator publishes their proofs in order.)
        turn.done(plain.then_some(&status));
        if !published.await?.duplicate {
            metrics()
                .blocks_accepted
                .with_label_values(&[&block.chain])
                .inc();
        }
        // Only this very block, still received: a reorg handled meanwhile (by another ingest
        // instance) may have orphaned or replaced it. First at the revision known, which
        // saves the read; if the record moved since, read it and decide again.
        let key = block_key(&block.chain, block.number);
        let written = match revision {
            Some(revision) if status.state == BlockState::Received => {
                kv_update_at(&self.blocks, &key, &accepted_now(&status), revision)
                    .await?
                    .is_some()
            }
            _ => false,
        };
        if !written {
            kv_update::<BlockStatus, _>(&self.blocks, &key, |s| {
                let s = s?;
                if s.block.hash != block.hash || s.state != BlockState::Received {
                    return None;
                }
                Some(accepted_now(s))
            })
            .await?;
        }
        tracing::info!(chain = %block.chain, number = block.number, "block accepted");
        Ok(Outcome::Ack)
    }

    async fn parent_of(&self, block: &BlockRef) -> Result<Option<BlockStatus>, RuntimeError> {
        let Some(below) = block.number.checked_sub(1) else {
            return Ok(None);
        };
        let found = kv_get::<BlockStatus>(&self.blocks, &block_key(&block.chain, below)).await?;
        Ok(found.map(|(s, _)| s))
    }
}
