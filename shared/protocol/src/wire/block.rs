//! Blocks in and proofs out: the public submission, the accepted block and a reorg's notice on the accepted stream, the block proof, and the payload references they carry.

use serde::{Deserialize, Serialize};

use super::*;

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
