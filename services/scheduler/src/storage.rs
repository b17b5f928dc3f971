//! JetStream storage of each NATS server, read from its monitoring endpoint (`/jsz`): the
//! JetStream API tells an account's use, but not the server's limit unless account limits are
//! configured, and the server's limit is what stops publishes when reached.

use std::time::Duration;

use push0_runtime::metrics;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How often the servers are read.
const READ_EVERY: Duration = Duration::from_secs(15);

/// What `/jsz` says about a server's storage.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Jsz {
    /// Bytes of file storage in use.
    storage: i64,
    config: JszConfig,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct JszConfig {
    /// The file store's limit in bytes.
    max_storage: i64,
}

/// The `server` label of a monitoring URL: its host and port.
fn server_label(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

fn read_jsz(url: &str) -> Result<Jsz, String> {
    let endpoint = format!("{}/jsz", url.trim_end_matches('/'));
    let (status, body) = push0_runtime::http::get(&endpoint, Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("{endpoint} answered {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{endpoint}: {e}"))
}

/// Exports each server's storage and limit every [`READ_EVERY`] until `shutdown`. A server
/// that cannot be read is logged once until it can be again.
pub(crate) async fn storage_loop(urls: Vec<String>, shutdown: CancellationToken) {
    let mut failing = vec![false; urls.len()];
    loop {
        for (url, failing) in urls.iter().zip(failing.iter_mut()) {
            let u = url.clone();
            let read = tokio::task::spawn_blocking(move || read_jsz(&u))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match read {
                Ok(jsz) => {
                    let m = metrics();
                    let server = [server_label(url)];
                    m.jetstream_storage
                        .with_label_values(&server)
                        .set(jsz.storage);
                    m.jetstream_storage_limit
                        .with_label_values(&server)
                        .set(jsz.config.max_storage);
                    *failing = false;
                }
                Err(e) if !*failing => {
                    tracing::warn!(url, error = %e, "cannot read JetStream storage");
                    *failing = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(READ_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_use_and_limit_from_a_jsz_answer() {
        let body = r#"{"server_id":"N1","now":"2026-12-06T00:00:00Z","config":{"max_memory":100,"max_storage":5000,"store_dir":"/data"},"memory":0,"storage":1234,"streams":3}"#;
        let jsz: Jsz = serde_json::from_str(body).expect("parsed");
        assert_eq!(
            jsz,
            Jsz {
                storage: 1234,
                config: JszConfig { max_storage: 5000 },
            }
        );
    }

    #[test]
    fn the_server_label_is_host_and_port() {
        assert_eq!(server_label("http://nats:8222"), "nats:8222");
        assert_eq!(server_label("http://127.0.0.1:8222/"), "127.0.0.1:8222");
        assert_eq!(server_label("nats-0.nats:8222"), "nats-0.nats:8222");
    }
}
