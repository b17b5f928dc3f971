//! Dead-lettering poison tasks reported on the advisories stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use push0_protocol::subjects::plan_key;
use push0_protocol::{DlqReason, Plan, Task};
use push0_runtime::{
    BlobStore, Delivery, Handler, Outcome, Rejection, RuntimeError, kv_update, retry_after_error,
};

use crate::{SERVICE, Scheduler};

/// Failed deliveries of a poison task read back into its dead letter, the latest ones.
const MAX_HISTORY: u64 = 32;

/// Poison tasks: a task that ran out of deliveries stays in the work queue (the server only sends an advisory)
/// and is reported on the advisories stream — by the team's gateways, which keep the delivery
/// limit, again on every redelivery until it is handled, or by the server in the same shape.
/// This files the task as a dead letter with its delivery count, marks the block failed for
/// the team, and deletes the task from the queue.
pub(crate) struct PoisonHandler {
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) blobs: BlobStore,
}

impl Handler for PoisonHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let advisory: serde_json::Value = match serde_json::from_slice(delivery.payload()) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Reject(Rejection::new(
                    DlqReason::Malformed,
                    format!("advisory is not JSON: {e}"),
                ));
            }
        };
        let (Some(sequence), Some(deliveries)) = (
            advisory["stream_seq"].as_u64(),
            advisory["deliveries"].as_u64(),
        ) else {
            return Outcome::Reject(Rejection::new(
                DlqReason::Malformed,
                "advisory without stream_seq or deliveries",
            ));
        };
        // The consumer is read from the subject, not the body: a team's gateways may publish the
        // advisory of their own consumer only (the server enforces it), so a task of another
        // consumer named in the body is refused below.
        let consumer = delivery
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        match self.dead_letter_task(sequence, deliveries, &consumer).await {
            Ok(None) => Outcome::Ack,
            Ok(Some(refused)) => Outcome::Reject(Rejection::new(DlqReason::Malformed, refused)),
            Err(e) => retry_after_error(
                SERVICE,
                "dead-lettering a poison task",
                &e,
                Duration::from_secs(1),
            ),
        }
    }
}

impl PoisonHandler {
    /// The failures gateways reported for deliveries 1..=`deliveries` of a task.
    async fn attempts(&self, task_id: &str, deliveries: u64) -> Vec<push0_protocol::Attempt> {
        let bus = &self.scheduler.bus;
        let Ok(kv) = bus.kv(&bus.subjects.bucket_attempts()).await else {
            return Vec::new();
        };
        let mut history = Vec::new();
        // The advisory's count comes from the bus: read no more than the latest records.
        let first = deliveries.saturating_sub(MAX_HISTORY - 1).max(1);
        for delivery in first..=deliveries {
            let key = push0_protocol::subjects::attempt_key(task_id, delivery);
            if let Ok(Some((a, _))) =
                push0_runtime::kv_get::<push0_protocol::Attempt>(&kv, &key).await
            {
                history.push(a);
            }
        }
        history
    }

    async fn dead_letter_task(
        &self,
        sequence: u64,
        deliveries: u64,
        consumer: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let bus = &self.scheduler.bus;
        let stream = bus
            .js
            .get_stream(bus.subjects.stream_tasks())
            .await
            .map_err(|e| RuntimeError::nats("get task stream", e))?;
        let Ok(message) = stream.get_raw_message(sequence).await else {
            // Gone already: handled before a crash, or acked late by a slow gateway.
            return Ok(None);
        };
        let schema = message
            .headers
            .get(push0_protocol::SCHEMA_HEADER)
            .map(|v| v.as_str().to_string());
        let task = push0_protocol::decode::<Task>(schema.as_deref(), &message.payload).ok();
        // Only a task of the advisory's own consumer: its filter subject is the task's subject.
        let filter = match stream.consumer_info(consumer).await {
            Ok(info) => Some(info.config.filter_subject.clone()),
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::InvalidName
                ) =>
            {
                None
            }
            Err(e) => return Err(RuntimeError::nats("read the advisory's consumer", e)),
        };
        if filter.as_deref() != Some(message.subject.as_str()) {
            return Ok(Some(format!(
                "advisory of consumer {consumer} names stream sequence {sequence}, a message on {} outside that consumer",
                message.subject
            )));
        }
        let detail = format!("gave up after {deliveries} deliveries to consumer {consumer}");
        let mut rejection = Rejection::new(DlqReason::MaxDeliveries, detail.clone());
        if let Some(t) = &task {
            rejection = rejection.team(&t.team).block(&t.block).task(&t.task_id);
            rejection.history = self.attempts(&t.task_id, deliveries).await;
        }
        push0_runtime::consume::file_dead_letter(
            bus,
            &self.blobs,
            SERVICE,
            &rejection,
            message.subject.as_str(),
            sequence,
            schema,
            &message.payload,
        )
        .await?;
        if let Some(t) = &task {
            tracing::error!(team = %t.team, chain = %t.block.chain, number = t.block.number, node = %t.node, deliveries, "poison task dead-lettered; the block fails for this team");
            let key = plan_key(&t.team, &t.block.chain, t.block.number);
            let reason = format!("task {} {detail}", t.task_id);
            kv_update::<Plan, _>(&self.scheduler.plans, &key, |p| {
                let p = p.filter(|p| p.accepted.block.hash == t.block.hash)?;
                let mut p = p.clone();
                p.failed = Some(reason.clone());
                Some(p)
            })
            .await?;
            let mut tracker = self.scheduler.tracker.lock().expect("tracker lock");
            tracker.team(&t.team).forget(&t.block.chain, t.block.number);
        }
        stream
            .delete_message(sequence)
            .await
            .map_err(|e| RuntimeError::nats("delete poison task", e))?;
        Ok(None)
    }
}
