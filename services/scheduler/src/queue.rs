//! The scheduler's priority queues: ready tasks wait here, most urgent first, until their
//! (team, class) queue on the bus has room. JetStream has no per-message priority, so holding
//! work back and releasing it in order is what makes provers see the priority order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use push0_protocol::Task;
use push0_runtime::telemetry::TraceContext;

/// Smaller is more urgent: earliest deadline, then lowest block, then closest to the root
/// (aggregation before new leaf work), then part order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority {
    pub deadline_ms: u64,
    pub number: u64,
    pub steps_to_root: u32,
    pub index: u32,
    pub chain: String,
}

impl Priority {
    pub fn of(task: &Task) -> Self {
        Priority {
            deadline_ms: task.deadline_ms.unwrap_or(u64::MAX),
            number: task.block.number,
            steps_to_root: task.workflow.steps_to_root(task.node),
            index: task.node.index,
            chain: task.block.chain.clone(),
        }
    }
}

pub struct Pending {
    pub priority: Priority,
    pub task: Task,
    /// The trace the task was planned in, so its release joins the block's trace.
    pub trace: TraceContext,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.priority == other.priority && self.task.task_id == other.task.task_id
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| self.task.task_id.cmp(&other.task.task_id))
    }
}

/// One (team, class) queue.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    /// Ids of held tasks, so a redelivered trigger adds nothing.
    known: HashSet<String>,
    /// Undelivered tasks on the bus: last server reading plus releases since. None = unknown.
    pub undelivered: Option<u64>,
    /// Blocks on their way here, by (chain, number): taken from the bus in chain order, their
    /// leaves not yet sent (express) or queued. A chain's later tasks wait for them.
    arriving: BTreeMap<(String, u64), usize>,
    /// Release batches taken from the heap and not yet sent.
    pub sending: usize,
    /// Tasks ever counted into `undelivered` by a release here: a reading of the bus taken
    /// while releases go on adds those counted after it started.
    counted: u64,
}

impl Queue {
    /// Counts `n` tasks released onto the bus (if the count is known).
    pub fn count_released(&mut self, n: u64) {
        self.counted += n;
        self.undelivered = self.undelivered.map(|u| u + n);
    }

    /// Where a reading of the bus starts: pass it to [`Queue::read`] with the reading.
    pub fn reading(&self) -> u64 {
        self.counted
    }

    /// The bus held `on_bus` undelivered tasks when asked (at `from`): releases counted since
    /// may have reached the server before or after the reading, so they are added (a count too
    /// high by those that were in it only delays the next release, never breaks the bound).
    pub fn read(&mut self, on_bus: u64, from: u64) {
        self.undelivered = Some(on_bus + (self.counted - from));
    }

    /// Adds a ready task; false if it is already held or was released.
    pub fn push(&mut self, task: Task, trace: TraceContext) -> bool {
        if !self.known.insert(task.task_id.clone()) {
            return false;
        }
        self.heap.push(Reverse(Pending {
            priority: Priority::of(&task),
            task,
            trace,
        }));
        true
    }

    /// Takes the most urgent task. Its id is forgotten here: from now on the plan record says
    /// whether it was released, so memory follows held work, not history.
    pub fn pop(&mut self) -> Option<(Task, TraceContext)> {
        let Reverse(p) = self.heap.pop()?;
        self.known.remove(&p.task.task_id);
        Some((p.task, p.trace))
    }

    /// Puts back a task whose release failed, keeping its place in the order.
    pub fn unpop(&mut self, task: Task, trace: TraceContext) {
        self.known.insert(task.task_id.clone());
        self.heap.push(Reverse(Pending {
            priority: Priority::of(&task),
            task,
            trace,
        }));
    }

    /// Takes the most urgent task, unless a lower block of its chain is still arriving (its
    /// leaves would then go out after this one's).
    pub fn pop_ready(&mut self) -> Option<(Task, TraceContext)> {
        let Reverse(top) = self.heap.peek()?;
        if self.arriving_below(&top.task.block.chain, top.task.block.number) {
            return None;
        }
        self.pop()
    }

