//! Wire types. Each is a MessagePack map with named fields, announced by the `Push0-Schema`
//! header. A released version is never edited: a change is a new struct and a new schema string.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::workflow::{NodeId, Workflow};

/// A versioned wire type.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The `Push0-Schema` header value, `<type>/v<N>`.
    const SCHEMA: &'static str;
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("missing Push0-Schema header (expected {expected})")]
    MissingSchema { expected: &'static str },
    #[error("unsupported schema {got:?} (expected {expected})")]
    UnsupportedSchema { expected: &'static str, got: String },
    #[error("malformed {schema} message: {detail}")]
    Malformed {
        schema: &'static str,
        detail: String,
    },
}

impl DecodeError {
    pub fn reason(&self) -> DlqReason {
        match self {
            DecodeError::MissingSchema { .. } => DlqReason::MissingSchema,
            DecodeError::UnsupportedSchema { .. } => DlqReason::UnsupportedSchema,
            DecodeError::Malformed { .. } => DlqReason::Malformed,
        }
    }
}

/// Encodes a message as a MessagePack map with named fields.
pub fn encode<M: WireMessage>(message: &M) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail: every field type is supported.
    rmp_serde::to_vec_named(message).expect("wire types always serialize")
}

/// Decodes a message after checking its schema header.
pub fn decode<M: WireMessage>(schema: Option<&str>, body: &[u8]) -> Result<M, DecodeError> {
    match schema {
        None => {
            return Err(DecodeError::MissingSchema {
                expected: M::SCHEMA,
            });
        }
        Some(s) if s != M::SCHEMA => {
            return Err(DecodeError::UnsupportedSchema {
                expected: M::SCHEMA,
                got: s.to_string(),
            });
        }
        Some(_) => {}
    }
    rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed {
        schema: M::SCHEMA,
        detail: e.to_string(),
    })
}

/// Why something ended in the dead-letter queue. The string form is the DLQ subject token and
/// the metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    Malformed,
    MissingSchema,
    UnsupportedSchema,
    Oversize,
    ChainMismatch,
    InvalidField,
    ConflictingHash,
    UnknownTeam,
    InvalidInput,
    InvalidProof,
    MaxDeliveries,
    /// A block that a reorg replaced was submitted again.
    Orphaned,
}

impl DlqReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DlqReason::Malformed => "malformed",
            DlqReason::MissingSchema => "missing_schema",
            DlqReason::UnsupportedSchema => "unsupported_schema",
            DlqReason::Oversize => "oversize",
            DlqReason::ChainMismatch => "chain_mismatch",
            DlqReason::InvalidField => "invalid_field",
            DlqReason::ConflictingHash => "conflicting_hash",
            DlqReason::UnknownTeam => "unknown_team",
            DlqReason::InvalidInput => "invalid_input",
            DlqReason::InvalidProof => "invalid_proof",
            DlqReason::MaxDeliveries => "max_deliveries",
            DlqReason::Orphaned => "orphaned",
        }
    }
}

impl std::fmt::Display for DlqReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------------------------

/// `block/v1`, published by a block source to `<prefix>.blocks.<chain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSubmission {
    pub chain: String,
    pub number: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub parent_hash: Vec<u8>,
    pub timestamp_ms: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

impl WireMessage for BlockSubmission {
    const SCHEMA: &'static str = "block/v1";
}

/// `block-proof/v1`, published by the aggregator to `<prefix>.proofs.<team>.<chain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockProof {
    pub team: String,
    pub chain: String,
    pub number: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub proof: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_ref: Option<ObjectRef>,
    pub proof_system: String,
    /// Prover time on the critical path of the block's workflow.
    pub proving_ms: u64,
    /// Submission to publication.
    pub latency_ms: u64,
    pub submitted_at_ms: u64,
    pub published_at_ms: u64,
}

impl WireMessage for BlockProof {
    const SCHEMA: &'static str = "block-proof/v1";
}

// ---------------------------------------------------------------------------------------------
// Internal messages
// ---------------------------------------------------------------------------------------------

/// Where a blob lives in the object store, with what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
}

