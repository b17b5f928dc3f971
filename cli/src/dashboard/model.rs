//! What the dashboard knows, fed by the bus and read as one snapshot: recent blocks with each
//! team's state, per-team figures over the last minutes, and the latest dead letters. Pure
//! (no I/O), so the arithmetic is tested without a server.

use std::collections::{BTreeMap, HashMap, VecDeque};

use push0_protocol::{BlockProof, Capacity, DeadLetter, Mode, Plan, Shape, TeamConfig, TeamStatus};
use serde::Serialize;

/// Blocks kept per chain: the table shows the newest [`TABLE_ROWS`], the figures use them all.
const KEPT_PER_CHAIN: usize = 2_000;
/// Rows of the recent-blocks table.
const TABLE_ROWS: usize = 30;
/// Dead letters shown.
const DEAD_LETTERS: usize = 20;
/// Width of one bucket of the per-team series, and how many there are (5 minutes).
const BUCKET_MS: u64 = 10_000;
const BUCKETS: u64 = 30;
/// Ethproofs' real-time cohort: a block proved within 10 s of its submission.
pub const REALTIME_MS: u64 = 10_000;
/// A block queued or proving for longer than this is stuck (Ethproofs flags it).
pub const STUCK_MS: u64 = 20 * 60 * 1000;
/// A block still unproved this long after its submission counts against liveness; younger
/// ones are still in time.
pub const LIVENESS_GRACE_MS: u64 = 2 * 60 * 1000;
/// A capacity record older than this belongs to a gateway that stopped renewing it.
const CAPACITY_FRESH_MS: u64 = 6_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Queued,
    Proving,
    Proved,
    Failed,
    Withdrawn,
}

/// One team's part of one block.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub state: CellState,
    pub proving_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub overhead_ms: Option<u64>,
    pub proof_bytes: Option<u64>,
    pub verified: Option<bool>,
    #[serde(skip)]
    hash: Vec<u8>,
    #[serde(skip)]
    published_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Row {
    hash: Vec<u8>,
    submitted_at_ms: u64,
    cells: BTreeMap<String, Cell>,
}

#[derive(Default)]
pub struct Model {
    teams: Vec<TeamConfig>,
    statuses: HashMap<String, TeamStatus>,
    /// Capacity records by key, as last written.
    capacity: HashMap<String, Capacity>,
    /// Tasks on the bus not yet delivered, per team (polled).
    pending: HashMap<String, u64>,
    /// (chain, number) → row.
    rows: BTreeMap<(String, u64), Row>,
    dead_letters: VecDeque<DeadLetterRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRow {
    pub at_ms: u64,
    pub service: String,
    pub reason: String,
    pub detail: String,
    pub team: Option<String>,
    pub block: Option<String>,
    pub task: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    pub prefix: String,
    pub teams: Vec<TeamView>,
    pub blocks: Vec<BlockView>,
    pub dead_letters: Vec<DeadLetterRow>,
}

#[derive(Debug, Serialize)]
pub struct TeamView {
    pub name: String,
    pub mode: &'static str,
    pub shape: String,
    pub proof_system: Option<String>,
    pub verified: bool,
    pub live_gateways: u32,
    pub live_slots: u32,
    pub busy_slots: u32,
    pub queued: u64,
    pub alerts: Vec<&'static str>,
    #[serde(flatten)]
    pub figures: Figures,
    pub series: Vec<Bucket>,
}

/// The figures Ethproofs ranks a cluster by, over the blocks seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub submitted: u64,
    pub proved: u64,
    /// Share of proved blocks proved within [`REALTIME_MS`] of submission.
    pub within_10s: Option<f64>,
    /// Proved ÷ blocks that are settled or past [`LIVENESS_GRACE_MS`].
    pub liveness: Option<f64>,
    /// Blocks queued or proving for over [`STUCK_MS`].
    pub stuck: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub start_ms: u64,
    pub proved: u64,
    pub latency_p50_ms: Option<f64>,
    pub overhead_p50_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct BlockView {
    pub chain: String,
    pub number: u64,
    pub hash: String,
    pub submitted_at_ms: u64,
    pub cells: BTreeMap<String, Cell>,
}

impl Model {
    pub fn set_teams(&mut self, teams: Vec<TeamConfig>) {
        self.teams = teams;
    }

