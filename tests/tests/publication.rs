//! The publication walk against a slow proof publish: roots handed to a walk while its publish
//! waits for the proofs stream are published once the stream answers again.

use std::time::Duration;

use push0_protocol::subjects::{block_key, cursor_key};
use push0_protocol::{
    Blob, BlockRef, BlockState, BlockStatus, Cursor, NodeId, TaskOutcome, TaskResult, TeamConfig,
    Workflow,
};
use push0_runtime::kv_create;
use push0_tests::*;
use tokio_util::sync::CancellationToken;

fn block(number: u64) -> BlockRef {
    BlockRef {
        chain: "eth".into(),
        number,
        hash: vec![number as u8; 32],
    }
}

fn accepted(number: u64) -> BlockStatus {
    BlockStatus {
        block: block(number),
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
    TaskResult {
        task_id: format!("alpha/eth/{number}/0-0"),
        team: "alpha".into(),
        block: block(number),
        node: NodeId { level: 0, index: 0 },
        workflow: Workflow::SINGLE,
        outcome: TaskOutcome::Proved {
            proof: Blob::Inline(vec![number as u8]),
            proof_system: "sim".into(),
            report: None,
        },
        gateway: "g".into(),
        attempt: 1,
        prove_ms: 1,
        inputs_critical_ms: 0,
        queue_wait_ms: 0,
        submitted_at_ms: 0,
        deadline_ms: None,
    }
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
    push0_runtime::registry::register_team(bus, &TeamConfig::single("alpha")).await?;
    let blocks = bus.kv(&bus.subjects.bucket_blocks()).await?;
    let cursors = bus.kv(&bus.subjects.bucket_cursors()).await?;
    let start = Cursor {
        next: 15,
        published: 14,
    };
    kv_create(&cursors, &cursor_key("alpha", "eth"), &start).await?;
    kv_create(&blocks, &block_key("eth", 15), &accepted(15)).await?;
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
