//! Process level: the reporter against a fake Ethproofs API started here, which holds it to
//! the API's rules: a bearer key (401 without), a rate per key (429 with `Retry-After` past
//! it), 409 for a report already taken; it also answers some requests with 503 and some
//! slowly. The whole push0 runs as processes; the reporter is SIGKILLed in the middle and
//! started again. Every proved block must be taken exactly once per team, each block's states
//! in order and none after its proof, and no window of the rate's length over the rate.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use push0::source::run_source;
use push0_tests::*;
use serde_json::Value;

const KEY: &str = "test-key";
/// The rate both sides keep: requests per window.
const RATE: usize = 12;
const WINDOW: Duration = Duration::from_secs(3);
const BLOCKS: u64 = 8;

/// One request as the fake API answered it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    endpoint: String,
    block: u64,
    cluster: u64,
    status: u16,
}

#[derive(Default)]
struct Api {
    seen: Vec<Seen>,
    taken: HashSet<(String, u64, u64)>,
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Api>>;

async fn report(
    State(api): State<Shared>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let at = Instant::now();
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let block = body["block_number"].as_u64().unwrap_or(0);
    let cluster = body["cluster_id"].as_u64().unwrap_or(0);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {KEY}"));
    let (status, slow) = {
        let mut api = api.lock().expect("api");
        let n = api.seen.len() + 1;
        let in_window = api
            .seen
            .iter()
            .filter(|s| at.duration_since(s.at) < WINDOW)
            .count();
        let status = if !authorized {
            401
        } else if in_window >= RATE {
            429
        } else if n % 5 == 0 {
            503
        } else if api.taken.contains(&(endpoint.clone(), block, cluster)) {
            409
        } else {
            if endpoint == "proved" {
                let proof = body["proof"].as_str().unwrap_or_default();
                let decoded = base64::engine::general_purpose::STANDARD.decode(proof);
                if decoded.map_or(true, |p| p.is_empty()) || body["proving_time"].as_u64().is_none()
                {
                    api.problems
                        .push(format!("proved without a proof or time: {body}"));
                }
            }
            api.taken.insert((endpoint.clone(), block, cluster));
            200
        };
        api.seen.push(Seen {
            at,
            endpoint,
            block,
            cluster,
            status,
        });
        (status, n % 7 == 0)
    };
    if slow {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let status = StatusCode::from_u16(status).expect("status");
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            (status, [("Retry-After", "1")], "slow down").into_response()
        }
        _ => (status, "").into_response(),
    }
}

