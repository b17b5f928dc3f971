//! Process level: the real service binaries, SIGTERM with work in flight. Each exits cleanly
//! within a bound, and after a restart every block is proved exactly once, in order.

use std::time::Duration;

use push0::source::run_source;
use push0_tests::*;

const TEAMS: &str = r#"
[[team]]
name = "alpha"

[[team]]
name = "beta"
shape = "split"
parts = 3
arity = 2
"#;

struct System {
    processes: Vec<ServiceProcess>,
}

fn start_system(
    url: &str,
    prefix: &str,
    teams: &std::path::Path,
    logs: &std::path::Path,
    round: u32,
) -> anyhow::Result<System> {
    let teams = teams.to_str().unwrap();
    let mut processes = vec![
        ServiceProcess::start(
            "push0-scheduler",
            &format!("scheduler-{round}"),
            url,
            prefix,
            &["--teams", teams],
            logs,
        )?,
        ServiceProcess::start(
            "push0-ingest",
            &format!("ingest-{round}"),
            url,
            prefix,
            &[],
            logs,
        )?,
        ServiceProcess::start(
            "push0-aggregator",
            &format!("aggregator-{round}"),
            url,
            prefix,
            &[],
            logs,
        )?,
    ];
    for team in ["alpha", "beta"] {
        for i in 0..2 {
            processes.push(ServiceProcess::start(
                "push0-prover-gateway",
                &format!("gateway-{team}-{i}-{round}"),
                url,
                prefix,
                &[
                    "--team",
                    team,
                    "--slots",
                    "2",
                    "--sim-latency",
                    "fixed:400ms",
                    "--shutdown-grace",
                    "300ms",
                ],
                logs,
            )?);
        }
    }
    Ok(System { processes })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_work_in_flight_loses_nothing() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let dir = tempfile_dir()?;
    let teams = dir.join("teams.toml");
    std::fs::write(&teams, TEAMS)?;
    let url = env.server.url();

    let mut system = start_system(&url, &env.prefix, &teams, &dir, 1)?;
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
    let _system = start_system(&url, &env.prefix, &teams, &dir, 2)?;
    collect_proofs(&env.bus, 30, Duration::from_secs(60)).await?;
    let proofs = all_proofs(&env.bus, Duration::from_secs(1)).await?;
    assert_eq!(proofs.len(), 30, "exactly one proof per (team, block)");
    for (team, numbers) in numbers_by_team(&proofs) {
        assert_eq!(
            numbers,
            (1..=15).collect::<Vec<u64>>(),
            "team {team} in order, none lost"
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("push0-shutdown-{}", random_prefix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
