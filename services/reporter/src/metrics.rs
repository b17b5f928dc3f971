//! The reporter's metrics, in the process's registry beside the runtime's: requests by endpoint
//! and answer, the backlog, and per team the figures Ethproofs ranks real-time clusters by.

use std::sync::OnceLock;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// Blocks proved within this long of their submission count as real time.
pub const REALTIME_MS: u64 = 10_000;

pub struct Reporting {
    /// push0_ethproofs_requests_total{endpoint, status}: requests by endpoint and answer
    /// (`error`: no answer).
    pub requests: IntCounterVec,
    /// push0_ethproofs_backlog: reports waiting for their turn.
    pub backlog: IntGauge,
    /// push0_ethproofs_blocks_total{team}: blocks of the team seen planned.
    pub blocks: IntCounterVec,
    /// push0_ethproofs_proved_total{team}: block proofs reported.
    pub proved: IntCounterVec,
    /// push0_ethproofs_proved_realtime_total{team}: of those, proved within 10 s (0 from the
    /// team's first proof).
    pub realtime: IntCounterVec,
    /// push0_ethproofs_skipped_total{team}: queued or proving states not sent because the
    /// block's proof was already there.
    pub skipped: IntCounterVec,
    /// push0_ethproofs_stuck_blocks{team}: blocks reported queued or proving over 20 min ago
    /// (0 from the team's first report).
    pub stuck: IntGaugeVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    push0_runtime::metrics()
        .registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// The reporter's metrics, registered on first use.
pub fn reporting() -> &'static Reporting {
    static METRICS: OnceLock<Reporting> = OnceLock::new();
    METRICS.get_or_init(|| Reporting {
        requests: counter(
            "push0_ethproofs_requests_total",
            "requests to the Ethproofs API by endpoint and answer",
            &["endpoint", "status"],
        ),
        backlog: register(
            IntGauge::new(
                "push0_ethproofs_backlog",
                "reports waiting for their turn to be sent",
            )
            .expect("valid metric"),
        ),
        blocks: counter(
            "push0_ethproofs_blocks_total",
            "blocks of the team seen planned",
            &["team"],
        ),
        proved: counter(
            "push0_ethproofs_proved_total",
            "block proofs reported",
            &["team"],
        ),
        realtime: counter(
            "push0_ethproofs_proved_realtime_total",
            "block proofs reported that were proved within 10 s of submission",
            &["team"],
        ),
        skipped: counter(
            "push0_ethproofs_skipped_total",
            "queued or proving states not sent because the block's proof came first",
            &["team"],
        ),
        stuck: register(
            IntGaugeVec::new(
                Opts::new(
                    "push0_ethproofs_stuck_blocks",
                    "blocks reported queued or proving more than 20 minutes ago",
                ),
                &["team"],
            )
            .expect("valid metric"),
        ),
    })
}
