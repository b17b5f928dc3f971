//! Who owns the JetStream topology. [`apply`] is the one step that creates or changes streams,
//! buckets and the object store (`push0 topology apply`, and the harnesses that stand in for
//! it); services only [`check`] it, read-only, and wait for it at start ([`wait_until_ready`]).
//!
//! One owner instead of every service declaring at start: on an R3 cluster several processes
//! creating, updating and re-tuning the same streams while a node is down left requests
//! unanswered for tens of seconds, and a bucket could end with a setting (direct gets on) that
//! a reader had opened its handle against the other way. Consumers are not topology here:
//! each service declares its own, as part of its state.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use backon::{BackoffBuilder, Retryable};
use push0_protocol::topology::MAX_MESSAGE_BYTES;
use push0_protocol::{Retention, Subjects, Topology};
use tokio_util::sync::CancellationToken;

use crate::backoff::doubling;
use crate::bus::{Bus, RuntimeError};

/// How long one topology request waits for its reply. Requests are answered in milliseconds
/// or not at all (a proposal lost in a leader change): a short timeout and another try get
/// past a lost reply sooner than the client's 5 s default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Age of payload objects: as long as the streams keep their messages.
const OBJECT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What a stream holds, for messages people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Bucket,
    ObjectStore,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Stream => "stream",
            Kind::Bucket => "bucket",
            Kind::ObjectStore => "object store",
        })
    }
}

/// One stream of the topology with the configuration push0 declares for it.
#[derive(Debug, Clone)]
pub struct Declared {
    pub kind: Kind,
    pub config: stream::Config,
}

impl Declared {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Every stream, bucket and the object store of `topology` at `replicas`, each in its final
/// configuration.
///
/// Buckets and the object store are streams of a fixed shape; declaring them as streams (not
/// through the client's KV API, which always allows direct gets) sets every field in the one
/// create. A replicated bucket or object store does not allow direct gets: any replica answers
/// those, including one that has not applied a write the leader already acknowledged, and the
/// aggregator reads back parts it wrote moments before (a stale "absent" there once left a
/// join unnoticed and stalled the pipeline on a 3-node cluster). Reads go to the leader then.
pub fn declared(topology: &Topology, replicas: usize) -> Vec<Declared> {
    let direct = replicas == 1;
    let mut all = Vec::new();
    for spec in topology.streams() {
        all.push(Declared {
            kind: Kind::Stream,
            config: stream::Config {
                name: spec.name.clone(),
                subjects: spec.subjects.clone(),
                retention: match spec.retention {
                    Retention::Limits => stream::RetentionPolicy::Limits,
                    Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
                },
                max_age: spec.max_age,
                duplicate_window: spec.duplicate_window,
                max_message_size: spec.max_msg_size,
                // -1 is unlimited: what the server stores for 0, so it compares equal.
                max_messages_per_subject: -1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        });
    }
    for spec in topology.buckets() {
        all.push(Declared {
            kind: Kind::Bucket,
            config: stream::Config {
                name: format!("KV_{}", spec.name),
                subjects: vec![format!("$KV.{}.>", spec.name)],
                max_messages_per_subject: spec.history.max(1),
                max_age: spec.max_age,
                max_message_size: MAX_MESSAGE_BYTES,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: direct,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
        });
    }
    all.push(object_store(&topology.subjects.object_store(), replicas));
    all
}

/// The object store called `bucket`, as a stream (direct gets only unreplicated, as above).
fn object_store(bucket: &str, replicas: usize) -> Declared {
    Declared {
        kind: Kind::ObjectStore,
        config: stream::Config {
            name: format!("OBJ_{bucket}"),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            max_age: OBJECT_MAX_AGE,
            max_messages_per_subject: -1,
            max_message_size: -1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            allow_direct: replicas == 1,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
    }
}

/// The object store of each of `teams`, where the team's gateways keep their proofs above the
/// inline size: a store per team, so the server can keep one team out of another's proofs.
pub fn declared_team_stores(
    subjects: &Subjects,
    teams: &[String],
    replicas: usize,
) -> Vec<Declared> {
    teams
        .iter()
        .map(|team| object_store(&subjects.team_object_store(team), replicas))
        .collect()
}

/// Applies `$each` to every field push0 sets on a stream but `subjects` (compared as a set)
/// and `duplicate_window` (zero asks for the server's default, which it fills in).
macro_rules! managed_fields {
    ($each:ident) => {
        $each!(
            retention,
            storage,
            max_age,
            max_message_size,
            max_messages_per_subject,
            num_replicas,
            allow_direct,
            allow_rollup,
            deny_delete,
            discard
        )
    };
}

/// The fields push0 sets that differ between what it declares (`want`) and what the server
/// has (`have`), as `field: have -> want`. Fields push0 leaves to the server's defaults are not
/// compared.
pub fn differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let (mut had, mut wanted) = (have.subjects.clone(), want.subjects.clone());
    had.sort();
    wanted.sort();
    if had != wanted {
        out.push(format!(
            "subjects: {} -> {}",
            had.join(","),
            wanted.join(",")
        ));
    }
    macro_rules! compare {
        ($($field:ident),*) => {$(
            if have.$field != want.$field {
                out.push(format!(
                    "{}: {:?} -> {:?}",
                    stringify!($field),
                    have.$field,
                    want.$field
                ));
            }
        )*};
    }
    managed_fields!(compare);
    if !want.duplicate_window.is_zero() && have.duplicate_window != want.duplicate_window {
        out.push(format!(
            "duplicate_window: {:?} -> {:?}",
            have.duplicate_window, want.duplicate_window
        ));
    }
    out
}

/// `have` with every field push0 sets taken from `want`: the update that converges a stream
/// while keeping what the server filled in.
fn converged(want: &stream::Config, have: &stream::Config) -> stream::Config {
    let mut next = have.clone();
    next.subjects = want.subjects.clone();
    macro_rules! take {
        ($($field:ident),*) => {$( next.$field = want.$field.clone(); )*};
    }
    managed_fields!(take);
    if !want.duplicate_window.is_zero() {
        next.duplicate_window = want.duplicate_window;
    }
    next
}

/// What [`apply`] did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Created,
    /// Existed with other settings; these changed (`field: was -> now`).
    Updated(Vec<String>),
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Created => write!(f, "{} {}: created", self.kind, self.name),
            Action::Unchanged => write!(f, "{} {}: as declared", self.kind, self.name),
            Action::Updated(changes) => {
                write!(
                    f,
                    "{} {}: updated ({})",
                    self.kind,
                    self.name,
                    changes.join("; ")
                )
            }
        }
    }
}

