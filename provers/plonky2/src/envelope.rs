//! The proof file: a small versioned envelope around plonky2's `ProofWithPublicInputs::to_bytes()`.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "P0PK"
//! 4       1     version (1)
//! 5       1     kind: 0 = leaf, 1 = aggregate
//! 6       1     level: 0 for a leaf, n in 1..=16 for an aggregation at tree level n
//! 7       1     reserved, must be 0
//! 8       ..    plonky2 ProofWithPublicInputs bytes (public inputs: prev_state ‖ new_state)
//! ```
//!
//! The level selects the circuit the proof is verified against (leaf circuit, or the level-n
//! aggregation circuit); a proof claiming the wrong level does not verify. Every header byte
//! is either checked or selects the verifying circuit, so no byte of a proof file can be
//! changed without the proof being rejected. (Whether an aggregation node had one or two
//! children is not recorded: it is not part of the proven statement.)

pub const MAGIC: &[u8; 4] = b"P0PK";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;

pub const KIND_LEAF: u8 = 0;
pub const KIND_AGGREGATE: u8 = 1;

/// Deepest aggregation level accepted: 2^16 parts (256 MiB of payload; push0's default
/// payload limit of 4 MiB needs 10 levels). Verifying a level-n proof with a cold cache builds
/// the circuits of levels 1..n, so this also bounds what a bogus header can cost a verifier.
pub const MAX_LEVEL: u8 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// 0 = leaf, n >= 1 = aggregation at level n.
    pub level: u8,
    /// plonky2 `ProofWithPublicInputs::to_bytes()`.
    pub proof: Vec<u8>,
}

impl Envelope {
    pub fn kind_name(&self) -> &'static str {
        if self.level == 0 {
            "leaf"
        } else {
            "aggregate"
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.proof.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(if self.level == 0 {
            KIND_LEAF
        } else {
            KIND_AGGREGATE
        });
        out.push(self.level);
        out.push(0);
        out.extend_from_slice(&self.proof);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err("not a push0-plonky2 proof (bad magic)".into());
        }
        if bytes[4] != VERSION {
            return Err(format!("unsupported proof envelope version {}", bytes[4]));
        }
        let (kind, level, reserved) = (bytes[5], bytes[6], bytes[7]);
        match kind {
            KIND_LEAF if level == 0 => {}
            KIND_AGGREGATE if (1..=MAX_LEVEL).contains(&level) => {}
            _ => return Err(format!("invalid proof kind {kind} / level {level}")),
        }
        if reserved != 0 {
            return Err(format!("invalid reserved envelope byte {reserved:#04x}"));
        }
        Ok(Envelope {
            level,
            proof: bytes[HEADER_LEN..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let e = Envelope {
            level: 3,
            proof: vec![1, 2, 3],
        };
        let b = e.encode();
        assert_eq!(&b[..8], b"P0PK\x01\x01\x03\x00");
        assert_eq!(Envelope::decode(&b).unwrap(), e);
        let leaf = Envelope {
            level: 0,
            proof: vec![],
        };
        assert_eq!(Envelope::decode(&leaf.encode()).unwrap(), leaf);
        assert!(Envelope::decode(b"P0PK").is_err());
        assert!(Envelope::decode(b"XXXX\x01\x00\x00\x00").is_err());
        assert!(Envelope::decode(b"P0PK\x02\x00\x00\x00").is_err());
        assert!(Envelope::decode(b"P0PK\x01\x00\x01\x00").is_err());
        assert!(Envelope::decode(b"P0PK\x01\x01\x00\x00").is_err());
        assert!(Envelope::decode(b"P0PK\x01\x00\x00\x01").is_err());
        assert!(Envelope::decode(b"P0PK\x01\x01\x01\x01").is_err());
    }
}
