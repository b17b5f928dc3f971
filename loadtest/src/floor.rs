//! The floor: one message at a time through a chain of k JetStream work-queue hops, each a
//! durable pull consumer that republishes to the next subject (awaiting the publish ack) and
//! acks — what push0's path from submission to proof costs with no work at any hop. Each hop
//! pulls as push0's services do: requests of up to 64 messages, a 2 s expiry, the next one sent
//! when one ends.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::StatusCode;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use backon::Retryable;
use futures::StreamExt;
use push0_runtime::backoff::doubling;

/// What the floor measured.
pub struct Floor {
    /// Latencies (µs) of the untapped series, one per message.
    pub whole: Vec<u64>,
    /// The tapped series split where a core subscriber saw each publish (µs per message):
    /// the first publish until it is seen, each hop from one publish seen to the next, and the
    /// last publish seen until the last hop received it; `hops + 2` legs.
    pub legs: Vec<Vec<u64>>,
}

/// `samples` messages through `hops` chained hops on `url` (one URL or a comma-separated
/// cluster list), streams with `replicas`; then, if `tap`, half as many again with every
/// publish seen by a core subscriber, as the per-hop split of push0's path is taken.
pub async fn latencies(
    url: &str,
    replicas: u8,
    hops: usize,
    samples: usize,
    tap: bool,
) -> Result<Floor> {
    let addrs = push0_runtime::bus::parse_urls(url)?;
    let client = async_nats::connect(addrs).await?;
    let js = jetstream::new(client.clone());
    let prefix = push0_natsd::random_prefix();
    let name = format!("FLOOR_{prefix}");
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.hop.*")],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: usize::from(replicas),
        ..Default::default()
    };
    // On a cluster under load a replicated stream's create can fail for a moment (a 3-node
    // run once got "error creating store for stream", code 10049, between the two floors);
    // the services' `topology apply` retries its creates the same way.
    (|| js.create_stream(config.clone()))
        .retry(
            doubling(Duration::from_millis(100), Duration::from_secs(2))
                .with_total_delay(Some(Duration::from_secs(30))),
        )
        .notify(|e, after| eprintln!("floor: creating {name} failed ({e}); again in {after:?}"))
        .await
        .with_context(|| format!("creating the floor's stream {name}"))?;
    let stream = js.get_stream(&name).await?;
    let mut finals = Vec::new();
    let mut workers = Vec::new();
    for hop in 0..=hops {
        let consumer: PullConsumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("hop{hop}")),
                filter_subject: format!("{prefix}.hop.{hop}"),
                num_replicas: usize::from(replicas),
                ..Default::default()
            })
            .await?;
        let next = (hop < hops).then(|| format!("{prefix}.hop.{}", hop + 1));
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        finals.push(done_rx);
        workers.push(tokio::spawn(run_hop(
            client.clone(),
            js.clone(),
            consumer,
            next,
            done_tx,
        )));
    }
    let mut done = finals.pop().context("final hop")?;
    let warmup = 20;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + warmup {
        let (start, end) = one(&js, &prefix, &mut done).await?;
        if i >= warmup {
            out.push(end.duration_since(start).as_micros() as u64);
        }
    }
    let legs = match tap {
        true => tapped(&client, &js, &prefix, hops, &mut done, samples / 2).await,
        false => Ok(Vec::new()),
    };
    for w in workers {
        w.abort();
    }
    js.delete_stream(&name).await?;
    Ok(Floor {
        whole: out,
        legs: legs?,
    })
}

/// Sends one message through the chain: when it was published and when the last hop had it.
async fn one(
    js: &jetstream::Context,
    prefix: &str,
    done: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
) -> Result<(Instant, Instant)> {
    let start = Instant::now();
    js.publish(
        format!("{prefix}.hop.0"),
        bytes::Bytes::from(vec![0u8; 128]),
    )
    .await?
    .await?;
    let end = tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await?
        .context("floor chain stopped")?;
    Ok((start, end))
}

/// The per-hop split of `samples` messages: a core subscription on every hop's subject stamps
/// each publish as the server routes it, on the same clock as the publish and the last hop.
async fn tapped(
    client: &async_nats::Client,
    js: &jetstream::Context,
    prefix: &str,
    hops: usize,
    done: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
    samples: usize,
) -> Result<Vec<Vec<u64>>> {
    let mut tap = client.subscribe(format!("{prefix}.hop.*")).await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(m) = tap.next().await {
            let at = Instant::now();
            let hop = m.subject.rsplit('.').next().and_then(|h| h.parse().ok());
            if let Some(hop) = hop
                && seen_tx.send((hop, at)).is_err()
            {
                return;
            }
        }
    });
    let legs = split(js, prefix, hops, done, &mut seen, samples).await;
    reader.abort();
    legs
}

/// The legs of `samples` messages sent one at a time, from the stamps on `seen`.
async fn split(
    js: &jetstream::Context,
    prefix: &str,
    hops: usize,
    done: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    samples: usize,
) -> Result<Vec<Vec<u64>>> {
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u64;
    let mut legs = vec![Vec::with_capacity(samples); hops + 2];
    for _ in 0..samples {
        let (start, end) = one(js, prefix, done).await?;
        let mut at: Vec<Option<Instant>> = vec![None; hops + 1];
        while at.iter().any(Option::is_none) {
            let (hop, when) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await?
                .context("floor tap stopped")?;
            if let Some(slot) = at.get_mut(hop) {
                *slot = Some(when);
            }
        }
        let at: Vec<Instant> = at.into_iter().flatten().collect();
        legs[0].push(us(start, at[0]));
        for hop in 1..=hops {
            legs[hop].push(us(at[hop - 1], at[hop]));
        }
        legs[hops + 1].push(us(at[hops], end));
    }
    Ok(legs)
}

/// One hop of the chain: pulls as push0's services do (requests of up to 64 messages with a
/// 2 s expiry, read from their own inbox, one after another) and republishes each message to
/// `next`, or tells `done` when it is the last hop. (The client's `stream()` sometimes stops
/// receiving until its pull expires and more, which on the 3-node cluster held the chain for
/// seconds.)
async fn run_hop(
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: PullConsumer,
    next: Option<String>,
    done: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> Result<()> {
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await?;
        let request = BatchConfig {
            batch: 64,
            expires: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        consumer.request_batch(request, inbox.into()).await?;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut remaining = 64;
        while remaining > 0 {
            let Ok(Some(reply)) = tokio::time::timeout_at(give_up, replies.next()).await else {
                break;
            };
            match reply.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {}
                StatusCode::IDLE_HEARTBEAT => continue,
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND => break,
                _ => {
                    // A leader change or the like: pull again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
            remaining -= 1;
            let m = jetstream::Message {
                message: reply,
                context: js.clone(),
            };
            match &next {
                Some(next) => {
                    js.publish(next.clone(), m.payload.clone()).await?.await?;
                }
                None => {
                    let _ = done.send(Instant::now());
                }
            }
            m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
}
