//! push0's wire protocol: message types, subjects, stream and bucket topology, workflow shapes
//! and the team registry format. Pure data and pure functions: nothing here does I/O, so every
//! service, the CLI and foreign-language clients agree on one definition.

pub mod auth;
pub mod bundle;
pub mod names;
pub mod subjects;
pub mod synthetic;
pub mod team;
pub mod topology;
pub mod wire;
pub mod workflow;

pub use names::{NameError, validate_chain, validate_prefix, validate_token};
pub use subjects::Subjects;
pub use team::{ClassLimits, ClassSettings, LatePolicy, Mode, Shape, TeamConfig, TeamsFile};
pub use topology::{BucketSpec, ConsumerSpec, Retention, StreamSpec, Topology};
pub use wire::*;
pub use workflow::{NodeId, Workflow};

/// Header carrying the versioned wire type of a message, e.g. `block/v1`.
pub const SCHEMA_HEADER: &str = "Push0-Schema";
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// On a fence mark: the block (`<chain>.<number>`) whose reorg it fences.
pub const REORG_HEADER: &str = "Push0-Reorg";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Milliseconds since the unix epoch, the one clock format on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
