//! The Ethproofs-compatible API as the reporter speaks to it: one request at a time, never more
//! than the key's rate, waiting out 429s and retrying server errors and timeouts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use push0_runtime::backoff::Backoff;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::reporting;

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an answer that says the key is refused (401, 403) keeps the reporter waiting
/// before it tries again: nothing is lost meanwhile, and an operator sees the error count.
const REFUSED_WAIT: Duration = Duration::from_secs(30);

/// Where and how requests go.
#[derive(Clone)]
pub struct ApiConfig {
    /// The API's base URL: requests go to `<base>/proofs/<state>`.
    pub base_url: String,
    /// The bearer key; never logged.
    pub key: String,
    /// Print each request instead of sending it, and take it as answered.
    pub dry_run: bool,
    pub rate: Rate,
}

/// Everything but the key, so a logged or printed configuration cannot leak it.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .field("dry_run", &self.dry_run)
            .field("rate", &self.rate)
            .finish()
    }
}

/// At most `requests` requests in any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests: usize,
    pub window: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `60/60s`: requests, then the window as `humantime` reads it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, window) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected <requests>/<window>, such as 60/60s"))?;
        let requests: usize = n
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: requests {n:?}: {e}"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("{s:?}: window {window:?}: {e}"))?;
        if requests == 0 || window.is_zero() {
            return Err(format!("{s:?}: requests and window must be more than 0"));
        }
        Ok(Rate { requests, window })
    }
}

/// The times of the requests sent in the last window: a sliding log, so no window of that
/// length ever holds more than the rate (a token bucket would allow a burst on top of it).
pub struct Window {
    rate: Rate,
    sent: VecDeque<Instant>,
}

impl Window {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            sent: VecDeque::with_capacity(rate.requests),
        }
    }

    /// How long from `now` until one more request fits.
    pub fn wait_at(&mut self, now: Instant) -> Duration {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.rate.window)
        {
            self.sent.pop_front();
        }
        match self.sent.len() < self.rate.requests {
            true => Duration::ZERO,
            false => (self.sent[0] + self.rate.window).saturating_duration_since(now),
        }
    }

    pub fn record(&mut self, at: Instant) {
        self.sent.push_back(at);
    }
}

/// One report: the endpoint (`queued`, `proving`, `proved`) and its JSON body.
#[derive(Clone, Debug)]
pub struct Request {
    pub endpoint: &'static str,
    pub body: serde_json::Value,
    /// What the logs say about it (never the key).
    pub what: String,
}

/// The body of `queued` and `proving`.
#[derive(Serialize)]
pub struct StateBody {
    pub block_number: u64,
    pub cluster_id: u64,
}

/// The body of `proved`.
#[derive(Serialize)]
pub struct ProvedBody {
    pub block_number: u64,
    pub cluster_id: u64,
    /// Milliseconds, the proof's critical path.
    pub proving_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proving_cycles: Option<u64>,
    /// The proof's bytes, base64.
    pub proof: String,
    pub verifier_id: String,
}

/// How a request ended, for the caller to settle its message by.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 2xx, or 409 (already there: the same report twice is not an error).
    Taken,
    /// Refused for good (a 4xx other than 401, 403, 409, 429): the detail says why.
    Refused(String),
    /// Shutdown came first: the message goes back unanswered.
    Stopped,
}

/// What one attempt got.
enum Attempt {
    Status(u16, Option<Duration>, String),
    Failed(String),
}

pub struct Api {
    config: ApiConfig,
    agent: ureq::Agent,
    window: Window,
}