/// Bytes carried in the message below the inline threshold, by reference above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blob {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    Stored(ObjectRef),
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::Inline(b) => b.len() as u64,
            Blob::Stored(r) => r.size,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    pub chain: String,
    pub number: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
}

impl BlockRef {
    pub fn short_hash(&self) -> String {
        hex::encode(&self.hash[..self.hash.len().min(4)])
    }
}

/// `block-accepted/v1`: ingest → scheduler, on `<prefix>.accepted.<chain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAccepted {
    pub block: BlockRef,
    #[serde(with = "serde_bytes")]
    pub parent_hash: Vec<u8>,
    pub timestamp_ms: u64,
    /// When the submission reached the BLOCKS stream.
    pub submitted_at_ms: u64,
    pub deadline_ms: Option<u64>,
    pub payload: Blob,
}

impl WireMessage for BlockAccepted {
    const SCHEMA: &'static str = "block-accepted/v1";
}

/// `reorg/v1`: ingest → scheduler, on `<prefix>.accepted.<chain>`, just before the
/// `BlockAccepted` of the block that caused it: `orphaned` (the block that was at `block`'s
/// height and its descendants) are off the chain; their work stops for every team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reorg {
    /// The new block at the fork height.
    pub block: BlockRef,
    pub orphaned: Vec<BlockRef>,
}

impl WireMessage for Reorg {
    const SCHEMA: &'static str = "reorg/v1";
}

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

/// Rejected results of one node, bucket `parts`, key `<part key>.invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidCount {
    pub count: u64,
}

impl WireMessage for InvalidCount {
    const SCHEMA: &'static str = "invalid-count/v1";
}

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

// ---------------------------------------------------------------------------------------------
// KV records
// ---------------------------------------------------------------------------------------------

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

/// Publication cursor, bucket `cursors`, key `<team>.<chain>`: the next block number to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub next: u64,
    pub published: u64,
}

impl WireMessage for Cursor {
    const SCHEMA: &'static str = "cursor/v1";
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

/// A gateway's liveness and capacity, bucket `capacity` (entries expire unless renewed),
/// key `<team>.<gateway>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub gateway: String,
    pub team: String,
    pub classes: Vec<String>,
    /// Prover slots per class.
    pub slots: u32,
    /// Slots proving right now.
    pub busy: u32,
    /// Pull priority of this gateway's tier (lower pulls first).
    pub priority: u8,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

impl WireMessage for Capacity {
    const SCHEMA: &'static str = "capacity/v1";
}

/// An alert the scheduler raises on a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// Work is pending and no gateway of the team is alive.
    NoLiveProver,
    /// The share of deadlines missed over the recent window is above the threshold.
    DeadlineMisses,
}

impl Alert {
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::NoLiveProver => "no_live_prover",
            Alert::DeadlineMisses => "deadline_misses",
        }
    }
}

/// What the scheduler knows about one team, bucket `status`, key `<team>`; rewritten about
/// once a second while the scheduler runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamStatus {
    pub team: String,
    /// Tasks held by the scheduler (not yet released), per class.
    pub held: Vec<(String, u64)>,
    /// Gateways alive (capacity records not expired) and their slots over all classes.
    pub live_gateways: u32,
    pub live_slots: u32,
    /// Highest block planned for the team, per chain, and the proving state below it.
    pub chains: Vec<ChainStatus>,
    /// Deadline outcomes since the scheduler started.
    pub deadline_hits: u64,
    pub deadline_misses: u64,
    /// Hit rate over the recent window, if any deadline fell in it.
    pub window_hit_rate: Option<f64>,
    pub alerts: Vec<Alert>,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub chain: String,
    pub head: u64,
    /// Blocks planned and neither proved nor given up.
    pub unproven: u64,
    pub oldest_unproven: Option<u64>,
    pub oldest_unproven_age_ms: Option<u64>,
}

impl WireMessage for TeamStatus {
    const SCHEMA: &'static str = "team-status/v1";
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission() -> BlockSubmission {
        BlockSubmission {
            chain: "eth".into(),
            number: 7,
            hash: vec![1; 32],
            parent_hash: vec![2; 32],
            timestamp_ms: 1_700_000_000_000,
            payload: b"tx".to_vec(),
            deadline_ms: None,
        }
    }

