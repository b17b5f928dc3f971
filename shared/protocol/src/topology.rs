//! The JetStream topology as data: streams, consumers and buckets. The runtime crate turns these
//! into server calls; keeping them here means one definition for services, CLI and tests.

use std::time::Duration;

use crate::subjects::Subjects;
use crate::team::TeamConfig;

/// Ack deadline of the services' own consumers. Short, so that messages a killed scheduler or
/// aggregator had taken reach its standby within seconds; the consume loop renews it while a
/// handler runs.
pub const SERVICE_ACK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Limits,
    WorkQueue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped. Must exceed the longest retry horizon.
    pub duplicate_window: Duration,
    pub max_msg_size: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter: String,
    pub ack_wait: Duration,
    /// -1 means unlimited.
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// Priority group of a `prioritized` consumer: pull requests name it and carry a priority,
    /// and the server serves the lowest priority number first (fast prover tiers before slow).
    pub priority_group: Option<String>,
}

/// The priority group every task consumer declares; gateways pull in it with their `--priority`.
pub const TIER_GROUP: &str = "tiers";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    pub name: String,
    pub history: i64,
    pub max_age: Duration,
}

/// Retention of history: long enough to inspect a day's work, short enough to bound disk.
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Msg-id de-duplication lasts as long as any client or service might retry a publish.
const DEDUP: Duration = Duration::from_secs(30 * 60);
/// Largest message on the bus (a block submission at the default 4 MiB payload limit plus its
/// envelope); the server's `max_payload` must be at least this.
pub const MAX_MESSAGE_BYTES: i32 = 8 * 1024 * 1024;

/// How long a gateway's capacity record lives without renewal; gateways renew it every third.
pub const CAPACITY_TTL: Duration = Duration::from_secs(6);

/// How long a singleton's lease lives without renewal: the failover time after a holder dies.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Topology {
    pub subjects: Subjects,
}

impl Topology {
    pub fn new(subjects: Subjects) -> Self {
        Self { subjects }
    }

    pub fn streams(&self) -> Vec<StreamSpec> {
        let s = &self.subjects;
        let stream = |name: String, subject: String, retention| StreamSpec {
            name,
            subjects: vec![subject],
            retention,
            max_age: DAY,
            duplicate_window: DEDUP,
            max_msg_size: MAX_MESSAGE_BYTES,
        };
        vec![
            stream(s.stream_blocks(), s.blocks_all(), Retention::Limits),
            stream(s.stream_accepted(), s.accepted_all(), Retention::Limits),
            // Tasks leave their stream when acked: the scheduler's poison handling and a team's
            // removal read and purge what is still queued there.
            stream(s.stream_tasks(), s.tasks_all(), Retention::WorkQueue),
            // Results and joins go to one consumer each. A work queue would delete each message
            // on its ack, and on nats-server 2.15 a stream drained to empty unlinks its message
            // block file and creates a new one: a quarter of the server's CPU in the burst
            // (loadtest/results/history/2026-12-01.md). Kept for the stream's age instead; nothing reads them twice.
            stream(s.stream_results(), s.results_all(), Retention::Limits),
            stream(s.stream_ready(), s.ready_all(), Retention::Limits),
            // Block proofs, and the fence marks that refuse a proof published on a stale view
            // of the chain (see `Subjects::publication`).
            StreamSpec {
                subjects: vec![s.proofs_all(), s.fence_marks_all()],
                ..stream(s.stream_proofs(), s.proofs_all(), Retention::Limits)
            },
            stream(s.stream_dlq(), s.dlq_all(), Retention::Limits),
            stream(
                s.stream_advisories(),
                s.max_deliveries_advisories(),
                Retention::WorkQueue,
            ),
        ]
    }

    pub fn buckets(&self) -> Vec<BucketSpec> {
        let s = &self.subjects;
        let bucket = |name: String| BucketSpec {
            name,
            history: 1,
            max_age: DAY,
        };
        vec![
            bucket(s.bucket_blocks()),
            // The registry must outlive any run: no age limit.
            BucketSpec {
                max_age: Duration::ZERO,
                ..bucket(s.bucket_teams())
            },
            bucket(s.bucket_plans()),
            bucket(s.bucket_reports()),
            bucket(s.bucket_parts()),
            BucketSpec {
                max_age: Duration::ZERO,
                ..bucket(s.bucket_cursors())
            },
            // A gateway that stops renewing its record drops out of the capacity view.
            BucketSpec {
                max_age: CAPACITY_TTL,
                ..bucket(s.bucket_capacity())
            },
            bucket(s.bucket_status()),
            bucket(s.bucket_attempts()),
            // A holder that stops renewing loses its lease to a standby.
            BucketSpec {
                max_age: LEASE_TTL,
                ..bucket(s.bucket_leases())
            },
        ]
    }

    pub fn ingest_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_blocks(),
            "ingest",
            self.subjects.blocks_all(),
        )
    }

    pub fn scheduler_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_accepted(),
            "scheduler",
            self.subjects.accepted_all(),
        )
    }

    pub fn scheduler_ready_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_ready(),
            "scheduler-ready",
            self.subjects.ready_all(),
        )
    }

    pub fn scheduler_advisory_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_advisories(),
            "scheduler-advisories",
            self.subjects.max_deliveries_advisories(),
        )
    }

    pub fn aggregator_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_results(),
            "aggregator",
            self.subjects.results_all(),
        )
    }

    /// The reporter's view of planning: every write of the plans bucket (its KV stream).
    pub fn reporter_plans_consumer(&self) -> ConsumerSpec {
        let bucket = self.subjects.bucket_plans();
        self.service_consumer(
            format!("KV_{bucket}"),
            "reporter-plans",
            format!("$KV.{bucket}.>"),
        )
    }

    /// The reporter's view of block proofs.
    pub fn reporter_proofs_consumer(&self) -> ConsumerSpec {
        self.service_consumer(
            self.subjects.stream_proofs(),
            "reporter-proofs",
            self.subjects.proofs_all(),
        )
    }

    fn service_consumer(&self, stream: String, durable: &str, filter: String) -> ConsumerSpec {
        ConsumerSpec {
            stream,
            durable: durable.to_string(),
            filter,
            ack_wait: SERVICE_ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: 10_000,
            priority_group: None,
        }
    }

    /// The consumer group of one team's task class: every gateway of the team shares it.
    pub fn task_consumer(&self, team: &TeamConfig, class: &str) -> ConsumerSpec {
        ConsumerSpec {
            stream: self.subjects.stream_tasks(),
            durable: self.subjects.task_consumer(&team.name, class),
            filter: self.subjects.tasks(&team.name, class),
            ack_wait: team.limits(class).ack_wait,
            // Unlimited on the server: the team's limit is kept by its gateways, which report
            // a task past it (durably, again on every redelivery until the scheduler files it)
            // instead of proving it. The server's own limit ends in one core advisory, lost if
            // the advisories stream has no leader at that moment, and the task then sits in the
            // work queue for good (the 500-block chaos drill lost its poison task so).
            max_deliver: -1,
            max_ack_pending: 100_000,
            priority_group: Some(TIER_GROUP.to_string()),
        }
    }
}