impl Api {
    pub fn new(config: ApiConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(ANSWER_TIMEOUT))
            .build()
            .new_agent();
        let window = Window::new(config.rate);
        Self {
            config,
            agent,
            window,
        }
    }

    /// Sends `request` until it is answered for good or `shutdown`, within the rate.
    pub async fn send(&mut self, request: &Request, shutdown: &CancellationToken) -> Answer {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let wait = self.window.wait_at(Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Answer::Stopped,
                }
                continue;
            }
            self.window.record(Instant::now());
            let attempt = match self.config.dry_run {
                true => {
                    println!("POST /proofs/{} {}", request.endpoint, request.body);
                    Attempt::Status(200, None, String::new())
                }
                false => self.attempt(request).await,
            };
            let pause = match attempt {
                Attempt::Status(status, retry_after, detail) => {
                    count(request.endpoint, &status.to_string());
                    match status {
                        200..=299 | 409 => return Answer::Taken,
                        429 => {
                            let wait = retry_after.unwrap_or_else(|| backoff.next_wait());
                            tracing::warn!(what = %request.what, ?wait, "rate limited (429): waiting");
                            wait
                        }
                        401 | 403 => {
                            tracing::error!(what = %request.what, status, "the API refuses the key; retrying in {REFUSED_WAIT:?}");
                            REFUSED_WAIT
                        }
                        400..=499 => {
                            return Answer::Refused(format!("{status}: {detail}"));
                        }
                        _ => {
                            let wait = backoff.next_wait();
                            tracing::warn!(what = %request.what, status, ?wait, "server error: retrying");
                            wait
                        }
                    }
                }
                Attempt::Failed(error) => {
                    count(request.endpoint, "error");
                    let wait = backoff.next_wait();
                    tracing::warn!(what = %request.what, error = %error, ?wait, "request failed: retrying");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return Answer::Stopped,
            }
        }
    }

    async fn attempt(&self, request: &Request) -> Attempt {
        let url = format!(
            "{}/proofs/{}",
            self.config.base_url.trim_end_matches('/'),
            request.endpoint
        );
        let agent = self.agent.clone();
        let auth = format!("Bearer {}", self.config.key);
        let body = request.body.to_string();
        let sent = tokio::task::spawn_blocking(move || {
            let mut response = agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let detail = response
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            Ok::<_, ureq::Error>((status, retry_after, detail))
        })
        .await;
        match sent {
            Ok(Ok((status, retry_after, detail))) => Attempt::Status(status, retry_after, detail),
            Ok(Err(e)) => Attempt::Failed(e.to_string()),
            Err(e) => Attempt::Failed(format!("request task: {e}")),
        }
    }
}

fn count(endpoint: &str, status: &str) {
    reporting()
        .requests
        .with_label_values(&[endpoint, status])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_holds_more_than_the_rate() {
        let rate: Rate = "3/10s".parse().unwrap();
        let mut w = Window::new(rate);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(w.wait_at(t0 + Duration::from_secs(i)), Duration::ZERO);
            w.record(t0 + Duration::from_secs(i));
        }
        // The fourth waits until the first leaves the window.
        assert_eq!(
            w.wait_at(t0 + Duration::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(w.wait_at(t0 + Duration::from_secs(10)), Duration::ZERO);
    }

    /// An API that answers the statuses in `answers` in turn (then 200), with `Retry-After: 1`.
    async fn scripted(answers: Vec<u16>) -> (String, std::sync::Arc<std::sync::Mutex<usize>>) {
        use axum::http::StatusCode;
        let calls = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/proofs/{endpoint}",
            axum::routing::post(move || {
                let seen = seen.clone();
                let answers = answers.clone();
                async move {
                    let mut n = seen.lock().unwrap();
                    let status = answers.get(*n).copied().unwrap_or(200);
                    *n += 1;
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("Retry-After", "1")],
                        "answer",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn api(url: &str) -> Api {
        Api::new(ApiConfig {
            base_url: url.to_string(),
            key: "k".into(),
            dry_run: false,
            rate: "100/1s".parse().unwrap(),
        })
    }

    fn request() -> Request {
        Request {
            endpoint: "queued",
            body: serde_json::json!({"block_number": 1, "cluster_id": 2}),
            what: "queued of block 1".into(),
        }
    }

    #[tokio::test]
    async fn a_429_waits_its_retry_after_and_a_5xx_is_retried() {
        let (url, calls) = scripted(vec![429, 503]).await;
        let started = Instant::now();
        let answer = api(&url).send(&request(), &CancellationToken::new()).await;
        assert_eq!(answer, Answer::Taken);
        assert_eq!(*calls.lock().unwrap(), 3);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After was not waited: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_409_is_taken_and_a_422_is_refused() {
        let (url, _) = scripted(vec![409]).await;
        assert_eq!(
            api(&url).send(&request(), &CancellationToken::new()).await,
            Answer::Taken
        );
        let (url, calls) = scripted(vec![422]).await;
        let answer = api(&url).send(&request(), &CancellationToken::new()).await;
        assert!(
            matches!(answer, Answer::Refused(ref d) if d.starts_with("422")),
            "{answer:?}"
        );
        assert_eq!(*calls.lock().unwrap(), 1, "a refusal is not retried");
    }

    #[test]
    fn rates_are_read_as_requests_per_window() {
        assert_eq!(
            "60/60s".parse::<Rate>(),
            Ok(Rate {
                requests: 60,
                window: Duration::from_secs(60)
            })
        );
        assert!("60".parse::<Rate>().is_err());
        assert!("0/1s".parse::<Rate>().is_err());
        assert!("5/soon".parse::<Rate>().is_err());
    }
}
