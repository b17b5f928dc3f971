//! The publication walk against a slow proof publish (roots handed to a walk while its publish
//! waits for the proofs stream are published once the stream answers again) and against a reorg
//! that lands between two proofs (the proof of the block at the cursor, published on what the
//! last walk read, is refused by the fence mark and the walk reads the chain again).

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use push0_protocol::subjects::{block_key, cursor_key};
use push0_protocol::{BlockState, BlockStatus, Cursor, TaskResult, TeamConfig};
use push0_runtime::{kv_create, kv_update, metrics};
use push0_tests::*;
use tokio_util::sync::CancellationToken;

fn accepted(number: u64) -> BlockStatus {
    BlockStatus {
        block: eth_block(number),
        state: BlockState::Accepted,
        payload_len: 1,
        submitted_at_ms: 0,
        accepted_at_ms: Some(0),
        duplicates: 0,
        parent_hash: vec![number.wrapping_sub(1) as u8; 32],
        replaced: Vec::new(),
        orphaned_hashes: Vec::new(),
    }
}

/// The proved root of `number`'s `single` workflow, as a gateway of team alpha reports it.
fn root(number: u64) -> TaskResult {
    proved_root("alpha", eth_block(number), vec![number as u8])
}

/// Team alpha registered, its cursor on eth past `published` blocks (up to that number), and
/// the blocks `accepted_now` recorded as ingest accepts them; returns the blocks' bucket.
async fn published_up_to(
    bus: &push0_runtime::Bus,
    published: u64,
    accepted_now: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    push0_runtime::registry::register_team(bus, &TeamConfig::single("alpha")).await?;
    let blocks = bus.kv(&bus.subjects.bucket_blocks()).await?;
    let cursors = bus.kv(&bus.subjects.bucket_cursors()).await?;
    let start = Cursor {
        next: published + 1,
        published,
    };
    kv_create(&cursors, &cursor_key("alpha", "eth"), &start).await?;
    for number in accepted_now {
        kv_create(&blocks, &block_key("eth", number), &accepted(number)).await?;
    }
    Ok(blocks)
}

/// The walk of block 15 reads block 16's status ahead while it publishes 15, and finds none:
/// 16 is not accepted yet. The publish of 15 then waits seconds for the proofs stream (gone
/// here, as it is while its leader is elected after a node loss). Meanwhile 16 is accepted and
/// proved, and its root is handed to the running walk. Both proofs must come out once the
/// stream is back: with the read-ahead taken as the truth, the walk ended at 16 holding its
/// root, the result of 16 already acked, and nothing published 16 again.
#[tokio::test]
async fn a_root_handed_to_a_walk_slowed_by_its_publish_is_published() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let bus = &env.bus;
    let blocks = published_up_to(bus, 14, 15..=15).await?;
    bus.js.delete_stream(bus.subjects.stream_proofs()).await?;

    let shutdown = CancellationToken::new();
    let aggregator = tokio::spawn(push0_aggregator::run(bus.clone(), shutdown.clone()));
    let results = bus.subjects.results("alpha");
    bus.publish(results.clone(), &root(15), None).await?;
    // The walk of 15 is now publishing, and failing, with 16 read ahead as unrecorded.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kv_create(&blocks, &block_key("eth", 16), &accepted(16)).await?;
    bus.publish(results, &root(16), None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    push0_runtime::topology::apply(bus, 1, Duration::from_secs(60)).await?;

    let proofs = collect_proofs(bus, 2, Duration::from_secs(20)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), aggregator).await;
    let numbers: Vec<u64> = proofs?.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![15, 16], "both proofs, in order");
    Ok(())
}

/// Waits until the aggregator has acked the first `count` results. A result is acked after
/// its handling returned, and a walk leaves its tail before it returns.
async fn results_handled(bus: &push0_runtime::Bus, count: u64) -> anyhow::Result<()> {
    let spec = bus.topology.aggregator_consumer();
    let stream = bus.js.get_stream(&spec.stream).await?;
    eventually(
        Duration::from_secs(10),
        &format!("{count} results acked"),
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&spec.durable).await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.ack_floor.stream_sequence >= count).then_some(())
        },
    )
    .await
}

/// Blocks 5 to 7 are accepted. The walk that publishes 5 reads 6 beside it and leaves that
/// behind, so the root of 6 goes out without a read. Its walk read 7 beside it, still on the
/// chain; then a reorg orphans 7 and ingest publishes a fence mark, and 7's root comes in. The
/// proof must not go out: on what the walk of 6 read it would, and only the server's fence
/// sends it back to the records, where 7 is orphaned.
#[tokio::test]
async fn a_fence_mark_sends_the_next_proof_back_to_the_records() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let bus = &env.bus;
    let blocks = published_up_to(bus, 4, 5..=7).await?;
    let shutdown = CancellationToken::new();
    let aggregator = tokio::spawn(push0_aggregator::run(bus.clone(), shutdown.clone()));
    let results = bus.subjects.results("alpha");
    let fenced = |outcome: &str| {
        metrics()
            .fenced_proofs
            .with_label_values(&["alpha", outcome])
            .get()
    };

    bus.publish(results.clone(), &root(5), None).await?;
    results_handled(bus, 1).await?;
    bus.publish(results.clone(), &root(6), None).await?;
    results_handled(bus, 2).await?;
    assert_eq!(fenced("out"), 1, "6 went out on what the walk of 5 read");

    kv_update::<BlockStatus, _>(&blocks, &block_key("eth", 7), |s| {
        s.map(|s| BlockStatus {
            state: BlockState::Orphaned,
            ..s.clone()
        })
    })
    .await?;
    bus.publish_raw(
        bus.subjects.fence_marks("alpha", "eth"),
        HeaderMap::new(),
        Bytes::new(),
    )
    .await?;
    bus.publish(results, &root(7), None).await?;
    results_handled(bus, 3).await?;
    let proofs = all_proofs(bus, Duration::ZERO).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), aggregator).await;
    assert_eq!(fenced("refused"), 1, "the proof of 7 was refused");
    let numbers: Vec<u64> = proofs?.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![5, 6], "no proof of the orphaned 7");
    Ok(())
}