    /// The public submission format is frozen: these bytes are what foreign clients send.
    #[test]
    fn block_v1_golden_bytes() {
        let bytes = encode(&submission());
        let expected = concat!(
            "86a5636861696ea3657468a66e756d62657207a468617368c420",
            "0101010101010101010101010101010101010101010101010101010101010101",
            "ab706172656e745f68617368c420",
            "0202020202020202020202020202020202020202020202020202020202020202",
            "ac74696d657374616d705f6d73cf0000018bcfe56800",
            "a77061796c6f6164c4027478"
        );
        assert_eq!(hex::encode(&bytes), expected);
        let back: BlockSubmission = decode(Some("block/v1"), &bytes).unwrap();
        assert_eq!(back, submission());
    }

    #[test]
    fn block_proof_v1_golden_bytes() {
        let proof = BlockProof {
            team: "a".into(),
            chain: "eth".into(),
            number: 1,
            hash: vec![3; 2],
            proof: Some(vec![9]),
            proof_ref: None,
            proof_system: "sim".into(),
            proving_ms: 5,
            latency_ms: 6,
            submitted_at_ms: 7,
            published_at_ms: 8,
        };
        let bytes = encode(&proof);
        let expected = concat!(
            "8aa47465616da161a5636861696ea3657468a66e756d62657201a468617368c4020303",
            "a570726f6f66c40109ac70726f6f665f73797374656da373696d",
            "aa70726f76696e675f6d7305aa6c6174656e63795f6d7306",
            "af7375626d69747465645f61745f6d7307af7075626c69736865645f61745f6d7308"
        );
        assert_eq!(hex::encode(&bytes), expected);
        assert_eq!(
            decode::<BlockProof>(Some("block-proof/v1"), &bytes).unwrap(),
            proof
        );
    }

    #[test]
    fn optional_deadline_round_trips() {
        let mut s = submission();
        s.deadline_ms = Some(42);
        let back: BlockSubmission = decode(Some("block/v1"), &encode(&s)).unwrap();
        assert_eq!(back.deadline_ms, Some(42));
    }

    #[test]
    fn schema_checks() {
        let bytes = encode(&submission());
        assert_eq!(
            decode::<BlockSubmission>(None, &bytes)
                .unwrap_err()
                .reason(),
            DlqReason::MissingSchema
        );
        assert_eq!(
            decode::<BlockSubmission>(Some("block/v2"), &bytes)
                .unwrap_err()
                .reason(),
            DlqReason::UnsupportedSchema
        );
        assert_eq!(
            decode::<BlockSubmission>(Some("block/v1"), b"\xc1garbage")
                .unwrap_err()
                .reason(),
            DlqReason::Malformed
        );
    }

    #[test]
    fn missing_field_is_malformed() {
        #[derive(Serialize)]
        struct Partial {
            chain: String,
        }
        let bytes = rmp_serde::to_vec_named(&Partial {
            chain: "eth".into(),
        })
        .unwrap();
        let err = decode::<BlockSubmission>(Some("block/v1"), &bytes).unwrap_err();
        assert_eq!(err.reason(), DlqReason::Malformed);
        assert!(err.to_string().contains("number"), "{err}");
    }

    #[test]
    fn blobs_round_trip() {
        let t = Task {
            task_id: "x".into(),
            team: "a".into(),
            class: "prove".into(),
            block: BlockRef {
                chain: "eth".into(),
                number: 1,
                hash: vec![1; 32],
            },
            node: NodeId { level: 0, index: 0 },
            workflow: Workflow::SINGLE,
            input: TaskInput::Leaf {
                payload: Blob::Stored(ObjectRef {
                    bucket: "b".into(),
                    key: "k".into(),
                    size: 3,
                    sha256: vec![0; 32],
                }),
                offset: 0,
                len: 3,
            },
            submitted_at_ms: 1,
            deadline_ms: None,
        };
        assert_eq!(decode::<Task>(Some("task/v1"), &encode(&t)).unwrap(), t);
    }
}
