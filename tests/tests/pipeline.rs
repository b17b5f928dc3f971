//! End to end through all four services on a real nats-server: counts, order, de-duplication
//! and the content of split proofs.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use push0::source::{make_block, run_source, submit};
use push0_protocol::subjects::{final_key, part_key, plan_key};
use push0_protocol::{
    BlockRef, NodeId, PartRecord, Plan, SCHEMA_HEADER, Task, TeamConfig, TeamsFile, decode,
};
use push0_runtime::kv_get;
use push0_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_blocks_two_teams_all_proved_in_order_with_correct_proofs() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let teams = TeamsFile::default_teams();
    let cluster = env
        .cluster(teams.clone(), 2, 3, "uniform:1ms..15ms")
        .await?;
    run_source(&env.bus, "eth", 1, 50, 0.0, 8 * 1024).await?;

    let proofs = collect_proofs(&env.bus, 100, Duration::from_secs(60)).await?;
    let extra = all_proofs(&env.bus, Duration::from_millis(500)).await?;
    assert_eq!(extra.len(), 100, "exactly one proof per (team, block)");

    let by_team = numbers_by_team(&proofs);
    for team in &teams {
        assert_eq!(
            by_team[&team.name],
            (1..=50).collect::<Vec<u64>>(),
            "team {} in block order",
            team.name
        );
    }
    for p in &proofs {
        let team = teams.iter().find(|t| t.name == p.team).unwrap();
        let block = make_block("eth", p.number, 8 * 1024);
        assert_eq!(p.hash, block.hash);
        assert_eq!(
            p.proof.as_deref(),
            Some(expected_sim_proof(&block.payload, team.workflow()).as_slice()),
            "proof of {} block {} binds every part in order",
            p.team,
            p.number
        );
        assert!(p.latency_ms >= p.proving_ms, "latency covers proving");
    }
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resubmitted_blocks_yield_one_proof_each() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let teams = TeamsFile::default_teams();
    let cluster = env.cluster(teams, 1, 4, "fixed:2ms").await?;
    let duplicates_before = push0_runtime::metrics()
        .duplicates
        .with_label_values(&["ingest"])
        .get();
    for n in 1..=20 {
        let block = make_block("eth", n, 2048);
        assert!(submit(&env.bus, &block).await?, "first submission is new");
        assert!(
            !submit(&env.bus, &block).await?,
            "second submission is a stream duplicate"
        );
    }
    collect_proofs(&env.bus, 40, Duration::from_secs(30)).await?;
    // The same blocks under other msg-ids (a client retrying with its own ids, or after the
    // stream's de-duplication window) get past the stream: ingest itself must catch them.
    for n in 1..=20 {
        let block = make_block("eth", n, 2048);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(push0_protocol::SCHEMA_HEADER, "block/v1");
        headers.insert(push0_protocol::MSG_ID_HEADER, format!("retry-{n}").as_str());
        env.bus
            .publish_raw(
                env.bus.subjects.blocks("eth"),
                headers,
                push0_protocol::encode(&block).into(),
            )
            .await?;
    }
    let ingest_duplicates = || {
        push0_runtime::metrics()
            .duplicates
            .with_label_values(&["ingest"])
            .get()
    };
    eventually(
        Duration::from_secs(20),
        "ingest to count the 20 resubmissions",
        || async { (ingest_duplicates() >= duplicates_before + 20).then_some(()) },
    )
    .await?;
    let mut accepted = env
        .bus
        .js
        .get_stream(env.bus.subjects.stream_accepted())
        .await?;
    assert_eq!(
        accepted.info().await?.state.messages,
        20,
        "ingest accepted each block once"
    );
    let proofs = all_proofs(&env.bus, Duration::from_millis(500)).await?;
    assert_eq!(
        proofs.len(),
        40,
        "still exactly one proof per (team, block)"
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_block_proof_comes_after_all_parts_and_aggregations() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let team = TeamConfig::split("wide", 5, 2);
    let workflow = team.workflow();
    let cluster = env
        .cluster(vec![team.clone()], 2, 2, "uniform:1ms..20ms")
        .await?;
    run_source(&env.bus, "eth", 1, 6, 0.0, 10_000).await?;
    let proofs = collect_proofs(&env.bus, 6, Duration::from_secs(30)).await?;
    let parts = env.bus.kv(&env.bus.subjects.bucket_parts()).await?;
    for p in &proofs {
        let block = BlockRef {
            chain: "eth".into(),
            number: p.number,
            hash: p.hash.clone(),
        };
        let mut last_part_ms = 0;
        for node in workflow.nodes() {
            let key = match workflow.is_root(node) {
                true => final_key("wide", &block),
                false => part_key("wide", &block, node),
            };
            let (rec, _) = kv_get::<PartRecord>(&parts, &key)
                .await?
                .unwrap_or_else(|| panic!("part {node} of block {} recorded", p.number));
            last_part_ms = last_part_ms.max(rec.recorded_at_ms);
        }
        assert!(
            p.published_at_ms >= last_part_ms,
            "block {} published before its last part",
            p.number
        );
        let (root, _) = kv_get::<PartRecord>(&parts, &final_key("wide", &block))
            .await?
            .unwrap();
        assert_eq!(root.node, workflow.root());
        // 5 leaves, arity 2: three levels of aggregation above the leaves on the critical path.
        assert!(p.proving_ms >= root.prove_ms);
        let block = make_block("eth", p.number, 10_000);
        assert_eq!(
            p.proof.as_deref(),
            Some(expected_sim_proof(&block.payload, workflow).as_slice())
        );
    }
    cluster.stop().await
}

