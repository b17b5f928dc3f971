//! A chain's blocks handled pipelined. A block's record is created and its parent's read while
//! blocks before it on its chain may still be handled; then it waits for the block just before
//! to send its notice (or end) before it decides on its own. What it read stands only if every
//! block still running when it started was a plain acceptance (changed no record but its own);
//! a parent's record not found yet may be the block just before, which hands its record over.
//! Otherwise it reads again, as it would have had it waited from the start.
//!
//! The one read that goes the other way is a reorg's search for the old branch's descendants:
//! it may find records that blocks behind it created early, which the same blocks handled one
//! at a time would not have made yet. [`Turn::made_behind`] tells the search which those are.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use push0_protocol::{BlockRef, BlockStatus};
use tokio::sync::{oneshot, watch};

/// What a block's create of its own record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    /// No answer yet.
    Pending,
    /// It made the record: there was none at the height when the block started.
    Created,
    /// A record was there already.
    Found,
    /// The create failed, so whether it made the record is not known.
    Unknown,
}

/// A record the reorg search found may be one a block behind it made, and that block's create
/// failed: the search cannot tell whether the sequential order would have seen the record.
#[derive(Debug)]
pub(crate) struct Unsettled;

/// The blocks of each chain in the order their handling started here.
#[derive(Default, Clone)]
pub(crate) struct Turns(Arc<Mutex<HashMap<String, Chain>>>);

#[derive(Default)]
struct Chain {
    /// What the block that started last will tell the next one.
    last: Option<oneshot::Receiver<Handled>>,
    next_ticket: u64,
    /// Blocks started and not yet ended, by start order.
    running: BTreeMap<u64, Running>,
}

struct Running {
    block: BlockRef,
    made: watch::Receiver<Made>,
}

/// What a block's handling tells the next block of its chain.
#[derive(Debug, Clone, PartialEq)]
struct Handled {
    /// It changed no record but its own (no reorg, no orphan), and neither did any block
    /// running when it started.
    plain: bool,
    /// Its record as it sent its notice, when plain.
    status: Option<BlockStatus>,
}

impl Turns {
    /// `block`'s turn on its chain: behind the block whose handling started last.
    pub(crate) fn take(&self, block: &BlockRef) -> Turn {
        let (done, next) = oneshot::channel();
        let (made, made_rx) = watch::channel(Made::Pending);
        let mut chains = self.0.lock().expect("turns lock");
        let chain = chains.entry(block.chain.clone()).or_default();
        let ticket = chain.next_ticket;
        chain.next_ticket += 1;
        chain.running.insert(
            ticket,
            Running {
                block: block.clone(),
                made: made_rx,
            },
        );
        // One that has sent already changes nothing any more, nor does any block before it
        // (each waits for the one before it first): nothing to wait for.
        let before = chain
            .last
            .replace(next)
            .filter(|b| b.is_empty() && !b.is_terminated());
        Turn {
            turns: self.clone(),
            chain: block.chain.clone(),
            ticket,
            before,
            in_flight_plain: true,
            done: Some(done),
            made,
        }
    }
}

/// One block's place in its chain's order. Dropped without [`Turn::done`], it tells the next
/// block that this one was not a plain acceptance.
pub(crate) struct Turn {
    turns: Turns,
    chain: String,
    ticket: u64,
    /// The block before, if it was still running when this one started.
    before: Option<oneshot::Receiver<Handled>>,
    /// Whether every block running when this one started was plain (known after `reads_stand`).
    in_flight_plain: bool,
    done: Option<oneshot::Sender<Handled>>,
    made: watch::Sender<Made>,
}

impl Turn {
    /// Says what this block's create of its own record did, for the blocks before it.
    pub(crate) fn made(&self, made: Made) {
        self.made.send_replace(made);
    }

