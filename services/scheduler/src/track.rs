//! What the scheduler follows besides its queues: every planned and unproven block of each team
//! (deadlines, the head, the oldest unproven block), the outcome of each deadline, an estimate
//! of how long the team takes to prove a block, and the alerts raised on the team. Memory
//! follows the blocks in flight: a block leaves when its proof appears or its work stops.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use push0_protocol::{Alert, BlockRef, Capacity, ChainStatus};

/// A planned block not yet proved.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The planned block's hash (another block may replace it at its height in a reorg).
    pub hash: Vec<u8>,
    pub deadline_ms: Option<u64>,
    pub submitted_at_ms: u64,
    /// When its first task was released; None while all its work is still held.
    pub first_release_ms: Option<u64>,
}

impl Tracked {
    /// The tracked block, from its (chain, number) key.
    pub fn block(&self, (chain, number): &(String, u64)) -> BlockRef {
        BlockRef {
            chain: chain.clone(),
            number: *number,
            hash: self.hash.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineOutcome {
    Hit,
    /// Proved, but after the deadline.
    Late,
    /// Withdrawn after the deadline passed (or when it could no longer be met).
    Dropped,
}

impl DeadlineOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineOutcome::Hit => "hit",
            DeadlineOutcome::Late => "late",
            DeadlineOutcome::Dropped => "dropped",
        }
    }
}

/// Thresholds of the team alerts.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// A team with pending work and no live gateway for this long raises `no_live_prover`.
    pub no_prover_after: Duration,
    /// Deadline outcomes older than this leave the miss-rate window.
    pub miss_window: Duration,
    /// Share of misses in the window above which `deadline_misses` is raised.
    pub miss_rate: f64,
    /// Fewest outcomes in the window before the miss rate is judged.
    pub min_outcomes: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            no_prover_after: Duration::from_secs(30),
            miss_window: Duration::from_secs(120),
            miss_rate: 0.5,
            min_outcomes: 3,
        }
    }
}

/// An alert that changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertChange {
    pub alert: Alert,
    pub raised: bool,
}

#[derive(Debug, Default)]
pub struct TeamTrack {
    /// Unproven blocks by (chain, number).
    pub blocks: BTreeMap<(String, u64), Tracked>,
    /// Highest block planned per chain.
    pub heads: BTreeMap<String, u64>,
    pub hits: u64,
    pub misses: u64,
    /// Recent deadline outcomes: (when, hit).
    window: VecDeque<(u64, bool)>,
    /// Smoothed time from a block's first release to its proof.
    pub estimate_ms: Option<f64>,
    /// Since when the team has had pending work and no live gateway.
    no_prover_since: Option<u64>,
    pub alerts: HashSet<Alert>,
}

impl TeamTrack {
    pub fn planned(&mut self, chain: &str, number: u64, tracked: Tracked) {
        self.deferred(chain, number);
        self.blocks
            .entry((chain.to_string(), number))
            .or_insert(tracked);
    }

    /// A block planned whose work waits in its plan (the team holds all it may): only the
    /// chain's head moves; the block is followed once its work comes back.
    pub fn deferred(&mut self, chain: &str, number: u64) {
        let head = self.heads.entry(chain.to_string()).or_insert(number);
        *head = (*head).max(number);
    }

    pub fn released(&mut self, chain: &str, number: u64, now_ms: u64) {
        if let Some(t) = self.blocks.get_mut(&(chain.to_string(), number)) {
            t.first_release_ms.get_or_insert(now_ms);
        }
    }

    /// A block's proof appeared: it leaves the set, its deadline outcome (if it had one) is
    /// recorded and the proving-time estimate learns from it.
    pub fn proved(
        &mut self,
        chain: &str,
        number: u64,
        published_at_ms: u64,
    ) -> Option<DeadlineOutcome> {
        let tracked = self.blocks.remove(&(chain.to_string(), number))?;
        if let Some(released) = tracked.first_release_ms {
            let sample = published_at_ms.saturating_sub(released) as f64;
            self.estimate_ms = Some(match self.estimate_ms {
                None => sample,
                Some(e) => 0.7 * e + 0.3 * sample,
            });
        }
        let outcome = match tracked.deadline_ms? {
            d if published_at_ms <= d => DeadlineOutcome::Hit,
            _ => DeadlineOutcome::Late,
        };
        self.record(outcome, published_at_ms);
        Some(outcome)
    }

    pub fn forget(&mut self, chain: &str, number: u64) -> Option<Tracked> {
        self.blocks.remove(&(chain.to_string(), number))
    }

    pub fn record(&mut self, outcome: DeadlineOutcome, at_ms: u64) {
        let hit = outcome == DeadlineOutcome::Hit;
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        self.window.push_back((at_ms, hit));
    }

