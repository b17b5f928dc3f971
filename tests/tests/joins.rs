//! Join signals under concurrency: the aggregator records a part, then reads its siblings, and
//! signals their parent when all are recorded. Sibling results handled at the same moment, and
//! two results of one node, must still signal every parent, once, with the children as
//! recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use push0_protocol::subjects::part_key;
use push0_protocol::{NodeId, PartRecord, Ready, TeamConfig};
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
