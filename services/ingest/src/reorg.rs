//! A reorg's two steps: finding the blocks the replaced one takes off the chain with it, and
//! marking them orphaned and telling the scheduler before the new block is accepted.

use async_nats::HeaderMap;
use bytes::Bytes;
use push0_protocol::subjects::{block_key, reorg_msg_id};
use push0_protocol::{BlockRef, BlockState, BlockStatus, REORG_HEADER, Reorg};
use push0_runtime::registry::team_names;
use push0_runtime::{RuntimeError, kv_get, kv_update, metrics};

use crate::turns::{Turn, Unsettled};
use crate::{Ingest, REORG_GAP};

impl Ingest {
    /// `fork` (the block `new_hash` replaces) and the known blocks above it that descend from
    /// it. A block stays on the chain only if its parent is the block kept at the height below,
    /// so a new-branch block that arrived before its fork point survives, and anything whose
    /// ancestry is unknown goes. Heights are read as they were when `turn`'s block started: a
    /// record made since by a block behind it on the chain counts as not there yet. `None` if
    /// that cannot be told (such a block's create failed): decide on the next delivery.
    pub(crate) async fn descendants(
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

    /// Publishes a fence mark beside every registered team's proofs of `block`'s chain. The
    /// aggregator may publish the proof of the block at a team's cursor without reading the
    /// chain's records first, on what it read when it published the proof before: it names
    /// the last sequence on those subjects, and a mark published since makes the server refuse
    /// it, so it reads again. A reorg marks before the first record it changes and after the
    /// last, so a proof decided on a record read before a change is refused wherever it
    /// lands, as a read-then-publish would have been, and a crash between a change and the
    /// mark after it still leaves the mark before. Every delivery that repeats the reorg's
    /// writes marks again; marks are harmless.
    pub(crate) async fn fence(&self, block: &BlockRef) -> Result<(), RuntimeError> {
        let teams = team_names(&self.teams).await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            REORG_HEADER,
            format!("{}.{}", block.chain, block.number).as_str(),
        );
        let marks = teams.iter().map(|team| {
            let subject = self.bus.subjects.fence_marks(team, &block.chain);
            self.bus.publish_raw(subject, headers.clone(), Bytes::new())
        });
        futures::future::try_join_all(marks).await?;
        Ok(())
    }

    /// Marks the blocks a reorg orphaned (all but the one `block` replaced at its own height)
    /// and tells the scheduler, before `block` itself is accepted.
    pub(crate) async fn orphan(
        &self,
        block: &BlockRef,
        orphaned: &[BlockRef],
    ) -> Result<(), RuntimeError> {
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
        // After the last record changed (the one at the fork's height was marked before it
        // changed, in `take_height`): see `fence`.
        self.fence(block).await?;
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
