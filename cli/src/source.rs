//! A block source: publishes a chain of blocks (each hash links to its parent) at a rate.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use push0_protocol::subjects::block_msg_id;
use push0_protocol::{BlockSubmission, MSG_ID_HEADER, SCHEMA_HEADER, WireMessage, encode, now_ms};
use push0_runtime::Bus;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The block at `number` of a deterministic test chain with `payload_size` bytes of payload.
pub fn make_block(chain: &str, number: u64, payload_size: usize) -> BlockSubmission {
    let mut payload = vec![0u8; payload_size];
    let mut seed = Sha256::digest(format!("{chain}/{number}").as_bytes()).to_vec();
    for chunk in payload.chunks_mut(32) {
        seed = Sha256::digest(&seed).to_vec();
        chunk.copy_from_slice(&seed[..chunk.len()]);
    }
    BlockSubmission {
        chain: chain.to_string(),
        number,
        hash: block_hash(chain, number),
        parent_hash: if number == 0 {
            vec![0; 32]
        } else {
            block_hash(chain, number - 1)
        },
        timestamp_ms: now_ms(),
        payload,
        deadline_ms: None,
    }
}

pub fn block_hash(chain: &str, number: u64) -> Vec<u8> {
    Sha256::digest(format!("push0-block/{chain}/{number}").as_bytes()).to_vec()
}

/// A random 32-byte value, for blocks of a chain nobody else knows.
pub fn random_hash() -> Vec<u8> {
    let mut h = vec![0u8; 32];
    rand::rng().fill_bytes(&mut h);
    h
}

/// Publishes a submission as a foreign client would: `block/v1` with its msg-id.
pub async fn submit(bus: &Bus, block: &BlockSubmission) -> Result<bool> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SCHEMA_HEADER, BlockSubmission::SCHEMA);
    headers.insert(
        MSG_ID_HEADER,
        block_msg_id(&block.chain, block.number, &block.hash).as_str(),
    );
    push0_runtime::telemetry::inject_current(&mut headers);
    let ack = bus
        .publish_raw(
            bus.subjects.blocks(&block.chain),
            headers,
            Bytes::from(encode(block)),
        )
        .await?;
    Ok(!ack.duplicate)
}

/// Publishes blocks `first..first+count` of `chain` at `rate` blocks per second (0 = at once).
pub async fn run_source(
    bus: &Bus,
    chain: &str,
    first: u64,
    count: u64,
    rate: f64,
    payload_size: usize,
) -> Result<()> {
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = tokio::time::Instant::now();
    for i in 0..count {
        if let Some(every) = interval {
            tokio::time::sleep_until(start + every * i as u32).await;
        }
        let span = tracing::info_span!(
            "submit",
            otel.name = "source.submit",
            chain,
            number = first + i
        );
        let _g = span.enter();
        submit(bus, &make_block(chain, first + i, payload_size)).await?;
    }
    Ok(())
}
