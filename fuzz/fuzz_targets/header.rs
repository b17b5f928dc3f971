//! The headers a service reads off a delivery before its body: the W3C `traceparent` and
//! `tracestate` a gateway or the scheduler continues a trace from (`set_parent_from`, with the
//! propagator `install_propagator` sets), and the `Push0-Schema` value every decode checks
//! first. The input is the traceparent, a newline, the tracestate.
#![no_main]

use std::collections::HashMap;
use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use push0_protocol::{TRACEPARENT_HEADER, Task, decode};

fuzz_target!(|data: &[u8]| {
    // NATS header values are text; a delivery's are read as &str.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parent, state) = text.split_once('\n').unwrap_or((text, ""));
    let mut headers = HashMap::new();
    headers.insert(TRACEPARENT_HEADER.to_string(), parent.to_string());
    if !state.is_empty() {
        headers.insert("tracestate".to_string(), state.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&headers);
    let span = cx.span();
    let sc = span.span_context();
    black_box((
        sc.is_valid(),
        sc.trace_id().to_string(),
        sc.trace_state().header(),
    ));
    // Any schema value but the expected one is refused before the body is read.
    black_box(decode::<Task>(Some(parent), b"").is_ok());
});
