//! Flags every service binary accepts, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL; a comma-separated list for a cluster
    #[arg(long, env = "PUSH0_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Subject prefix; also names the streams and buckets
    #[arg(long, env = "PUSH0_PREFIX", default_value = "push0")]
    pub prefix: String,

    /// Address of the Prometheus /metrics endpoint (port 0 picks a free one)
    #[arg(long, env = "PUSH0_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,

    /// Replicas the topology was applied with (`push0 topology apply --replicas`): 1 on a
    /// single server, 3 on a 3-node cluster. The service checks the streams have them at start;
    /// its consumers take their stream's
    #[arg(long, env = "PUSH0_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// How long the service waits at start for the topology (streams, buckets, object store)
    /// to be present, as declared and led, before it exits naming what is missing
    #[arg(long, env = "PUSH0_TOPOLOGY_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub topology_wait: std::time::Duration,

    /// Log format
    #[arg(long, env = "PUSH0_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Record OpenTelemetry spans and carry the W3C trace context (`traceparent`) in the
    /// headers of the messages sent, without exporting them (an OTLP endpoint in
    /// OTEL_EXPORTER_OTLP_ENDPOINT records and exports). Off by default: recording costs CPU
    /// on every message handled (docs/operating.md has the figures)
    #[arg(long, env = "PUSH0_TRACES", default_value_t = false)]
    pub traces: bool,

    /// Threads of the service's async runtime. A service's work is waiting on its one NATS
    /// connection, and on a single thread it costs less CPU than handing each reply between
    /// threads (loadtest/results/history/2026-12-01.md); raise it where one service must use several cores
    #[arg(long, env = "PUSH0_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,

    #[command(flatten)]
    pub access: BusAccess,
}

/// TLS and credentials to the NATS servers. None set and a `nats://` URL: plain TCP, no
/// credentials. A `tls://` URL or a CA requires TLS; a client certificate answers a server that
/// verifies its clients; a credentials file signs in as one identity.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BusAccess {
    /// PEM file of the CA (or CAs) that signed the NATS servers' certificates; TLS is then
    /// required
    #[arg(long, env = "PUSH0_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that verify their clients; with --tls-key
    #[arg(long, env = "PUSH0_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(long, env = "PUSH0_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Credentials to sign in with: an nkey seed file as `push0 auth` writes them
    /// (`<identity>.nk`), or a NATS user credentials file (JWT and seed)
    #[arg(long, env = "PUSH0_NATS_CREDS")]
    pub creds: Option<PathBuf>,
}

impl BusAccess {
    /// The same TLS settings, signing in with the credentials in `creds`.
    pub fn with_creds(&self, creds: Option<PathBuf>) -> Self {
        Self {
            creds,
            ..self.clone()
        }
    }
}
