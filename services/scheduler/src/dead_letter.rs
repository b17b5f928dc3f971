//! Dead-lettering poison tasks reported on the advisories stream.

use std::sync::Arc;
use std::time::Duration;

use push0_protocol::subjects::plan_key;
use push0_protocol::{DlqReason, Plan, Task};
use push0_runtime::{
    BlobStore, Delivery, Handler, Outcome, Rejection, RuntimeError, kv_update, retry_after_error,
};

use crate::{SERVICE, Scheduler};

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
        let consumer = advisory["consumer"].as_str().unwrap_or("?").to_string();
        match self.dead_letter_task(sequence, deliveries, &consumer).await {
            Ok(()) => Outcome::Ack,
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
        for delivery in 1..=deliveries {
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
    ) -> Result<(), RuntimeError> {
        let bus = &self.scheduler.bus;
        let stream = bus
            .js
            .get_stream(bus.subjects.stream_tasks())
            .await
            .map_err(|e| RuntimeError::nats("get task stream", e))?;
        let Ok(message) = stream.get_raw_message(sequence).await else {
            // Gone already: handled before a crash, or acked late by a slow gateway.
            return Ok(());
        };
        let schema = message
            .headers
            .get(push0_protocol::SCHEMA_HEADER)
            .map(|v| v.as_str().to_string());
        let task = push0_protocol::decode::<Task>(schema.as_deref(), &message.payload).ok();
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
        Ok(())
    }
}
