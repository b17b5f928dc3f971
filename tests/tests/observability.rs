//! The alert rules and the Grafana dashboard against a real Prometheus (Debian's, installed
//! into `.tools/` by `.ci/install-tools`) scraping a running push0 whose services are separate
//! processes, the reporter among them (reporting both teams to a fake Ethproofs API started
//! here): every expression of both is evaluated through Prometheus's HTTP API, each dashboard
//! query returns data and each metric a rule names is exported, so a panel or a rule on a
//! metric nobody exports fails here. A live scrape of every service passes
//! `promtool check metrics`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use push0::source::run_source;
use push0_natsd::{NatsServer, free_port, random_prefix, repo_root, tools_dir};
use push0_runtime::Bus;
use push0_runtime::http::{get, get_with};
use push0_tests::*;
use serde_json::Value;

fn prometheus_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_dir().join("prometheus/usr/bin").join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run .ci/install-tools",
        path.display()
    );
    Ok(path)
}

/// One expression to evaluate: where it comes from and its PromQL.
struct Expression {
    source: String,
    name: String,
    expr: String,
}

/// Every expression of the alert rules and the dashboard, as `expressions.py` lists them.
fn expressions() -> anyhow::Result<Vec<Expression>> {
    let script = repo_root().join("deploy/prometheus/expressions.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--detail")
        .output()
        .context("running expressions.py")?;
    anyhow::ensure!(
        out.status.success(),
        "expressions.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    listed
        .iter()
        .map(|e| {
            let field = |k: &str| {
                e[k].as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{k} in {e}"))
            };
            Ok(Expression {
                source: field("source")?,
                name: field("name")?,
                expr: field("expr")?,
            })
        })
        .collect()
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if word.starts_with("push0_") || word.starts_with("process_") || word == "up" {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// A fake Ethproofs API: takes every report (200) and counts the `proved` ones.
async fn take_report(
    State(proved): State<Arc<AtomicUsize>>,
    Path(endpoint): Path<String>,
    _body: String,
) -> StatusCode {
    if endpoint == "proved" {
        proved.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::OK
}

/// Evaluates `expr` now; the number of series it returns.
fn query(port: u16, expr: &str) -> anyhow::Result<usize> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let (status, body) =
        get_with(&url, &[("query", expr)], Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let answer: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    if status != 200 || answer["status"] != "success" {
        bail!("{expr}: {status} {body}");
    }
    Ok(answer["data"]["result"]
        .as_array()
        .map_or(0, |result| result.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_and_panel_expression_has_data_in_prometheus() -> anyhow::Result<()> {
    let logs = Logs::new("observability")?;
    logs.report(async {
        let prometheus = prometheus_tool("prometheus")?;
        let promtool = prometheus_tool("promtool")?;
        let server = NatsServer::start_logged(Some(logs.dir.join("nats.log")))?;
        let url = server.url();
        let prefix = random_prefix();
        apply_topology(&url, &prefix, 1).await?;
        let teams = logs.dir.join("teams.toml");
        std::fs::write(&teams, SYSTEM_TEAMS_REPORTED)?;
        let teams = teams.to_str().context("teams path")?;
        let monitor = format!("http://127.0.0.1:{}", server.monitor_port);

        // Each service on a metrics port of its own, scraped as Prometheus's job for it.
        let mut jobs: Vec<(&str, u16)> = Vec::new();
        let mut services = Vec::new();
        let mut start = |job: &'static str, binary: &str, name: &str, args: &[&str]| {
            let port = free_port()?;
            jobs.push((job, port));
            services.push(ServiceProcess::start_on(
                binary, name, &url, &prefix, port, args, &logs.dir,
            )?);
            anyhow::Ok(())
        };
        start("push0-ingest", "push0-ingest", "ingest", &[])?;
        start(
            "push0-scheduler",
            "push0-scheduler",
            "scheduler",
            &["--teams", teams, "--nats-monitor-url", &monitor],
        )?;
        start("push0-aggregator", "push0-aggregator", "aggregator", &[])?;
        for team in ["alpha", "beta"] {
            start(
                "push0-prover-gateway",
                "push0-prover-gateway",
                &format!("gateway-{team}"),
                &["--team", team, "--slots", "2", "--sim-latency", "fixed:20ms"],
            )?;
        }
        // The reporter, its key in its environment as in production, against a fake API.
        let reported = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/proofs/{endpoint}", post(take_report))
            .with_state(reported.clone());
        let api = serve_http(app).await?;
        let reporter_port = free_port()?;
        jobs.push(("push0-reporter", reporter_port));
        let args = ["--ethproofs-url", &api, "--ethproofs-rate", "1000/1s"];
        let mut command =
            ServiceProcess::command("push0-reporter", &url, &prefix, reporter_port, &args);
        command.env("ETHPROOFS_API_KEY", "observability-key");
        services.push(ServiceProcess::spawn("reporter", command, &logs.dir)?);

        let prometheus_port = free_port()?;
        let mut scrape = String::new();
        for job in [
            "push0-ingest",
            "push0-scheduler",
            "push0-aggregator",
            "push0-prover-gateway",
            "push0-reporter",
        ] {
            let targets: Vec<String> = jobs
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, port)| format!("'127.0.0.1:{port}'"))
                .collect();
            scrape.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config = logs.dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n{scrape}",
                repo_root().join("deploy/prometheus/alerts.yml").display()
            ),
        )?;
        let log = std::fs::File::create(logs.dir.join("prometheus.log"))?;
        let mut prometheus = ServiceProcess {
            name: "prometheus".into(),
            child: Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", logs.dir.join("tsdb").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting prometheus")?,
        };

        let bus = Bus::connect(&url, &prefix, "observability").await?;
        run_source(&bus, "eth", 1, 20, 0.0, 1024).await?;
        // Every block proved by both teams: alpha whole, beta in three parts.
        collect_proofs(&bus, 40, Duration::from_secs(60)).await?;
        // And reported, so the reporter's counters have both teams.
        eventually(Duration::from_secs(60), "every proof reported", || async {
            (reported.load(Ordering::SeqCst) >= 40).then_some(())
        })
        .await?;

        // Every target up and ready, then a few more scrapes so rates have two samples.
        eventually(Duration::from_secs(30), "every target up and ready", || async {
            let up = query(prometheus_port, "up == 1").ok()?;
            let ready = query(prometheus_port, "push0_ready == 1").ok()?;
            (up == jobs.len() && ready == jobs.len()).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(4)).await;

        let mut problems = Vec::new();
        let listed = expressions()?;
        anyhow::ensure!(!listed.is_empty(), "no expressions listed");
        for e in &listed {
            match query(prometheus_port, &e.expr) {
                Err(err) => problems.push(format!("{} {}: does not evaluate: {err}", e.source, e.name)),
                // A healthy cluster raises no alert: a rule's data is checked by its metrics.
                Ok(0) if e.source == "dashboard" => {
                    problems.push(format!("{} {}: no data: {}", e.source, e.name, e.expr))
                }
                Ok(_) => {}
            }
            for metric in metric_names(&e.expr) {
                if query(prometheus_port, &format!("group({metric})"))? == 0 {
                    problems.push(format!("{} {}: nothing exports {metric}", e.source, e.name));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let rules = listed.iter().filter(|e| e.source != "dashboard").count();
        println!(
            "{} expressions evaluated ({rules} alert rules, {} dashboard queries)",
            listed.len(),
            listed.len() - rules
        );

        // The exposition itself, as Prometheus's own linter reads it.
        for (job, port) in &jobs {
            let (status, text) = get(
                &format!("http://127.0.0.1:{port}/metrics"),
                Duration::from_secs(5),
            )
            .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(status == 200, "{job} /metrics answered {status}");
            let mut check = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            check
                .stdin
                .take()
                .context("promtool stdin")?
                .write_all(text.as_bytes())?;
            let out = check.wait_with_output()?;
            assert!(
                out.status.success(),
                "promtool check metrics on {job}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let _ = prometheus.child.kill();
        for s in &services {
            s.terminate()?;
        }
        for mut s in services {
            s.wait_bounded(Duration::from_secs(10))?;
        }
        Ok(())
    })
    .await
}

#[test]
fn metric_names_are_read_out_of_an_expression() {
    let names = metric_names(
        "sum by (team) (rate(push0_deliveries_total{redelivered=\"true\"}[1m])) / on() up * process_cpu_seconds_total",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["process_cpu_seconds_total", "push0_deliveries_total", "up"]
    );
}
