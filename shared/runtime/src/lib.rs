//! The runtime kit every push0 service shares: connecting to NATS, owning the topology (apply, check), the
//! one consume loop that turns handler outcomes into ack kinds, publishing with schema, msg-id
//! and trace headers, blobs, dead letters, metrics, telemetry and graceful shutdown.

pub mod auth;
pub mod backoff;
pub mod blobs;
pub mod bus;
pub mod config;
pub mod consume;
pub mod error;
pub mod health;
pub mod http;
pub mod kept;
pub mod lease;
pub mod metrics;
pub mod parts;
pub mod pull;
pub mod registry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod verifier;

pub use blobs::BlobStore;
pub use bus::{Bus, Fenced, RuntimeError, kv_create, kv_get, kv_update, kv_update_at, kv_write};
pub use config::{BusAccess, CommonArgs, LogFormat};
pub use consume::{Delivery, Handler, Order, Outcome, Rejection, consume, retry_after_error};
pub use error::ErrorKind;
pub use metrics::{Metrics, metrics, serve_metrics};
pub use registry::{Registry, register_team, remove_team};
pub use shutdown::shutdown_on_signal;

/// This machine's host name as the kernel has it (a pod's name in Kubernetes, a container's
/// id under compose), or `fallback` where it cannot be read.
pub fn host_name(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}
