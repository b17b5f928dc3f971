//! The Python example of the public interface (nats-py + msgpack), extracted from
//! docs/interface.md and run against a live cluster: what foreign clients are told works, works.

use std::time::Duration;

use push0_protocol::TeamsFile;
use push0_tests::*;

/// The code block between the page's `<!-- python-example -->` markers.
fn documented_example() -> String {
    let page = std::fs::read_to_string(push0_natsd::repo_root().join("docs/interface.md"))
        .expect("docs/interface.md");
    let start = page
        .find("<!-- python-example:start -->")
        .expect("start marker in docs/interface.md");
    let end = page
        .find("<!-- python-example:end -->")
        .expect("end marker in docs/interface.md");
    let block = &page[start..end];
    let code = block.split("```python").nth(1).expect("python code block");
    code.split("```")
        .next()
        .expect("closed code block")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documented_python_example_submits_and_reads_proofs() -> anyhow::Result<()> {
    let pyclient = push0_natsd::tools_dir().join("pyclient");
    anyhow::ensure!(
        pyclient.exists(),
        "{} is missing: run .ci/install-tools (tests/run does)",
        pyclient.display()
    );
    let env = Env::new().await?;
    let teams = TeamsFile::default_teams();
    let cluster = env.cluster(teams.clone(), 1, 4, "fixed:20ms").await?;
    let script = std::env::temp_dir().join(format!("push0-example-{}.py", env.prefix));
    std::fs::write(&script, documented_example())?;

    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(teams.len().to_string())
            .env("PYTHONPATH", &pyclient)
            .env("PUSH0_NATS_URL", env.server.url())
            .env("PUSH0_PREFIX", &env.prefix)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "example failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for team in &teams {
        for n in 1..=3 {
            let line = format!("proof team={} chain=pychain number={n} ", team.name);
            assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
        }
    }
    // The proofs the example printed are the ones push0 published.
    let proofs = all_proofs(&env.bus, Duration::ZERO).await?;
    assert_eq!(proofs.iter().filter(|p| p.chain == "pychain").count(), 6);
    cluster.stop().await
}
