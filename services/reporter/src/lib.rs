//! reporter: tells an Ethproofs-compatible API what each team proves. It follows planning (the
//! plans bucket: a block planned for a team is `queued`, its first tasks released make it
//! `proving`) and the block proofs (`proved`) through durable consumers of its own, and reports
//! the blocks of every team that has an `ethproofs_cluster_id`.
//!
//! Exactly once, in order: one request at a time, within the key's rate. A message is acked
//! only once the API answered 2xx or 409 ("already there"), after the answered state is
//! recorded in the `reports` bucket; a state at or below the recorded one is never sent again,
//! so a redelivery or a restart repeats nothing that was answered (but the request whose
//! answer came just before a crash), and a block's `queued` or `proving` never goes out after
//! its `proved`. When the reporter is behind, a block whose proof has arrived skips its older
//! states.

mod api;
mod metrics;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use base64::Engine as _;
use push0_protocol::subjects::plan_key;
use push0_protocol::{
    Blob, BlockProof, BlockRef, DlqReason, Plan, ReportState, Reported, TeamConfig, WireMessage,
    decode, now_ms,
};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Registry, Rejection, RuntimeError, consume,
    kv_get, kv_write, retry_after_error,
};
use tokio_util::sync::CancellationToken;

use crate::api::{Answer, Api, ProvedBody, Request, StateBody};
pub use crate::api::{ApiConfig, Rate};
use crate::metrics::{REALTIME_MS, reporting};

pub const SERVICE: &str = "reporter";

/// A block reported queued or proving this long ago, and not proved, is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(20 * 60);

#[derive(Clone, Debug)]
pub struct Config {
    pub api: ApiConfig,
}

/// The API key: `ETHPROOFS_API_KEY`, else the first line of `file`. Never a command-line
/// argument: those are visible to every user of the host.
pub fn api_key(file: Option<&std::path::Path>) -> Result<Option<String>, RuntimeError> {
    if let Some(key) = std::env::var("ETHPROOFS_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        return Ok(Some(key.trim().to_string()));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| RuntimeError::Config(format!("key file {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|k| !k.is_empty()))
}

/// Runs the reporter until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let registry = Registry::watch(&bus, shutdown.clone()).await?;
    let blobs = BlobStore::open(&bus, push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD).await?;
    let reporter = Arc::new(Reporter {
        registry,
        blobs: blobs.clone(),
        reports: bus.kv(&bus.subjects.bucket_reports()).await?,
        api: tokio::sync::Mutex::new(Api::new(config.api)),
        proofs_in: Mutex::new(HashSet::new()),
        open: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
    });
    let ticker = tokio::spawn(count_stuck(reporter.clone(), shutdown.clone()));
    let plans = bus.topology.reporter_plans_consumer();
    let proofs = bus.topology.reporter_proofs_consumer();
    let (on_plans, on_proofs) = (
        PlanHandler(reporter.clone()),
        ProofHandler(reporter.clone()),
    );
    let result = tokio::try_join!(
        consume(
            &bus,
            &blobs,
            &plans,
            SERVICE,
            "plan",
            &on_plans,
            shutdown.clone()
        ),
        consume(
            &bus,
            &blobs,
            &proofs,
            SERVICE,
            "block-proof",
            &on_proofs,
            shutdown.clone()
        ),
    );
    ticker.abort();
    result.map(|_| ())
}

struct Reporter {
    registry: Registry,
    blobs: BlobStore,
    reports: kv::Store,
    /// One request at a time, in the order the reports came (tokio's mutex is fair).
    api: tokio::sync::Mutex<Api>,
    /// Blocks whose proof has arrived and is not answered yet: their older states are skipped.
    proofs_in: Mutex<HashSet<String>>,
    /// Blocks reported queued or proving and not proved yet: team and since when.
    open: Mutex<HashMap<String, (String, Instant)>>,
    shutdown: CancellationToken,
}

