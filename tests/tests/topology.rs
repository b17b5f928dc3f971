//! The topology has one owner. Services check it read-only at start: against a server without
//! it they wait, then exit naming the command that fixes it, and once it is applied they run.
//! `push0 topology apply` converges what exists and is safe to run twice at once on a 3-node
//! cluster while a node restarts.

use std::time::Duration;

use push0::source::run_source;
use push0_natsd::NatsCluster;
use push0_runtime::Bus;
use push0_runtime::topology::{self, Action};
use push0_tests::*;

/// Starts one service binary with `args` beside the common flags, its log among `logs`.
fn service(
    logs: &Logs,
    binary: &str,
    name: &str,
    url: &str,
    prefix: &str,
    args: &[&str],
) -> anyhow::Result<ServiceProcess> {
    ServiceProcess::start(binary, name, url, prefix, args, &logs.dir)
}

fn log_of(logs: &Logs, name: &str) -> String {
    std::fs::read_to_string(logs.dir.join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_wait_for_the_topology_and_name_the_fix() -> anyhow::Result<()> {
    let logs = Logs::new("topology-wait")?;
    logs.report(services_wait(&logs)).await
}

async fn services_wait(logs: &Logs) -> anyhow::Result<()> {
    let server = push0_natsd::NatsServer::start_logged(Some(logs.dir.join("nats.log")))?;
    let url = server.url();
    let prefix = random_prefix();
    let teams = logs.dir.join("teams.toml");
    std::fs::write(&teams, SYSTEM_TEAMS)?;
    let teams = teams.to_str().expect("utf-8 path");
    let short = ["--topology-wait", "2s"];
    let gateway = [
        "--topology-wait",
        "2s",
        "--team",
        "alpha",
        "--sim-latency",
        "fixed:1ms",
    ];
    let scheduler = ["--topology-wait", "2s", "--teams", teams];
    let mut early = vec![
        service(logs, "push0-ingest", "early-ingest", &url, &prefix, &short)?,
        service(
            logs,
            "push0-aggregator",
            "early-aggregator",
            &url,
            &prefix,
            &short,
        )?,
        service(
            logs,
            "push0-scheduler",
            "early-scheduler",
            &url,
            &prefix,
            &scheduler,
        )?,
        service(
            logs,
            "push0-prover-gateway",
            "early-gateway",
            &url,
            &prefix,
            &gateway,
        )?,
    ];
    for p in &mut early {
        let (status, _) = p.wait_bounded(Duration::from_secs(20))?;
        let log = log_of(logs, &p.name);
        assert!(!status.success(), "{} ran without a topology", p.name);
        assert!(
            log.contains("topology not ready, waiting for it"),
            "{} waited before giving up:\n{log}",
            p.name
        );
        assert!(
            log.contains("push0 topology apply") && log.contains("is missing"),
            "{} names what is missing and the fix:\n{log}",
            p.name
        );
    }

    // Applied at one replica, a service that expects three is told what differs.
    apply_topology(&url, &prefix, 1).await?;
    let mut wrong = service(
        logs,
        "push0-ingest",
        "replicas-ingest",
        &url,
        &prefix,
        &["--topology-wait", "1s", "--replicas", "3"],
    )?;
    let (status, _) = wrong.wait_bounded(Duration::from_secs(20))?;
    let log = log_of(logs, "replicas-ingest");
    assert!(!status.success(), "a replica mismatch is refused");
    assert!(
        log.contains("num_replicas: 1 -> 3"),
        "the mismatch is named:\n{log}"
    );

    // With the topology there, the whole system runs and proves blocks.
    let options = SystemOptions {
        sim_latency: "fixed:5ms",
        grace: "1s",
        extra: &[],
        instances: 1,
    };
    let teams_path = logs.dir.join("teams.toml");
    let _system = System::start(&url, &prefix, &teams_path, &logs.dir, 1, &options)?;
    let bus = Bus::connect(&url, &prefix, "topology-test").await?;
    run_source(&bus, "eth", 1, 5, 0.0, 1024).await?;
    collect_proofs(&bus, 10, Duration::from_secs(60)).await?;
    let proofs = all_proofs(&bus, Duration::from_millis(500)).await?;
    assert_once_in_order(&proofs, 2, 5, &logs.dir);
    Ok(())
}

/// A service started before the topology keeps waiting and starts once it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_service_starts_once_the_topology_is_applied() -> anyhow::Result<()> {
    let logs = Logs::new("topology-late")?;
    logs.report(late_apply(&logs)).await
}

async fn late_apply(logs: &Logs) -> anyhow::Result<()> {
    let server = push0_natsd::NatsServer::start_logged(Some(logs.dir.join("nats.log")))?;
    let url = server.url();
    let prefix = random_prefix();
    let mut ingest = service(
        logs,
        "push0-ingest",
        "ingest",
        &url,
        &prefix,
        &["--topology-wait", "60s"],
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ingest.child.try_wait()?.is_none(), "ingest waits");
    assert!(
        log_of(logs, "ingest").contains("topology not ready"),
        "ingest says what it waits for"
    );
    apply_topology(&url, &prefix, 1).await?;
    eventually(Duration::from_secs(10), "ingest started", || async {
        log_of(logs, "ingest").contains("started").then_some(())
    })
    .await?;
    assert!(ingest.child.try_wait()?.is_none(), "ingest runs");
    Ok(())
}

/// Two applies at once on a 3-node cluster, one the CLI and one the library, started while a
/// node is down: neither returns before the node is back and its replicas current, then both
/// succeed and every stream ends as declared and led. A third apply then changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_applies_at_once_on_r3_while_a_node_restarts() -> anyhow::Result<()> {
    let logs = Logs::new("topology-race")?;
    logs.report(race(&logs)).await
}