    fn arriving_below(&self, chain: &str, number: u64) -> bool {
        self.arriving
            .range((chain.to_string(), 0)..(chain.to_string(), number))
            .next()
            .is_some()
    }

    /// Whether a block of `chain` may send its leaves itself, skipping the heap: nothing is
    /// held (so nothing more urgent waits), no release is being sent and no block of the
    /// chain is still arriving (either would go out after it).
    pub fn open_to(&self, chain: &str) -> bool {
        self.idle() && !self.arriving_below(chain, u64::MAX)
    }

    /// Nothing held and no release being sent.
    pub fn idle(&self) -> bool {
        self.held() == 0 && self.sending == 0
    }

    /// Takes room on the bus for `n` tasks sent around the queue, if `open` and the known
    /// count leaves room under `bound`; they are counted as released.
    pub fn take_room(&mut self, n: u64, bound: u64, open: bool) -> bool {
        let room = open && self.undelivered.is_some_and(|u| u + n <= bound);
        if room {
            self.count_released(n);
        }
        room
    }

    pub fn arrive(&mut self, chain: &str, number: u64) {
        *self
            .arriving
            .entry((chain.to_string(), number))
            .or_default() += 1;
    }

    /// The block arrived (or gave up); true if no block of its number is arriving any more.
    pub fn arrived(&mut self, chain: &str, number: u64) -> bool {
        let key = (chain.to_string(), number);
        match self.arriving.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.arriving.remove(&key);
                true
            }
            None => false,
        }
    }

    pub fn held(&self) -> usize {
        self.heap.len()
    }

    /// Drops every held task `matches` selects; returns how many went.
    pub fn withdraw(&mut self, matches: impl Fn(&Task) -> bool) -> usize {
        let before = self.heap.len();
        let known = &mut self.known;
        self.heap.retain(|Reverse(p)| {
            let keep = !matches(&p.task);
            if !keep {
                known.remove(&p.task.task_id);
            }
            keep
        });
        before - self.heap.len()
    }
}

pub type QueueKey = (String, String);

/// (team, chain).
pub type ChainKey = (String, String);

/// A chain's deferred blocks for one team: planned and recorded, their work left in their
/// plans on the bus while the team already holds as many tasks as it may. They come back
/// into the queues, lowest first, as the held work drains.
#[derive(Debug, Default)]
pub struct Deferred {
    /// Blocks whose plan is written, with their leaf count and whether every leaf goes out
    /// again when it comes back (a redelivered block's: its plan may record a leaf as
    /// released whose publish failed).
    waiting: BTreeMap<u64, (u64, bool)>,
    /// Blocks on their way in or out: a plan being written, or a plan being read back into
    /// the queues. No higher block of the chain comes back before them.
    moving: BTreeMap<u64, usize>,
}

impl Deferred {
    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.moving.is_empty()
    }
}

#[derive(Default)]
pub struct Queues {
    pub queues: HashMap<QueueKey, Queue>,
    /// Deferred blocks per (team, chain); an entry lives while one waits or moves.
    deferred: HashMap<ChainKey, Deferred>,
    /// Leaves on their way into a team's queues: blocks that found it under the held bound
    /// and are storing their plans with a place in line (realtime and redelivered blocks
    /// keep none: at most the blocks being planned go uncounted). Counted as held, so blocks
    /// arriving meanwhile see them.
    promised: HashMap<String, usize>,
}

impl Queues {
    pub fn push(&mut self, task: Task, trace: TraceContext) -> bool {
        let key = (task.team.clone(), task.class.clone());
        self.queues.entry(key).or_default().push(task, trace)
    }

