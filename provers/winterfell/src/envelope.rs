//! The proof file: a versioned envelope around winterfell's `Proof::to_bytes()` carrying
//! everything the verifier needs (the statement's public inputs), so `verify` runs from the file
//! alone. All integers little-endian.
//!
//! | offset    | size | field                                                        |
//! |-----------|------|--------------------------------------------------------------|
//! | 0         | 4    | magic `P0WF`                                                 |
//! | 4         | 2    | envelope version = 1                                         |
//! | 6         | 2    | statement id = 1 (this AIR, these proof options)             |
//! | 8         | 16   | prev_state (canonical field element, LE)                     |
//! | 24        | 16   | new_state                                                    |
//! | 40        | 4    | part length L (≤ 65 536)                                     |
//! | 44        | 32   | SHA-256 of the part bytes                                    |
//! | 76        | L    | the part bytes (public: they define the periodic column)     |
//! | 76+L      | 4    | STARK proof length N                                         |
//! | 80+L      | N    | winterfell 0.13.1 `Proof::to_bytes()`                        |
//!
//! Nothing may follow the proof. Every field is checked on decode.

use sha2::{Digest, Sha256};

use crate::statement::{Felt, MAX_PART_BYTES, state_from_le};
use winterfell::math::StarkField;

pub const MAGIC: [u8; 4] = *b"P0WF";
pub const VERSION: u16 = 1;
pub const STATEMENT_ID: u16 = 1;
pub const HEADER_BYTES: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub prev_state: Felt,
    pub new_state: Felt,
    pub part: &'a [u8],
    pub part_sha256: [u8; 32],
    pub stark_proof: &'a [u8],
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn encode(prev_state: Felt, new_state: Felt, part: &[u8], stark_proof: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + part.len() + 4 + stark_proof.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&STATEMENT_ID.to_le_bytes());
    out.extend_from_slice(&prev_state.as_int().to_le_bytes());
    out.extend_from_slice(&new_state.as_int().to_le_bytes());
    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    out.extend_from_slice(&sha256(part));
    out.extend_from_slice(part);
    out.extend_from_slice(&(stark_proof.len() as u32).to_le_bytes());
    out.extend_from_slice(stark_proof);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated envelope: {what} needs {n} bytes at offset {}, file has {}",
                self.pos,
                self.bytes.len()
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn state(&mut self, what: &str) -> Result<Felt, String> {
        state_from_le(self.array(what)?)
            .ok_or_else(|| format!("{what} is not a canonical field element"))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.array::<4>("magic")? != MAGIC {
        return Err("not a push0-winterfell proof (bad magic, expected P0WF)".into());
    }
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(format!(
            "unsupported envelope version {version} (this build reads {VERSION})"
        ));
    }
    let statement = r.u16("statement id")?;
    if statement != STATEMENT_ID {
        return Err(format!(
            "unknown statement id {statement} (this build knows {STATEMENT_ID})"
        ));
    }
    let prev_state = r.state("prev_state")?;
    let new_state = r.state("new_state")?;
    let part_len = r.u32("part length")? as usize;
    if part_len > MAX_PART_BYTES {
        return Err(format!(
            "part length {part_len} exceeds the {MAX_PART_BYTES}-byte limit"
        ));
    }
    let part_sha256: [u8; 32] = r.array("part digest")?;
    let part = r.take(part_len, "part bytes")?;
    if sha256(part) != part_sha256 {
        return Err("part bytes do not match the part digest".into());
    }
    let proof_len = r.u32("proof length")? as usize;
    let stark_proof = r.take(proof_len, "STARK proof")?;
    if r.pos != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the STARK proof",
            bytes.len() - r.pos
        ));
    }
    Ok(Envelope {
        prev_state,
        new_state,
        part,
        part_sha256,
        stark_proof,
    })
}
