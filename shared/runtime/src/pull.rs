//! One-task pull requests in a consumer's priority group. Provers pull one task at a time
//! (NATS.md pitfalls 1 and 7); the client's `batch()` builder cannot carry a pull priority, so
//! the request is sent here and its reply inbox read directly.

use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio::time::Instant;

use crate::bus::{Bus, RuntimeError};

/// An outstanding request for one message.
pub struct OnePull {
    inbox: async_nats::Subscriber,
    js: jetstream::Context,
    /// The server answers by `expires`; past this (a lost answer) the request counts as expired.
    give_up_at: Instant,
}

impl OnePull {
    /// Asks `consumer` for one message within `group`, served ahead of requests with a higher
    /// `priority` number (the consumer's policy must be `prioritized`).
    pub async fn request(
        bus: &Bus,
        consumer: &PullConsumer,
        group: &str,
        priority: u8,
        expires: Duration,
    ) -> Result<Self, RuntimeError> {
        let inbox_subject = bus.client.new_inbox();
        let inbox = bus
            .client
            .subscribe(inbox_subject.clone())
            .await
            .map_err(|e| RuntimeError::nats("subscribe to a pull inbox", e))?;
        let request = BatchConfig {
            batch: 1,
            expires: Some(expires),
            group: Some(group.to_string()),
            priority: Some(priority as usize),
            ..Default::default()
        };
        consumer
            .request_batch(request, inbox_subject.into())
            .await
            .map_err(|e| RuntimeError::nats("send a pull request", e))?;
        Ok(OnePull {
            inbox,
            js: bus.js.clone(),
            give_up_at: Instant::now() + expires + Duration::from_secs(2),
        })
    }

    /// The message, or None once the request expired unanswered. A status other than
    /// expiry (a deleted consumer, a leader change, too many waiting pulls) is an error; the
    /// caller backs off and pulls again.
    pub async fn next(&mut self) -> Result<Option<Message>, RuntimeError> {
        loop {
            let reply = match tokio::time::timeout_at(self.give_up_at, self.inbox.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => return Ok(None),
            };
            match reply.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    return Ok(Some(Message {
                        message: reply,
                        context: self.js.clone(),
                    }));
                }
                StatusCode::IDLE_HEARTBEAT => continue,
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND => return Ok(None),
                status => {
                    let detail = reply.description.unwrap_or_default();
                    return Err(RuntimeError::nats(
                        "pull request",
                        format!("status {status}: {detail}"),
                    ));
                }
            }
        }
    }
}
