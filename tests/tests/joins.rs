//! Join signals: the aggregator records a part, then finds its siblings (among the parts it
//! recorded itself, or else in the parts bucket), and signals their parent when all are
//! recorded. Sibling results handled at the same moment, two results of one node, and a
//! sibling recorded by another aggregator must still signal every parent, once, with the
//! children as recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use push0_protocol::subjects::part_key;
use push0_protocol::{Blob, NodeId, PartRecord, Ready, TeamConfig};
use push0_runtime::kv_get;
use push0_runtime::registry::register_team;
use push0_tests::*;
use tokio_util::sync::CancellationToken;

/// Waits until the ready stream holds `count` signals, then returns them all.
async fn signals(bus: &push0_runtime::Bus, count: u64) -> anyhow::Result<Vec<Ready>> {
    let stream = bus.subjects.stream_ready();
    let filter = bus.subjects.ready_all();
    eventually(
        Duration::from_secs(20),
        &format!("{count} join signals"),
        || async { (bus.stored_on(&stream, &filter).await.ok()? >= count).then_some(()) },
    )
    .await?;
    ready_signals(bus).await
}

/// Team beta splits each block into 4 leaves joined in pairs. Every result of a level is
/// published at once, each node's twice (two gateways, different proofs), so siblings and
/// duplicates are handled side by side. Each level must signal each parent exactly once, and
/// a signal's children must be the parts as recorded (the first of the two results), in order.
#[tokio::test]
async fn siblings_recorded_at_once_signal_their_parent_once() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let bus = &env.bus;
    let team = TeamConfig::split("beta", 4, 2);
    register_team(bus, &team).await?;
    let w = team.workflow();
    let shutdown = CancellationToken::new();
    let aggregator = tokio::spawn(push0_aggregator::run(bus.clone(), shutdown.clone()));
    let parts = bus.kv(&bus.subjects.bucket_parts()).await?;
    let blocks = 1..=12u64;
    let results = bus.subjects.results("beta");
    let mut expected = 0;
    for level in 0..2u32 {
        for n in blocks.clone() {
            for node in w.nodes().into_iter().filter(|node| node.level == level) {
                for gateway in [1u8, 2] {
                    let proof = vec![n as u8, level as u8, node.index as u8, gateway];
                    let result = proved_node("beta", eth_block(n), node, w, proof);
                    bus.publish(results.clone(), &result, None).await?;
                }
            }
        }
        expected += w.level_widths()[level as usize + 1] as u64 * blocks.clone().count() as u64;
        let ready = signals(bus, expected).await?;
        let mut by_parent: BTreeMap<(u64, NodeId), usize> = BTreeMap::new();
        for signal in &ready {
            *by_parent
                .entry((signal.block.number, signal.node))
                .or_default() += 1;
            let children = w.children(signal.node);
            assert_eq!(signal.children.len(), children.len(), "{signal:?}");
            for (proof, child) in signal.children.iter().zip(children) {
                assert_eq!(proof.node, child, "children in order");
                let key = part_key("beta", &signal.block, child);
                let (recorded, _) = kv_get::<PartRecord>(&parts, &key)
                    .await?
                    .expect("a signalled child is recorded");
                assert_eq!(proof.proof, recorded.proof, "{key}: the recorded proof");
            }
        }
        assert_eq!(by_parent.len() as u64, expected, "every parent signalled");
        assert!(by_parent.values().all(|n| *n == 1), "{by_parent:?}");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), aggregator).await;
    Ok(())
}

/// A sibling recorded by another aggregator (here: one stopped before the next starts, so
/// nothing it kept is known) is read back from the parts bucket, and the join is signalled
/// with it.
#[tokio::test]
async fn a_sibling_recorded_by_another_aggregator_is_read_back() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let bus = &env.bus;
    let team = TeamConfig::split("beta", 4, 2);
    register_team(bus, &team).await?;
    let w = team.workflow();
    let parts = bus.kv(&bus.subjects.bucket_parts()).await?;
    let results = bus.subjects.results("beta");
    let block = eth_block(7);
    let (first, second) = (NodeId { level: 0, index: 0 }, NodeId { level: 0, index: 1 });

    let shutdown = CancellationToken::new();
    let earlier = tokio::spawn(push0_aggregator::run(bus.clone(), shutdown.clone()));
    let result = proved_node("beta", block.clone(), first, w, vec![0xaa]);
    bus.publish(results.clone(), &result, None).await?;
    let key = part_key("beta", &block, first);
    eventually(
        Duration::from_secs(20),
        "the first part recorded",
        || async { kv_get::<PartRecord>(&parts, &key).await.ok()? },
    )
    .await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), earlier).await???;

    let shutdown = CancellationToken::new();
    let later = tokio::spawn(push0_aggregator::run(bus.clone(), shutdown.clone()));
    let result = proved_node("beta", block.clone(), second, w, vec![0xbb]);
    bus.publish(results, &result, None).await?;
    let ready = signals(bus, 1).await?;
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0].node, w.parent(first).expect("a leaf has a parent"));
    let proofs: Vec<_> = ready[0].children.iter().map(|c| c.proof.clone()).collect();
    assert_eq!(
        proofs,
        vec![Blob::Inline(vec![0xaa]), Blob::Inline(vec![0xbb])],
        "the sibling as the earlier aggregator recorded it"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), later).await;
    Ok(())
}