fn reporter(
    env: &Env,
    logs: &Logs,
    name: &str,
    api: &str,
    key: Option<&str>,
) -> anyhow::Result<ServiceProcess> {
    let rate = format!("{RATE}/{}s", WINDOW.as_secs());
    let args = ["--ethproofs-url", api, "--ethproofs-rate", &rate];
    let mut command =
        ServiceProcess::command("push0-reporter", &env.server.url(), &env.prefix, 0, &args);
    command.env_remove("ETHPROOFS_API_KEY");
    if let Some(key) = key {
        command.env("ETHPROOFS_API_KEY", key);
    }
    ServiceProcess::spawn(name, command, &logs.dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proved_block_is_reported_once_in_order_within_the_rate() -> anyhow::Result<()> {
    let logs = Logs::new("reporter")?;
    logs.report(async {
        let env = Env::with_logs(&logs).await?;
        let api: Shared = Arc::default();
        let app = Router::new()
            .route("/proofs/{endpoint}", post(report))
            .with_state(api.clone());
        let url = serve_http(app).await?;

        // Without a key the reporter refuses to start, naming what is missing.
        let mut keyless = reporter(&env, &logs, "reporter-keyless", &url, None)?;
        let (status, _) = keyless.wait_bounded(Duration::from_secs(10))?;
        assert_eq!(status.code(), Some(64), "a reporter without a key exits 64");

        let teams = logs.dir.join("teams.toml");
        std::fs::write(&teams, SYSTEM_TEAMS_REPORTED)?;
        let options = SystemOptions {
            sim_latency: "fixed:20ms",
            grace: "1s",
            extra: &[],
            instances: 1,
        };
        let _system = System::start(
            &env.server.url(),
            &env.prefix,
            &teams,
            &logs.dir,
            1,
            &options,
        )?;
        let mut first = reporter(&env, &logs, "reporter-1", &url, Some(KEY))?;
        run_source(&env.bus, "eth", 1, BLOCKS, 0.0, 256).await?;
        collect_proofs(&env.bus, 2 * BLOCKS as usize, Duration::from_secs(60)).await?;

        // Killed in the middle, started again.
        eventually(
            Duration::from_secs(60),
            "the reporter's first requests",
            || async { (api.lock().expect("api").seen.len() >= 10).then_some(()) },
        )
        .await?;
        first.child.kill()?;
        let killed_at = api.lock().expect("api").seen.len();
        let _second = reporter(&env, &logs, "reporter-2", &url, Some(KEY))?;
        let proved = |api: &Api| {
            api.taken
                .iter()
                .filter(|(endpoint, _, _)| endpoint == "proved")
                .count()
        };
        eventually(
            Duration::from_secs(120),
            "every proved block reported",
            || async { (proved(&api.lock().expect("api")) == 2 * BLOCKS as usize).then_some(()) },
        )
        .await?;
        // Anything still to come would be a repeat.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let api = api.lock().expect("api");
        assert!(api.problems.is_empty(), "{:?}", api.problems);
        let count = |status: u16| api.seen.iter().filter(|s| s.status == status).count();
        println!(
            "{} requests ({killed_at} before the kill): {} taken, {} answered 409, {} answered 503",
            api.seen.len(),
            count(200),
            count(409),
            count(503)
        );
        assert_eq!(count(401), 0, "the key went with every request");
        assert_eq!(count(429), 0, "the reporter kept to the rate");
        assert!(count(503) > 0, "server errors were injected and retried");

        // Exactly once per team and block, states in order, nothing after the proof.
        let mut by_block: BTreeMap<(u64, u64), Vec<&Seen>> = BTreeMap::new();
        for s in &api.seen {
            by_block.entry((s.block, s.cluster)).or_default().push(s);
        }
        let rank = |e: &str| match e {
            "queued" => 0,
            "proving" => 1,
            _ => 2,
        };
        for block in 1..=BLOCKS {
            for cluster in [11, 22] {
                let seen = by_block.get(&(block, cluster)).with_context(|| {
                    format!("nothing reported for block {block} of cluster {cluster}")
                })?;
                let taken: Vec<&&Seen> = seen.iter().filter(|s| s.status == 200).collect();
                let proved: Vec<&&&Seen> =
                    taken.iter().filter(|s| s.endpoint == "proved").collect();
                assert_eq!(proved.len(), 1, "block {block} cluster {cluster}: {seen:?}");
                let ranks: Vec<u8> = taken.iter().map(|s| rank(&s.endpoint)).collect();
                assert!(
                    ranks.windows(2).all(|w| w[0] < w[1]),
                    "block {block} cluster {cluster}: states out of order {seen:?}"
                );
                let proved_at = proved[0].at;
                assert!(
                    !seen
                        .iter()
                        .any(|s| s.endpoint != "proved" && s.at > proved_at),
                    "block {block} cluster {cluster}: an older state after the proof {seen:?}"
                );
            }
        }
        // No window of the rate's length holds more than the rate.
        let times: Vec<Instant> = api.seen.iter().map(|s| s.at).collect();
        for (i, start) in times.iter().enumerate() {
            let within = times[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < WINDOW)
                .count();
            assert!(within <= RATE, "{within} requests within {WINDOW:?}");
        }
        Ok(())
    })
    .await
}

/// `push0 dev --ethproofs-url` runs the reporter with the cluster and, before its summary,
/// waits until every block it proved was answered by the API (through the same 503s, slow
/// answers and rate limit as above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push0_dev_reports_every_proved_block_before_it_exits() -> anyhow::Result<()> {
    let logs = Logs::new("reporter-dev")?;
    logs.report(async {
        let api: Shared = Arc::default();
        let app = Router::new()
            .route("/proofs/{endpoint}", post(report))
            .with_state(api.clone());
        let url = serve_http(app).await?;
        let teams = logs.dir.join("teams.toml");
        std::fs::write(&teams, SYSTEM_TEAMS_REPORTED)?;
        let rate = format!("{RATE}/{}s", WINDOW.as_secs());
        let blocks = 4;
        let mut command = std::process::Command::new(binary("push0"));
        command.args(["dev", "--sim", "--sim-latency", "fixed:20ms", "--rate", "0"]);
        command.args(["--blocks", &blocks.to_string(), "--no-dashboard"]);
        command.args(["--teams", teams.to_str().context("teams path")?]);
        command.args(["--ethproofs-url", &url, "--ethproofs-rate", &rate]);
        command.env("ETHPROOFS_API_KEY", KEY);
        let mut dev = ServiceProcess::spawn("dev", command, &logs.dir)?;
        let (status, _) = dev.wait_bounded(Duration::from_secs(120))?;
        let exited = Instant::now();
        let log = std::fs::read_to_string(logs.dir.join("dev.log"))?;
        assert!(status.success(), "push0 dev exited with {status}");
        assert!(
            log.contains(&format!(
                "reported to Ethproofs: {0}/{0} proved blocks",
                2 * blocks
            )),
            "no complete report line in the output"
        );

        let api = api.lock().expect("api");
        assert!(api.problems.is_empty(), "{:?}", api.problems);
        for cluster in [11, 22] {
            let proved: Vec<u64> = api
                .seen
                .iter()
                .filter(|s| s.cluster == cluster && s.endpoint == "proved" && s.status == 200)
                .map(|s| s.block)
                .collect();
            let mut sorted = proved.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (1..=blocks).collect::<Vec<_>>(),
                "cluster {cluster}: {proved:?}"
            );
        }
        assert!(
            api.seen.iter().all(|s| s.at <= exited),
            "a request after push0 dev exited"
        );
        anyhow::Ok(())
    })
    .await
}