/// Why the topology is not ready for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing {
        kind: Kind,
        name: String,
    },
    Mismatch {
        kind: Kind,
        name: String,
        fields: Vec<String>,
    },
    /// Replicated, but no leader right now (an election after a node loss takes 5-8 s).
    Leaderless {
        kind: Kind,
        name: String,
    },
    /// Replicas that have not caught up with their leader.
    Behind {
        kind: Kind,
        name: String,
        peers: Vec<String>,
    },
    /// The request for its state failed (timed out, no responders).
    Unreachable {
        kind: Kind,
        name: String,
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { kind, name } => write!(f, "{kind} {name} is missing"),
            Problem::Mismatch { kind, name, fields } => write!(
                f,
                "{kind} {name} differs from what push0 declares ({})",
                fields.join("; ")
            ),
            Problem::Leaderless { kind, name } => write!(f, "{kind} {name} has no leader"),
            Problem::Behind { kind, name, peers } => write!(
                f,
                "{kind} {name}: replicas on {} not current",
                peers.join(", ")
            ),
            Problem::Unreachable { kind, name, error } => {
                write!(f, "{kind} {name} cannot be inspected: {error}")
            }
        }
    }
}

/// The state of one declared stream on the server, read-only.
async fn inspect(js: &jetstream::Context, declared: &Declared) -> Result<stream::Info, Problem> {
    let (kind, name) = (declared.kind, declared.name().to_string());
    match js.get_stream(&name).await {
        Ok(stream) => Ok(stream.cached_info().clone()),
        Err(e) => match e.kind() {
            stream_error if is_not_found(&stream_error) => Err(Problem::Missing { kind, name }),
            _ => Err(Problem::Unreachable {
                kind,
                name,
                error: e.to_string(),
            }),
        },
    }
}

fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(
        kind,
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Problems of a stream that exists: settings that differ, no leader, and (with
/// `replicas_current`) replicas behind their leader.
fn health(declared: &Declared, info: &stream::Info, replicas_current: bool) -> Option<Problem> {
    let (kind, name) = (declared.kind, declared.name().to_string());
    let fields = differences(&declared.config, &info.config);
    if !fields.is_empty() {
        return Some(Problem::Mismatch { kind, name, fields });
    }
    if declared.config.num_replicas <= 1 {
        return None;
    }
    let Some(cluster) = info.cluster.as_ref().filter(|c| c.leader.is_some()) else {
        return Some(Problem::Leaderless { kind, name });
    };
    let behind: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|peer| !peer.current || peer.offline)
        .map(|peer| peer.name.clone())
        .collect();
    let missing = declared
        .config
        .num_replicas
        .saturating_sub(1 + cluster.replicas.len());
    if replicas_current && (!behind.is_empty() || missing > 0) {
        return Some(Problem::Behind {
            kind,
            name,
            peers: behind,
        });
    }
    None
}

/// What is wrong with each of `all`, inspected all at once: while a node is down, requests
/// for the streams it led go unanswered until their timeout, and one after another they would
/// add up to most of a service's patience.
async fn problems(
    js: &jetstream::Context,
    all: &[Declared],
    replicas_current: bool,
) -> Vec<Problem> {
    let inspected = futures::future::join_all(all.iter().map(|d| inspect(js, d))).await;
    all.iter()
        .zip(inspected)
        .filter_map(|(declared, state)| match state {
            Ok(info) => health(declared, &info, replicas_current),
            Err(problem) => Some(problem),
        })
        .collect()
}

/// A JetStream context for topology requests: the bus's, with a short request timeout.
fn context(bus: &Bus) -> jetstream::Context {
    let mut js = bus.js.clone();
    js.set_timeout(REQUEST_TIMEOUT);
    js
}

/// Reads the topology without changing it: every declared stream present, configured as
/// declared and, when replicated, led. Returns what is wrong (nothing when ready).
pub async fn check(bus: &Bus, replicas: usize) -> Vec<Problem> {
    problems(&context(bus), &declared(&bus.topology, replicas), false).await
}

/// The command that fixes the topology a service found wanting.
pub fn fix_command(bus: &Bus, nats_url: &str, replicas: usize) -> String {
    format!(
        "push0 topology apply --nats-url {nats_url} --prefix {} --replicas {replicas}",
        bus.subjects.prefix()
    )
}

/// Waits until [`check`] finds nothing wrong, retrying with a jittered backoff (up to 2 s
/// apart) for `patience`. Fails naming every problem still there and the command that fixes
/// them.
pub async fn wait_until_ready(
    bus: &Bus,
    nats_url: &str,
    replicas: usize,
    patience: Duration,
    shutdown: &CancellationToken,
) -> Result<(), RuntimeError> {
    let started = tokio::time::Instant::now();
    let mut delays = doubling(Duration::from_millis(100), Duration::from_secs(2)).build();
    let mut told = false;
    loop {
        let problems = check(bus, replicas).await;
        if problems.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        let stop = waited >= patience || shutdown.is_cancelled();
        if stop {
            return Err(RuntimeError::Topology {
                problems: problems.iter().map(ToString::to_string).collect(),
                fix: fix_command(bus, nats_url, replicas),
            });
        }
        if !told {
            told = true;
            tracing::warn!(
                problems = %problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                fix = %fix_command(bus, nats_url, replicas),
                patience = ?patience,
                "topology not ready, waiting for it"
            );
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay.min(patience.saturating_sub(waited))) => {}
        }
    }
}

/// Declares every stream, bucket and the object store at `replicas` with its final
/// configuration, converging any that exists with other settings, and returns once each is
/// led and, when replicated, its replicas are current. Idempotent, and safe to run from
/// several processes at once: a create that loses to another is read back and compared.
/// Gives up after `timeout`, naming what is still not ready.
pub async fn apply(
    bus: &Bus,
    replicas: usize,
    timeout: Duration,
) -> Result<Vec<Applied>, RuntimeError> {
    apply_all(bus, declared(&bus.topology, replicas), timeout).await
}

