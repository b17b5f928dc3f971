//! ingest: validates block submissions, de-duplicates them, records their status, stores their
//! payload and publishes `BlockAccepted`. Bad input becomes a dead letter; ingest keeps going.

use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::{BlockRef, BlockSubmission, DlqReason, validate_chain};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Order, Outcome, Rejection, RuntimeError, consume,
    retry_after_error,
};
use tokio_util::sync::CancellationToken;

mod accept;
mod decide;
mod reorg;
mod turns;

use turns::Turns;

pub const SERVICE: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Payloads above this go to the object store.
    pub inline_threshold: usize,
    /// The chains served; a block of any other is dead-lettered. Empty serves every chain,
    /// and then a block source can add chains, each with its own state and metric series
    /// downstream.
    pub chains: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: 4 * 1024 * 1024,
            inline_threshold: push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD,
            chains: Vec::new(),
        }
    }
}

/// Runs ingest until `shutdown`.
pub async fn run(
    bus: Bus,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let blobs = BlobStore::open(&bus, config.inline_threshold).await?;
    let handler = Ingest {
        blocks: bus.kv(&bus.subjects.bucket_blocks()).await?,
        teams: bus.kv(&bus.subjects.bucket_teams()).await?,
        bus: bus.clone(),
        blobs: blobs.clone(),
        config,
        turns: Turns::default(),
    };
    let spec = bus.topology.ingest_consumer();
    consume(&bus, &blobs, &spec, SERVICE, "block", &handler, shutdown).await
}

pub(crate) struct Ingest {
    bus: Bus,
    blobs: BlobStore,
    blocks: kv::Store,
    /// The team registry, read at a reorg for the teams whose publication it fences.
    teams: kv::Store,
    config: Config,
    turns: Turns,
}

/// Checks a submission against the public interface; the reason names the first problem.
/// (Boxed: a rejection is the rare case, and it is larger than the `Ok`.)
pub fn validate(
    submission: &BlockSubmission,
    subject: &str,
    config: &Config,
) -> Result<(), Box<Rejection>> {
    let token = subject.rsplit('.').next().unwrap_or_default();
    if submission.chain != token {
        return Err(Box::new(Rejection::new(
            DlqReason::ChainMismatch,
            format!(
                "chain {:?} does not match subject token {token:?}",
                submission.chain
            ),
        )));
    }
    if let Err(e) = validate_chain(&submission.chain) {
        return Err(Box::new(Rejection::new(
            DlqReason::InvalidField,
            e.to_string(),
        )));
    }
    if !config.chains.is_empty() && !config.chains.contains(&submission.chain) {
        return Err(Box::new(Rejection::new(
            DlqReason::InvalidField,
            format!(
                "chain {:?} is not served here (served: {})",
                submission.chain,
                config.chains.join(", ")
            ),
        )));
    }
    for (field, value) in [
        ("hash", &submission.hash),
        ("parent_hash", &submission.parent_hash),
    ] {
        if value.len() != 32 {
            return Err(Box::new(Rejection::new(
                DlqReason::InvalidField,
                format!("{field} must be 32 bytes, got {}", value.len()),
            )));
        }
    }
    if submission.payload.len() > config.max_payload {
        return Err(Box::new(Rejection::new(
            DlqReason::Oversize,
            format!(
                "payload of {} bytes exceeds the limit of {}",
                submission.payload.len(),
                config.max_payload
            ),
        )));
    }
    Ok(())
}

impl Handler for Ingest {
    // Blocks arrive on their chain's subject; chains share no record.
    const ORDER: Order = Order::PerSubject;

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let submission: BlockSubmission = match delivery.decode() {
            Ok(s) => s,
            Err(e) => return Outcome::Reject(e.into()),
        };
        let block = BlockRef {
            chain: submission.chain.clone(),
            number: submission.number,
            hash: submission.hash.clone(),
        };
        if let Err(rejection) = validate(&submission, &delivery.subject, &self.config) {
            return Outcome::Reject(rejection.block(&block));
        }
        match self.accept(submission, block, delivery).await {
            Ok(outcome) => outcome,
            Err(e) => retry_after_error(
                SERVICE,
                "accepting the block",
                &e,
                Duration::from_millis(500),
            ),
        }
    }
}

/// Heights above a reorg's fork that are looked at for descendants of the orphaned block; a
/// run of this many unknown heights ends the search.
pub(crate) const REORG_GAP: u64 = 64;
/// Deliveries of a block at an occupied height whose parent is not the block below before it
/// is dead-lettered as a conflict.
pub(crate) const PARENT_RETRIES: i64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn submission() -> BlockSubmission {
        BlockSubmission {
            chain: "eth".into(),
            number: 1,
            hash: vec![1; 32],
            parent_hash: vec![0; 32],
            timestamp_ms: 0,
            payload: vec![0; 100],
            deadline_ms: None,
        }
    }

    fn limit(max_payload: usize) -> Config {
        Config {
            max_payload,
            ..Config::default()
        }
    }

    #[test]
    fn accepts_a_valid_block() {
        assert!(validate(&submission(), "push0.blocks.eth", &limit(1000)).is_ok());
    }

    #[test]
    fn only_the_chains_served_when_they_are_named() {
        let served = Config {
            chains: vec!["eth".into(), "op".into()],
            ..Config::default()
        };
        assert!(validate(&submission(), "push0.blocks.eth", &served).is_ok());
        let mut s = submission();
        s.chain = "spam-1".into();
        let rejection = validate(&s, "push0.blocks.spam-1", &served).unwrap_err();
        assert_eq!(rejection.reason, DlqReason::InvalidField);
        assert!(
            rejection.detail.contains("not served"),
            "{}",
            rejection.detail
        );
        assert!(validate(&s, "push0.blocks.spam-1", &Config::default()).is_ok());
    }

    #[test]
    fn rejects_each_bad_field() {
        let reason = |s: &BlockSubmission, subject: &str, max| {
            validate(s, subject, &limit(max)).unwrap_err().reason
        };
        assert_eq!(
            reason(&submission(), "push0.blocks.op", 1000),
            DlqReason::ChainMismatch
        );
        assert_eq!(
            reason(&submission(), "push0.blocks.eth", 99),
            DlqReason::Oversize
        );
        let mut s = submission();
        s.hash = vec![1; 31];
        assert_eq!(
            reason(&s, "push0.blocks.eth", 1000),
            DlqReason::InvalidField
        );
        let mut s = submission();
        s.chain = "ETH".into();
        assert_eq!(
            reason(&s, "push0.blocks.ETH", 1000),
            DlqReason::InvalidField
        );
    }
}
