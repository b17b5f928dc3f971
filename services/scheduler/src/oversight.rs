//! The scheduler's oversight of its teams: withdrawing work that should stop (a realtime block
//! past its deadline, a removed team), following proofs and gateway capacity, and writing each
//! team's status and alerts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use push0_protocol::subjects::{final_key, plan_key};
use push0_protocol::topology::CAPACITY_TTL;
use push0_protocol::{
    Alert, BlockProof, BlockRef, Cancel, Capacity, LatePolicy, PartRecord, Plan, TeamConfig,
    TeamStatus, WireMessage, decode, encode, now_ms,
};
use push0_runtime::{Bus, RuntimeError, kv_get, kv_write, metrics};
use tokio_util::sync::CancellationToken;

use crate::Scheduler;
use crate::track::DeadlineOutcome;

/// How often deadlines and removed teams are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Blocks unproven for this long are checked against the parts bucket, in case their proof
/// was published while this scheduler was not listening.
const RECHECK_AFTER_MS: u64 = 10_000;

/// Why a block's work stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Withdrawal<'a> {
    /// A realtime block past (or unable to meet) its deadline, under the `drop` policy.
    Missed(&'a str),
    /// A reorg took the block off the chain.
    Orphaned,
}

impl Withdrawal<'_> {
    fn reason(self) -> &'static str {
        match self {
            Withdrawal::Missed(_) => "deadline",
            Withdrawal::Orphaned => "reorg",
        }
    }
    fn detail(self) -> String {
        match self {
            Withdrawal::Missed(why) => why.to_string(),
            Withdrawal::Orphaned => "orphaned by a reorg".to_string(),
        }
    }
}

impl Scheduler {
    /// Stops a block's work for `team`: held tasks go, the plan records why (unless the
    /// aggregator finalized it first), running provers are told to stop. Only the plan of this
    /// very block (same hash) is touched. Returns whether the block was withdrawn.
    pub(crate) async fn withdraw(
        &self,
        team: &TeamConfig,
        block: &BlockRef,
        why: Withdrawal<'_>,
    ) -> Result<bool, RuntimeError> {
        let (chain, number) = (block.chain.clone(), block.number);
        let key = plan_key(&team.name, &chain, number);
        let detail = why.detail();
        let plan = kv_write::<Plan, _>(&self.plans, &key, |p| {
            let p = p?;
            if p.accepted.block.hash != block.hash || p.finalized || p.withdrawn.is_some() {
                return None;
            }
            let mut p = p.clone();
            p.withdrawn = Some(detail.clone());
            Some(p)
        })
        .await?;
        let Some(plan) = plan else { return Ok(false) };
        let held = {
            let mut queues = self.queues.lock().expect("queues lock");
            queues
                .queues
                .iter_mut()
                .filter(|((t, _), _)| *t == team.name)
                .map(|(_, q)| q.withdraw(|t| t.block == *block))
                .sum::<usize>()
        };
        let running = plan.released.len();
        let cancel = Cancel {
            team: team.name.clone(),
            block: Some(block.clone()),
            reason: detail.clone(),
        };
        if running > 0 {
            self.bus.notify(self.bus.subjects.cancel(), &cancel).await?;
        }
        let had_deadline = {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            let track = tracker.team(&team.name);
            let forgotten = track.forget(&chain, number);
            let had = forgotten.is_some_and(|t| t.deadline_ms.is_some());
            let missed = matches!(why, Withdrawal::Missed(_));
            if had && missed {
                track.record(DeadlineOutcome::Dropped, now_ms());
            }
            had && missed
        };
        let m = metrics();
        if had_deadline {
            m.deadline_outcomes
                .with_label_values(&[&team.name, DeadlineOutcome::Dropped.as_str()])
                .inc();
        }
        if matches!(why, Withdrawal::Orphaned) {
            m.orphaned_blocks.with_label_values(&[&team.name]).inc();
        }
        m.tasks_withdrawn
            .with_label_values(&[&team.name, why.reason()])
            .inc_by((held + running) as u64);
        tracing::warn!(team = %team.name, chain, number, hash = %block.short_hash(), held, running, reason = %detail, "block withdrawn");
        Ok(true)
    }

