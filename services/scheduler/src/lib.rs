//! scheduler: plans each team's workflow for every accepted block and releases the tasks to the
//! team's queues in priority order, holding back work while a queue already has enough
//! undelivered tasks. Every decision is recorded in KV, so a restarted scheduler re-releases
//! exactly what is missing.
//!
//! This file holds the configuration, the state and `run`; each concern has its own file with
//! its own `impl Scheduler` block: `plan` (blocks and joins into tasks), `release` (held tasks
//! onto the bus, in priority order), `recover` (the held work rebuilt after a restart),
//! `dead_letter` (poison tasks), `oversight` (withdrawals, deadlines, team status), with the
//! queues in `queue` and the deadline bookkeeping in `track`.

mod dead_letter;
mod oversight;
mod plan;
pub mod queue;
mod recover;
mod release;
mod storage;
pub mod track;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use push0_protocol::{Plan, TeamConfig};
use push0_runtime::kept::Kept;
use push0_runtime::{BlobStore, Bus, Registry, RuntimeError, consume, register_team};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::PoisonHandler;
use crate::plan::{AcceptedHandler, ReadyHandler};
use crate::queue::{QueueKey, Queues};
use crate::track::{AlertConfig, CapacityView, Tracker};

pub const SERVICE: &str = "scheduler";

#[derive(Debug, Clone)]
pub struct Config {
    /// Teams to write into the registry at start (from the teams file); None keeps the registry.
    pub teams: Option<Vec<TeamConfig>>,
    /// Most undelivered tasks a (team, class) queue may hold on the bus.
    pub max_undelivered: u64,
    /// Most tasks a team holds in memory, over its classes (at least 1 is used). A block
    /// arriving past it is planned and recorded, and its work waits in its plan on the bus
    /// until the held work drains to half of it.
    pub max_held: usize,
    /// How often a queue with held work is re-read from the server.
    pub poll_interval: Duration,
    pub alerts: AlertConfig,
    /// How often each team's status record is rewritten and its alerts judged.
    pub status_interval: Duration,
    /// NATS servers' monitoring URLs, whose JetStream storage use and limit are exported.
    pub monitor_urls: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            teams: None,
            max_undelivered: 16,
            max_held: 4096,
            poll_interval: Duration::from_millis(20),
            alerts: AlertConfig::default(),
            status_interval: Duration::from_secs(1),
            monitor_urls: Vec::new(),
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(
    bus: Bus,
    mut config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    // With no room at all, no block would ever come back from its plan.
    config.max_held = config.max_held.max(1);
    if let Some(teams) = &config.teams {
        for team in teams {
            register_team(&bus, team).await?;
        }
    }
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let scheduler = Arc::new(Scheduler {
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        plans: bus.kv(&bus.subjects.bucket_plans()).await?,
        parts: bus.kv(&bus.subjects.bucket_parts()).await?,
        cursors: bus.kv(&bus.subjects.bucket_cursors()).await?,
        status: bus.kv(&bus.subjects.bucket_status()).await?,
        tracker: Mutex::new(Tracker::default()),
        capacity: Mutex::new(CapacityView::default()),
        bus: bus.clone(),
        registry,
        config,
        queues: Mutex::new(Queues::default()),
        consumers: tokio::sync::Mutex::new(HashMap::new()),
        wake: Notify::new(),
        published_from: Mutex::new(HashSet::new()),
        chains: Mutex::new(HashMap::new()),
        created: release::created_plans(),
    });
    scheduler.recover().await?;
    let storage = tokio::spawn(storage::storage_loop(
        scheduler.config.monitor_urls.clone(),
        shutdown.clone(),
    ));

    let releaser = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.release_loop(stop).await }
    });
    let refiller = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.refill_loop(stop).await }
    });
    let housekeeper = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.housekeeping_loop(stop).await }
    });
    scheduler.watch_proofs(shutdown.clone()).await?;
    scheduler.watch_capacity(shutdown.clone()).await?;
    let accepted = AcceptedHandler(scheduler.clone());
    let ready = ReadyHandler(scheduler.clone());
    let poison = PoisonHandler {
        scheduler: scheduler.clone(),
        blobs: blobs.clone(),
    };
    let accepted_spec = bus.topology.scheduler_consumer();
    let ready_spec = bus.topology.scheduler_ready_consumer();
    let advisory_spec = bus.topology.scheduler_advisory_consumer();
    let stop = || shutdown.clone();
    let (a, r, p) = tokio::join!(
        consume(
            &bus,
            &blobs,
            &accepted_spec,
            SERVICE,
            "block-accepted",
            &accepted,
            stop()
        ),
        consume(&bus, &blobs, &ready_spec, SERVICE, "ready", &ready, stop()),
        consume(
            &bus,
            &blobs,
            &advisory_spec,
            SERVICE,
            "advisory",
            &poison,
            stop()
        ),
    );
    shutdown.cancel();
    let _ = releaser.await;
    let _ = refiller.await;
    let _ = housekeeper.await;
    let _ = storage.await;
    // Whether the lease was lost or the process stops, the gauges only the active instance
    // keeps go with it: a standby exports none of them.
    push0_runtime::metrics::forget_active_gauges();
    a.and(r).and(p)
}

pub struct Scheduler {
    bus: Bus,
    registry: Registry,
    config: Config,
    blocks: kv::Store,
    plans: kv::Store,
    parts: kv::Store,
    cursors: kv::Store,
    status: kv::Store,
    tracker: Mutex<Tracker>,
    capacity: Mutex<CapacityView>,
    queues: Mutex<Queues>,
    consumers: tokio::sync::Mutex<HashMap<QueueKey, PullConsumer>>,
    wake: Notify,
    /// (team, chain)s whose cursor has published: planning never moves it again (a reorg's
    /// rewind keeps the count), so it is not read for their blocks.
    published_from: Mutex<HashSet<(String, String)>>,
    /// Per chain: blocks being planned hold it shared, a reorg notice alone (see
    /// [`AcceptedHandler`]).
    chains: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Plans created here whose leaves were queued, with the revision each was created at:
    /// the release that records their leaves writes at it without reading the plan first
    /// (see `Scheduler::record_released`).
    created: Kept<(Plan, u64)>,
}