    /// Waits for the block before to send its notice or end, if it was running when this one
    /// started; then tells whether reads made meanwhile stand. `parent` is the parent's record
    /// as read; if it was not found and the block before is the parent, that block's record.
    pub(crate) async fn reads_stand(
        &mut self,
        number: u64,
        parent: &mut Option<BlockStatus>,
    ) -> bool {
        let Some(before) = self.before.take() else {
            return true;
        };
        // A handling cancelled before it said counts as not plain (the drop says so first).
        let handled = before.await.unwrap_or(Handled {
            plain: false,
            status: None,
        });
        self.in_flight_plain = handled.plain;
        if !handled.plain {
            return false;
        }
        if parent.is_none() {
            *parent = handled
                .status
                .filter(|s| s.block.number.checked_add(1) == Some(number));
        }
        parent.is_some()
    }

    /// Lets the next block decide: plain only if this one was (`status` its record) and so
    /// was every block running when it started, which the next block's reads may have
    /// overlapped too.
    pub(crate) fn done(&mut self, status: Option<&BlockStatus>) {
        if let Some(done) = self.done.take() {
            let plain = status.is_some() && self.in_flight_plain;
            let _ = done.send(Handled {
                plain,
                status: status.filter(|_| plain).cloned(),
            });
        }
    }

