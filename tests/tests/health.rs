//! A service's `/healthz` answers while the process runs; its `/readyz` answers 200 only while
//! it can work: not before the topology is there, not while its NATS server is gone, and again
//! once it is back. `push0 probe` (compose's health check) follows `/readyz`.

use std::time::Duration;

use push0_natsd::{NatsServer, free_port, http_get};
use push0_tests::*;

fn status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// Whether `push0 probe` (compose's health check) calls the service's `/readyz` ready.
fn probe_passes(port: u16) -> anyhow::Result<bool> {
    let status = std::process::Command::new(binary("push0"))
        .args(["probe", &format!("http://127.0.0.1:{port}/readyz")])
        .output()?
        .status;
    Ok(status.success())
}

/// Waits until `path` answers `want`.
async fn answers(port: u16, path: &str, want: u16, what: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), what, || async {
        (status(port, path) == Some(want)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_topology_and_the_nats_connection() -> anyhow::Result<()> {
    let logs = Logs::new("health")?;
    logs.report(async {
        let mut server = NatsServer::start_logged(Some(logs.dir.join("nats.log")))?;
        let prefix = random_prefix();
        let port = free_port()?;
        let log = std::fs::File::create(logs.dir.join("ingest.log"))?;
        let mut ingest = ServiceProcess {
            name: "ingest".into(),
            child: std::process::Command::new(binary("push0-ingest"))
                .args(["--nats-url", &server.url(), "--prefix", &prefix])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        };

        answers(port, "/healthz", 200, "/healthz answering").await?;
        assert_eq!(
            status(port, "/readyz"),
            Some(503),
            "not ready while the topology is missing"
        );
        apply_topology(&server.url(), &prefix, 1).await?;
        answers(port, "/readyz", 200, "ready once the topology is there").await?;
        assert!(probe_passes(port)?, "push0 probe passes on a ready service");

        server.kill();
        answers(port, "/readyz", 503, "not ready with the server gone").await?;
        assert_eq!(status(port, "/healthz"), Some(200), "alive all the same");
        assert!(!probe_passes(port)?, "push0 probe fails while not ready");

        server.restart()?;
        answers(port, "/readyz", 200, "ready again with the server back").await?;

        ingest.terminate()?;
        let (exit, _) = ingest.wait_bounded(Duration::from_secs(10))?;
        assert!(exit.success(), "ingest stopped cleanly: {exit}");
        Ok(())
    })
    .await
}
