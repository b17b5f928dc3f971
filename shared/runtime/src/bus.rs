//! The connection to NATS and everything built on it: topology, consumers, KV records and
//! publishing with push0's headers.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use async_nats::{HeaderMap, ServerAddr};
use backon::Retryable;
use bytes::Bytes;
use push0_protocol::wire::{WireMessage, decode, encode};
use push0_protocol::{ConsumerSpec, MSG_ID_HEADER, SCHEMA_HEADER, Subjects, Topology};

use crate::backoff::{Backoff, doubling};
use crate::config::BusAccess;
use crate::{metrics, telemetry};

/// How long `ensure_consumer` keeps trying (a leader election takes 5-8 s; a restarted node
/// catching up takes longer).
const CONSUMER_PATIENCE: Duration = Duration::from_secs(30);

/// Pull requests a consumer declared here holds at once (the server's default is 512): one
/// per prover slot of a team's whole fleet, so a fleet of more than 512 slots is not refused
/// with 409s. The server cannot change it on an existing consumer; one made with less keeps
/// it (a warning says so) until it is deleted and declared again.
const MAX_WAITING_PULLS: i64 = 8192;

/// How long a KV read keeps trying through a leader election (which takes 5-8 s).
const KV_READ_PATIENCE: Duration = Duration::from_secs(15);

pub use crate::error::{BoxError, ErrorKind, RuntimeError};

/// The server's check of the last sequence stored on a subject before it stores a message...
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// ...on the subjects this filter matches, instead of the message's own subject.
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// What a fenced publish did.
#[derive(Debug)]
pub enum Fenced {
    /// Stored (or found a duplicate of its msg-id: see the ack).
    Stored(jetstream::publish::PublishAck),
    /// Not known to be stored: the fence's sequence was not the last, or the try failed.
    Refused,
}

/// A connection to the bus, the subjects of one prefix, and the JetStream context.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub topology: Topology,
    /// Replicas the topology has (3 on a cluster): what [`crate::topology`] declares and
    /// checks for.
    pub replicas: usize,
}

/// The options of a connection called `name` with `access`'s TLS and credentials.
pub async fn connect_options(
    name: &str,
    access: &BusAccess,
) -> Result<async_nats::ConnectOptions, RuntimeError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    for file in [
        &access.tls_ca,
        &access.tls_cert,
        &access.tls_key,
        &access.creds,
    ]
    .into_iter()
    .flatten()
    {
        if !file.is_file() {
            return Err(RuntimeError::Config(format!(
                "{} does not exist",
                file.display()
            )));
        }
    }
    if let Some(ca) = &access.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&access.tls_cert, &access.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(creds) = &access.creds {
        options = crate::auth::Creds::read(creds)?.apply(options).await?;
    }
    Ok(options)
}

/// Splits a comma-separated URL list into addresses (async-nats does not parse the list).
pub fn parse_urls(urls: &str) -> Result<Vec<ServerAddr>, RuntimeError> {
    let addrs: Result<Vec<ServerAddr>, _> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| RuntimeError::Config(format!("bad nats url {u:?}: {e}")))
        })
        .collect();
    let addrs = addrs?;
    if addrs.is_empty() {
        return Err(RuntimeError::Config("no nats url given".into()));
    }
    Ok(addrs)
}

impl Bus {
    /// Connects to the server(s) in `urls` as `name`, for subjects under `prefix`.
    pub async fn connect(urls: &str, prefix: &str, name: &str) -> Result<Self, RuntimeError> {
        Self::connect_with(urls, prefix, name, &BusAccess::default()).await
    }

    /// [`Bus::connect`] with TLS and credentials: a CA makes TLS required and verifies the
    /// servers' certificates against it; a client certificate is presented to servers that ask;
    /// credentials sign in as one identity.
    pub async fn connect_with(
        urls: &str,
        prefix: &str,
        name: &str,
        access: &BusAccess,
    ) -> Result<Self, RuntimeError> {
        let subjects = Subjects::new(prefix).map_err(|e| RuntimeError::Config(e.to_string()))?;
        let addrs = parse_urls(urls)?;
        let client = connect_options(name, access)
            .await?
            .connect(addrs)
            .await
            .map_err(|e| RuntimeError::Connect {
                url: urls.to_string(),
                source: e.into(),
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            topology: Topology::new(subjects.clone()),
            subjects,
            replicas: 1,
        })
    }

