//! A flood of bad input does not slow good blocks by more than the bad input's own cost:
//! 10,000 malformed submissions interleaved with 100 good blocks on the same subject. Every good
//! block is proved once and in order, every bad message becomes a dead letter, and the good
//! blocks' overhead stays within what ingest spends on the bad messages queued ahead of them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use push0::source::submit;
use push0_protocol::synthetic::make_block;
use push0_protocol::{BlockProof, SCHEMA_HEADER, TeamConfig};
use push0_runtime::Bus;
use push0_tests::*;

const GOOD: u64 = 100;
const BAD_PER_GOOD: u64 = 100;
const RATE: f64 = 20.0;

/// A malformed submission of one of three kinds: bytes that are not MessagePack, MessagePack of
/// the wrong shape, an unknown schema version.
fn bad(i: u64) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    let body = match i % 3 {
        0 => {
            headers.insert(SCHEMA_HEADER, "block/v1");
            Bytes::from(format!("\u{c1}\u{c1} not messagepack {i}"))
        }
        1 => {
            headers.insert(SCHEMA_HEADER, "block/v1");
            Bytes::from(rmp_serde::to_vec(&(i, "no such shape")).expect("encodes"))
        }
        _ => {
            headers.insert(SCHEMA_HEADER, "block/v7");
            Bytes::from(vec![0x90])
        }
    };
    (headers, body)
}

/// Publishes `GOOD` blocks from `first` at `RATE` per second, each after `bad_each` malformed
/// messages on the same subject.
async fn publish(bus: &Bus, first: u64, bad_each: u64) -> anyhow::Result<()> {
    let subject = bus.subjects.blocks("eth");
    let start = tokio::time::Instant::now();
    for i in 0..GOOD {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / RATE)).await;
        for j in 0..bad_each {
            let (headers, body) = bad(i * bad_each + j);
            bus.client
                .publish_with_headers(subject.clone(), headers, body)
                .await?;
        }
        submit(bus, &make_block("eth", first + i, 1024)).await?;
    }
    bus.client.flush().await?;
    Ok(())
}

/// Messages on the dead-letter stream.
async fn dead_letters_stored(bus: &Bus) -> Option<u64> {
    let mut dlq = bus.js.get_stream(bus.subjects.stream_dlq()).await.ok()?;
    Some(dlq.info().await.ok()?.state.messages)
}

/// The p50 and p90 of the blocks' overhead (end-to-end latency less proving), in ms.
fn overhead(proofs: &[BlockProof]) -> (u64, u64) {
    let mut ms: Vec<u64> = proofs
        .iter()
        .map(|p| p.latency_ms.saturating_sub(p.proving_ms))
        .collect();
    ms.sort_unstable();
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_blocks_are_not_slowed_by_a_flood_of_malformed_input() -> anyhow::Result<()> {
    let logs = Logs::new("flood")?;
    let env = Env::with_logs(&logs).await?;
    logs.report(async {
        let teams = vec![TeamConfig::single("alpha")];
        let cluster = env.cluster(teams, 1, 4, "fixed:20ms").await?;
        let bus = &env.bus;

        // What ingest spends on bad input alone: 10,000 malformed messages, until each is a
        // dead letter.
        let started = Instant::now();
        let subject = bus.subjects.blocks("eth");
        for i in 0..GOOD * BAD_PER_GOOD {
            let (headers, body) = bad(i);
            bus.client
                .publish_with_headers(subject.clone(), headers, body)
                .await?;
        }
        bus.client.flush().await?;
        let total = GOOD * BAD_PER_GOOD;
        eventually(Duration::from_secs(120), "every bad message dead-lettered", || async {
            (dead_letters_stored(bus).await? >= total).then_some(())
        })
        .await?;
        let per_bad = started.elapsed() / total as u32;

        // Good blocks alone.
        publish(bus, 1, 0).await?;
        let quiet = collect_proofs(bus, GOOD as usize, Duration::from_secs(60)).await?;
        // Good blocks, each behind 100 malformed messages on its subject.
        publish(bus, GOOD + 1, BAD_PER_GOOD).await?;
        let proofs = collect_proofs(bus, 2 * GOOD as usize, Duration::from_secs(120)).await?;
        let flooded: Vec<BlockProof> = proofs.into_iter().skip(GOOD as usize).collect();

        eventually(Duration::from_secs(120), "the flood's dead letters", || async {
            (dead_letters_stored(bus).await? >= 2 * total).then_some(())
        })
        .await?;
        // A dead letter filed twice would show here after a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let dead = dead_letters_stored(bus).await.unwrap_or_default();
        let all = all_proofs(bus, Duration::from_secs(1)).await?;
        assert_once_in_order(&all, 1, 2 * GOOD, env.server.log_path());

        let (quiet_p50, quiet_p90) = overhead(&quiet);
        let (flood_p50, flood_p90) = overhead(&flooded);
        // Each good block waits at most for the bad messages ahead of it on its subject.
        let cost = (per_bad * BAD_PER_GOOD as u32).as_millis() as u64;
        let bound = quiet_p50 + cost;
        eprintln!(
            "ingest per bad message {per_bad:?} ({cost} ms per 100); overhead p50/p90: alone {quiet_p50}/{quiet_p90} ms, \
             flooded {flood_p50}/{flood_p90} ms; bound on the flooded p50 {bound} ms (+ 50 ms); dead letters {dead}"
        );
        assert_eq!(dead, 2 * total, "every bad message a dead letter, once");
        assert!(
            flood_p50 <= bound + 50,
            "good blocks slowed past the bad input's cost: p50 {flood_p50} ms > {bound} + 50 ms"
        );
        cluster.stop().await
    })
    .await
}
