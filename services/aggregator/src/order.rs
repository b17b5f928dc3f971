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

pub(crate) fn at_height(status: Option<&BlockStatus>) -> AtHeight {
    match status {
        Some(s) if s.state == BlockState::Orphaned => AtHeight::Orphaned,
        Some(s) => AtHeight::Block(s.block.clone()),
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

/// What the last walk of a cursor here knew when it ended, right after a proof of its own:
/// enough to publish the next block's proof without reading first. The server checks the rest:
/// the proof names `last`, and is refused if anything landed beside the team's proofs of the
/// chain since: another walk's proof (an instance that lost its lease) or a fence mark, which
/// ingest publishes before and after a reorg changes a record. The cursor moves only after a
/// proof (a walk's) or a reorg (the scheduler's rewind, behind ingest's marks), so while
/// `last` is the last there, the cursor is still `cursor`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tail {
    pub cursor: Cursor,
    pub revision: u64,
    /// The proofs stream's sequence of the walk's last proof.
    pub last: u64,
    /// The record of block `cursor.next` as read beside or after that proof's publish (None:
    /// no record then, the block not accepted yet).
    pub status: Option<BlockStatus>,
}

/// How long after its block's submission a root may go out on a tail that found no record of
/// its block: well inside the day a status record lives, so "no record" meant "not accepted
/// yet", not "expired".
pub(crate) const TAIL_NO_RECORD_MS: u64 = 6 * 60 * 60 * 1000;

/// Whether `root`'s proof may go out on `tail` without reading the head: its block is the one
/// at the cursor, and was on the chain (or not recorded yet) when the last proof went out. A
/// change to it since then is a reorg, which the fence refuses.
pub(crate) fn follows(tail: &Tail, root: &PartRecord, now_ms: u64) -> bool {
    if root.block.number != tail.cursor.next || tail.cursor.published == 0 {
        return false;
    }
    match &tail.status {
        Some(s) => s.block.hash == root.block.hash && s.state != BlockState::Orphaned,
        None => now_ms.saturating_sub(root.submitted_at_ms) < TAIL_NO_RECORD_MS,
    }
}

/// The publication walks running in this process, by cursor key, each with the roots recorded
/// meanwhile and not yet taken by it; and the tails the last walks left.
#[derive(Default)]
pub(crate) struct Walks {
    running: Mutex<HashMap<String, Vec<PartRecord>>>,
    tails: Mutex<HashMap<String, Tail>>,
}

impl Walks {
    /// Whether a walk of `key` is running (it may end at any moment).
    pub(crate) fn running(&self, key: &str) -> bool {
        self.running.lock().expect("walks lock").contains_key(key)
    }

    /// The tail of `key`'s last walk, taken if `root` follows it (see [`follows`]); a tail
    /// `root` does not follow stays for the root that does.
    pub(crate) fn tail(&self, key: &str, root: &PartRecord, now_ms: u64) -> Option<Tail> {
        let mut tails = self.tails.lock().expect("tails lock");
        match tails.get(key) {
            Some(tail) if follows(tail, root, now_ms) => tails.remove(key),
            _ => None,
        }
    }

    /// What a walk of `key` that published left: its tail, or None when it cannot serve one
    /// (the last tail is then stale too).
    pub(crate) fn left(&self, key: &str, tail: Option<Tail>) {
        let mut tails = self.tails.lock().expect("tails lock");
        match tail {
            Some(tail) => tails.insert(key.to_string(), tail),
            None => tails.remove(key),
        };
    }

    /// Starts the walk of `key`, or hands `recorded` to the running one and returns None.
    pub(crate) fn start(&self, key: String, recorded: &PartRecord) -> Option<Walk<'_>> {
        let mut walks = self.running.lock().expect("walks lock");
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
        let mut walks = self.walks.running.lock().expect("walks lock");
        let handed = walks.get_mut(&self.key).map(std::mem::take);
        handed.unwrap_or_default().into_iter()
    }

    /// The roots handed over since the last call, if any; if none, the walk ends here, in the
    /// same step, so no root can be handed over in between and be missed.
    pub(crate) fn more(&mut self) -> Option<impl Iterator<Item = PartRecord> + use<>> {
        let mut walks = self.walks.running.lock().expect("walks lock");
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
            self.walks
                .running
                .lock()
                .expect("walks lock")
                .remove(&self.key);
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
            at_height(Some(&status(b.clone(), BlockState::Accepted))),
            AtHeight::Block(b.clone())
        );
        assert_eq!(
            at_height(Some(&status(b.clone(), BlockState::Received))),
            AtHeight::Block(b.clone()),
            "a block recorded but not yet announced is still the one at its height"
        );
        assert_eq!(
            at_height(Some(&status(b, BlockState::Orphaned))),
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
    fn only_the_block_at_the_cursor_on_the_chain_follows_a_tail() {
        let r = root(5);
        let tail = |status: Option<BlockStatus>| Tail {
            cursor: Cursor {
                next: 5,
                published: 4,
            },
            revision: 9,
            last: 40,
            status,
        };
        let on = tail(Some(status(r.block.clone(), BlockState::Accepted)));
        assert!(follows(&on, &r, 1_000));
        assert!(
            !follows(&on, &root(6), 1_000),
            "not the block at the cursor"
        );
        let first = Tail {
            cursor: Cursor {
                next: 5,
                published: 0,
            },
            ..on.clone()
        };
        assert!(
            !follows(&first, &r, 1_000),
            "before a first proof the scheduler may still move the start"
        );
        let orphaned = tail(Some(status(r.block.clone(), BlockState::Orphaned)));
        assert!(!follows(&orphaned, &r, 1_000));
        let replaced = tail(Some(status(block(5, 0xff), BlockState::Accepted)));
        assert!(
            !follows(&replaced, &r, 1_000),
            "another block at the height"
        );
        let unrecorded = tail(None);
        assert!(follows(&unrecorded, &r, 1_000), "accepted since the read");
        assert!(
            !follows(&unrecorded, &r, TAIL_NO_RECORD_MS),
            "a record of a block this old may have expired"
        );
    }

    #[test]
    fn a_tail_is_taken_once_by_the_root_that_follows_it() {
        let walks = Walks::default();
        let tail = Tail {
            cursor: Cursor {
                next: 5,
                published: 4,
            },
            revision: 9,
            last: 40,
            status: None,
        };
        walks.left("t.eth", Some(tail.clone()));
        assert_eq!(walks.tail("t.eth", &root(6), 0), None);
        assert_eq!(walks.tail("u.eth", &root(5), 0), None);
        assert_eq!(walks.tail("t.eth", &root(5), 0), Some(tail.clone()));
        assert_eq!(walks.tail("t.eth", &root(5), 0), None, "taken");
        walks.left("t.eth", Some(tail));
        walks.left("t.eth", None);
        assert_eq!(
            walks.tail("t.eth", &root(5), 0),
            None,
            "a walk that cannot serve one clears it"
        );
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
