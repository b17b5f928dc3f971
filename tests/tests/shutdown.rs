//! Process level: the real service binaries, SIGTERM with work in flight. Each exits cleanly
//! within a bound, and after a restart every block is proved exactly once, in order.

use std::time::Duration;

use push0::source::run_source;
use push0_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_work_in_flight_loses_nothing() -> anyhow::Result<()> {
    let logs = Logs::new("shutdown")?;
    logs.report(shutdown(&logs)).await
}

async fn shutdown(logs: &Logs) -> anyhow::Result<()> {
    let env = Env::with_logs(logs).await?;
    let dir = &logs.dir;
    let teams = dir.join("teams.toml");
    std::fs::write(&teams, SYSTEM_TEAMS)?;
    let url = env.server.url();

    let options = SystemOptions {
        sim_latency: "fixed:400ms",
        grace: "300ms",
        extra: &[],
        instances: 1,
    };
    let mut system = System::start(&url, &env.prefix, &teams, dir, 1, &options)?;
    run_source(&env.bus, "eth", 1, 12, 0.0, 6000).await?;
    // Work is in flight once the first proofs appear: most blocks are still being proved.
    collect_proofs(&env.bus, 2, Duration::from_secs(30)).await?;
    for p in &system.processes {
        p.terminate()?;
    }
    let bound = Duration::from_secs(8);
    for p in &mut system.processes {
        let (status, took) = p.wait_bounded(bound)?;
        assert!(
            status.success(),
            "{} exited with {status}; log in {}",
            p.name,
            dir.display()
        );
        eprintln!("{} stopped in {took:?}", p.name);
    }
    let done_before = all_proofs(&env.bus, Duration::ZERO).await?.len();
    assert!(
        done_before < 24,
        "the shutdown came with work in flight ({done_before} of 24 proved)"
    );

    // More blocks arrive while nothing runs; they wait on the stream.
    run_source(&env.bus, "eth", 13, 3, 0.0, 6000).await?;
    let _system = System::start(&url, &env.prefix, &teams, dir, 2, &options)?;
    collect_proofs(&env.bus, 30, Duration::from_secs(60)).await?;
    let proofs = all_proofs(&env.bus, Duration::from_secs(1)).await?;
    assert_once_in_order(&proofs, 2, 15, dir);
    Ok(())
}
