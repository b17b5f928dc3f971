//! What to do with a block, decided from the records read for it: its own at its height and
//! its parent's at the height below. No I/O here, so every case is a unit test.

use push0_protocol::{BlockRef, BlockState, BlockStatus, BlockSubmission, DlqReason, now_ms};
use push0_runtime::Rejection;

use crate::PARENT_RETRIES;

/// Whether `parent` (the record at the height below) says the block whose parent hash is
/// `parent_hash` hangs off a branch a reorg left: its parent is orphaned there, or was
/// replaced there.
pub(crate) fn parent_off_chain(parent: Option<&BlockStatus>, parent_hash: &[u8]) -> bool {
    parent.is_some_and(|p| {
        (p.state == BlockState::Orphaned && p.block.hash == parent_hash)
            || p.orphaned_hashes
                .iter()
                .any(|h| h.as_slice() == parent_hash)
    })
}

/// What a block's handling does, given the record at its height.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The record is this block's, accepted before: a duplicate submission.
    Duplicate,
    /// The record is this block's, still received: publish its acceptance (again; the
    /// msg-id makes a repeat harmless).
    Publish,
    /// A reorg orphaned this block earlier: dead-letter it.
    Orphaned,
    /// The block replaces the one recorded at its height, whose descendants are searched
    /// when it is still on the chain (`search`), and orphaned with it.
    Reorg { search: bool },
    /// Another block holds the height and this one's parent is not known yet (a new branch
    /// submitted out of order, or the parent's delivery being retried): wait a little.
    WaitForParent,
    /// Another block holds the height and this one does not extend the chain below it.
    Conflict,
}

/// Decides the fate of `submission` (the block `block`, its `delivered`-th delivery) from
/// `status`, the record at its height, and `parent`, the record at the height below.
pub(crate) fn decide(
    status: &BlockStatus,
    parent: Option<&BlockStatus>,
    block: &BlockRef,
    submission: &BlockSubmission,
    delivered: i64,
) -> Decision {
    if status.block.hash == block.hash {
        return match status.state {
            BlockState::Orphaned => Decision::Orphaned,
            BlockState::Accepted => Decision::Duplicate,
            BlockState::Received => Decision::Publish,
        };
    }
    if status
        .orphaned_hashes
        .iter()
        .any(|h| h.as_slice() == block.hash)
    {
        return Decision::Orphaned;
    }
    // Another block at a known height: a reorg, if the new block extends the chain below it.
    // If the known block is still on the chain, it and its descendants are orphaned by this
    // one; if a reorg below already orphaned it, the height is simply free for the new branch.
    let extends_chain = parent
        .is_some_and(|p| p.state != BlockState::Orphaned && p.block.hash == submission.parent_hash);
    match (extends_chain, delivered < PARENT_RETRIES) {
        (true, _) => Decision::Reorg {
            search: status.state != BlockState::Orphaned,
        },
        (false, true) => Decision::WaitForParent,
        (false, false) => Decision::Conflict,
    }
}

/// `status` as the record of a block accepted now.
pub(crate) fn accepted_now(status: &BlockStatus) -> BlockStatus {
    BlockStatus {
        state: BlockState::Accepted,
        accepted_at_ms: Some(now_ms()),
        ..status.clone()
    }
}