    /// A team left the registry: its held and queued tasks go and its provers stop.
    async fn withdraw_team(&self, team: &str) -> Result<(), RuntimeError> {
        let (held, classes) = {
            let mut queues = self.queues.lock().expect("queues lock");
            let keys: Vec<_> = queues
                .queues
                .keys()
                .filter(|(t, _)| t == team)
                .cloned()
                .collect();
            let held = keys
                .iter()
                .filter_map(|k| queues.queues.remove(k))
                .map(|q| q.held())
                .sum::<usize>()
                + queues.forget_deferred(team) as usize;
            (
                held,
                keys.into_iter().map(|(_, class)| class).collect::<Vec<_>>(),
            )
        };
        let stream = self
            .bus
            .js
            .get_stream(self.bus.subjects.stream_tasks())
            .await
            .map_err(|e| RuntimeError::nats("get task stream", e))?;
        let purged = stream
            .purge()
            .filter(self.bus.subjects.tasks(team, "*"))
            .await
            .map_err(|e| RuntimeError::nats(format!("purge tasks of {team}"), e))?;
        let cancel = Cancel {
            team: team.to_string(),
            block: None,
            reason: "team removed".to_string(),
        };
        self.bus.notify(self.bus.subjects.cancel(), &cancel).await?;
        self.consumers.lock().await.retain(|(t, _), _| t != team);
        let chains: Vec<String> = self
            .tracker
            .lock()
            .expect("tracker lock")
            .teams
            .remove(team)
            .map(|t| t.heads.into_keys().collect())
            .unwrap_or_default();
        push0_runtime::metrics::forget_team(team, &classes, &chains);
        metrics()
            .tasks_withdrawn
            .with_label_values(&[team, "team_removed"])
            .inc_by(held as u64 + purged.purged);
        tracing::warn!(
            team,
            held,
            queued = purged.purged,
            "team removed: its work is withdrawn"
        );
        Ok(())
    }