    /// The durable pull consumer described by `spec`, created if absent, its ack wait,
    /// delivery limit and ack-pending bound brought to the spec's if they differ (a team's
    /// settings changed since it was made). Keeps trying for `CONSUMER_PATIENCE`: a gateway
    /// restarted, or a standby made active, while a node is down must wait out the leader
    /// election rather than exit.
    pub async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<PullConsumer, RuntimeError> {
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subject: spec.filter.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: spec.max_deliver,
            max_ack_pending: spec.max_ack_pending,
            // 0: as many as the stream has (more would be refused, fewer would lose the
            // consumer's state with a node).
            num_replicas: 0,
            priority_policy: match spec.priority_group {
                Some(_) => jetstream::consumer::PriorityPolicy::Prioritized,
                None => jetstream::consumer::PriorityPolicy::None,
            },
            priority_groups: spec.priority_group.iter().cloned().collect(),
            max_waiting: MAX_WAITING_PULLS,
            ..Default::default()
        };
        let declare = || async {
            let what = || format!("declare consumer {}", spec.durable);
            let stream = self
                .js
                .get_stream(&spec.stream)
                .await
                .map_err(|e| RuntimeError::nats(format!("get stream {}", spec.stream), e))?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(&spec.durable, config.clone())
                .await
                .map_err(|e| RuntimeError::nats(what(), e))?;
            let have = &consumer.cached_info().config;
            if have.max_waiting < MAX_WAITING_PULLS {
                tracing::warn!(
                    consumer = %spec.durable,
                    max_waiting = have.max_waiting,
                    "consumer holds fewer waiting pulls than push0 declares; recreate it for fleets that large"
                );
            }
            if have.ack_wait == config.ack_wait
                && have.max_deliver == config.max_deliver
                && have.max_ack_pending == config.max_ack_pending
            {
                return Ok(consumer);
            }
            tracing::info!(
                consumer = %spec.durable,
                ack_wait = ?config.ack_wait,
                max_deliver = config.max_deliver,
                "consumer settings changed, updating it in place"
            );
            let mut update = config.clone();
            // Fixed once the consumer exists.
            update.max_waiting = have.max_waiting;
            stream
                .update_consumer(update)
                .await
                .map_err(|e| RuntimeError::nats(what(), e))
        };
        let deadline = tokio::time::Instant::now() + CONSUMER_PATIENCE;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match declare().await {
                Ok(consumer) => {
                    crate::health::working();
                    return Ok(consumer);
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(consumer = %spec.durable, error = %e, "declaring consumer failed, retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn kv(&self, bucket: &str) -> Result<kv::Store, RuntimeError> {
        let what = format!("open bucket {bucket} (is the topology applied? push0 topology apply)");
        through_election(&what, || self.js.get_key_value(bucket)).await
    }

    /// Publishes `message` with its schema, an optional msg-id and the current trace context,
    /// and waits for the stream's ack. Retries with the same msg-id, so a retry after a lost ack
    /// is de-duplicated by the server.
    pub async fn publish<M: WireMessage>(
        &self,
        subject: String,
        message: &M,
        msg_id: Option<&str>,
    ) -> Result<jetstream::publish::PublishAck, RuntimeError> {
        let (headers, payload) = envelope(message, msg_id);
        self.publish_raw(subject, headers, payload).await
    }

    /// [`Bus::publish`] in two steps: returns once `message` is sent, so what this connection
    /// sends next reaches the server after it, with the wait for the stream's ack to await
    /// later. Retries as `publish` does if the first try is not acked; a retried message may
    /// then land behind ones sent after it.
    pub async fn publish_sent<M: WireMessage>(
        &self,
        subject: String,
        message: &M,
        msg_id: Option<&str>,
    ) -> impl Future<Output = Result<jetstream::publish::PublishAck, RuntimeError>> + '_ {
        let (headers, payload) = envelope(message, msg_id);
        let started = Instant::now();
        let first = self
            .js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await;
        async move {
            let failed = match first {
                Ok(ack) => match ack.await {
                    Ok(ack) => {
                        metrics::round_trip("publish", M::SCHEMA, started);
                        return Ok(ack);
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            tracing::warn!(subject = %subject, error = %failed, "publish failed, retrying");
            self.publish_raw(subject, headers, payload).await
        }
    }

    /// Publishes `message` only if the last message stored on the subjects `filter` matches
    /// is still at stream sequence `last`: the server checks it, so a publisher that decided
    /// on what it knew at `last` is refused once anything landed there since. One try: any
    /// failure (the check, a lost ack) returns [`Fenced::Refused`], and the caller decides
    /// again from what it reads (a message stored after all is de-duplicated by its msg-id).
    pub async fn publish_fenced<M: WireMessage>(
        &self,
        subject: String,
        message: &M,
        msg_id: &str,
        filter: &str,
        last: u64,
    ) -> Fenced {
        let (mut headers, payload) = envelope(message, Some(msg_id));
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, filter);
        let started = Instant::now();
        let sent = async {
            self.js
                .publish_with_headers(subject.clone(), headers, payload)
                .await?
                .await
        };
        match sent.await {
            Ok(ack) => {
                metrics::round_trip("publish", M::SCHEMA, started);
                Fenced::Stored(ack)
            }
            Err(e) => {
                tracing::debug!(subject = %subject, filter, last, error = %e, "fenced publish refused");
                Fenced::Refused
            }
        }
    }

    /// How many messages `stream` holds on the subjects `filter` matches (a stream may hold
    /// other subjects too: the proofs stream holds fence marks beside the proofs).
    pub async fn stored_on(&self, stream: &str, filter: &str) -> Result<u64, RuntimeError> {
        use futures::TryStreamExt;
        let what = || format!("count {filter} in {stream}");
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| RuntimeError::nats(what(), e))?;
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| RuntimeError::nats(what(), e))?;
        let mut total = 0;
        while let Some((_, count)) = subjects
            .try_next()
            .await
            .map_err(|e| RuntimeError::nats(what(), e))?
        {
            total += count as u64;
        }
        Ok(total)
    }

    /// Publishes on core NATS (no stream, no ack): for signals whose loss only costs time,
    /// such as cancellations.
    pub async fn notify<M: WireMessage>(
        &self,
        subject: String,
        message: &M,
    ) -> Result<(), RuntimeError> {
        let mut headers = HeaderMap::new();
        headers.insert(SCHEMA_HEADER, M::SCHEMA);
        self.client
            .publish_with_headers(subject.clone(), headers, Bytes::from(encode(message)))
            .await
            .map_err(|e| RuntimeError::nats(format!("publish to {subject}"), e))
    }

    /// Hands every well-formed `M` published on `subject` (core NATS) to `on_message` until
    /// `shutdown`, from a task of its own. Core notifications are hints over durable state, so
    /// a malformed one is logged and skipped.
    pub async fn follow<M, F>(
        &self,
        subject: String,
        shutdown: tokio_util::sync::CancellationToken,
        mut on_message: F,
    ) -> Result<(), RuntimeError>
    where
        M: WireMessage,
        F: FnMut(M) + Send + 'static,
    {
        use futures::StreamExt;
        let mut sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| RuntimeError::nats(format!("subscribe to {subject}"), e))?;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = sub.next() => m,
                };
                let Some(message) = message else { return };
                let schema = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(SCHEMA_HEADER))
                    .map(|v| v.as_str().to_string());
                match decode::<M>(schema.as_deref(), &message.payload) {
                    Ok(m) => on_message(m),
                    Err(e) => {
                        tracing::warn!(%subject, error = %e, "ignoring a malformed notification")
                    }
                }
            }
        });
        Ok(())
    }

    /// Hands every entry of a KV watch to `on_entry` until `shutdown`, from a task of its own.
    /// A watch that ends (its server went away) is opened again from the revision after the
    /// last one seen, so nothing is missed across a node loss.
    pub fn follow_kv<F>(
        kv: kv::Store,
        first: kv::Watch,
        what: &'static str,
        shutdown: tokio_util::sync::CancellationToken,
        mut on_entry: F,
    ) where
        F: FnMut(kv::Entry) + Send + 'static,
    {
        use futures::StreamExt;
        tokio::spawn(async move {
            let mut watch = first;
            let mut last_seen = 0;
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = watch.next() => e,
                };
                if let Some(Ok(entry)) = entry {
                    last_seen = entry.revision;
                    on_entry(entry);
                    continue;
                }
                tracing::warn!(last_seen, "{what} watch ended; watching again");
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    // Replayed entries are harmless: followers keep the newest revision.
                    let again = kv.watch_all_from_revision(last_seen + 1).await;
                    match again {
                        Ok(w) => {
                            watch = w;
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "{what} watch not reopened yet"),
                    }
                }
            }
        });
    }

    /// Publishes prepared bytes and headers, retrying transient failures for up to ~15 s (a
    /// cluster leader election takes 5-8 s).
    pub async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, RuntimeError> {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(15);
        loop {
            let attempt = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?
                    .await
            };
            match attempt.await {
                Ok(ack) => {
                    metrics::round_trip("publish", &schema_of(&headers), started);
                    return Ok(ack);
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(subject = %subject, error = %e, "publish failed, retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Err(e) => return Err(RuntimeError::nats(format!("publish to {subject}"), e)),
            }
        }
    }
}