    /// Hit rate over the window ending `now_ms`, with the number of outcomes in it.
    pub fn window_rate(&mut self, now_ms: u64, window: Duration) -> (Option<f64>, usize) {
        let from = now_ms.saturating_sub(window.as_millis() as u64);
        while self.window.front().is_some_and(|(at, _)| *at < from) {
            self.window.pop_front();
        }
        let n = self.window.len();
        let hits = self.window.iter().filter(|(_, hit)| *hit).count();
        ((n > 0).then(|| hits as f64 / n as f64), n)
    }

    fn newer_exists(&self, chain: &str, number: u64) -> bool {
        self.heads.get(chain).is_some_and(|h| *h > number)
    }

    /// Blocks whose deadline has passed while a newer block of their chain exists.
    pub fn overdue(&self, now_ms: u64) -> Vec<BlockRef> {
        self.blocks
            .iter()
            .filter(|((chain, number), t)| {
                t.deadline_ms.is_some_and(|d| d < now_ms) && self.newer_exists(chain, *number)
            })
            .map(|(key, t)| t.block(key))
            .collect()
    }

    /// Whether starting this block now cannot meet its deadline, judged by how long the team
    /// has been taking, while a newer block could use the capacity instead.
    pub fn hopeless(&self, chain: &str, number: u64, now_ms: u64) -> bool {
        let Some(t) = self.blocks.get(&(chain.to_string(), number)) else {
            return false;
        };
        let (Some(deadline), Some(estimate)) = (t.deadline_ms, self.estimate_ms) else {
            return false;
        };
        t.first_release_ms.is_none()
            && now_ms as f64 + estimate > deadline as f64
            && self.newer_exists(chain, number)
    }

    /// Per chain: head, unproven blocks, the oldest of them and its age.
    pub fn chains(&self, now_ms: u64) -> Vec<ChainStatus> {
        self.heads
            .iter()
            .map(|(chain, head)| {
                let mut unproven = self
                    .blocks
                    .range((chain.clone(), 0)..=(chain.clone(), u64::MAX));
                let count = unproven.clone().count() as u64;
                let oldest = unproven.next();
                ChainStatus {
                    chain: chain.clone(),
                    head: *head,
                    unproven: count,
                    oldest_unproven: oldest.map(|((_, n), _)| *n),
                    oldest_unproven_age_ms: oldest
                        .map(|(_, t)| now_ms.saturating_sub(t.submitted_at_ms)),
                }
            })
            .collect()
    }

    /// Re-judges the alerts; returns those that changed.
    pub fn evaluate_alerts(
        &mut self,
        config: &AlertConfig,
        pending_work: bool,
        live_gateways: u32,
        now_ms: u64,
    ) -> Vec<AlertChange> {
        let starving = pending_work && live_gateways == 0;
        self.no_prover_since = match (starving, self.no_prover_since) {
            (false, _) => None,
            (true, None) => Some(now_ms),
            (true, since) => since,
        };
        let no_prover = self
            .no_prover_since
            .is_some_and(|since| now_ms - since >= config.no_prover_after.as_millis() as u64);
        let (rate, n) = self.window_rate(now_ms, config.miss_window);
        let missing = n >= config.min_outcomes && rate.is_some_and(|r| 1.0 - r > config.miss_rate);
        let mut changes = Vec::new();
        for (alert, on) in [
            (Alert::NoLiveProver, no_prover),
            (Alert::DeadlineMisses, missing),
        ] {
            let was = self.alerts.contains(&alert);
            if on && !was {
                self.alerts.insert(alert);
                changes.push(AlertChange {
                    alert,
                    raised: true,
                });
            } else if !on && was {
                self.alerts.remove(&alert);
                changes.push(AlertChange {
                    alert,
                    raised: false,
                });
            }
        }
        changes
    }
}

/// Every team's track.
#[derive(Debug, Default)]
pub struct Tracker {
    pub teams: HashMap<String, TeamTrack>,
}

impl Tracker {
    pub fn team(&mut self, team: &str) -> &mut TeamTrack {
        self.teams.entry(team.to_string()).or_default()
    }
}

/// The gateways' capacity records as last seen, by key `<team>.<gateway>`, each with the
/// server's time of its last write. The bucket expires a record its gateway stopped renewing
/// without telling a watch, so records unwritten for [`CapacityView::FORGET_AFTER_MS`] are
/// dropped here: the view holds the gateways of the last minute, not every gateway ever seen.
#[derive(Debug, Default)]
pub struct CapacityView {
    records: HashMap<String, (Capacity, u64)>,
    /// Prune when the view grows past this many records (twice the size after the last prune).
    prune_at: usize,
}

impl CapacityView {
    /// Ten times the capacity records' time to live.
    pub const FORGET_AFTER_MS: u64 = 60_000;

