//! What every service `main` does before its own work: telemetry, the metrics endpoint, the
//! connection and the topology. Kept here so the four binaries stay a few lines each.

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, RuntimeError};
use crate::config::CommonArgs;
use crate::metrics::serve_metrics;
use crate::telemetry::{self, TelemetryGuard};

pub struct Started {
    pub bus: Bus,
    pub shutdown: CancellationToken,
    pub telemetry: TelemetryGuard,
}

/// The async runtime a service binary runs on: one thread unless `--worker-threads` asks for
/// more.
pub fn runtime(common: &CommonArgs) -> tokio::runtime::Runtime {
    let threads = usize::from(common.worker_threads);
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().unwrap_or_else(|e| {
        eprintln!("cannot start the async runtime: {e}");
        std::process::exit(1)
    })
}

/// How long a service keeps retrying the topology at start before it gives up.
const TOPOLOGY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn start(service: &'static str, common: &CommonArgs) -> Result<Started, RuntimeError> {
    let telemetry = telemetry::init(service, common.log_format);
    let shutdown = crate::shutdown::shutdown_on_signal();
    let addr = serve_metrics(common.metrics_addr, shutdown.clone())
        .await
        .map_err(|e| {
            RuntimeError::Config(format!("metrics address {}: {e}", common.metrics_addr))
        })?;
    let mut bus = Bus::connect(&common.nats_url, &common.prefix, service).await?;
    bus.replicas = usize::from(common.replicas);
    // A cluster that is still electing leaders (or a node that is down) times requests out;
    // keep trying for a while rather than exit at start.
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(200);
    while let Err(e) = bus.ensure_topology().await {
        if started.elapsed() > TOPOLOGY_PATIENCE || shutdown.is_cancelled() {
            return Err(e);
        }
        tracing::warn!(error = %e, "declaring streams and buckets failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
    tracing::info!(service, nats = %common.nats_url, prefix = %common.prefix, replicas = common.replicas, metrics = %addr, "started");
    Ok(Started {
        bus,
        shutdown,
        telemetry,
    })
}

/// Exit code for a service that stopped on an error: 64 for bad configuration (as in
/// sysexits), 1 otherwise.
pub fn exit_code(error: &RuntimeError) -> i32 {
    match error {
        RuntimeError::Config(_) => 64,
        _ => 1,
    }
}
