//! The floor: one message at a time through a chain of k JetStream work-queue hops, each a
//! durable pull consumer that republishes to the next subject (awaiting the publish ack) and
//! acks — what push0's path from submission to proof costs with no work at any hop.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
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
        let js = js.clone();
        let next = (hop < hops).then(|| format!("{prefix}.hop.{}", hop + 1));
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        finals.push(done_rx);
        workers.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(64)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| anyhow::anyhow!(e))?;
                if let Some(next) = &next {
                    js.publish(next.clone(), m.payload.clone()).await?.await?;
                } else {
                    let _ = done_tx.send(Instant::now());
                }
                m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
            anyhow::Ok(())
        }));
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
