//! The dashboard's inputs from the bus. Each feed is a loop that (re)opens its watch or ordered
//! consumer from the beginning of what the bus keeps and applies every entry to the model;
//! applying an entry twice changes nothing, so a feed that broke simply starts over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::kv;
use futures::StreamExt;
use push0_protocol::{BlockProof, Capacity, DeadLetter, Plan, TeamStatus, WireMessage, decode};
use push0_runtime::{Bus, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::Model;

/// Pause before a feed that ended or failed starts over.
const REOPEN: Duration = Duration::from_secs(1);
/// How often the team list and the task queues' depths are read.
const POLL: Duration = Duration::from_secs(2);

type Shared = Arc<Mutex<Model>>;

/// Starts every feed; they run until `shutdown`.
pub(super) async fn spawn_all(
    bus: &Bus,
    model: &Shared,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let registry = Registry::watch(bus, shutdown.clone())
        .await
        .with_context(|| format!("no push0 state under prefix {:?}", bus.subjects.prefix()))?;
    model.lock().expect("model lock").set_teams(registry.all());
    let s = &bus.subjects;
    let watches: [(String, Apply); 3] = [
        (s.bucket_plans(), apply_plan),
        (s.bucket_status(), apply_status),
        (s.bucket_capacity(), apply_capacity),
    ];
    for (bucket, apply) in watches {
        let store = bus.kv(&bucket).await?;
        let name = format!("watch of {bucket}");
        spawn_feed(name, model, changed, shutdown, move |m, c| {
            watch_bucket(store.clone(), m, c, apply)
        });
    }
    let streams: [(String, String, Apply); 2] = [
        (s.stream_proofs(), s.proofs_all(), apply_proof),
        (s.stream_dlq(), s.dlq_all(), apply_dead_letter),
    ];
    for (stream, subject, apply) in streams {
        let bus = bus.clone();
        let name = format!("feed of {stream}");
        spawn_feed(name, model, changed, shutdown, move |m, c| {
            follow_stream(bus.clone(), stream.clone(), subject.clone(), m, c, apply)
        });
    }
    let (bus, model, stop) = (bus.clone(), model.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let teams = registry.all();
            let pending = queue_depths(&bus, &teams).await;
            {
                let mut m = model.lock().expect("model lock");
                for (team, n) in pending {
                    m.set_pending(&team, n);
                }
                m.set_teams(teams);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(())
}

/// What one entry does to the model: `key` is the KV key or the stream subject.
type Apply = fn(&mut Model, &str, Option<&[u8]>, Option<&str>) -> Result<()>;

fn spawn_feed<F, Fut>(
    name: String,
    model: &Shared,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
    run: F,
) where
    F: Fn(Shared, Arc<Notify>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let (model, changed, stop) = (model.clone(), changed.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ended = run(model.clone(), changed.clone()) => match ended {
                    Ok(()) => tracing::debug!(feed = %name, "ended; starting over"),
                    Err(e) => tracing::warn!(feed = %name, error = %format!("{e:#}"), "failed; starting over"),
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REOPEN) => {}
            }
        }
    });
}

/// Every key's latest value, then each change.
async fn watch_bucket(
    store: kv::Store,
    model: Shared,
    changed: Arc<Notify>,
    apply: Apply,
) -> Result<()> {
    let mut entries = store.watch_with_history(">").await?;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
        let applied = apply(
            &mut model.lock().expect("model lock"),
            &entry.key,
            value,
            None,
        );
        report(applied, &entry.key);
        changed.notify_one();
    }
    Ok(())
}

/// Every message the stream keeps under `subject`, then each new one.
async fn follow_stream(
    bus: Bus,
    stream: String,
    subject: String,
    model: Shared,
    changed: Arc<Notify>,
    apply: Apply,
) -> Result<()> {
    let consumer = bus
        .js
        .get_stream(&stream)
        .await?
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let applied = apply(
            &mut model.lock().expect("model lock"),
            &message.subject,
            Some(&message.payload),
            crate::watch::schema_of(&message),
        );
        report(applied, &message.subject);
        changed.notify_one();
    }
    Ok(())
}

