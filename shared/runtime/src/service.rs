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
    bus.ensure_topology().await?;
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
