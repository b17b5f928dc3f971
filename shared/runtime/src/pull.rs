//! Pull requests sent and read here rather than through the client's `stream()` (whose
//! outstanding-message bookkeeping sometimes stalls until the pull expires, and went quiet on a clustered
//! consumer) or `batch()` (which cannot carry a pull priority). A request asks for up to
//! `batch` messages, optionally in a priority group; its reply inbox is read directly, and a
//! request whose answer is lost counts as expired shortly after its `expires`. A prover slot,
//! which pulls one message at a time, keeps one inbox for all its requests ([`PullInbox`]).

use std::future::Future;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio::time::Instant;

use crate::bus::{BoxError, Bus, RuntimeError};

/// How long past its `expires` a request's answer is waited for before it counts as lost.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

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
        consumer
            .request_batch(config(batch, tier, expires), inbox_subject.into())
            .await
            .map_err(|e| RuntimeError::nats("send a pull request", e))?;
        Ok(Pull {
            inbox,
            js: bus.js.clone(),
            remaining: batch,
            give_up_at: Instant::now() + expires + ANSWER_GRACE,
        })
    }

    /// The next message, or None once the request is complete (all delivered, or expired). A
    /// status other than expiry (a deleted consumer, a leader change, too many waiting pulls)
    /// is an error; the caller backs off and pulls again.
    pub async fn next(&mut self) -> Result<Option<Message>, RuntimeError> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            let reply = match tokio::time::timeout_at(self.give_up_at, self.inbox.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => return Ok(None),
            };
            match answer(reply, &self.js) {
                Answer::Message(message) => {
                    self.remaining -= 1;
                    return Ok(Some(message));
                }
                Answer::Heartbeat => continue,
                Answer::Expired => {
                    self.remaining = 0;
                    return Ok(None);
                }
                Answer::Failed(e) => {
                    self.remaining = 0;
                    return Err(e);
                }
            }
        }
    }
}

/// What a reply to a pull request says. Read at once, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Message(Message),
    Heartbeat,
    /// The request ended without (more) messages.
    Expired,
    Failed(RuntimeError),
}

fn answer(reply: async_nats::Message, js: &jetstream::Context) -> Answer {
    match reply.status.unwrap_or(StatusCode::OK) {
        StatusCode::OK => Answer::Message(Message {
            message: reply,
            context: js.clone(),
        }),
        StatusCode::IDLE_HEARTBEAT => Answer::Heartbeat,
        StatusCode::TIMEOUT | StatusCode::NOT_FOUND => Answer::Expired,
        status => {
            let detail = reply.description.unwrap_or_default();
            Answer::Failed(RuntimeError::nats(
                "pull request",
                format!("status {status}: {detail}"),
            ))
        }
    }
}

/// One-message pull requests made one after another, all answered on one subscription: each
/// request replies on its own subject below the inbox, so an expiry status of an earlier
/// request is told apart, and no subscription is made and dropped per request. A request can
/// also ride on the ack of the message before it (`+NXT`): one message to the server for both.
/// A message carries its stream's subject, not the request's, so a message for a request this
/// side gave up on could be taken for the next one's: after giving up, the inbox is replaced,
/// and such a late message goes to a closed subscription (and is redelivered after its ack
/// wait) instead.
pub struct PullInbox {
    /// None after a request was given up on: subscribed anew before the next one.
    inbox: Option<async_nats::Subscriber>,
    prefix: String,
    client: async_nats::Client,
    js: jetstream::Context,
    sent: u64,
    open: Option<Open>,
}

/// The request a [`PullInbox`] waits on.
struct Open {
    subject: String,
    give_up_at: Instant,
}

impl PullInbox {
    /// Subscribes on the first request.
    pub fn new(bus: &Bus) -> Self {
        PullInbox {
            inbox: None,
            prefix: String::new(),
            client: bus.client.clone(),
            js: bus.js.clone(),
            sent: 0,
            open: None,
        }
    }

