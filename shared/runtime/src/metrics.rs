//! Prometheus metrics and the `/metrics` endpoint. Labels are bounded: service, wire type,
//! outcome, DLQ reason and team (teams are configured, not taken from the wire).

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["team"])
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let fast = vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
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
        lease_acquired: counter(
            &r,
            "push0_lease_acquired_total",
            "times this process became the active instance of a singleton role",
            &["role"],
        ),
        registry: r,
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((mut socket, _)) = accepted else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "see /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}
