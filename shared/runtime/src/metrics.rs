//! Prometheus metrics and the `/metrics` endpoint. Labels are bounded: service, wire type,
//! outcome, DLQ reason and team (teams are configured, not taken from the wire).

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use push0_protocol::{Alert, DlqReason};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Metrics {
    pub registry: Registry,
    /// push0_messages_total{service, type, outcome}
    pub messages: IntCounterVec,
    /// push0_dlq_records_total{service, reason}
    pub dlq: IntCounterVec,
    /// push0_task_queue_wait_seconds{team}: task publication to a prover slot taking it
    pub queue_wait: HistogramVec,
    /// push0_task_prove_seconds{team}: the prover's own time
    pub prove_time: HistogramVec,
    /// push0_blocks_finalized_total{team}
    pub blocks_finalized: IntCounterVec,
    /// push0_orchestration_overhead_seconds{team}: end-to-end minus critical-path prover time
    pub overhead: HistogramVec,
    /// push0_block_latency_seconds{team}: submission to publication
    pub block_latency: HistogramVec,
    /// push0_tasks_released_total{team}
    pub tasks_released: IntCounterVec,
    /// push0_tasks_held{team, class}: ready tasks the scheduler holds back for priority order
    pub tasks_held: IntGaugeVec,
    /// push0_duplicates_total{service}: deliveries recognised as already handled
    pub duplicates: IntCounterVec,
    /// push0_handler_errors_total{service, kind}: handler steps that failed, by error kind
    pub handler_errors: IntCounterVec,
    /// push0_prover_slots_busy{team}
    pub slots_busy: IntGaugeVec,
    /// push0_invalid_proofs_total{team, gateway}: sub-proofs rejected by verification
    pub invalid_proofs: IntCounterVec,
    /// push0_deadline_outcomes_total{team, outcome}: hit, late (finished after its deadline)
    /// or dropped (withdrawn after its deadline passed)
    pub deadline_outcomes: IntCounterVec,
    /// push0_alert_active{team, alert}: 1 while an alert is raised
    pub alert_active: IntGaugeVec,
    /// push0_alerts_raised_total{team, alert}
    pub alerts_raised: IntCounterVec,
    /// push0_live_prover_slots{team}: slots of gateways whose capacity record is current
    pub live_slots: IntGaugeVec,
    /// push0_tasks_withdrawn_total{team, reason}: queued or running tasks stopped by the scheduler
    pub tasks_withdrawn: IntCounterVec,
    /// push0_tasks_cancelled_total{team}: provers a gateway stopped on a cancellation
    pub tasks_cancelled: IntCounterVec,
    /// push0_lease_acquired_total{role}: times this process became the active instance
    pub lease_acquired: IntCounterVec,
    /// push0_reorgs_total{chain}: reorgs ingest recorded (blocks replaced at a known height)
    pub reorgs: IntCounterVec,
    /// push0_orphaned_blocks_total{team}: planned blocks whose work a reorg stopped
    pub orphaned_blocks: IntCounterVec,
    /// push0_fenced_proofs_total{team, outcome}: block proofs the aggregator published on
    /// what its last walk left, with no read first (`outcome` out), and those the server
    /// refused because a proof or a reorg's fence mark landed since (`refused`: read again).
    pub fenced_proofs: IntCounterVec,
    /// push0_round_trip_seconds{op, target}: one request to the server, sent to answered, as
    /// the service waits for it. `op` is get, create or update (compare-and-set) on a bucket
    /// (`target` its name without the prefix), or publish to a stream until its ack
    /// (`target` the message's schema, retries included).
    pub round_trip: HistogramVec,
    /// push0_delivery_lag_seconds{service, type}: a message's stream time to its handling
    /// starting here (the server's delivery and the consume loop's wake-up).
    pub delivery_lag: HistogramVec,
    /// push0_handle_seconds{service, type}: a handler's start to its outcome, the ack excluded.
    pub handle_time: HistogramVec,
    /// push0_build_info{version, commit}: 1, labelled with the version of the running binary
    /// and the commit it was built from (`PUSH0_COMMIT` at build time; "unknown" without)
    pub build_info: IntGaugeVec,
    /// push0_ready: 1 while the service is ready (what `/readyz` answers), read at each scrape
    pub ready: IntGauge,
    /// push0_deliveries_total{service, type, redelivered}: messages taken up, `redelivered`
    /// "true" when the server delivered the message before
    pub deliveries: IntCounterVec,
    /// push0_blocks_accepted_total{chain}: blocks ingest accepted (duplicates not counted)
    pub blocks_accepted: IntCounterVec,
    /// push0_chain_head{team, chain}: the highest block planned for the team on the chain
    pub chain_head: IntGaugeVec,
    /// push0_chain_unproven_blocks{team, chain}: planned blocks whose proof is not out yet
    pub chain_unproven: IntGaugeVec,
    /// push0_chain_oldest_unproven_age_seconds{team, chain}: how long the oldest of them has
    /// waited since its submission (0 when none waits): the head of the chain's order
    pub chain_oldest_age: GaugeVec,
    /// push0_tasks_queued{team, class}: released tasks on the bus not yet delivered, as last
    /// read by the scheduler
    pub tasks_queued: IntGaugeVec,
    /// push0_tasks_deferred{team}: leaves of blocks planned past the scheduler's held bound,
    /// waiting in their plans on the bus
    pub tasks_deferred: IntGaugeVec,
    /// push0_blocks_deferred_total{team}: blocks planned past the held bound
    pub blocks_deferred: IntCounterVec,
    /// push0_jetstream_storage_bytes{server}: file storage JetStream uses on a NATS server
    pub jetstream_storage: IntGaugeVec,
    /// push0_jetstream_storage_limit_bytes{server}: that server's JetStream storage limit
    pub jetstream_storage_limit: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    histogram_by(registry, name, help, buckets, &["team"])
}