    /// Tasks the team holds in memory over all its classes, and the leaves on their way in.
    pub fn team_held(&self, team: &str) -> usize {
        let held: usize = self
            .queues
            .iter()
            .filter(|((t, _), _)| t == team)
            .map(|(_, q)| q.held())
            .sum();
        held + self.promised.get(team).copied().unwrap_or(0)
    }

    /// `leaves` of a block on their way into `team`'s queues (until [`Queues::delivered`]).
    pub fn promise(&mut self, team: &str, leaves: usize) {
        *self.promised.entry(team.to_string()).or_default() += leaves;
    }

    /// The promised leaves are queued (or will not be).
    pub fn delivered(&mut self, team: &str, leaves: usize) {
        if let Some(n) = self.promised.get_mut(team) {
            *n = n.saturating_sub(leaves);
            if *n == 0 {
                self.promised.remove(team);
            }
        }
    }

    /// Whether a block of `chain` arriving for `team` is deferred: the team holds `max_held`
    /// tasks or more, or blocks of the chain are deferred already (a later block never goes
    /// ahead of them). If so it is counted as moving until [`Queues::settle`].
    pub fn defer(&mut self, team: &str, chain: &str, number: u64, max_held: usize) -> bool {
        let key = (team.to_string(), chain.to_string());
        let behind = self.deferred.get(&key).is_some_and(|d| !d.idle());
        if !behind && self.team_held(team) < max_held {
            return false;
        }
        *self
            .deferred
            .entry(key)
            .or_default()
            .moving
            .entry(number)
            .or_default() += 1;
        true
    }

    /// A block counted as moving by [`Queues::defer`] or [`Queues::take_deferred`] got where
    /// it was going: into the waiting blocks if `waiting` says so (its leaves, and whether
    /// all go out again), or out of the deferral (queued, or nothing to do).
    pub fn settle(&mut self, key: &ChainKey, number: u64, waiting: Option<(u64, bool)>) {
        let Some(d) = self.deferred.get_mut(key) else {
            return;
        };
        if let Some(n) = d.moving.get_mut(&number) {
            *n -= 1;
            if *n == 0 {
                d.moving.remove(&number);
            }
        }
        if let Some((leaves, all)) = waiting {
            let entry = d.waiting.entry(number).or_insert((leaves, all));
            entry.1 |= all;
        }
        if d.idle() {
            self.deferred.remove(key);
        }
    }

    /// Takes the team's lowest deferred block that may come back now (no block of its chain
    /// below it is still moving), counted as moving until [`Queues::settle`]: its chain, its
    /// number and whether every leaf goes out again.
    pub fn take_deferred(&mut self, team: &str) -> Option<(ChainKey, u64, u64, bool)> {
        let (key, number, (leaves, all)) = self
            .deferred
            .iter()
            .filter(|((t, _), _)| t == team)
            .filter_map(|(key, d)| {
                let (&number, &entry) = d.waiting.first_key_value()?;
                let blocked = d.moving.first_key_value().is_some_and(|(&m, _)| m < number);
                (!blocked).then(|| (key.clone(), number, entry))
            })
            .min_by_key(|(_, number, _)| *number)?;
        let d = self.deferred.get_mut(&key).expect("found above");
        d.waiting.remove(&number);
        *d.moving.entry(number).or_default() += 1;
        Some((key, number, leaves, all))
    }

    /// The team's deferred blocks and their leaves.
    pub fn deferred_of(&self, team: &str) -> (u64, u64) {
        self.deferred
            .iter()
            .filter(|((t, _), _)| t == team)
            .flat_map(|(_, d)| d.waiting.values())
            .fold((0, 0), |(blocks, leaves), (n, _)| (blocks + 1, leaves + n))
    }

    /// Teams with deferred blocks waiting.
    pub fn deferring_teams(&self) -> HashSet<String> {
        self.deferred
            .iter()
            .filter(|(_, d)| !d.waiting.is_empty())
            .map(|((team, _), _)| team.clone())
            .collect()
    }