/// As [`apply`], the object stores of `teams` ([`declared_team_stores`]): run by
/// `push0 team add` and by `push0 topology apply` for the teams it is given.
pub async fn apply_team_stores(
    bus: &Bus,
    teams: &[String],
    replicas: usize,
    timeout: Duration,
) -> Result<Vec<Applied>, RuntimeError> {
    apply_all(
        bus,
        declared_team_stores(&bus.subjects, teams, replicas),
        timeout,
    )
    .await
}

/// Deletes the object store of `team` (`push0 team remove`); a store already gone is no
/// error. Returns whether there was one.
pub async fn delete_team_store(bus: &Bus, team: &str) -> Result<bool, RuntimeError> {
    let name = format!("OBJ_{}", bus.subjects.team_object_store(team));
    match context(bus).delete_stream(&name).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e.kind()) => Ok(false),
        Err(e) => Err(RuntimeError::nats(format!("delete {name}"), e)),
    }
}

/// The replicas of the applied topology, read off the shared object store: what a team's
/// store added later is created with.
pub async fn replicas_in_use(bus: &Bus) -> Result<usize, RuntimeError> {
    let name = format!("OBJ_{}", bus.subjects.object_store());
    let what = format!("read {name}");
    let js = context(bus);
    let stream = crate::bus::through_election(&what, || js.get_stream(&name)).await?;
    Ok(stream.cached_info().config.num_replicas.max(1))
}

/// Whether the object store of `team` exists, read-only; `None` when the server did not say.
pub async fn team_store_exists(bus: &Bus, team: &str) -> Option<bool> {
    let declared = object_store(&bus.subjects.team_object_store(team), bus.replicas);
    match inspect(&context(bus), &declared).await {
        Ok(_) => Some(true),
        Err(Problem::Missing { .. }) => Some(false),
        Err(_) => None,
    }
}

async fn apply_all(
    bus: &Bus,
    all: Vec<Declared>,
    timeout: Duration,
) -> Result<Vec<Applied>, RuntimeError> {
    let js = context(bus);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut applied = Vec::new();
    for declared in &all {
        applied.push(apply_one(&js, declared, deadline).await?);
    }
    // Led, and every replica current, before anyone is told the topology is there.
    let mut delays = doubling(Duration::from_millis(50), Duration::from_secs(1)).build();
    loop {
        let problems = problems(&js, &all, true).await;
        if problems.is_empty() {
            return Ok(applied);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RuntimeError::Topology {
                problems: problems.iter().map(ToString::to_string).collect(),
                fix: format!(
                    "wait for the cluster to recover, then run apply again (it gave up after {timeout:?})"
                ),
            });
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
    }
}

/// Creates one stream or brings it to its declared settings, retrying until `deadline` while
/// the server does not answer or another applier races this one.
async fn apply_one(
    js: &jetstream::Context,
    declared: &Declared,
    deadline: tokio::time::Instant,
) -> Result<Applied, RuntimeError> {
    let (kind, name) = (declared.kind, declared.name().to_string());
    let done = |action| Applied {
        kind,
        name: name.clone(),
        action,
    };
    let attempt = || async {
        match inspect(js, declared).await {
            Err(Problem::Missing { .. }) => js
                .create_stream(declared.config.clone())
                .await
                .map(|_| Action::Created)
                .map_err(|e| format!("create: {e}")),
            Err(problem) => Err(problem.to_string()),
            Ok(info) => {
                let changes = differences(&declared.config, &info.config);
                if changes.is_empty() {
                    return Ok(Action::Unchanged);
                }
                js.update_stream(converged(&declared.config, &info.config))
                    .await
                    .map(|_| Action::Updated(changes))
                    .map_err(|e| format!("update: {e}"))
            }
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let action = attempt
        .retry(
            doubling(Duration::from_millis(100), Duration::from_secs(2))
                .with_total_delay(Some(left)),
        )
        .notify(|error, after| {
            tracing::warn!(%kind, stream = %name, %error, ?after, "declaring failed, retrying")
        })
        .await
        .map_err(|error| RuntimeError::Topology {
            problems: vec![format!("{kind} {name}: {error}")],
            fix: "see the error; a setting the server cannot change needs the stream deleted first"
                .into(),
        })?;
    if let Action::Updated(changes) = &action {
        tracing::info!(%kind, stream = %name, changes = %changes.join("; "), "converged");
    }
    Ok(done(action))
}
