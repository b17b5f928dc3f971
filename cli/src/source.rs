//! A block source: publishes a chain of blocks (each hash links to its parent) at a rate.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use push0_protocol::subjects::block_msg_id;
pub use push0_protocol::synthetic::{block_hash, make_block};
use push0_protocol::{BlockSubmission, MSG_ID_HEADER, SCHEMA_HEADER, WireMessage, encode};
use push0_runtime::Bus;
use rand::RngCore;

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
