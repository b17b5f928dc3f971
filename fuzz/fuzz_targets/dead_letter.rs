//! Dead letters and what leads to them: `dead-letter/v1` (`push0 dlq`, the dashboard),
//! `attempt/v1` (the scheduler, from the `attempts` bucket) and the server's or a gateway's
//! max-deliveries advisory, JSON (the scheduler's poison handler). The same bytes are decoded
//! as each of them.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use push0_fuzz::{blob, block_ref, decode_as};
use push0_protocol::subjects::attempt_key;
use push0_protocol::{Attempt, DeadLetter};

fuzz_target!(|data: &[u8]| {
    if let Some(d) = decode_as::<DeadLetter>(data) {
        d.block.iter().for_each(block_ref);
        blob(&d.original);
        black_box((d.reason.as_str(), d.history.len()));
    }
    if let Some(a) = decode_as::<Attempt>(data) {
        black_box(attempt_key("task", a.delivery));
    }
    // `PoisonHandler::handle`: the advisory's stream sequence, delivery count and consumer.
    if let Ok(advisory) = serde_json::from_slice::<serde_json::Value>(data) {
        black_box((
            advisory["stream_seq"].as_u64(),
            advisory["deliveries"].as_u64(),
            advisory["consumer"].as_str().unwrap_or("?").to_string(),
        ));
    }
});
