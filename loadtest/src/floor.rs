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
use futures::StreamExt;

/// Latencies (µs, sorted) of `samples` messages through `hops` chained hops on `url` (one URL
/// or a comma-separated cluster list), streams with `replicas`.
pub async fn latencies(url: &str, replicas: u8, hops: usize, samples: usize) -> Result<Vec<u64>> {
    let addrs = push0_runtime::bus::parse_urls(url)?;
    let client = async_nats::connect(addrs).await?;
    let js = jetstream::new(client.clone());
    let prefix = push0_natsd::random_prefix();
    let name = format!("FLOOR_{prefix}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.hop.*")],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: usize::from(replicas),
        ..Default::default()
    })
    .await?;
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
        if i >= warmup {
            out.push(end.duration_since(start).as_micros() as u64);
        }
    }
    for w in workers {
        w.abort();
    }
    js.delete_stream(&name).await?;
    out.sort_unstable();
    Ok(out)
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
