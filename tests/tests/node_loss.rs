//! A 3-node JetStream cluster on loopback, every stream and bucket with 3 replicas, the real
//! service binaries connected to all three nodes. The node leading the tasks stream is killed
//! mid-run and later restarted: every block is still proved exactly once per team, in order.

use std::time::Duration;

use push0::source::make_block;
use push0_natsd::NatsCluster;
use push0_runtime::Bus;
use push0_tests::chaos::{leader_of, submit_until_stored};
use push0_tests::*;

/// Waits until `count` proofs are on the proofs stream. Polls rather than follows: a read
/// that times out while the cluster elects a new leader is simply tried again.
async fn proofs_reach(bus: &Bus, count: usize, timeout: Duration) -> anyhow::Result<()> {
    eventually(timeout, &format!("{count} proofs"), || async {
        let proofs = all_proofs(bus, Duration::ZERO).await.ok()?;
        (proofs.len() >= count).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_nats_node_mid_run_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let logs = Logs::new("node-loss")?;
    logs.report(node_loss(&logs)).await
}

async fn node_loss(logs: &Logs) -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start_nodes(3, Some(&logs.dir))?;
    let url = cluster.url();
    let prefix = random_prefix();
    let dir = &logs.dir;
    let teams = dir.join("teams.toml");
    std::fs::write(&teams, SYSTEM_TEAMS)?;
    let options = SystemOptions {
        sim_latency: "fixed:50ms",
        grace: "1s",
        extra: &["--replicas", "3"],
        instances: 1,
    };
    apply_topology(&url, &prefix, 3).await?;
    let _system = System::start(&url, &prefix, &teams, dir, 1, &options)?;
    let bus = Bus::connect(&url, &prefix, "node-loss-test").await?;

    for n in 1..=15 {
        submit_until_stored(&bus, &make_block("eth", n, 2048)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proofs_reach(&bus, 10, Duration::from_secs(60)).await?;
    let victim = leader_of(&bus, &bus.subjects.stream_tasks()).await?;
    cluster.kill(victim);
    eprintln!("killed node n{victim}, the tasks stream's leader");
    for n in 16..=40 {
        submit_until_stored(&bus, &make_block("eth", n, 2048)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proofs_reach(&bus, 80, Duration::from_secs(90)).await?;
    cluster.restart(victim)?;
    for n in 41..=50 {
        submit_until_stored(&bus, &make_block("eth", n, 2048)).await?;
    }
    proofs_reach(&bus, 100, Duration::from_secs(60)).await?;

    // Settle, so a late duplicate would show up too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let proofs = eventually(Duration::from_secs(20), "the proofs stream", || async {
        all_proofs(&bus, Duration::ZERO).await.ok()
    })
    .await?;
    assert_once_in_order(&proofs, 2, 50, dir);
    for p in &proofs {
        let block = make_block("eth", p.number, 2048);
        assert_eq!(p.hash, block.hash, "proof of the submitted block");
    }
    Ok(())
}