    /// Subscribes to a fresh inbox unless subscribed already.
    async fn subscribe(&mut self) -> Result<(), RuntimeError> {
        if self.inbox.is_some() {
            return Ok(());
        }
        let prefix = self.client.new_inbox();
        let inbox = self
            .client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| RuntimeError::nats("subscribe to a pull inbox", e))?;
        self.inbox = Some(inbox);
        self.prefix = prefix;
        Ok(())
    }

    /// Opens a request that waits at most `expires` and sends it with `send`, given the
    /// subject it is answered on; if sending fails, no request is open.
    async fn ask<F, E>(
        &mut self,
        expires: Duration,
        what: &'static str,
        send: impl FnOnce(String) -> F,
    ) -> Result<(), RuntimeError>
    where
        F: Future<Output = Result<(), E>>,
        E: Into<BoxError>,
    {
        self.subscribe().await?;
        self.sent += 1;
        let subject = format!("{}.{}", self.prefix, self.sent);
        self.open = Some(Open {
            subject: subject.clone(),
            give_up_at: Instant::now() + expires + ANSWER_GRACE,
        });
        send(subject).await.map_err(|e| {
            self.open = None;
            RuntimeError::nats(what, e)
        })
    }

    /// Asks `consumer` for one message, waiting at most `expires` for it.
    pub async fn request(
        &mut self,
        consumer: &PullConsumer,
        tier: Option<Tier<'_>>,
        expires: Duration,
    ) -> Result<(), RuntimeError> {
        let request = config(1, tier, expires);
        self.ask(expires, "send a pull request", |subject| {
            consumer.request_batch(request, subject.into())
        })
        .await
    }

    /// Acks `message` and, in the same message to the server, asks its consumer for the next
    /// one. An error means neither was sent: the message is redelivered after its ack wait.
    pub async fn ack_next(
        &mut self,
        message: &Message,
        tier: Option<Tier<'_>>,
        expires: Duration,
    ) -> Result<(), RuntimeError> {
        let Some(ack_subject) = message.reply.clone() else {
            return Err(RuntimeError::nats("ack", "not a JetStream message"));
        };
        let mut payload = b"+NXT ".to_vec();
        let request = serde_json::to_vec(&config(1, tier, expires))
            .map_err(|e| RuntimeError::nats("encode a pull request", e))?;
        payload.extend_from_slice(&request);
        let client = self.client.clone();
        self.ask(expires, "ack and pull", |subject| {
            client.publish_with_reply(ack_subject, subject, payload.into())
        })
        .await
    }

    /// The open request's message, or None once it ends without one (expired, answer lost,
    /// or no request open). An error status ends it too, as with [`Pull::next`].
    pub async fn next(&mut self) -> Result<Option<Message>, RuntimeError> {
        loop {
            let (Some(open), Some(inbox)) = (&self.open, &mut self.inbox) else {
                return Ok(None);
            };
            let reply = match tokio::time::timeout_at(open.give_up_at, inbox.next()).await {
                Ok(Some(reply)) => reply,
                // Given up on (its answer lost or late), or the subscription ended: the next
                // request goes to a fresh inbox.
                Ok(None) | Err(_) => {
                    self.open = None;
                    self.inbox = None;
                    return Ok(None);
                }
            };
            // A status arrives on its request's own subject (a message on its stream
            // subject): one for an earlier request is stale.
            if reply.status.is_some() && reply.subject.as_str() != open.subject {
                continue;
            }
            match answer(reply, &self.js) {
                Answer::Message(message) => {
                    self.open = None;
                    return Ok(Some(message));
                }
                Answer::Heartbeat => continue,
                Answer::Expired => {
                    self.open = None;
                    return Ok(None);
                }
                Answer::Failed(e) => {
                    self.open = None;
                    return Err(e);
                }
            }
        }
    }
}

/// A request for up to `batch` messages.
fn config(batch: usize, tier: Option<Tier<'_>>, expires: Duration) -> BatchConfig {
    BatchConfig {
        batch,
        expires: Some(expires),
        group: tier.map(|t| t.group.to_string()),
        priority: tier.map(|t| t.priority as usize),
        ..Default::default()
    }
}
