//! The live dashboard in a real browser: headless Chromium (Debian's package, unpacked into
//! `.tools/` by `.ci/install-tools`) loads the page of a running cluster and reads its DOM while
//! the cluster proves blocks, without reloading it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use push0::source::run_source;
use push0_natsd::{NatsServer, random_prefix, tools_dir};
use push0_runtime::Bus;
use push0_tests::*;

/// The browser, or a clear error naming the step that installs it.
fn browser() -> Result<Browser> {
    let path = tools_dir().join("chromium/bin/chromium");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run .ci/install-tools",
        path.display()
    );
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        .headless(true)
        // Tests run as root in CI, where Chromium's sandbox cannot start.
        .sandbox(false)
        .window_size(Some((1280, 900)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| anyhow::anyhow!("launch options: {e}"))?;
    Browser::new(options).map_err(|e| anyhow::anyhow!("starting chromium: {e}"))
}

/// The value of a JavaScript expression in the page.
fn eval(tab: &Tab, expression: &str) -> Result<serde_json::Value> {
    let result = tab
        .evaluate(expression, false)
        .map_err(|e| anyhow::anyhow!("evaluating {expression}: {e}"))?;
    Ok(result.value.unwrap_or(serde_json::Value::Null))
}

fn count(tab: &Tab, selector: &str) -> Result<u64> {
    let expression = format!(
        "document.querySelectorAll({}).length",
        serde_json::to_string(selector)?
    );
    eval(tab, &expression)?.as_u64().context("a count")
}

/// Polls `check` until it gives a value or `timeout` passes.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The URL a process printed after `marker` in its log.
fn printed_url(log: &Path, marker: &str) -> Result<String> {
    wait_for(
        Duration::from_secs(60),
        &format!("{marker} in {}", log.display()),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Ok(text.lines().find_map(|l| {
                let rest = l.split_once(marker)?.1;
                let url = rest.split_whitespace().find(|w| w.starts_with("http://"))?;
                Some(url.to_string())
            }))
        },
    )
}