async fn race(logs: &Logs) -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start_nodes(3, Some(&logs.dir))?;
    let url = cluster.url();
    let prefix = random_prefix();
    // n1 goes down first, so the applies run while it is away and must wait for its
    // replicas to catch up once it is back.
    cluster.kill(1);
    eprintln!("killed n1");
    let cli_log = std::fs::File::create(logs.dir.join("apply-cli.log"))?;
    let mut cli = std::process::Command::new(binary("push0"))
        .args([
            "topology",
            "apply",
            "--nats-url",
            &url,
            "--prefix",
            &prefix,
            "--replicas",
            "3",
        ])
        .stdout(cli_log.try_clone()?)
        .stderr(cli_log)
        .spawn()?;
    let library = {
        let (url, prefix) = (url.clone(), prefix.clone());
        tokio::spawn(async move { apply_topology(&url, &prefix, 3).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !library.is_finished() && cli.try_wait()?.is_none(),
        "neither apply returns while a node holding replicas is down"
    );
    cluster.restart(1)?;
    eprintln!("restarted n1 while both applies wait");
    library.await??;
    let status = tokio::task::spawn_blocking(move || cli.wait()).await??;
    assert!(
        status.success(),
        "push0 topology apply failed:\n{}",
        std::fs::read_to_string(logs.dir.join("apply-cli.log"))?
    );

    let mut bus = Bus::connect(&url, &prefix, "topology-check").await?;
    bus.replicas = 3;
    let problems = topology::check(&bus, 3).await;
    assert!(problems.is_empty(), "as declared and led: {problems:?}");
    for declared in topology::declared(&bus.topology, 3) {
        let mut stream = bus.js.get_stream(declared.name()).await?;
        let have = stream.info().await?.config.clone();
        let diff = topology::differences(&declared.config, &have);
        assert!(diff.is_empty(), "{}: {diff:?}", declared.name());
    }
    let again = topology::apply(&bus, 3, Duration::from_secs(60)).await?;
    assert!(
        again.iter().all(|a| a.action == Action::Unchanged),
        "a second apply changes nothing: {again:?}"
    );
    Ok(())
}

/// A topology applied at one replica on a cluster is converged by an apply at three: every
/// stream raised, direct gets turned off on the buckets (replicas may lag their leader), each
/// change reported; and R3 consumers are then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converges_an_unreplicated_topology() -> anyhow::Result<()> {
    let logs = Logs::new("topology-converge")?;
    logs.report(converge(&logs)).await
}

async fn converge(logs: &Logs) -> anyhow::Result<()> {
    let cluster = NatsCluster::start_nodes(3, Some(&logs.dir))?;
    let prefix = random_prefix();
    let first = Bus::connect(&cluster.url(), &prefix, "unreplicated").await?;
    let created = topology::apply(&first, 1, Duration::from_secs(60)).await?;
    assert!(created.iter().all(|a| a.action == Action::Created));

    let mut service = Bus::connect(&cluster.url(), &prefix, "replicated").await?;
    service.replicas = 3;
    assert!(
        !topology::check(&service, 3).await.is_empty(),
        "an R1 topology is not what an R3 service expects"
    );
    let converged = topology::apply(&service, 3, Duration::from_secs(60)).await?;
    let blocks_bucket = format!("KV_{}", service.subjects.bucket_blocks());
    for a in &converged {
        let Action::Updated(changes) = &a.action else {
            panic!("{} not updated: {:?}", a.name, a.action);
        };
        assert!(changes.contains(&"num_replicas: 1 -> 3".to_string()), "{a}");
        if a.name == blocks_bucket {
            assert!(
                changes.contains(&"allow_direct: true -> false".to_string()),
                "{a}"
            );
        }
    }
    let mut bucket = service.js.get_stream(&blocks_bucket).await?;
    let info = bucket.info().await?;
    assert_eq!(info.config.num_replicas, 3);
    assert!(
        !info.config.allow_direct,
        "a replicated bucket reads from its leader"
    );
    assert!(topology::check(&service, 3).await.is_empty());
    service
        .ensure_consumer(&service.topology.ingest_consumer())
        .await?;
    Ok(())
}
