//! Telemetry: structured `tracing` logs, OpenTelemetry spans exported over OTLP, and W3C trace
//! context carried in NATS headers so every span of a block, in every service, shares one
//! trace id.
//!
//! Spans are exported when the standard variables name a collector
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), over OTLP
//! http/protobuf, batched by a background thread: a span that ends goes into a bounded queue
//! (dropped when it is full), never onto the network from the handler that ended it. The
//! other standard variables apply as the OpenTelemetry SDK reads them: `OTEL_SERVICE_NAME`
//! (default `push0-<service>`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns export off.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
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

/// The value of environment variable `name`, if set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The collector spans go to, from the standard variables, or None when export is off.
pub fn otlp_endpoint() -> Option<String> {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if disabled {
        return None;
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The batched OTLP exporter for `service`'s spans, as the standard variables configure it.
fn otlp_provider(service: &str) -> Result<SdkTracerProvider, String> {
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    if protocol != "http/protobuf" {
        return Err(format!(
            "OTLP protocol {protocol}: only http/protobuf is built in (point the endpoint at \
             a collector's HTTP port, 4318 by default)"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    // `OTEL_SERVICE_NAME` or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES` wins; without
    // either the SDK says `unknown_service`, and the service's own name is used.
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| name.as_str() != "unknown_service");
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if !named {
        resource = resource.with_service_name(format!("push0-{service}"));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs logging (filter from `RUST_LOG`, default `info`) for `service`, and span
/// recording when `traces` is set or a collector is configured (see the module's
/// documentation): spans get trace and span ids, and their context travels in the headers of
/// the messages sent, so one block's spans in every service share a trace. Without either no
/// span is recorded and no `traceparent` is sent: recording for nobody would cost CPU on
/// every message. An exporter that cannot be built (a bad endpoint, an unsupported protocol)
/// is an error.
pub fn init(
    service: &'static str,
    format: LogFormat,
    traces: bool,
) -> Result<TelemetryGuard, String> {
    init_with_filter(service, format, traces, "info")
}

/// As [`init`], with the filter used when `RUST_LOG` is unset.
pub fn init_with_filter(
    service: &'static str,
    format: LogFormat,
    traces: bool,
    default_filter: &str,
) -> Result<TelemetryGuard, String> {
    install_propagator();
    let provider = match otlp_endpoint() {
        Some(_) => Some(otlp_provider(service)?),
        None => traces.then(|| SdkTracerProvider::builder().build()),
    };
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
    Ok(TelemetryGuard { provider })
}

/// Marks the current span as failed (a dead letter, for instance), with `why`.
pub fn mark_error(why: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", why);
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
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
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
