//! Dead-letter records and the attempt history they carry.

use serde::{Deserialize, Serialize};

use super::*;

/// `dead-letter/v1`, on `<prefix>.dlq.<service>.<reason>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub service: String,
    pub reason: DlqReason,
    pub detail: String,
    /// Subject the offending message arrived on.
    pub subject: String,
    pub stream_sequence: u64,
    pub schema: Option<String>,
    pub team: Option<String>,
    pub block: Option<BlockRef>,
    pub task_id: Option<String>,
    pub at_ms: u64,
    /// The original message, kept whole so nothing is lost and it can be replayed.
    pub original: Blob,
    /// For a task that ran out of deliveries: the failures gateways reported, by delivery.
    /// Deliveries without a report ended without one (gateway killed, ack deadline lapsed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

/// A failed delivery of a task as its gateway reported it, bucket `attempts`, key
/// `<task id>.<delivery>`: kept so a dead letter can say where and how each attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub delivery: u64,
    pub gateway: String,
    pub error: String,
    pub at_ms: u64,
}

impl WireMessage for Attempt {
    const SCHEMA: &'static str = "attempt/v1";
}

impl WireMessage for DeadLetter {
    const SCHEMA: &'static str = "dead-letter/v1";
}