fn screenshot(tab: &Tab, path: &Path) -> Result<()> {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .map_err(|e| anyhow::anyhow!("screenshot: {e}"))?;
    anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    std::fs::write(path, png)?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

fn proved_cells(tab: &Tab, team: &str) -> Result<u64> {
    count(
        tab,
        &format!("tr.block td[data-team=\"{team}\"][data-state=\"proved\"]"),
    )
}

fn updates(tab: &Tab) -> Result<u64> {
    let text = eval(tab, "document.getElementById('updates').textContent")?;
    Ok(text.as_str().unwrap_or("0").trim().parse().unwrap_or(0))
}

const BLOCKS: u64 = 8;

#[test]
fn the_page_of_a_dev_cluster_fills_with_proved_blocks_without_a_reload() -> Result<()> {
    let logs = Logs::new("dashboard-dev")?;
    let log = logs.dir.join("dev.log");
    let mut command = Command::new(binary("push0"));
    command.args([
        "dev",
        "--sim",
        "--sim-latency",
        "fixed:300ms",
        "--rate",
        "1",
    ]);
    command.args([
        "--blocks",
        &BLOCKS.to_string(),
        "--dashboard",
        "127.0.0.1:0",
        "--hold",
    ]);
    let mut dev = ServiceProcess::spawn("dev", command, &logs.dir)?;
    let outcome = (|| {
        let url = printed_url(&log, "dashboard:")?;
        let browser = browser()?;
        let tab = browser.new_tab().map_err(|e| anyhow::anyhow!("{e}"))?;
        tab.navigate_to(&url)
            .and_then(|t| t.wait_until_navigated())
            .map_err(|e| anyhow::anyhow!("loading {url}: {e}"))?;
        // The default simulated teams: alpha (single) and beta (split).
        let teams = ["alpha", "beta"];
        wait_for(
            Duration::from_secs(30),
            "the page live with both teams",
            || {
                let live = eval(&tab, "document.body.dataset.state")? == "live";
                let cards = count(&tab, "[data-team-card]")?;
                Ok((live && cards == teams.len() as u64).then_some(()))
            },
        )?;
        let first_updates = updates(&tab)?;
        let first_proved: u64 = teams
            .iter()
            .map(|t| proved_cells(&tab, t))
            .sum::<Result<u64>>()?;
        let mut seen = vec![first_proved];
        wait_for(
            Duration::from_secs(120),
            "every block proved on the page",
            || {
                let proved: Vec<u64> = teams
                    .iter()
                    .map(|t| proved_cells(&tab, t))
                    .collect::<Result<_>>()?;
                let total: u64 = proved.iter().sum();
                if seen.last() != Some(&total) {
                    seen.push(total);
                }
                Ok(proved.iter().all(|n| *n == BLOCKS).then_some(()))
            },
        )?;
        // Filled in as the blocks were proved, not at once: the page moved through several
        // counts after it was first drawn, and drew new snapshots without a reload.
        assert!(
            first_proved < 2 * BLOCKS,
            "the cluster finished before the page was read"
        );
        assert!(seen.len() >= 3, "proved cells seen only at {seen:?}");
        assert!(
            updates(&tab)? > first_updates,
            "no snapshot drawn after the first"
        );
        for team in teams {
            let shown = eval(
                &tab,
                &format!("document.querySelector('[data-proved=\"{team}\"]').textContent"),
            )?;
            assert_eq!(
                shown,
                BLOCKS.to_string(),
                "team {team}'s proved count on its card"
            );
        }
        assert_eq!(count(&tab, "tr.block")?, BLOCKS, "one row per block");
        assert_eq!(
            count(&tab, "[data-alert]")?,
            0,
            "alerts on a healthy cluster"
        );
        screenshot(&tab, &logs.dir.join("dashboard.png"))
    })();
    if outcome.is_err() {
        eprintln!("logs kept in {}\n{}", logs.dir.display(), logs.tails(30));
    }
    dev.terminate()?;
    let (status, _) = dev.wait_bounded(Duration::from_secs(30))?;
    outcome?;
    assert!(status.success(), "push0 dev exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_whose_gateways_stop_shows_the_no_live_prover_alert() -> Result<()> {
    let logs = Logs::new("dashboard-alert")?;
    logs.report(async {
        let server = NatsServer::start_logged(Some(logs.dir.join("nats.log")))?;
        let url = server.url();
        let prefix = random_prefix();
        apply_topology(&url, &prefix, 1).await?;
        let teams = logs.dir.join("teams.toml");
        std::fs::write(&teams, SYSTEM_TEAMS)?;
        let options = SystemOptions {
            sim_latency: "fixed:20ms",
            grace: "1s",
            extra: &[],
            instances: 1,
        };
        let mut system = System::start(&url, &prefix, &teams, &logs.dir, 0, &options)?;
        let mut command = Command::new(binary("push0"));
        command.args([
            "dashboard",
            "--nats-url",
            &url,
            "--prefix",
            &prefix,
            "--listen",
            "127.0.0.1:0",
        ]);
        let _dashboard = ServiceProcess::spawn("dashboard", command, &logs.dir)?;
        let page = printed_url(&logs.dir.join("dashboard.log"), " at ")?;

        let bus = Bus::connect(&url, &prefix, "dashboard-test").await?;
        run_source(&bus, "eth", 1, 3, 0.0, 1024).await?;
        collect_proofs(&bus, 6, Duration::from_secs(60)).await?;

        let shots = logs.dir.clone();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let browsing = tokio::task::spawn_blocking(move || -> Result<()> {
            let browser = browser()?;
            let tab = browser.new_tab().map_err(|e| anyhow::anyhow!("{e}"))?;
            tab.navigate_to(&page)
                .and_then(|t| t.wait_until_navigated())
                .map_err(|e| anyhow::anyhow!("loading {page}: {e}"))?;
            wait_for(
                Duration::from_secs(30),
                "both teams' proofs on the page",
                || {
                    Ok(
                        (proved_cells(&tab, "alpha")? == 3 && proved_cells(&tab, "beta")? == 3)
                            .then_some(()),
                    )
                },
            )?;
            assert_eq!(
                count(&tab, "[data-alert]")?,
                0,
                "an alert before the gateways stopped"
            );
            stop_tx.send(())?;
            let _ = stopped_rx.blocking_recv();
            wait_for(
                Duration::from_secs(60),
                "beta's no_live_prover alert",
                || {
                    Ok(
                        (count(&tab, "[data-alert=\"no_live_prover\"][data-team=\"beta\"]")? == 1)
                            .then_some(()),
                    )
                },
            )?;
            assert_eq!(
                count(&tab, "[data-alert][data-team=\"alpha\"]")?,
                0,
                "alpha still has provers"
            );
            screenshot(&tab, &shots.join("dashboard-alert.png"))
        });
        tokio::task::spawn_blocking(move || stop_rx.recv()).await??;
        // Beta's gateways die without a word; its capacity records lapse.
        for p in system
            .processes
            .iter_mut()
            .filter(|p| p.name.starts_with("gateway-beta"))
        {
            p.child.kill()?;
            p.child.wait()?;
        }
        // Work pending for beta: what the alert is about.
        run_source(&bus, "eth", 4, 1, 0.0, 1024).await?;
        let _ = stopped_tx.send(());
        browsing.await??;
        Ok(())
    })
    .await
}