    /// Whether `record`, found at its height, was made by a block of this chain that started
    /// after this one: had the blocks been handled one at a time, the height would still be
    /// empty. Waits for such a block's create to answer.
    pub(crate) async fn made_behind(&self, record: &BlockRef) -> Result<bool, Unsettled> {
        let behind: Vec<watch::Receiver<Made>> = {
            let chains = self.turns.0.lock().expect("turns lock");
            let Some(chain) = chains.get(&self.chain) else {
                return Ok(false);
            };
            chain
                .running
                .range(self.ticket + 1..)
                .filter(|(_, r)| r.block == *record)
                .map(|(_, r)| r.made.clone())
                .collect()
        };
        let mut created = false;
        for mut made in behind {
            // A block that ends before its create answers counts as unknown.
            let made = made
                .wait_for(|m| *m != Made::Pending)
                .await
                .map(|m| *m)
                .unwrap_or(Made::Unknown);
            match made {
                Made::Created => created = true,
                Made::Unknown => return Err(Unsettled),
                Made::Found | Made::Pending => {}
            }
        }
        Ok(created)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.done(None);
        let mut chains = self.turns.0.lock().expect("turns lock");
        if let Some(chain) = chains.get_mut(&self.chain) {
            chain.running.remove(&self.ticket);
            // The last running block of its chain is gone: every block has told the next what
            // it did, so the next one to start has nothing to wait for, as on a chain never
            // seen. Forgetting the chain keeps the map to the chains with blocks in flight,
            // whatever chain names sources use.
            if chain.running.is_empty() {
                chains.remove(&self.chain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push0_protocol::BlockState;

    fn block(number: u64) -> BlockRef {
        BlockRef {
            chain: "eth".into(),
            number,
            hash: vec![number as u8; 32],
        }
    }

    fn status(number: u64) -> BlockStatus {
        BlockStatus {
            block: block(number),
            parent_hash: vec![number.wrapping_sub(1) as u8; 32],
            state: BlockState::Received,
            payload_len: 0,
            submitted_at_ms: 0,
            accepted_at_ms: None,
            duplicates: 0,
            orphaned_hashes: Vec::new(),
            replaced: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_block_waits_for_the_one_before_on_its_chain_only() {
        let turns = Turns::default();
        let mut first = turns.take(&block(7));
        let mut second = turns.take(&block(8));
        let mut other = turns.take(&BlockRef {
            chain: "op".into(),
            ..block(8)
        });
        assert!(
            first.reads_stand(7, &mut None).await,
            "nothing ran before it"
        );
        assert!(
            other.reads_stand(8, &mut None).await,
            "another chain is not waited for"
        );
        let waiting = tokio::spawn(async move {
            let mut parent = None;
            let stand = second.reads_stand(8, &mut parent).await;
            (stand, parent)
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second waits while the first runs"
        );
        first.done(Some(&status(7)));
        let (stand, parent) = waiting.await.expect("joined");
        assert!(stand, "behind a plain block");
        assert_eq!(parent, Some(status(7)), "the parent handed over, not read");
    }

    #[tokio::test]
    async fn reads_are_made_again_behind_a_block_that_was_not_plain() {
        let turns = Turns::default();
        let first = turns.take(&block(7));
        let mut second = turns.take(&block(8));
        drop(first);
        assert!(
            !second.reads_stand(8, &mut Some(status(7))).await,
            "dropped unfinished"
        );

        let mut first = turns.take(&block(5));
        let mut second = turns.take(&block(8));
        first.done(Some(&status(5)));
        assert!(
            !second.reads_stand(8, &mut None).await,
            "the parent not found, and not the block before: it may have been on its way"
        );
    }

    #[tokio::test]
    async fn a_block_that_was_not_plain_taints_every_block_it_overlapped() {
        let turns = Turns::default();
        let mut first = turns.take(&block(7));
        let mut second = turns.take(&block(8));
        // The third starts while the first (which will not be plain) still runs.
        let mut third = turns.take(&block(9));
        first.done(None);
        assert!(!second.reads_stand(8, &mut Some(status(7))).await);
        // The second reads again and is plain itself; the third's reads overlapped the
        // first all the same.
        second.done(Some(&status(8)));
        assert!(!third.reads_stand(9, &mut Some(status(8))).await);
        third.done(Some(&status(9)));
        // One that starts after everything sent has nothing to wait for.
        let mut fourth = turns.take(&block(10));
        assert!(fourth.reads_stand(10, &mut None).await);
    }

    #[tokio::test]
    async fn only_records_made_by_blocks_behind_are_told_apart() {
        let turns = Turns::default();
        let ahead = turns.take(&block(3));
        let reorg = turns.take(&block(4));
        let created = turns.take(&block(5));
        let found = turns.take(&block(6));
        let failed = turns.take(&block(7));
        ahead.made(Made::Created);
        found.made(Made::Found);
        failed.made(Made::Unknown);
        assert!(
            !reorg.made_behind(&block(3)).await.unwrap(),
            "a block ahead made it: the search sees it as it would have"
        );
        assert!(!reorg.made_behind(&block(6)).await.unwrap(), "was there");
        assert!(reorg.made_behind(&block(7)).await.is_err(), "unknown");
        let other_hash = BlockRef {
            hash: vec![0xee; 32],
            ..block(5)
        };
        assert!(
            !reorg.made_behind(&other_hash).await.unwrap(),
            "another block"
        );
        // The create behind has not answered yet: the search waits for it.
        let asking = tokio::spawn(async move { reorg.made_behind(&block(5)).await.unwrap() });
        tokio::task::yield_now().await;
        assert!(!asking.is_finished(), "waits for the create's answer");
        created.made(Made::Created);
        assert!(asking.await.expect("joined"), "made behind it");
        drop(found);
        let last = turns.take(&block(8));
        assert_eq!(
            turns.0.lock().unwrap()["eth"].running.len(),
            4,
            "ended blocks leave the running ones"
        );
        drop(last);
    }

    #[tokio::test]
    async fn a_chain_is_forgotten_when_its_last_block_ends() {
        let turns = Turns::default();
        let chains = |t: &Turns| t.0.lock().expect("turns lock").len();
        let mut first = turns.take(&block(7));
        let mut second = turns.take(&block(8));
        assert_eq!(chains(&turns), 1);
        first.done(Some(&status(7)));
        drop(first);
        assert_eq!(chains(&turns), 1, "a block of the chain still runs");
        assert!(second.reads_stand(8, &mut None).await);
        second.done(Some(&status(8)));
        drop(second);
        assert_eq!(chains(&turns), 0, "nothing of the chain runs");
        let mut third = turns.take(&block(9));
        assert!(
            third.reads_stand(9, &mut None).await,
            "the next block waits for nothing, as on a new chain"
        );
        for n in 0..100u64 {
            let mut t = turns.take(&BlockRef {
                chain: format!("chain-{n}"),
                ..block(1)
            });
            t.done(Some(&status(1)));
        }
        assert_eq!(chains(&turns), 1, "only the chain with a block in flight");
    }
}