/// Leaves go out in block order while the bus is nearly full. The scheduler plans a chain's
/// blocks pipelined, and a block that finds room may not send its leaves ahead of an earlier
/// one that found none and is still storing its plan, nor ahead of a release being sent. A
/// core subscriber sees the scheduler's publishes in the order it made them (one connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_go_out_in_block_order_under_backpressure() -> anyhow::Result<()> {
    const BLOCKS: u64 = 300;
    let env = Env::new().await?;
    let mut spec =
        env.spec(vec![TeamConfig::single("fifo")])
            .gateways("fifo", 1, 2, sim("fixed:1ms"));
    spec.max_undelivered = 3;
    let mut published = subscribe_tasks(&env).await?;
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    run_source(&env.bus, "eth", 1, BLOCKS, 0.0, 1024).await?;
    collect_proofs(&env.bus, BLOCKS as usize, Duration::from_secs(90)).await?;

    assert_leaves_in_block_order(&mut published, BLOCKS as usize).await?;
    cluster.stop().await
}

/// Leaves that wait in the scheduler's queue are recorded in their plans as released, also
/// when a block's leaves go out in several batches (4 leaves, at most 3 undelivered). Such a
/// plan is written at the revision the scheduler created it at, or last wrote it at, without
/// being read first: a write from a stale copy would drop a leaf recorded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_released_in_batches_are_recorded_in_their_plans() -> anyhow::Result<()> {
    const BLOCKS: u64 = 40;
    let env = Env::new().await?;
    let mut spec = env.spec(vec![TeamConfig::split("batches", 4, 2)]).gateways(
        "batches",
        1,
        2,
        sim("fixed:1ms"),
    );
    spec.max_undelivered = 3;
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    run_source(&env.bus, "eth", 1, BLOCKS, 0.0, 1024).await?;
    let proofs = collect_proofs(&env.bus, BLOCKS as usize, Duration::from_secs(60)).await?;
    assert_eq!(
        numbers_by_team(&proofs)["batches"],
        (1..=BLOCKS).collect::<Vec<u64>>()
    );
    let plans = env.bus.kv(&env.bus.subjects.bucket_plans()).await?;
    for number in 1..=BLOCKS {
        let key = plan_key("batches", "eth", number);
        let (plan, _) = kv_get::<Plan>(&plans, &key)
            .await?
            .with_context(|| format!("no plan {key}"))?;
        let mut leaves: Vec<NodeId> = plan
            .released
            .iter()
            .filter(|n| n.level == 0)
            .copied()
            .collect();
        leaves.sort_unstable();
        assert_eq!(
            leaves,
            plan.workflow.leaves().collect::<Vec<NodeId>>(),
            "{key}: every leaf recorded as released, once"
        );
        assert!(
            plan.withdrawn.is_none() && plan.failed.is_none(),
            "{key}: {plan:?}"
        );
    }
    cluster.stop().await
}