fn histogram_by(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// The commit the binary was built from, when the build said (`PUSH0_COMMIT`, set by
/// `tests/run` and the container build).
pub const BUILD_COMMIT: &str = match option_env!("PUSH0_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let fast = vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    // Round trips on loopback take tens of microseconds to a few milliseconds.
    let micro = vec![
        0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.1, 1.0,
    ];
    let slow = vec![
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
    Metrics {
        messages: counter(
            &r,
            "push0_messages_total",
            "messages handled, by outcome",
            &["service", "type", "outcome"],
        ),
        dlq: counter(
            &r,
            "push0_dlq_records_total",
            "dead-letter records filed",
            &["service", "reason"],
        ),
        queue_wait: histogram(
            &r,
            "push0_task_queue_wait_seconds",
            "task publication to start of proving",
            fast.clone(),
        ),
        prove_time: histogram(
            &r,
            "push0_task_prove_seconds",
            "prover time per task",
            slow.clone(),
        ),
        blocks_finalized: counter(
            &r,
            "push0_blocks_finalized_total",
            "block proofs published",
            &["team"],
        ),
        overhead: histogram(
            &r,
            "push0_orchestration_overhead_seconds",
            "block latency minus critical-path prover time",
            fast,
        ),
        block_latency: histogram(
            &r,
            "push0_block_latency_seconds",
            "submission to proof publication",
            slow,
        ),
        tasks_released: counter(
            &r,
            "push0_tasks_released_total",
            "tasks released to the queues",
            &["team"],
        ),
        tasks_held: gauge(
            &r,
            "push0_tasks_held",
            "ready tasks held back by the scheduler",
            &["team", "class"],
        ),
        duplicates: counter(
            &r,
            "push0_duplicates_total",
            "deliveries recognised as already handled",
            &["service"],
        ),
        handler_errors: counter(
            &r,
            "push0_handler_errors_total",
            "handler steps that failed (the message is redelivered), by error kind",
            &["service", "kind"],
        ),
        slots_busy: gauge(
            &r,
            "push0_prover_slots_busy",
            "prover slots proving now",
            &["team"],
        ),
        invalid_proofs: counter(
            &r,
            "push0_invalid_proofs_total",
            "sub-proofs rejected by verification, by gateway",
            &["team", "gateway"],
        ),
        deadline_outcomes: counter(
            &r,
            "push0_deadline_outcomes_total",
            "blocks with a deadline, by outcome: hit, late or dropped",
            &["team", "outcome"],
        ),
        alert_active: gauge(
            &r,
            "push0_alert_active",
            "1 while the alert is raised",
            &["team", "alert"],
        ),
        alerts_raised: counter(
            &r,
            "push0_alerts_raised_total",
            "alerts raised",
            &["team", "alert"],
        ),
        live_slots: gauge(
            &r,
            "push0_live_prover_slots",
            "prover slots of live gateways",
            &["team"],
        ),
        tasks_withdrawn: counter(
            &r,
            "push0_tasks_withdrawn_total",
            "tasks withdrawn by the scheduler, by reason",
            &["team", "reason"],
        ),
        tasks_cancelled: counter(
            &r,
            "push0_tasks_cancelled_total",
            "provers stopped by a cancellation",
            &["team"],
        ),
        reorgs: counter(
            &r,
            "push0_reorgs_total",
            "reorgs recorded by ingest",
            &["chain"],
        ),
        orphaned_blocks: counter(
            &r,
            "push0_orphaned_blocks_total",
            "planned blocks withdrawn because a reorg orphaned them",
            &["team"],
        ),
        fenced_proofs: counter(
            &r,
            "push0_fenced_proofs_total",
            "block proofs published on the last walk's view with a server-checked fence, by outcome",
            &["team", "outcome"],
        ),
        lease_acquired: counter(
            &r,
            "push0_lease_acquired_total",
            "times this process became the active instance of a singleton role",
            &["role"],
        ),
        round_trip: histogram_by(
            &r,
            "push0_round_trip_seconds",
            "requests to the server, sent to answered",
            micro.clone(),
            &["op", "target"],
        ),
        delivery_lag: histogram_by(
            &r,
            "push0_delivery_lag_seconds",
            "stream time of a message to its handling starting",
            micro.clone(),
            &["service", "type"],
        ),
        handle_time: histogram_by(
            &r,
            "push0_handle_seconds",
            "handler start to outcome",
            micro,
            &["service", "type"],
        ),
        build_info: {
            let g = gauge(
                &r,
                "push0_build_info",
                "the running binary's version and commit, as labels of a constant 1",
                &["version", "commit"],
            );
            g.with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
                .set(1);
            g
        },
        ready: {
            let g = IntGauge::new("push0_ready", "1 while the service is ready to work")
                .expect("valid metric");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        },
        deliveries: counter(
            &r,
            "push0_deliveries_total",
            "messages taken up, by whether the server delivered them before",
            &["service", "type", "redelivered"],
        ),
        blocks_accepted: counter(
            &r,
            "push0_blocks_accepted_total",
            "blocks accepted by ingest",
            &["chain"],
        ),
        chain_head: gauge(
            &r,
            "push0_chain_head",
            "highest block planned for the team on the chain",
            &["team", "chain"],
        ),
        chain_unproven: gauge(
            &r,
            "push0_chain_unproven_blocks",
            "planned blocks of the chain whose proof is not published yet",
            &["team", "chain"],
        ),
        chain_oldest_age: float_gauge(
            &r,
            "push0_chain_oldest_unproven_age_seconds",
            "time since submission of the chain's oldest unproven block, 0 if none",
            &["team", "chain"],
        ),
        tasks_queued: gauge(
            &r,
            "push0_tasks_queued",
            "released tasks not yet delivered to a prover",
            &["team", "class"],
        ),
        tasks_deferred: gauge(
            &r,
            "push0_tasks_deferred",
            "leaves of deferred blocks, waiting in their plans until the held work drains",
            &["team"],
        ),
        blocks_deferred: counter(
            &r,
            "push0_blocks_deferred_total",
            "blocks planned while their team held all the tasks it may",
            &["team"],
        ),
        jetstream_storage: gauge(
            &r,
            "push0_jetstream_storage_bytes",
            "file storage JetStream uses on the server",
            &["server"],
        ),
        jetstream_storage_limit: gauge(
            &r,
            "push0_jetstream_storage_limit_bytes",
            "the server's JetStream file storage limit",
            &["server"],
        ),
        registry: {
            // CPU seconds, resident memory, open files and the like of this process
            // (`process_*`), read from /proc on each scrape.
            #[cfg(target_os = "linux")]
            r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");
            r
        },
    }
});

/// The value at quantile `q` (0..=1) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Counts `op` on `target` that took from `started` until now in [`Metrics::round_trip`].
pub fn round_trip(op: &str, target: &str, started: std::time::Instant) {
    metrics()
        .round_trip
        .with_label_values(&[op, target])
        .observe(started.elapsed().as_secs_f64());
}

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A service started: the counters it may raise exist from now on at zero, so a rate over
/// them has data and its first event counts as an increase.
pub fn service_started(service: &str) {
    let m = metrics();
    m.duplicates.with_label_values(&[service]);
    for reason in DlqReason::ALL {
        m.dlq.with_label_values(&[service, reason.as_str()]);
    }
}

/// `service` bound its consumer of `kind` messages: its delivery and outcome counts start at
/// zero.
pub fn consumer_bound(service: &str, kind: &str) {
    let m = metrics();
    for redelivered in ["true", "false"] {
        m.deliveries
            .with_label_values(&[service, kind, redelivered]);
    }
    for outcome in ["ok", "retry", "terminated", "rejected"] {
        m.messages.with_label_values(&[service, kind, outcome]);
    }
}

/// Counts a message taken up, by whether the server had delivered it before.
pub fn delivered(service: &str, kind: &str, delivery_count: i64) {
    let redelivered = if delivery_count > 1 { "true" } else { "false" };
    metrics()
        .deliveries
        .with_label_values(&[service, kind, redelivered])
        .inc();
}

/// The gauges the active scheduler keeps per team, dropped for a team that left the
/// registry (with its classes and chains), so nothing stale is exported for it.
pub fn forget_team(team: &str, classes: &[String], chains: &[String]) {
    let m = metrics();
    let _ = m.live_slots.remove_label_values(&[team]);
    let _ = m.tasks_deferred.remove_label_values(&[team]);
    for class in classes {
        let _ = m.tasks_held.remove_label_values(&[team, class]);
        let _ = m.tasks_queued.remove_label_values(&[team, class]);
    }
    for chain in chains {
        let _ = m.chain_head.remove_label_values(&[team, chain]);
        let _ = m.chain_unproven.remove_label_values(&[team, chain]);
        let _ = m.chain_oldest_age.remove_label_values(&[team, chain]);
    }
    for alert in Alert::ALL {
        let _ = m.alert_active.remove_label_values(&[team, alert.as_str()]);
    }
}

/// Every gauge only the active scheduler keeps, dropped when it stops being active: a standby
/// exports none of them, so the active instance's values are the only ones.
pub fn forget_active_gauges() {
    let m = metrics();
    m.live_slots.reset();
    m.tasks_held.reset();
    m.tasks_queued.reset();
    m.tasks_deferred.reset();
    m.alert_active.reset();
    m.chain_head.reset();
    m.chain_unproven.reset();
    m.chain_oldest_age.reset();
    m.jetstream_storage.reset();
    m.jetstream_storage_limit.reset();
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    metrics()
        .ready
        .set(i64::from(crate::health::readiness().is_ok()));
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics`, `/healthz` (200 while the process runs) and `/readyz` (200 while
/// [`crate::health::readiness`] holds, else 503 with the reason) on `addr` until `shutdown`;
/// returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "alive\n" }))
        .route(
            "/readyz",
            get(|| async {
                match crate::health::readiness() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }),
        );
    tokio::spawn(async move {
        let stopped = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn metrics_are_served_to_a_request_sent_in_pieces() {
        round_trip("get", "blocks", std::time::Instant::now());
        let shutdown = CancellationToken::new();
        let addr = serve_metrics("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .expect("bound");
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.set_nodelay(true).expect("nodelay");
        for piece in [
            "GET ",
            "/metrics",
            " HTTP/1.1\r\nHost: x\r\n",
            "Connection: close\r\n\r\n",
        ] {
            conn.write_all(piece.as_bytes()).await.expect("write");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("read");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains("push0_round_trip_seconds_count{op=\"get\",target=\"blocks\"}"),
            "{text}"
        );
        let version = format!(
            "push0_build_info{{commit=\"{BUILD_COMMIT}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no process_resident_memory_bytes: {text}"));
        assert!(rss > 1e6, "resident memory {rss} B");
        shutdown.cancel();
    }
}
