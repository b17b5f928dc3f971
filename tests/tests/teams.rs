//! Teams at runtime through the operator's tool (`push0 team add|remove`, `push0 status`),
//! and the zero-capacity alert.

use anyhow::Context as _;
use std::process::Command;
use std::time::Duration;

use push0::source::{make_block, submit};
use push0_protocol::{Alert, TeamConfig, TeamStatus, WireMessage, decode};
use push0_runtime::metrics;
use push0_tests::*;

fn push0(env: &Env, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("push0"))
        .args(args)
        .env("PUSH0_NATS_URL", env.server.url())
        .env("PUSH0_PREFIX", &env.prefix)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "push0 {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

async fn team_status(env: &Env, team: &str) -> anyhow::Result<Option<TeamStatus>> {
    let kv = env.bus.kv(&env.bus.subjects.bucket_status()).await?;
    Ok(match kv.get(team).await? {
        Some(bytes) => Some(decode::<TeamStatus>(Some(TeamStatus::SCHEMA), &bytes)?),
        None => None,
    })
}

/// `alpha` proves everything; `slow` is removed mid-run with a backlog, which is withdrawn;
/// `late` is added mid-run and proves exactly the blocks submitted after it was added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_added_and_another_removed_mid_run() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let teams = vec![TeamConfig::single("alpha"), TeamConfig::single("slow")];
    let spec = env
        .spec(teams)
        .gateways("alpha", 1, 2, sim("fixed:5ms"))
        .gateways("slow", 1, 1, sim("fixed:300ms"))
        // Its gateway waits until the team is registered.
        .gateways("late", 1, 2, sim("fixed:5ms"));
    let cluster = push0::cluster::LocalCluster::start(spec).await?;

    for n in 1..=10 {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
    }
    // alpha's ten proofs arrive while slow has barely started its backlog.
    let first = collect_proofs(&env.bus, 11, Duration::from_secs(20)).await?;
    assert_eq!(first.iter().filter(|p| p.team == "alpha").count(), 10);

    let out = push0(&env, &["team", "remove", "slow"])?;
    assert!(out.contains("team slow removed"), "{out}");
    let withdrawn = || {
        metrics()
            .tasks_withdrawn
            .with_label_values(&["slow", "team_removed"])
            .get()
    };
    eventually(Duration::from_secs(5), "slow's work withdrawn", || async {
        (withdrawn() > 0).then_some(())
    })
    .await?;

    let out = push0(
        &env,
        &["team", "add", "late", "--shape", "split", "--parts", "2"],
    )?;
    assert!(out.contains("team late registered"), "{out}");
    // The scheduler writes a status record for every team it knows.
    eventually(
        Duration::from_secs(5),
        "a status record for late",
        || async { team_status(&env, "late").await.ok().flatten() },
    )
    .await?;
    let listed = push0(&env, &["team", "list"])?;
    assert!(
        listed.contains("late") && !listed.contains("slow"),
        "{listed}"
    );

    for n in 11..=20 {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
    }
    eventually(Duration::from_secs(30), "ten proofs by late", || async {
        let proofs = all_proofs(&env.bus, Duration::ZERO)
            .await
            .unwrap_or_default();
        (numbers_by_team(&proofs).get("late").map(Vec::len) == Some(10)).then_some(())
    })
    .await?;
    let proofs = all_proofs(&env.bus, Duration::from_millis(700)).await?;
    let by_team = numbers_by_team(&proofs);
    assert_eq!(by_team["alpha"], (1..=20).collect::<Vec<_>>());
    assert_eq!(by_team["late"], (11..=20).collect::<Vec<_>>());
    let slow = by_team.get("slow").cloned().unwrap_or_default();
    assert!(
        slow.len() < 10 && slow.iter().all(|n| *n <= 10),
        "slow stopped after removal: {slow:?}"
    );
    cluster.stop().await
}