    pub fn set_status(&mut self, status: TeamStatus) {
        self.statuses.insert(status.team.clone(), status);
    }

    pub fn set_capacity(&mut self, key: &str, capacity: Option<Capacity>) {
        match capacity {
            Some(c) => self.capacity.insert(key.to_string(), c),
            None => self.capacity.remove(key),
        };
    }

    pub fn set_pending(&mut self, team: &str, pending: u64) {
        self.pending.insert(team.to_string(), pending);
    }

    /// A team's plan for a block, as the scheduler last wrote it.
    pub fn plan(&mut self, plan: &Plan) {
        let b = &plan.accepted.block;
        let row = self.row(&b.chain, b.number);
        if row.hash != b.hash {
            // A reorg replaced the block at this height: the new one's cells start over.
            if plan.accepted.submitted_at_ms < row.submitted_at_ms && !row.hash.is_empty() {
                return;
            }
            row.hash = b.hash.clone();
            row.cells.retain(|_, c| c.hash == b.hash);
        }
        row.submitted_at_ms = plan.accepted.submitted_at_ms;
        let cell = row.cells.entry(plan.team.clone()).or_insert_with(|| Cell {
            state: CellState::Queued,
            proving_ms: None,
            latency_ms: None,
            overhead_ms: None,
            proof_bytes: None,
            verified: None,
            hash: b.hash.clone(),
            published_at_ms: None,
        });
        if cell.state == CellState::Proved {
            return;
        }
        cell.state = if plan.withdrawn.is_some() {
            CellState::Withdrawn
        } else if plan.failed.is_some() {
            CellState::Failed
        } else if plan.released.is_empty() {
            CellState::Queued
        } else {
            CellState::Proving
        };
    }

    /// A block proof as published.
    pub fn proof(&mut self, p: &BlockProof) {
        let verified = self
            .teams
            .iter()
            .find(|t| t.name == p.team)
            .map(|t| !t.verifier.is_empty());
        let row = self.row(&p.chain, p.number);
        if row.hash.is_empty() || row.hash != p.hash {
            row.hash = p.hash.clone();
            row.cells.retain(|_, c| c.hash == p.hash);
        }
        if row.submitted_at_ms == 0 {
            row.submitted_at_ms = p.submitted_at_ms;
        }
        let proof_bytes = match (&p.proof, &p.proof_ref) {
            (Some(bytes), _) => Some(bytes.len() as u64),
            (None, Some(r)) => Some(r.size),
            (None, None) => None,
        };
        row.cells.insert(
            p.team.clone(),
            Cell {
                state: CellState::Proved,
                proving_ms: Some(p.proving_ms),
                latency_ms: Some(p.latency_ms),
                overhead_ms: Some(p.latency_ms.saturating_sub(p.proving_ms)),
                proof_bytes,
                verified,
                hash: p.hash.clone(),
                published_at_ms: Some(p.published_at_ms),
            },
        );
    }

