//! ingest: validates block submissions, de-duplicates them, records their status, stores their
//! payload and publishes `BlockAccepted`. Bad input becomes a dead letter; ingest keeps going.

use std::time::Duration;

use async_nats::jetstream::kv;
use push0_protocol::subjects::{block_key, block_msg_id};
use push0_protocol::{
    BlockAccepted, BlockRef, BlockState, BlockStatus, BlockSubmission, DlqReason, now_ms,
    validate_chain,
};
use push0_runtime::{
    BlobStore, Bus, Delivery, Handler, Outcome, Rejection, RuntimeError, consume, kv_create,
    kv_get, kv_update, metrics,
};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted payload, bytes.
    pub max_payload: usize,
    /// Payloads above this go to the object store.
    pub inline_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: 4 * 1024 * 1024,
            inline_threshold: push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD,
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
        bus: bus.clone(),
        blobs: blobs.clone(),
        config,
    };
    let spec = bus.topology.ingest_consumer();
    consume(&bus, &blobs, &spec, SERVICE, "block", &handler, shutdown).await
}

struct Ingest {
    bus: Bus,
    blobs: BlobStore,
    blocks: kv::Store,
    config: Config,
}

/// Checks a submission against the public interface; the reason names the first problem.
pub fn validate(
    submission: &BlockSubmission,
    subject: &str,
    max_payload: usize,
) -> Result<(), Rejection> {
    let token = subject.rsplit('.').next().unwrap_or_default();
    if submission.chain != token {
        return Err(Rejection::new(
            DlqReason::ChainMismatch,
            format!(
                "chain {:?} does not match subject token {token:?}",
                submission.chain
            ),
        ));
    }
    if let Err(e) = validate_chain(&submission.chain) {
        return Err(Rejection::new(DlqReason::InvalidField, e.to_string()));
    }
    for (field, value) in [
        ("hash", &submission.hash),
        ("parent_hash", &submission.parent_hash),
    ] {
        if value.len() != 32 {
            return Err(Rejection::new(
                DlqReason::InvalidField,
                format!("{field} must be 32 bytes, got {}", value.len()),
            ));
        }
    }
    if submission.payload.len() > max_payload {
        return Err(Rejection::new(
            DlqReason::Oversize,
            format!(
                "payload of {} bytes exceeds the limit of {max_payload}",
                submission.payload.len()
            ),
        ));
    }
    Ok(())
}

impl Handler for Ingest {
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
        if let Err(rejection) = validate(&submission, &delivery.subject, self.config.max_payload) {
            return Outcome::Reject(rejection.block(&block));
        }
        match self.accept(submission, block, delivery.published_ms).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "ingest failed, will retry");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

impl Ingest {
    async fn accept(
        &self,
        submission: BlockSubmission,
        block: BlockRef,
        submitted_at_ms: u64,
    ) -> Result<Outcome, RuntimeError> {
        let key = block_key(&block.chain, block.number);
        let status = match kv_get::<BlockStatus>(&self.blocks, &key).await? {
            Some((status, _)) => status,
            None => {
                let fresh = BlockStatus {
                    block: block.clone(),
                    state: BlockState::Received,
                    payload_len: submission.payload.len() as u64,
                    submitted_at_ms,
                    accepted_at_ms: None,
                    duplicates: 0,
                };
                if !kv_create(&self.blocks, &key, &fresh).await? {
                    // Another ingest instance recorded it in between: decide on the next delivery.
                    return Ok(Outcome::Retry(Duration::from_millis(50)));
                }
                fresh
            }
        };
        if status.block.hash != block.hash {
            return Ok(Outcome::Reject(
                Rejection::new(
                    DlqReason::ConflictingHash,
                    format!(
                        "block {}.{} is known with hash {}",
                        block.chain,
                        block.number,
                        hex_short(&status.block.hash)
                    ),
                )
                .block(&block),
            ));
        }
        if status.state == BlockState::Accepted {
            metrics().duplicates.with_label_values(&[SERVICE]).inc();
            tracing::debug!(chain = %block.chain, number = block.number, "duplicate submission");
            kv_update::<BlockStatus, _>(&self.blocks, &key, |s| {
                s.map(|s| BlockStatus {
                    duplicates: s.duplicates + 1,
                    ..s.clone()
                })
            })
            .await?;
            return Ok(Outcome::Ack);
        }
        // Received but maybe not published: publish (again). The msg-id makes a repeat harmless.
        let payload = self.blobs.put(submission.payload).await?;
        let accepted = BlockAccepted {
            block: block.clone(),
            parent_hash: submission.parent_hash,
            timestamp_ms: submission.timestamp_ms,
            submitted_at_ms: status.submitted_at_ms,
            deadline_ms: submission.deadline_ms,
            payload,
        };
        let msg_id = block_msg_id(&block.chain, block.number, &block.hash);
        self.bus
            .publish(
                self.bus.subjects.accepted(&block.chain),
                &accepted,
                Some(&msg_id),
            )
            .await?;
        kv_update::<BlockStatus, _>(&self.blocks, &key, |s| {
            s.map(|s| BlockStatus {
                state: BlockState::Accepted,
                accepted_at_ms: Some(now_ms()),
                ..s.clone()
            })
        })
        .await?;
        tracing::info!(chain = %block.chain, number = block.number, "block accepted");
        Ok(Outcome::Ack)
    }
}

fn hex_short(hash: &[u8]) -> String {
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

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

    #[test]
    fn accepts_a_valid_block() {
        assert!(validate(&submission(), "push0.blocks.eth", 1000).is_ok());
    }

    #[test]
    fn rejects_each_bad_field() {
        let reason =
            |s: &BlockSubmission, subject: &str, max| validate(s, subject, max).unwrap_err().reason;
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
