//! Pull requests sent and read here rather than through the client's `stream()` (whose
//! outstanding-message bookkeeping stalls: NATS.md pitfall 1, and went quiet on a clustered
//! consumer) or `batch()` (which cannot carry a pull priority). A request asks for up to
//! `batch` messages, optionally in a priority group; its reply inbox is read directly, and a
//! request whose answer is lost counts as expired shortly after its `expires`.

use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio::time::Instant;

use crate::bus::{Bus, RuntimeError};

/// An outstanding pull request.
pub struct Pull {
    inbox: async_nats::Subscriber,
    js: jetstream::Context,
    /// Messages this request may still deliver.
    remaining: usize,
    /// The server answers by `expires`; past this (a lost answer) the request counts as expired.
    give_up_at: Instant,
}

/// Which pull requests a consumer with priority groups serves first.
#[derive(Debug, Clone, Copy)]
pub struct Tier<'a> {
    pub group: &'a str,
    /// 0 is served first, up to 9 (the consumer's policy must be `prioritized`).
    pub priority: u8,
}

impl Pull {
    /// Asks `consumer` for up to `batch` messages, waiting at most `expires` for them.
    pub async fn request(
        bus: &Bus,
        consumer: &PullConsumer,
        batch: usize,
        tier: Option<Tier<'_>>,
        expires: Duration,
    ) -> Result<Self, RuntimeError> {
        let inbox_subject = bus.client.new_inbox();
        let inbox = bus
            .client
            .subscribe(inbox_subject.clone())
            .await
            .map_err(|e| RuntimeError::nats("subscribe to a pull inbox", e))?;
        let request = BatchConfig {
            batch,
            expires: Some(expires),
            group: tier.map(|t| t.group.to_string()),
            priority: tier.map(|t| t.priority as usize),
            ..Default::default()
        };
        consumer
            .request_batch(request, inbox_subject.into())
            .await
            .map_err(|e| RuntimeError::nats("send a pull request", e))?;
        Ok(Pull {
            inbox,
            js: bus.js.clone(),
            remaining: batch,
            give_up_at: Instant::now() + expires + Duration::from_secs(2),
        })
    }

    /// The next message, or None once the request is complete (all delivered, or expired). A
    /// status other than
    /// expiry (a deleted consumer, a leader change, too many waiting pulls) is an error; the
    /// caller backs off and pulls again.
    pub async fn next(&mut self) -> Result<Option<Message>, RuntimeError> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            let reply = match tokio::time::timeout_at(self.give_up_at, self.inbox.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => return Ok(None),
            };
            match reply.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    self.remaining -= 1;
                    return Ok(Some(Message {
                        message: reply,
                        context: self.js.clone(),
                    }));
                }
                StatusCode::IDLE_HEARTBEAT => continue,
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND => {
                    self.remaining = 0;
                    return Ok(None);
                }
                status => {
                    self.remaining = 0;
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
