//! The chaos drill, small: the same program as `push0-chaos` (every fault of the full drill),
//! over fewer blocks. Its invariants must hold.

use push0_tests::Logs;
use push0_tests::chaos::{ChaosConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_drill_keeps_every_invariant() -> anyhow::Result<()> {
    let logs = Logs::new("chaos")?;
    logs.report(drill(&logs)).await
}

async fn drill(logs: &Logs) -> anyhow::Result<()> {
    let mut config = ChaosConfig::new(120, logs.dir.clone());
    config.rate = 5.0;
    // Twice the full drill's kill rate: in a run this short, kills every 2 s left, in two
    // runs of seven, no kill outside the NATS outage that caught a task in flight, and so no
    // reassignment to measure.
    config.gateway_kill_every = std::time::Duration::from_secs(1);
    let report = run(&config).await?;
    eprint!("{}", report.render());
    assert!(
        report.holds(),
        "invariants broken; logs in {}",
        config.logs.display()
    );
    assert!(
        !report.reassign_ms.is_empty(),
        "gateway kills caused reassignments"
    );
    Ok(())
}