/// All of a team's gateways stop while it has work: `no_live_prover` is raised (log, metric,
/// status, `push0 status`), and cleared when a gateway returns and proves the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_capacity_alert_fires_and_clears() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut spec =
        env.spec(vec![TeamConfig::single("zed")])
            .gateways("zed", 1, 1, sim("fixed:5ms"));
    spec.alerts.no_prover_after = Duration::from_secs(1);
    let mut cluster = push0::cluster::LocalCluster::start(spec).await?;
    submit(&env.bus, &make_block("eth", 1, 1024)).await?;
    collect_proofs(&env.bus, 1, Duration::from_secs(10)).await?;
    let active = || {
        metrics()
            .alert_active
            .with_label_values(&["zed", Alert::NoLiveProver.as_str()])
            .get()
    };
    assert_eq!(active(), 0);

    cluster.stop_gateways("zed").await?;
    submit(&env.bus, &make_block("eth", 2, 1024)).await?;
    eventually(Duration::from_secs(10), "the alert raised", || async {
        (active() == 1).then_some(())
    })
    .await?;
    let status = team_status(&env, "zed").await?.expect("status");
    assert_eq!(status.alerts, vec![Alert::NoLiveProver]);
    assert_eq!(status.live_gateways, 0);
    let shown = push0(&env, &["status"])?;
    println!("{shown}");
    assert!(shown.contains("no_live_prover"), "{shown}");
    // Ethproofs' figures: 2 blocks, 1 proved (within 10 s); block 2 is waiting, but too
    // recently to count against liveness or as stuck.
    let figures = shown
        .split_once("Ethproofs figures")
        .and_then(|(_, rest)| rest.lines().find(|l| l.trim_start().starts_with("zed")))
        .with_context(|| format!("no Ethproofs figures for zed in {shown}"))?;
    let cells: Vec<&str> = figures.split_whitespace().collect();
    assert_eq!(
        cells,
        ["zed", "-", "2", "1", "100.0", "%", "100.0", "%", "0"],
        "{figures}"
    );

    cluster
        .add_gateways(&push0::cluster::GatewaySpec {
            team: "zed".into(),
            count: 1,
            slots: 1,
            prover: sim("fixed:5ms"),
            bundler: None,
            priority: 0,
        })
        .await?;
    let proofs = collect_proofs(&env.bus, 2, Duration::from_secs(10)).await?;
    assert_eq!(proofs[1].number, 2);
    eventually(Duration::from_secs(10), "the alert cleared", || async {
        (active() == 0).then_some(())
    })
    .await?;
    let status = team_status(&env, "zed").await?.expect("status");
    assert!(status.alerts.is_empty(), "{:?}", status.alerts);
    assert_eq!((status.live_gateways, status.live_slots), (1, 1));
    cluster.stop().await
}

/// Two tiers in one consumer group: a fast gateway pulling at priority 0 and a slow one at
/// priority 5. While the fast one is free it takes every task; the slow one gets work only
/// when the fast one is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_tier_takes_work_before_a_slow_one() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut spec = env.spec(vec![TeamConfig::single("tiers")]);
    for priority in [0, 5] {
        spec.gateways.push(push0::cluster::GatewaySpec {
            team: "tiers".into(),
            count: 1,
            slots: 1,
            prover: sim("fixed:100ms"),
            bundler: None,
            priority,
        });
    }
    // Gateways are named in start order: tiers-gw0 is the fast tier, tiers-gw1 the slow one.
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    // Both gateways have a pull waiting before the first task exists.
    let stream = env
        .bus
        .js
        .get_stream(env.bus.subjects.stream_tasks())
        .await?;
    let durable = env.bus.subjects.task_consumer("tiers", "prove");
    eventually(Duration::from_secs(10), "both tiers pulling", || async {
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable)
            .await
            .ok()?;
        (consumer.info().await.ok()?.num_waiting >= 2).then_some(())
    })
    .await?;

    for n in 1..=8u64 {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
        eventually(Duration::from_secs(10), "block proved", || async {
            let proofs = all_proofs(&env.bus, Duration::ZERO).await.ok()?;
            (proofs.len() as u64 == n).then_some(())
        })
        .await?;
    }
    let by_gateway = |records: &[push0_protocol::PartRecord], gateway: &str| {
        records.iter().filter(|r| r.gateway == gateway).count()
    };
    let records = part_records(&env.bus).await?;
    assert_eq!(
        (
            by_gateway(&records, "tiers-gw0"),
            by_gateway(&records, "tiers-gw1")
        ),
        (8, 0),
        "one block at a time: the fast tier takes all of them"
    );

    for n in 9..=14 {
        submit(&env.bus, &make_block("eth", n, 1024)).await?;
    }
    collect_proofs(&env.bus, 14, Duration::from_secs(20)).await?;
    let records = part_records(&env.bus).await?;
    let slow = by_gateway(&records, "tiers-gw1");
    assert!(
        slow > 0 && slow < 6,
        "a burst overflows to the slow tier ({slow} of 6 there)"
    );
    cluster.stop().await
}
