//! The life of every service binary around its own work: the async runtime, telemetry, the
//! metrics endpoint, the connection, the wait for the topology, and the exit on an error. Kept
//! here so the four `main.rs` files hold only their flags and configuration.

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, RuntimeError};
use crate::config::CommonArgs;
use crate::metrics::serve_metrics;
use crate::telemetry::{self, TelemetryGuard};
use crate::topology;

struct Started {
    bus: Bus,
    shutdown: CancellationToken,
    telemetry: TelemetryGuard,
}

/// The async runtime a service binary runs on: one thread unless `--worker-threads` asks for
/// more.
fn runtime(common: &CommonArgs) -> tokio::runtime::Runtime {
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

async fn start(service: &'static str, common: &CommonArgs) -> Result<Started, RuntimeError> {
    let telemetry =
        telemetry::init(service, common.log_format, common.traces).map_err(RuntimeError::Config)?;
    let shutdown = crate::shutdown::shutdown_on_signal();
    crate::metrics::service_started(service);
    let addr = serve_metrics(common.metrics_addr, shutdown.clone())
        .await
        .map_err(|e| {
            RuntimeError::Config(format!("metrics address {}: {e}", common.metrics_addr))
        })?;
    let mut bus =
        Bus::connect_with(&common.nats_url, &common.prefix, service, &common.access).await?;
    bus.replicas = usize::from(common.replicas);
    // Services never declare the topology (its owner is `push0 topology apply`): they wait
    // for it, read-only, and exit naming what is wrong if it does not come.
    topology::wait_until_ready(
        &bus,
        &common.nats_url,
        bus.replicas,
        common.topology_wait,
        &shutdown,
    )
    .await?;
    crate::health::topology_checked(&bus.client);
    // Not ready from the first moment of a shutdown: what runs finishes, nothing new comes.
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        crate::health::draining();
    });
    tracing::info!(service, nats = %common.nats_url, prefix = %common.prefix, replicas = common.replicas, metrics = %addr, "started");
    Ok(Started {
        bus,
        shutdown,
        telemetry,
    })
}

/// The whole life of a service binary: its runtime, [`start`], then `work` with the bus and
/// the shutdown signal until it returns. An error is logged, printed as
/// `push0-<service>: <error>` and ends the process with [`exit_code`].
pub fn main<F, Fut>(service: &'static str, common: &CommonArgs, work: F)
where
    F: FnOnce(Bus, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), RuntimeError>>,
{
    let result = runtime(common).block_on(async {
        let Started {
            bus,
            shutdown,
            telemetry,
        } = start(service, common).await?;
        let result = work(bus, shutdown).await;
        // Spans recorded until the end are flushed.
        drop(telemetry);
        result
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "{service} stopped");
        eprintln!("push0-{service}: {e}");
        std::process::exit(exit_code(&e));
    }
}

/// Exit code for a service that stopped on an error: 64 for bad configuration (as in
/// sysexits), 1 otherwise.
pub fn exit_code(error: &RuntimeError) -> i32 {
    match error {
        RuntimeError::Config(_) => 64,
        _ => 1,
    }
}