    pub fn dead_letter(&mut self, d: &DeadLetter) {
        let reason = serde_json::to_value(d.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", d.reason));
        self.dead_letters.push_front(DeadLetterRow {
            at_ms: d.at_ms,
            service: d.service.clone(),
            reason,
            detail: d.detail.clone(),
            team: d.team.clone(),
            block: d
                .block
                .as_ref()
                .map(|b| format!("{}/{}", b.chain, b.number)),
            task: d.task_id.clone(),
        });
        self.dead_letters.truncate(DEAD_LETTERS);
    }

    fn row(&mut self, chain: &str, number: u64) -> &mut Row {
        let key = (chain.to_string(), number);
        if !self.rows.contains_key(&key) {
            let on_chain = self
                .rows
                .range((chain.to_string(), 0)..=(chain.to_string(), u64::MAX));
            if on_chain.count() >= KEPT_PER_CHAIN
                && let Some(oldest) = self
                    .rows
                    .range((chain.to_string(), 0)..=(chain.to_string(), u64::MAX))
                    .next()
                    .map(|(k, _)| k.clone())
            {
                self.rows.remove(&oldest);
            }
        }
        self.rows.entry(key).or_default()
    }

    pub fn snapshot(&self, prefix: &str, now_ms: u64) -> Snapshot {
        let teams = self
            .teams
            .iter()
            .map(|t| self.team_view(t, now_ms))
            .collect();
        let mut newest: Vec<_> = self.rows.iter().collect();
        newest.sort_by_key(|((chain, number), row)| {
            std::cmp::Reverse((row.submitted_at_ms, *number, chain.clone()))
        });
        let blocks = newest
            .into_iter()
            .take(TABLE_ROWS)
            .map(|((chain, number), row)| BlockView {
                chain: chain.clone(),
                number: *number,
                hash: hex::encode(row.hash.get(..4).unwrap_or(&row.hash)),
                submitted_at_ms: row.submitted_at_ms,
                cells: row.cells.clone(),
            })
            .collect();
        Snapshot {
            now_ms,
            prefix: prefix.to_string(),
            teams,
            blocks,
            dead_letters: self.dead_letters.iter().cloned().collect(),
        }
    }

    /// Each team's Ethproofs figures over the blocks held.
    pub fn figures(&self, now_ms: u64) -> Vec<(TeamConfig, Figures)> {
        self.teams
            .iter()
            .map(|t| (t.clone(), figures(&self.cells_of(&t.name), now_ms)))
            .collect()
    }

    /// A team's cells, each with its block's submission time.
    fn cells_of(&self, team: &str) -> Vec<(u64, &Cell)> {
        self.rows
            .values()
            .filter_map(|r| r.cells.get(team).map(|c| (r.submitted_at_ms, c)))
            .collect()
    }

    fn team_view(&self, t: &TeamConfig, now_ms: u64) -> TeamView {
        let status = self.statuses.get(&t.name);
        let busy_slots = self
            .capacity
            .values()
            .filter(|c| {
                c.team == t.name && now_ms.saturating_sub(c.updated_at_ms) <= CAPACITY_FRESH_MS
            })
            .map(|c| c.busy)
            .sum();
        let held: u64 = status.map_or(0, |s| s.held.iter().map(|(_, n)| n).sum());
        let cells = self.cells_of(&t.name);
        TeamView {
            name: t.name.clone(),
            mode: match t.mode {
                Mode::Sequential => "sequential",
                Mode::Realtime => "realtime",
            },
            shape: match t.shape {
                Shape::Single => "single".into(),
                Shape::Split => format!("split {}/{}", t.parts.unwrap_or(1), t.arity),
            },
            proof_system: t.proof_system.clone(),
            verified: !t.verifier.is_empty(),
            live_gateways: status.map_or(0, |s| s.live_gateways),
            live_slots: status.map_or(0, |s| s.live_slots),
            busy_slots,
            queued: held + self.pending.get(&t.name).copied().unwrap_or(0),
            alerts: status.map_or(Vec::new(), |s| {
                s.alerts.iter().map(|a| a.as_str()).collect()
            }),
            figures: figures(&cells, now_ms),
            series: series(&cells, now_ms),
        }
    }
}

/// Ethproofs' figures over one team's cells, each with its block's submission time.
pub fn figures(cells: &[(u64, &Cell)], now_ms: u64) -> Figures {
    let mut f = Figures {
        submitted: cells.len() as u64,
        ..Figures::default()
    };
    let (mut fast, mut due) = (0, 0);
    for (submitted, c) in cells {
        let age = now_ms.saturating_sub(*submitted);
        match c.state {
            CellState::Proved => {
                f.proved += 1;
                due += 1;
                if c.latency_ms.is_some_and(|l| l <= REALTIME_MS) {
                    fast += 1;
                }
            }
            CellState::Failed | CellState::Withdrawn => due += 1,
            CellState::Queued | CellState::Proving => {
                if age > LIVENESS_GRACE_MS {
                    due += 1;
                }
                if age > STUCK_MS {
                    f.stuck += 1;
                }
            }
        }
    }
    f.within_10s = (f.proved > 0).then(|| fast as f64 / f.proved as f64);
    f.liveness = (due > 0).then(|| f.proved as f64 / due as f64);
    f
}

/// Proofs per bucket over the last [`BUCKETS`] × [`BUCKET_MS`], oldest first, with the median
/// latency and overhead of each.
pub fn series(cells: &[(u64, &Cell)], now_ms: u64) -> Vec<Bucket> {
    let end = now_ms - now_ms % BUCKET_MS + BUCKET_MS;
    let start = end.saturating_sub(BUCKETS * BUCKET_MS);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); BUCKETS as usize];
    let mut overheads: Vec<Vec<u64>> = vec![Vec::new(); BUCKETS as usize];
    for (_, c) in cells {
        let Some(at) = c.published_at_ms.filter(|at| (start..end).contains(at)) else {
            continue;
        };
        let i = ((at - start) / BUCKET_MS) as usize;
        latencies[i].extend(c.latency_ms);
        overheads[i].extend(c.overhead_ms);
    }
    (0..BUCKETS as usize)
        .map(|i| Bucket {
            start_ms: start + i as u64 * BUCKET_MS,
            proved: latencies[i].len() as u64,
            latency_p50_ms: median(&mut latencies[i]),
            overhead_p50_ms: median(&mut overheads[i]),
        })
        .collect()
}

