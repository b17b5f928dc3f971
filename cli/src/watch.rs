//! Reads block proofs from the PROOFS stream (an ordered consumer from the start), as any
//! client of push0 would.

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use push0_protocol::{BlockProof, SCHEMA_HEADER, decode};
use push0_runtime::Bus;

/// A live feed of block proofs in publication order.
pub struct ProofFeed {
    messages: async_nats::jetstream::consumer::pull::Ordered,
}

impl ProofFeed {
    /// Every proof under `<prefix>.proofs.>`, from the first ever published.
    pub async fn open(bus: &Bus) -> Result<Self> {
        let stream = bus.js.get_stream(bus.subjects.stream_proofs()).await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: bus.subjects.proofs_all(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("creating proof feed")?;
        Ok(Self {
            messages: consumer.messages().await?,
        })
    }

    /// The next proof; None if the feed ended.
    pub async fn next(&mut self) -> Result<Option<BlockProof>> {
        let Some(message) = self.messages.next().await else {
            return Ok(None);
        };
        let message = message?;
        Ok(Some(decode(schema_of(&message), &message.payload)?))
    }
}

/// The schema a message names in its header, if it names one.
pub fn schema_of(message: &async_nats::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(SCHEMA_HEADER))
        .map(|v| v.as_str())
}
