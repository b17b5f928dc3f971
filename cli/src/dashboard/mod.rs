//! `push0 dashboard`: a live page of the cluster on a loopback HTTP server. The page's assets are
//! compiled into the binary (it works without internet); the state comes from the bus through
//! watches and ordered consumers of its own (nothing durable, nothing acked), and reaches the
//! browser as server-sent events, one whole snapshot at a time.

mod feed;
pub mod model;

pub use feed::read_now;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use push0_runtime::Bus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use model::Model;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");

/// How often a changed model becomes a new snapshot; a snapshot also goes out every
/// [`REFRESH`] unchanged, so ages and the per-minute series move on.
const THROTTLE: Duration = Duration::from_millis(250);
const REFRESH: Duration = Duration::from_secs(2);

/// A running dashboard: its address, and the task serving it (ends at shutdown).
pub struct Dashboard {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

#[derive(Clone)]
struct Shared {
    latest: watch::Receiver<Arc<str>>,
}

/// Serves the dashboard of `bus`'s cluster on `addr` (port 0: any free port) until `shutdown`.
pub async fn start(bus: Bus, addr: SocketAddr, shutdown: CancellationToken) -> Result<Dashboard> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the dashboard to {addr}"))?;
    let addr = listener.local_addr()?;
    let model = Arc::new(Mutex::new(Model::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    feed::spawn_all(&bus, &model, &changed, &shutdown).await?;

    let prefix = bus.subjects.prefix().to_string();
    let first = snapshot_json(&model, &prefix);
    let (tx, rx) = watch::channel(first);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(REFRESH) => {}
            }
            tx.send_replace(snapshot_json(&model, &prefix));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(THROTTLE) => {}
            }
        }
    });

    let app = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/dashboard.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/api/state", get(state))
        .route("/events", get(events))
        .with_state(Shared { latest: rx });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "dashboard server failed");
        }
    });
    Ok(Dashboard { addr, task })
}

fn snapshot_json(model: &Mutex<Model>, prefix: &str) -> Arc<str> {
    let snapshot = model
        .lock()
        .expect("dashboard model lock")
        .snapshot(prefix, push0_protocol::now_ms());
    serde_json::to_string(&snapshot)
        .expect("a snapshot serializes")
        .into()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn state(State(shared): State<Shared>) -> Response {
    let body = shared.latest.borrow().to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The current snapshot at once, then each new one; a client that falls behind gets the latest
/// only (the watch channel keeps no backlog).
async fn events(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut latest = shared.latest;
    latest.mark_changed();
    let stream = futures::stream::unfold(latest, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().to_string();
        Some((Ok(Event::default().event("state").data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
