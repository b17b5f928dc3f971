//! A prover slot's loop: pull exactly one task, prove it, settle it, repeat.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use push0_protocol::Task;
use push0_protocol::topology::TIER_GROUP;
use push0_runtime::backoff::Backoff;
use push0_runtime::consume::{count_outcome, settle};
use push0_runtime::metrics::delivered;
use push0_runtime::pull::{PullInbox, Tier};
use push0_runtime::telemetry::{set_parent_from, task_span};
use push0_runtime::{Delivery, Outcome, Rejection};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Gateway, PULL_EXPIRES, SERVICE};

/// The `type` label of the gateway's message counts.
pub(crate) const KIND: &str = "task";

/// What a lost ack of a task with a published result leads to.
const ACK_LOST: &str = "ack not sent; the task is redelivered after its ack wait and run again, \
    and its repeat result is dropped (its msg-id, the aggregator's first-wins record)";

impl Gateway {
    /// One prover slot. One-message pull requests never stall (the client's `stream()`
    /// miscounts outstanding messages and can stop receiving until the pull expires), hold no
    /// task a free prover elsewhere could take (a batch holds tasks whose ack clocks run), and
    /// carry this gateway's tier priority. A proved task's ack carries the slot's next pull
    /// request, once its result is durable.
    pub(crate) async fn slot_loop(
        &self,
        consumer: PullConsumer,
        slot: usize,
        shutdown: CancellationToken,
    ) {
        let tier = Tier {
            group: TIER_GROUP,
            priority: self.config.priority,
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut inbox = PullInbox::new(&self.bus);
        // A proved task whose ack is still to send, with the next pull on it.
        let mut done: Option<Arc<Delivery>> = None;
        while !shutdown.is_cancelled() {
            let sent = match done.take() {
                Some(d) => match inbox.ack_next(&d.message, Some(tier), PULL_EXPIRES).await {
                    Ok(()) => {
                        count_outcome(SERVICE, KIND, "ok");
                        Ok(())
                    }
                    Err(e) => {
                        // The ack on its own, then; the pull is retried below.
                        tracing::debug!(error = %e, "ack with the next pull not sent");
                        ack_done(&d).await;
                        Err(e)
                    }
                },
                None => inbox.request(&consumer, Some(tier), PULL_EXPIRES).await,
            };
            if let Err(e) = sent {
                tracing::warn!(slot, error = %e, "pull failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                }
                continue;
            }
            let next = tokio::select! {
                n = inbox.next() => n,
                _ = shutdown.cancelled() => {
                    // A task may still arrive for this pull: hand it straight back.
                    if let Ok(Some(m)) = inbox.next().await {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
            };
            match next {
                Ok(Some(message)) => {
                    backoff.reset();
                    done = self.process(Delivery::new(message), &shutdown).await;
                }
                Err(e) => {
                    tracing::debug!(slot, error = %e, "pull ended with an error");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Ok(None) => {}
            }
        }
        if let Some(d) = done {
            ack_done(&d).await;
        }
    }

    /// Handles one task and settles every outcome but `Ack`, which it returns the delivery
    /// for: the slot acks it with its next pull.
    async fn process(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Option<Arc<Delivery>> {
        let delivery = Arc::new(delivery);
        delivered(SERVICE, KIND, delivery.delivered);
        let (outcome, span) = match delivery.decode::<Task>() {
            Err(e) => (Outcome::Reject(Rejection::from(e)), tracing::Span::none()),
            Ok(task) => {
                let span = task_span("gateway.prove", &task);
                span.record("attempt", delivery.delivered);
                set_parent_from(&span, delivery.message.headers.as_ref());
                let outcome = self
                    .prove_task(&delivery, task, shutdown)
                    .instrument(span.clone())
                    .await;
                (outcome, span)
            }
        };
        match outcome {
            Outcome::Ack => Some(delivery),
            outcome => {
                settle(&self.bus, &self.blobs, SERVICE, KIND, &delivery, outcome)
                    .instrument(span)
                    .await;
                None
            }
        }
    }
}

/// Acks a task whose durable work is done, on its own (without a pull).
async fn ack_done(delivery: &Delivery) {
    match delivery.message.ack_with(AckKind::Ack).await {
        Ok(()) => count_outcome(SERVICE, KIND, "ok"),
        Err(e) => tracing::warn!(error = %e, "{ACK_LOST}"),
    }
}