/// Runs a read (a KV get, opening a bucket or the object store) again while it fails, with a
/// jittered backoff for up to `KV_READ_PATIENCE`: while a stream's leader is being elected
/// (5-8 s after a node loss) reads go unanswered ("no responders", timeouts).
pub(crate) async fn through_election<T, E, F, Fut>(what: &str, read: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    read.retry(
        doubling(Duration::from_millis(20), Duration::from_secs(1))
            .with_total_delay(Some(KV_READ_PATIENCE)),
    )
    .notify(|e, after| tracing::warn!(what, error = %e, ?after, "read failed, retrying"))
    .await
    .map_err(|e| RuntimeError::nats(what, e))
}

/// Reads a record and its revision; deleted or purged keys read as absent.
pub async fn kv_get<M: WireMessage>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(M, u64)>, RuntimeError> {
    // Reads go to the stream's leader on a replicated bucket (direct gets are off there), so
    // a read sees every write acknowledged before it. While a leader is being elected they
    // fail ("no responders", timeouts) for 5-8 s: tried again within `KV_READ_PATIENCE`
    // rather than failing the message being handled.
    let started = Instant::now();
    let entry = through_election(&format!("read {key}"), || store.entry(key.to_string())).await?;
    metrics::round_trip("get", bucket_of(store), started);
    let Some(entry) = entry else { return Ok(None) };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let value = decode::<M>(Some(M::SCHEMA), &entry.value).map_err(|e| RuntimeError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    })?;
    Ok(Some((value, entry.revision)))
}

