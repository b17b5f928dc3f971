//! Work for provers and what comes back: tasks, their results, the aggregator's ready and redo notices to the scheduler, and cancellations.

use serde::{Deserialize, Serialize};

use super::*;

/// What a task proves: a slice of the block payload, or its children's proofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskInput {
    Leaf {
        payload: Blob,
        offset: u64,
        len: u64,
    },
    Aggregate {
        children: Vec<ChildProof>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildProof {
    pub node: NodeId,
    pub proof: Blob,
    pub proof_system: String,
    /// Critical-path prover time up to and including this child.
    pub critical_ms: u64,
}

/// `task/v1`: scheduler → gateways, on `<prefix>.tasks.<team>.<class>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub team: String,
    pub class: String,
    pub block: BlockRef,
    pub node: NodeId,
    pub workflow: Workflow,
    pub input: TaskInput,
    pub submitted_at_ms: u64,
    pub deadline_ms: Option<u64>,
}

impl WireMessage for Task {
    const SCHEMA: &'static str = "task/v1";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Proved {
        proof: Blob,
        proof_system: String,
        /// The prover's own JSON report, if it wrote one.
        report: Option<String>,
    },
    /// Permanent failure: the prover said the input is invalid.
    Failed { reason: DlqReason, detail: String },
}

/// `task-result/v1`: gateway → aggregator, on `<prefix>.results.<team>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub team: String,
    pub block: BlockRef,
    pub node: NodeId,
    pub workflow: Workflow,
    pub outcome: TaskOutcome,
    pub gateway: String,
    pub attempt: u64,
    pub prove_ms: u64,
    /// Longest critical-path prover time among the task's inputs (0 for a leaf).
    pub inputs_critical_ms: u64,
    pub queue_wait_ms: u64,
    pub submitted_at_ms: u64,
    pub deadline_ms: Option<u64>,
}

impl WireMessage for TaskResult {
    const SCHEMA: &'static str = "task-result/v1";
}

/// `ready/v1`: aggregator → scheduler, on `<prefix>.ready.<team>`: every child of `node` is
/// proved, so its aggregation task can be released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub team: String,
    pub block: BlockRef,
    pub node: NodeId,
    pub workflow: Workflow,
    pub children: Vec<ChildProof>,
    pub submitted_at_ms: u64,
    pub deadline_ms: Option<u64>,
}

impl WireMessage for Ready {
    const SCHEMA: &'static str = "ready/v1";
}

/// `redo/v1`: aggregator → scheduler, on `<prefix>.ready.<team>`: a result for `node` was
/// rejected (its proof did not verify), so the task must run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redo {
    pub team: String,
    pub block: BlockRef,
    pub node: NodeId,
    pub workflow: Workflow,
    /// How many results of this node were rejected so far.
    pub attempt: u64,
    pub reason: String,
    /// The gateway whose proof was rejected.
    pub gateway: String,
}

impl WireMessage for Redo {
    const SCHEMA: &'static str = "redo/v1";
}

/// `cancel/v1`, core NATS on `<prefix>.control.cancel`: stop proving the named work now.
/// Gateways kill matching provers and ack their tasks; nothing is redelivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub team: String,
    /// The block whose work stops; None stops all of the team's work (the team was removed).
    pub block: Option<BlockRef>,
    pub reason: String,
}

impl WireMessage for Cancel {
    const SCHEMA: &'static str = "cancel/v1";
}
