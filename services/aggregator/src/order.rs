//! The publication order's decisions, apart from the I/O that feeds them: which block stands
//! at the cursor, which root may be published for it, how far a run goes, whether a realtime
//! proof may go out; and the walks running in this process.

use std::collections::HashMap;
use std::sync::Mutex;

use push0_protocol::{BlockRef, BlockState, BlockStatus, Cursor, PartRecord, Plan};

/// Proofs a walk publishes before it writes the cursor: what a crash may publish again.
pub(crate) const MAX_RUN: u64 = 32;

/// Proofs the walk may publish before it writes the cursor. Until a first proof is out, the
/// scheduler may still move the start down (a lower block planned late): that first proof is
/// written to the cursor on its own.
pub(crate) fn run_limit(at: &Cursor) -> u64 {
    if at.published == 0 { 1 } else { MAX_RUN }
}

/// What ingest's status record says stands at a height of the chain.
#[derive(Debug, PartialEq)]
pub(crate) enum AtHeight {
    /// This block is on the chain there: only its root may be published.
    Block(BlockRef),
    /// The block there was taken off the chain by a reorg, and no successor recorded yet:
    /// the walk stops, so an orphan's proof is never published.
    Orphaned,
    /// No record (not yet accepted, or expired after a day): the team's plan may name it.
    Unrecorded,
}

pub(crate) fn at_height(status: Option<BlockStatus>) -> AtHeight {
    match status {
        Some(s) if s.state == BlockState::Orphaned => AtHeight::Orphaned,
        Some(s) => AtHeight::Block(s.block),
        None => AtHeight::Unrecorded,
    }
}

/// The block a team's plan names at a height whose status record is gone, unless the plan was
/// withdrawn.
pub(crate) fn planned_block(plan: Option<Plan>) -> Option<BlockRef> {
    plan.filter(|p| p.withdrawn.is_none())
        .map(|p| p.accepted.block)
}

/// A root known in memory (recorded here) stands for `block` only if it proves that very
/// block: after a reorg a root of the old block at the height is not it.
pub(crate) fn known_root(known: Option<PartRecord>, block: &BlockRef) -> Option<PartRecord> {
    known.filter(|r| r.block == *block)
}

/// Whether a realtime proof of `root` may go out: its block is on the chain as ingest records
/// it, even if the scheduler has not heard of a reorg yet.
pub(crate) fn on_chain(status: Option<&BlockStatus>, root: &BlockRef) -> bool {
    status.is_some_and(|s| s.block.hash == root.hash && s.state != BlockState::Orphaned)
}

/// The plan marked finalized for `root`'s publication, or None when it must not be: a plan of
/// another block at the height, one already finalized, or one withdrawn. Written by
/// compare-and-set, this settles the race with a withdrawal: a block is either withdrawn or
/// published, never both.
pub(crate) fn finalized(plan: Option<&Plan>, root: &BlockRef) -> Option<Plan> {
    let p = plan?;
    if p.accepted.block.hash != root.hash || p.finalized || p.withdrawn.is_some() {
        return None;
    }
    let mut p = p.clone();
    p.finalized = true;
    Some(p)
}

/// The publication walks running in this process, by cursor key, each with the roots recorded
/// meanwhile and not yet taken by it.
#[derive(Default)]
pub(crate) struct Walks(Mutex<HashMap<String, Vec<PartRecord>>>);

impl Walks {
    /// Whether a walk of `key` is running (it may end at any moment).
    pub(crate) fn running(&self, key: &str) -> bool {
        self.0.lock().expect("walks lock").contains_key(key)
    }

    /// Starts the walk of `key`, or hands `recorded` to the running one and returns None.
    pub(crate) fn start(&self, key: String, recorded: &PartRecord) -> Option<Walk<'_>> {
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
pub(crate) struct Walk<'a> {
    walks: &'a Walks,
    key: String,
    ended: bool,
}