fn median(values: &mut [u64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(match n % 2 {
        1 => values[n / 2] as f64,
        _ => (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use push0_protocol::{Blob, BlockAccepted, BlockRef, NodeId, Workflow};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn block(number: u64, hash: u8) -> BlockRef {
        BlockRef {
            chain: "c".into(),
            number,
            hash: vec![hash; 32],
        }
    }

    fn plan(team: &str, block: BlockRef, submitted_at_ms: u64, released: bool) -> Plan {
        Plan {
            team: team.into(),
            accepted: BlockAccepted {
                block,
                parent_hash: Vec::new(),
                timestamp_ms: 0,
                submitted_at_ms,
                deadline_ms: None,
                payload: Blob::Inline(Vec::new()),
            },
            workflow: Workflow::SINGLE,
            released: match released {
                true => vec![NodeId { level: 0, index: 0 }],
                false => Vec::new(),
            },
            planned_at_ms: submitted_at_ms,
            failed: None,
            deadline_ms: None,
            withdrawn: None,
            finalized: false,
        }
    }

    fn proof(
        team: &str,
        block: &BlockRef,
        submitted: u64,
        proving: u64,
        latency: u64,
    ) -> BlockProof {
        BlockProof {
            team: team.into(),
            chain: block.chain.clone(),
            number: block.number,
            hash: block.hash.clone(),
            proof: Some(vec![0; 100]),
            proof_ref: None,
            proof_system: "sim".into(),
            proving_ms: proving,
            latency_ms: latency,
            submitted_at_ms: submitted,
            published_at_ms: submitted + latency,
        }
    }

    fn model() -> Model {
        let mut m = Model::default();
        m.set_teams(vec![TeamConfig::single("a"), TeamConfig::single("b")]);
        m
    }

    fn cell<'a>(s: &'a Snapshot, number: u64, team: &str) -> Option<&'a Cell> {
        s.blocks
            .iter()
            .find(|b| b.number == number)?
            .cells
            .get(team)
    }

    #[test]
    fn a_cell_goes_from_queued_to_proving_to_proved_and_stays_proved() {
        let mut m = model();
        let b = block(1, 1);
        m.plan(&plan("a", b.clone(), NOW - 5_000, false));
        assert_eq!(
            cell(&m.snapshot("p", NOW), 1, "a").unwrap().state,
            CellState::Queued
        );
        m.plan(&plan("a", b.clone(), NOW - 5_000, true));
        assert_eq!(
            cell(&m.snapshot("p", NOW), 1, "a").unwrap().state,
            CellState::Proving
        );
        m.proof(&proof("a", &b, NOW - 5_000, 3_000, 3_100));
        // A plan rewritten after the proof (a late watch entry) does not undo it.
        m.plan(&plan("a", b.clone(), NOW - 5_000, true));
        let s = m.snapshot("p", NOW);
        let c = cell(&s, 1, "a").unwrap();
        assert_eq!(c.state, CellState::Proved);
        assert_eq!(
            (c.proving_ms, c.overhead_ms, c.proof_bytes),
            (Some(3_000), Some(100), Some(100))
        );
        assert!(cell(&s, 1, "b").is_none(), "b never planned it");
    }

    #[test]
    fn a_reorged_height_shows_the_new_block_only() {
        let mut m = model();
        m.plan(&plan("a", block(1, 1), NOW - 9_000, true));
        m.plan(&plan("b", block(1, 1), NOW - 9_000, true));
        m.plan(&plan("a", block(1, 2), NOW - 1_000, false));
        let s = m.snapshot("p", NOW);
        assert_eq!(s.blocks[0].hash, "02020202");
        assert_eq!(cell(&s, 1, "a").unwrap().state, CellState::Queued);
        assert!(cell(&s, 1, "b").is_none());
        // The old block's plan arriving late does not bring it back.
        m.plan(&plan("b", block(1, 1), NOW - 9_000, true));
        assert_eq!(m.snapshot("p", NOW).blocks[0].hash, "02020202");
    }

    #[test]
    fn figures_count_the_realtime_share_liveness_and_stuck_blocks() {
        let mut m = model();
        // 4 proved (3 within 10 s), 1 failed, 1 in flight but young, 1 stuck for 30 min.
        for (n, latency) in [(1, 2_000), (2, 9_000), (3, 10_000), (4, 15_000)] {
            let b = block(n, 1);
            m.plan(&plan("a", b.clone(), NOW - 60_000, true));
            m.proof(&proof("a", &b, NOW - 60_000, 1_000, latency));
        }
        let mut failed = plan("a", block(5, 1), NOW - 60_000, true);
        failed.failed = Some("poison".into());
        m.plan(&failed);
        m.plan(&plan("a", block(6, 1), NOW - 1_000, true));
        m.plan(&plan("a", block(7, 1), NOW - 30 * 60_000, false));
        let s = m.snapshot("p", NOW);
        let f = &s.teams[0].figures;
        assert_eq!((f.submitted, f.proved, f.stuck), (7, 4, 1));
        assert_eq!(f.within_10s, Some(0.75));
        // Due: 4 proved + 1 failed + the stuck one; the young one is not due yet.
        assert_eq!(f.liveness, Some(4.0 / 6.0));
        assert_eq!(
            s.teams[1].figures,
            Figures {
                submitted: 0,
                ..Figures::default()
            }
        );
    }

    #[test]
    fn the_series_buckets_proofs_by_publication_time() {
        let mut m = model();
        let at = NOW - NOW % BUCKET_MS; // start of the current bucket
        for (n, latency) in [(1u64, 100u64), (2, 300), (3, 200)] {
            let b = block(n, 1);
            m.proof(&proof("a", &b, at - latency, 50, latency));
        }
        let old = block(9, 1);
        m.proof(&proof("a", &old, NOW - 10 * 60_000, 50, 100));
        let series = &m.snapshot("p", NOW).teams[0].series;
        assert_eq!(series.len(), BUCKETS as usize);
        let last = series.last().unwrap();
        assert_eq!(last.start_ms, at);
        assert_eq!(
            (last.proved, last.latency_p50_ms, last.overhead_p50_ms),
            (3, Some(200.0), Some(150.0))
        );
        assert_eq!(
            series.iter().map(|b| b.proved).sum::<u64>(),
            3,
            "the 10-minute-old proof is outside"
        );
    }

    #[test]
    fn rows_are_bounded_and_the_table_shows_the_newest() {
        let mut m = model();
        for n in 0..(KEPT_PER_CHAIN as u64 + 10) {
            m.plan(&plan("a", block(n, 1), NOW - 1_000 + n, false));
        }
        assert_eq!(m.rows.len(), KEPT_PER_CHAIN);
        assert!(
            !m.rows.contains_key(&("c".to_string(), 9)),
            "the oldest went first"
        );
        let s = m.snapshot("p", NOW);
        assert_eq!(s.blocks.len(), TABLE_ROWS);
        assert_eq!(
            s.blocks[0].number,
            KEPT_PER_CHAIN as u64 + 9,
            "newest first"
        );
    }
}
