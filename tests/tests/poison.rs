//! A poison task (its prover fails every time) is dead-lettered after MaxDeliver with the block
//! marked failed for the team, leaves the work queue, and — once the cause is fixed — an
//! operator's `push0 dlq replay` gets the block proved, in order.

use std::time::Duration;

use push0::source::{make_block, submit};
use push0_protocol::subjects::{final_key, plan_key};
use push0_protocol::{DlqReason, PartRecord, Plan, TeamConfig};
use push0_prover_gateway::prover::{ExecProver, Prover};
use push0_runtime::kv_get;
use push0_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_task_is_dead_lettered_then_replayed() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::single("rollup");
    team.max_deliver = 2;
    let marker = std::env::temp_dir().join(format!("push0-poison-{}", env.prefix));
    std::fs::write(&marker, b"poisoned")?;
    let prover = Prover::Exec(ExecProver {
        program: push0_testkit::repo_root().join("tests/provers/fail-while"),
        args: vec![marker.display().to_string(), "2".into()],
        work_dir: std::env::temp_dir(),
        proof_system: "sha256".into(),
        timeout: Duration::from_secs(30),
        threads: Some(1),
    });
    let cluster =
        push0::cluster::LocalCluster::start(env.spec(vec![team]).gateways("rollup", 1, 2, prover))
            .await?;
    for n in 1..=3 {
        submit(&env.bus, &make_block("eth", n, 1000)).await?;
    }
    let records = eventually(
        Duration::from_secs(30),
        "the poison task's dead letter",
        || async {
            let r = dead_letters(&env.bus).await.ok()?;
            (!r.is_empty()).then_some(r)
        },
    )
    .await?;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.reason, DlqReason::MaxDeliveries);
    assert_eq!(record.service, "scheduler");
    assert_eq!(record.block.as_ref().map(|b| b.number), Some(2));
    assert!(record.detail.contains("2 deliveries"), "{}", record.detail);
    // Each delivery's failure, as the gateway reported it.
    assert_eq!(
        record
            .history
            .iter()
            .map(|a| (a.delivery, a.gateway.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "rollup-gw0"), (2, "rollup-gw0")],
        "{:#?}",
        record.history
    );
    assert!(
        record.history.iter().all(|a| !a.error.is_empty()),
        "{:#?}",
        record.history
    );

    let plans = env.bus.kv(&env.bus.subjects.bucket_plans()).await?;
    let (plan, _) = kv_get::<Plan>(&plans, &plan_key("rollup", "eth", 2))
        .await?
        .expect("plan");
    assert!(
        plan.failed.is_some(),
        "block 2 is marked failed for the team"
    );
    let tasks = env
        .bus
        .js
        .get_stream(env.bus.subjects.stream_tasks())
        .await?;
    eventually(
        Duration::from_secs(5),
        "the poison task to leave the work queue",
        || {
            let mut tasks = tasks.clone();
            async move { (tasks.info().await.ok()?.state.messages == 0).then_some(()) }
        },
    )
    .await?;
    // Block 3 is proved, yet not published: it waits behind the failed block 2.
    let parts = env.bus.kv(&env.bus.subjects.bucket_parts()).await?;
    eventually(
        Duration::from_secs(20),
        "block 3's proof to be recorded",
        || {
            let parts = parts.clone();
            async move {
                kv_get::<PartRecord>(&parts, &final_key("rollup", "eth", 3))
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            }
        },
    )
    .await?;
    let proofs = all_proofs(&env.bus, Duration::ZERO).await?;
    assert_eq!(
        proofs.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1],
        "block 3 waits behind the failed block 2"
    );

    // The operator fixes the cause and replays the dead letter.
    std::fs::remove_file(&marker)?;
    let dlq_seq = {
        let mut dlq = env.bus.js.get_stream(env.bus.subjects.stream_dlq()).await?;
        dlq.info().await?.state.last_sequence
    };
    let dlq_cli = |command: &[&str]| {
        let url = env.server.url();
        let mut args = vec!["dlq", "--nats-url", &url, "--prefix", &env.prefix];
        args.extend_from_slice(command);
        std::process::Command::new(binary("push0"))
            .args(&args)
            .output()
    };
    let list = dlq_cli(&["list"])?;
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing.contains("max_deliveries") && listing.contains("eth/2"),
        "{listing}"
    );
    let replay = dlq_cli(&["replay", &dlq_seq.to_string()])?;
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let proofs = collect_proofs(&env.bus, 3, Duration::from_secs(30)).await?;
    assert_eq!(
        proofs.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    cluster.stop().await
}
