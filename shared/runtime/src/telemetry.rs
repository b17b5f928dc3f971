//! Telemetry: structured `tracing` logs, OpenTelemetry spans, and W3C trace context carried in
//! NATS headers so every span of a block, in every service, shares one trace id.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the tracer provider alive (when spans are recorded); dropping it flushes spans.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the W3C propagator. Safe to call more than once.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Installs logging (filter from `RUST_LOG`, default `info`) for `service`, and with `traces`
/// span recording: spans get trace and span ids, and their context travels in the headers of
/// the messages sent, so one block's spans in every service share a trace. Exporting them to
/// a collector is a matter of adding an exporter to the provider built here. Without
/// `traces` no span is recorded and no `traceparent` is sent: with no exporter the recording
/// would cost CPU on every message for nothing.
pub fn init(service: &'static str, format: LogFormat, traces: bool) -> TelemetryGuard {
    init_with_filter(service, format, traces, "info")
}

/// As [`init`], with the filter used when `RUST_LOG` is unset.
pub fn init_with_filter(
    service: &'static str,
    format: LogFormat,
    traces: bool,
    default_filter: &str,
) -> TelemetryGuard {
    install_propagator();
    let provider = traces.then(|| SdkTracerProvider::builder().build());
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    TelemetryGuard { provider }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Writes the current span's context as `traceparent` into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the trace carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    if headers.get(push0_protocol::TRACEPARENT_HEADER).is_none() {
        return;
    }
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

/// The span of one step in a task's life (`otel_name`, such as `gateway.prove`), with the
/// task's identity as fields and an `attempt` field left for the step to record.
pub fn task_span(otel_name: &'static str, task: &push0_protocol::Task) -> tracing::Span {
    tracing::info_span!(
        "task",
        otel.name = otel_name,
        team = %task.team,
        chain = %task.block.chain,
        number = task.block.number,
        node = %task.node,
        attempt = tracing::field::Empty,
    )
}

/// The trace id of `span`, as hex, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The OpenTelemetry context of a span, to carry work across a queue inside a process.
pub type TraceContext = opentelemetry::Context;

/// The current span's context.
pub fn current_context() -> TraceContext {
    tracing::Span::current().context()
}

/// Makes `span` a child of `cx`.
pub fn set_parent(span: &tracing::Span, cx: TraceContext) {
    let _ = span.set_parent(cx);
}