impl Reporter {
    /// Reports `state` of `block` for `team` (with its proof when `proved`), unless the team is
    /// not reported or the state is not newer than what was answered.
    async fn report(
        &self,
        team: &TeamConfig,
        block: &BlockRef,
        state: ReportState,
        proof: Option<&BlockProof>,
    ) -> Outcome {
        let Some(cluster) = team.ethproofs_cluster_id else {
            return Outcome::Ack;
        };
        let key = plan_key(&team.name, &block.chain, block.number);
        let m = reporting();
        m.backlog.inc();
        let mut api = self.api.lock().await;
        m.backlog.dec();
        let answered = match kv_get::<Reported>(&self.reports, &key).await {
            Ok(r) => r.map(|(r, _)| r.state),
            Err(e) => return retry_after_error(SERVICE, "reading a report", &e, SOON),
        };
        if answered.is_some_and(|a| a >= state) {
            // A repeat of what was answered (a proof redelivered after its record was
            // written): nothing to send, and a proved block leaves the in-memory sets.
            self.settled(&key, state);
            return Outcome::Ack;
        }
        if state < ReportState::Proved && self.proofs_in.lock().expect("proofs").contains(&key) {
            m.skipped.with_label_values(&[&team.name]).inc();
            return Outcome::Ack;
        }
        let request = match self.request(team, block, cluster, state, proof).await {
            Ok(r) => r,
            Err(e) => return retry_after_error(SERVICE, "reading a proof", &e, SOON),
        };
        match api.send(&request, &self.shutdown).await {
            Answer::Taken => {}
            Answer::Stopped => return Outcome::Retry(Duration::ZERO),
            Answer::Refused(detail) => {
                self.settled(&key, state);
                return Outcome::Reject(
                    Rejection::new(
                        DlqReason::InvalidField,
                        format!("the Ethproofs API refused {}: {detail}", request.what),
                    )
                    .team(&team.name)
                    .block(block),
                );
            }
        }
        drop(api);
        let written = kv_write::<Reported, _>(&self.reports, &key, |c| {
            c.is_none_or(|c| c.state < state).then_some(Reported {
                state,
                at_ms: now_ms(),
            })
        })
        .await;
        if let Err(e) = written {
            // Answered but not recorded: the redelivery sends it again (a `proved` twice is
            // answered 409).
            return retry_after_error(SERVICE, "recording a report", &e, SOON);
        }
        if answered.is_none() {
            m.blocks.with_label_values(&[&team.name]).inc();
            // The team's stuck count exists from its first report, at 0 until a block is
            // stuck: rules and panels on it read 0 rather than nothing.
            m.stuck.with_label_values(&[&team.name]).add(0);
        }
        if let Some(p) = proof {
            m.proved.with_label_values(&[&team.name]).inc();
            // Created with the team's first proof even when it was slow, so the real-time
            // share reads 0 rather than nothing.
            let realtime = m.realtime.with_label_values(&[&team.name]);
            if p.latency_ms <= REALTIME_MS {
                realtime.inc();
            }
        }
        self.settled(&key, state);
        if state < ReportState::Proved {
            self.open
                .lock()
                .expect("open")
                .entry(key)
                .or_insert_with(|| (team.name.clone(), Instant::now()));
        }
        tracing::info!(what = %request.what, "reported");
        Outcome::Ack
    }

    /// `state` of `key` will not be sent again: a proved block leaves the in-memory sets.
    fn settled(&self, key: &str, state: ReportState) {
        if state == ReportState::Proved {
            self.proofs_in.lock().expect("proofs").remove(key);
            self.open.lock().expect("open").remove(key);
        }
    }

    async fn request(
        &self,
        team: &TeamConfig,
        block: &BlockRef,
        cluster: u64,
        state: ReportState,
        proof: Option<&BlockProof>,
    ) -> Result<Request, RuntimeError> {
        let what = format!(
            "{state:?} of {} block {} for team {}",
            block.chain, block.number, team.name
        )
        .to_lowercase();
        let (endpoint, body) = match (state, proof) {
            (ReportState::Proved, Some(p)) => {
                let bytes = match (&p.proof, &p.proof_ref) {
                    (Some(bytes), _) => bytes.clone(),
                    (None, Some(r)) => self.blobs.get(&Blob::Stored(r.clone())).await?,
                    (None, None) => Vec::new(),
                };
                let body = ProvedBody {
                    block_number: block.number,
                    cluster_id: cluster,
                    proving_time: p.proving_ms,
                    proving_cycles: None,
                    proof: base64::engine::general_purpose::STANDARD.encode(bytes),
                    verifier_id: p.proof_system.clone(),
                };
                ("proved", serde_json::to_value(body))
            }
            (state, _) => {
                let body = StateBody {
                    block_number: block.number,
                    cluster_id: cluster,
                };
                let endpoint = match state {
                    ReportState::Queued => "queued",
                    _ => "proving",
                };
                (endpoint, serde_json::to_value(body))
            }
        };
        Ok(Request {
            endpoint,
            body: body.map_err(|e| RuntimeError::Config(format!("report body: {e}")))?,
            what,
        })
    }
}

