//! TLS to nats-server: a server that requires TLS and verifies client certificates (a CA and
//! certificates made for the test) refuses clients without the CA or without a certificate,
//! and the whole pipeline proves blocks through it.

use std::process::Command;
use std::time::Duration;

use push0::source::run_source;
use push0_natsd::NatsServer;
use push0_protocol::TeamConfig;
use push0_runtime::{Bus, BusAccess};
use push0_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_the_ca_and_a_certificate_get_in() -> anyhow::Result<()> {
    let server = NatsServer::start_tls(None)?;
    let url = server.url();
    assert!(url.starts_with("tls://"), "{url}");
    let files = server.tls().expect("a TLS server has its files");
    let prefix = random_prefix();

    let plain = Bus::connect(&url, &prefix, "no-tls").await;
    assert!(plain.is_err(), "a client that does not know the CA got in");
    let plain_url = url.replacen("tls://", "nats://", 1);
    assert!(
        Bus::connect(&plain_url, &prefix, "plain").await.is_err(),
        "a plain-TCP client got in"
    );
    let ca_only = BusAccess {
        tls_ca: Some(files.ca.clone()),
        ..BusAccess::default()
    };
    assert!(
        Bus::connect_with(&url, &prefix, "ca-only", &ca_only)
            .await
            .is_err(),
        "a client without a certificate got in"
    );
    // A certificate from another CA is refused too.
    let other = push0_natsd::TlsFiles::generate(&temp_dir("tls-other")?)?;
    let strangers = BusAccess {
        tls_ca: Some(files.ca.clone()),
        tls_cert: Some(other.client_cert.clone()),
        tls_key: Some(other.client_key.clone()),
        ..BusAccess::default()
    };
    assert!(
        Bus::connect_with(&url, &prefix, "stranger", &strangers)
            .await
            .is_err(),
        "a client certificate of another CA was accepted"
    );

    let bus = Bus::connect_with(&url, &prefix, "client", &files.client()).await?;
    bus.client.flush().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_proves_blocks_over_tls() -> anyhow::Result<()> {
    let server = NatsServer::start_tls(None)?;
    let tls = server.tls().expect("TLS files").client();
    let prefix = random_prefix();
    let teams = vec![TeamConfig::single("alpha"), TeamConfig::split("beta", 2, 2)];
    let mut spec = push0::cluster::ClusterSpec::new(&server.url(), &prefix, teams.clone());
    spec.access = tls.clone();
    for t in &teams {
        spec = spec.gateways(&t.name, 1, 2, sim("fixed:5ms"));
    }
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    let bus = Bus::connect_with(&server.url(), &prefix, "test", &tls).await?;
    run_source(&bus, "eth", 1, 5, 0.0, 1024).await?;
    // Read until a quiet second: a proof beyond the ten expected would show up as one too many.
    collect_proofs(&bus, 10, Duration::from_secs(30)).await?;
    let proofs = all_proofs(&bus, Duration::from_secs(1)).await?;
    assert_once_in_order(&proofs, 2, 5, server.log_path());
    cluster.stop().await
}

/// `push0 dev --tls` runs the same with a server and certificates of its own.
#[test]
fn push0_dev_with_tls_proves_its_blocks() -> anyhow::Result<()> {
    let logs = Logs::new("tls-dev")?;
    let mut command = Command::new(binary("push0"));
    command.args([
        "dev",
        "--tls",
        "--sim",
        "--sim-latency",
        "fixed:5ms",
        "--rate",
        "0",
    ]);
    command.args(["--blocks", "3", "--no-dashboard"]);
    let mut dev = ServiceProcess::spawn("dev", command, &logs.dir)?;
    let (status, _) = dev.wait_bounded(Duration::from_secs(60))?;
    let log = std::fs::read_to_string(logs.dir.join("dev.log"))?;
    assert!(
        status.success(),
        "push0 dev --tls exited with {status}:\n{log}"
    );
    assert!(log.contains("listening on tls://"), "{log}");
    assert!(log.contains("client certificates verified"), "{log}");
    Ok(())
}