    /// Forgets a removed team's deferred blocks; returns their leaves.
    pub fn forget_deferred(&mut self, team: &str) -> u64 {
        let (_, leaves) = self.deferred_of(team);
        self.deferred.retain(|(t, _), _| t != team);
        leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push0_protocol::{Blob, BlockRef, NodeId, TaskInput, Workflow};

    fn task(number: u64, level: u32, index: u32) -> Task {
        let workflow = Workflow { parts: 4, arity: 2 };
        let node = NodeId { level, index };
        Task {
            task_id: format!("{number}/{node}"),
            team: "t".into(),
            class: "prove".into(),
            block: BlockRef {
                chain: "eth".into(),
                number,
                hash: vec![0; 32],
            },
            node,
            workflow,
            input: TaskInput::Leaf {
                payload: Blob::Inline(vec![]),
                offset: 0,
                len: 0,
            },
            submitted_at_ms: 0,
            deadline_ms: None,
        }
    }

    #[test]
    fn lowest_block_first_then_closest_to_root() {
        let mut q = Queue::default();
        q.push(task(2, 0, 0), TraceContext::default());
        q.push(task(1, 0, 1), TraceContext::default());
        q.push(task(1, 1, 0), TraceContext::default());
        q.push(task(1, 0, 0), TraceContext::default());
        q.push(task(1, 2, 0), TraceContext::default());
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|(t, _)| t.task_id)
            .collect();
        assert_eq!(order, vec!["1/2-0", "1/1-0", "1/0-0", "1/0-1", "2/0-0"]);
    }

    #[test]
    fn earliest_deadline_wins_over_block_number() {
        let mut q = Queue::default();
        let mut late = task(1, 0, 0);
        late.deadline_ms = Some(2000);
        let mut urgent = task(5, 0, 0);
        urgent.deadline_ms = Some(1000);
        q.push(late, TraceContext::default());
        q.push(urgent, TraceContext::default());
        assert_eq!(q.pop().unwrap().0.block.number, 5);
    }

    #[test]
    fn withdraw_removes_one_blocks_tasks() {
        let mut q = Queue::default();
        for (n, i) in [(1, 0), (1, 1), (2, 0)] {
            q.push(task(n, 0, i), TraceContext::default());
        }
        assert_eq!(q.withdraw(|t| t.block.number == 1), 2);
        assert_eq!(q.held(), 1);
        assert!(
            q.push(task(1, 0, 0), TraceContext::default()),
            "forgotten, so it can come back"
        );
    }

    #[test]
    fn a_chains_later_tasks_wait_for_a_block_still_arriving() {
        let mut q = Queue::default();
        q.push(task(3, 0, 0), TraceContext::default());
        q.arrive("eth", 2);
        q.arrive("other", 1);
        assert!(q.pop_ready().is_none(), "block 2 of eth is arriving");
        assert!(!q.open_to("eth"));
        assert!(q.arrived("eth", 2));
        assert_eq!(q.pop_ready().unwrap().0.block.number, 3);
        assert!(q.open_to("eth"), "nothing held, nothing of eth arriving");
        assert!(!q.open_to("other"));
        q.arrive("eth", 4);
        q.push(task(3, 1, 0), TraceContext::default());
        assert!(
            q.pop_ready().is_some(),
            "a higher block arriving holds nothing back"
        );
        assert!(!q.arrived("eth", 9), "never arrived");
    }

    #[test]
    fn a_task_is_queued_once() {
        let mut q = Queue::default();
        assert!(q.push(task(1, 0, 0), TraceContext::default()));
        assert!(!q.push(task(1, 0, 0), TraceContext::default()));
        assert_eq!(q.held(), 1);
    }

    #[test]
    fn a_reading_of_the_bus_adds_the_releases_counted_while_it_ran() {
        let mut q = Queue::default();
        q.count_released(3);
        assert_eq!(q.undelivered, None, "no count without a reading");
        let from = q.reading();
        q.count_released(4);
        // Delivered: all but 2 of the tasks the bus had when asked.
        q.read(2, from);
        assert_eq!(
            q.undelivered,
            Some(6),
            "2 on the bus + 4 released meanwhile"
        );
        q.count_released(1);
        assert_eq!(q.undelivered, Some(7));
        let from = q.reading();
        q.read(0, from);
        assert_eq!(q.undelivered, Some(0));
    }

