//! Process level: the four service binaries export their spans over OTLP (http/protobuf, as
//! the standard `OTEL_*` variables configure it) to a receiver in this test, which decodes
//! them with the OpenTelemetry protocol's own message definitions. Each block is submitted
//! under a trace of the test's own making: every span the services record for it must carry
//! that trace id, link to a parent that exists (the test's submission span at the root), and
//! come from all four services; a message dead-lettered under a trace shows as an error span.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use push0::source::make_block;
use push0_protocol::subjects::block_msg_id;
use push0_protocol::{
    BlockSubmission, MSG_ID_HEADER, SCHEMA_HEADER, TRACEPARENT_HEADER, WireMessage, encode,
};
use push0_tests::*;

/// One span as received.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    error: bool,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> String {
    text(
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()),
    )
}

async fn export(
    State(collector): State<Collector>,
    body: Bytes,
) -> Result<([(header::HeaderName, &'static str); 1], Vec<u8>), (StatusCode, String)> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an OTLP trace export: {e}"),
        )
    })?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .map(|r| attribute(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace: hex::encode(&span.trace_id),
                    id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    error: span
                        .status
                        .is_some_and(|s| s.code == SpanStatus::Error as i32),
                });
            }
        }
    }
    collector.spans.lock().expect("spans").extend(spans);
    *collector.requests.lock().expect("requests") += 1;
    Ok((
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))
}

/// A trace id and a span id of the test's own, as a `traceparent` would carry them.
fn fresh_ids() -> (String, String) {
    let trace = format!("{:032x}", rand::random::<u128>());
    let span = format!("{:016x}", rand::random::<u64>());
    (trace, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_each_blocks_spans_under_one_trace() -> anyhow::Result<()> {
    let logs = Logs::new("otlp")?;
    logs.report(async {
        let env = Env::with_logs(&logs).await?;
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(collector.clone());
        let endpoint = serve_http(app).await?;

        let teams = logs.dir.join("teams.toml");
        std::fs::write(&teams, SYSTEM_TEAMS)?;
        let teams = teams.to_str().context("teams path")?;
        let url = env.server.url();
        let mut services = Vec::new();
        let mut start = |binary: &str, name: &str, args: &[&str]| {
            let mut command = ServiceProcess::command(binary, &url, &env.prefix, 0, args);
            command
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .env("OTEL_BSP_SCHEDULE_DELAY", "200")
                .env_remove("OTEL_SERVICE_NAME")
                .env_remove("OTEL_SDK_DISABLED");
            services.push(ServiceProcess::spawn(name, command, &logs.dir)?);
            anyhow::Ok(())
        };
        start("push0-ingest", "ingest", &[])?;
        start("push0-scheduler", "scheduler", &["--teams", teams])?;
        start("push0-aggregator", "aggregator", &[])?;
        for team in ["alpha", "beta"] {
            start(
                "push0-prover-gateway",
                &format!("gateway-{team}"),
                &["--team", team, "--slots", "2", "--sim-latency", "fixed:5ms"],
            )?;
        }

        // Blocks 1..=3, each under a trace of its own; then a malformed submission under a
        // fourth.
        let mut roots: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for number in 1..=3u64 {
            let block = make_block("eth", number, 256);
            let (trace, span) = fresh_ids();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(SCHEMA_HEADER, BlockSubmission::SCHEMA);
            let id = block_msg_id(&block.chain, block.number, &block.hash);
            headers.insert(MSG_ID_HEADER, id.as_str());
            headers.insert(TRACEPARENT_HEADER, format!("00-{trace}-{span}-01").as_str());
            let payload = encode(&block);
            env.bus
                .publish_raw(env.bus.subjects.blocks("eth"), headers, payload.into())
                .await?;
            roots.insert(trace, (number, span));
        }
        let (bad_trace, bad_span) = fresh_ids();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SCHEMA_HEADER, BlockSubmission::SCHEMA);
        headers.insert(
            TRACEPARENT_HEADER,
            format!("00-{bad_trace}-{bad_span}-01").as_str(),
        );
        env.bus
            .publish_raw(
                env.bus.subjects.blocks("eth"),
                headers,
                b"not messagepack".to_vec().into(),
            )
            .await?;
        // Both teams prove each block.
        collect_proofs(&env.bus, 6, Duration::from_secs(60)).await?;

        // A clean stop flushes each service's last batch.
        for s in &services {
            s.terminate()?;
        }
        for s in &mut services {
            s.wait_bounded(Duration::from_secs(15))?;
        }
        let spans = collector.spans.lock().expect("spans").clone();
        let requests = *collector.requests.lock().expect("requests");
        println!(
            "{} spans received in {requests} export requests",
            spans.len()
        );

        let mut by_trace: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
        for span in &spans {
            by_trace.entry(&span.trace).or_default().push(span);
        }
        for (trace, (number, root)) in &roots {
            let block = by_trace
                .get(trace.as_str())
                .with_context(|| format!("no span of block {number}'s trace {trace}"))?;
            let ids: BTreeSet<&str> = block.iter().map(|s| s.id.as_str()).collect();
            for span in block {
                assert!(
                    span.parent == *root || ids.contains(span.parent.as_str()),
                    "block {number}: {} ({}) names parent {}, which is neither the \
                     submission nor a span of the trace",
                    span.name,
                    span.service,
                    span.parent
                );
                assert!(!span.error, "block {number}: error span {span:?}");
            }
            let services: BTreeSet<&str> = block.iter().map(|s| s.service.as_str()).collect();
            let expected = BTreeSet::from([
                "push0-ingest",
                "push0-scheduler",
                "push0-prover-gateway",
                "push0-aggregator",
            ]);
            assert_eq!(services, expected, "block {number}'s services");
            let names: BTreeMap<&str, usize> = block.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s.name.as_str()).or_default() += 1;
                m
            });
            // alpha proves the block in one task; beta in three parts, two joins and the
            // root: seven tasks (more if one was delivered again).
            for (name, least) in [
                ("ingest.handle", 1),
                ("scheduler.handle", 1),
                ("scheduler.release", 7),
                ("gateway.prove", 7),
                ("prover.run", 7),
                ("aggregator.handle", 7),
            ] {
                let seen = names.get(name).copied().unwrap_or(0);
                assert!(
                    seen >= least,
                    "block {number}: {seen} {name} spans, at least {least} expected: {names:?}"
                );
            }
            println!(
                "block {number}: trace {trace}, {} spans: {names:?}",
                block.len()
            );
        }
        let bad = by_trace
            .get(bad_trace.as_str())
            .context("no span of the malformed submission's trace")?;
        assert!(
            bad.iter()
                .any(|s| s.name == "ingest.handle" && s.error && s.parent == bad_span),
            "the dead-lettered submission is an error span under its trace: {bad:?}"
        );
        // A task's spans are never cut off from its block's trace.
        let stray: Vec<&Received> = spans
            .iter()
            .filter(|s| !roots.contains_key(&s.trace))
            .filter(|s| {
                ["scheduler.release", "gateway.prove", "prover.run"].contains(&s.name.as_str())
            })
            .collect();
        assert!(
            stray.is_empty(),
            "task spans outside the blocks' traces: {stray:?}"
        );
        Ok(())
    })
    .await
}
