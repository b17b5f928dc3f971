//! Per-class task settings (`[team.class.<name>]`): each class's consumer gets its own ack wait,
//! a changed setting reaches an existing consumer in place, and a prover that runs past its
//! class's time limit is killed, the delivery counted as failed, and the task dead-lettered
//! after the class's deliveries.

use std::time::Duration;

use push0::source::{make_block, submit};
use push0_protocol::{ClassSettings, DlqReason, TeamConfig};
use push0_prover_gateway::prover::{ExecProver, Prover};
use push0_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_consumer_has_its_settings_and_follows_a_change() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::split("classy", 4, 2);
    team.leaf_class = "leaf".into();
    team.aggregate_class = "agg".into();
    team.class.insert(
        "agg".into(),
        ClassSettings {
            ack_wait_ms: Some(9_000),
            ..Default::default()
        },
    );
    assert!(team.problems().is_empty(), "{:?}", team.problems());
    let declare = |team: TeamConfig, class: &'static str| {
        let bus = env.bus.clone();
        async move {
            let spec = bus.topology.task_consumer(&team, class);
            let mut consumer = bus.ensure_consumer(&spec).await?;
            anyhow::Ok(consumer.info().await?.clone())
        }
    };
    let leaf = declare(team.clone(), "leaf").await?;
    let agg = declare(team.clone(), "agg").await?;
    assert_eq!(leaf.config.ack_wait, Duration::from_secs(3));
    assert_eq!(agg.config.ack_wait, Duration::from_secs(9));
    // The server keeps no delivery limit: the gateways do (see `poison`).
    assert_eq!(leaf.config.max_deliver, -1);
    assert!(leaf.config.max_waiting > 512, "{}", leaf.config.max_waiting);

    // The team's leaves get a longer deadline: the existing consumer is updated, not replaced.
    team.ack_wait_ms = 5_000;
    let changed = declare(team.clone(), "leaf").await?;
    assert_eq!(changed.config.ack_wait, Duration::from_secs(5));
    assert_eq!(changed.created, leaf.created, "the same consumer");
    assert_eq!(
        declare(team, "agg").await?.config.ack_wait,
        Duration::from_secs(9),
        "the class's own setting still wins"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prover_past_its_class_time_limit_is_killed_and_the_task_dead_lettered()
-> anyhow::Result<()> {
    let env = Env::new().await?;
    let mut team = TeamConfig::single("slow");
    team.max_deliver = 5;
    team.class.insert(
        "prove".into(),
        ClassSettings {
            max_deliver: Some(2),
            time_limit_ms: Some(1_000),
            ..Default::default()
        },
    );
    // A prover that hangs: only the class's time limit ends it (its own timeout is 5 minutes).
    let prover = Prover::Exec(ExecProver {
        program: "bash".into(),
        args: vec!["-c".into(), "sleep 300".into(), "hang".into()],
        work_dir: std::env::temp_dir(),
        proof_system: "sha256".into(),
        timeout: Duration::from_secs(300),
        threads: Some(1),
    });
    let spec = env.spec(vec![team]).gateways("slow", 1, 1, prover);
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    submit(&env.bus, &make_block("eth", 1, 1000)).await?;
    let records = dead_letters_appear(&env.bus, Duration::from_secs(30)).await?;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.reason, DlqReason::MaxDeliveries);
    assert!(
        record.detail.contains("2 deliveries"),
        "the class's limit, not the team's 5: {}",
        record.detail
    );
    assert_eq!(record.history.len(), 2, "{:#?}", record.history);
    assert!(
        record
            .history
            .iter()
            .all(|a| a.error.contains("class time limit")),
        "{:#?}",
        record.history
    );
    cluster.stop().await
}
