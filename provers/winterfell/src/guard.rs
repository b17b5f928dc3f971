//! Defensive deserialization of untrusted winterfell proofs.
//!
//! winterfell 0.13.1 pre-allocates vectors from length prefixes it reads
//! (`Vec::with_capacity(n)` in `read_many` and `BatchMerkleProof::read_from`). A flipped bit in a
//! length prefix can ask for terabytes, and a failed allocation *aborts* the process — it is not a
//! panic and cannot be caught. This module reads proofs through a [`BoundedReader`] that refuses
//! any count larger than the bytes left, and pre-parses the byte blobs the verifier parses
//! lazily later (query and FRI-layer Merkle openings) the same way, so by the time
//! `winterfell::verify` runs every length it will read is known to be bounded by the input.

use winter_utils::{ByteReader, Deserializable, DeserializationError, Serializable};
use winterfell::Proof;
use winterfell::crypto::BatchMerkleProof;

use crate::air::Hasher;

/// A slice reader whose counts and pre-allocations never exceed the bytes remaining.
pub struct BoundedReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BoundedReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BoundedReader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

fn invalid(msg: impl Into<String>) -> DeserializationError {
    DeserializationError::InvalidValue(msg.into())
}

impl ByteReader for BoundedReader<'_> {
    fn read_u8(&mut self) -> Result<u8, DeserializationError> {
        let b = self.peek_u8()?;
        self.pos += 1;
        Ok(b)
    }

    fn peek_u8(&self) -> Result<u8, DeserializationError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(DeserializationError::UnexpectedEOF)
    }

    fn read_slice(&mut self, len: usize) -> Result<&[u8], DeserializationError> {
        self.check_eor(len)?;
        let s = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], DeserializationError> {
        let s = self.read_slice(N)?;
        Ok(s.try_into().expect("slice has length N"))
    }

    fn check_eor(&self, num_bytes: usize) -> Result<(), DeserializationError> {
        if num_bytes > self.remaining() {
            Err(DeserializationError::UnexpectedEOF)
        } else {
            Ok(())
        }
    }

    fn has_more_bytes(&self) -> bool {
        self.remaining() > 0
    }

    /// winterfell's variable-length integer (the number of trailing zeros of the first byte,
    /// plus one, is the encoded length; nine bytes for a 0x00 first byte), rejected when it
    /// exceeds the bytes left: every `usize` in a proof counts elements that follow it, each at
    /// least one byte long.
    fn read_usize(&mut self) -> Result<usize, DeserializationError> {
        let first = self.peek_u8()?;
        let len = first.trailing_zeros() as usize + 1;
        let value = if len == 9 {
            self.read_u8()?;
            u64::from_le_bytes(self.read_array::<8>()?)
        } else {
            let mut le = [0u8; 8];
            le[..len].copy_from_slice(self.read_slice(len)?);
            u64::from_le_bytes(le) >> len
        };
        if value > self.remaining() as u64 {
            return Err(invalid(format!(
                "length {value} exceeds the {} bytes left",
                self.remaining()
            )));
        }
        Ok(value as usize)
    }

    fn read_many<D: Deserializable>(
        &mut self,
        num_elements: usize,
    ) -> Result<Vec<D>, DeserializationError> {
        let mut out = Vec::with_capacity(num_elements.min(self.remaining()));
        for _ in 0..num_elements {
            out.push(D::read_from(self)?);
        }
        Ok(out)
    }
}

fn u32_prefixed(r: &mut BoundedReader) -> Result<Vec<u8>, DeserializationError> {
    let n = r.read_u32()? as usize;
    Ok(r.read_slice(n)?.to_vec())
}

/// Reads a `T` that must span `bytes` exactly.
fn read_exact<T: Deserializable>(bytes: &[u8], what: &str) -> Result<T, String> {
    let mut r = BoundedReader::new(bytes);
    let v = T::read_from(&mut r).map_err(|e| format!("malformed {what}: {e}"))?;
    if r.has_more_bytes() {
        return Err(format!("malformed {what}: {} unread bytes", r.remaining()));
    }
    Ok(v)
}

/// Parses a STARK proof with bounded allocations, and pre-parses the Merkle openings that the
/// verifier would otherwise parse with an unbounded reader.
pub fn read_proof(bytes: &[u8]) -> Result<Proof, String> {
    let proof: Proof = read_exact(bytes, "STARK proof")?;

    // Queries serialize as `Vec<u8> values ‖ Vec<u8> opening proof`.
    let queries = proof
        .trace_queries
        .iter()
        .chain(std::iter::once(&proof.constraint_queries));
    for (i, q) in queries.enumerate() {
        let blob = q.to_bytes();
        let mut r = BoundedReader::new(&blob);
        let _values = Vec::<u8>::read_from(&mut r).map_err(|e| format!("query set {i}: {e}"))?;
        let opening = Vec::<u8>::read_from(&mut r).map_err(|e| format!("query set {i}: {e}"))?;
        read_exact::<BatchMerkleProof<Hasher>>(&opening, "query Merkle opening")?;
    }

    // FRI: `u8 layers ‖ (u32 len ‖ values ‖ u32 len ‖ paths)* ‖ u16 len ‖ remainder ‖ u8`.
    let fri = proof.fri_proof.to_bytes();
    let mut r = BoundedReader::new(&fri);
    let layers = r.read_u8().map_err(|e| format!("FRI proof: {e}"))?;
    for i in 0..layers {
        let _values = u32_prefixed(&mut r).map_err(|e| format!("FRI layer {i}: {e}"))?;
        let paths = u32_prefixed(&mut r).map_err(|e| format!("FRI layer {i}: {e}"))?;
        read_exact::<BatchMerkleProof<Hasher>>(&paths, "FRI layer Merkle opening")?;
    }
    Ok(proof)
}