    #[test]
    fn room_is_taken_only_when_open_and_under_the_bound() {
        let mut q = Queue::default();
        assert!(
            !q.take_room(1, 16, true),
            "no room while the count is unknown"
        );
        let from = q.reading();
        q.read(14, from);
        assert!(!q.take_room(1, 16, false), "not while closed");
        assert!(q.take_room(2, 16, true));
        assert_eq!(q.undelivered, Some(16));
        assert!(!q.take_room(1, 16, true), "the bound is reached");
    }

    fn eth() -> ChainKey {
        ("t".to_string(), "eth".to_string())
    }

    #[test]
    fn blocks_are_deferred_past_the_held_bound_and_later_ones_follow() {
        let mut qs = Queues::default();
        qs.push(task(1, 0, 0), TraceContext::default());
        assert!(!qs.defer("t", "eth", 2, 2), "1 held, room for 2");
        qs.push(task(2, 0, 0), TraceContext::default());
        assert!(qs.defer("t", "eth", 3, 2), "the team holds 2");
        assert!(
            !qs.defer("other", "eth", 3, 2),
            "another team holds nothing"
        );
        qs.queues
            .values_mut()
            .for_each(|q| while q.pop().is_some() {});
        assert!(
            qs.defer("t", "eth", 4, 2),
            "nothing held, but block 3 of eth is deferred: 4 waits behind it"
        );
        assert!(!qs.defer("t", "gnosis", 1, 2), "another chain is not");
        qs.settle(&eth(), 4, Some((1, false)));
        assert_eq!(
            qs.take_deferred("t"),
            None,
            "block 3's plan is still being written: 4 may not come back before it"
        );
        qs.settle(&eth(), 3, Some((5, true)));
        assert_eq!(qs.deferred_of("t"), (2, 6));
        assert_eq!(qs.take_deferred("t"), Some((eth(), 3, 5, true)));
        assert_eq!(qs.take_deferred("t"), None, "3 is moving back in");
        qs.settle(&eth(), 3, None);
        assert_eq!(qs.take_deferred("t"), Some((eth(), 4, 1, false)));
        assert!(qs.defer("t", "eth", 5, 2), "4 is still moving back in");
        qs.settle(&eth(), 4, None);
        qs.settle(&eth(), 5, None);
        assert!(qs.deferred.is_empty(), "nothing deferred any more");
        assert!(!qs.defer("t", "eth", 6, 2));
    }

    #[test]
    fn leaves_on_their_way_in_count_as_held() {
        let mut qs = Queues::default();
        qs.promise("t", 3);
        assert!(!qs.defer("t", "eth", 1, 4));
        qs.promise("t", 3);
        assert!(qs.defer("t", "eth", 2, 4), "6 promised");
        qs.delivered("t", 6);
        assert_eq!(qs.team_held("t"), 0);
        assert!(qs.promised.is_empty());
    }

    #[test]
    fn a_redelivered_deferred_block_sends_every_leaf() {
        let mut qs = Queues::default();
        assert!(qs.defer("t", "eth", 7, 0));
        qs.settle(&eth(), 7, Some((3, false)));
        assert!(qs.defer("t", "eth", 7, 0));
        qs.settle(&eth(), 7, Some((3, true)));
        assert_eq!(qs.take_deferred("t"), Some((eth(), 7, 3, true)));
        qs.settle(&eth(), 7, Some((3, true)));
        assert_eq!(
            qs.deferring_teams().len(),
            1,
            "put back after a failed read"
        );
        assert_eq!(qs.forget_deferred("t"), 3);
        assert!(qs.take_deferred("t").is_none());
    }
}