/// Creates a record if the key is absent, returning its revision. Returns None, writing
/// nothing, if it exists: the first writer wins.
pub async fn kv_create<M: WireMessage>(
    store: &kv::Store,
    key: &str,
    value: &M,
) -> Result<Option<u64>, RuntimeError> {
    let started = Instant::now();
    let created = store.create(key, Bytes::from(encode(value))).await;
    metrics::round_trip("create", bucket_of(store), started);
    match created {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(RuntimeError::nats(format!("create {key}"), e)),
    }
}

/// Replaces a record at `revision` (compare-and-set), returning the new revision. Returns
/// None, writing nothing, if the record changed since that revision.
pub async fn kv_update_at<M: WireMessage>(
    store: &kv::Store,
    key: &str,
    value: &M,
    revision: u64,
) -> Result<Option<u64>, RuntimeError> {
    let started = Instant::now();
    let updated = store
        .update(key, Bytes::from(encode(value)), revision)
        .await;
    metrics::round_trip("update", bucket_of(store), started);
    match updated {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(RuntimeError::nats(format!("update {key}"), e)),
    }
}

/// Read-modify-write with compare-and-set on the revision, retried on conflict. `change`
/// returns the new value, or None to leave the record as it is. Returns the record as it now
/// is (written or left).
pub async fn kv_update<M, F>(
    store: &kv::Store,
    key: &str,
    change: F,
) -> Result<Option<M>, RuntimeError>
where
    M: WireMessage,
    F: FnMut(Option<&M>) -> Option<M>,
{
    Ok(read_modify_write(store, key, change).await?.0)
}

/// As [`kv_update`], but returns the new record only if this call wrote it: None when
/// `change` left the record as it was.
pub async fn kv_write<M, F>(
    store: &kv::Store,
    key: &str,
    change: F,
) -> Result<Option<M>, RuntimeError>
where
    M: WireMessage,
    F: FnMut(Option<&M>) -> Option<M>,
{
    let (record, wrote) = read_modify_write(store, key, change).await?;
    Ok(record.filter(|_| wrote))
}

async fn read_modify_write<M, F>(
    store: &kv::Store,
    key: &str,
    mut change: F,
) -> Result<(Option<M>, bool), RuntimeError>
where
    M: WireMessage,
    F: FnMut(Option<&M>) -> Option<M>,
{
    for _ in 0..64 {
        let current = kv_get::<M>(store, key).await?;
        let Some(next) = change(current.as_ref().map(|(v, _)| v)) else {
            return Ok((current.map(|(v, _)| v), false));
        };
        let written = match &current {
            Some((_, revision)) => kv_update_at(store, key, &next, *revision).await?,
            None => kv_create(store, key, &next).await?,
        };
        if written.is_some() {
            return Ok((Some(next), true));
        }
    }
    Err(RuntimeError::contended(key))
}

/// A bucket's name without the deployment's prefix (`<prefix>_blocks` → `blocks`), the label
/// its round trips are counted under.
fn bucket_of(store: &kv::Store) -> &str {
    store
        .name
        .rsplit_once('_')
        .map_or(store.name.as_str(), |(_, bucket)| bucket)
}

/// The schema a publish's headers name, the label its round trip is counted under.
fn schema_of(headers: &HeaderMap) -> String {
    headers
        .get(SCHEMA_HEADER)
        .map_or_else(|| "raw".to_string(), |v| v.as_str().to_string())
}

/// The headers and body of `message` on the wire: its schema, an optional msg-id and the
/// current trace context.
fn envelope<M: WireMessage>(message: &M, msg_id: Option<&str>) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(SCHEMA_HEADER, M::SCHEMA);
    if let Some(id) = msg_id {
        headers.insert(MSG_ID_HEADER, id);
    }
    telemetry::inject_current(&mut headers);
    (headers, Bytes::from(encode(message)))
}