    /// Records `record`, written by the server at `written_ms`.
    pub fn put(&mut self, key: String, record: Capacity, written_ms: u64) {
        self.records.insert(key, (record, written_ms));
        if self.records.len() > self.prune_at {
            self.records
                .retain(|_, (_, at)| written_ms.saturating_sub(*at) < Self::FORGET_AFTER_MS);
            self.prune_at = (self.records.len() * 2).max(64);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.records.remove(key);
    }

    /// Live gateways of `team` and their slots over all classes: a record counts while it is
    /// younger than `ttl`.
    pub fn live(&self, team: &str, now_ms: u64, ttl: Duration) -> (u32, u32) {
        let ttl = ttl.as_millis() as u64;
        self.records
            .values()
            .map(|(c, _)| c)
            .filter(|c| c.team == team && now_ms.saturating_sub(c.updated_at_ms) < ttl)
            .fold((0, 0), |(g, s), c| {
                (g + 1, s + c.slots * c.classes.len() as u32)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(deadline: u64) -> Tracked {
        Tracked {
            hash: vec![1; 32],
            deadline_ms: Some(deadline),
            submitted_at_ms: 0,
            first_release_ms: None,
        }
    }

    #[test]
    fn capacity_records_nobody_renews_are_forgotten() {
        let record = |team: &str| Capacity {
            team: team.into(),
            gateway: "gw".into(),
            slots: 1,
            busy: 0,
            classes: vec!["prove".into()],
            priority: 0,
            started_at_ms: 0,
            updated_at_ms: 0,
        };
        let mut view = CapacityView::default();
        for i in 0..1_000u64 {
            view.put(format!("alpha.gw-{i}"), record("alpha"), i * 1_000);
        }
        // A gateway per second for 1,000 s, each written once: the last minute's stay.
        let kept = view.records.len();
        assert!(kept <= 2 * 64, "{kept} records kept");
        view.put("beta.gw".into(), record("beta"), 1_000_000);
        assert!(view.records.contains_key("beta.gw"));
    }

    #[test]
    fn overdue_only_when_a_newer_block_exists() {
        let mut t = TeamTrack::default();
        t.planned("eth", 1, tracked(100));
        assert!(t.overdue(200).is_empty(), "the head is never dropped");
        t.planned("eth", 2, tracked(300));
        assert_eq!(
            t.overdue(200),
            vec![BlockRef {
                chain: "eth".into(),
                number: 1,
                hash: vec![1; 32]
            }]
        );
    }

    #[test]
    fn hopeless_uses_the_learned_estimate() {
        let mut t = TeamTrack::default();
        t.planned("eth", 1, tracked(10_000));
        t.released("eth", 1, 0);
        assert_eq!(t.proved("eth", 1, 500), Some(DeadlineOutcome::Hit));
        assert_eq!(t.estimate_ms, Some(500.0));
        t.planned("eth", 2, tracked(1_000));
        t.planned("eth", 3, tracked(2_000));
        assert!(!t.hopeless("eth", 2, 400), "400 + 500 is within 1000");
        assert!(t.hopeless("eth", 2, 600));
        assert!(!t.hopeless("eth", 3, 1_800), "the head is never hopeless");
        t.released("eth", 2, 600);
        assert!(
            !t.hopeless("eth", 2, 700),
            "started work is not judged again"
        );
    }

    #[test]
    fn miss_alert_raises_and_clears() {
        let config = AlertConfig {
            miss_window: Duration::from_secs(10),
            ..AlertConfig::default()
        };
        let mut t = TeamTrack::default();
        for at in [1_000, 2_000, 3_000] {
            t.record(DeadlineOutcome::Dropped, at);
        }
        let changes = t.evaluate_alerts(&config, false, 1, 3_000);
        assert_eq!(
            changes,
            vec![AlertChange {
                alert: Alert::DeadlineMisses,
                raised: true
            }]
        );
        assert!(t.evaluate_alerts(&config, false, 1, 4_000).is_empty());
        for at in [20_000, 21_000, 22_000] {
            t.record(DeadlineOutcome::Hit, at);
        }
        let changes = t.evaluate_alerts(&config, false, 1, 22_000);
        assert!(!changes[0].raised);
        assert_eq!(t.window_rate(22_000, config.miss_window), (Some(1.0), 3));
    }

    #[test]
    fn no_prover_alert_waits_for_the_threshold() {
        let config = AlertConfig {
            no_prover_after: Duration::from_secs(5),
            ..AlertConfig::default()
        };
        let mut t = TeamTrack::default();
        assert!(t.evaluate_alerts(&config, true, 0, 1_000).is_empty());
        assert!(t.evaluate_alerts(&config, true, 0, 5_999).is_empty());
        assert_eq!(t.evaluate_alerts(&config, true, 0, 6_000).len(), 1);
        assert!(t.alerts.contains(&Alert::NoLiveProver));
        assert!(!t.evaluate_alerts(&config, true, 1, 6_500)[0].raised);
        assert!(
            t.evaluate_alerts(&config, false, 0, 20_000).is_empty(),
            "no pending work, no alert"
        );
    }
}
