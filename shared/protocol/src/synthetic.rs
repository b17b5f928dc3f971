//! A deterministic synthetic chain: the blocks `push0 dev`, the load harness and the tests
//! submit. Block `n` of chain `c` always has the same hash, parent hash and payload.

use sha2::{Digest, Sha256};

use crate::{BlockSubmission, now_ms};

/// The block at `number` of a deterministic test chain with `payload_size` bytes of payload.
pub fn make_block(chain: &str, number: u64, payload_size: usize) -> BlockSubmission {
    let mut payload = vec![0u8; payload_size];
    let mut seed = Sha256::digest(format!("{chain}/{number}").as_bytes()).to_vec();
    for chunk in payload.chunks_mut(32) {
        seed = Sha256::digest(&seed).to_vec();
        chunk.copy_from_slice(&seed[..chunk.len()]);
    }
    BlockSubmission {
        chain: chain.to_string(),
        number,
        hash: block_hash(chain, number),
        parent_hash: if number == 0 {
            vec![0; 32]
        } else {
            block_hash(chain, number - 1)
        },
        timestamp_ms: now_ms(),
        payload,
        deadline_ms: None,
    }
}

/// The hash of block `number` of the synthetic chain `chain`.
pub fn block_hash(chain: &str, number: u64) -> Vec<u8> {
    Sha256::digest(format!("push0-block/{chain}/{number}").as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_chain_up_and_repeat() {
        let (a, b) = (make_block("eth", 7, 100), make_block("eth", 8, 100));
        assert_eq!(
            b.parent_hash, a.hash,
            "each block's parent is the one below"
        );
        assert_eq!(
            make_block("eth", 7, 100).payload,
            a.payload,
            "the same block twice"
        );
        assert_ne!(make_block("op", 7, 100).hash, a.hash, "chains differ");
        assert_eq!(a.payload.len(), 100);
        assert_eq!(make_block("eth", 0, 1).parent_hash, vec![0; 32]);
    }
}
