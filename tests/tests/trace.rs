//! One trace per block: the W3C trace context travels in NATS headers, so the spans every
//! service opens for a block (collected here in process) share one trace id.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use push0::source::{make_block, submit};
use push0_protocol::TeamConfig;
use push0_tests::*;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_span_of_a_block_shares_one_trace_id() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    push0_runtime::telemetry::install_propagator();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber)?;

    let env = Env::new().await?;
    let team = TeamConfig::split("beta", 2, 2);
    let cluster = env.cluster(vec![team], 1, 2, "fixed:5ms").await?;

    let root = tracing::info_span!("client", otel.name = "client.submit");
    let root_trace =
        push0_runtime::telemetry::trace_id(&root).expect("the client span has a trace");
    submit(&env.bus, &make_block("eth", 1, 4096))
        .instrument(root.clone())
        .await?;
    drop(root);
    collect_proofs(&env.bus, 1, Duration::from_secs(20)).await?;
    cluster.stop().await?;
    provider.force_flush()?;

    let spans = exporter.get_finished_spans()?;
    let in_trace: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == root_trace)
        .map(|s| s.name.to_string())
        .collect();
    for expected in [
        "client.submit",
        "ingest.handle",
        "scheduler.handle",
        "scheduler.release",
        "gateway.prove",
        "aggregator.handle",
    ] {
        assert!(
            in_trace.contains(expected),
            "{expected} is in the block's trace; trace has {in_trace:?}"
        );
    }
    // Leaves, the READY join and the aggregation: 3 tasks proved, 3 results handled.
    let proves = spans
        .iter()
        .filter(|s| {
            s.name == "gateway.prove" && s.span_context.trace_id().to_string() == root_trace
        })
        .count();
    assert_eq!(
        proves, 3,
        "both leaves and the aggregation joined the trace"
    );
    let others: BTreeSet<String> = spans
        .iter()
        .filter(|s| {
            s.name == "gateway.prove" && s.span_context.trace_id().to_string() != root_trace
        })
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert!(
        others.is_empty(),
        "no prove span started a trace of its own: {others:?}"
    );
    Ok(())
}
