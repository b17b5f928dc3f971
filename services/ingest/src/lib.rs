//! ingest: validates block submissions, de-duplicates them, records their status, stores their
//! payload and publishes `BlockAccepted`. Bad input becomes a dead letter; ingest keeps going.

use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::subjects::{block_key, block_msg_id, reorg_msg_id};
use push0_protocol::{
    BlockAccepted, BlockRef, BlockState, BlockStatus, BlockSubmission, DlqReason, Reorg, now_ms,
    validate_chain,
};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Rejection, RuntimeError, consume, kv_create,
    kv_get, kv_update, kv_update_at, metrics,
};
use tokio_util::sync::CancellationToken;

mod turns;

use turns::{Made, Turn, Turns, Unsettled};

pub const SERVICE: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Payloads above this go to the object store.
    pub inline_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: 4 * 1024 * 1024,
            inline_threshold: push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD,
        }
    }
}

/// Runs ingest until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let blobs = BlobStore::open(&bus, config.inline_threshold).await?;
    let handler = Ingest {
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        bus: bus.clone(),
        blobs: blobs.clone(),
        config,
        turns: Turns::default(),
    };
    let spec = bus.topology.ingest_consumer();
    consume(&bus, &blobs, &spec, SERVICE, "block", &handler, shutdown).await
}

struct Ingest {
    bus: Bus,
    blobs: BlobStore,
    blocks: kv::Store,
    config: Config,
    turns: Turns,
}

/// Checks a submission against the public interface; the reason names the first problem.
/// (Boxed: a rejection is the rare case, and it is larger than the `Ok`.)
pub fn validate(
    submission: &BlockSubmission,
    subject: &str,
    max_payload: usize,
) -> Result<(), Box<Rejection>> {
    let token = subject.rsplit('.').next().unwrap_or_default();
    if submission.chain != token {
        return Err(Box::new(Rejection::new(
            DlqReason::ChainMismatch,
            format!(
                "chain {:?} does not match subject token {token:?}",
                submission.chain
            ),
        )));
    }
    if let Err(e) = validate_chain(&submission.chain) {
        return Err(Box::new(Rejection::new(
            DlqReason::InvalidField,
            e.to_string(),
        )));
    }
    for (field, value) in [
        ("hash", &submission.hash),
        ("parent_hash", &submission.parent_hash),
    ] {
        if value.len() != 32 {
            return Err(Box::new(Rejection::new(
                DlqReason::InvalidField,
                format!("{field} must be 32 bytes, got {}", value.len()),
            )));
        }
    }
    if submission.payload.len() > max_payload {
        return Err(Box::new(Rejection::new(
            DlqReason::Oversize,
            format!(
                "payload of {} bytes exceeds the limit of {max_payload}",
                submission.payload.len()
            ),
        )));
    }
    Ok(())
}

