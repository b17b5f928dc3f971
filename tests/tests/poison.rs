//! A poison task (its prover fails every time) is dead-lettered after MaxDeliver with the block
//! marked failed for the team, leaves the work queue, and — once the cause is fixed — an
//! operator's `push0 dlq replay` gets the block proved, in order.

use std::time::Duration;

use push0::source::{make_block, submit};
use push0_protocol::subjects::{final_key, plan_key};
use push0_protocol::{BlockRef, DlqReason, NodeId, PartRecord, Plan, TeamConfig};
use push0_prover_gateway::prover::{ExecProver, Prover};
use push0_runtime::{kv_get, metrics};
use push0_tests::*;

/// A cluster whose one gateway (2 slots) for `team` runs `tests/provers/fail-while`: it fails
/// `target` (a block, or `block:level-index`) while the returned marker file exists.
async fn poisoned_cluster(
    env: &Env,
    team: TeamConfig,
    target: &str,
) -> anyhow::Result<(push0::cluster::LocalCluster, std::path::PathBuf)> {
    let marker = std::env::temp_dir().join(format!("push0-poison-{}-{}", team.name, env.prefix));
    std::fs::write(&marker, b"poisoned")?;
    let prover = Prover::Exec(ExecProver {
        program: push0_natsd::repo_root().join("tests/provers/fail-while"),
        args: vec![marker.display().to_string(), target.into()],
        work_dir: std::env::temp_dir(),
        proof_system: "sha256".into(),
        timeout: Duration::from_secs(30),
        threads: Some(1),
    });
    let name = team.name.clone();
    let spec = env.spec(vec![team]).gateways(&name, 1, 2, prover);
    Ok((push0::cluster::LocalCluster::start(spec).await?, marker))
}

/// What a dead-lettered poison task leaves: block `number` marked failed for `team`, and the
/// task out of the work queue (within 5 s).
async fn block_failed_and_task_gone(env: &Env, team: &str, number: u64) -> anyhow::Result<()> {
    let plans = env.bus.kv(&env.bus.subjects.bucket_plans()).await?;
    let (plan, _) = kv_get::<Plan>(&plans, &plan_key(team, "eth", number))
        .await?
        .expect("plan");
    assert!(
        plan.failed.is_some(),
        "block {number} is marked failed for the team"
    );
    let tasks = env
        .bus
        .js
        .get_stream(env.bus.subjects.stream_tasks())
        .await?;
    eventually(
        Duration::from_secs(5),
        "the poison task to leave the work queue",
        || async { (tasks.get_info().await.ok()?.state.messages == 0).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_task_is_dead_lettered_then_replayed() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::single("rollup");
    team.max_deliver = 2;
    let (cluster, marker) = poisoned_cluster(&env, team, "2").await?;
    for n in 1..=3 {
        submit(&env.bus, &make_block("eth", n, 1000)).await?;
    }
    let records = dead_letters_appear(&env.bus, Duration::from_secs(30)).await?;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.reason, DlqReason::MaxDeliveries);
    assert_eq!(record.service, "scheduler");
    assert_eq!(record.block.as_ref().map(|b| b.number), Some(2));
    assert!(record.detail.contains("2 deliveries"), "{}", record.detail);
    // Each delivery's failure, as the gateway reported it.
    assert_eq!(
        record
            .history
            .iter()
            .map(|a| (a.delivery, a.gateway.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "rollup-gw0"), (2, "rollup-gw0")],
        "{:#?}",
        record.history
    );
    assert!(
        record.history.iter().all(|a| !a.error.is_empty()),
        "{:#?}",
        record.history
    );

    block_failed_and_task_gone(&env, "rollup", 2).await?;
    // Block 3 is proved, yet not published: it waits behind the failed block 2.
    let block3 = make_block("eth", 3, 1000);
    let block3 = BlockRef {
        chain: block3.chain,
        number: block3.number,
        hash: block3.hash,
    };
    let parts = env.bus.kv(&env.bus.subjects.bucket_parts()).await?;
    eventually(
        Duration::from_secs(20),
        "block 3's proof to be recorded",
        || {
            let parts = parts.clone();
            let key = final_key("rollup", &block3);
            async move {
                kv_get::<PartRecord>(&parts, &key)
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            }
        },
    )
    .await?;
    let proofs = all_proofs(&env.bus, Duration::ZERO).await?;
    assert_eq!(
        proofs.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1],
        "block 3 waits behind the failed block 2"
    );

    // The operator fixes the cause and replays the dead letter.
    std::fs::remove_file(&marker)?;
    let dlq_seq = {
        let mut dlq = env.bus.js.get_stream(env.bus.subjects.stream_dlq()).await?;
        dlq.info().await?.state.last_sequence
    };
    let dlq_cli = |command: &[&str]| {
        let url = env.server.url();
        let mut args = vec!["dlq", "--nats-url", &url, "--prefix", &env.prefix];
        args.extend_from_slice(command);
        std::process::Command::new(binary("push0"))
            .args(&args)
            .output()
    };
    let list = dlq_cli(&["list"])?;
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing.contains("max_deliveries") && listing.contains("eth/2"),
        "{listing}"
    );
    replay_then_blocks_1_to_3(&env, dlq_seq).await?;
    cluster.stop().await
}