    /// Deadlines and removed teams every few tens of milliseconds; status, alerts and a
    /// re-check of long-unproven blocks about once a second.
    pub(crate) async fn housekeeping_loop(&self, shutdown: CancellationToken) {
        let mut last_status = Instant::now();
        let mut known: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            let teams = self.registry.all();
            if let Err(e) = self.sweep_deadlines(&teams).await {
                tracing::warn!(error = %e, kind = e.kind().as_str(), "deadline sweep failed, will retry");
            }
            let current: HashSet<String> = teams.iter().map(|t| t.name.clone()).collect();
            for gone in known.difference(&current) {
                if let Err(e) = self.withdraw_team(gone).await {
                    tracing::warn!(team = %gone, error = %e, "withdrawing a removed team failed");
                }
            }
            known = current;
            if last_status.elapsed() >= self.config.status_interval {
                last_status = Instant::now();
                if let Err(e) = self.recheck_unproven(&teams).await {
                    tracing::warn!(error = %e, "re-checking unproven blocks failed");
                }
                for team in &teams {
                    if let Err(e) = self.write_status(team).await {
                        tracing::warn!(team = %team.name, error = %e, "status not written");
                    }
                }
            }
        }
    }

    async fn sweep_deadlines(&self, teams: &[TeamConfig]) -> Result<(), RuntimeError> {
        let now = now_ms();
        for team in teams {
            if !team.is_realtime() || team.late_policy != LatePolicy::Drop {
                continue;
            }
            let overdue = {
                let mut tracker = self.tracker.lock().expect("tracker lock");
                tracker.team(&team.name).overdue(now)
            };
            for block in overdue {
                self.withdraw(team, &block, Withdrawal::Missed("deadline passed"))
                    .await?;
            }
        }
        Ok(())
    }

    /// Blocks unproven for a while whose final proof exists (published while this scheduler
    /// was not listening) leave the tracker.
    async fn recheck_unproven(&self, teams: &[TeamConfig]) -> Result<(), RuntimeError> {
        let now = now_ms();
        for team in teams {
            let stale: Vec<BlockRef> = {
                let mut tracker = self.tracker.lock().expect("tracker lock");
                tracker
                    .team(&team.name)
                    .blocks
                    .iter()
                    .filter(|(_, t)| now.saturating_sub(t.submitted_at_ms) > RECHECK_AFTER_MS)
                    .map(|(key, t)| t.block(key))
                    .take(64)
                    .collect()
            };
            for block in stale {
                let key = final_key(&team.name, &block);
                if kv_get::<PartRecord>(&self.parts, &key).await?.is_some() {
                    self.observe_proof(&team.name, &block.chain, block.number, now);
                }
            }
        }
        Ok(())
    }

    fn observe_proof(&self, team: &str, chain: &str, number: u64, published_at_ms: u64) {
        let outcome = {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            tracker.team(team).proved(chain, number, published_at_ms)
        };
        if let Some(outcome) = outcome {
            metrics()
                .deadline_outcomes
                .with_label_values(&[team, outcome.as_str()])
                .inc();
            if outcome == DeadlineOutcome::Late {
                tracing::warn!(team, chain, number, "block proved after its deadline");
            }
        }
    }

    /// Follows block proofs as they are published (core NATS: the proofs stream is the record;
    /// a proof missed here is found by `recheck_unproven`).
    pub(crate) async fn watch_proofs(
        self: &std::sync::Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let s = self.clone();
        self.bus
            .follow(
                self.bus.subjects.proofs_all(),
                shutdown,
                move |p: BlockProof| {
                    s.observe_proof(&p.team, &p.chain, p.number, p.published_at_ms)
                },
            )
            .await
    }

    /// Keeps the gateways' capacity records current in memory.
    pub(crate) async fn watch_capacity(
        self: &std::sync::Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let kv = self.bus.kv(&self.bus.subjects.bucket_capacity()).await?;
        let watch = kv
            .watch_all_from_revision(1)
            .await
            .map_err(|e| RuntimeError::nats("watch capacity", e))?;
        let s = self.clone();
        Bus::follow_kv(kv, watch, "capacity", shutdown, move |entry| {
            let mut view = s.capacity.lock().expect("capacity lock");
            match entry.operation {
                async_nats::jetstream::kv::Operation::Put => {
                    if let Ok(c) = decode::<Capacity>(Some(Capacity::SCHEMA), &entry.value) {
                        let written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000) as u64;
                        view.put(entry.key.clone(), c, written_ms);
                    }
                }
                _ => view.remove(&entry.key),
            }
        });
        Ok(())
    }

    /// Writes the team's status record and raises or clears its alerts.
    async fn write_status(&self, team: &TeamConfig) -> Result<(), RuntimeError> {
        let now = now_ms();
        let held: Vec<(String, u64)> = {
            let queues = self.queues.lock().expect("queues lock");
            team.classes()
                .into_iter()
                .map(|class| {
                    let n = queues
                        .queues
                        .get(&(team.name.clone(), class.clone()))
                        .map_or(0, |q| q.held() as u64);
                    (class, n)
                })
                .collect()
        };
        let (_, deferred) = self
            .queues
            .lock()
            .expect("queues lock")
            .deferred_of(&team.name);
        metrics()
            .tasks_deferred
            .with_label_values(&[&team.name])
            .set(deferred as i64);
        let (live_gateways, live_slots) =
            self.capacity
                .lock()
                .expect("capacity lock")
                .live(&team.name, now, CAPACITY_TTL);
        let status = {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            let track = tracker.team(&team.name);
            let chains = track.chains(now);
            let pending = deferred > 0
                || held.iter().any(|(_, n)| *n > 0)
                || chains.iter().any(|c| c.unproven > 0);
            let changes = track.evaluate_alerts(&self.config.alerts, pending, live_gateways, now);
            let (rate, _) = track.window_rate(now, self.config.alerts.miss_window);
            let m = metrics();
            // Every alert's state and every deadline outcome is exported from the first status
            // write, at 0 until it happens.
            for alert in Alert::ALL {
                m.alert_active
                    .with_label_values(&[team.name.as_str(), alert.as_str()])
                    .set(i64::from(track.alerts.contains(&alert)));
            }
            for outcome in [
                DeadlineOutcome::Hit,
                DeadlineOutcome::Late,
                DeadlineOutcome::Dropped,
            ] {
                m.deadline_outcomes
                    .with_label_values(&[team.name.as_str(), outcome.as_str()]);
            }
            for change in changes {
                let labels = [team.name.as_str(), change.alert.as_str()];
                if change.raised {
                    m.alerts_raised.with_label_values(&labels).inc();
                    tracing::error!(team = %team.name, alert = change.alert.as_str(), live_gateways, window_hit_rate = ?rate, "alert raised");
                } else {
                    tracing::warn!(team = %team.name, alert = change.alert.as_str(), "alert cleared");
                }
            }
            let mut alerts: Vec<_> = track.alerts.iter().copied().collect();
            alerts.sort_by_key(|a| a.as_str());
            TeamStatus {
                team: team.name.clone(),
                held,
                live_gateways,
                live_slots,
                chains,
                deadline_hits: track.hits,
                deadline_misses: track.misses,
                window_hit_rate: rate,
                alerts,
                updated_at_ms: now,
            }
        };
        let m = metrics();
        m.live_slots
            .with_label_values(&[&team.name])
            .set(live_slots as i64);
        for c in &status.chains {
            let labels = [team.name.as_str(), c.chain.as_str()];
            m.chain_head.with_label_values(&labels).set(c.head as i64);
            m.chain_unproven
                .with_label_values(&labels)
                .set(c.unproven as i64);
            m.chain_oldest_age
                .with_label_values(&labels)
                .set(c.oldest_unproven_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        self.status
            .put(&team.name, Bytes::from(encode(&status)))
            .await
            .map_err(|e| RuntimeError::nats(format!("write status of {}", team.name), e))?;
        Ok(())
    }
}
