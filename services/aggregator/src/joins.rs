//! Parts this aggregator recorded lately, so the child that completes a join finds its
//! siblings here instead of reading them back from the server: its join signal follows its
//! own part's create by nothing but the publish.
//!
//! Skipping the read is safe because a part record never changes once made (the first
//! recorded result of a node stands; nothing rewrites or deletes it), so a record kept here is
//! what the read would return. Only what the server confirmed comes in: a create that made
//! the record, or the record a create found there. A sibling not kept here (recorded by
//! another aggregator instance, before this one started, or forgotten to bound the memory)
//! is read, as every sibling was before.

use std::ops::Deref;

use push0_protocol::{Blob, ChildProof};
use push0_runtime::kept::Kept;

/// Recorded parts by their key in the `parts` bucket, oldest forgotten first once the proofs
/// kept pass [`Recent::MAX_BYTES`] or the entries [`Recent::MAX_ENTRIES`].
pub(crate) struct Recent(Kept<ChildProof>);

impl Recent {
    /// Inline proofs kept, at most. Joins of small proofs complete within moments; a large
    /// proof is usually stored in the object store and kept here as its reference.
    pub(crate) const MAX_BYTES: usize = 32 << 20;
    pub(crate) const MAX_ENTRIES: usize = 65_536;
}

impl Default for Recent {
    fn default() -> Self {
        Self(Kept::new(Self::MAX_BYTES, Self::MAX_ENTRIES, weight))
    }
}

impl Deref for Recent {
    type Target = Kept<ChildProof>;
    fn deref(&self) -> &Kept<ChildProof> {
        &self.0
    }
}

/// What an entry costs, roughly: its key, its inline proof and its fields.
fn weight(key: &str, proof: &ChildProof) -> usize {
    let inline = match &proof.proof {
        Blob::Inline(bytes) => bytes.len(),
        Blob::Stored(_) => 128,
    };
    key.len() + inline + proof.proof_system.len() + 64
}

#[cfg(test)]
mod tests {
    use push0_protocol::NodeId;

    use super::*;

    fn proof(index: u32, bytes: usize) -> ChildProof {
        ChildProof {
            node: NodeId { level: 0, index },
            proof: Blob::Inline(vec![7; bytes]),
            proof_system: "sim".into(),
            critical_ms: 0,
        }
    }

    #[test]
    fn inline_proofs_are_bounded_by_their_bytes() {
        let recent = Recent::default();
        let big = Recent::MAX_BYTES / 3;
        for index in 0..3 {
            recent.keep(format!("k{index}"), proof(index, big));
        }
        let found = recent.find(["k0", "k1", "k2"]);
        assert_eq!(found.len(), 2, "one of three had to go");
        assert!(recent.find(["k0"]).is_empty(), "the oldest went");
        assert!(recent.len().1 <= Recent::MAX_BYTES);
        recent.forget(["k1", "k2"]);
        assert_eq!(recent.len(), (0, 0), "nothing kept, nothing counted");
    }
}
