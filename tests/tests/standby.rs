//! Process level: two schedulers and two aggregators, one of each active (it holds the role's
//! lease) and one standing by. SIGKILL the active scheduler, later the active aggregator, while
//! blocks keep arriving: the standbys take over and every block is proved exactly once per
//! team, in order.

use std::time::{Duration, Instant};

use push0::source::run_source;
use push0_runtime::Bus;
use push0_tests::*;

/// The pid in the lease of `role` (holders are named `<role>@<host>/<pid>`).
async fn lease_holder(bus: &Bus, role: &str) -> Option<u32> {
    let kv = bus.kv(&bus.subjects.bucket_leases()).await.ok()?;
    let value = kv.get(role).await.ok()??;
    String::from_utf8_lossy(&value)
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

/// Kills the active instance of `role` and waits for the standby to hold the lease; returns
/// how long that took.
async fn kill_active(bus: &Bus, system: &mut System, role: &str) -> anyhow::Result<Duration> {
    let active = eventually(Duration::from_secs(10), "an active instance", || {
        lease_holder(bus, role)
    })
    .await?;
    let process = system
        .processes
        .iter_mut()
        .find(|p| p.child.id() == active)
        .ok_or_else(|| anyhow::anyhow!("no process with pid {active} holds the {role} lease"))?;
    eprintln!("SIGKILL {} (pid {active}), the active {role}", process.name);
    process.child.kill()?;
    process.child.wait()?;
    let killed_at = Instant::now();
    let next = eventually(
        Duration::from_secs(15),
        "the standby takes over",
        || async { lease_holder(bus, role).await.filter(|pid| *pid != active) },
    )
    .await?;
    let took = killed_at.elapsed();
    eprintln!("{role}: pid {next} active {took:?} after the kill");
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standbys_take_over_from_killed_scheduler_and_aggregator() -> anyhow::Result<()> {
    let logs = Logs::new("standby")?;
    logs.report(standby(&logs)).await
}

async fn standby(logs: &Logs) -> anyhow::Result<()> {
    let env = Env::with_logs(logs).await?;
    let dir = &logs.dir;
    let teams = dir.join("teams.toml");
    std::fs::write(&teams, SYSTEM_TEAMS)?;
    let options = SystemOptions {
        sim_latency: "fixed:100ms",
        grace: "1s",
        extra: &[],
        instances: 2,
    };
    let mut system = System::start(&env.server.url(), &env.prefix, &teams, dir, 1, &options)?;

    let source_bus = env.bus.clone();
    let source =
        tokio::spawn(async move { run_source(&source_bus, "eth", 1, 40, 8.0, 2048).await });
    collect_proofs(&env.bus, 6, Duration::from_secs(30)).await?;
    let scheduler_failover = kill_active(&env.bus, &mut system, "scheduler").await?;
    collect_proofs(&env.bus, 30, Duration::from_secs(60)).await?;
    let aggregator_failover = kill_active(&env.bus, &mut system, "aggregator").await?;
    source.await??;
    collect_proofs(&env.bus, 80, Duration::from_secs(60)).await?;

    let proofs = all_proofs(&env.bus, Duration::from_secs(2)).await?;
    assert_once_in_order(&proofs, 2, 40, dir);
    // The lease lives 3 s unrenewed; the standby retries every second.
    for took in [scheduler_failover, aggregator_failover] {
        assert!(took < Duration::from_secs(6), "failover took {took:?}");
    }
    Ok(())
}