/// A new status record for `submission`; `replacing` is the record of the block it replaces at
/// its height, whose hash joins the orphaned ones.
pub(crate) fn fresh_status(
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

pub(crate) fn orphaned(block: &BlockRef) -> Rejection {
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

/// The dead letter of a block at a height another block holds, whose parent is not the block
/// below it on the chain.
pub(crate) fn conflict(block: &BlockRef, held_by: &BlockStatus, parent_hash: &[u8]) -> Rejection {
    Rejection::new(
        DlqReason::ConflictingHash,
        format!(
            "block {}.{} is known with hash {}, and the new one's parent {} is not the block below it on the chain",
            block.chain,
            block.number,
            hex_short(&held_by.block.hash),
            hex_short(parent_hash),
        ),
    )
    .block(block)
}

fn hex_short(hash: &[u8]) -> String {
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;

    fn block(number: u64, fork: u8) -> BlockRef {
        BlockRef {
            chain: "eth".into(),
            number,
            hash: vec![number as u8 ^ fork; 32],
        }
    }

    /// The submission of `block`, child of `parent`.
    fn submission(block: &BlockRef, parent: &BlockRef) -> BlockSubmission {
        BlockSubmission {
            chain: block.chain.clone(),
            number: block.number,
            hash: block.hash.clone(),
            parent_hash: parent.hash.clone(),
            timestamp_ms: 0,
            payload: vec![0; 8],
            deadline_ms: None,
        }
    }

    fn record(block: &BlockRef, state: BlockState) -> BlockStatus {
        let mut s = fresh_status(&submission(block, block), block, 0, None);
        s.state = state;
        s
    }

    #[test]
    fn its_own_record_says_duplicate_publish_or_orphaned() {
        let (b, p) = (block(5, 0), block(4, 0));
        let parent = record(&p, BlockState::Accepted);
        let sub = submission(&b, &p);
        let fate = |state| decide(&record(&b, state), Some(&parent), &b, &sub, 1);
        assert_eq!(fate(BlockState::Accepted), Decision::Duplicate);
        assert_eq!(fate(BlockState::Received), Decision::Publish);
        assert_eq!(fate(BlockState::Orphaned), Decision::Orphaned);
    }

    #[test]
    fn a_block_a_reorg_replaced_stays_orphaned() {
        let (old, new, p) = (block(5, 0), block(5, 0xff), block(4, 0));
        let mut held = record(&new, BlockState::Accepted);
        held.orphaned_hashes.push(ByteBuf::from(old.hash.clone()));
        let parent = record(&p, BlockState::Accepted);
        let resubmitted = submission(&old, &p);
        assert_eq!(
            decide(&held, Some(&parent), &old, &resubmitted, 1),
            Decision::Orphaned
        );
    }

    #[test]
    fn a_block_extending_the_chain_below_an_occupied_height_is_a_reorg() {
        let (old, new, p) = (block(5, 0), block(5, 0xff), block(4, 0));
        let parent = record(&p, BlockState::Accepted);
        let sub = submission(&new, &p);
        assert_eq!(
            decide(
                &record(&old, BlockState::Accepted),
                Some(&parent),
                &new,
                &sub,
                1
            ),
            Decision::Reorg { search: true }
        );
        assert_eq!(
            decide(
                &record(&old, BlockState::Orphaned),
                Some(&parent),
                &new,
                &sub,
                1
            ),
            Decision::Reorg { search: false },
            "a block already orphaned has its descendants orphaned with it"
        );
    }

    #[test]
    fn without_its_parent_below_a_block_waits_then_conflicts() {
        let (old, new) = (block(5, 0), block(5, 0xff));
        let held = record(&old, BlockState::Accepted);
        let elsewhere = block(4, 0xff);
        let sub = submission(&new, &elsewhere);
        let below = record(&block(4, 0), BlockState::Accepted);
        for parent in [None, Some(&below)] {
            assert_eq!(
                decide(&held, parent, &new, &sub, 1),
                Decision::WaitForParent
            );
            assert_eq!(
                decide(&held, parent, &new, &sub, PARENT_RETRIES - 1),
                Decision::WaitForParent
            );
            assert_eq!(
                decide(&held, parent, &new, &sub, PARENT_RETRIES),
                Decision::Conflict
            );
        }
        let orphaned_parent = record(&elsewhere, BlockState::Orphaned);
        assert_eq!(
            decide(&held, Some(&orphaned_parent), &new, &sub, PARENT_RETRIES),
            Decision::Conflict,
            "an orphaned parent does not make a reorg"
        );
    }

    #[test]
    fn a_parent_orphaned_or_replaced_puts_the_block_off_the_chain() {
        let p = block(4, 0);
        assert!(!parent_off_chain(None, &p.hash));
        assert!(!parent_off_chain(
            Some(&record(&p, BlockState::Accepted)),
            &p.hash
        ));
        assert!(parent_off_chain(
            Some(&record(&p, BlockState::Orphaned)),
            &p.hash
        ));
        let successor = block(4, 0xff);
        let mut replaced = record(&successor, BlockState::Accepted);
        replaced.orphaned_hashes.push(ByteBuf::from(p.hash.clone()));
        assert!(parent_off_chain(Some(&replaced), &p.hash));
        assert!(
            !parent_off_chain(Some(&record(&successor, BlockState::Orphaned)), &p.hash),
            "another block orphaned at the height says nothing of this parent"
        );
    }

    #[test]
    fn a_replacing_record_keeps_every_hash_orphaned_at_its_height() {
        let (a, b, c) = (block(5, 0), block(5, 0xf0), block(5, 0x0f));
        let p = block(4, 0);
        let first = record(&a, BlockState::Accepted);
        let second = fresh_status(&submission(&b, &p), &b, 7, Some(&first));
        let third = fresh_status(&submission(&c, &p), &c, 9, Some(&second));
        let hashes: Vec<&[u8]> = third.orphaned_hashes.iter().map(|h| h.as_slice()).collect();
        assert_eq!(hashes, vec![a.hash.as_slice(), b.hash.as_slice()]);
        assert_eq!(third.state, BlockState::Received);
        assert_eq!(third.submitted_at_ms, 9);
    }
}
