//! What a gateway tells and hears beside its tasks: cancellations that stop its provers, the
//! history of failed attempts, notices of tasks out of deliveries, and its capacity record.

use std::sync::Arc;

use bytes::Bytes;
use push0_protocol::subjects::attempt_key;
use push0_protocol::topology::CAPACITY_TTL;
use push0_protocol::{Attempt, Cancel, Capacity, Task, encode, now_ms};
use push0_runtime::{Delivery, RuntimeError};
use tokio_util::sync::CancellationToken;

use crate::{Gateway, WITHDRAWN_KEPT};

impl Gateway {
    /// Stops running provers named by a cancellation (a withdrawn block or a removed team).
    pub(crate) async fn listen_for_cancels(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let g = self.clone();
        self.bus
            .follow(self.bus.subjects.cancel(), shutdown, move |cancel: Cancel| {
                if cancel.team != g.config.team {
                    return;
                }
                if let Some(b) = &cancel.block {
                    let mut withdrawn = g.withdrawn.lock().expect("withdrawn lock");
                    if withdrawn.len() == WITHDRAWN_KEPT {
                        withdrawn.pop_front();
                    }
                    withdrawn.push_back(b.clone());
                }
                let running = g.running.lock().expect("running lock");
                for (task_id, (block, token)) in running.iter() {
                    let hit = cancel.block.as_ref().is_none_or(|b| {
                        b.chain == block.chain && b.number == block.number && b.hash == block.hash
                    });
                    if hit {
                        tracing::info!(task = %task_id, reason = %cancel.reason, "stopping prover: work withdrawn");
                        token.cancel();
                    }
                }
            })
            .await
    }

    /// Records a failed delivery for the task's history (best effort: a dead letter without
    /// it still says how many deliveries there were).
    pub(crate) async fn report_attempt(&self, task_id: &str, delivery: i64, error: &str) {
        let record = Attempt {
            delivery: delivery.max(1) as u64,
            gateway: self.config.id.clone(),
            error: error.chars().take(500).collect(),
            at_ms: now_ms(),
        };
        let key = attempt_key(task_id, record.delivery);
        let stored = match self.bus.kv(&self.bus.subjects.bucket_attempts()).await {
            Ok(kv) => kv
                .put(&key, Bytes::from(encode(&record)))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, key, "attempt not recorded");
        }
    }

    /// A task has had its deliveries: say so durably, in the shape of the server's own
    /// max-deliveries advisory and on its subject (which the advisories stream keeps); the
    /// caller then hands the task back for `EXHAUSTED_RECHECK`. The scheduler files it as a
    /// dead letter and deletes it from the work queue; until it has, every redelivery is
    /// reported again, so a notice lost with a NATS node or a gateway that dies before sending
    /// it costs one `EXHAUSTED_RECHECK`. The msg-id names the message and delivery: a retried
    /// publish is dropped, the next delivery's report is not, nor is a replayed task's (a new
    /// message of the same task id); a report of a task already filed finds it gone and
    /// changes nothing.
    pub(crate) async fn report_exhausted(
        &self,
        task: &Task,
        delivery: &Delivery,
        max_deliver: i64,
    ) {
        let consumer = self.bus.subjects.task_consumer(&task.team, &task.class);
        let notice = serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": self.bus.subjects.stream_tasks(),
            "consumer": consumer,
            "stream_seq": delivery.stream_sequence,
            "deliveries": max_deliver,
            "reported_by": self.config.id,
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            push0_protocol::MSG_ID_HEADER,
            format!(
                "exhausted/{}/{}/{}",
                task.task_id, delivery.stream_sequence, delivery.delivered
            )
            .as_str(),
        );
        let subject = self.bus.subjects.max_deliveries_advisory(&consumer);
        let payload = Bytes::from(notice.to_string());
        match self.bus.publish_raw(subject, headers, payload).await {
            Ok(_) => tracing::warn!(
                deliveries = delivery.delivered,
                "task out of deliveries; reported for the dead-letter queue"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "exhausted task not reported; its next delivery will be")
            }
        }
    }

    /// Keeps this gateway's capacity record alive while it runs and removes it on the way out.
    pub(crate) async fn advertise_capacity(
        &self,
        classes: Vec<String>,
        shutdown: CancellationToken,
    ) {
        let kv = match self.bus.kv(&self.bus.subjects.bucket_capacity()).await {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!(error = %e, "capacity bucket unavailable; not advertising");
                return;
            }
        };
        let key = capacity_key(&self.config.team, &self.config.id);
        let started_at_ms = now_ms();
        loop {
            let record = Capacity {
                gateway: self.config.id.clone(),
                team: self.config.team.clone(),
                classes: classes.clone(),
                slots: self.config.slots as u32,
                busy: self.running.lock().expect("running lock").len() as u32,
                priority: self.config.priority,
                started_at_ms,
                updated_at_ms: now_ms(),
            };
            if let Err(e) = kv.put(&key, Bytes::from(encode(&record))).await {
                tracing::debug!(error = %e, "capacity not advertised");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(CAPACITY_TTL / 3) => {}
            }
        }
        let _ = kv.delete(&key).await;
    }
}

/// KV key of a gateway's capacity record; characters a key cannot hold become `_`.
fn capacity_key(team: &str, gateway: &str) -> String {
    let id: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{team}.{id}")
}
