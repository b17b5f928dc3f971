//! aggregator: records each proved part once (the first result wins), tells the scheduler when
//! an aggregation's inputs are complete, and publishes each block's proof exactly once, in block
//! order per (team, chain): a proof that finishes early waits for its predecessors.

mod joins;
mod order;
mod publish;
mod record;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::{BlockStatus, Cursor, DlqReason, TaskResult};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Registry, Rejection, RuntimeError, consume,
    retry_after_error,
};
use tokio_util::sync::CancellationToken;

use crate::joins::Recent;
use crate::order::Walks;

pub const SERVICE: &str = "aggregator";

/// A publication cursor and a block's status, each with its revision, as read.
pub(crate) type Head = (Option<(Cursor, u64)>, Option<(BlockStatus, u64)>);

/// A verifier taking longer than this is treated as a failure of the verifier, not the proof.
pub(crate) const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the aggregator until `shutdown`.
pub async fn run(bus: Bus, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let handler = Aggregator {
        blobs: blobs.clone(),
        parts: bus.kv(&bus.subjects.bucket_parts()).await?,
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        cursors: bus.kv(&bus.subjects.bucket_cursors()).await?,
        plans: bus.kv(&bus.subjects.bucket_plans()).await?,
        bus: bus.clone(),
        registry,
        walks: Walks::default(),
        recent: Recent::default(),
        gateway_labels: GatewayLabels::default(),
    };
    let spec = bus.topology.aggregator_consumer();
    consume(
        &bus,
        &blobs,
        &spec,
        SERVICE,
        "task-result",
        &handler,
        shutdown,
    )
    .await
}

pub(crate) struct Aggregator {
    bus: Bus,
    blobs: BlobStore,
    registry: Registry,
    parts: kv::Store,
    blocks: kv::Store,
    cursors: kv::Store,
    plans: kv::Store,
    walks: Walks,
    recent: Recent,
    gateway_labels: GatewayLabels,
}

/// Gateway ids a team's results may name in `push0_invalid_proofs_total{team, gateway}`: a
/// result names its gateway as the team's gateway wrote it, so the label's values are bounded
/// here, not by the team. The first [`GatewayLabels::MAX`] ids seen per team are labelled as
/// themselves, later ones as "other" (the gateway is in the log line and the dead letter).
#[derive(Default)]
pub(crate) struct GatewayLabels(Mutex<HashMap<String, HashSet<String>>>);

impl GatewayLabels {
    pub(crate) const MAX: usize = 64;

    /// The label value for `gateway` of `team` (a registered team).
    pub(crate) fn label(&self, team: &str, gateway: &str) -> String {
        let mut teams = self.0.lock().expect("gateway labels lock");
        let seen = teams.entry(team.to_string()).or_default();
        if seen.contains(gateway) || seen.len() < Self::MAX && seen.insert(gateway.to_string()) {
            gateway.to_string()
        } else {
            "other".to_string()
        }
    }
}

impl Handler for Aggregator {
    // Results are handled as they come: a part is recorded by a create (the first stands), a
    // join is signalled under a msg-id by whichever sibling sees all of them recorded, and the
    // publication walk moves its cursor by compare-and-set.
    const ORDER: Order = Order::Unordered;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let result: TaskResult = match delivery.decode() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let Some(team) = self.registry.get(&result.team) else {
            return Outcome::Reject(
                Rejection::unknown_team(&result.team, &result.block).task(&result.task_id),
            );
        };
        if !result.workflow.contains(result.node) {
            return Outcome::Reject(
                Rejection::new(
                    DlqReason::InvalidField,
                    format!(
                        "node {} is not in workflow {:?}",
                        result.node, result.workflow
                    ),
                )
                .team(&result.team)
                .task(&result.task_id),
            );
        }
        match self.record(&team, result).await {
            Ok(outcome) => outcome,
            Err(e) => retry_after_error(
                SERVICE,
                "recording the result",
                &e,
                Duration::from_millis(500),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GatewayLabels;

    #[test]
    fn a_team_names_at_most_max_gateways_in_labels() {
        let labels = GatewayLabels::default();
        for i in 0..GatewayLabels::MAX {
            assert_eq!(labels.label("a", &format!("g{i}")), format!("g{i}"));
        }
        assert_eq!(
            labels.label("a", "g0"),
            "g0",
            "a gateway seen keeps its label"
        );
        assert_eq!(labels.label("a", "late"), "other");
        assert_eq!(labels.label("a", "later"), "other");
        assert_eq!(labels.label("b", "late"), "late", "each team has its own");
    }
}