/// A task's exhaustion notice can be lost: a NATS node goes with it, or the gateway that failed
/// the last delivery dies before sending it. Whatever was said about the poison task is
/// purged from the advisories stream while the scheduler's consumer of it is paused; the task's
/// next delivery, past the team's limit, is reported again, and the task is dead-lettered and
/// its block failed all the same. (With the server keeping the limit, the one advisory it sends
/// is all there is, and this task would sit in the work queue for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_exhaustion_notice_is_sent_again() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::single("unheard");
    team.max_deliver = 2;
    let (cluster, _marker) = poisoned_cluster(&env, team, "2").await?;
    let advisories = env.bus.topology.scheduler_advisory_consumer();
    let pause = |until: &'static str| {
        let subject = format!(
            "$JS.API.CONSUMER.PAUSE.{}.{}",
            advisories.stream, advisories.durable
        );
        let client = env.bus.client.clone();
        async move {
            let reply = client.request(subject, until.into()).await.ok()?;
            serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .ok()?
                .get("paused")
                .and_then(|v| v.as_bool())
        }
    };
    eventually(
        Duration::from_secs(20),
        "the scheduler's advisory consumer paused",
        || async {
            (pause(r#"{"pause_until":"2099-01-01T00:00:00Z"}"#).await == Some(true)).then_some(())
        },
    )
    .await?;
    for n in 1..=3 {
        submit(&env.bus, &make_block("eth", n, 1000)).await?;
    }
    let stream = env.bus.js.get_stream(&advisories.stream).await?;
    eventually(
        Duration::from_secs(30),
        "the poison task reported exhausted",
        || async { (stream.get_info().await.ok()?.state.messages > 0).then_some(()) },
    )
    .await?;
    let purged = stream.purge().await?;
    assert!(purged.purged >= 1);
    assert_eq!(pause("{}").await, Some(false), "resumed");
    let records = dead_letters_appear(&env.bus, Duration::from_secs(30)).await?;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.reason, DlqReason::MaxDeliveries);
    assert_eq!(record.block.as_ref().map(|b| b.number), Some(2));
    assert!(record.detail.contains("2 deliveries"), "{}", record.detail);
    assert_eq!(record.history.len(), 2, "{:#?}", record.history);
    block_failed_and_task_gone(&env, "unheard", 2).await?;
    cluster.stop().await
}

/// `push0 dlq replay <seq>`, after which blocks 1..=3 are published in order.
async fn replay_then_blocks_1_to_3(env: &Env, seq: u64) -> anyhow::Result<()> {
    let url = env.server.url();
    let replay = std::process::Command::new(binary("push0"))
        .args(["dlq", "--nats-url", &url, "--prefix", &env.prefix])
        .args(["replay", &seq.to_string()])
        .output()?;
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let proofs = collect_proofs(&env.bus, 3, Duration::from_secs(30)).await?;
    assert_eq!(
        proofs.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    Ok(())
}

/// Resume, not restart: a split block whose one leaf is poison is dead-lettered; its other
/// parts stay recorded, and replaying the dead letter proves only the missing leaf and the
/// aggregations above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_split_block_reproves_only_its_missing_part() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::split("resume", 4, 2);
    team.max_deliver = 2;
    let workflow = team.workflow();
    let (cluster, marker) = poisoned_cluster(&env, team, "2:0-2").await?;
    let blocks: Vec<_> = (1..=3).map(|n| make_block("eth", n, 4000)).collect();
    for b in &blocks {
        submit(&env.bus, b).await?;
    }
    let block2 = BlockRef {
        chain: "eth".into(),
        number: 2,
        hash: blocks[1].hash.clone(),
    };
    // Everything that can be proved without leaf 0-2 of block 2 is, and the leaf is dead-lettered.
    let recorded = |block: BlockRef| {
        let bus = env.bus.clone();
        async move {
            let parts = part_records(&bus).await.ok()?;
            Some(
                parts
                    .into_iter()
                    .filter(|p| p.block == block)
                    .map(|p| (p.node, p.recorded_at_ms))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    let before = eventually(
        Duration::from_secs(40),
        "block 2's other parts, block 3 and the dead letter",
        || async {
            let dlq = dead_letters(&env.bus).await.ok()?;
            let parts = recorded(block2.clone()).await?;
            let block3 = recorded(BlockRef {
                chain: "eth".into(),
                number: 3,
                hash: blocks[2].hash.clone(),
            })
            .await?;
            (dlq.len() == 1 && parts.len() == 4 && block3.len() == workflow.nodes().len())
                .then_some(parts)
        },
    )
    .await?;
    let nodes = |list: &[(u32, u32)]| -> Vec<NodeId> {
        list.iter()
            .map(|&(level, index)| NodeId { level, index })
            .collect()
    };
    assert_eq!(
        before.keys().copied().collect::<Vec<_>>(),
        nodes(&[(0, 0), (0, 1), (0, 3), (1, 0)]),
        "block 2: every part but the poison leaf and what needs it"
    );
    let proved_before = metrics()
        .prove_time
        .with_label_values(&["resume"])
        .get_sample_count();

    std::fs::remove_file(&marker)?;
    let dlq_seq = {
        let mut dlq = env.bus.js.get_stream(env.bus.subjects.stream_dlq()).await?;
        dlq.info().await?.state.last_sequence
    };
    replay_then_blocks_1_to_3(&env, dlq_seq).await?;
    let proved_after = metrics()
        .prove_time
        .with_label_values(&["resume"])
        .get_sample_count();
    assert_eq!(
        proved_after - proved_before,
        3,
        "only leaf 0-2, its parent 1-1 and the root 2-0 were proved after the replay"
    );
    let after = recorded(block2).await.expect("parts readable");
    for (node, at) in &before {
        assert_eq!(after.get(node), Some(at), "part {node} kept, not re-proved");
    }
    assert_eq!(after.len(), workflow.nodes().len());
    cluster.stop().await
}
