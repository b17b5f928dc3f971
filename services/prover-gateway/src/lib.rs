//! prover-gateway: joins a team's consumer groups, runs one prover per free slot, renews the
//! task's ack deadline with heartbeats that proving cannot starve, publishes the result (and
//! waits for its ack) before acking the task.

pub mod latency;
mod prove;
pub mod prover;
mod signals;
mod slot;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use push0_protocol::{BlockRef, TeamConfig};
use push0_runtime::{BlobStore, Bus, Registry, RuntimeError, metrics};
use tokio_util::sync::CancellationToken;

use crate::prover::{Bundler, Prover};

pub const SERVICE: &str = "prover-gateway";

#[derive(Debug, Clone)]
pub struct Config {
    pub team: String,
    /// Task classes to serve; empty means every class of the team's workflow.
    pub classes: Vec<String>,
    /// Concurrent provers per class.
    pub slots: usize,
    pub prover: Prover,
    /// When set, aggregation tasks are bundled instead of proved (systems without recursion).
    pub bundler: Option<Bundler>,
    /// On shutdown, in-flight tasks get this long to finish before they are nak'ed.
    pub grace: Duration,
    /// Name of this gateway in results and logs.
    pub id: String,
    pub inline_threshold: usize,
    /// Pull priority within the team's consumer group, 0 (served first) to 9: a slow tier set
    /// higher gets work only while every faster prover is busy.
    pub priority: u8,
}

/// Runs the gateway until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let Some(team) = wait_for_team(&registry, &config.team, &shutdown).await else {
        return Ok(());
    };
    let blobs = BlobStore::open_team(&bus, &config.team, config.inline_threshold).await?;
    let classes = if config.classes.is_empty() {
        team.classes()
    } else {
        config.classes.clone()
    };
    let gateway = Arc::new(Gateway {
        bus: bus.clone(),
        blobs,
        config: config.clone(),
        team: team.clone(),
        running: Mutex::new(HashMap::new()),
        withdrawn: Mutex::new(VecDeque::new()),
    });
    gateway.listen_for_cancels(shutdown.clone()).await?;
    let advertiser = tokio::spawn({
        let g = gateway.clone();
        let classes = classes.clone();
        let stop = shutdown.clone();
        async move { g.advertise_capacity(classes, stop).await }
    });
    let mut slots = Vec::new();
    for class in &classes {
        let spec = bus.topology.task_consumer(&team, class);
        let consumer = bus.ensure_consumer(&spec).await?;
        push0_runtime::metrics::consumer_bound(SERVICE, slot::KIND);
        for slot in 0..config.slots {
            let g = gateway.clone();
            let c = consumer.clone();
            let stop = shutdown.clone();
            slots.push(tokio::spawn(
                async move { g.slot_loop(c, slot, stop).await },
            ));
        }
    }
    tracing::info!(team = %team.name, classes = ?classes, slots = config.slots, gateway = %config.id, "gateway serving");
    for s in slots {
        let _ = s.await;
    }
    let _ = advertiser.await;
    // Acks and naks are fire-and-forget: flush them before exit.
    bus.client
        .flush()
        .await
        .map_err(|e| RuntimeError::nats("flush on shutdown", e))?;
    tracing::info!(gateway = %config.id, "gateway stopped");
    Ok(())
}

async fn wait_for_team(
    registry: &Registry,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<TeamConfig> {
    let mut warned = false;
    loop {
        if let Some(team) = registry.get(name) {
            return Some(team);
        }
        if !warned {
            tracing::warn!(team = name, "team not registered yet; waiting");
            warned = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

pub(crate) struct Gateway {
    bus: Bus,
    blobs: BlobStore,
    config: Config,
    /// The team as it was at start: each task's class limits (ack wait, deliveries, time
    /// limit) come from it.
    team: TeamConfig,
    /// Tasks proving now, by task id: their block and the token that stops them.
    running: Mutex<HashMap<String, (BlockRef, CancellationToken)>>,
    /// Blocks recently withdrawn (newest last, at most `WITHDRAWN_KEPT`): their tasks still
    /// queued on the bus are acked without proving when they come.
    withdrawn: Mutex<VecDeque<BlockRef>>,
}

pub(crate) const WITHDRAWN_KEPT: usize = 4096;

/// A task proving now: registered (and counted busy) while it lives, unregistered when its
/// proving ends, however it ends.
pub(crate) struct Running<'a> {
    gateway: &'a Gateway,
    team: String,
    task_id: String,
    token: CancellationToken,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.gateway
            .running
            .lock()
            .expect("running lock")
            .remove(&self.task_id);
        metrics().slots_busy.with_label_values(&[&self.team]).dec();
    }
}

/// How long one pull request waits for a task before it is renewed.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long a task reported exhausted is handed back for before it is reported again.
pub(crate) const EXHAUSTED_RECHECK: Duration = Duration::from_secs(5);
