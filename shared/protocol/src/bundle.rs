//! Verified bundles: the block proof of a proof system without recursion. The bundle lists the
//! block's leaf proofs in order, each with its digest and the state it starts and ends at;
//! whoever builds or checks one verifies every part and that each part starts where the one
//! before it ended. Its proof system is named `<system>-bundle`.

use serde::{Deserialize, Serialize};

pub const BUNDLE_FORMAT: &str = "push0-bundle/v1";
pub const BUNDLE_SUFFIX: &str = "-bundle";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePart {
    pub proof_system: String,
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    pub prev_state: String,
    pub new_state: String,
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    pub format: String,
    pub parts: Vec<BundlePart>,
}

impl ProofBundle {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("bundles always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let bundle: ProofBundle =
            rmp_serde::from_slice(bytes).map_err(|e| format!("not a proof bundle: {e}"))?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(format!("unknown bundle format {:?}", bundle.format));
        }
        Ok(bundle)
    }

    /// The first place the state chain breaks, if any.
    pub fn chain_break(&self) -> Option<usize> {
        self.parts
            .windows(2)
            .position(|w| w[0].new_state != w[1].prev_state)
            .map(|i| i + 1)
    }
}

/// `winterfell-bundle` → `winterfell`; None for a system that is not a bundle.
pub fn bundled_system(proof_system: &str) -> Option<&str> {
    proof_system.strip_suffix(BUNDLE_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(prev: &str, new: &str) -> BundlePart {
        BundlePart {
            proof_system: "winterfell".into(),
            sha256: vec![0; 32],
            prev_state: prev.into(),
            new_state: new.into(),
            proof: vec![1, 2],
        }
    }

    #[test]
    fn chain_breaks_are_found() {
        let ok = ProofBundle {
            format: BUNDLE_FORMAT.into(),
            parts: vec![part("a", "b"), part("b", "c")],
        };
        assert_eq!(ok.chain_break(), None);
        let broken = ProofBundle {
            format: BUNDLE_FORMAT.into(),
            parts: vec![part("a", "b"), part("x", "c")],
        };
        assert_eq!(broken.chain_break(), Some(1));
        assert_eq!(ProofBundle::decode(&ok.encode()).unwrap(), ok);
        assert_eq!(bundled_system("winterfell-bundle"), Some("winterfell"));
        assert_eq!(bundled_system("plonky2"), None);
    }
}
