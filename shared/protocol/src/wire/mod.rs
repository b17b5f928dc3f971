//! Wire types. Each is a MessagePack map with named fields, announced by the `Push0-Schema`
//! header. A released version is never edited: a change is a new struct and a new schema string.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod block;
mod dead_letter;
mod record;
mod status;
mod task;

pub use block::*;
pub use dead_letter::*;
pub use record::*;
pub use status::*;
pub use task::*;

pub(crate) use crate::workflow::{NodeId, Workflow};

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
    /// Every reason, for metrics that start each at zero.
    pub const ALL: [DlqReason; 12] = [
        DlqReason::Malformed,
        DlqReason::MissingSchema,
        DlqReason::UnsupportedSchema,
        DlqReason::Oversize,
        DlqReason::ChainMismatch,
        DlqReason::InvalidField,
        DlqReason::ConflictingHash,
        DlqReason::UnknownTeam,
        DlqReason::InvalidInput,
        DlqReason::InvalidProof,
        DlqReason::MaxDeliveries,
        DlqReason::Orphaned,
    ];

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

pub(crate) mod opt_bytes {
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
mod golden;

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
    fn every_dlq_reason_is_listed_once() {
        let names: std::collections::BTreeSet<&str> =
            DlqReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DlqReason::ALL.len());
        // A reason missing from ALL would still be matched in `as_str`: count the variants
        // through the match arms of this file instead.
        let arms = include_str!("mod.rs").matches(" => \"").count();
        assert_eq!(
            arms,
            DlqReason::ALL.len(),
            "a DlqReason variant is missing from ALL"
        );
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
