//! Records the services keep in KV buckets: block status, plans, proved parts, publication cursors, invalid-proof counts.

use serde::{Deserialize, Serialize};

use super::*;

/// Rejected results of one node, bucket `parts`, key `<part key>.invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidCount {
    pub count: u64,
}

impl WireMessage for InvalidCount {
    const SCHEMA: &'static str = "invalid-count/v1";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Recorded by ingest; `BlockAccepted` may not be published yet.
    Received,
    /// `BlockAccepted` is durably on the ACCEPTED stream.
    Accepted,
    /// A reorg replaced this block (or one of its ancestors): it is no longer on the chain and
    /// none of its proofs will be published. The record stays so a resubmission is recognised.
    Orphaned,
}

/// Block status, bucket `blocks`, key `<chain>.<number>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatus {
    pub block: BlockRef,
    pub state: BlockState,
    pub payload_len: u64,
    pub submitted_at_ms: u64,
    pub accepted_at_ms: Option<u64>,
    pub duplicates: u64,
    /// Empty in records written before reorgs were handled.
    #[serde(default, with = "serde_bytes")]
    pub parent_hash: Vec<u8>,
    /// Blocks this one orphaned when it arrived (itself replacing the block at its height, and
    /// that block's descendants). Kept until the `Reorg` notice is published, and after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<BlockRef>,
    /// Hashes that were at this height before a reorg replaced them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned_hashes: Vec<serde_bytes::ByteBuf>,
}

impl WireMessage for BlockStatus {
    const SCHEMA: &'static str = "block-status/v1";
}

/// A team's plan for one block, bucket `plans`: what was released already, so a restarted
/// scheduler re-releases only what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub team: String,
    pub accepted: BlockAccepted,
    pub workflow: Workflow,
    pub released: Vec<NodeId>,
    pub planned_at_ms: u64,
    /// Why the block cannot be proved for this team (a poison task), if it cannot.
    #[serde(default)]
    pub failed: Option<String>,
    /// The block's deadline for this team (its own, or the end of a realtime team's slot).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Why the block's work was withdrawn (a realtime miss under the `drop` policy), if it was.
    /// No proof of a withdrawn block is published.
    #[serde(default)]
    pub withdrawn: Option<String>,
    /// Set (compare-and-set) by the aggregator before it publishes a realtime team's block
    /// proof: a block is either finalized or withdrawn, never both.
    #[serde(default)]
    pub finalized: bool,
}

impl WireMessage for Plan {
    const SCHEMA: &'static str = "plan/v1";
}

/// One proved node, bucket `parts`. Written once (create), so the first result wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub task_id: String,
    pub block: BlockRef,
    pub node: NodeId,
    pub proof: Blob,
    pub proof_system: String,
    pub prove_ms: u64,
    /// Longest chain of prover time from a leaf up to and including this node.
    pub critical_ms: u64,
    pub gateway: String,
    pub submitted_at_ms: u64,
    pub recorded_at_ms: u64,
}

impl WireMessage for PartRecord {
    const SCHEMA: &'static str = "part/v1";
}

/// How far one block's life has been reported to Ethproofs for one team, in the order the
/// states go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// The team has the block planned.
    Queued,
    /// Its first tasks were released to the team's provers.
    Proving,
    /// Its proof was published.
    Proved,
}

/// The last state of a (team, block) that Ethproofs answered, bucket `reports`, key
/// `<team>.<chain>.<number>`: written after the answer, before the message is acked, so a
/// restarted reporter sends nothing that was answered and nothing older after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub state: ReportState,
    pub at_ms: u64,
}

impl WireMessage for Reported {
    const SCHEMA: &'static str = "reported/v1";
}

/// Publication cursor, bucket `cursors`, key `<team>.<chain>`: the next block number to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub next: u64,
    pub published: u64,
}

impl WireMessage for Cursor {
    const SCHEMA: &'static str = "cursor/v1";
}