/// A team's backlog waits in its plans on the bus, not in the scheduler's memory. With no
/// prover running, blocks past the held bound are planned and recorded, and the scheduler
/// holds at most the bound (plus one block's leaves). A restart recovers them the same way,
/// and once provers run every block comes back from its plan: each proved once, in order,
/// its leaves first sent in block order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_past_the_held_bound_waits_in_its_plans() -> anyhow::Result<()> {
    const BLOCKS: u64 = 60;
    const MAX_HELD: usize = 8;
    let env = Env::new().await?;
    let team = TeamConfig::split("deep", 4, 2);
    let leaf_class = team.class_of(0).to_string();
    let mut spec = env.spec(vec![team.clone()]);
    spec.max_undelivered = 2;
    spec.max_held = MAX_HELD;
    let deferred = || {
        push0_runtime::metrics()
            .blocks_deferred
            .with_label_values(&["deep"])
            .get()
    };
    let mut published = subscribe_tasks(&env).await?;

    let cluster = push0::cluster::LocalCluster::start(spec.clone()).await?;
    run_source(&env.bus, "eth", 1, BLOCKS, 0.0, 4096).await?;
    let consumer = env.bus.topology.scheduler_consumer().durable;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut accepted = env
            .bus
            .js
            .get_stream(env.bus.subjects.stream_accepted())
            .await?;
        let stored = accepted.info().await?.state.messages;
        let info = accepted.consumer_info(&consumer).await?;
        if stored >= BLOCKS && info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{stored} blocks accepted, not all planned in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The releaser sets the gauge at its polls while work is held (some always is here).
    let gauge = push0_runtime::metrics()
        .tasks_held
        .with_label_values(&["deep", &leaf_class]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge.get() == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the scheduler never reported held tasks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = gauge.get();
    let first = deferred();
    assert!(
        held as usize <= MAX_HELD + 3,
        "the scheduler holds {held} tasks, bound {MAX_HELD} (+ a block's leaves)"
    );
    assert!(
        first >= BLOCKS - (MAX_HELD as u64 + 2) / 4 - 1,
        "only {first} of {BLOCKS} blocks deferred"
    );
    cluster.stop().await?;

    let plans = env.bus.kv(&env.bus.subjects.bucket_plans()).await?;
    let mut keys = plans.keys().await?;
    let mut recorded = 0;
    while let Some(key) = keys.next().await {
        key?;
        recorded += 1;
    }
    assert_eq!(recorded, BLOCKS, "every block's plan is recorded");

    let cluster =
        push0::cluster::LocalCluster::start(spec.gateways("deep", 1, 2, sim("fixed:1ms"))).await?;
    let proofs = collect_proofs(&env.bus, BLOCKS as usize, Duration::from_secs(60)).await?;
    let extra = all_proofs(&env.bus, Duration::from_millis(500)).await?;
    assert_eq!(extra.len(), BLOCKS as usize, "exactly one proof per block");
    assert_eq!(
        numbers_by_team(&proofs)["deep"],
        (1..=BLOCKS).collect::<Vec<u64>>()
    );
    assert!(
        deferred() > first,
        "the restarted scheduler deferred the backlog again"
    );

    assert_leaves_in_block_order(&mut published, 4 * BLOCKS as usize).await?;
    cluster.stop().await
}

/// Reads the first publication of `leaves` leaf tasks from `published` (a subscription to
/// every task subject) and asserts that they went out in block order. A task published again
/// (a redelivered block queues its leaves again) keeps its first place.
async fn assert_leaves_in_block_order(
    published: &mut async_nats::Subscriber,
    leaves: usize,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    while seen.len() < leaves {
        let message = tokio::time::timeout(Duration::from_secs(10), published.next())
            .await?
            .context("subscription ended")?;
        let schema = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SCHEMA_HEADER))
            .map(|v| v.as_str());
        let task: Task = decode(schema, &message.payload)?;
        if task.node.level == 0 && seen.insert(task.task_id) {
            order.push(task.block.number);
        }
    }
    let overtaken: Vec<(u64, u64)> = order
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        overtaken.is_empty(),
        "leaves sent out of block order (earlier, later): {overtaken:?}"
    );
    Ok(())
}

/// A subscription to every task subject, in place on the server before this returns.
async fn subscribe_tasks(env: &Env) -> anyhow::Result<async_nats::Subscriber> {
    let published = env
        .bus
        .client
        .subscribe(env.bus.subjects.tasks_all())
        .await?;
    env.bus.client.flush().await?;
    Ok(published)
}