impl Handler for Ingest {
    // Blocks arrive on their chain's subject; chains share no record.
    const ORDER: Order = Order::PerSubject;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let submission: BlockSubmission = match delivery.decode() {
            Ok(s) => s,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let block = BlockRef {
            chain: submission.chain.clone(),
            number: submission.number,
            hash: submission.hash.clone(),
        };
        if let Err(rejection) = validate(&submission, &delivery.subject, self.config.max_payload) {
            return Outcome::Reject(rejection.block(&block));
        }
        match self.accept(submission, block, delivery).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "ingest failed, will retry");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

/// `status` as the record of a block accepted now.
fn accepted_now(status: &BlockStatus) -> BlockStatus {
    BlockStatus {
        state: BlockState::Accepted,
        accepted_at_ms: Some(now_ms()),
        ..status.clone()
    }
}

/// Heights above a reorg's fork that are looked at for descendants of the orphaned block; a
/// run of this many unknown heights ends the search.
const REORG_GAP: u64 = 64;
/// Deliveries of a block at an occupied height whose parent is not the block below before it
/// is dead-lettered as a conflict.
const PARENT_RETRIES: i64 = 5;

impl Ingest {
    async fn accept(
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
        if let Some(p) = &parent {
            let parent_orphaned = (p.state == BlockState::Orphaned
                && p.block.hash == submission.parent_hash)
                || p.orphaned_hashes
                    .iter()
                    .any(|h| h.as_slice() == submission.parent_hash);
            if parent_orphaned {
                // A block a reorg left off the chain: its record (just made, or left as
                // received by an earlier delivery that stopped here) says so, so a
                // resubmission is recognised and the height stays free for the new branch.
                let own = match created {
                    Some(revision) => Some((fresh, revision)),
                    None => kv_get::<BlockStatus>(&self.blocks, &key)
                        .await?
                        .filter(|(s, _)| {
                            s.block.hash == block.hash && s.state == BlockState::Received
                        }),
                };
                if let Some((status, revision)) = own {
                    let off_chain = BlockStatus {
                        state: BlockState::Orphaned,
                        ..status
                    };
                    kv_update_at(&self.blocks, &key, &off_chain, revision).await?;
                }
                return Ok(Outcome::Reject(orphaned(&block)));
            }
        }
        // Whether the next block may keep what it read while this one was handled.
        let mut plain = true;
        // The revision `status` was read or written at, while it is known.
        let (status, mut revision) = match created {
            Some(revision) => (fresh, Some(revision)),
            None => match kv_get::<BlockStatus>(&self.blocks, &key).await? {
                Some((status, revision)) => (status, Some(revision)),
                // Gone since the create found it (expired): decide on the next delivery.
                None => return Ok(Outcome::Retry(Duration::from_millis(50))),
            },
        };
        let status = if status.block.hash == block.hash {
            if status.state == BlockState::Orphaned {
                return Ok(Outcome::Reject(orphaned(&block)));
            }
            status
        } else if status
            .orphaned_hashes
            .iter()
            .any(|h| h.as_slice() == block.hash)
        {
            return Ok(Outcome::Reject(orphaned(&block)));
        } else {
            // Another block at a known height: a reorg, if the new block extends the chain
            // below it. If the known block is still on the chain, it and its descendants are
            // orphaned by this one; if a reorg below already orphaned it, the height is simply
            // free for the new branch.
            let extends_chain = match &parent {
                Some(p) => {
                    p.state != BlockState::Orphaned && p.block.hash == submission.parent_hash
                }
                None => false,
            };
            if !extends_chain {
                // Its parent may be on its way (a new branch submitted out of order, or the
                // parent's delivery being retried): wait a little before calling it a conflict.
                if delivered < PARENT_RETRIES {
                    return Ok(Outcome::Retry(Duration::from_millis(500)));
                }
                return Ok(Outcome::Reject(
                    Rejection::new(
                        DlqReason::ConflictingHash,
                        format!(
                            "block {}.{} is known with hash {}, and the new one's parent {} is not the block below it on the chain",
                            block.chain,
                            block.number,
                            hex_short(&status.block.hash),
                            hex_short(&submission.parent_hash),
                        ),
                    )
                    .block(&block),
                ));
            }
            plain = false;
            let replaced = match status.state {
                BlockState::Orphaned => Vec::new(),
                _ => match self.descendants(&status.block, &block.hash, &turn).await? {
                    Some(replaced) => replaced,
                    // A block behind this one may have made a record the search found.
                    None => return Ok(Outcome::Retry(Duration::from_millis(50))),
                },
            };
            revision = None;
            let mut next = fresh_status(&submission, &block, submitted_at_ms, Some(&status));
            next.replaced = replaced;
            let old_hash = status.block.hash.clone();
            let written = kv_update::<BlockStatus, _>(&self.blocks, &key, |s| match s {
                Some(s) if s.block.hash == old_hash => Some(next.clone()),
                _ => None,
            })
            .await?;
            match written {
                Some(w) if w.block.hash == block.hash => w,
                // Changed under us by another ingest instance: decide on the next delivery.
                _ => return Ok(Outcome::Retry(Duration::from_millis(50))),
            }
        };
        if status.state == BlockState::Accepted {
            metrics().duplicates.with_label_values(&[SERVICE]).inc();
            tracing::debug!(chain = %block.chain, number = block.number, "duplicate submission");
            kv_update::<BlockStatus, _>(&self.blocks, &key, |s| {
                s.map(|s| BlockStatus {
                    duplicates: s.duplicates + 1,
                    ..s.clone()
                })
            })
            .await?;
            turn.done(plain.then_some(&status));
            return Ok(Outcome::Ack);
        }
        // The record at the fork height is the reorg's outbox: until this block is accepted,
        // every delivery (re)marks the orphans and (re)publishes the notice; both are idempotent.
        if !status.replaced.is_empty() {
            plain = false;
            self.orphan(&block, &status.replaced).await?;
        }
        // Received but maybe not published: publish (again). The msg-id makes a repeat harmless.
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
        published.await?;
        // Only this very block, still received: a reorg handled meanwhile (by another ingest
        // instance) may have orphaned or replaced it. First at the revision known, which
        // saves the read; if the record moved since, read it and decide again.
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

    /// `fork` (the block `new_hash` replaces) and the known blocks above it that descend from
    /// it. A block stays on the chain only if its parent is the block kept at the height below,
    /// so a new-branch block that arrived before its fork point survives, and anything whose
    /// ancestry is unknown goes. Heights are read as they were when `turn`'s block started: a
    /// record made since by a block behind it on the chain counts as not there yet. `None` if
    /// that cannot be told (such a block's create failed): decide on the next delivery.
    async fn descendants(
        &self,
        fork: &BlockRef,
        new_hash: &[u8],
        turn: &Turn,
    ) -> Result<Option<Vec<BlockRef>>, RuntimeError> {
        let mut orphaned = vec![fork.clone()];
        let mut kept_below: Option<Vec<u8>> = Some(new_hash.to_vec());
        let mut unknown_run = 0;
        let mut number = fork.number;
        while unknown_run < REORG_GAP {
            number += 1;
            let key = block_key(&fork.chain, number);
            let found = kv_get::<BlockStatus>(&self.blocks, &key).await?;
            let found = match found {
                Some((status, _)) => match turn.made_behind(&status.block).await {
                    Ok(false) => Some(status),
                    Ok(true) => None,
                    Err(Unsettled) => return Ok(None),
                },
                None => None,
            };
            let Some(status) = found else {
                unknown_run += 1;
                kept_below = None;
                continue;
            };
            unknown_run = 0;
            if status.state == BlockState::Orphaned {
                kept_below = None;
                continue;
            }
            if kept_below.as_ref() == Some(&status.parent_hash) {
                kept_below = Some(status.block.hash.clone());
            } else {
                kept_below = None;
                orphaned.push(status.block);
            }
        }
        Ok(Some(orphaned))
    }

    /// Marks the blocks a reorg orphaned (all but the one `block` replaced at its own height)
    /// and tells the scheduler, before `block` itself is accepted.
    async fn orphan(&self, block: &BlockRef, orphaned: &[BlockRef]) -> Result<(), RuntimeError> {
        for o in orphaned.iter().filter(|o| o.number != block.number) {
            kv_update::<BlockStatus, _>(&self.blocks, &block_key(&o.chain, o.number), |s| {
                let s = s?;
                if s.block.hash != o.hash || s.state == BlockState::Orphaned {
                    return None;
                }
                let mut s = s.clone();
                s.state = BlockState::Orphaned;
                Some(s)
            })
            .await?;
        }
        let notice = Reorg {
            block: block.clone(),
            orphaned: orphaned.to_vec(),
        };
        let ack = self
            .bus
            .publish(
                self.bus.subjects.accepted(&block.chain),
                &notice,
                Some(&reorg_msg_id(block)),
            )
            .await?;
        if !ack.duplicate {
            metrics().reorgs.with_label_values(&[&block.chain]).inc();
            tracing::warn!(chain = %block.chain, number = block.number, hash = %block.short_hash(), orphaned = orphaned.len(), "reorg: blocks orphaned");
        }
        Ok(())
    }
}

/// A new status record for `submission`; `replacing` is the record of the block it replaces at
/// its height, whose hash joins the orphaned ones.
fn fresh_status(
    submission: &BlockSubmission,
    block: &BlockRef,
    submitted_at_ms: u64,
    replacing: Option<&BlockStatus>,
) -> BlockStatus {
    let mut orphaned_hashes = Vec::new();
    if let Some(old) = replacing {
        orphaned_hashes.clone_from(&old.orphaned_hashes);
        orphaned_hashes.push(serde_bytes::ByteBuf::from(old.block.hash.clone()));
    }
    BlockStatus {
        block: block.clone(),
        state: BlockState::Received,
        payload_len: submission.payload.len() as u64,
        submitted_at_ms,
        accepted_at_ms: None,
        duplicates: 0,
        parent_hash: submission.parent_hash.clone(),
        replaced: Vec::new(),
        orphaned_hashes,
    }
}

fn orphaned(block: &BlockRef) -> Rejection {
    Rejection::new(
        DlqReason::Orphaned,
        format!(
            "block {}.{} with hash {} was orphaned by a reorg",
            block.chain,
            block.number,
            hex_short(&block.hash)
        ),
    )
    .block(block)
}

fn hex_short(hash: &[u8]) -> String {
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission() -> BlockSubmission {
        BlockSubmission {
            chain: "eth".into(),
            number: 1,
            hash: vec![1; 32],
            parent_hash: vec![0; 32],
            timestamp_ms: 0,
            payload: vec![0; 100],
            deadline_ms: None,
        }
    }

    #[test]
    fn accepts_a_valid_block() {
        assert!(validate(&submission(), "push0.blocks.eth", 1000).is_ok());
    }

    #[test]
    fn rejects_each_bad_field() {
        let reason =
            |s: &BlockSubmission, subject: &str, max| validate(s, subject, max).unwrap_err().reason;
        assert_eq!(
            reason(&submission(), "push0.blocks.op", 1000),
            DlqReason::ChainMismatch
        );
        assert_eq!(
            reason(&submission(), "push0.blocks.eth", 99),
            DlqReason::Oversize
        );
        let mut s = submission();
        s.hash = vec![1; 31];
        assert_eq!(
            reason(&s, "push0.blocks.eth", 1000),
            DlqReason::InvalidField
        );
        let mut s = submission();
        s.chain = "ETH".into();
        assert_eq!(
            reason(&s, "push0.blocks.ETH", 1000),
            DlqReason::InvalidField
        );
    }
}
