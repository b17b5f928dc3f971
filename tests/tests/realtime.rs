//! Head-of-chain scheduling under overload: a realtime team keeps its head block fast by
//! dropping stale work, and a sequential team finalizes in order with aggregations served
//! before newer leaf work.

use std::collections::BTreeMap;
use std::time::Duration;

use push0::source::{make_block, submit};
use push0_protocol::subjects::plan_key;
use push0_protocol::{Plan, TeamConfig};
use push0_runtime::{kv_get, metrics};
use push0_tests::*;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// One prover slot that proves a block in 400 ms. Unloaded, blocks come every second; then
/// three blocks arrive per 400 ms for a while. Stale blocks are withdrawn, and the blocks
/// that are proved keep (in the median) within 1.2x of the unloaded latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn realtime_overload_keeps_the_head_fast() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let team = TeamConfig::single("rt").realtime(450);
    let cluster = env.cluster(vec![team], 1, 1, "fixed:400ms").await?;
    let mut feed = push0::watch::ProofFeed::open(&env.bus).await?;

    let mut unloaded = Vec::new();
    for n in 1..=4 {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
        let proof = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await??
            .expect("proof");
        assert_eq!(proof.number, n);
        unloaded.push(proof.latency_ms);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let unloaded = median(unloaded);

    // Overload: 3 blocks per proving time, 30 blocks.
    let first = 5;
    let last = 34;
    for n in first..=last {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
        tokio::time::sleep(Duration::from_millis(133)).await;
    }
    // The head (the last block) is always proved: nothing newer can displace it.
    let mut loaded: BTreeMap<u64, u64> = BTreeMap::new();
    while !loaded.contains_key(&last) {
        let proof = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await??
            .expect("proof");
        assert!(
            loaded.insert(proof.number, proof.latency_ms).is_none(),
            "one proof per block"
        );
    }
    let plans = env.bus.kv(&env.bus.subjects.bucket_plans()).await?;
    let mut withdrawn = 0;
    for n in first..=last {
        let (plan, _) = kv_get::<Plan>(&plans, &plan_key("rt", "eth", n))
            .await?
            .expect("every block planned");
        if plan.withdrawn.is_some() {
            withdrawn += 1;
            assert!(!loaded.contains_key(&n), "no proof of withdrawn block {n}");
        }
    }
    let proved = loaded.len();
    let head_median = median(loaded.values().copied().collect());
    println!(
        "unloaded median {unloaded} ms; overloaded: {proved} proved, {withdrawn} withdrawn, median {head_median} ms"
    );
    assert!(
        withdrawn >= 10,
        "3x overload must drop stale blocks, {withdrawn} withdrawn"
    );
    assert!(proved >= 5, "the slot keeps proving, {proved} proved");
    assert!(
        head_median as f64 <= unloaded as f64 * 1.2,
        "proved blocks' median latency {head_median} ms is within 1.2x of {unloaded} ms"
    );
    let dropped = metrics()
        .deadline_outcomes
        .with_label_values(&["rt", "dropped"])
        .get();
    assert_eq!(dropped, withdrawn, "every withdrawal counted as a miss");
    cluster.stop().await
}

/// A split team with one slot and a backlog of 20 blocks: proofs are finalized strictly in
/// order, and with the scheduler's bound of one undelivered task, a block's aggregation is
/// proved before any leaf of the block two ahead (a FIFO queue would prove every leaf first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_backlog_serves_aggregation_before_newer_leaves() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let team = TeamConfig::split("seq", 2, 2);
    let mut spec = env
        .spec(vec![team.clone()])
        .gateways("seq", 1, 1, sim("fixed:30ms"));
    spec.max_undelivered = 1;
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    for n in 1..=20 {
        submit(&env.bus, &make_block("eth", n, 2048)).await?;
    }
    let proofs = collect_proofs(&env.bus, 20, Duration::from_secs(60)).await?;
    let order: Vec<u64> = proofs.iter().map(|p| p.number).collect();
    assert_eq!(
        order,
        (1..=20).collect::<Vec<_>>(),
        "finalized in block order"
    );

    // With one slot, the order parts were recorded in is the order they were pulled in.
    let records = part_records(&env.bus).await?;
    let pulls: Vec<(u64, u32)> = records
        .iter()
        .map(|r| (r.block.number, r.node.level))
        .collect();
    assert_eq!(pulls.len(), 60, "2 leaves and 1 aggregation per block");
    for (position, (number, level)) in pulls.iter().enumerate() {
        if *level == 0 {
            continue;
        }
        let overtaken = pulls[..position]
            .iter()
            .filter(|(n, l)| *l == 0 && *n >= number + 2)
            .count();
        assert_eq!(
            overtaken, 0,
            "aggregation of block {number} waited behind newer leaf work: {pulls:?}"
        );
    }
    cluster.stop().await
}