/// Delay before a report whose bucket read or write failed is tried again.
const SOON: Duration = Duration::from_millis(500);

/// Writes of the plans bucket: a plan is `queued`, or `proving` once it records released
/// tasks; a withdrawn or failed plan is not reported further.
struct PlanHandler(Arc<Reporter>);

impl Handler for PlanHandler {
    const ORDER: Order = Order::Unordered;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        // A deleted or purged key carries no plan.
        let removed = delivery
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() != "PUT");
        if removed || delivery.payload().is_empty() {
            return Outcome::Ack;
        }
        let plan: Plan = match decode(Some(Plan::SCHEMA), delivery.payload()) {
            Ok(p) => p,
            Err(e) => return Outcome::Reject(e.into()),
        };
        // A team removed meanwhile has nothing more to report.
        let Some(team) = self.0.registry.get(&plan.team) else {
            return Outcome::Ack;
        };
        let block = &plan.accepted.block;
        if plan.withdrawn.is_some() || plan.failed.is_some() {
            let key = plan_key(&team.name, &block.chain, block.number);
            self.0.open.lock().expect("open").remove(&key);
            return Outcome::Ack;
        }
        let state = match plan.released.is_empty() {
            true => ReportState::Queued,
            false => ReportState::Proving,
        };
        self.0.report(&team, block, state, None).await
    }
}

/// Block proofs: `proved`.
struct ProofHandler(Arc<Reporter>);

impl Handler for ProofHandler {
    const ORDER: Order = Order::Unordered;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let proof: BlockProof = match delivery.decode() {
            Ok(p) => p,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let Some(team) = self.0.registry.get(&proof.team) else {
            return Outcome::Ack;
        };
        if team.ethproofs_cluster_id.is_none() {
            return Outcome::Ack;
        }
        let block = BlockRef {
            chain: proof.chain.clone(),
            number: proof.number,
            hash: proof.hash.clone(),
        };
        // Known at once, so this block's older states still waiting for their turn are
        // skipped.
        self.0.proofs_in.lock().expect("proofs").insert(plan_key(
            &team.name,
            &block.chain,
            block.number,
        ));
        self.0
            .report(&team, &block, ReportState::Proved, Some(&proof))
            .await
    }
}

/// Keeps `push0_ethproofs_stuck_blocks` current: per team, the blocks reported queued or
/// proving more than [`STUCK_AFTER`] ago.
async fn count_stuck(reporter: Arc<Reporter>, shutdown: CancellationToken) {
    let mut teams: HashSet<String> = HashSet::new();
    loop {
        // A team removed, or no longer reported at Ethproofs, sends no proof for its open
        // blocks: they are forgotten here rather than kept for good.
        let reported = |team: &str| {
            reporter
                .registry
                .get(team)
                .is_some_and(|t| t.ethproofs_cluster_id.is_some())
        };
        reporter
            .open
            .lock()
            .expect("open")
            .retain(|_, (team, _)| reported(team));
        let mut stuck: HashMap<String, i64> = HashMap::new();
        for (team, since) in reporter.open.lock().expect("open").values() {
            if since.elapsed() >= STUCK_AFTER {
                *stuck.entry(team.clone()).or_default() += 1;
            }
        }
        for team in teams.iter().chain(stuck.keys()) {
            let n = stuck.get(team).copied().unwrap_or(0);
            reporting().stuck.with_label_values(&[team]).set(n);
        }
        teams.extend(stuck.into_keys());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