/// An entry the dashboard cannot read is skipped: it shows what it can.
fn report(applied: Result<()>, key: &str) {
    if let Err(e) = applied {
        tracing::debug!(key, error = %format!("{e:#}"), "entry skipped");
    }
}

fn value<M: WireMessage>(bytes: &[u8], schema: Option<&str>) -> Result<M> {
    Ok(decode::<M>(Some(schema.unwrap_or(M::SCHEMA)), bytes)?)
}

fn apply_plan(m: &mut Model, _: &str, bytes: Option<&[u8]>, _: Option<&str>) -> Result<()> {
    if let Some(bytes) = bytes {
        m.plan(&value::<Plan>(bytes, None)?);
    }
    Ok(())
}

fn apply_status(m: &mut Model, _: &str, bytes: Option<&[u8]>, _: Option<&str>) -> Result<()> {
    if let Some(bytes) = bytes {
        m.set_status(value::<TeamStatus>(bytes, None)?);
    }
    Ok(())
}

fn apply_capacity(m: &mut Model, key: &str, bytes: Option<&[u8]>, _: Option<&str>) -> Result<()> {
    let capacity = bytes.map(|b| value::<Capacity>(b, None)).transpose()?;
    m.set_capacity(key, capacity);
    Ok(())
}

fn apply_proof(m: &mut Model, _: &str, bytes: Option<&[u8]>, schema: Option<&str>) -> Result<()> {
    if let Some(bytes) = bytes {
        m.proof(&value::<BlockProof>(bytes, schema)?);
    }
    Ok(())
}

fn apply_dead_letter(
    m: &mut Model,
    _: &str,
    bytes: Option<&[u8]>,
    schema: Option<&str>,
) -> Result<()> {
    if let Some(bytes) = bytes {
        m.dead_letter(&value::<DeadLetter>(bytes, schema)?);
    }
    Ok(())
}

/// A model of what the bus holds now, read once: every plan and every kept proof.
pub async fn read_now(bus: &Bus, teams: Vec<push0_protocol::TeamConfig>) -> Result<Model> {
    let mut model = Model::default();
    model.set_teams(teams);
    let plans = bus.kv(&bus.subjects.bucket_plans()).await?;
    let mut entries = plans.watch_with_history(">").await?;
    // An empty bucket sends nothing: a quiet moment ends the read.
    while let Ok(Some(entry)) = tokio::time::timeout(QUIET, entries.next()).await {
        let entry = entry?;
        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
        report(apply_plan(&mut model, &entry.key, value, None), &entry.key);
        if entry.seen_current && entry.delta == 0 {
            break;
        }
    }
    let stream = bus.js.get_stream(bus.subjects.stream_proofs()).await?;
    let stored = bus
        .stored_on(&bus.subjects.stream_proofs(), &bus.subjects.proofs_all())
        .await?;
    if stored > 0 {
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: bus.subjects.proofs_all(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut read = 0;
        while let Ok(Some(message)) = tokio::time::timeout(QUIET, messages.next()).await {
            let message = message?;
            read += 1;
            let applied = apply_proof(
                &mut model,
                &message.subject,
                Some(&message.payload),
                crate::watch::schema_of(&message),
            );
            report(applied, &message.subject);
            if read >= stored {
                break;
            }
        }
    }
    Ok(model)
}

/// How long a one-time read waits for the next entry before it takes the read as complete.
const QUIET: Duration = Duration::from_millis(500);

/// Tasks on the bus not yet delivered, per team, over its classes' consumers.
async fn queue_depths(bus: &Bus, teams: &[push0_protocol::TeamConfig]) -> Vec<(String, u64)> {
    let Ok(tasks) = bus.js.get_stream(bus.subjects.stream_tasks()).await else {
        return Vec::new();
    };
    let mut depths = Vec::new();
    for t in teams {
        let mut pending = 0;
        for class in t.classes() {
            let durable = bus.subjects.task_consumer(&t.name, &class);
            if let Ok(info) = tasks.consumer_info(&durable).await {
                pending += info.num_pending;
            }
        }
        depths.push((t.name.clone(), pending));
    }
    depths
}