impl Walk<'_> {
    /// The roots handed over since the last call; the walk goes on either way.
    pub(crate) fn take_handed(&mut self) -> impl Iterator<Item = PartRecord> + use<> {
        let mut walks = self.walks.0.lock().expect("walks lock");
        let handed = walks.get_mut(&self.key).map(std::mem::take);
        handed.unwrap_or_default().into_iter()
    }

    /// The roots handed over since the last call, if any; if none, the walk ends here, in the
    /// same step, so no root can be handed over in between and be missed.
    pub(crate) fn more(&mut self) -> Option<impl Iterator<Item = PartRecord> + use<>> {
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
    use push0_protocol::{
        Blob, BlockAccepted, BlockRef, BlockState, BlockStatus, Cursor, NodeId, PartRecord, Plan,
        Workflow,
    };

    use super::*;

    fn block(number: u64, fork: u8) -> BlockRef {
        BlockRef {
            chain: "eth".into(),
            number,
            hash: vec![number as u8 ^ fork; 32],
        }
    }

    fn status(block: BlockRef, state: BlockState) -> BlockStatus {
        BlockStatus {
            block,
            state,
            payload_len: 0,
            submitted_at_ms: 0,
            accepted_at_ms: None,
            duplicates: 0,
            parent_hash: Vec::new(),
            replaced: Vec::new(),
            orphaned_hashes: Vec::new(),
        }
    }

    fn plan(block: BlockRef) -> Plan {
        Plan {
            team: "t".into(),
            accepted: BlockAccepted {
                block,
                parent_hash: Vec::new(),
                timestamp_ms: 0,
                submitted_at_ms: 0,
                deadline_ms: None,
                payload: Blob::Inline(Vec::new()),
            },
            workflow: Workflow::SINGLE,
            released: Vec::new(),
            planned_at_ms: 0,
            failed: None,
            deadline_ms: None,
            withdrawn: None,
            finalized: false,
        }
    }

    #[test]
    fn the_first_proof_of_a_cursor_is_written_on_its_own() {
        let fresh = Cursor {
            next: 7,
            published: 0,
        };
        let going = Cursor {
            next: 9,
            published: 2,
        };
        assert_eq!(run_limit(&fresh), 1);
        assert_eq!(run_limit(&going), MAX_RUN);
    }

    #[test]
    fn the_block_at_a_height_is_what_ingest_recorded_there() {
        let b = block(5, 0);
        assert_eq!(
            at_height(Some(status(b.clone(), BlockState::Accepted))),
            AtHeight::Block(b.clone())
        );
        assert_eq!(
            at_height(Some(status(b.clone(), BlockState::Received))),
            AtHeight::Block(b.clone()),
            "a block recorded but not yet announced is still the one at its height"
        );
        assert_eq!(
            at_height(Some(status(b, BlockState::Orphaned))),
            AtHeight::Orphaned
        );
        assert_eq!(at_height(None), AtHeight::Unrecorded);
    }

    #[test]
    fn a_withdrawn_plan_names_no_block() {
        let b = block(5, 0);
        assert_eq!(planned_block(Some(plan(b.clone()))), Some(b.clone()));
        let mut withdrawn = plan(b);
        withdrawn.withdrawn = Some("missed its slot".into());
        assert_eq!(planned_block(Some(withdrawn)), None);
        assert_eq!(planned_block(None), None);
    }

    #[test]
    fn a_root_of_a_replaced_block_is_not_published_for_its_successor() {
        let (old, new) = (block(5, 0), block(5, 0xff));
        let mut r = root(5);
        r.block = old.clone();
        assert_eq!(known_root(Some(r.clone()), &old), Some(r.clone()));
        assert_eq!(known_root(Some(r), &new), None);
        assert_eq!(known_root(None, &old), None);
    }

    #[test]
    fn a_realtime_proof_goes_out_only_for_a_block_on_the_chain() {
        let (b, other) = (block(5, 0), block(5, 0xff));
        let accepted = status(b.clone(), BlockState::Accepted);
        let orphaned = status(b.clone(), BlockState::Orphaned);
        let replaced = status(other, BlockState::Accepted);
        assert!(on_chain(Some(&accepted), &b));
        assert!(!on_chain(Some(&orphaned), &b));
        assert!(!on_chain(Some(&replaced), &b));
        assert!(!on_chain(None, &b));
    }

    #[test]
    fn a_block_is_finalized_once_and_never_after_a_withdrawal() {
        let b = block(5, 0);
        let fresh = plan(b.clone());
        let done = finalized(Some(&fresh), &b).expect("a fresh plan is finalized");
        assert!(done.finalized);
        assert_eq!(finalized(Some(&done), &b), None, "only once");
        let mut withdrawn = plan(b.clone());
        withdrawn.withdrawn = Some("missed its slot".into());
        assert_eq!(finalized(Some(&withdrawn), &b), None);
        assert_eq!(
            finalized(Some(&fresh), &block(5, 0xff)),
            None,
            "another block's plan"
        );
        assert_eq!(finalized(None, &b), None);
    }

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
